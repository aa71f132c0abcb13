"""StyleGAN2 generator benchmark: latency, throughput and peak memory, written as JSON.

    python benchmarks/bench_stylegan.py --out benchmarks/results/cpu.json            # CPU
    python benchmarks/bench_stylegan.py --device cuda --out benchmarks/results/h100.json

Random config-f weights (widths as the official FFHQ 1024 model; 256 uses the same table), W+ input,
the checkpoint's constant noise. Each case is timed after warm-up with the device synchronised.
`--baseline` also times the "shared" formulation of the modulated conv (shared weights, modulated
activations) next to the default "grouped" one; `--sweep` adds channels_last on/off.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import threading
import time
from contextlib import contextmanager

import torch

from transedit.models.stylegan.generator import StyleGAN2Config, StyleGAN2Generator

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@contextmanager
def formulation(g, name: str):
    g.set_modconv_formulation(name)
    try:
        yield
    finally:
        g.set_modconv_formulation("grouped")


class RSSPeak:
    """Peak resident memory of this process while the block runs (CPU), sampled every 2 ms."""

    def __init__(self):
        self.peak = self.base = self._rss()
        self._stop = threading.Event()

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _run(self):
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, self._rss())

    def __enter__(self):
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench_case(g, size, batch, dtype_name, device, warmup, reps, channels_last, form, compiled):
    w = torch.randn(batch, g.n_latent, g.style_dim, device=device)
    dtype = DTYPES[dtype_name]
    run = g.synthesis
    if compiled:
        run = torch.compile(g.synthesis, dynamic=False)
    with formulation(g, form), torch.inference_mode():
        t0 = time.perf_counter()
        for _ in range(warmup):
            run(w, dtype=dtype, channels_last=channels_last)
        sync(device)
        warm_s = time.perf_counter() - t0
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
        times = []
        peak = RSSPeak() if device.type == "cpu" else None
        ctx = peak if peak is not None else contextmanager(lambda: (yield))()
        with ctx:
            for _ in range(reps):
                sync(device)
                t = time.perf_counter()
                out = run(w, dtype=dtype, channels_last=channels_last)
                sync(device)
                times.append(time.perf_counter() - t)
        if device.type == "cuda":
            peak_bytes = torch.cuda.max_memory_allocated(device) - base
        else:
            peak_bytes = peak.peak - peak.base
    assert out.shape == (batch, 3, size, size) and torch.isfinite(out).all()
    med = statistics.median(times)
    return {
        "size": size, "batch": batch, "dtype": dtype_name, "device": device.type,
        "formulation": form, "channels_last": channels_last, "torch_compile": compiled,
        "latency_ms_median": round(med * 1e3, 3), "latency_ms_min": round(min(times) * 1e3, 3),
        "images_per_s": round(batch / med, 3), "peak_mem_mib": round(peak_bytes / 2 ** 20, 1),
        "reps": reps, "warmup_s": round(warm_s, 2),
    }


@torch.no_grad()
def fp32_reference_error(g, device, dtype_name):
    """Max |bf16 - fp32| image difference on one sample (range [-1, 1] nominal)."""
    w = torch.randn(1, g.n_latent, g.style_dim, device=device)
    ref = g.synthesis(w)
    low = g.synthesis(w, dtype=DTYPES[dtype_name])
    return {"dtype": dtype_name, "max_abs": float((low - ref).abs().max()), "mean_abs": float((low - ref).abs().mean())}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--sizes", default="256,1024")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--dtypes", default="fp32,bf16")
    ap.add_argument("--reps", type=int, default=None, help="timed repetitions (default 10 GPU, 2 CPU)")
    ap.add_argument("--warmup", type=int, default=None)
    ap.add_argument("--baseline", action="store_true", help="also time the grouped-conv formulation")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile (CUDA)")
    ap.add_argument("--sweep", action="store_true",
                    help="time every formulation x channels_last combination (to choose defaults)")
    ap.add_argument("--out", default=None, help="JSON file (default: print)")
    args = ap.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 numbers mean fp32
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cudnn.benchmark = True
    reps = args.reps or (10 if device.type == "cuda" else 2)
    warmup = args.warmup if args.warmup is not None else (3 if device.type == "cuda" else 1)
    results, errors = [], []
    for size in map(int, args.sizes.split(",")):
        torch.manual_seed(0)
        g = StyleGAN2Generator(StyleGAN2Config(size=size)).eval().to(device)
        for dtype_name in args.dtypes.split(","):
            if dtype_name != "fp32":
                errors.append({"size": size, **fp32_reference_error(g, device, dtype_name)})
            for batch in map(int, args.batches.split(",")):
                variants = [("grouped", False, False)]
                if args.sweep:
                    variants = [(f, cl, False) for f in ("grouped", "shared") for cl in (False, True)]
                elif args.baseline:
                    variants.append(("shared", False, False))
                if args.compile and device.type == "cuda":
                    variants.append(("grouped", False, True))
                for form, cl, comp in variants:
                    r = bench_case(g, size, batch, dtype_name, device, warmup, reps, cl, form, comp)
                    print(json.dumps(r), flush=True)
                    results.append(r)
        del g
        if device.type == "cuda":
            torch.cuda.empty_cache()
    report = {
        "benchmark": "stylegan2_generator_synthesis",
        "weights": "random, config-f widths",
        "machine": {
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
            "cpu_threads": torch.get_num_threads(), "torch": torch.__version__, "python": platform.python_version(),
        },
        "results": results,
        "low_precision_error_vs_fp32": errors,
    }
    text = json.dumps(report, indent=1)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            f.write(text + "\n")
        print(f"wrote {args.out}")
    else:
        print(text)


if __name__ == "__main__":
    main()
