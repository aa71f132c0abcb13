"""TransEdit against the official code: same weights, same inputs, same machine, one run. Outputs are compared
first (the race is only fair when both compute the same thing), then both are timed, interleaved, median of N.

    python benchmarks/vs_official.py \\
        --official stylegan2=PATH/stylegan2-pytorch --official style_transformer=PATH/style-transformer \\
        --official styleprompter=PATH/StylePrompter --official splice=PATH/Splice --official dino=PATH/dino \\
        --official put=PATH/PUT                        # -> benchmarks/results/vs_official_cpu.json + a table
    python benchmarks/vs_official.py --device cuda ... # -> vs_official_cuda.json

Checkouts: rosinality/stylegan2-pytorch, sapphire497/style-transformer, I2-Multimedia-Lab/StylePrompter,
omerbt/Splice with facebookresearch/dino, liuqk3/PUT. A stage whose checkout is not given is skipped with a line
that says so. Nothing of the official code is part of TransEdit: it is imported from those paths at run time.

How the official code is made to run here (shims live in this file only, the official files are not changed):
- rosinality's `op` package compiles CUDA kernels at import. `torch.utils.cpp_extension.load` is replaced, for
  the import only, by a stand-in that fails when used; on CPU the official functions then take their own
  `upfirdn2d_native` / leaky-ReLU fallbacks. Style Transformer and StylePrompter ship pSp's older `op` copy
  (CUDA only, no CPU path); their `models.stylegan2.op` is pointed at rosinality's package, the same functions
  with the CPU path. On CUDA the kernels are compiled when a compiler is there (else the stage is skipped).
- Style Transformer / StylePrompter: the networks are built with their `load_weights` skipped (it reads
  pretrained files), initialised randomly, saved in the container their coach writes ({'state_dict', 'opts',
  'latent_avg'}) and that file is loaded by TransEdit's registry, as a user's download would be.
- Splice: `torch.hub.load('facebookresearch/dino:main', name)` is answered from the dino checkout's
  `vision_transformer.py`, with the random weights TransEdit loads too. The dataset's augmentations are the
  official ones; the image pair is synthetic (benchmarks/bench_splice.py).
- PUT: the official yaml configs (full size), `torch._six` aliased (its lr_scheduler imports it); the
  transformer's random weights are saved as the official `last.pth` container and loaded by TransEdit.
- PTI / STIT (benchmarks/bench_tuning.py): the official coaches' train() with wandb, e4e and plotting as stand-ins,
  on an NVlabs networks.py generator (STIT's copy) pickled as NVlabs does and loaded by TransEdit's converter;
  the same LPIPS AlexNet module (random weights) on both sides; size --tuning-size (256 by default, config-f
  widths), equal steps (PTI's early stop off). Where bf16 can be faster (a GPU, a CPU with bf16 instructions) each
  also gets a `*_bf16` row: TransEdit in bf16 against the official fp32, judged on the last step's losses.

Sizes are the official ones: config-f 1024 generator, IR-SE-50 Style Transformer, SwinV2-T StylePrompter + SMART,
DINO ViT-S/8 and ViT-B/8 at 224 px, PUT CVPR 2022 FFHQ (30 x 512) and TPAMI 2024 FFHQ-256 (12 x 768) at 256².
Timings: `--reps` interleaved calls of each (after the comparison run of each), the median; fp32, no TF32. Peak memory:
resident-set growth during the call (CPU, sampled every 2 ms) or CUDA max_memory_allocated above the start.

Over 600 lines: one race per family, each with its adapter for the official code, beside the shared
compare-then-time harness at the top.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
import types
from argparse import Namespace
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_splice import release_host_memory  # noqa: E402
from bench_stylegan import RSSPeak, sync  # noqa: E402

MIB = 2 ** 20
REPOS = {
    "stylegan2": "rosinality/stylegan2-pytorch",
    "style_transformer": "sapphire497/style-transformer",
    "styleprompter": "I2-Multimedia-Lab/StylePrompter",
    "splice": "omerbt/Splice",
    "dino": "facebookresearch/dino",
    "put": "liuqk3/PUT",
    "pti": "danielroich/PTI",
    "stit": "rotemtzaban/STIT",
}
# top-level package names the official repositories share (each has its own `models`, `configs`, `utils`...)
_SHARED_NAMES = ("models", "configs", "op", "utils", "util", "criteria", "training", "options", "datasets", "data",
                 "image_synthesis", "vision_transformer")


# ------------------------------------------------------------------------------------------- official imports
class _Uncompiled:
    """What `cpp_extension.load` returns while the official modules are imported without a compiler: any use
    says so (the official code only reaches it on CUDA)."""

    def __init__(self, name):
        self._name = name

    def __getattr__(self, attr):
        raise RuntimeError(f"the official CUDA extension {self._name!r} was not compiled (CPU run)")


def _purge(names=_SHARED_NAMES):
    for key in list(sys.modules):
        if key.split(".")[0] in names:
            del sys.modules[key]


@contextlib.contextmanager
def official_import(path, device, preset: dict | None = None):
    """Import from an official checkout: its folder first on sys.path, the shared top-level names cleared
    before and after (the imported objects keep their modules alive), `preset` modules put in place first."""
    import torch.utils.cpp_extension as cpp

    path = str(Path(path).resolve())
    _purge()
    sys.modules.update(preset or {})
    sys.path.insert(0, path)
    real_load = cpp.load
    if device.type != "cuda":
        cpp.load = lambda name, *a, **k: _Uncompiled(name)
    try:
        yield
    finally:
        cpp.load = real_load
        sys.path.remove(path)
        _purge()


_ROSINALITY_OP = {}
OFFICIAL_OPS = {"mode": "native (the official CPU code path)"}


def _native_everywhere(op, model):
    """Without compiled kernels on CUDA: the official functions' own native branches on every device
    (upfirdn2d_native; the CPU branch of fused_leaky_relu), patched where model.py looks them up."""
    fused_act, upfirdn = sys.modules[op.__name__ + ".fused_act"], sys.modules[op.__name__ + ".upfirdn2d"]

    def fused_leaky_relu(input, bias=None, negative_slope=0.2, scale=2 ** 0.5):
        if bias is None:
            return torch.nn.functional.leaky_relu(input, negative_slope=0.2) * scale
        rest = [1] * (input.ndim - bias.ndim - 1)
        return torch.nn.functional.leaky_relu(input + bias.view(1, bias.shape[0], *rest), negative_slope=0.2) * scale

    def upfirdn2d(input, kernel, up=1, down=1, pad=(0, 0)):
        up = (up, up) if isinstance(up, int) else tuple(up)
        down = (down, down) if isinstance(down, int) else tuple(down)
        pad = (pad[0], pad[1], pad[0], pad[1]) if len(pad) == 2 else tuple(pad)
        return upfirdn.upfirdn2d_native(input, kernel, *up, *down, *pad)

    for mod in (fused_act, op, model):
        mod.fused_leaky_relu = fused_leaky_relu
    for mod in (upfirdn, op, model):
        mod.upfirdn2d = upfirdn2d


def rosinality_op(paths, device, compile_cuda: bool = False):
    """rosinality's `op` package (upfirdn2d, fused leaky ReLU): its CPU fallbacks on CPU; on CUDA its compiled
    kernels with --official-cuda-ops (needs nvcc and minutes), else its native code on the GPU."""
    if "op" not in _ROSINALITY_OP:
        compiled = device.type == "cuda" and compile_cuda
        with official_import(paths["stylegan2"], device if compiled else torch.device("cpu")):
            op = importlib.import_module("op")
            model = importlib.import_module("model")
        if device.type == "cuda" and not compiled:
            _native_everywhere(op, model)
            OFFICIAL_OPS["mode"] = "native on CUDA (the official kernels not compiled; --official-cuda-ops)"
        elif compiled:
            OFFICIAL_OPS["mode"] = "compiled CUDA kernels"
        _ROSINALITY_OP.update(op=op, model=model)
    return _ROSINALITY_OP["op"]


def _pointed_op(op):
    """`models.stylegan2.op` for Style Transformer / StylePrompter: rosinality's functions."""
    mod = types.ModuleType("models.stylegan2.op")
    mod.FusedLeakyReLU, mod.fused_leaky_relu, mod.upfirdn2d = op.FusedLeakyReLU, op.fused_leaky_relu, op.upfirdn2d
    return {"models.stylegan2.op": mod}


# ------------------------------------------------------------------------------------------------- timing
class Race:
    """Times two zero-argument callables interleaved (official, pack, official, ...), `reps` each; median
    seconds of each. No separate warm-up: every stage first runs both sides once to compare their outputs.
    Peak memory: before each call the memory the other side freed goes back to the OS, then CPU resident-set
    growth during the call (sampled every 2 ms) or CUDA max_memory_allocated above the level before it; the
    largest over the calls."""

    def __init__(self, device, reps: int):
        self.device, self.reps = device, reps

    def _call(self, fn):
        dev = self.device
        release_host_memory()
        sync(dev)
        if dev.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(dev)
            base = torch.cuda.memory_allocated(dev)
            t = time.perf_counter()
            fn()
            sync(dev)
            dt = time.perf_counter() - t
            return dt, (torch.cuda.max_memory_allocated(dev) - base) / MIB
        with RSSPeak() as peak:
            t = time.perf_counter()
            fn()
            dt = time.perf_counter() - t
        return dt, (peak.peak - peak.base) / MIB

    def profile(self, fn, top: int = 8) -> list:
        """One call under torch.profiler: the ops with the most self time (where the time goes)."""
        from torch.profiler import ProfilerActivity, profile

        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.device.type == "cuda" else [])
        with profile(activities=acts) as prof:
            fn()
            sync(self.device)
        key = "self_device_time_total" if self.device.type == "cuda" else "self_cpu_time_total"
        events = sorted(prof.key_averages(), key=lambda e: getattr(e, key, 0), reverse=True)
        total = sum(getattr(e, key, 0) for e in events) or 1
        return [{"op": e.key, "calls": e.count, "self_ms": round(getattr(e, key) / 1e3, 1),
                 "share": round(getattr(e, key) / total, 3)} for e in events[:top]]

    def __call__(self, official, pack, reps=None, profile=False):
        sides = {"official": official, "pack": pack}
        times = {name: [] for name in sides}
        peaks = {name: 0.0 for name in sides}
        for _ in range(reps or self.reps):
            for name, fn in sides.items():
                dt, mem = self._call(fn)
                times[name].append(dt)
                peaks[name] = max(peaks[name], mem)
        o, p = statistics.median(times["official"]), statistics.median(times["pack"])
        row = {"official_s": round(o, 4), "pack_s": round(p, 4), "ratio": round(o / p, 2),
               "official_peak_mib": round(peaks["official"], 1), "pack_peak_mib": round(peaks["pack"], 1),
               "official_all_s": [round(t, 4) for t in times["official"]],
               "pack_all_s": [round(t, 4) for t in times["pack"]]}
        if profile:
            row["profile"] = {name: self.profile(fn) for name, fn in sides.items()}
        return row


def agreement(official_out, pack_out) -> dict:
    a, b = official_out.detach().float().cpu(), pack_out.detach().float().cpu()
    assert a.shape == b.shape, (a.shape, b.shape)
    diff = (a - b).abs().max().item()
    return {"max_abs_diff": float(f"{diff:.3g}"), "ref_max_abs": float(f"{a.abs().max().item():.3g}")}


def check(row: dict, tol_rel: float):
    """The outputs must agree before they are timed: max |official - pack| <= tol_rel * max |official|."""
    limit = tol_rel * max(row["ref_max_abs"], 1e-12)
    row["agrees"] = row["max_abs_diff"] <= limit
    row["tolerance"] = float(f"{limit:.3g}")
    if not row["agrees"]:
        raise AssertionError(f"{row['stage']}: outputs differ by {row['max_abs_diff']} (> {limit}); not timed")


def raced(ctx, row: dict, run_official, run_pack, tol_rel: float, outputs=None) -> dict:
    """Compare the two sides' outputs (`outputs` = (official, pack) when they need another call), then time
    them; the row gains both."""
    official_out, pack_out = outputs if outputs is not None else (run_official(), run_pack())
    row.update(agreement(official_out, pack_out))
    check(row, tol_rel)
    row.update(ctx.race(run_official, run_pack, profile=ctx.profiled(row["stage"])))
    return row


# ------------------------------------------------------------------------------------------------- stages
def stage_stylegan2(ctx):
    """rosinality Generator(1024, 512, 8) forward vs TransEdit synthesis, W+ in, constant noise."""
    from transedit.models.registry import load_stylegan2

    rosinality_op(ctx.paths, ctx.device, ctx.args.official_cuda_ops)
    Generator = _ROSINALITY_OP["model"].Generator
    torch.manual_seed(0)
    official = Generator(1024, 512, 8).eval().requires_grad_(False)
    path = ctx.tmp / "stylegan2-ffhq-config-f.pt"
    torch.save({"g_ema": official.state_dict(), "latent_avg": official.mean_latent(4096)[0]}, path)  # as convert_weight.py
    pack = load_stylegan2(path).model.to(ctx.device)
    official = official.to(ctx.device)
    rows = []
    for batch in ctx.batches:
        torch.manual_seed(1)
        w = official.get_latent(torch.randn(batch * 18, 512, device=ctx.device)).view(batch, 18, 512)
        with torch.no_grad():
            rows.append(raced(ctx, {"stage": "stylegan2_1024_synthesis", "batch": batch},
                              lambda: official([w], input_is_latent=True, randomize_noise=False)[0],
                              lambda: pack.synthesis(w, noise_mode="const"), 1e-4))
    return rows


def _style_transformer_official(ctx):
    op = rosinality_op(ctx.paths, ctx.device, ctx.args.official_cuda_ops)
    with official_import(ctx.paths["style_transformer"], ctx.device, _pointed_op(op)):
        st = importlib.import_module("models.style_transformer")
    st.StyleTransformer.load_weights = lambda self: None  # reads pretrained files; random weights here
    opts = Namespace(output_size=1024, input_nc=3, learn_in_w=False, start_from_latent_avg=True,
                     checkpoint_path=None, device=str(ctx.device), encoder_type="GradualStyleEncoder",
                     label_nc=0, dataset_type="ffhq_encode")
    torch.manual_seed(0)
    net = st.StyleTransformer(opts).eval().requires_grad_(False)
    with torch.no_grad():
        net.latent_avg = net.decoder.module.mean_latent(4096)  # [1, 512] in coach_invert (repeat for W+)
        net.latent_avg = net.latent_avg.repeat(18, 1)
    return net, opts


def stage_style_transformer(ctx):
    """Style Transformer inversion: encode a 256² face and generate 1024² (the official forward with
    resize=False, randomize_noise=False) vs TransEdit's LatentEncoder + synthesis (the Invert -> Generate path)."""
    from transedit.models.registry import load_encoder

    net, opts = _style_transformer_official(ctx)
    path = ctx.tmp / "style_transformer_ffhq.pt"
    torch.save({"state_dict": net.state_dict(), "opts": vars(opts), "latent_avg": net.latent_avg}, path)  # coach_invert
    desc = load_encoder(path)
    enc, gen = desc.model.to(ctx.device).eval(), desc.generator.model.to(ctx.device)
    net = net.to(ctx.device)
    net.latent_avg = net.latent_avg.to(ctx.device)
    rows = []
    for batch in ctx.batches:
        torch.manual_seed(2)
        x = torch.rand(batch, 3, 256, 256, device=ctx.device) * 2 - 1
        with torch.no_grad():
            rows.append(raced(ctx, {"stage": "style_transformer_invert", "batch": batch},
                              lambda: net(x, resize=False, randomize_noise=False),
                              lambda: gen.synthesis(enc(x), noise_mode="const"), 1e-3))
    return rows


def stage_styleprompter(ctx):
    """StylePrompter full checkpoint: encode (SwinV2-T, 18 latent tokens) and generate 1024² with SMART
    refining layer 4 (beta 1) vs TransEdit's encoder + SMART feature hook + synthesis."""
    from transedit.models.registry import load_encoder

    op = rosinality_op(ctx.paths, ctx.device, ctx.args.official_cuda_ops)
    with official_import(ctx.paths["styleprompter"], ctx.device, _pointed_op(op)):
        sp = importlib.import_module("models.style_prompter")
    sp.StylePrompter.load_weights = lambda self: None
    opts = Namespace(output_size=1024, tokens_num=18, refined_layer=4, start_from_latent_avg=True,
                     learn_in_w=False, checkpoint_path=None, device=str(ctx.device))
    torch.manual_seed(0)
    net = sp.StylePrompter(opts).eval().requires_grad_(False)
    with torch.no_grad():
        net.latent_avg = net.decoder.module.generator.mean_latent(4096).repeat(18, 1)
    path = ctx.tmp / "styleprompter_full.pt"
    torch.save({"state_dict": net.state_dict(), "opts": vars(opts), "latent_avg": net.latent_avg}, path)
    desc = load_encoder(path)
    assert desc.smart is not None, "the full checkpoint's SMART block was not found"
    enc, gen, smart = desc.model.to(ctx.device).eval(), desc.generator.model.to(ctx.device), desc.smart.to(ctx.device)
    net = net.to(ctx.device)
    net.latent_avg = net.latent_avg.to(ctx.device)

    def pack_run(x):
        codes, feats = enc(x, return_features=True)
        return gen.synthesis(codes, noise_mode="const", feature_hook=smart.hook(feats, beta=1.0))

    rows = []
    for batch in ctx.batches:
        torch.manual_seed(2)
        x = torch.rand(batch, 3, 256, 256, device=ctx.device) * 2 - 1
        with torch.no_grad():
            run_o = lambda: net(x, resize=False, randomize_noise=False, beta=1.0)[0]  # noqa: E731
            run_p = lambda: pack_run(x)  # noqa: E731
            # the official encoder mixes the images of a batch (fixtures README): compare image 0 alone
            outputs = (net(x[:1], resize=False, randomize_noise=False, beta=1.0)[0], run_p()[:1])
            rows.append(raced(ctx, {"stage": "styleprompter_smart_invert", "batch": batch}, run_o, run_p, 1e-3,
                              outputs=outputs))
    return rows


# ------------------------------------------------------------------------------------------------- Splice
SPLICE_BACKBONES = {"vits8": ("small", "dino_vits8"), "vitb8": ("base", "dino_vitb8")}


def _official_dino(ctx, config, state_dict):
    """DINO's own VisionTransformer (vision_transformer.py, as hubconf builds dino_vits8 / dino_vitb8) holding
    `state_dict`."""
    if "vt" not in ctx.cache:
        with official_import(ctx.paths["dino"], ctx.device):
            ctx.cache["vt"] = importlib.import_module("vision_transformer")
    vt = ctx.cache["vt"]
    build = vt.vit_small if config.embed_dim == 384 else vt.vit_base
    model = build(patch_size=config.patch_size, num_classes=0)
    model.load_state_dict(state_dict, strict=True)
    return model


def _splice_pair(ctx, size):
    """The synthetic structure/appearance pair as PNG files in the official dataroot layout (A/, B/) and as
    the [1, 3, H, W] tensors a user's Load Image gives (the same 8-bit pixels)."""
    import numpy as np
    from PIL import Image
    from bench_splice import synthetic_pair

    root = ctx.tmp / f"splice_pair_{size}"
    tensors = []
    for folder, img in zip("AB", synthetic_pair(size, size, seed=0)):
        (root / folder).mkdir(parents=True, exist_ok=True)
        arr = (img[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        Image.fromarray(arr).save(root / folder / f"{folder}.png")
        tensors.append(torch.from_numpy(arr).permute(2, 0, 1)[None].float() / 255)
    return root, tensors


class _OfficialSplice:
    """omerbt/Splice's train.py loop, one iteration per step(): dataset[0], Model, LossG, Adam, scheduler."""

    def __init__(self, mods, cfg, device, generator_state):
        self.mods, self.cfg, self.device = mods, cfg, device
        self.dataset = mods["Dataset"].SingleImageDataset(cfg)
        self.model = mods["model"].Model(cfg)
        self.model.netG.load_state_dict(generator_state)
        self.criterion = mods["losses"].LossG(cfg)
        self.optimizer = mods["util"].get_optimizer(cfg, self.model.netG.parameters())
        self.scheduler = mods["util"].get_scheduler(self.optimizer, lr_policy=cfg["scheduler_policy"],
                                                    n_epochs=cfg["n_epochs"],
                                                    n_epochs_decay=cfg["scheduler_n_epochs_decay"],
                                                    lr_decay_iters=cfg["scheduler_lr_decay_iters"])

    def inputs(self):
        inputs = self.dataset[0]
        return {k: v.to(self.device) for k, v in inputs.items()}

    def step(self):
        inputs = self.inputs()
        self.optimizer.zero_grad()
        outputs = self.model(inputs)
        losses = self.criterion(outputs, inputs)
        losses["loss"].item()  # train.py shows it in the progress bar every step
        losses["loss"].backward()
        self.optimizer.step()
        self.scheduler.step()
        return losses


class SpliceSetup:
    """What both sides of a Splice race share: the pair (PNG files in the official dataroot layout and the
    same pixels as tensors), one DINO with random weights (DINO's own ViT for the official side, the released
    .pth layout loaded by TransEdit's registry for the pack), the official config and one generator init (the
    official xavier init, seed 0). `official()` / `pack()` give a fresh trainer of each side from them."""

    def __init__(self, ctx, backbone_key: str, size: int, dino_size: int = 224):
        import yaml
        from safetensors.torch import load_file
        from bench_splice import dino_config
        from transedit.models.registry import load_dino
        from transedit.random_weights import save_random_dino

        self.ctx, self.dino_size = ctx, dino_size
        backbone, self.hub_name = SPLICE_BACKBONES[backbone_key]
        self.config = dino_config(backbone, 8)
        weights = save_random_dino(ctx.tmp / f"{self.hub_name}.safetensors", config=self.config, seed=0,
                                   overwrite=True)
        self.state = load_file(str(weights))
        pth = ctx.tmp / f"{self.hub_name}_pretrain.pth"
        torch.save(_official_dino(ctx, self.config, self.state).state_dict(), pth)  # a plain state dict, as released
        self.dino = load_dino(pth).model.eval().requires_grad_(False).to(ctx.device)
        root, (A, B) = _splice_pair(ctx, size)
        self.A, self.B = A.to(ctx.device), B.to(ctx.device)
        if "splice_mods" not in ctx.cache:
            with official_import(ctx.paths["splice"], ctx.device):
                ctx.cache["splice_mods"] = {name: importlib.import_module(module) for name, module in (
                    ("Dataset", "data.Dataset"), ("model", "models.model"), ("losses", "util.losses"),
                    ("util", "util.util"))}
        self.mods = ctx.cache["splice_mods"]
        cfg = yaml.safe_load((Path(ctx.paths["splice"]) / "conf" / "default" / "config.yaml").read_text())
        self.cfg = dict(cfg, dataroot=str(root), dino_model_name=self.hub_name, dino_global_patch_size=dino_size)
        torch.manual_seed(0)
        self.init = self.mods["model"].Model(self.cfg).netG.state_dict()

    def official(self) -> _OfficialSplice:
        """The official loop; its LossG's torch.hub.load of DINO is answered with the shared weights."""
        hub = torch.hub.load
        torch.hub.load = lambda repo, name, *a, **k: _official_dino(self.ctx, self.config, self.state)
        try:
            torch.manual_seed(1)
            return _OfficialSplice(self.mods, self.cfg, self.ctx.device, self.init)
        finally:
            torch.hub.load = hub

    def pack(self):
        """TransEdit's trainer, early stop off, the per-step loss reported (plateau_window 1)."""
        from transedit.models.splice.training import SpliceSettings, SpliceTrainer

        trainer = SpliceTrainer(self.dino, self.A, self.B, SpliceSettings(seed=1, early_stop=False, plateau_window=1,
                                                                          dino_size=self.dino_size))
        trainer.gen.load_state_dict(self.init)
        return trainer

    def global_loss(self, side: str, out) -> float:
        return _global_loss(out, self.cfg) if side == "official" else float(out.loss)


def record_steps(step, n: int, loss_of) -> list:
    """n training steps: [step, seconds since the start, per-step global loss] from step 1 on (step 0 trains
    the appearance term only)."""
    records, t0 = [], time.perf_counter()
    for i in range(n):
        out = step()
        if i >= 1:
            records.append([i, round(time.perf_counter() - t0, 3), round(loss_of(out), 5)])
        if i and i % 100 == 0:
            print(f"  step {i}, {time.perf_counter() - t0:.0f} s", flush=True)
    return records


def _global_loss(losses, cfg) -> float:
    """The per-step (global) part of Splice's loss, the quantity TransEdit's trainer tracks."""
    terms = (("lambda_global_ssim", "loss_global_ssim"), ("lambda_global_cls", "loss_global_cls"),
             ("lambda_global_identity", "loss_global_id_B"))
    return sum(cfg[lam] * float(losses[key].detach()) for lam, key in terms if key in losses)


def _pack_loss(trainer, a_crop, b_crop, step):
    """TransEdit's loss for given crops (the trainer's step without augmentation and update)."""
    from transedit.models.splice.training import SpliceLoss

    lambdas = trainer.loss.active(step)
    with torch.no_grad():
        names = (["A_global"] if lambdas["global_ssim"] else []) + ["B_global"]
        crops = {"A_global": a_crop, "B_global": b_crop}
        target = dict(zip(names, trainer.loss.features_of([crops[n] for n in names])))
    generated = {"x_global": trainer.gen(a_crop)}
    if lambdas["global_identity"]:
        generated["y_global"] = trainer.gen(b_crop)
    out = dict(zip(generated, trainer.loss.features_of(list(generated.values()))))
    terms = SpliceLoss.terms(out, target, lambdas, trainer.entire_ssim_target)
    return SpliceLoss.total(terms, lambdas)


def stage_splice(ctx):
    """One Splice training step (official train.py iteration vs TransEdit's SpliceTrainer.step) at 224 px with
    DINO ViT-S/8 and ViT-B/8, after checking that both give the same loss on the same crops; then the first
    `--splice-curve-steps` steps of each from the same generator weights (loss and wall time per step)."""
    size = ctx.args.splice_size
    rows = []
    for key in [b for b in ctx.args.splice_backbones.split(",") if b]:
        setup = SpliceSetup(ctx, key, size)
        official, trainer = setup.official(), setup.pack()
        official.step()  # step 0 (appearance only + the entire image) on both sides
        trainer.step()
        official.model.netG.load_state_dict(setup.init)
        trainer.gen.load_state_dict(setup.init)
        inputs = official.inputs()  # step 1: every global term on
        lo = official.criterion(official.model(inputs), inputs)["loss"]
        lp = _pack_loss(trainer, inputs["A_global"], inputs["B_global"], step=1)
        row = {"stage": f"splice_step_{key}", "case": f"{size} px, step", **agreement(lo[None], lp[None])}
        check(row, 1e-4)
        row.update(ctx.race(official.step, trainer.step, profile=ctx.profiled("splice")))
        rows.append(row)

        n = ctx.args.splice_curve_steps
        if n:
            curve = {side: record_steps(make().step, n, lambda out, side=side: setup.global_loss(side, out))
                     for side, make in (("official", setup.official), ("pack", setup.pack))}
            rows.append({"stage": f"splice_curve_{key}", "case": f"{size} px, {n} steps",
                         "official_s": curve["official"][-1][1], "pack_s": curve["pack"][-1][1],
                         "ratio": round(curve["official"][-1][1] / curve["pack"][-1][1], 2),
                         "official_peak_mib": float("nan"), "pack_peak_mib": float("nan"),
                         "note": "[step, seconds since start, global loss]; random crops differ between sides",
                         "curve": curve})
    return rows


# ---------------------------------------------------------------------------------------------------- PUT
PUT_CONFIGS = {"cvpr2022": "put_cvpr2022/ffhq/transformer_ffhq.yaml",
               "tpami2024": "put_tpami2024/ffhq/vit_base_ffhq_res256.yaml"}


def _official_put(ctx, version):
    """The official transformer (with its P-VQVAE) built from the official full-size yaml, random weights, and
    written as Solver.save + Logger.save_config write an experiment: checkpoint/last.pth, configs/config.yaml."""
    import yaml
    from transedit.models.core.checkpoint_io import read_official_yaml

    config = read_official_yaml(Path(ctx.paths["put"]) / "configs" / PUT_CONFIGS[version])  # data only (tuples become lists)
    config["model"]["params"]["content_codec_config"]["params"]["ckpt_path"] = None  # random weights
    six = types.ModuleType("torch._six")  # image_synthesis/engine/lr_scheduler.py imports torch._six.inf
    six.inf = math.inf
    with official_import(ctx.paths["put"], ctx.device, {"torch._six": six}):
        misc = importlib.import_module("image_synthesis.utils.misc")
        torch.manual_seed(0)
        model = misc.instantiate_from_config(config["model"])
    model.eval().requires_grad_(False)
    with torch.no_grad():  # spread the codebook like encoder features so that quantisation is not degenerate
        emb = model.content_codec.quantize.embedding
        (emb.weight if hasattr(emb, "weight") else emb).normal_()
        for name, p in model.named_parameters():
            if name.startswith("content_codec."):
                continue
            if p.ndim >= 2:  # larger than the training init so the logits are decisive (clear greedy margins)
                p.normal_(0, 1 / p[0].numel() ** 0.5)
    exp = ctx.tmp / f"put_{version}"
    (exp / "checkpoint").mkdir(parents=True, exist_ok=True)
    (exp / "configs").mkdir(parents=True, exist_ok=True)
    state = {k: v for k, v in model.state_dict().items() if ".loss." not in k and not k.startswith("loss.")}
    torch.save({"last_epoch": 0, "last_iter": 0, "spend_time": 0.0, "model": state,
                "optimizer_and_scheduler": {}}, exp / "checkpoint" / "last.pth")
    (exp / "configs" / "config.yaml").write_text(yaml.dump(config))
    return model, exp / "checkpoint" / "last.pth"


def _put_input(size=256, hole=0.5):
    """A smooth synthetic 256² picture (0..255, integer valued) and a centred square hole (mask 1 = known)."""
    ys = torch.linspace(0, 1, size).view(size, 1).expand(size, size)
    xs = torch.linspace(0, 1, size).view(1, size).expand(size, size)
    image = torch.stack([ys, xs, 0.5 + 0.5 * torch.sin(6 * (xs + ys))]) * 255
    mask = torch.ones(1, 1, size, size)
    a, b = int(size * (1 - hole) / 2), int(size * (1 + hole) / 2) + 3  # not grid-aligned: partial patches too
    mask[..., a:b, a:b] = 0
    return image.round()[None], mask


def stage_put(ctx):
    """PUT inpainting, official generate_content (CVPR: sample_largest, as scripts/inference.py; TPAMI: sample)
    vs TransEdit's inpaint(), 256² with a centred hole; all-at-once and 20 tokens per pass timed, 1 token per
    pass (the paper's setting) extrapolated from them; 1 and 4 samples. Greedy (top-1) fills are compared first."""
    from transedit.models.registry import load_put
    from transedit.models.put.sampling import SamplerRNG, inpaint, official_top_k

    rows = []
    image, mask = _put_input()
    image, mask = image.to(ctx.device), mask.to(ctx.device)
    for version in [v for v in ctx.args.put_versions.split(",") if v]:
        official, path = _official_put(ctx, version)
        official = official.to(ctx.device)
        pack = load_put(path).model.to(ctx.device).eval()
        extra = {"sample_largest": True} if version == "cvpr2022" else {}

        def run_official(ntpi, fr, samples):
            batch = {"image": image.clone(), "mask": mask.bool().clone()}
            with torch.no_grad():
                return official.generate_content(batch=batch, filter_ratio=fr, filter_type="count", replicate=samples,
                                                 num_token_per_iter=ntpi, calculate_acc_and_prob=False,
                                                 **extra)["completed"]

        def run_pack(ntpi, fr, samples):  # as the PUT Inpaint node samples: one seeded CPU generator per sample
            rng = SamplerRNG([torch.Generator().manual_seed(k) for k in range(samples)])
            return inpaint(pack, image, mask, num_samples=samples, schedule=ntpi,
                           top_k=official_top_k(fr, pack.config.num_token), rng=rng)

        for ntpi in (-1, 20):
            row = {"stage": f"put_{version}_check", **agreement(run_official(ntpi, 1, 1), run_pack(ntpi, 1, 1))}
            row["stage"] = f"put_{version}"
            check(row, 1e-3)
        n_unknown = None
        for samples in [int(x) for x in ctx.args.put_samples.split(",") if x]:
            timed = {}
            for ntpi, label in ((-1, "all at once"), (20, "20 per pass")):
                row = {"stage": f"put_{version}", "case": f"{label}, {samples} sample{'s' * (samples > 1)}",
                       "samples": samples, "tokens_per_pass": ntpi, "filter_ratio": 200,
                       "max_abs_diff": None, "checked": "greedy fills compared above (all at once and 20 per pass)"}
                row.update(ctx.race(lambda: run_official(ntpi, 200, samples), lambda: run_pack(ntpi, 200, samples),
                                    reps=ctx.args.put_reps, profile=ctx.profiled("put") and ntpi == -1))
                timed[ntpi] = row
                rows.append(row)
            if n_unknown is None:
                data = pack.content_codec.get_features(image, mask)
                n_unknown = int((data["token_type"].reshape(-1) != 1).sum())
            passes20 = math.ceil(n_unknown / 20)
            est = {}
            for side in ("official", "pack"):
                t_all, t_20 = timed[-1][f"{side}_s"], timed[20][f"{side}_s"]
                per_pass = (t_20 - t_all) / max(passes20 - 1, 1)
                est[side] = round(t_all + per_pass * (n_unknown - 1), 2)
            rows.append({"stage": f"put_{version}", "case": f"1 per pass (paper), {samples} sample{'s' * (samples > 1)}",
                         "samples": samples, "tokens_per_pass": 1, "extrapolated": True, "unknown_tokens": n_unknown,
                         "official_s": est["official"], "pack_s": est["pack"],
                         "ratio": round(est["official"] / est["pack"], 2),
                         "official_peak_mib": timed[20]["official_peak_mib"], "pack_peak_mib": timed[20]["pack_peak_mib"],
                         "note": f"all-at-once time + {n_unknown - 1} more passes at the per-pass time measured "
                                 f"between the all-at-once and 20-per-pass runs ({passes20} passes)"})
    return rows


STAGES = {
    "stylegan2": (stage_stylegan2, ("stylegan2",)),
    "style_transformer": (stage_style_transformer, ("stylegan2", "style_transformer")),
    "styleprompter": (stage_styleprompter, ("stylegan2", "styleprompter")),
    "splice": (stage_splice, ("splice", "dino")),
    "put": (stage_put, ("put",)),
    # pivotal tuning (benchmarks/bench_tuning.py): NVlabs networks.py comes from the STIT checkout for both
    "pti": (lambda ctx: __import__("bench_tuning").stage_pti(ctx), ("pti", "stit")),
    "stit": (lambda ctx: __import__("bench_tuning").stage_stit(ctx), ("stit",)),
}


class Context:
    def __init__(self, args, device, paths, tmp):
        self.args, self.device, self.paths, self.tmp = args, device, paths, Path(tmp)
        self.batches = [int(b) for b in args.batches.split(",") if b]
        self.race = Race(device, args.reps)
        self.cache = {}

    def profiled(self, stage: str) -> bool:
        return any(stage.startswith(p) for p in self.args.profile.split(",") if p)


def _num(v, fmt=".2g") -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)


def table(rows) -> str:
    head = f"{'stage':<34} {'case':<22} {'official s':>10} {'pack s':>9} {'ratio':>6} {'max|diff|':>9} {'peak MiB o/p':>14}"
    lines = [head, "-" * len(head)]
    for r in rows:
        if "skipped" in r:
            lines.append(f"{r['stage']:<34} skipped: {r['skipped']}")
            continue
        case = r.get("case") or f"batch {r.get('batch', 1)}"
        lines.append(f"{r['stage']:<34} {case:<22} {r['official_s']:>10.3f} {r['pack_s']:>9.3f} {r['ratio']:>5.2f}x "
                     f"{_num(r.get('max_abs_diff')):>9} {_num(r['official_peak_mib'], '.0f'):>6}/{_num(r['pack_peak_mib'], '.0f'):<6}")
    return "\n".join(lines)


def markdown(report) -> str:
    """The docs/performance.md table of one run."""
    lines = ["| stage | case | official s | TransEdit s | speed-up | max abs diff (output range) | peak MiB official / TransEdit |",
             "|---|---|---|---|---|---|---|"]
    for r in report["rows"]:
        if "skipped" in r:
            lines.append(f"| {r['stage']} | skipped: {r['skipped']} | | | | | |")
            continue
        if r["stage"].startswith("splice_curve"):
            continue
        case = r.get("case") or f"batch {r.get('batch', 1)}"
        if r.get("extrapolated"):
            case += " (extrapolated)"
        diff = "-" if r.get("max_abs_diff") is None else f"{r['max_abs_diff']:.2g} (±{r['ref_max_abs']:.3g})"
        if r["stage"].startswith("put_") and r.get("max_abs_diff") is None:
            diff = "greedy fills checked"
        if r.get("final_loss_rel_diff") is not None:  # a half-precision row: the tuning compared, not the arithmetic
            diff = (f"final losses within {r['final_loss_rel_diff']:.2g} rel. ({r['loss_max_rel_diff_any_step']:.2g} at "
                    f"worst per step); render {r['render_max_abs_diff']:.2g} (±{r.get('ref_max_abs', 0):.3g})")
        lines.append(f"| {r['stage']} | {case} | {r['official_s']:.2f} | {r['pack_s']:.2f} | **{r['ratio']:.2f}×** | "
                     f"{diff} | {_num(r['official_peak_mib'], '.0f')} / {_num(r['pack_peak_mib'], '.0f')} |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--official", action="append", default=[], metavar="NAME=PATH",
                    help=f"an official checkout; NAME is one of {sorted(REPOS)}")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--stages", default=",".join(STAGES))
    ap.add_argument("--batches", default="1")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--splice-backbones", default="vits8,vitb8")
    ap.add_argument("--splice-size", type=int, default=224)
    ap.add_argument("--splice-curve-steps", type=int, default=50)
    ap.add_argument("--put-versions", default="cvpr2022,tpami2024")
    ap.add_argument("--put-samples", default="1,4")
    ap.add_argument("--put-reps", type=int, default=2, help="PUT calls take minutes on a CPU")
    ap.add_argument("--profile", default="", metavar="STAGES",
                    help="comma list of stages to profile once per case (one more call of each side); "
                         "PUT: the all-at-once cases")
    ap.add_argument("--tuning-size", type=int, default=256, help="pti/stit: generator size (config-f widths)")
    ap.add_argument("--tuning-steps", type=int, default=6, help="pti: steps (stit: half, over 2 frames)")
    ap.add_argument("--official-cuda-ops", action="store_true",
                    help="compile rosinality's CUDA kernels for the official side (needs nvcc; minutes)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--out", default=None, help="JSON (default benchmarks/results/vs_official_<device>.json)")
    ap.add_argument("--markdown-from", default=None, metavar="JSON", help="print the docs/performance.md table of a run and stop")
    args = ap.parse_args(argv)
    if args.markdown_from:
        print(markdown(json.loads(Path(args.markdown_from).read_text())))
        return

    paths = {}
    for item in args.official:
        name, _, path = item.partition("=")
        if name not in REPOS or not path:
            ap.error(f"--official {item!r}: expected NAME=PATH with NAME in {sorted(REPOS)}")
        paths[name] = path
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    rows = []
    out = Path(args.out or Path(__file__).parent / "results" / f"vs_official_{device.type}.json")
    out.parent.mkdir(parents=True, exist_ok=True)

    def write():  # after every stage, so a run stopped by a time limit keeps what it measured
        report = {"device": str(device), "device_name": torch.cuda.get_device_name(device) if device.type == "cuda"
                  else platform.processor() or platform.machine(), "torch": torch.__version__,
                  "threads": torch.get_num_threads(), "reps": args.reps, "put_reps": args.put_reps, "dtype": "fp32",
                  "machine_load_at_end": list(os.getloadavg()), "official_checkouts": {n: REPOS[n] for n in paths},
                  "official_stylegan_ops": OFFICIAL_OPS["mode"], "rows": rows}
        tmp_out = out.with_suffix(".json.tmp")
        tmp_out.write_text(json.dumps(report, indent=1))
        os.replace(tmp_out, out)

    with tempfile.TemporaryDirectory(prefix="transedit-vs-official-") as tmp:
        ctx = Context(args, device, paths, tmp)
        for name in [s for s in args.stages.split(",") if s]:
            fn, needs = STAGES[name]
            missing = [REPOS[n] for n in needs if n not in paths]
            if missing:
                rows.append({"stage": name, "skipped": f"no checkout of {', '.join(missing)} (--official)"})
                print(f"{name}: skipped, no checkout of {', '.join(missing)}", flush=True)
                continue
            t0 = time.perf_counter()
            stage_rows = fn(ctx)
            for r in stage_rows:
                print(json.dumps({k: v for k, v in r.items() if k not in ("official_all_s", "pack_all_s", "curve",
                                                                           "profile")}), flush=True)
            print(f"{name}: {time.perf_counter() - t0:.0f} s", flush=True)
            rows.extend(stage_rows)
            write()
    write()
    print(table(rows))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
