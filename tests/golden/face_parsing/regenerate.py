"""Regenerate the face-parsing golden tensors from the official code (tests/test_face_parsing.py reads them).

    .venv/bin/python tests/golden/face_parsing/regenerate.py [--zll DIR] [--stit DIR]

DIR: bare git repositories of zllrunning/face-parsing.PyTorch and rotemtzaban/STIT (default: the /work/.mirror
copies). Each is extracted to a temporary folder and imported from there; nothing is copied into the project.
Their ResNet-18 downloads torchvision weights while it is constructed: `torch.utils.model_zoo.load_url` is replaced
by a stand-in for the construction only (it returns nothing, so the module keeps its own init, which the seeded
weights below then overwrite).

Weights: `random_state(manifest, SEED)` draws every tensor of the official state dict from one seeded CPU generator
in the manifest's key order (convolutions normal with variance 1.5 / fan-in, the heads' rows centred, BatchNorm affine
and running statistics around their identity),
so the test rebuilds the same 13M weights from 100 bytes instead of storing 50 MB.

Written here: manifest.json (the official state dict's keys, shapes and dtypes, and a checksum of the seeded weights)
and golden.safetensors:
  net32_input [2,3,32,32], net32_out / net32_out16 / net32_out32: the official BiSeNet's three heads;
  netodd_input [1,3,42,54], netodd_out*: the same at a size whose strides do not halve evenly;
  mask_input [2,3,96,80] in [-1.3, 1.3]: through STIT's own calc_masks (edit_video_stitching_tuning.py, imported
  from its source) with STIT's seg_model_2.BiSeNet; mask_labels [2,512,512] uint8: the argmax it computed;
  mask_foreground_bits: its foreground mask (before dilation) packed with numpy.packbits.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.util
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))  # tests/, for the shared official_functions (not tests/golden: see tuning)
from official_functions import functions_from_source  # noqa: E402
SEED = 3421  # among the first seeds whose labels mix many classes, background, cloth and hat included
MIRRORS = Path("/work/.mirror")


def random_state(manifest: dict, seed: int = SEED) -> dict[str, torch.Tensor]:
    """Seeded weights for every key of the manifest (its order), independent of any module's init."""
    gen = torch.Generator().manual_seed(seed)
    sd = {}
    for key, entry in manifest["keys"].items():
        shape, dtype = tuple(entry["shape"]), getattr(torch, entry["dtype"])
        if not dtype.is_floating_point:
            sd[key] = torch.zeros(shape, dtype=dtype)  # num_batches_tracked
        elif key.endswith("running_var"):
            sd[key] = torch.rand(shape, generator=gen) + 0.5
        elif key.endswith("running_mean") or key.endswith(".bias"):
            sd[key] = torch.randn(shape, generator=gen) * 0.1
        elif len(shape) == 1:  # BatchNorm scale
            sd[key] = torch.rand(shape, generator=gen) * 0.5 + 0.75
        else:
            fan_in = int(np.prod(shape[1:]))
            weight = torch.randn(shape, generator=gen) * (1.5 / fan_in) ** 0.5
            if key.endswith(".conv_out.weight"):  # a head's rows centred: its input is >= 0 (after a ReLU), and
                weight -= weight.mean(dim=1, keepdim=True)  # uncentred rows let one class win everywhere
            sd[key] = weight
    return sd


def checksum(sd: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for key, value in sd.items():
        h.update(key.encode())
        h.update(value.contiguous().numpy().tobytes())
    return h.hexdigest()


def extract(repo: Path, into: Path, paths: tuple[str, ...]) -> Path:
    """The files needed from a bare repository (a mirror may lack its large data files)."""
    into.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(repo), "archive", "HEAD", *paths], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


@contextlib.contextmanager
def no_download():
    """The official ResNet-18 calls model_zoo.load_url while it is built: answer with nothing (no network)."""
    import torch.utils.model_zoo as model_zoo

    real = model_zoo.load_url
    calls = []
    model_zoo.load_url = lambda url, *a, **k: calls.append(url) or {}
    try:
        yield calls
    finally:
        model_zoo.load_url = real


def import_file(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def official_bisenet(zll: Path):
    """zllrunning's model.py (with its resnet.py as the top-level `resnet` it imports)."""
    try:
        import_file("resnet", zll / "resnet.py")
        model = import_file("zll_model", zll / "model.py")
    finally:
        sys.modules.pop("resnet", None)
        sys.modules.pop("zll_model", None)
    with no_download() as calls:
        net = model.BiSeNet(19)
    assert calls == ["https://download.pytorch.org/models/resnet18-5c106cde.pth"], calls
    return net.eval()


def stit_bisenet(stit: Path):
    model = import_file("stit_seg_model_2", stit / "models" / "seg_model_2.py")
    sys.modules.pop("stit_seg_model_2", None)
    with no_download():
        return model.BiSeNet(19).eval()


def stit_calc_masks(stit: Path):
    """STIT's calc_masks and logical_and_reduce, imported from edit_video_stitching_tuning.py's source with the
    globals they use; create_masks (the dilation, which needs CUDA there) is replaced by a recorder of its input."""
    from torchvision import transforms

    recorded = []

    def create_masks(border_pixels, mask, inner_dilation=0, outer_dilation=0, whole_image_border=False):
        recorded.append(mask.clone())
        return mask, mask, mask

    scope = {"F": F, "transforms": transforms, "torch": torch, "create_masks": create_masks}
    module, found = functions_from_source(stit / "edit_video_stitching_tuning.py",
                                          ("calc_masks", "logical_and_reduce"), scope)
    assert len(found) == 2, found
    return module.calc_masks, recorded


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--zll", type=Path, default=MIRRORS / "zllrunning+face-parsing.PyTorch" / "repo")
    ap.add_argument("--stit", type=Path, default=MIRRORS / "rotemtzaban+STIT" / "repo")
    args = ap.parse_args()
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        zll = extract(args.zll, Path(tmp) / "zll", ("model.py", "resnet.py"))
        stit = extract(args.stit, Path(tmp) / "stit", ("models/seg_model_2.py", "edit_video_stitching_tuning.py"))
        net = official_bisenet(zll)
        official_sd = net.state_dict()
        manifest = {"source": "zllrunning/face-parsing.PyTorch model.py BiSeNet(19).state_dict()",
                    "keys": {k: {"shape": list(v.shape), "dtype": str(v.dtype).replace("torch.", "")}
                             for k, v in official_sd.items()}}
        sd = random_state(manifest)
        manifest["seed"] = SEED
        manifest["weights_sha256"] = checksum(sd)
        net.load_state_dict(sd, strict=True)
        stit_net = stit_bisenet(stit)
        stit_net.load_state_dict(sd, strict=True)  # STIT's copy: same keys

        gen = torch.Generator().manual_seed(SEED + 1)
        tensors = {}
        with torch.no_grad():
            for name, shape in (("net32", (2, 3, 32, 32)), ("netodd", (1, 3, 42, 54))):
                x = torch.randn(shape, generator=gen)
                tensors[f"{name}_input"] = x
                outs = net(x)
                for suffix, out in zip(("out", "out16", "out32"), outs):
                    tensors[f"{name}_{suffix}"] = out.contiguous()
                for a, b in zip(outs, stit_net(x)):  # STIT's copy computes the same
                    assert torch.equal(a, b)
            images = torch.rand((2, 3, 96, 80), generator=gen) * 2.6 - 1.3
            labels = []

            def segmentation_model(x):
                outs = stit_net(x)
                labels.append(outs[0].argmax(dim=1))
                return outs

            calc_masks, recorded = stit_calc_masks(stit)
            calc_masks(images, segmentation_model, 0, 0, 0, False)
        foreground = recorded[0]
        assert foreground.shape == (2, 1, 512, 512) and 0.2 < foreground.mean() < 0.98, foreground.mean()
        tensors["mask_input"] = images
        tensors["mask_labels"] = labels[0].to(torch.uint8)
        tensors["mask_foreground_bits"] = torch.from_numpy(np.packbits(foreground.bool().numpy()))
    save_file(tensors, HERE / "golden.safetensors", metadata={"seed": str(SEED), "torch": torch.__version__})
    (HERE / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    print(f"wrote {HERE / 'golden.safetensors'} ({(HERE / 'golden.safetensors').stat().st_size} bytes), "
          f"{len(manifest['keys'])} keys, foreground share {float(foreground.mean()):.3f}, labels per class "
          f"{torch.bincount(labels[0].flatten(), minlength=19).tolist()}")


if __name__ == "__main__":
    main()
