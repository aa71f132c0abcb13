"""Every stage in fp32, bf16 and fp16 against fp32, at the official sizes with random weights, written as JSON:
the evidence behind each family's `auto` precision (models/core/precision.py) and a correctness check on the device.
Then StyleGAN2's `auto` checked where random weights cannot: on trained-like proxies and on official files.

    python benchmarks/precision_sweep.py --device cuda --out benchmarks/results/gpu_precision.json
    python benchmarks/precision_sweep.py --device cpu --quick --out /tmp/precision.json    # small models (CI)
    python benchmarks/precision_sweep.py --device cuda --stages none --generators ffhq.pt  # only the auto check

For each stage the same seeded inputs go through the model in fp32 (the reference) and under bf16 and fp16
autocast; the row records the relative L2 error ||half - fp32|| / ||fp32||, the largest absolute error, whether
everything stayed finite, and the median time per call. `--cpu-reference` also runs fp32 on the CPU and records
the device's fp32 error against it (parity across devices; TF32 is off). A row fails when its error passes the
tolerance below; the exit status is 1 when any row fails. CPU fp16 is emulated (minutes per full-size image), so
the CPU run uses --quick.

StyleGAN2's auto check: auto depends on the file (models/stylegan/generator.py): NVlabs' recipe (fp16 in the 4
highest-resolution blocks at the model's own conv_clamp, the rest fp32) for a generator trained with conv_clamp,
bf16 (fp32 without native bf16) for one trained without. Each candidate (the recipe; fp16 in every block with only
the overflow guard, the old auto; bf16) is compared with fp32 on (1) activation-scaled proxies of a random
generator: the same function with every activation multiplied by a power of two (the fp32 image is bit-identical),
at the scales a trained generator's activations can have, without a conv_clamp and with one, and (2) official
generator files when present: the ones given with --generators, the generators in the pack's model folder
(ComfyUI/models/stylegan, or $TRANSEDIT_MODELS_DIR/stylegan outside ComfyUI) and the official-format fixture in
../shared (TRANSEDIT_SHARED; untrained, so it only speaks for the format). Each prints "confirmed" or "refuted"
for that file's auto (CLAIMS) with the numbers; a refuted auto fails the sweep. For a file without conv_clamp it
also prints whether the recipe would have held there (the fp32 peak |activation| in its fp16 blocks against its
+-256 clamp, and its error): the evidence a later change needs to give such files the recipe.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from transedit.models.core.devices import has_native_bf16  # noqa: E402
from transedit.models.core.precision import NVLABS_FP16, WHOLE_NETWORK, agreement  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# relative L2 error allowed against fp32 at full size (errors compound through depth: looser than the unit tests)
TOLERANCE = {"bf16": 0.08, "fp16": 0.02, "fp32_vs_cpu": 2e-3}


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def rel(a: torch.Tensor, ref: torch.Tensor) -> float:
    a, ref = a.float().cpu(), ref.float().cpu()
    return float((a - ref).norm() / ref.norm().clamp_min(1e-12))


# ------------------------------------------------------------------------------------------- stages
# each returns (model, inputs, call(model, inputs) -> tensor); the sweep runs call under autocast
def stylegan2(quick: bool):
    from transedit.models.stylegan.generator import StyleGAN2Config, StyleGAN2Generator

    torch.manual_seed(0)
    cfg = StyleGAN2Config(size=32, style_dim=32, n_mlp=2, channels={4: 32, 8: 32, 16: 32, 32: 16}) if quick \
        else StyleGAN2Config(size=1024)
    g = StyleGAN2Generator(cfg).eval()
    w = g.mapping(torch.randn(2, cfg.input_dim)).unsqueeze(1).expand(-1, g.n_latent, -1).contiguous()
    return g, (w,), lambda m, x, dtype: m.synthesis(x[0], dtype=dtype)


def smart(quick: bool):
    from transedit.models.encoders.smart import SMART, SMARTConfig

    torch.manual_seed(3)
    cfg = SMARTConfig(q_channel=16, embed_dim=16, kv_channels=[8, 16], kv_shapes=[8, 4], ffn_dim=32) if quick \
        else SMARTConfig()
    block = SMART(cfg).eval()
    x = torch.randn(2, cfg.q_channel, cfg.q_shape, cfg.q_shape)
    feats = [torch.randn(2, s * s, c) for s, c in zip(cfg.kv_shapes, cfg.kv_channels)]

    def call(m, inputs, dtype):  # as the generator calls it: a hook on a feature map in the run's dtype
        x, *f = inputs
        with torch.autocast(x.device.type, dtype=dtype, enabled=dtype != torch.float32):
            return m.hook(f, beta=1.0, layer=0)(0, x.to(dtype))
    return block, (x, *feats), call


def _encoder(family: str, quick: bool):
    from transedit.models.registry import load_encoder
    from transedit.random_weights import save_random_encoder

    if quick:
        with tempfile.TemporaryDirectory() as tmp:
            desc = load_encoder(save_random_encoder(Path(tmp) / "e.pt", family=family))
        model, size = desc.model, desc.input_size
    else:
        from bench_inversion import build_encoder

        from transedit.models.stylegan.generator import StyleGAN2Config, StyleGAN2Generator

        torch.manual_seed(0)
        g = StyleGAN2Generator(StyleGAN2Config(size=1024)).eval()
        if family == "swinstyleformer":
            from transedit.models.encoders.latent_encoder import LatentEncoder
            from transedit.models.encoders.swinstyleformer import SwinStyleformerConfig, SwinStyleformerEncoder

            torch.manual_seed(1)
            enc = SwinStyleformerEncoder(SwinStyleformerConfig.preset("swin_t", n_latent=18, style_dim=512)).eval()
            with torch.no_grad():  # untrained, its head is zero (W+ = latent_avg for every image)
                torch.nn.init.normal_(enc.to_style.weight, std=0.02)
            model = LatentEncoder(enc, g.mean_latent(1024)[0]).eval()
        else:
            model = build_encoder(family, g, "cpu")[0]
        size = (256, 256)
    x = torch.rand(2, 3, *size, generator=torch.Generator().manual_seed(5)) * 2 - 1
    return model, (x,), lambda m, inputs, dtype: m(inputs[0])


def dino(quick: bool):
    from bench_splice import build_dino, dino_config

    from transedit.models.splice.dino import DinoConfig, preprocess

    cfg = DinoConfig(patch_size=8, embed_dim=64, depth=2, num_heads=2) if quick else dino_config("base", 8)
    with tempfile.TemporaryDirectory() as tmp:
        model = build_dino(cfg, "registry", "cpu", tmp)
    x = preprocess(torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(6)), size=64 if quick else 224)

    def call(m, inputs, dtype):
        f = m(inputs[0])
        return torch.cat([f.keys.float().flatten(1), f.cls.float()], 1)
    return model, (x,), call


def put(version: str, quick: bool):
    from bench_put import full_size_model

    if quick:
        from transedit.models.registry import load_put
        from transedit.random_weights import save_random_put

        with tempfile.TemporaryDirectory() as tmp:
            model = load_put(save_random_put(Path(tmp) / "p.pth", version=version)).model.eval()
    else:
        model = full_size_model(version, "cpu")
    h, w = model.image_size
    img = torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(7)) * 255
    known = torch.ones(1, 1, h, w)
    known[..., h // 4:3 * h // 4, w // 4:3 * w // 4] = 0
    data = model.content_codec.get_features(img, known)
    return model, (data["feature"], data["unmask_ratio"]), lambda m, x, dtype: m.logits(m.embed(x[0], x[1])).float()


STAGES = {
    "stylegan2_synthesis": stylegan2,
    "smart": smart,
    **{f"encoder_{f}": (lambda q, f=f: _encoder(f, q)) for f in ("style_transformer", "psp", "e4e", "styleprompter",
                                                                 "swinstyleformer")},
    "dino_features": dino,
    "put_cvpr2022_logits": lambda q: put("cvpr2022", q),
    "put_tpami2024_logits": lambda q: put("tpami2024", q),
}


def run_stage(name, build, device, quick, reps, cpu_reference):
    model, inputs, call = build(quick)
    ref_cpu = None
    if cpu_reference and device.type != "cpu":
        with torch.no_grad():
            ref_cpu = call(model, inputs, torch.float32).float()
    model = model.to(device)
    inputs = tuple(t.to(device) for t in inputs)
    rows, ref = [], None
    for dtype_name in ("fp32", "bf16", "fp16"):
        dtype = DTYPES[dtype_name]
        times = []
        out = None
        with torch.no_grad():
            for rep in range(reps + 1):
                sync(device)
                t0 = time.perf_counter()
                with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
                    out = call(model, inputs, dtype)
                sync(device)
                if rep:  # the first call warms up
                    times.append(1000 * (time.perf_counter() - t0))
        out = out.float()
        row = {"stage": name, "dtype": dtype_name, "ms_median": round(statistics.median(times), 3) if times else None,
               "finite": bool(torch.isfinite(out).all())}
        if dtype_name == "fp32":
            ref = out
            if ref_cpu is not None:
                row["rel_l2_vs_cpu_fp32"] = rel(out, ref_cpu)
                row["ok"] = row["finite"] and row["rel_l2_vs_cpu_fp32"] <= TOLERANCE["fp32_vs_cpu"]
            else:
                row["ok"] = row["finite"]
        else:
            row["rel_l2"] = rel(out, ref)
            row["max_abs"] = float((out - ref).abs().max())
            row["tolerance"] = TOLERANCE[dtype_name]
            row["ok"] = row["finite"] and row["rel_l2"] <= TOLERANCE[dtype_name]
        rows.append(row)
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rows


# ------------------------------------------------------------------------------- StyleGAN2's auto, checked
# name -> (dtype, HalfBlocks or None for the file's own policy): NVlabs' recipe (at the model's conv_clamp, or
# +-256 for a file without one), the old auto, bf16
RECIPE = "fp16, NVlabs recipe"
CANDIDATES = {
    RECIPE: (torch.float16, None),
    "fp16 every block (old auto)": (torch.float16, WHOLE_NETWORK),
    "bf16": (torch.bfloat16, None),
}
# what each possible auto claims: finite and within these of fp32 (image range [-1, 1]); the recipe also no further
# from fp32 than bf16 (else bf16 would be the better choice); bf16's is the sweep's full-size bf16 tolerance (its
# rounding compounds through depth: ~0.02 mean abs error at 1024 px on an H100, docs/precision-and-gpu.md)
CLAIMS = {RECIPE: {"rel_l2": 5e-3, "max_abs": 0.05}, "bf16": {"rel_l2": TOLERANCE["bf16"], "max_abs": 0.25}}
AUTO_NAMES = {torch.float16: RECIPE, torch.bfloat16: "bf16", torch.float32: "fp32"}
RECIPE_CLAMP = NVLABS_FP16.clamp
# activation scales of the proxies: as random weights have them (peaks of a few units), and scaled up to a peak of
# about 120 (a trained StyleGAN2's demodulated convolutions keep activations near unit variance; NVlabs' trained
# generators never pass their 256 clamp)
PROXY_SCALES = (1, 16)


def activation_scaled(generator, scale: float):
    """A copy of `generator` computing the same image with every activation multiplied by `scale`: the constant
    input, the noise strengths and the activation biases times `scale` (the demodulated convolutions and the
    leaky ReLU pass a scale through), the ToRGB weights divided by it. A power of two keeps fp32 bit-identical."""
    import copy

    if generator.config.conv_clamp is not None:
        raise ValueError("activation_scaled needs a generator without conv_clamp (the clamp would not scale)")
    scaled = copy.deepcopy(generator)
    with torch.no_grad():
        scaled.input.input.mul_(scale)
        for layer in (scaled.conv1, *scaled.convs):
            layer.noise.weight.mul_(scale)
            layer.activate.bias.mul_(scale)
        for to_rgb in (scaled.to_rgb1, *scaled.to_rgbs):
            to_rgb.conv.weight.div_(scale)
    return scaled


def with_conv_clamp(generator, clamp: float = 256.0):
    """The same weights in a generator trained with conv_clamp `clamp` (as NVlabs' ADA-era files are): its own
    policy, whose fp16 blocks clamp where its fp32 does."""
    from dataclasses import replace

    from transedit.models.stylegan.generator import StyleGAN2Generator

    clamped = StyleGAN2Generator(replace(generator.config, conv_clamp=clamp))
    clamped.load_state_dict(generator.state_dict())
    return clamped.to(next(generator.parameters()).device).eval()


def low_res_spike(generator, value: float, channel: int = 0):
    """A copy of `generator` with one 4x4 channel held at a large constant (`value` x sqrt 2, its bias) that only
    the 4x4 ToRGB reads (scaled down by `value`) and the next layer ignores (its style for the channel is zero):
    a large activation in a wide low-resolution block, where NVlabs keeps fp32."""
    import copy

    spiked = copy.deepcopy(generator)
    with torch.no_grad():
        spiked.conv1.activate.bias[channel] = value
        spiked.to_rgb1.conv.weight[:, :, channel] /= value
        modulation = spiked.convs[0].conv.modulation
        modulation.weight[channel] = 0
        modulation.bias[channel] = 0
    return spiked


def half_block_peak(generator, features: dict, dtype=torch.float16, half_blocks=None) -> float:
    """The largest |activation| of an fp32 run (`features` from synthesis(return_features=True)) in the blocks
    the recipe runs in half precision: above the recipe's clamp, its output differs from fp32."""
    blocks = half_blocks or generator.PRECISION.blocks_for(dtype)
    first = blocks.first_half_resolution(generator.config.resolutions)
    peak = 0.0
    for name, x in features.items():
        if name.startswith("conv") and x.shape[-1] >= first:
            peak = max(peak, float(x.abs().max()))
    return peak


def auto_on_gpu(generator, device: torch.device) -> str:
    """The candidate `auto` is for this file on `device` (a CPU stands for a GPU with native bf16: the sweep checks
    what auto does on a GPU): RECIPE, "bf16" or "fp32"."""
    gpu = device if device.type == "cuda" else torch.device("cuda")
    return AUTO_NAMES[generator.PRECISION.resolve("auto", gpu, has_native_bf16(device))]


def compare_candidates(generator, wplus: torch.Tensor, auto: str | None = None) -> dict:
    """Each candidate's agreement with fp32 on `wplus` (fixed noise), which of them is this file's auto (default:
    on wplus's device), its conv_clamp, and the fp32 peak in the recipe's fp16 blocks."""
    with torch.no_grad():
        ref, features = generator.synthesis(wplus, noise_mode="const", return_features=True)
        result = {"auto": auto or auto_on_gpu(generator, wplus.device), "conv_clamp": generator.config.conv_clamp,
                  "peak_in_auto_fp16_blocks": half_block_peak(generator, features), "candidates": {}}
        del features
        for name, (dtype, blocks) in CANDIDATES.items():
            result["candidates"][name] = vars(agreement(
                generator.synthesis(wplus, noise_mode="const", dtype=dtype, half_blocks=blocks), ref))
    return result


def claim_holds(result: dict, name: str) -> tuple[bool, str]:
    """Whether candidate `name` keeps its claim (CLAIMS) on this result: "confirmed" or "refuted", with the
    numbers; fp32 is the reference itself."""
    if name == "fp32":
        return True, "confirmed (fp32 here: the reference itself)"
    rows, claim = result["candidates"], CLAIMS[name]
    row = rows[name]
    holds = row["finite"] and row["rel_l2"] <= claim["rel_l2"] and row["max_abs"] <= claim["max_abs"]
    extra = ""
    if name == RECIPE:
        holds = holds and row["rel_l2"] <= rows["bf16"]["rel_l2"]
        extra = (f", no further than bf16; peak |activation| in its fp16 blocks "
                 f"{result['peak_in_auto_fp16_blocks']:.3g}")
    numbers = "; ".join(f"{n}: rel. L2 {r['rel_l2']:.2e}, max abs {r['max_abs']:.3g}" for n, r in rows.items())
    return holds, (f"{'confirmed' if holds else 'refuted'} (claim: rel. L2 <= {claim['rel_l2']}, max abs <= "
                   f"{claim['max_abs']}{extra}) - {numbers}")


def verdict(result: dict) -> tuple[bool, str]:
    """The claim of this file's auto (result["auto"])."""
    return claim_holds(result, result["auto"])


def recipe_evidence(result: dict) -> tuple[bool, str]:
    """For a file trained without conv_clamp: whether NVlabs' recipe (its +-256 clamp) would have held on it, the
    evidence a later change needs to make the recipe these files' auto."""
    holds = claim_holds(result, RECIPE)[0]
    peak, row = result["peak_in_auto_fp16_blocks"], result["candidates"][RECIPE]
    side = "below" if peak <= RECIPE_CLAMP else "ABOVE"
    return holds, (f"the recipe would {'have held' if holds else 'NOT have held'}: fp32 peak |activation| in its "
                   f"fp16 blocks {peak:.3g}, {side} its clamp {RECIPE_CLAMP:g}; rel. L2 {row['rel_l2']:.2e}, max abs "
                   f"{row['max_abs']:.3g} (claim: {CLAIMS[RECIPE]['rel_l2']}, {CLAIMS[RECIPE]['max_abs']}, no further "
                   f"than bf16)")


def official_generators(explicit=()) -> list[tuple[str, str]]:
    """(path, what it is) for every official generator file present: the explicit ones, the pack's stylegan
    model folder, and the official-format fixture in ../shared."""
    from transedit.nodes import comfy_bridge as bridge

    found = [(str(p), "given") for p in explicit]
    found += [(bridge.model_path("stylegan", name), "model folder") for name in bridge.list_models("stylegan")]
    shared = Path(os.environ.get("TRANSEDIT_SHARED", Path(__file__).resolve().parents[2] / "shared"))
    fixture = shared / "fixtures" / "stylegan2_style_transformer" / "stylegan2_small_rosinality.pt"
    if fixture.is_file():
        found.append((str(fixture), "official-format fixture, untrained"))
    return found


def stylegan2_auto_check(device: torch.device, quick: bool, generators=(), batch: int = 2) -> list[dict]:
    """The verdict on auto for each proxy scale and each official file; prints one line each."""
    from transedit.models.registry import load_stylegan2
    from transedit.models.stylegan.generator import StyleGAN2Config, StyleGAN2Generator

    cases = []
    torch.manual_seed(0)
    cfg = StyleGAN2Config(size=64, style_dim=64, n_mlp=2, channels={4: 64, 8: 64, 16: 64, 32: 32, 64: 32}) if quick \
        else StyleGAN2Config(size=1024)
    base = StyleGAN2Generator(cfg).eval()
    name = f"random config {'small' if quick else 'f 1024'}"
    for scale in PROXY_SCALES:
        cases.append((f"{name}, activations x{scale}", "proxy, no conv_clamp",
                      lambda scale=scale: activation_scaled(base, scale)))
    cases.append((f"{name}, activations x{PROXY_SCALES[-1]}, conv_clamp 256", "proxy, own conv_clamp",
                  lambda: with_conv_clamp(activation_scaled(base, PROXY_SCALES[-1]))))
    for path, kind in official_generators(generators):
        cases.append((Path(path).name, kind, lambda path=path: load_stylegan2(path).model.eval()))
    results = []
    for name, kind, build in cases:
        row = {"generator": name, "kind": kind}
        try:
            g = build().to(device)
            z = torch.randn(batch, g.config.input_dim, generator=torch.Generator().manual_seed(1)).to(device)
            with torch.no_grad():
                wplus = g.mapping(z).unsqueeze(1).expand(-1, g.n_latent, -1).contiguous()
            row.update(compare_candidates(g, wplus))
            row["confirmed"], text = verdict(row)
            text = f"auto = {row['auto']}: {text}"
            if row["conv_clamp"] is None:  # the evidence for (or against) giving such files the recipe
                row["recipe_would_hold"], evidence = recipe_evidence(row)
                text += f"\n    without conv_clamp, {evidence}"
            del g
        except Exception as e:  # a file that cannot load is reported, not a verdict
            row["error"], text = f"{type(e).__name__}: {e}", f"not checked ({type(e).__name__}: {e})"
        print(f"StyleGAN2 auto on {name} [{kind}]: {text}", flush=True)
        results.append(row)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return results


def markdown(rows: list) -> str:
    lines = ["| stage | dtype | rel. L2 error vs fp32 | max abs error | ms / call | ok |", "|---|---|---|---|---|---|"]
    for r in rows:
        err = r.get("rel_l2", r.get("rel_l2_vs_cpu_fp32"))
        note = " (fp32 vs CPU)" if "rel_l2_vs_cpu_fp32" in r else ""
        err_text = "" if err is None else f"{err:.2e}{note}"
        max_text = "" if "max_abs" not in r else f"{r['max_abs']:.3g}"
        lines.append(f"| {r['stage']} | {r['dtype']} | {err_text} | {max_text} | {r['ms_median']} | "
                     f"{'yes' if r['ok'] else 'NO'} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--quick", action="store_true", help="small models (CPU, CI)")
    ap.add_argument("--stages", default=",".join(STAGES), help="comma list of " + ", ".join(STAGES) + " (or none)")
    ap.add_argument("--generators", nargs="*", default=[], help="official generator files for the StyleGAN2 auto "
                    "check (besides the model folder's and the ../shared fixture)")
    ap.add_argument("--no-auto-check", action="store_true", help="skip the StyleGAN2 auto check")
    ap.add_argument("--reps", type=int, default=None, help="timed calls per dtype (default 5 GPU, 1 CPU)")
    ap.add_argument("--cpu-reference", action="store_true", help="also compare the device's fp32 with the CPU's")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    reps = args.reps if args.reps is not None else (5 if device.type == "cuda" else 1)
    rows, errors = [], []
    for name in [n for n in args.stages.split(",") if n and n != "none"]:
        t0 = time.perf_counter()
        try:
            rows += run_stage(name, STAGES[name], device, args.quick, reps, args.cpu_reference)
        except Exception as e:  # a stage that cannot run is reported, and the sweep goes on
            errors.append({"stage": name, "error": f"{type(e).__name__}: {e}"})
        print(f"{name}: {time.perf_counter() - t0:.1f} s", flush=True)
    auto_checks = [] if args.no_auto_check else stylegan2_auto_check(device, args.quick, args.generators)
    checked = [c for c in auto_checks if "confirmed" in c]
    report = {"benchmark": "precision_sweep", "quick": args.quick, "tolerance": TOLERANCE,
              "machine": {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
                          or platform.machine(), "torch": torch.__version__, "threads": torch.get_num_threads()},
              "rows": rows, "errors": errors, "stylegan2_auto": {"claims": CLAIMS, "checks": auto_checks},
              "ok": bool(rows or checked) and all(r["ok"] for r in rows) and not errors
              and all(c["confirmed"] for c in checked)}
    text = json.dumps(report, indent=1)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        tmp = f"{args.out}.tmp{os.getpid()}"
        Path(tmp).write_text(text + "\n")
        os.replace(tmp, args.out)
    print(markdown(rows))
    for c in auto_checks:
        state = "error" if "error" in c else ("confirmed" if c["confirmed"] else "REFUTED")
        recipe = {True: "; the recipe would have held", False: "; the recipe would NOT have held"}.get(
            c.get("recipe_would_hold"), "")
        print(f"StyleGAN2 auto ({c.get('auto', '?')}) on {c['generator']} [{c['kind']}]: {state}{recipe}")
    for e in errors:
        print(f"ERROR {e['stage']}: {e['error']}")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
