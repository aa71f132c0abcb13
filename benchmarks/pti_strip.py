"""The README's before/after strip for pivotal tuning, made here with no downloaded weights.

    python benchmarks/pti_strip.py     # -> docs/img/pti_strip.jpg + benchmarks/results/pti_strip.json

A small random-weight generator (64 px, seeded) and LPIPS AlexNet with a seeded trunk and the real v0.1 heads
(tests/golden/lpips/alex.pth) tune, with PTI's preset (350 steps, lr 3e-4) but no early stop (LPIPS with a random
trunk reaches 0.06 long before the picture does), around the
generator's mean latent as the pivot, towards the pack's test photo (scikit-image's astronaut, a face crop). The
strip: the photo | the generator at the pivot before tuning | after. (No edit tile: a random generator has no
meaningful directions to show one with.) With trained weights the "before" is an encoder's inversion instead of a random face; the
mechanism is the same. The JSON records L2 and LPIPS to the photo before and after, the steps run and the time.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

SIZE, SEED = 64, 0


def photo(size: int) -> torch.Tensor:
    """The astronaut's face as [1, 3, size, size] in [-1, 1] (the crop the group-photo stand-in uses)."""
    from skimage import data

    face = Image.fromarray(data.astronaut()).crop((90, 0, 360, 270)).resize((size, size), Image.LANCZOS)
    return torch.from_numpy(np.asarray(face, dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)[None]


def lpips_with_real_heads():
    from transedit.models.perceptual.lpips import LPIPS
    from transedit.models.core.checkpoint_io import load_plain_state_dict

    model = LPIPS("alex")
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, p in model.features.named_parameters():
            scale = (2.0 / p[0].numel()) ** 0.5 if name.endswith("weight") else 0.01
            p.copy_(torch.randn(p.shape, generator=gen) * scale)
        heads = load_plain_state_dict(REPO / "tests" / "golden" / "lpips" / "alex.pth")
        for i, w in enumerate(model.heads):
            w.copy_(heads[f"lin{i}.model.1.weight"].view_as(w))
    return model.eval()


def to_image(x: torch.Tensor) -> Image.Image:
    arr = ((x[0].clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
    return Image.fromarray(arr)


def main() -> None:
    from transedit.models.stylegan.generator import StyleGAN2Config, StyleGAN2Generator
    from dataclasses import replace

    from transedit.models.stylegan.tuning import PTI_PRESET, pivotal_tune

    torch.manual_seed(SEED)
    generator = StyleGAN2Generator(StyleGAN2Config(size=SIZE, style_dim=256, n_mlp=4, channels={r: 128 for r in (4, 8, 16, 32, 64)})).eval()
    target = photo(SIZE)
    lpips = lpips_with_real_heads()
    pivot = generator.mean_latent(4096, seed=SEED)[None].expand(1, generator.n_latent, -1).contiguous()
    with torch.no_grad():
        before = generator([pivot], input_is_latent=True)
    start = time.perf_counter()
    result = pivotal_tune(generator, pivot, target, lpips, replace(PTI_PRESET, early_stop_lpips=None), device="cpu",
                          seed=SEED)
    seconds = time.perf_counter() - start
    tuned = result.generator
    with torch.no_grad():
        after = tuned([pivot], input_is_latent=True)

    def dist(x):
        return {"l2": float(torch.mean((x - target) ** 2)), "lpips": float(lpips(x, target)[0])}

    tiles = [to_image(t).resize((192, 192), Image.LANCZOS) for t in (target, before, after)]
    strip = Image.new("RGB", (192 * 3 + 12, 192), "white")
    for i, tile in enumerate(tiles):
        strip.paste(tile, (i * 198, 0))
    out = REPO / "docs" / "img" / "pti_strip.jpg"
    out.parent.mkdir(parents=True, exist_ok=True)
    strip.save(out, quality=88)
    record = {"generator": f"random weights, {SIZE} px, seed {SEED}", "preset": "PTI", "steps_run": result.steps_run,
              "stopped_early": result.stopped_early, "seconds_cpu": round(seconds, 1), "before": dist(before),
              "after": dist(after), "strip": str(out.relative_to(REPO))}
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "pti_strip.json").write_text(json.dumps(record, indent=1))
    print(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
