"""Inversion benchmark (encoder + 1024² generator): latency, throughput and peak memory, written as JSON.

    python benchmarks/bench_inversion.py --out benchmarks/results/cpu_inversion.json             # CPU
    python benchmarks/bench_inversion.py --device cuda --official-style --out benchmarks/results/h100_inversion.json

image [B, 3, 256, 256] in [-1, 1] -> encoder -> W+ [B, 18, 512] -> StyleGAN2 synthesis -> [B, 3, 1024, 1024].
Random weights at the official full sizes (IR-SE-50 trunk, Style Transformer d_model 512 / 4 heads / FFN 1024,
18 pSp / e4e style heads, StylePrompter's SwinV2-T encoder (window 16, 18 latent tokens) and SMART block,
config-f 1024 generator), the checkpoint's constant noise.

`styleprompter` is the baseline checkpoint's path (encoder -> W+ -> generator); `styleprompter_smart` the full
checkpoint's: the encoder also returns its four feature levels and SMART refines the generator's 16x16 style
feature through `feature_hook` (the Invert -> SMART Refine -> Generate nodes' path).

Per (family, batch, dtype) case: encoder-only latency, generator latency (timed once per batch x dtype x SMART
on/off, shared by the families), end-to-end total latency (encoder then generator, measured, not summed), images/s
and peak memory (CUDA max_memory_allocated above what was allocated before the case / CPU RSS above the
level after warm-up). Medians of `--reps` after `--warmup` calls, the device synchronised around each call.

The encoder runs the way the TransEdit Invert node runs it: `LatentEncoder` (Style Transformer's queries
precomputed once through the mapping network), `torch.inference_mode()`, `torch.autocast` for bf16/fp16.
The generator gets `synthesis(w, dtype=...)`.

`--official-style` adds an "official" row per family and batch: fp32, no autocast, and for Style Transformer
the queries recomputed through the generator's mapping network on every call (`encoder(x, mapping=generator)`,
as the official forward does), followed by the fp32 generator. pSp / e4e have no precomputable state, so
their official row is the same computation as their fp32 row and is not timed twice (it points at it). Every
row then carries `speedup_vs_official` (official latency / this latency, same family and batch).

`--encoder-only-batches` times only the encoder for those batches (e.g. batch 16 at 1024² on a small CPU,
where one generator call takes minutes); such rows say `"pipeline": "encoder_only"`.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from contextlib import nullcontext

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_stylegan import DTYPES, RSSPeak, sync  # noqa: E402

from transedit.models.encoders.latent_encoder import LatentEncoder  # noqa: E402
from transedit.models.encoders.psp import PSPConfig, build_psp_encoder  # noqa: E402
from transedit.models.encoders.smart import SMART, SMARTConfig  # noqa: E402
from transedit.models.encoders.styleprompter import StylePrompterConfig, StylePrompterEncoder  # noqa: E402
from transedit.models.encoders.style_transformer import StyleTransformerConfig, StyleTransformerEncoder  # noqa: E402
from transedit.models.stylegan.generator import StyleGAN2Config, StyleGAN2Generator  # noqa: E402

FAMILIES = ("style_transformer", "psp", "e4e", "styleprompter", "styleprompter_smart")
GEN_SIZE = 1024
ENC_SIZE = 256


def build_encoder(family: str, g: StyleGAN2Generator, device):
    """(LatentEncoder, raw encoder, latent_avg) with random weights at the official sizes."""
    torch.manual_seed(1)
    w_avg = g.mean_latent(1024)[0]  # [512]; a stand-in for the checkpoint's latent_avg
    if family == "style_transformer":
        enc = StyleTransformerEncoder(StyleTransformerConfig())
        latent_avg = w_avg
    elif family.startswith("styleprompter"):
        enc = StylePrompterEncoder(StylePrompterConfig())  # SwinV2-T geometry of the official checkpoints
        latent_avg = w_avg
    else:
        enc = build_psp_encoder(PSPConfig(kind=family))
        latent_avg = w_avg[None].expand(enc.n_latent, -1)  # pSp / e4e store [n_styles, 512]
    enc = enc.eval().requires_grad_(False).to(device)
    mapping = g if family == "style_transformer" else None
    wrapped = LatentEncoder(enc, latent_avg, mapping=mapping).eval().to(device)
    return wrapped, enc, latent_avg.to(device)


class Timer:
    """Median / min wall time of `fn()` over reps after warm-up, device-synchronised, with peak memory."""

    def __init__(self, device, warmup: int, reps: int):
        self.device, self.warmup, self.reps = device, warmup, reps

    def __call__(self, fn):
        device = self.device
        t0 = time.perf_counter()
        for _ in range(self.warmup):
            fn()
        sync(device)
        warm_s = time.perf_counter() - t0
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
        peak = RSSPeak() if device.type == "cpu" else None
        times, cpu, out = [], [], None
        with peak if peak is not None else nullcontext():
            for _ in range(self.reps):
                out = None  # let the previous output go before the next call
                sync(device)
                t, c = time.perf_counter(), time.process_time()
                out = fn()
                sync(device)
                times.append(time.perf_counter() - t)
                cpu.append(time.process_time() - c)
        if device.type == "cuda":
            peak_bytes = torch.cuda.max_memory_allocated(device) - base
        else:
            peak_bytes = peak.peak - peak.base
        return out, {"ms_median": round(statistics.median(times) * 1e3, 3), "ms_min": round(min(times) * 1e3, 3),
                     "cpu_ms_median": round(statistics.median(cpu) * 1e3, 1),
                     "peak_mem_mib": round(peak_bytes / 2 ** 20, 1), "warmup_s": round(warm_s, 2)}


def encoder_call(family, wrapped, enc, latent_avg, g, x, dtype_name, device, official):
    """A zero-argument callable: x -> W+ (the node's path, or the official fp32 path)."""
    if official:
        if family == "style_transformer":
            return lambda: enc.to_wplus(enc(x, mapping=g), latent_avg)  # queries re-mapped every call
        return lambda: enc.to_wplus(enc(x), latent_avg)
    dtype = DTYPES[dtype_name]
    features = family == "styleprompter_smart"  # SMART needs the encoder's multi-scale features too
    if dtype == torch.float32:
        return lambda: wrapped(x, return_features=features)

    def run():
        with torch.autocast(device.type, dtype=dtype):
            return wrapped(x, return_features=features)
    return run


def build_smart(device):
    """StylePrompter's SMART block at the official size (query 16x16x512, 4 encoder levels), random weights."""
    torch.manual_seed(3)
    return SMART(SMARTConfig()).eval().requires_grad_(False).to(device)


def split_output(out):
    """Encoder output -> (W+, features or None)."""
    return out if isinstance(out, tuple) else (out, None)


def check_wplus(w, batch, g):
    assert w.shape == (batch, g.n_latent, g.style_dim), w.shape
    assert torch.isfinite(w).all()


def check_image(img, batch):
    assert img.shape == (batch, 3, GEN_SIZE, GEN_SIZE) and torch.isfinite(img).all()


def n_params(m) -> int:
    return sum(p.numel() for p in m.parameters())


def machine_load():
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--families", default=",".join(FAMILIES))
    ap.add_argument("--batches", default="1,16")
    ap.add_argument("--dtypes", default="fp32,bf16")
    ap.add_argument("--reps", type=int, default=None, help="timed repetitions (default 10 GPU, 2 CPU)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed calls first (default 3 GPU, 1 CPU)")
    ap.add_argument("--official-style", action="store_true",
                    help="also time the official fp32 path (Style Transformer: queries re-mapped every call)")
    ap.add_argument("--encoder-only-batches", default="",
                    help="batches for which only the encoder is timed (no generator, no total)")
    ap.add_argument("--note", default="", help="free text stored in the JSON (e.g. machine load)")
    ap.add_argument("--out", default=None, help="JSON file (default: print)")
    args = ap.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 numbers mean fp32 (official baseline included)
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cudnn.benchmark = True
    reps = args.reps or (10 if device.type == "cuda" else 2)
    warmup = args.warmup if args.warmup is not None else (3 if device.type == "cuda" else 1)
    families = [f for f in args.families.split(",") if f]
    for f in families:
        if f not in FAMILIES:
            ap.error(f"unknown family {f!r}; choose from {FAMILIES}")
    batches = [int(b) for b in args.batches.split(",") if b]
    dtypes = [d for d in args.dtypes.split(",") if d]
    enc_only = {int(b) for b in args.encoder_only_batches.split(",") if b}
    timer = Timer(device, warmup, reps)
    load_start = machine_load()
    wall0 = time.perf_counter()

    torch.manual_seed(0)
    g = StyleGAN2Generator(StyleGAN2Config(size=GEN_SIZE)).eval().requires_grad_(False).to(device)
    encoders = {f: build_encoder(f, g, device) for f in families}
    smart = build_smart(device) if "styleprompter_smart" in families else None

    results = []
    gen_cache: dict[tuple[int, str], dict] = {}

    def synthesise(w, feats, dtype):
        """The Generate node's call: SMART (when features are given) refines layer 4 through the hook."""
        hook = None if feats is None else smart.hook([f.float() for f in feats])
        return g.synthesis(w.float(), dtype=dtype, feature_hook=hook)

    def generator_timing(batch, dtype_name, w, feats):
        key = (batch, dtype_name, feats is not None)
        if key not in gen_cache:
            dtype = DTYPES[dtype_name]
            with torch.inference_mode():
                img, t = timer(lambda: synthesise(w, feats, dtype))
            check_image(img, batch)
            gen_cache[key] = t
            print(json.dumps({"generator": {"batch": batch, "dtype": dtype_name, "smart": feats is not None, **t}}),
                  flush=True)
        return gen_cache[key]

    for batch in batches:
        torch.manual_seed(2)
        x = torch.rand(batch, 3, ENC_SIZE, ENC_SIZE, device=device) * 2 - 1
        pipeline = batch not in enc_only
        for family in families:
            wrapped, enc, latent_avg = encoders[family]
            modes = [(d, False) for d in dtypes]
            if args.official_style:
                modes.insert(0, ("fp32", True))
            for dtype_name, official in modes:
                row = {"family": family, "batch": batch, "mode": "official" if official else "transedit",
                       "encoder_dtype": dtype_name, "generator_dtype": dtype_name, "device": device.type,
                       "pipeline": "full" if pipeline else "encoder_only"}
                if official and family != "style_transformer" and "fp32" in dtypes:
                    row["same_as"] = ("transedit fp32 row (pSp / e4e / StylePrompter precompute nothing; the official "
                                      "StylePrompter's eager softmax attention is the same arithmetic as SDPA's)")
                    results.append(row)  # filled from that row below
                    continue
                run_enc = encoder_call(family, wrapped, enc, latent_avg, g, x, dtype_name, device, official)
                with torch.inference_mode():
                    out, te = timer(run_enc)
                w, feats = split_output(out)
                check_wplus(w, batch, g)
                row["encoder_ms"] = te["ms_median"]
                row["encoder_ms_min"] = te["ms_min"]
                row["encoder_cpu_ms"] = te["cpu_ms_median"]
                row["encoder_peak_mem_mib"] = te["peak_mem_mib"]
                row["encoder_images_per_s"] = round(batch / (te["ms_median"] / 1e3), 3)
                if pipeline:
                    w = w.float().detach()
                    tg = generator_timing(batch, dtype_name, w, feats)
                    gdtype = DTYPES[dtype_name]

                    def run_total():
                        return synthesise(*split_output(run_enc()), gdtype)
                    with torch.inference_mode():
                        img, tt = timer(run_total)
                    check_image(img, batch)
                    row.update(generator_ms=tg["ms_median"], generator_cpu_ms=tg["cpu_ms_median"],
                               generator_peak_mem_mib=tg["peak_mem_mib"],
                               total_ms=tt["ms_median"], total_ms_min=tt["ms_min"], total_cpu_ms=tt["cpu_ms_median"],
                               images_per_s=round(batch / (tt["ms_median"] / 1e3), 3),
                               peak_mem_mib=tt["peak_mem_mib"])
                row.update(reps=reps, warmup=warmup)
                print(json.dumps(row), flush=True)
                results.append(row)

    # official rows of pSp / e4e reuse their fp32 rows; speedups vs the official row of the same family/batch
    keys = ("encoder_ms", "encoder_ms_min", "encoder_cpu_ms", "encoder_peak_mem_mib", "encoder_images_per_s",
            "generator_ms", "generator_cpu_ms", "generator_peak_mem_mib", "total_ms", "total_ms_min", "total_cpu_ms",
            "images_per_s", "peak_mem_mib", "reps", "warmup")
    for r in results:
        if "same_as" in r:
            src = next(s for s in results if s["family"] == r["family"] and s["batch"] == r["batch"]
                       and s["mode"] == "transedit" and s["encoder_dtype"] == "fp32")
            r.update({k: src[k] for k in keys if k in src})
    for r in results:
        ref = next((s for s in results if s["family"] == r["family"] and s["batch"] == r["batch"]
                    and s["mode"] == "official"), None)
        if ref is not None and r is not ref:
            sp = {"encoder": round(ref["encoder_ms"] / r["encoder_ms"], 3)}
            if "total_ms" in r and "total_ms" in ref:
                sp["total"] = round(ref["total_ms"] / r["total_ms"], 3)
            r["speedup_vs_official"] = sp

    report = {
        "benchmark": "inversion_encoder_plus_generator",
        "weights": ("random; IR-SE-50 encoders and StylePrompter's SwinV2-T encoder (+ SMART) at official sizes, "
                    "config-f 1024 generator"),
        "input": f"[B, 3, {ENC_SIZE}, {ENC_SIZE}] uniform in [-1, 1] -> W+ [B, 18, 512] -> [B, 3, {GEN_SIZE}, {GEN_SIZE}]",
        "timing": (f"median of {reps} after {warmup} warm-up call(s), device synchronised; generator timed once "
                   "per (batch, dtype) and shared by the families; total = encoder + generator measured end to end; "
                   "*_cpu_ms = process CPU time of the call (all threads; on a shared CPU it is less disturbed by "
                   "other processes than wall time)"),
        "peak_memory": ("CUDA: max_memory_allocated above the allocation before the timed calls (weights excluded)"
                        if device.type == "cuda" else
                        "CPU: process RSS above its level after warm-up, sampled every 2 ms (weights excluded)"),
        "parameters": {"generator": n_params(g), **{f: n_params(encoders[f][1]) for f in families},
                       **({"smart": n_params(smart)} if smart is not None else {})},
        "machine": {
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
            "cpu_threads": torch.get_num_threads(), "torch": torch.__version__, "python": platform.python_version(),
            "loadavg_start": load_start, "loadavg_end": machine_load(),
        },
        "wall_s": round(time.perf_counter() - wall0, 1),
        "note": args.note,
        "results": results,
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
