"""Latent-recovery benchmark: how well an encoder inverts a generator's own images. Needs no dataset and no
pretrained weights beyond the two files (any generator Load StyleGAN reads, any encoder Load Encoder reads).

    python benchmarks/bench_latent_recovery.py --encoder runs/swin/encoder.safetensors --n 256 \\
        --out benchmarks/results/latent_recovery_swin.json
    python benchmarks/bench_latent_recovery.py --encoder e.pt --generator g.pt --truncation 0.7

For n samples w ~ mapping(z) (truncated toward the mean), x = G(w): invert x with the encoder, re-synthesise
G(E(x)) and report pixel MSE and PSNR of G(E(x)) against x (images in [-1, 1], peak-to-peak 2, at min(size, 256)²),
and the W+ distance |E(x) - w| (mean L2 per code). The "mean latent" row is the same metrics for the
trivial inverter that always answers latent_avg: an encoder must beat it.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch
import torch.nn.functional as F

from transedit.models.registry import load_encoder, load_stylegan2


def _metrics(recon: torch.Tensor, target: torch.Tensor, w_pred: torch.Tensor, w_true: torch.Tensor) -> dict:
    mse = F.mse_loss(recon, target, reduction="none").mean(dim=(1, 2, 3))
    psnr = 10 * torch.log10(4.0 / mse.clamp_min(1e-12))  # peak-to-peak 2 -> peak² = 4
    dist = (w_pred - w_true).norm(dim=-1).mean(dim=1)
    return {"mse": float(mse.mean()), "psnr_db": float(psnr.mean()), "latent_l2": float(dist.mean())}


@torch.no_grad()
def run(encoder_path, generator_path=None, n: int = 64, batch: int = 8, truncation: float = 0.7, seed: int = 0,
        device: str = "cpu") -> dict:
    dev = torch.device(device)
    enc = load_encoder(encoder_path)
    gen_desc = load_stylegan2(generator_path) if generator_path else enc.generator
    if gen_desc is None:
        raise ValueError("the encoder file has no generator; give --generator")
    g = gen_desc.model.to(dev).eval()
    e = enc.model.to(dev).eval()
    size = enc.input_size
    mean = gen_desc.latent_avg.float().reshape(-1, g.style_dim).mean(0).to(dev)
    gen = torch.Generator().manual_seed(seed)
    sums = {"encoder": [], "mean_latent": []}
    t0 = time.perf_counter()
    for start in range(0, n, batch):
        b = min(batch, n - start)
        z = torch.randn(b, g.style_dim, generator=gen).to(dev)
        w = mean + truncation * (g.mapping(z) - mean)
        wplus = w.unsqueeze(1).repeat(1, g.n_latent, 1)
        x = g.synthesis(wplus)
        if x.shape[-1] > 256:
            x = F.adaptive_avg_pool2d(x, 256)
        x = x.clamp(-1, 1)
        x_in = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
        w_pred = e(x_in)
        recon = g.synthesis(w_pred)
        recon = F.adaptive_avg_pool2d(recon, x.shape[-1]) if recon.shape[-1] != x.shape[-1] else recon
        sums["encoder"].append((b, _metrics(recon, x, w_pred, wplus)))
        w_mean = mean.view(1, 1, -1).expand_as(wplus)
        base = g.synthesis(w_mean.contiguous())
        base = F.adaptive_avg_pool2d(base, x.shape[-1]) if base.shape[-1] != x.shape[-1] else base
        sums["mean_latent"].append((b, _metrics(base, x, w_mean, wplus)))
    out = {}
    for name, rows in sums.items():
        total = sum(b for b, _ in rows)
        out[name] = {k: sum(b * m[k] for b, m in rows) / total for k in rows[0][1]}
    return {"encoder": os.path.basename(str(encoder_path)), "family": enc.family,
            "generator": gen_desc.name, "generator_size": gen_desc.config.size,
            "n": n, "truncation": truncation, "seed": seed, "device": dev.type,
            "seconds": round(time.perf_counter() - t0, 2), "results": out}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--encoder", required=True)
    ap.add_argument("--generator", help="default: the generator stored with the encoder")
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--truncation", type=float, default=0.7)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", help="write the JSON here")
    args = ap.parse_args(argv)
    report = run(args.encoder, args.generator, args.n, args.batch, args.truncation, args.seed, args.device)
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        tmp = args.out + ".tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
