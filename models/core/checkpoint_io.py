"""Reading weight files without ever executing code from them, and writing files atomically.

The file's *format* is detected from its bytes (torch zip / legacy torch pickle, safetensors), read with
`torch.load(weights_only=True)` or safetensors, and unwrapped into named state dicts (`g_ema`, `g`,
`encoder`, `decoder`, ...) plus extras (`latent_avg`, `opts`, safetensors metadata): a `RawCheckpoint`.
What the tensors *are* is decided by each model family's own `detect` (in its module), dispatched by
`registry.py`. NVlabs `.pkl` files are the StyleGAN2 family's own format (`nvlabs_pickle.py`).

Also here: the reader for the official repositories' YAML configs (PyYAML `dump` output, plain data only).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import struct
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch

from .errors import CheckpointError

# safetensors metadata key naming what a TransEdit-written file holds ("stylegan2", "direction", ...)
TRANSEDIT_FORMAT_KEY = "transedit_format"
KNOWN_FORMATS = (
    "rosinality/pSp/e4e/Style Transformer/StylePrompter .pt or .pth ({'g_ema', 'latent_avg'} or "
    "{'state_dict' with decoder.*, 'opts', 'latent_avg'})",
    "NVlabs stylegan2-ada-pytorch / stylegan3-repo StyleGAN2 .pkl (G_ema)",
    "TransEdit .safetensors (written by `transedit convert`) or a safetensors of rosinality g_ema keys",
)
# Sub-models stored side by side in one encoder training checkpoint's state_dict.
SUBMODEL_PREFIXES = ("encoder", "decoder", "classifier")


def formats_hint() -> str:
    return "TransEdit reads: " + "; ".join(KNOWN_FORMATS) + "."


# ----------------------------------------------------------------------------------------- reading
@dataclass
class RawCheckpoint:
    path: str
    format: str  # "torch" | "nvlabs-pkl" | "safetensors"
    state_dicts: dict[str, dict[str, torch.Tensor]]  # named sub-state-dicts, e.g. {"g_ema": ..., "g": ...}
    extras: dict = field(default_factory=dict)  # latent_avg, opts, metadata, config


def _sniff(path: Path) -> str:
    with open(path, "rb") as f:
        head = f.read(16)
    if len(head) < 8:
        raise CheckpointError(path, "file is empty or truncated.", formats_hint())
    if head[:4] == b"PK\x03\x04":
        return "torch-zip"
    if head[0] == 0x80:  # pickle protocol 2+: legacy torch.save or a plain pickle (NVlabs)
        return "pickle"
    (header_len,) = struct.unpack("<Q", head[:8])
    if 2 <= header_len <= 100_000_000 and head[8:9] == b"{":
        return "safetensors"
    raise CheckpointError(path, "unrecognised file type (not a PyTorch, pickle or safetensors file).",
                          formats_hint())


def is_nvlabs_pickle(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(1 << 16)
    return b"torch_utils.persistence" in head or b"torch_utils\npersistence" in head


def _check_torch_zip(path: Path) -> None:
    """torch.save stores every member of its zip uncompressed. A compressed member can inflate far beyond
    the file (a zip bomb: a few MB that expand to many GB), and torch.load inflates members into memory
    before any check — so refuse compressed members, and members that claim more bytes than the file has."""
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
        raise CheckpointError(path, f"could not be read as a PyTorch checkpoint ({type(e).__name__}: {e}); the "
                              "file may be truncated or corrupt — download it again.", formats_hint()) from None
    # TorchScript archives (torch.jit.save) carry their program as code/ and constants.pkl members; name them as
    # what they are before any other check, since a program is refused whatever its packing
    names = [m.filename for m in members]
    if any("/code/" in n or n.endswith("/constants.pkl") for n in names):
        raise CheckpointError(path, "is a TorchScript program (torch.jit.save), not a checkpoint of weights: loading "
                              "it would run its code, which TransEdit never does.",
                              "Download the official checkpoint (.pt/.pth saved with torch.save, or .safetensors).")
    packed = [m.filename for m in members if m.compress_type != zipfile.ZIP_STORED]
    if packed:
        raise CheckpointError(path, f"has compressed members ({', '.join(packed[:2])}): torch.save never "
                              "compresses, and a compressed member can expand without bound (a 'zip bomb'). "
                              "Refusing to inflate it.", "Download the original file again.")
    claimed, size = sum(m.file_size for m in members), path.stat().st_size
    if claimed > size:
        raise CheckpointError(path, f"declares {claimed} bytes of members in a {size}-byte file (overlapping or "
                              "forged entries). Refusing to read it.", "Download the original file again.")


def torch_load(path: Path):
    """torch.load with weights_only=True; rosinality's train.py also pickles an argparse.Namespace."""
    path = Path(path)
    with open(path, "rb") as f:
        is_zip = f.read(4) == b"PK\x03\x04"
    if is_zip:
        _check_torch_zip(path)
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError, struct.error) as e:
        if _is_weights_only_refusal(e):
            raise unsafe_file_error(path, e, is_zip) from None
        text = str(e)
        raise CheckpointError(path, f"could not be read as a PyTorch checkpoint ({type(e).__name__}: "
                              f"{text.splitlines()[0] if text else 'no detail'}); the file may be truncated "
                              "or corrupt — download it again.", formats_hint()) from None
    except Exception as e:  # the unpickler raises pickle.UnpicklingError and others for hostile input
        if e.__class__.__name__ == "UnpicklingError":
            raise unsafe_file_error(path, e, is_zip) from None
        raise


def _is_weights_only_refusal(e: BaseException) -> bool:
    text = str(e)
    return "Weights only load failed" in text or "Unsupported global" in text


def _globals_asked_for(path: Path, error: BaseException, is_zip: bool) -> list[str]:
    """The Python objects the file's pickle names. For zip checkpoints torch lists them by reading the
    pickle's opcodes (nothing is imported or run); otherwise the name is taken from torch's refusal."""
    if is_zip:
        try:
            found = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
        except (RuntimeError, ValueError, OSError, zipfile.BadZipFile, AttributeError):
            found = []
        if found:
            return sorted(set(found))
    text = str(error)
    names = re.findall(r"GLOBAL ([\w.]+) was not an allowed global", text) or re.findall(r"GLOBAL ([\w.]+)", text)
    return sorted(set(names))


def unsafe_file_error(path: Path, error: BaseException, is_zip: bool = True) -> CheckpointError:
    """TransEdit's own one-paragraph refusal for a torch file whose pickle asks for Python objects
    (instead of PyTorch's long 'Weights only load failed ...' text)."""
    names = _globals_asked_for(path, error, is_zip)
    asked = ", ".join(f"'{n}'" for n in names[:4]) if names else "a Python object that is not a tensor"
    if len(names) > 4:
        asked += f" and {len(names) - 4} more"
    if any(n.startswith("torch_utils") for n in names):
        return CheckpointError(path, f"is an NVlabs pickle (it asks for {asked}). Nothing in it was executed.",
                               "Load it with 'TransEdit Load StyleGAN' (models/stylegan), which reads NVlabs "
                               ".pkl generators without running their code.")
    return CheckpointError(
        path, f"refusing to load: to unpickle it, PyTorch would have to import and call {asked}, which a file "
        "of plain weights never needs. Nothing in it was executed: TransEdit reads weights with "
        "torch.load(weights_only=True).",
        "Fix: use the file as the official repository releases it (the README's weight table links each "
        "source), or, only if you trust where it came from, re-save just its tensors in the environment that "
        "wrote it (torch.save(checkpoint['state_dict'], 'plain.pt')); a StyleGAN2 generator can then be "
        "turned into safetensors with `python -m transedit convert plain.pt generator.safetensors`.")


def read_safetensors(path: Path):
    from safetensors import safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        return load_file(str(path), device="cpu"), metadata
    except Exception as e:  # safetensors raises its own SafetensorError (not a public class)
        if isinstance(e, (KeyboardInterrupt, SystemExit)):
            raise
        raise CheckpointError(path, f"is not a valid safetensors file ({e}); it may be truncated — "
                              "download or convert it again.") from None


def check_weight_dtypes(path, module: torch.nn.Module, sd: dict[str, torch.Tensor]) -> None:
    """Refuse integer/bool tensors where the model has floating-point weights: load_state_dict would cast
    them silently into nonsense."""
    own = module.state_dict()
    bad = [f"{k} ({v.dtype})" for k, v in sd.items()
           if k in own and own[k].is_floating_point() and isinstance(v, torch.Tensor) and not v.is_floating_point()]
    if bad:
        raise CheckpointError(path, f"holds non-floating-point tensors where weights belong (e.g. {bad[:3]}); "
                              "it is damaged or not a weight file.", "Download or convert it again.")
    # shapes the layout inferred from the other tensors does not allow (load_state_dict would raise a bare
    # RuntimeError about a module the user never heard of)
    wrong = [f"{k} {tuple(v.shape)} (expected {tuple(own[k].shape)})" for k, v in sd.items()
             if k in own and isinstance(v, torch.Tensor) and tuple(v.shape) != tuple(own[k].shape)]
    if wrong:
        raise CheckpointError(path, f"has tensors whose shapes do not fit the rest of the file (e.g. {wrong[:2]}); "
                              "it is damaged or was edited.", "Download or convert it again.")


def strip_prefix(sd: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def strip_dataparallel(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if sd and all(k.startswith("module.") for k in sd):
        return strip_prefix(sd, "module.")
    return sd


def tensor_dict(obj) -> Optional[dict[str, torch.Tensor]]:
    if isinstance(obj, dict) and obj and all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in obj.items()):
        return dict(obj)
    return None


def read_checkpoint(path) -> RawCheckpoint:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(path, "file not found.", "Put weight files in ComfyUI's models folder and refresh.")
    kind = _sniff(path)
    if kind == "safetensors":
        sd, metadata = read_safetensors(path)
        extras: dict = {"metadata": metadata}
        if "latent_avg" in sd:
            extras["latent_avg"] = sd.pop("latent_avg")
        if metadata.get("config"):
            extras["config"] = json.loads(metadata["config"])
        if metadata.get("format") == "transedit-encoder":  # written by transedit.train: encoder.*, decoder.*, smart.*
            extras["opts"] = json.loads(metadata.get("opts") or "{}")
            parts = {part: strip_prefix(sd, part + ".") for part in ("encoder", "decoder", "smart")}
            return RawCheckpoint(str(path), "safetensors", {k: v for k, v in parts.items() if v}, extras)
        name = metadata.get("weights", "g_ema")
        return RawCheckpoint(str(path), "safetensors", {name: strip_dataparallel(sd)}, extras)

    obj = torch_load(path)
    state_dicts: dict[str, dict[str, torch.Tensor]] = {}
    extras = {}
    if isinstance(obj, dict):
        for key, name in (("g_ema", "g_ema"), ("G_ema", "g_ema"), ("g", "g"), ("G", "g"), ("d", "d"),
                          ("teacher", "teacher"), ("student", "student"), ("ema", "ema"), ("model", "model")):
            sd = tensor_dict(obj.get(key))
            if sd is not None and name not in state_dicts:
                state_dicts[name] = strip_dataparallel(sd)
        inner = tensor_dict(obj.get("state_dict"))
        if inner is not None:
            inner = strip_dataparallel(inner)
            state_dicts["state_dict"] = inner
            # encoder training checkpoints: encoder.*, decoder.* (+ DataParallel module.) in one dict
            for part in SUBMODEL_PREFIXES:
                sub = strip_dataparallel(strip_prefix(inner, part + "."))
                if sub:
                    state_dicts[part] = sub
        if not state_dicts and tensor_dict(obj) is not None:
            state_dicts["state_dict"] = strip_dataparallel(obj)
        if isinstance(obj.get("latent_avg"), torch.Tensor):
            extras["latent_avg"] = obj["latent_avg"]
        if isinstance(obj.get("opts"), dict):
            extras["opts"] = obj["opts"]
    if not state_dicts:
        raise CheckpointError(path, "holds no state dict TransEdit recognises.", formats_hint())
    decoder = state_dicts.get("decoder")
    if decoder and any(k.startswith("generator.") for k in decoder):
        # StylePrompter's full checkpoint: decoder = {generator.*: StyleGAN2, smart_block.*: SMART}
        state_dicts["decoder"] = strip_prefix(decoder, "generator.")
        smart = strip_prefix(decoder, "smart_block.")
        if smart:
            state_dicts["smart"] = smart
    return RawCheckpoint(str(path), "torch", state_dicts, extras)


def load_plain_state_dict(path) -> dict[str, torch.Tensor]:
    """A plain state dict from a local .pth/.pt (pretrained helper networks: LPIPS, ArcFace, a Swin backbone):
    weights_only loading with errors naming the file, unwrapped from {'state_dict' | 'model' | 'net': ...} and
    DataParallel prefixes."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(path, "file not found.")
    obj = torch_load(path)
    for key in ("state_dict", "model", "net"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    sd = tensor_dict(obj)
    if sd is None:
        raise CheckpointError(path, "is not a state dict of tensors.")
    return strip_dataparallel(sd)


# ----------------------------------------------------------------------------------------- writing
def atomic_write(path, write: Callable[[str], None], overwrite: bool = False) -> Path:
    """Write via a temp file in the same folder, then move into place; never clobber unless asked."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; pass overwrite=True (--overwrite) to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        if overwrite:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)  # fails if someone created `path` meanwhile: no clobbering
            except FileExistsError:
                raise FileExistsError(f"{path} already exists; pass overwrite=True to replace it") from None
            except OSError:  # filesystems without hard links
                os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path




# ------------------------------------------------------------------------------- official YAML configs
# PyYAML's `yaml.dump` of a config that `yaml.full_load` read writes these tags for plain builtins; they
# carry data only. Every other python/* tag names an object to construct or a callable to call.
PLAIN_PYTHON_TAGS = {
    "tag:yaml.org,2002:python/tuple": lambda loader, node: list(loader.construct_sequence(node, deep=True)),
    "tag:yaml.org,2002:python/list": lambda loader, node: list(loader.construct_sequence(node, deep=True)),
    "tag:yaml.org,2002:python/dict": lambda loader, node: dict(loader.construct_mapping(node, deep=True)),
    "tag:yaml.org,2002:python/str": lambda loader, node: loader.construct_scalar(node),
    "tag:yaml.org,2002:python/unicode": lambda loader, node: loader.construct_scalar(node),
    "tag:yaml.org,2002:python/bool": lambda loader, node: loader.construct_yaml_bool(node),
    "tag:yaml.org,2002:python/int": lambda loader, node: loader.construct_yaml_int(node),
    "tag:yaml.org,2002:python/long": lambda loader, node: loader.construct_yaml_int(node),
    "tag:yaml.org,2002:python/float": lambda loader, node: loader.construct_yaml_float(node),
    "tag:yaml.org,2002:python/none": lambda loader, node: loader.construct_yaml_null(node),
}


def read_official_yaml(path) -> dict:
    """A config.yaml as the official code writes it (PyYAML `dump`), as plain data: tuples become lists.
    Built on PyYAML's SafeLoader, which never imports or calls anything; a file with a tag that would
    construct an object (`!!python/object`, `/name`, `/module`, `/object/apply`, ...) is refused with a
    CheckpointError naming the file and the tag. Unreadable YAML is an error too, never silently skipped."""
    path = Path(path)
    try:
        import yaml  # PyYAML: a TransEdit dependency (ComfyUI has it too)
    except ImportError:
        raise CheckpointError(path, "is a YAML config, and reading it needs PyYAML, which is not installed.",
                              "Fix: pip install pyyaml (TransEdit's requirements.txt lists it).") from None

    class OfficialConfigLoader(yaml.SafeLoader):
        pass

    for tag, construct in PLAIN_PYTHON_TAGS.items():
        OfficialConfigLoader.add_constructor(tag, construct)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise CheckpointError(path, f"could not be read ({type(e).__name__}: {e}).") from None
    try:
        data = yaml.load(text, Loader=OfficialConfigLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.constructor.ConstructorError as e:
        tag = getattr(e, "problem", "") or str(e)
        found = re.search(r"tag '([^']+)'", tag)
        tag = found.group(1).replace("tag:yaml.org,2002:", "!!") if found else tag
        where = f" (line {e.problem_mark.line + 1})" if getattr(e, "problem_mark", None) else ""
        raise CheckpointError(path, f"refusing to read: it contains the tag {tag}{where}, which asks YAML to "
                              "construct a Python object or call code; an official config holds plain data only. "
                              "Nothing in it was executed.",
                              "Fix: use the config.yaml the official training wrote, unedited.") from None
    except yaml.YAMLError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(path, f"is not valid YAML ({first}).",
                              "Fix: use the config.yaml the official training wrote, unedited.") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise CheckpointError(path, f"holds a YAML {type(data).__name__}, not a config mapping.")
    return data
