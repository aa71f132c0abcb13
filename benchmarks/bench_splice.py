"""Splice training benchmark (SkipGenerator trained against DINO-ViT losses): seconds per step and peak memory,
written as JSON.

    python benchmarks/bench_splice.py --out benchmarks/results/cpu_splice.json                       # CPU
    python benchmarks/bench_splice.py --device cuda --compile --out benchmarks/results/h100_splice.json
    python benchmarks/bench_splice.py --backbones small --sizes 256 --dtypes fp32 --no-steps \\
        --curve --curve-steps 150 --plateau-window 25 --out benchmarks/results/cpu_splice_curve.json

DINO has random weights (`save_random_dino` + `load_dino`, i.e. the registry's loading path; `--init timm` builds
`DinoViT` with timm's own initialisation instead). That is fine for timing — the work per step does not depend on
the weights — but the loss values of `--curve` are those of random features, not of a real DINO.

Backbones: "small" = ViT-S (384 wide, 6 heads), "base" = ViT-B (768 wide, 12 heads, Splice's default), both
12 blocks, patch 8 unless `--patches 16` (or `8,16`). Structure and appearance images are synthetic but structured
(smooth gradients, shapes, stripes; seeded), `--sizes` is the structure image's side (the output's size),
`--aspect` makes them W = aspect * H.

Per (backbone, patch, size, dtype[, compiled]) case, on one `SpliceTrainer` (the ComfyUI node's loop):

- step 0 is run untimed (it is special: appearance loss only, plus the entire image) and reported as
  `first_step_s` (it also pays one-off costs: kernel selection, `torch.compile`);
- `--warmup` more untimed ordinary steps, then `--reps` timed ordinary steps (`s_per_step_median`);
- `--entire-reps` timed steps with the trainer's `step_index` set to the next multiple of `entire_every` (75),
  where the whole structure image also goes through G and DINO (`entire_step_s`);
- `mean_s_per_step_measured` is the mean over all timed steps (ordinary + entire), and
  `mean_s_per_step_amortised` = ((75 - 1) * ordinary median + entire) / 75, the long-run cost of a step.

bf16 means `SpliceSettings(autocast_dtype=torch.bfloat16)` (autocast around G and DINO; the losses' similarity
matrices stay fp32); `--compile` adds rows with `SpliceSettings(compile=True)` (torch.compile of the generator).
Peak memory is measured from just before the trainer is built (DINO's weights excluded, the generator, Adam
state and activations included): CUDA `max_memory_allocated`, CPU process RSS sampled every 2 ms (`RSSPeak`).

`--curve` trains one pair (first backbone / patch / size / dtype) for `--curve-steps` steps with
`plateau_window = --plateau-window` and early stopping off, and stores the trainer's `history` (step, mean
global loss per window) plus where the early-stop rule with SpliceSettings' defaults would have stopped.
"""
from __future__ import annotations

import argparse
import ctypes
import gc
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from contextlib import nullcontext

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_stylegan import DTYPES, RSSPeak, sync  # noqa: E402

from transedit.models.splice.dino import DinoConfig, DinoViT  # noqa: E402
from transedit.models.registry import load_dino  # noqa: E402
from transedit.random_weights import save_random_dino
from transedit.models.splice.training import SpliceSettings, SpliceTrainer  # noqa: E402

BACKBONES = {"small": (384, 6), "base": (768, 12)}  # embed dim, heads (DINO's vit_small / vit_base)
MIB = 2 ** 20


def machine_load():
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def dino_config(backbone: str, patch: int) -> DinoConfig:
    dim, heads = BACKBONES[backbone]
    return DinoConfig(patch_size=patch, embed_dim=dim, depth=12, num_heads=heads)


def build_dino(config: DinoConfig, init: str, device, tmpdir: str, seed: int = 0) -> DinoViT:
    if init == "registry":
        path = save_random_dino(os.path.join(tmpdir, f"{config.name}.safetensors"), config=config, seed=seed,
                                overwrite=True)
        model = load_dino(path).model
        os.remove(path)
    else:
        torch.manual_seed(seed)
        model = DinoViT(config)
    return model.eval().requires_grad_(False).to(device)


# --------------------------------------------------------------------------------------------- images
def _grid(h: int, w: int):
    ys = torch.linspace(0, 1, h).view(h, 1).expand(h, w)
    xs = torch.linspace(0, 1, w).view(1, w).expand(h, w)
    return ys, xs


def _paint(img: torch.Tensor, mask: torch.Tensor, color: torch.Tensor) -> torch.Tensor:
    return img * (1 - mask) + color.view(3, 1, 1) * mask


def _soft(d: torch.Tensor, edge: float) -> torch.Tensor:
    """Signed distance (< 0 inside) -> soft mask, `edge` wide (anti-aliased shapes)."""
    return torch.sigmoid(-d / edge)


def synthetic_pair(height: int, width: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(structure A, appearance B) [1, 3, H, W] in [0, 1]: smooth gradients with shapes / stripes, seeded."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.rand(shape, generator=g)

    ys, xs = _grid(height, width)
    edge = 1.5 / min(height, width)
    aspect = width / height
    # A: a linear colour gradient, discs, rectangles and a ring (clear layout for the structure loss)
    c0, c1 = rand(3, 1, 1) * 0.6 + 0.2, rand(3, 1, 1) * 0.6 + 0.2
    t = (0.6 * ys + 0.4 * xs)[None]
    a = c0 * (1 - t) + c1 * t
    for _ in range(3):
        cy, cx, r = rand(1).item(), rand(1).item(), 0.08 + 0.12 * rand(1).item()
        d = torch.sqrt((ys - cy) ** 2 + ((xs - cx) * aspect) ** 2) - r
        a = _paint(a, _soft(d, edge), rand(3))
    for _ in range(2):
        cy, cx = rand(1).item(), rand(1).item()
        hh, hw = 0.05 + 0.15 * rand(1).item(), 0.05 + 0.15 * rand(1).item()
        d = torch.maximum((ys - cy).abs() - hh, (xs - cx).abs() - hw)
        a = _paint(a, _soft(d, edge), rand(3))
    ring = (torch.sqrt((ys - 0.5) ** 2 + ((xs - 0.5) * aspect) ** 2) - 0.35).abs() - 0.02
    a = _paint(a, _soft(ring, edge), rand(3))
    # B: a radial gradient in another palette, diagonal stripes and a few soft blobs (the "appearance")
    p0, p1 = rand(3, 1, 1), rand(3, 1, 1)
    rad = torch.sqrt((ys - rand(1).item()) ** 2 + (xs - rand(1).item()) ** 2)[None].clamp(max=1)
    b = p0 * (1 - rad) + p1 * rad
    freq = 6 + 10 * rand(1).item()
    stripes = 0.5 + 0.5 * torch.sin(2 * math.pi * freq * (xs + ys))
    b = b * (0.75 + 0.25 * stripes[None])
    for _ in range(4):
        cy, cx, r = rand(1).item(), rand(1).item(), 0.05 + 0.1 * rand(1).item()
        blob = torch.exp(-((ys - cy) ** 2 + (xs - cx) ** 2) / (2 * r * r))
        b = _paint(b, 0.8 * blob, rand(3))
    return a.clamp(0, 1)[None].contiguous(), b.clamp(0, 1)[None].contiguous()


# ------------------------------------------------------------------------------------------------ timing
def release_host_memory():
    """Give freed heap memory back to the OS (glibc keeps it otherwise, and the next case's RSS base would
    already contain the previous case's activations)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class Memory:
    """Peak memory of a phase above a base level taken before the trainer exists (CUDA allocator / CPU RSS)."""

    def __init__(self, device):
        self.device = device
        sync(device)
        if device.type == "cuda":
            torch.cuda.empty_cache()
            self.base = torch.cuda.memory_allocated(device)
        else:
            release_host_memory()
            self.base = RSSPeak._rss()

    def phase(self):
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            return nullcontext()
        release_host_memory()
        return RSSPeak()

    def peak(self, ctx) -> tuple[float, float]:
        """(MiB above base, MiB in total) for the phase just run under `ctx`."""
        if self.device.type == "cuda":
            total = torch.cuda.max_memory_allocated(self.device)
        else:
            total = ctx.peak
        return round((total - self.base) / MIB, 1), round(total / MIB, 1)


def timed_step(trainer: SpliceTrainer, device) -> tuple[float, float]:
    sync(device)
    t, c = time.perf_counter(), time.process_time()
    trainer.step()
    sync(device)
    return time.perf_counter() - t, time.process_time() - c


def profile_step(trainer: SpliceTrainer, device, top: int = 15) -> list[dict]:
    """One ordinary step under torch.profiler: the ops with the most self time."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        trainer.step()
        sync(device)
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    rows = sorted(prof.key_averages(), key=lambda e: getattr(e, key), reverse=True)[:top]
    return [{"op": e.key, "calls": e.count, "self_ms": round(getattr(e, key) / 1e3, 2)} for e in rows]


def bench_case(dino, backbone, patch, size, aspect, dtype_name, device, warmup, reps, entire_reps, compiled,
               profile, seed):
    height, width = size, int(round(size * aspect))
    A, B = synthetic_pair(height, width, seed)
    A, B = A.to(device), B.to(device)
    settings = SpliceSettings(seed=seed, autocast_dtype=None if dtype_name == "fp32" else DTYPES[dtype_name],
                              compile=compiled, early_stop=False)
    every = settings.lambdas.entire_every
    mem = Memory(device)

    init_ctx = mem.phase()
    with init_ctx:
        t0 = time.perf_counter()
        trainer = SpliceTrainer(dino, A, B, settings)
        sync(device)
        init_s = time.perf_counter() - t0
        first_s, _ = timed_step(trainer, device)  # step 0: appearance only + entire image
        t0 = time.perf_counter()
        for _ in range(warmup):
            if every > 0 and trainer.step_index % every == 0:
                trainer.step_index += 1
            trainer.step()
        sync(device)
        warm_s = time.perf_counter() - t0
    init_peak = mem.peak(init_ctx)

    ord_ctx = mem.phase()
    times, cpu = [], []
    with ord_ctx:
        for _ in range(reps):
            if every > 0 and trainer.step_index % every == 0:  # keep these steps ordinary
                trainer.step_index += 1
            t, c = timed_step(trainer, device)
            times.append(t)
            cpu.append(c)
    ord_peak = mem.peak(ord_ctx)

    ent_ctx = mem.phase()
    ent_times = []
    with ent_ctx:
        for _ in range(entire_reps if every > 0 else 0):
            trainer.step_index = (trainer.step_index // every + 1) * every
            t, _ = timed_step(trainer, device)
            ent_times.append(t)
    ent_peak = mem.peak(ent_ctx) if ent_times else (None, None)

    prof = profile_step(trainer, device) if profile else None
    render = trainer.render()
    assert render.shape == (1, 3, height, width) and torch.isfinite(render).all()

    med = statistics.median(times)
    ent = statistics.mean(ent_times) if ent_times else None
    row = {
        "backbone": backbone, "dino": dino.config.name, "patch": patch, "size": size,
        "image_hw": [height, width], "dtype": dtype_name, "device": device.type, "torch_compile": compiled,
        "s_per_step_median": round(med, 4), "s_per_step_min": round(min(times), 4),
        "cpu_s_per_step_median": round(statistics.median(cpu), 3),
        "entire_step_s": None if ent is None else round(ent, 4),
        "mean_s_per_step_measured": round(statistics.mean(times + ent_times), 4),
        "mean_s_per_step_amortised": round(((every - 1) * med + ent) / every, 4) if ent is not None else round(med, 4),
        "steps_per_s": round(1 / med, 3),
        "peak_mem_mib": ord_peak[0], "peak_mem_total_mib": ord_peak[1],
        "entire_peak_mem_mib": ent_peak[0], "entire_peak_mem_total_mib": ent_peak[1],
        "init_and_first_steps_peak_mem_mib": init_peak[0],
        "init_s": round(init_s, 3), "first_step_s": round(first_s, 3), "warmup_s": round(warm_s, 2),
        "warmup": warmup, "reps": reps, "entire_reps": len(ent_times),
    }
    if prof is not None:
        row["profile_top_ops"] = prof
    del trainer
    return row


# ------------------------------------------------------------------------------------------------- curve
def plateau_stop(windows, tol: float, patience: int, min_steps: int, early_stop: bool = True):
    """SpliceTrainer's early-stop rule on a list of (step_index, window mean): the step it stops at, or None."""
    best, flat = None, 0
    for step, mean in windows:
        flat = flat + 1 if best is not None and mean > best * (1 - tol) else 0
        best = mean if best is None else min(best, mean)
        if early_stop and flat >= patience and step >= min_steps:
            return step
    return None


def earliest_stop(window: int, patience: int, min_steps: int, start: int) -> int:
    """The first step_index at which the rule could stop at all (patience flat windows after a first one)."""
    n = patience + 1
    while start + n * window < min_steps:
        n += 1
    return start + n * window


def run_curve(dino, backbone, patch, size, aspect, dtype_name, device, steps, window, seed):
    height, width = size, int(round(size * aspect))
    A, B = synthetic_pair(height, width, seed)
    settings = SpliceSettings(seed=seed, steps=steps, autocast_dtype=None if dtype_name == "fp32" else DTYPES[dtype_name],
                              early_stop=False, plateau_window=window)
    trainer = SpliceTrainer(dino, A.to(device), B.to(device), settings)
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        trainer.step()
    sync(device)
    wall = time.perf_counter() - t0
    history = [[int(s), float(v)] for s, v in trainer.history]
    d = SpliceSettings()
    start = d.lambdas.cls_warmup  # windows count the steps from cls_warmup on
    rule = {"plateau_window": d.plateau_window, "plateau_tol": d.plateau_tol, "plateau_patience": d.plateau_patience,
            "min_steps": d.min_steps, "steps": d.steps,
            "earliest_possible_stop": earliest_stop(d.plateau_window, d.plateau_patience, d.min_steps, start)}
    if d.plateau_window % window == 0:
        k = d.plateau_window // window  # the windows hold equal step counts, so k of them make one default window
        agg = [[history[i + k - 1][0], sum(v for _, v in history[i:i + k]) / k]
               for i in range(0, len(history) - k + 1, k)]
        stop = plateau_stop(agg, d.plateau_tol, d.plateau_patience, d.min_steps)
        rule["default_windows"] = agg
        rule["would_stop_at"] = stop
        rule["verdict"] = (f"stops at step {stop}" if stop is not None else
                           f"does not stop within {steps} steps (needs >= {rule['earliest_possible_stop']})"
                           if steps < rule["earliest_possible_stop"] else
                           f"does not stop within {steps} steps (loss still improving by >= {d.plateau_tol:.0%})")
    else:
        rule["would_stop_at"] = None
        rule["verdict"] = f"not evaluated: {d.plateau_window} is not a multiple of the curve window {window}"
    same_window = plateau_stop(history, d.plateau_tol, d.plateau_patience, d.min_steps)
    render = trainer.render()
    assert torch.isfinite(render).all()
    return {
        "backbone": backbone, "dino": dino.config.name, "patch": patch, "size": size, "image_hw": [height, width],
        "dtype": dtype_name, "device": device.type, "steps": steps, "plateau_window": window,
        "wall_s": round(wall, 1), "s_per_step_mean": round(wall / steps, 4),
        "history": history,
        "early_stop_defaults": rule,
        "early_stop_tol_patience_min_steps_at_curve_window": {
            "would_stop_at": same_window,
            "note": f"the default tol / patience / min_steps applied to the {window}-step windows"},
        "render_mean_rgb": [round(float(v), 4) for v in render.mean(dim=(0, 2, 3))],
    }


# -------------------------------------------------------------------------------------------------- main
def write_report(path, report, append: bool):
    """Write the report; with `append`, merge it into the file's (rows tagged with their run's index)."""
    old = None
    if append and path and os.path.exists(path):
        with open(path) as f:
            old = json.load(f)
    run_id = len(old.get("runs", [])) if old else 0
    for key in ("results", "curves"):
        report[key] = [dict(r, run=run_id) for r in report[key]]
    if old:
        for key in ("results", "curves", "runs"):
            old.setdefault(key, []).extend(report[key])
        old.setdefault("dino_parameters", {}).update(report["dino_parameters"])
        report = old
    text = json.dumps(report, indent=1)
    if path:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w") as f:
            f.write(text + "\n")
        print(f"wrote {path}")
    else:
        print(text)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--backbones", default="small,base", help=f"comma list of {sorted(BACKBONES)}")
    ap.add_argument("--patches", default="8", help="DINO patch sizes, e.g. 8 or 8,16")
    ap.add_argument("--sizes", default="256,512", help="structure image side(s) (= output size)")
    ap.add_argument("--aspect", type=float, default=1.0, help="image width / height")
    ap.add_argument("--dtypes", default="fp32,bf16", help="fp32 and/or bf16 / fp16 (autocast_dtype)")
    ap.add_argument("--reps", type=int, default=None, help="timed ordinary steps (default 20 GPU, 3 CPU)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed ordinary steps after step 0 (default 5 GPU, 1 CPU)")
    ap.add_argument("--entire-reps", type=int, default=None,
                    help="timed entire-image steps (step_index set to a multiple of 75; default 3 GPU, 1 CPU)")
    ap.add_argument("--compile", action="store_true", help="also time SpliceSettings(compile=True)")
    ap.add_argument("--no-steps", action="store_true", help="skip the step timings (e.g. only --curve)")
    ap.add_argument("--profile", action="store_true", help="store the top ops of one ordinary step per case")
    ap.add_argument("--curve", action="store_true", help="also record a training curve (first case's settings)")
    ap.add_argument("--curve-steps", type=int, default=150)
    ap.add_argument("--plateau-window", type=int, default=25, help="window of the curve's history")
    ap.add_argument("--init", choices=("registry", "timm"), default="registry",
                    help="random DINO weights via save_random_dino + load_dino, or DinoViT's timm init")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--note", default="", help="free text stored in the JSON (e.g. machine load)")
    ap.add_argument("--append", action="store_true", help="merge into --out if it exists (results, curves, runs)")
    ap.add_argument("--out", default=None, help="JSON file (default: print)")
    args = ap.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 numbers mean fp32
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cudnn.benchmark = True
    gpu = device.type == "cuda"
    reps = args.reps or (20 if gpu else 3)
    warmup = args.warmup if args.warmup is not None else (5 if gpu else 1)
    entire_reps = args.entire_reps if args.entire_reps is not None else (3 if gpu else 1)
    backbones = [b for b in args.backbones.split(",") if b]
    for b in backbones:
        if b not in BACKBONES:
            ap.error(f"unknown backbone {b!r}; choose from {sorted(BACKBONES)}")
    patches = [int(p) for p in args.patches.split(",") if p]
    sizes = [int(s) for s in args.sizes.split(",") if s]
    dtypes = [d for d in args.dtypes.split(",") if d]
    for d in dtypes:
        if d not in DTYPES:
            ap.error(f"unknown dtype {d!r}; choose from {sorted(DTYPES)}")
    load_start = machine_load()
    wall0 = time.perf_counter()

    results, curves, params = [], [], {}
    with tempfile.TemporaryDirectory() as tmpdir:
        for backbone in backbones:
            for patch in patches:
                cfg = dino_config(backbone, patch)
                need_curve = args.curve and not curves and backbone == backbones[0] and patch == patches[0]
                if args.no_steps and not need_curve:
                    continue
                dino = build_dino(cfg, args.init, device, tmpdir, seed=args.seed)
                params[cfg.name] = sum(p.numel() for p in dino.parameters())
                if not args.no_steps:
                    for size in sizes:
                        for dtype_name in dtypes:
                            for compiled in ([False, True] if args.compile else [False]):
                                row = bench_case(dino, backbone, patch, size, args.aspect, dtype_name, device,
                                                 warmup, reps, entire_reps, compiled, args.profile, args.seed)
                                print(json.dumps({k: v for k, v in row.items() if k != "profile_top_ops"}),
                                      flush=True)
                                results.append(row)
                                if gpu:
                                    torch.cuda.empty_cache()
                if need_curve:
                    c = run_curve(dino, backbone, patch, sizes[0], args.aspect, dtypes[0], device,
                                  args.curve_steps, args.plateau_window, args.seed)
                    print(json.dumps({k: v for k, v in c.items() if k != "history"}), flush=True)
                    curves.append(c)
                del dino
                if gpu:
                    torch.cuda.empty_cache()

    every = SpliceSettings().lambdas.entire_every
    report = {
        "benchmark": "splice_training_step",
        "weights": (f"random DINO ViT ({'save_random_dino + load_dino' if args.init == 'registry' else 'timm init'}); "
                    "timing and memory do not depend on the weights, the curve's loss values do (not a real DINO)"),
        "generator": "SkipGenerator, official widths, xavier 0.02 init (SpliceTrainer's own)",
        "input": ("synthetic structured pair (A: gradient + discs / rectangles / ring; B: radial gradient + stripes "
                  "+ blobs), seeded; A and B the same size"),
        "timing": (f"per case: step 0 untimed (first_step_s), then warm-up ordinary steps, then median of `reps` "
                   f"ordinary steps (s_per_step_median), then `entire_reps` steps at step_index % {every} == 0 "
                   f"(entire_step_s: the whole structure image also goes through G and DINO); "
                   f"mean_s_per_step_amortised = (({every} - 1) * median + entire) / {every}; device synchronised "
                   "around each step; cpu_s = process CPU time (all threads)"),
        "peak_memory": ("CUDA: max_memory_allocated above the allocation before the trainer was built (DINO weights "
                        "excluded; generator, Adam state, targets and activations included); *_total_mib absolute"
                        if gpu else
                        "CPU: process RSS above its level before the trainer was built (after gc + malloc_trim, DINO "
                        "weights excluded), sampled every 2 ms; *_total_mib is the whole process's RSS"),
        "dino_parameters": params,
        "machine": {
            "device": torch.cuda.get_device_name(device) if gpu else platform.processor() or platform.machine(),
            "cpu_threads": torch.get_num_threads(), "torch": torch.__version__, "python": platform.python_version(),
        },
        "runs": [{"argv": sys.argv[1:] if argv is None else list(argv), "wall_s": round(time.perf_counter() - wall0, 1),
                  "loadavg_start": load_start, "loadavg_end": machine_load(), "note": args.note}],
        "results": results,
        "curves": curves,
    }
    write_report(args.out, report, args.append)


if __name__ == "__main__":
    main()
