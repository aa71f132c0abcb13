"""Regenerate the LPIPS golden tensors from the reference implementation (tests/test_lpips.py reads them).

    .venv/bin/python tests/golden/lpips/regenerate.py

Needs the reference `lpips` package (pip install lpips==0.1.4; it is Richard Zhang's PerceptualSimilarity code)
and torchvision, only here: the test reads the stored tensors and needs neither.

Weights: the v0.1 heads are the real ones the lpips package ships (alex.pth, vgg.pth, copied here unchanged, BSD-2,
see README.md). The ImageNet backbones are too large to store, so `seeded_backbone(net)` draws every conv of
torchvision's AlexNet / VGG16 `features` from one seeded CPU generator (He-normal weights, small non-positive biases
so that a flat input region at the scaling layer's shift colour gives all-zero features: the case the reference's
eps guards), and the test rebuilds the same weights from the seed.

Written here: golden.safetensors with, per case (alex_small [3,3,64,96], vgg_small [2,3,48,80], alex_1024
[1,3,1024,1024]):
  <case>_dist [B]: the reference distance; <case>_x, <case>_y: the inputs (small cases; alex_1024's inputs are
  `seeded_pair(1024)`); <case>_gx, <case>_gy: d(sum of distances)/d(x), /d(y) (small cases in full; for alex_1024
  a 16x16 average-pooled grad and a full-resolution 64x64 crop at CROP).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
SEED = 3434
SHIFT_COLOUR = (-0.030, -0.088, -0.188)  # scales to exactly 0: a dead region for every first-layer feature
CROP = (slice(448, 512), slice(576, 640))

ALEX_CONVS = ((0, 64, 3, 11), (3, 192, 64, 5), (6, 384, 192, 3), (8, 256, 384, 3), (10, 256, 256, 3))
VGG_CONVS = ((0, 64, 3), (2, 64, 64), (5, 128, 64), (7, 128, 128), (10, 256, 128), (12, 256, 256), (14, 256, 256),
             (17, 512, 256), (19, 512, 512), (21, 512, 512), (24, 512, 512), (26, 512, 512), (28, 512, 512))


def seeded_backbone(net: str, seed: int = SEED) -> dict[str, torch.Tensor]:
    """torchvision's `features.*` conv weights and biases for AlexNet ("alex") or VGG16 ("vgg"), seeded."""
    convs = ALEX_CONVS if net == "alex" else tuple((i, o, c, 3) for i, o, c in VGG_CONVS)
    gen = torch.Generator().manual_seed(seed)
    sd = {}
    for index, c_out, c_in, k in convs:
        sd[f"features.{index}.weight"] = torch.randn(c_out, c_in, k, k, generator=gen) * (2.0 / (c_in * k * k)) ** 0.5
        sd[f"features.{index}.bias"] = -torch.rand(c_out, generator=gen) * 0.05
    return sd


def seeded_pair(size: int, batch: int = 1, seed: int = SEED + 1) -> tuple[torch.Tensor, torch.Tensor]:
    """A smooth image with texture and a slightly different copy, [-1, 1], with a flat shift-colour square."""
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.rand(batch, 3, 8, 8, generator=gen) * 2 - 1
    x = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)
    x = (x + 0.1 * torch.randn(batch, 3, size, size, generator=gen)).clamp(-1, 1)
    y = (x + 0.05 * torch.randn(batch, 3, size, size, generator=gen)).clamp(-1, 1)
    flat = slice(size // 8, size // 8 + size // 4)
    for img in (x, y):
        img[:, :, flat, flat] = torch.tensor(SHIFT_COLOUR).view(1, 3, 1, 1)
    return x, y


def small_pairs(batch: int, h: int, w: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Hostile small pairs: a smooth image vs a slightly perturbed copy (both with a dead flat square), noise vs
    noise, saturated +-1 vs smooth (only x has the dead square), then more noise."""
    gen = torch.Generator().manual_seed(seed)
    coarse = F.interpolate(torch.rand(batch, 3, 4, 6, generator=gen) * 2 - 1, size=(h, w), mode="bilinear",
                           align_corners=False)
    x = torch.rand(batch, 3, h, w, generator=gen) * 2 - 1
    y = torch.rand(batch, 3, h, w, generator=gen) * 2 - 1
    x[0], y[0] = coarse[0], (coarse[0] + 0.05 * torch.randn(3, h, w, generator=gen)).clamp(-1, 1)
    colour = torch.tensor(SHIFT_COLOUR).view(3, 1, 1)
    x[0, :, 8:30, 10:40] = colour
    y[0, :, 8:30, 10:40] = colour
    if batch > 2:
        x[2], y[2] = torch.sign(x[2]), coarse[2]
        x[2, :, 20:40, 30:60] = colour
    return x, y


def reference_model(net: str, lpips_module):
    """The reference LPIPS with its real v0.1 heads and our seeded trunk loaded into its slices."""
    model = lpips_module.LPIPS(net=net, version="0.1", pretrained=True, pnet_rand=True, verbose=False)
    sd = seeded_backbone(net)
    trunk = model.net.state_dict()  # slice{n}.{torchvision index}.weight
    model.net.load_state_dict({k: sd["features." + k.split(".", 1)[1]] for k in trunk})
    return model.eval()


def reference_run(model, x: torch.Tensor, y: torch.Tensor):
    x, y = x.clone().requires_grad_(True), y.clone().requires_grad_(True)
    dist = model(x, y).flatten()
    gx, gy = torch.autograd.grad(dist.sum(), (x, y))
    return dist.detach(), gx, gy


def main() -> None:
    import lpips  # the reference package (and torchvision, which it imports)
    from safetensors.torch import save_file

    torch.set_grad_enabled(True)
    out = {}
    for case, net, (b, h, w), seed in (("alex_small", "alex", (3, 64, 96), 11), ("vgg_small", "vgg", (2, 48, 80), 12)):
        model = reference_model(net, lpips)
        x, y = small_pairs(b, h, w, seed)
        dist, gx, gy = reference_run(model, x, y)
        assert torch.isfinite(dist).all()
        out.update({f"{case}_x": x, f"{case}_y": y, f"{case}_dist": dist, f"{case}_gx": gx, f"{case}_gy": gy})
    x, y = seeded_pair(1024)
    dist, gx, gy = reference_run(reference_model("alex", lpips), x, y)
    out["alex_1024_dist"] = dist
    for name, g in (("gx", gx), ("gy", gy)):
        out[f"alex_1024_{name}_pooled"] = F.avg_pool2d(g, 16)
        out[f"alex_1024_{name}_crop"] = g[:, :, CROP[0], CROP[1]].contiguous()
    out = {k: v.contiguous().float() for k, v in out.items()}
    save_file(out, str(HERE / "golden.safetensors"),
              metadata={"lpips": lpips.__version__ if hasattr(lpips, "__version__") else "0.1.4",
                        "torch": torch.__version__, "seed": str(SEED)})
    heads_dir = Path(os.path.dirname(lpips.__file__)) / "weights" / "v0.1"
    for net in ("alex", "vgg"):
        (HERE / f"{net}.pth").write_bytes((heads_dir / f"{net}.pth").read_bytes())
    print("wrote", HERE / "golden.safetensors", {k: tuple(v.shape) for k, v in out.items()}, file=sys.stderr)


if __name__ == "__main__":
    main()
