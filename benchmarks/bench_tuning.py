"""Pivotal tuning (models/stylegan/tuning.py): speed, memory against the clip's length, and the official-code races.

    python benchmarks/bench_tuning.py speed --device cuda --size 1024 --steps 350 --dtypes fp32,auto
    python benchmarks/bench_tuning.py memory --device cpu --frames 30,120,300     # -> benchmarks/results/
    (the PTI/STIT races against the official code are stages of benchmarks/vs_official.py: --official pti=...
     --official stit=...)

speed: 350 PTI steps (early stop off, so every run does all of them) on a random config-f generator of --size,
LPIPS AlexNet with seeded random weights (the same architecture and cost as the real one), batch 1, a first call
to warm up; seconds and steps per second per precision.
memory: one process per clip length (nothing of one length is left in the next's numbers); the targets are
made before the measurement, so they are not counted: the peak above that level during pivotal_tune (STIT's
preset, one pass over every frame, chunks of 16 frames) is what tuning itself adds. CPU: resident-set growth
sampled every 2 ms; CUDA: torch.cuda.max_memory_allocated above the level before the call. Flat means: the
300-frame peak within 10% (+8 MiB) of the 30-frame one.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
MIB = 2 ** 20


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seeded_lpips(device, seed: int = 7):
    """LPIPS AlexNet (models/perceptual) with seeded random weights: the real network's shape and cost."""
    from transedit.models.perceptual.lpips import LPIPS

    model = LPIPS("alex")
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.features.named_parameters():
            scale = (2.0 / p[0].numel()) ** 0.5 if name.endswith("weight") else 0.01
            p.copy_(torch.randn(p.shape, generator=gen) * scale)
        for w in model.heads:
            w.copy_(torch.rand(w.shape, generator=gen) * 0.2)
    return model.to(device).eval()


def random_generator(size: int, device, channel_multiplier: int = 2, max_channels: int = 512, seed: int = 0):
    from transedit.models.stylegan.generator import StyleGAN2Config, StyleGAN2Generator, config_f_channels

    channels = {r: min(c, max_channels) for r, c in config_f_channels(size, channel_multiplier).items()}
    torch.manual_seed(seed)
    g = StyleGAN2Generator(StyleGAN2Config(size=size, channels=channels))
    with torch.no_grad():
        for m in g.modules():
            if hasattr(m, "weight") and isinstance(m.weight, torch.nn.Parameter) and m.weight.numel() == 1:
                m.weight.fill_(0.1)  # noise strengths
    return g.to(device).eval().requires_grad_(False)


def inputs(g, n: int, device, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(n, g.style_dim, generator=gen).to(device)
    with torch.no_grad():
        w = g.mapping(z)[:, None].repeat(1, g.n_latent, 1)
    targets = (torch.rand(n, 3, g.config.size, g.config.size, generator=gen) * 2 - 1)
    return w, targets


# ------------------------------------------------------------------------------------------------ speed
def speed(args):
    from transedit.models.stylegan import tuning as T

    device = torch.device(args.device)
    g = random_generator(args.size, device, max_channels=args.max_channels)
    lpips = seeded_lpips(device)
    pivots, targets = inputs(g, 1, device)
    targets = targets.to(device)
    rows = []
    for precision in [p for p in args.dtypes.split(",") if p]:
        config = replace(T.PTI_PRESET, steps=args.steps, early_stop_lpips=None, poll_every=args.poll_every)
        warm = replace(config, steps=min(args.steps, 3))
        T.pivotal_tune(g, pivots, targets, lpips, warm, device=device, precision=precision)
        times = []
        for _ in range(args.reps):
            sync(device)
            t0 = time.perf_counter()
            result = T.pivotal_tune(g, pivots, targets, lpips, config, device=device, precision=precision)
            sync(device)
            times.append(time.perf_counter() - t0)
        dtype = str(T.resolve_precision(g, precision, device)).replace("torch.", "")
        s = statistics.median(times)
        rows.append({"precision": precision, "dtype": dtype, "size": args.size, "max_channels": args.max_channels,
                     "steps": args.steps,
                     "seconds": round(s, 3), "steps_per_s": round(args.steps / s, 2),
                     "all_s": [round(t, 3) for t in times], "final_lpips": round(float(result.losses[-1, 1]), 5),
                     "target_s": 5.0 if (args.size, args.steps) == (1024, 350) else None})
        print(json.dumps(rows[-1]), flush=True)
    return {"benchmark": "tuning_speed", "device": str(device), "device_name": device_name(device),
            "torch": torch.__version__, "threads": torch.get_num_threads(), "rows": rows,
            "note": "PTI preset, early stop off, batch 1, random config-f weights, LPIPS AlexNet random weights"}


def device_name(device):
    return torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()


# ----------------------------------------------------------------------------------------------- memory
def l1_distance(x, y):
    """A cheap stand-in perceptual loss for the memory runs: LPIPS's activations do not depend on the clip's
    length, the question is whether the frames pile up."""
    return (x - y).abs().mean((1, 2, 3))


def memory_child(args):
    """One clip length in this process: JSON {frames, peak_mib, seconds} on stdout."""
    from bench_stylegan import RSSPeak
    from bench_splice import release_host_memory
    from transedit.models.stylegan import tuning as T

    device = torch.device(args.device)
    g = random_generator(args.size, device, max_channels=args.max_channels)
    lpips = seeded_lpips(device) if args.perceptual == "lpips" else l1_distance
    pivots, targets = inputs(g, args.child, "cpu")
    config = replace(T.STIT_PRESET, steps=1, regularizer_interval=1)
    # a first short run: one-time allocations (kernels, allocator pools, thread pools) are not the clip's
    T.pivotal_tune(g, pivots[:2], targets[:2], lpips, config, device=device, w_avg=g.mean_latent(256))
    release_host_memory()
    t0 = time.perf_counter()
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        T.pivotal_tune(g, pivots, targets, lpips, config, device=device, w_avg=g.mean_latent(256))
        sync(device)
        peak = (torch.cuda.max_memory_allocated(device) - base) / MIB
        how = "torch.cuda.max_memory_allocated above the level before the call"
    else:
        with RSSPeak() as rss:
            T.pivotal_tune(g, pivots, targets, lpips, config, device=device, w_avg=g.mean_latent(256))
        peak = (rss.peak - rss.base) / MIB
        how = "resident-set growth during the call, sampled every 2 ms (targets made before)"
    print(json.dumps({"frames": args.child, "peak_mib": round(peak, 1), "seconds": round(time.perf_counter() - t0, 1),
                      "targets_mib": round(targets.nbytes / MIB, 1), "measured_as": how}))


def memory(args):
    rows = []
    for n in [int(f) for f in args.frames.split(",") if f]:
        cmd = [sys.executable, __file__, "memory", "--device", args.device, "--size", str(args.size),
               "--max-channels", str(args.max_channels), "--perceptual", args.perceptual, "--child", str(n)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=REPO).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    first, last = rows[0]["peak_mib"], rows[-1]["peak_mib"]
    flat = last <= first * 1.1 + 8
    return {"benchmark": "tuning_memory", "device": args.device, "device_name": device_name(torch.device(args.device)),
            "torch": torch.__version__, "size": args.size, "max_channels": args.max_channels,
            "config": "STIT preset, 1 pass over the frames, locality regularisation, chunks of 16 frames",
            "perceptual": args.perceptual,
            "rows": rows, "flat": flat}


# ------------------------------------------------------------------------------- races for vs_official.py
def _official_modules():
    sys.path.insert(0, str(REPO / "tests"))
    sys.path.insert(0, str(REPO / "tests" / "golden" / "tuning"))
    import regenerate as R

    return R


def race_setup(ctx, size: int):
    """The NVlabs generator (stylegan2-ada networks.py from the STIT checkout) at `size` with config-f widths,
    pickled, and TransEdit's conversion of it; cached per size."""
    key = ("tuning_setup", size)
    if key in ctx.cache:
        return ctx.cache[key]
    R = _official_modules()
    pkl = ctx.tmp / f"nvlabs_{size}.pkl"
    with R.official(Path(ctx.paths["stit"]), None):
        from training.networks import Generator  # noqa: PLC0415

        torch.manual_seed(0)
        G = Generator(z_dim=512, c_dim=0, w_dim=512, img_resolution=size, img_channels=3,
                      mapping_kwargs=dict(num_layers=8),
                      synthesis_kwargs=dict(channel_base=32768, channel_max=512, num_fp16_res=0, conv_clamp=256))
        with torch.no_grad():
            for name, p in G.named_parameters():
                if name.endswith("noise_strength"):
                    p.fill_(0.1)
        import pickle  # noqa: PLC0415

        with open(pkl, "wb") as f:
            pickle.dump({"G_ema": G.eval()}, f)
    from transedit.models.registry import load_stylegan2

    desc = load_stylegan2(pkl)
    g = desc.model.to(ctx.device)
    pivots, targets = inputs(g, 2, ctx.device)
    ctx.cache[key] = (pkl, desc, pivots.cpu(), targets, seeded_lpips(ctx.device))
    return ctx.cache[key]


def stage_pti(ctx):
    """PTI single-id: the official SingleIDCoach.train against pivotal_tune, equal steps (the early stop off)."""
    from transedit.models.stylegan import tuning as T
    import vs_official as V

    R = _official_modules()
    size, steps = ctx.args.tuning_size, ctx.args.tuning_steps
    pkl, desc, pivots, targets, lpips = race_setup(ctx, size)
    row = {"stage": "pti", "case": f"{size}px config-f, {steps} steps", "size": size, "steps": steps,
           "config": "PTI preset (lr 3e-4, L2 + LPIPS AlexNet random weights), early stop off, batch 1"}
    holder = {}

    def official():
        _, holder["rows"] = R.run_pti(Path(ctx.paths["pti"]), pkl, ctx.tmp / "pti",
                                      {"pivots": pivots, "targets": targets}, lpips, threshold=-1.0, steps=steps,
                                      convert=False, keep=holder)
        return holder["render"]

    def pack(precision="fp32", keep=None):
        config = replace(T.PTI_PRESET, steps=steps, early_stop_lpips=None, poll_every=50)
        result = T.pivotal_tune(desc.model, pivots[:1], targets[:1], lpips, config, device=ctx.device,
                                precision=precision)
        if keep is not None:
            keep["losses"] = result.losses
        with torch.no_grad():
            return result.generator.synthesis(pivots[:1].to(ctx.device), noise_mode="const")

    rows = [V.raced(ctx, row, official, pack, tol_rel=1e-3)]
    if native_half_speed(ctx.device):
        rows.append(bf16_row(ctx, row, official, pack, holder))
    return rows


def native_half_speed(device) -> bool:
    """Whether bf16 can be faster than fp32 here: a GPU with native bf16 (Ampere on), or a CPU whose oneDNN has bf16
    instructions (AVX512-BF16 / AMX); elsewhere bf16 is emulated and slower, and the row would only say so."""
    from transedit.models.core.devices import has_native_bf16

    if device.type == "cuda":
        return has_native_bf16(device)
    return device.type == "cpu" and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


# bf16 changes the arithmetic, so the tuned weights cannot match the official fp32 ones (Adam moves every weight by
# about lr whatever its gradient's size, and bf16 flips the sign of the smallest gradients). The two runs take
# slightly different paths (per-step losses measured up to 3 % apart mid-run) to the same place: what is checked
# is the last step's L2 and LPIPS of every frame, within this relative tolerance; the per-step spread is reported.
BF16_LOSS_TOL = 0.05


def bf16_row(ctx, fp32_row: dict, official, pack, holder: dict, frames: int = 1) -> dict:
    """PTI or STIT in bf16 (the pack's `precision` input) against the official fp32 coach: agreement is judged on
    the losses of the last step, every one of its `frames` rows (both sides log one row per step and frame, step
    by step), then both are timed as in the fp32 race."""
    import vs_official as V

    row = {**{k: fp32_row[k] for k in ("case", "size", "steps", "config")}, "stage": f"{fp32_row['stage']}_bf16",
           "precision": "bf16 (pack) vs fp32 (official)"}
    reference = official()
    kept = {}
    mine = pack("bf16", kept)
    official_losses = torch.tensor(holder["rows"])[:, :2]
    pack_losses = kept["losses"][:, :2].float()
    if official_losses.shape != pack_losses.shape or len(pack_losses) % frames:
        raise AssertionError(f"{fp32_row['stage']}_bf16: {len(official_losses)} official loss rows against "
                             f"{len(pack_losses)} of the pack ({frames} per step); not compared")
    spread = (pack_losses - official_losses).abs() / official_losses.abs().clamp_min(1e-12)
    rel, worst = spread[-frames:].max().item(), spread.max().item()
    row.update({"final_loss_rel_diff": float(f"{rel:.3g}"), "loss_tolerance": BF16_LOSS_TOL,
                "loss_max_rel_diff_any_step": float(f"{worst:.3g}"),
                "final_l2_lpips": {"official": official_losses[-frames:].tolist(), "pack": pack_losses[-frames:].tolist()},
                **{k if k == "ref_max_abs" else "render_max_abs_diff": v
                   for k, v in V.agreement(reference, mine).items()},
                "compared": "L2 and LPIPS after the last step, every frame (bf16 is not the official arithmetic)"})
    row["agrees"] = rel <= BF16_LOSS_TOL
    if not row["agrees"]:
        raise AssertionError(f"{row['stage']}: the last step's losses differ by {rel:.3g} relative (> {BF16_LOSS_TOL}); "
                             "not timed")
    row.update(ctx.race(official, lambda: pack("bf16"), profile=ctx.profiled(row["stage"])))
    return row


def stage_stit(ctx):
    """STIT's coach (2 frames, locality regularisation, numpy seeded) against pivotal_tune with STIT's preset."""
    from transedit.models.stylegan import tuning as T
    import vs_official as V

    R = _official_modules()
    size, steps = ctx.args.tuning_size, max(1, ctx.args.tuning_steps // 2)
    pkl, desc, pivots, targets, lpips = race_setup(ctx, size)
    row = {"stage": "stit", "case": f"{size}px config-f, 2 frames x {steps}", "size": size, "steps": steps,
           "config": "STIT preset (lr 3e-5, locality regularisation alpha 30, 1 sample), 2 frames, batch 1"}
    holder = {}

    def official():
        _, holder["rows"] = R.run_stit(Path(ctx.paths["stit"]), pkl, ctx.tmp, {"pivots": pivots, "targets": targets},
                                       lpips, steps, frames=2, seed=7, convert=False, keep=holder)
        return holder["render"]

    def pack(precision="fp32", keep=None):
        config = replace(T.STIT_PRESET, steps=steps, poll_every=50)
        result = T.pivotal_tune(desc.model, pivots[:2], targets[:2], lpips, config, device=ctx.device, seed=7,
                                w_avg=desc.latent_avg, precision=precision)
        if keep is not None:
            keep["losses"] = result.losses
        with torch.no_grad():
            return result.generator.synthesis(pivots[:1].to(ctx.device), noise_mode="const")

    rows = [V.raced(ctx, row, official, pack, tol_rel=1e-3)]
    if native_half_speed(ctx.device):
        rows.append(bf16_row(ctx, row, official, pack, holder, frames=2))
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=["speed", "memory"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--size", type=int, default=None, help="generator size (speed: 1024; memory: 64)")
    ap.add_argument("--max-channels", type=int, default=None,
                    help="channel cap (speed: 512 = config-f; memory: 64, a small fast generator)")
    ap.add_argument("--steps", type=int, default=350)
    ap.add_argument("--poll-every", type=int, default=50)
    ap.add_argument("--dtypes", default="fp32,auto")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--frames", default="30,120,300")
    ap.add_argument("--perceptual", choices=["lpips", "l1"], default="lpips",
                    help="memory: the loss (l1: a cheap stand-in, for slow machines)")
    ap.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    args.size = args.size or (1024 if args.mode == "speed" else 256)
    args.max_channels = args.max_channels or (512 if args.mode == "speed" else 32)
    if args.child is not None:
        memory_child(args)
        return
    report = speed(args) if args.mode == "speed" else memory(args)
    out = Path(args.out or HERE / "results" / f"bench_tuning_{args.mode}_{torch.device(args.device).type}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
