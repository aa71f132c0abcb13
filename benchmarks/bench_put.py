"""PUT inpainting benchmark: time per result and peak memory of the sampling loop at 256², written as JSON.

    python benchmarks/bench_put.py --out benchmarks/results/cpu_put.json                          # CPU
    python benchmarks/bench_put.py --device cuda --out benchmarks/results/h100_put.json

Full official sizes with random weights (timing does not depend on the weights): the CVPR 2022 FFHQ model
(P-VQVAE 1024 codes, transformer 30 layers x 512, 8 heads) and the TPAMI 2024 FFHQ res256 model (P-VQVAE 9216
codes, ViT 12 layers x 768, 12 heads), 8x8 patches -> 32 x 32 = 1024 tokens. The input is a synthetic 256² image
with a centred square hole covering `--hole` of the side (0.5: a quarter of the area, 256 of 1024 tokens
unknown, plus the partly covered border patches).

Schedules (`--schedules`): `1` (one token per pass: the paper's setting, one pass per unknown token), `20`
(twenty tokens per pass), `all` (every unknown token in one pass). Samples: `--samples` fills of the same image
run as one batch (the PUT Inpaint node's way), each with its own seeded generator.

Per (version, schedule, samples, dtype) case, after one untimed warm-up call of the whole pipeline:
encode (P-VQVAE features of the masked image), the sampling loop, decode, each synchronised and timed; the
loop is timed over at most `--max-passes` transformer passes and, when the schedule needs more, the rest is
extrapolated from the measured mean pass time (`extrapolated: true`; 1-token sampling of 256+ tokens takes
minutes per case on a small CPU). `s_per_result` = total / samples. Peak memory: CUDA max_memory_allocated
above the level before the case, CPU process RSS above its level before the case, sampled every 2 ms.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_stylegan import DTYPES, RSSPeak, sync  # noqa: E402

from transedit.models.put.transformer import PUTConfig, build_put  # noqa: E402
from transedit.models.put.sampling import SamplerRNG, sample_tokens, step_counts  # noqa: E402
from transedit.models.put.codec import PatchVQVAE, PVQVAEConfig  # noqa: E402

MIB = 2 ** 20


def full_size_model(version: str, device) -> torch.nn.Module:
    tpami = version == "tpami2024"
    codec = PVQVAEConfig(version=version, n_e=9216 if tpami else 1024, masked_embed_start=8192 if tpami else 512,
                         dec_num_res_blocks=2 if tpami else 8, dec_res_after_up=2 if tpami else 0,
                         upsample="nearest" if tpami else "deconv", ref_downsample="downsample" if tpami else "conv",
                         ref_res_blocks=tpami)
    cfg = PUTConfig(version=version, dim=768 if tpami else 512, n_layer=12 if tpami else 30,
                    n_head=12 if tpami else 8, token_shape=(32, 32), num_token=8192 if tpami else 512,
                    mlp_hidden=3072 if tpami else 2048, qkv_bias=tpami, learn_mask_emb=tpami,
                    combine_rec_and_gt=tpami)
    torch.manual_seed(0)
    model = build_put(cfg, PatchVQVAE(codec)).eval().requires_grad_(False)
    with torch.no_grad():  # spread the codebook like encoder features so quantisation is not degenerate
        model.content_codec.quantize.embedding.normal_()
    return model.to(device)


def synthetic_input(hole: float, device):
    y, x = torch.meshgrid(torch.linspace(0, 1, 256), torch.linspace(0, 1, 256), indexing="ij")
    image = torch.stack([y, x, (x * y + 0.2 * torch.sin(20 * x))], 0).clamp(0, 1)[None] * 255
    side = int(round(256 * hole))
    mask = torch.ones(1, 1, 256, 256)
    a = (256 - side) // 2
    mask[..., a:a + side, a:a + side] = 0
    return image.to(device), mask.to(device)


def run_case(model, image, mask, schedule, samples, dtype_name, max_passes, device):
    codec = model.content_codec
    xs, ms = image.expand(samples, -1, -1, -1), mask.expand(samples, -1, -1, -1)
    amp = None if dtype_name == "fp32" else DTYPES[dtype_name]
    plan = -1 if schedule == "all" else int(schedule)

    class Stop(Exception):
        pass

    def pipeline(limit):
        gens = [torch.Generator(device=device).manual_seed(k) for k in range(samples)]
        t = {}
        sync(device)
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            data = codec.get_features(xs, ms)
        sync(device)
        t["encode_s"] = time.perf_counter() - t0
        last = [time.perf_counter()]
        passes = []

        def on_iteration(state):
            sync(device)
            now = time.perf_counter()
            passes.append(now - last[0])
            last[0] = now
            if limit and len(passes) >= limit:
                raise Stop()

        tokens = data["token"]
        try:
            tokens = sample_tokens(model, data["feature"], data["token"], data["token_type"], data["unmask_ratio"],
                                   schedule=plan, top_k=50, rng=SamplerRNG(gens),
                                   on_iteration=on_iteration, autocast_dtype=amp)
            complete = True
        except Stop:
            complete = False
        t["passes"] = passes
        t["complete"] = complete
        sync(device)
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            out = codec.decode(tokens, xs, ms, combine_rec_and_gt=model.config.combine_rec_and_gt)
        sync(device)
        t["decode_s"] = time.perf_counter() - t0
        assert out.shape == (samples, 3, 256, 256) and torch.isfinite(out.float()).all()
        t["unknown_tokens"] = int((data["token_type"][0] != 1).sum())
        return t

    with torch.inference_mode():
        pipeline(limit=1)  # warm-up (kernels, allocator)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
        peak = RSSPeak() if device.type == "cpu" else None
        if peak is not None:
            with peak:
                t = pipeline(limit=max_passes)
            peak_bytes = peak.peak - peak.base
        else:
            t = pipeline(limit=max_passes)
            peak_bytes = torch.cuda.max_memory_allocated(device) - base
    n_unknown = t["unknown_tokens"]
    if model.config.version == "tpami2024":
        total_passes = len(step_counts(n_unknown, plan, 1024))
    else:
        total_passes = 1 if plan == -1 else -(-n_unknown // plan)
    measured = t["passes"]
    mean_pass = statistics.mean(measured)
    loop_s = sum(measured) + mean_pass * (total_passes - len(measured))
    total = t["encode_s"] + loop_s + t["decode_s"]
    return {
        "version": model.config.version, "schedule": schedule, "samples": samples, "dtype": dtype_name,
        "device": device.type, "unknown_tokens": n_unknown, "passes": total_passes,
        "passes_measured": len(measured), "extrapolated": len(measured) < total_passes,
        "pass_ms_mean": round(mean_pass * 1e3, 2), "pass_ms_median": round(statistics.median(measured) * 1e3, 2),
        "encode_ms": round(t["encode_s"] * 1e3, 2), "decode_ms": round(t["decode_s"] * 1e3, 2),
        "total_s": round(total, 3), "s_per_result": round(total / samples, 3),
        "results_per_s": round(samples / total, 4), "peak_mem_mib": round(peak_bytes / MIB, 1),
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--versions", default="cvpr2022,tpami2024")
    ap.add_argument("--schedules", default="1,20,all")
    ap.add_argument("--samples", default="1,4")
    ap.add_argument("--dtypes", default="fp32,bf16")
    ap.add_argument("--hole", type=float, default=0.5, help="side of the centred square hole / 256")
    ap.add_argument("--max-passes", type=int, default=8, help="passes timed per case (0 = all); the rest extrapolated")
    ap.add_argument("--note", default="")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    image, mask = synthetic_input(args.hole, device)
    results, params = [], {}
    t_start = time.perf_counter()
    for version in args.versions.split(","):
        model = full_size_model(version, device)
        params[version] = {"transformer": sum(p.numel() for n, p in model.named_parameters()
                                              if not n.startswith("content_codec.")),
                           "p_vqvae": sum(p.numel() for p in model.content_codec.parameters())}
        for dtype_name in args.dtypes.split(","):
            for samples in [int(s) for s in args.samples.split(",")]:
                for schedule in args.schedules.split(","):
                    row = run_case(model, image, mask, schedule, samples, dtype_name, args.max_passes, device)
                    print(json.dumps(row), flush=True)
                    results.append(row)
        del model
    doc = {
        "benchmark": "put_sampling",
        "weights": "random, official full sizes (CVPR 2022 FFHQ; TPAMI 2024 FFHQ res256)",
        "input": f"synthetic 256x256 image, centred square hole of side {args.hole} x 256",
        "timing": "encode + sampling loop + decode, synchronised; loop passes beyond --max-passes extrapolated "
                  "from the measured mean pass time; top-50 sampling, per-sample generators",
        "parameters": params,
        "machine": {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.machine(),
                    "cpu_threads": torch.get_num_threads(), "torch": torch.__version__,
                    "python": platform.python_version()},
        "argv": sys.argv[1:], "note": args.note, "wall_s": round(time.perf_counter() - t_start, 1),
        "results": results,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    tmp = args.out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(doc, f, indent=1)
    os.replace(tmp, args.out)
    print("wrote", args.out)


if __name__ == "__main__":
    main()
