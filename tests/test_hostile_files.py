"""Every loader against crafted files: pickles that try to run code (os.system, exec, eval, importing modules),
safetensors with lying headers, truncated files, wrong dtypes/shapes and valid files of another family. Each
case must end in a clear error that names the file, and nothing from the file may run: a canary file that
the payloads would create must not appear, and no module the file names may be imported."""
from __future__ import annotations

import builtins
import json
import os
import pickle
import struct
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from transedit.models.core.directions import load_direction
from transedit.models.core.errors import CheckpointError
from transedit.models.registry import (load_dino, load_edit_transformer, load_encoder, load_face_parser, load_lpips,
                                      load_put, load_stylegan2)
from transedit.random_weights import save_random_dino, save_random_encoder, save_random_generator, save_random_put

LOADERS = {
    "stylegan": load_stylegan2,
    "encoder": load_encoder,
    "edit_transformer": load_edit_transformer,
    "direction": load_direction,
    "dino": load_dino,
    "put": load_put,
    "lpips_heads": lambda path: load_lpips(path, path),
    "face_parsing": load_face_parser,
}
EVIL_MODULE = "transedit_evil_payload_module"  # never exists; importing it would show in sys.modules


class _Reduce:
    """Pickles as a call of `func(*args)` (what a hostile checkpoint does)."""

    def __init__(self, func, args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _payloads(canary: Path) -> dict:
    touch = f"touch {canary}"
    code = f"open({str(canary)!r}, 'w').write('ran')"
    return {
        "os_system": _Reduce(os.system, (touch,)),
        "exec": _Reduce(builtins.exec, (code,)),
        "eval": _Reduce(builtins.eval, (code,)),
        "import_module": _Reduce(builtins.__import__, (EVIL_MODULE,)),
        "nested_in_state_dict": {"state_dict": {"w": torch.zeros(2)}, "opts": _Reduce(os.system, (touch,))},
    }


def _hostile_files(tmp: Path) -> dict[str, Path]:
    canary = tmp / "canary"
    files = {}
    for name, obj in _payloads(canary).items():
        zipped = tmp / f"{name}.pt"
        torch.save(obj, zipped)  # the zip container torch uses
        files[f"torch_zip_{name}"] = zipped
        legacy = tmp / f"{name}.pth"
        with open(legacy, "wb") as f:  # a bare pickle (legacy torch.save / NVlabs-style)
            pickle.dump(obj, f, protocol=2)
        files[f"pickle_{name}"] = legacy
    # NVlabs persistent-class pickle with embedded source that would write the canary if executed
    src = f"open({str(canary)!r}, 'w').write('ran')\nclass Generator: pass\n"
    nv = tmp / "nvlabs_evil.pkl"
    with open(nv, "wb") as f:
        pickle.dump({"G_ema": _Reduce(_persistent_loader(), ("torch_utils.persistence", src))}, f, protocol=2)
    files["nvlabs_persistent_source"] = nv
    # safetensors whose header lies
    huge = tmp / "huge_header.safetensors"
    huge.write_bytes(struct.pack("<Q", 2 ** 40) + b"{" + b" " * 64)
    files["safetensors_huge_header"] = huge
    bomb = tmp / "bomb.safetensors"
    header = json.dumps({"w": {"dtype": "F32", "shape": [1 << 20, 1 << 20], "data_offsets": [0, 16]}}).encode()
    bomb.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 16)
    files["safetensors_claims_4TB"] = bomb
    garbage = tmp / "garbage.safetensors"
    garbage.write_bytes(struct.pack("<Q", 20) + b"{not json at all!!!}" + b"\0" * 8)
    files["safetensors_bad_json"] = garbage
    # torch's zip container with a deflated member: 256 MB of zeros in ~256 KB (torch.load would inflate it)
    plain = tmp / "plain.pt"
    torch.save({"w": torch.zeros(10)}, plain)
    zip_bomb = tmp / "zip_bomb.pt"
    with zipfile.ZipFile(plain) as src, zipfile.ZipFile(zip_bomb, "w") as dst:
        for member in src.infolist():
            data = src.read(member.filename)
            if member.filename.endswith("data/0"):
                dst.writestr(member, b"\0" * (256 << 20), compress_type=zipfile.ZIP_DEFLATED)
            else:
                dst.writestr(member, data)
    files["torch_zip_bomb"] = zip_bomb
    empty = tmp / "empty.pt"
    empty.write_bytes(b"")
    files["empty"] = empty
    return files


def _persistent_loader():
    """A callable whose pickled global names NVlabs' persistence module (which must never be imported)."""
    import types

    mod = types.ModuleType("torch_utils.persistence")
    def _reconstruct_persistent_obj(*a):  # noqa: E306 - never called by a safe loader
        raise AssertionError("executed")
    _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
    mod._reconstruct_persistent_obj = _reconstruct_persistent_obj
    sys.modules.setdefault("torch_utils", types.ModuleType("torch_utils"))
    sys.modules["torch_utils.persistence"] = mod
    return _reconstruct_persistent_obj


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hostile")
    files = _hostile_files(tmp)
    # remove the helper module again: the loaders must not find or import it
    sys.modules.pop("torch_utils.persistence", None)
    sys.modules.pop("torch_utils", None)
    return tmp, files


@pytest.fixture(scope="module")
def valid(tmp_path_factory):
    """A valid file of every family (for the truncation and wrong-family cases)."""
    tmp = tmp_path_factory.mktemp("valid")
    from transedit.models.core.directions import LatentDirection, save_direction

    return {
        "stylegan": save_random_generator(tmp / "g.pt"),
        "encoder": save_random_encoder(tmp / "e.pt", family="psp"),
        "direction": save_direction(LatentDirection("age", torch.ones(10, 64)), tmp / "age.safetensors"),
        "dino": save_random_dino(tmp / "dino.safetensors"),
        "put": save_random_put(tmp / "put.pth"),
    }


def _assert_clear_refusal(loader, path: Path, canary: Path):
    before = set(sys.modules)
    with pytest.raises(Exception) as err:
        loader(path)
    assert isinstance(err.value, (CheckpointError, ValueError)), (loader.__name__, path.name, repr(err.value))
    assert path.name in str(err.value), (loader.__name__, path.name, str(err.value))
    assert not canary.exists(), f"{path.name}: code from the file ran"
    new = set(sys.modules) - before
    assert EVIL_MODULE not in new and not any(m.startswith("torch_utils") for m in new), new


@pytest.mark.parametrize("loader_name", list(LOADERS))
def test_hostile_files_are_refused_by_every_loader(hostile, loader_name):
    tmp, files = hostile
    for case, path in files.items():
        _assert_clear_refusal(LOADERS[loader_name], path, tmp / "canary")


def test_torchscript_is_named_and_refused_by_every_loader(tmp_path):
    """A TorchScript export is a program: every loader refuses it before torch.load and says what it is."""
    scripted = tmp_path / "exported.pt"
    torch.jit.trace(torch.nn.Conv2d(3, 4, 1), torch.zeros(1, 3, 4, 4)).save(str(scripted))
    for name, loader in LOADERS.items():
        with pytest.raises(CheckpointError, match="TorchScript program") as e:
            loader(scripted)
        assert "exported.pt" in str(e.value), name


def test_zip_bomb_is_refused_before_inflating(hostile):
    """torch.load would inflate the 256 MB member into memory before noticing it does not fit the pickle;
    the registry refuses from the zip directory alone."""
    tmp, files = hostile
    for loader in LOADERS.values():
        with pytest.raises(CheckpointError, match="compressed members .*zip bomb"):
            loader(files["torch_zip_bomb"])


@pytest.mark.parametrize("family", ["stylegan", "encoder", "dino", "put"])
@pytest.mark.parametrize("fraction", [0.5, 0.9])
def test_truncated_files_are_refused(valid, family, fraction, tmp_path):
    data = Path(valid[family]).read_bytes()
    cut = tmp_path / f"cut_{family}{Path(valid[family]).suffix}"
    cut.write_bytes(data[: int(len(data) * fraction)])
    _assert_clear_refusal(LOADERS[family], cut, tmp_path / "canary")


@pytest.mark.parametrize("loader_name", list(LOADERS))
def test_valid_files_of_another_family_are_refused(valid, loader_name, tmp_path):
    for family, path in valid.items():
        if family == loader_name or (loader_name == "stylegan" and family == "encoder"):
            continue  # an encoder checkpoint legitimately carries its generator
        _assert_clear_refusal(LOADERS[loader_name], Path(path), tmp_path / "canary")


def test_wrong_dtypes_and_shapes_are_refused(valid, tmp_path):
    from safetensors.torch import load_file

    dino = load_file(str(valid["dino"]))
    ints = {k: v.to(torch.int32) if v.ndim >= 2 else v for k, v in dino.items()}
    save_file(ints, tmp_path / "int_dino.safetensors")
    wrong_shape = dict(dino)
    wrong_shape["blocks.0.attn.qkv.weight"] = torch.zeros(7, 3)
    save_file(wrong_shape, tmp_path / "shape_dino.safetensors")
    for name in ("int_dino.safetensors", "shape_dino.safetensors"):
        _assert_clear_refusal(load_dino, tmp_path / name, tmp_path / "canary")
    put = torch.load(valid["put"], weights_only=True)
    put["model"]["to_logits.weight"] = torch.zeros(3, 3)
    torch.save(put, tmp_path / "shape_put.pth")
    _assert_clear_refusal(load_put, tmp_path / "shape_put.pth", tmp_path / "canary")
    save_file({"direction": torch.ones(4, 4, 4, 4)}, tmp_path / "4d_direction.safetensors")
    _assert_clear_refusal(load_direction, tmp_path / "4d_direction.safetensors", tmp_path / "canary")
    save_file({"direction": torch.full((10, 64), float("nan"))}, tmp_path / "nan_direction.safetensors")
    _assert_clear_refusal(load_direction, tmp_path / "nan_direction.safetensors", tmp_path / "canary")


# ------------------------------------------------------------------------------------ no swallowed Cancel
# ComfyUI's Cancel is an exception (InterruptProcessingException, an Exception subclass): a broad `except`
# around work that can be cancelled would swallow it. Broad handlers are allowed only where untrusted bytes are
# parsed (each listed with why), never around model calls.
BROAD_HANDLERS_ALLOWED = {
    ("models/core/checkpoint_io.py", "torch_load"): "the unpickler raises arbitrary types for hostile input; re-raised as CheckpointError",
    ("models/core/checkpoint_io.py", "read_safetensors"): "safetensors' own error class is not public; re-raised",
    ("models/stylegan/nvlabs_pickle.py", "_load_storage_bytes"): "hostile storage bytes; re-raised as CheckpointError",
    ("models/stylegan/nvlabs_pickle.py", "read_nvlabs_pickle"): "hostile bytes; re-raised as CheckpointError",
    ("train.py", "__init__"): "PIL's verify raises many types for broken image files; they are skipped and counted",
    ("nodes/http_routes.py", "serve"): "the live-preview route runs beside the queue, not in a prompt: a failing "
                                       "render is answered as JSON, never raised into the server; ComfyUI's "
                                       "interrupt is re-raised just before it (the service answers Cancel 409)",
}


def _broad_handlers(path: Path, root: Path):
    import ast

    tree = ast.parse(path.read_text())
    found = []

    def visit(node, func):
        for child in ast.iter_child_nodes(node):
            name = child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else func
            if isinstance(child, ast.ExceptHandler):
                t = child.type
                names = [] if t is None else [e.id for e in (t.elts if isinstance(t, ast.Tuple) else [t])
                                              if isinstance(e, ast.Name)]
                if t is None or {"Exception", "BaseException"} & set(names):
                    found.append((str(path.relative_to(root)), func, child.lineno))
            visit(child, name)

    visit(tree, "<module>")
    return found


def test_no_broad_exception_handler_can_swallow_cancel():
    root = Path(__file__).resolve().parents[1]
    files = list((root / "models").rglob("*.py")) + list((root / "nodes").rglob("*.py")) + list(root.glob("*.py"))
    handlers = [h for f in files for h in _broad_handlers(f, root)]
    unexpected = [h for h in handlers if (h[0], h[1]) not in BROAD_HANDLERS_ALLOWED]
    assert not unexpected, f"broad except handlers that could swallow ComfyUI's interrupt: {unexpected}"
    assert handlers, "the scan found nothing at all: it is broken"
