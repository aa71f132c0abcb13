"""Pivotal tuning (PTI, Roich et al. 2021) and STIT's stitching tuning (Tzaban et al. 2022) for the StyleGAN2 generator.

What the official code does, and what this module keeps of it (tests/test_tuning_parity.py runs both on one
small generator and compares losses per step and the tuned weights):
- PTI's single-id coach: per step, synthesise the pivot (constant noise), L2 + LPIPS against the target, and stop
  *before* the optimiser step once LPIPS <= 0.06. PTI's multi-id coach and STIT's coach: every step is one pass
  over the frames, one Adam step per frame, no early stop. Locality regularisation (STIT's default): a z drawn
  from numpy's global RNG, mapped with truncation 0.5, the pivot moved 30 units towards it along the normalised
  direction, the tuned and the original generator rendered there with noise off, L2 and LPIPS between them.
  `seed` seeds numpy's legacy RandomState, so seed s draws what the official code draws after np.random.seed(s).
- STIT's optimize_border: per frame, a fresh copy of the generator tuned so that the edited crop agrees with the
  original crop in the border mask (masked L2 over the mask's sum) and with the untuned edit in the content mask.

Where it differs, for speed, with the same result: the tuned and the regularised images are one batched synthesis
and one batched perceptual call (the noise is per sample: constant for the pivot, zero for the regulariser);
the mapping network is not handed to Adam (it never has a gradient there); losses stay on the device and are
read once at the end; the early stop is decided on the device (Adam's learning rate is a tensor set to 0 once
the rule fires, so the weights stay exactly as the official break leaves them) and the loop polls it every
`poll_every` steps; frames stay where the caller keeps them (e.g. the CPU) and move to the device a chunk at a
time, so device memory does not grow with the clip's length.

Over 600 lines because both tunings share its copies, masks and the delta file that carries their result.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import struct
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F

from ..core.checkpoint_io import TRANSEDIT_FORMAT_KEY, atomic_write, read_safetensors
from ..core.devices import has_native_bf16
from ..core.errors import CheckpointError
from .generator import StyleGAN2Generator

log = logging.getLogger(__name__)

# (step, total, preview image [1, 3, H, W] in about [-1, 1] on the device, or None)
StepCallback = Callable[[int, int, Optional[torch.Tensor]], None]
# polled every `poll_every` steps: True (or raising its own exception, e.g. ComfyUI's interrupt) stops the run
CancelCheck = Callable[[], Optional[bool]]
# perceptual(x, y) -> [B] distances for images [B, 3, H, W] in [-1, 1] (LPIPS, models/perceptual)
Perceptual = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

DELTA_FORMAT = "stylegan2_tuning_delta"
DELTA_VERSION = "1"


class TuningCancelled(RuntimeError):
    """The caller's should_cancel() said stop (the tuned weights so far are discarded)."""


@dataclass(frozen=True)
class TuningConfig:
    steps: int = 350
    lr: float = 3e-4
    betas: tuple[float, float] = (0.9, 0.999)
    l2_weight: float = 1.0
    lpips_weight: float = 1.0
    early_stop_lpips: Optional[float] = 0.06  # PTI's single-id rule; None: never (one target only, as PTI)
    locality_regularization: bool = False
    regularizer_alpha: float = 30.0
    regularizer_l2_weight: float = 0.1
    regularizer_lpips_weight: float = 0.1
    regularizer_samples: int = 1
    regularizer_interval: int = 1  # regularise on iterations t with t % interval == 0 (the official counter)
    regularizer_truncation: float = 0.5
    chunk_frames: int = 16  # frames moved to the device at once
    poll_every: int = 10  # steps between host reads: early stop, Cancel, progress/preview

    def __post_init__(self):
        if self.steps < 0 or self.lr < 0 or self.chunk_frames < 1 or self.poll_every < 1:
            raise ValueError("TuningConfig: steps and lr must be >= 0, chunk_frames and poll_every >= 1")
        if self.regularizer_samples < 1 or self.regularizer_interval < 1:
            raise ValueError("TuningConfig: regularizer_samples and regularizer_interval must be >= 1")


# PTI's configs/hyperparameters.py and STIT's (the STIT coach runs all frames in every step)
PTI_PRESET = TuningConfig()
STIT_PRESET = TuningConfig(steps=50, lr=3e-5, early_stop_lpips=None, locality_regularization=True)


@dataclass
class TuningResult:
    generator: StyleGAN2Generator  # the tuned copy (on the device, frozen)
    losses: torch.Tensor  # [steps_run, 3] (l2, lpips, total) per optimiser step, CPU
    steps_run: int  # optimiser steps taken (iterations over frames, for a clip)
    stopped_early: bool


def _with_grad(fn):
    """Hosts such as ComfyUI run nodes under inference_mode; tuning needs autograd whatever the caller's mode."""
    def wrapper(*args, **kwargs):
        with torch.inference_mode(False), torch.enable_grad():
            return fn(*args, **kwargs)
    wrapper.__name__, wrapper.__doc__, wrapper.__wrapped__ = fn.__name__, fn.__doc__, fn
    return wrapper


def tunable_copy(generator: StyleGAN2Generator, device) -> StyleGAN2Generator:
    """A copy of `generator` on `device` whose synthesis weights take gradients (cloned outside inference mode,
    so a generator loaded under ComfyUI's inference mode can be trained)."""
    copy = _copy_on(generator, device)
    for p in synthesis_parameters(copy):
        p.requires_grad_(True)
    return copy


def frozen_on(generator: StyleGAN2Generator, device) -> StyleGAN2Generator:
    """`generator` itself when it already lives on `device`, else a frozen copy there (the caller's stays put)."""
    if next(generator.parameters()).device == torch.device(device):
        return generator
    return _copy_on(generator, device)


def _copy_on(generator: StyleGAN2Generator, device) -> StyleGAN2Generator:
    """A frozen copy of `generator` on `device`, built on the meta device and given copies of the weights (no
    random initialisation to overwrite: at 1024² that was a second of normal_ per tuning call on a CPU)."""
    with torch.device("meta"):
        copy = StyleGAN2Generator(generator.config)
    # fp32 weights whatever the source's dtype (tuning's master weights; a half precision runs under autocast)
    state = {k: v.detach().to(device, torch.float32 if v.is_floating_point() else v.dtype, copy=True)
             for k, v in generator.state_dict().items()}
    copy.load_state_dict(state, assign=True)
    return copy.eval().requires_grad_(False)


def synthesis_parameters(generator: StyleGAN2Generator) -> list[torch.nn.Parameter]:
    """Every parameter but the mapping network's (`style.*`): what a loss on synthesis reaches."""
    return [p for name, p in generator.named_parameters() if not name.startswith("style.")]


def make_adam(params, lr: float, betas, device: torch.device, tensor_lr: bool):
    """Adam as the official code builds it, fused where torch has a fused kernel for the device (one launch for
    all tensors); `tensor_lr`: the learning rate is a device tensor (fused only), so the early stop can zero it
    without a host sync. Returns (optimiser, lr tensor or None)."""
    fused_ok = device.type in ("cuda", "cpu")
    if fused_ok:
        lr_value = torch.tensor(float(lr), device=device) if tensor_lr else float(lr)
        try:
            return torch.optim.Adam(params, lr=lr_value, betas=tuple(betas), fused=True), (
                lr_value if tensor_lr else None)
        except (RuntimeError, ValueError, TypeError) as e:
            # this torch has no fused Adam for these tensors: the plain one gives the same steps, and the early
            # stop then reads its flag on the host at each step instead of zeroing a device learning rate
            log.info("pivotal tuning: fused Adam unavailable on %s (%s); using the unfused optimiser", device, e)
    return torch.optim.Adam(params, lr=float(lr), betas=tuple(betas), foreach=device.type != "cpu"), None


def optimizer_step(loss: torch.Tensor, optimizer, scaler) -> None:
    """One backward and Adam step, through the fp16 grad scaler when there is one."""
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        optimizer.step()


def resolve_precision(generator: StyleGAN2Generator, precision: str, device: torch.device) -> torch.dtype:
    """fp32 (the official force_fp32=True), or the half type the generator's file policy allows on `device`."""
    return generator.PRECISION.resolve(precision, device, has_native_bf16(device))


def _check_inputs(generator, pivots, targets, where="pivotal_tune"):
    n_latent, style_dim, size = generator.n_latent, generator.style_dim, generator.config.size
    if pivots.ndim != 3 or pivots.shape[1:] != (n_latent, style_dim):
        raise ValueError(f"{where}: pivots must be W+ latents [N, {n_latent}, {style_dim}] of this generator, "
                         f"got {tuple(pivots.shape)}; invert the images with an encoder for this generator first")
    if targets.ndim != 4 or targets.shape[1:] != (3, size, size):
        raise ValueError(f"{where}: targets must be RGB images [N, 3, {size}, {size}] (the generator's size), got "
                         f"{tuple(targets.shape)}; align/resize the crops to {size} px")
    if targets.shape[0] != pivots.shape[0]:
        raise ValueError(f"{where}: {pivots.shape[0]} pivots for {targets.shape[0]} targets; give one latent "
                         f"per image")


class LocalityRegularizer:
    """The locality regulariser's samples: z from numpy's legacy RNG, all of the run's draws at once on the host
    (the official code draws one per regularised step; a RandomState continues one normal stream across calls,
    so the values are the same), moved to the device a chunk at a time and mapped there by the original
    generator with truncation."""

    def __init__(self, original: StyleGAN2Generator, w_avg: torch.Tensor, config: TuningConfig, seed: int,
                 device: torch.device, draws: int):
        self.original, self.config, self.device = original, config, device
        s = config.regularizer_samples
        z = np.random.RandomState(seed).randn(draws * s, original.config.input_dim)
        self.z = torch.from_numpy(z).float()  # host; 2 KiB a step for 512-d z
        self.taken = 0
        self.w_avg = w_avg.reshape(1, -1).to(device, torch.float32)

    def draw(self, count: int) -> torch.Tensor:
        """W of the next `count` regularised steps, [count, samples, style_dim] on the device."""
        s = self.config.regularizer_samples
        z = self.z[self.taken * s:(self.taken + count) * s].to(self.device, non_blocking=True)
        if z.shape[0] != count * s:
            raise RuntimeError("locality regulariser: more draws asked for than the run has steps")
        self.taken += count
        with torch.no_grad():
            w = self.original.mapping(z)
            w = self.w_avg + self.config.regularizer_truncation * (w - self.w_avg)
        return w.reshape(count, s, -1)

    def morph(self, w: torch.Tensor, pivot: torch.Tensor) -> torch.Tensor:
        """Each sample's W+ [s, L, D]: the pivot [1, L, D] moved alpha along the unit direction to the sample."""
        direction = w[:, None, :] - pivot  # [s, L, D]
        norm = direction.flatten(1).norm(dim=1).reshape(-1, 1, 1)
        return pivot + self.config.regularizer_alpha * direction / norm


def _noise_pivot_then_none(generator: StyleGAN2Generator, extra: int) -> list[torch.Tensor]:
    """Per-sample noise for one batched synthesis: the constant buffers for sample 0 (noise_mode 'const'), zero
    for the `extra` regulariser samples (noise_mode 'none': x + strength * 0 is x)."""
    out = []
    for i in range(generator.config.num_noises):
        buf = generator.noises[i]
        out.append(torch.cat([buf, buf.new_zeros((extra,) + tuple(buf.shape[1:]))]))
    return out


@_with_grad
def pivotal_tune(generator: StyleGAN2Generator, pivots: torch.Tensor, targets: torch.Tensor,
                 perceptual: Perceptual, config: TuningConfig = PTI_PRESET, *, device, seed: int = 0,
                 w_avg: Optional[torch.Tensor] = None, precision: str = "fp32",
                 on_step: Optional[StepCallback] = None, should_cancel: Optional[CancelCheck] = None
                 ) -> TuningResult:
    """Tune a copy of `generator` so that it renders `pivots` [N, L, D] as `targets` [N, 3, H, W] in [-1, 1].

    targets may stay on the CPU (they move to `device` `config.chunk_frames` at a time). w_avg: the W mean the
    regulariser truncates towards (the file's latent_avg; needed when config.locality_regularization).
    precision: "fp32" (the official force_fp32) or "auto"/"bf16"/"fp16" as the generator's file policy allows.
    on_step(step, total, preview) and should_cancel() run every config.poll_every steps (the only host syncs).
    """
    device = torch.device(device)
    _check_inputs(generator, pivots, targets)
    if config.locality_regularization and w_avg is None:
        raise ValueError("pivotal_tune: locality regularisation needs w_avg (the generator file's latent_avg)")
    n_frames = pivots.shape[0]
    total = config.steps * n_frames
    early = config.early_stop_lpips is not None and n_frames == 1
    dtype = resolve_precision(generator, precision, device)
    half = dtype if dtype != torch.float32 else None

    original = frozen_on(generator, device)
    tuned = tunable_copy(generator, device)
    params = synthesis_parameters(tuned)
    optimizer, lr_tensor = make_adam(params, config.lr, config.betas, device, tensor_lr=early)
    sync_each_step = early and lr_tensor is None  # no fused kernel here: the official check, one sync per step
    scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None
    regularised_steps = len(range(0, total, config.regularizer_interval))  # t % interval == 0
    reg = (LocalityRegularizer(original, w_avg, config, seed, device, regularised_steps)
           if config.locality_regularization else None)
    n_reg = config.regularizer_samples
    batched_noise = _noise_pivot_then_none(tuned, n_reg) if reg is not None else None
    losses = torch.zeros(total, 3, device=device)
    stopped = torch.zeros((), dtype=torch.bool, device=device)
    threshold = float(config.early_stop_lpips) if early else 0.0
    chunk = config.chunk_frames
    t = 0
    ran = total
    for epoch in range(config.steps):
        for start in range(0, n_frames, chunk):
            stop = min(start + chunk, n_frames)
            target_chunk = targets[start:stop].to(device, torch.float32, non_blocking=True).clone()
            pivot_chunk = pivots[start:stop].to(device, torch.float32, non_blocking=True).clone()
            reg_iters = [t + k for k in range(stop - start) if (t + k) % config.regularizer_interval == 0]
            reg_w = reg.draw(len(reg_iters)) if reg is not None and reg_iters else None
            reg_row = {it: r for r, it in enumerate(reg_iters)}
            for k in range(stop - start):
                pivot, target = pivot_chunk[k:k + 1], target_chunk[k:k + 1]
                use_reg = reg_w is not None and t in reg_row
                # synthesis runs its own per-block autocast for a half dtype; the losses are fp32
                if use_reg:
                    ws = torch.cat([pivot, reg.morph(reg_w[reg_row[t]], pivot)])
                    images = tuned.synthesis(ws, noise=batched_noise, dtype=half).float()
                    with torch.no_grad():
                        old = original.synthesis(ws[1:], noise_mode="none", dtype=half).float()
                    # one perceptual call: (generated, target) and, per sample, (old, new) as the official
                    distances = perceptual(torch.cat([images[:1], old]), torch.cat([target, images[1:]]))
                else:
                    images = tuned.synthesis(pivot, noise_mode="const", dtype=half).float()
                    distances = perceptual(images, target)
                distances = distances.float().reshape(-1)
                l2 = F.mse_loss(images[:1], target)
                lpips = distances[0]
                loss = config.l2_weight * l2 + config.lpips_weight * lpips
                if use_reg:
                    reg_l2 = (old - images[1:]).square().mean((1, 2, 3))
                    reg_loss = (config.regularizer_l2_weight * reg_l2
                                + config.regularizer_lpips_weight * distances[1:]).sum() / n_reg
                    loss = loss + reg_loss
                losses[t] = torch.stack([l2.detach(), lpips.detach(), loss.detach()])
                if early:
                    # PTI checks before stepping: once LPIPS is at the threshold no step changes the weights
                    stopped |= lpips.detach() <= threshold
                    if lr_tensor is not None:
                        lr_tensor.copy_(torch.where(stopped, 0.0, config.lr))
                    elif bool(stopped):
                        ran = t
                        break
                optimizer_step(loss, optimizer, scaler)
                t += 1
                if t % config.poll_every == 0 or t == total:
                    if on_step is not None:
                        on_step(t, total, images[:1].detach())
                    if should_cancel is not None and should_cancel():
                        raise TuningCancelled("pivotal tuning cancelled")
                    if early and not sync_each_step and bool(stopped):  # the one host read per poll
                        ran = -1
                        break
            if ran != total:
                break
        if ran != total:
            break
    del optimizer, scaler
    losses = losses.cpu()
    if early and ran != total:
        hit = (losses[:, 1] <= threshold).nonzero()
        ran = int(hit[0, 0]) if len(hit) else t
    stopped_early = ran < total
    tuned.requires_grad_(False)
    return TuningResult(generator=tuned, losses=losses[:ran], steps_run=ran, stopped_early=stopped_early)


# --------------------------------------------------------------------------------------- stitching tuning
def dilate(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """Grey dilation by a (2r+1)² square, pixels outside the image ignored: STIT's utils/morphology `dilation`
    with a ones kernel (geodesic border), as max pooling (separable: rows, then columns)."""
    if radius <= 0:
        return mask
    k = 2 * radius + 1
    out = F.max_pool2d(mask, (k, 1), stride=1, padding=(radius, 0))
    return F.max_pool2d(out, (1, k), stride=1, padding=(0, radius))


def stitching_masks(face_mask: torch.Tensor, border_pixels: int, inner_dilation: int = 0, outer_dilation: int = 50,
                    whole_image_border: bool = False, crop_size: Optional[int] = None
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(content, border, full) masks [N, 1, crop, crop] from a face-region mask [N, 1, h, w] in [0, 1], as STIT's
    calc_masks/create_masks: pixel arguments are in crop pixels (STIT: outer 50, border = outer, on 1024 px
    crops) and scale to the mask's resolution (h / crop, STIT's // 2 at 512); the masks are then resized to the
    crop (bilinear, align_corners). crop_size None: the mask's own size."""
    if face_mask.ndim != 4 or face_mask.shape[1] != 1 or face_mask.shape[2] != face_mask.shape[3]:
        raise ValueError(f"stitching_masks: face_mask must be a square mask [N, 1, H, H], got "
                         f"{tuple(face_mask.shape)}")
    if min(border_pixels, inner_dilation, outer_dilation) < 0:
        raise ValueError("stitching_masks: border_pixels and the dilations must be >= 0")
    mask = face_mask.float()
    size = mask.shape[2]
    crop = crop_size or size
    border_px, inner, outer = (v * size // crop for v in (border_pixels, inner_dilation, outer_dilation))
    idx = torch.arange(size, device=mask.device)
    edge = (idx < border_px) | (idx >= size - border_px)
    image_border = (edge[:, None] | edge[None, :]).to(mask.dtype)[None, None].expand_as(mask)
    grown = dilate(mask, inner)
    border = torch.minimum(image_border, grown)
    full = dilate(grown, outer)
    ring = (1 - grown) if whole_image_border else (full - grown)
    border = torch.maximum(border, ring).clamp(0, 1)
    content = (mask - border).clamp(0, 1)
    if crop != size:
        content, border, full = (F.interpolate(m, (crop, crop), mode="bilinear", align_corners=True)
                                 for m in (content, border, full))
    return content, border, full


def masked_error(x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor, l2: bool = True) -> torch.Tensor:
    """STIT's masked_l2: squared (or absolute) error of the masked images, summed, over the mask's sum (an empty
    mask gives 0, where the official divides by zero)."""
    diff = x * mask - y * mask
    error = diff.square() if l2 else diff.abs()
    return error.sum() / mask.sum().clamp_min(1e-8)


def _frame_mask(mask: torch.Tensor, i: int, device) -> torch.Tensor:
    m = mask[i:i + 1] if mask.shape[0] > 1 else mask[:1]
    return m.to(device, torch.float32).clone()


@_with_grad
def stitch_tune(generator: StyleGAN2Generator, edited_latents: torch.Tensor, original_crops: torch.Tensor,
                border_mask: torch.Tensor, content_mask: torch.Tensor, *, steps: int = 100, lr: float = 3e-4,
                content_weight: float = 0.01, l2: bool = True, border_threshold: float = 0.0, device,
                precision: str = "fp32", poll_every: int = 10, on_step: Optional[StepCallback] = None,
                should_cancel: Optional[CancelCheck] = None) -> torch.Tensor:
    """STIT's optimize_border per frame: from a fresh copy of `generator`, `steps` Adam steps so that the render
    of the edited latent matches the original crop in `border_mask` and the untuned edit in `content_mask`
    (weight `content_weight`); stops before a step once the border loss < border_threshold (0: never).
    Masks [N or 1, 1, H, W]. Returns the tuned renders [N, 3, H, W] on the CPU (frames stream in and out)."""
    device = torch.device(device)
    _check_inputs(generator, edited_latents, original_crops, "stitch_tune")
    n, size = edited_latents.shape[0], generator.config.size
    for name, m in (("border_mask", border_mask), ("content_mask", content_mask)):
        if m.ndim != 4 or m.shape[1] != 1 or m.shape[2:] != (size, size) or m.shape[0] not in (1, n):
            raise ValueError(f"stitch_tune: {name} must be [N or 1, 1, {size}, {size}], got {tuple(m.shape)}; "
                             f"build it with stitching_masks(..., crop_size={size})")
    dtype = resolve_precision(generator, precision, device)
    half = dtype if dtype != torch.float32 else None
    base = frozen_on(generator, device)
    work = tunable_copy(generator, device)
    start_state = [p.detach().clone() for p in synthesis_parameters(work)]
    early = border_threshold > 0
    outputs = []
    total = n * steps
    for i in range(n):
        with torch.no_grad():  # the fresh copy: the base weights back, a new optimiser
            for p, p0 in zip(synthesis_parameters(work), start_state):
                p.copy_(p0)
        optimizer, lr_tensor = make_adam(synthesis_parameters(work), lr, (0.9, 0.999), device, tensor_lr=early)
        scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None
        w = edited_latents[i:i + 1].to(device, torch.float32).clone()
        crop = original_crops[i:i + 1].to(device, torch.float32).clone()
        bmask, cmask = _frame_mask(border_mask, i, device), _frame_mask(content_mask, i, device)
        with torch.no_grad():
            content = base.synthesis(w, noise_mode="const", dtype=half).float()
        stopped = torch.zeros((), dtype=torch.bool, device=device)
        for step in range(steps):
            image = work.synthesis(w, noise_mode="const", dtype=half).float()
            border_loss = masked_error(image, crop, bmask, l2)
            loss = border_loss + content_weight * masked_error(image, content, cmask, l2)
            if early:
                stopped |= border_loss.detach() < border_threshold
                if lr_tensor is not None:
                    lr_tensor.copy_(torch.where(stopped, 0.0, lr))
                elif bool(stopped):
                    break
            optimizer_step(loss, optimizer, scaler)
            done = i * steps + step + 1
            if done % poll_every == 0:
                if on_step is not None:
                    on_step(done, total, image.detach())
                if should_cancel is not None and should_cancel():
                    raise TuningCancelled("stitching tuning cancelled")
                if early and lr_tensor is not None and bool(stopped):
                    break
        with torch.no_grad():
            outputs.append(work.synthesis(w, noise_mode="const", dtype=half).float().cpu())
        del optimizer
    if on_step is not None:
        on_step(total, total, None)
    return torch.cat(outputs) if outputs else original_crops.new_zeros((0, 3, size, size))


# --------------------------------------------------------------------------------------- tuning deltas
@dataclass
class TuningDelta:
    tensors: dict[str, torch.Tensor]  # state-dict key -> tuned minus base (only the tensors that changed)
    base_file: str  # the base generator file's name (looked up in the delta's folder)
    base_sha256: str
    config: dict = field(default_factory=dict)  # the base generator's StyleGAN2Config
    metadata: dict = field(default_factory=dict)


def file_sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save_tuning_delta(tuned: StyleGAN2Generator, base: StyleGAN2Generator, path, base_sha256: str,
                      base_file: str, overwrite: bool = False, extra_metadata: Optional[dict] = None) -> Path:
    """Write tuned-minus-base for the tensors that changed (safetensors, atomic), naming the base file and its
    sha256 so that the loader can find and check it."""
    from safetensors.torch import save_file

    if tuned.config != base.config:
        raise ValueError("save_tuning_delta: the tuned generator's layout differs from the base's")
    base_sd = base.state_dict()
    tensors = {}
    for key, value in tuned.state_dict().items():
        ref = base_sd[key].detach().to("cpu", torch.float32)
        value = value.detach().to("cpu", torch.float32)
        if not torch.equal(value, ref):
            tensors[key] = (value - ref).contiguous()
    metadata = {TRANSEDIT_FORMAT_KEY: DELTA_FORMAT, "format_version": DELTA_VERSION,
                "base_file": os.path.basename(str(base_file)), "base_sha256": str(base_sha256),
                "config": json.dumps(base.config.to_dict())}
    metadata.update({str(k): str(v) for k, v in (extra_metadata or {}).items()})
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata), overwrite)


def is_tuning_delta_metadata(metadata: dict) -> bool:
    return (metadata or {}).get(TRANSEDIT_FORMAT_KEY) == DELTA_FORMAT


MAX_SAFETENSORS_HEADER = 100 * 2**20  # a delta's header is a few KB; a larger claim is not one


def is_tuning_delta_file(path) -> bool:
    """Whether `path` is a tuning delta, from the safetensors header alone (no tensors read)."""
    path = Path(path)
    if path.suffix.lower() != ".safetensors" or not path.is_file():
        return False
    # the safetensors layout: an 8-byte little-endian header length, then the JSON header with "__metadata__"
    try:
        with open(path, "rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            if length > MAX_SAFETENSORS_HEADER:
                return False
            header = json.loads(f.read(length).decode("utf-8"))
    except (OSError, ValueError, struct.error):  # not readable as safetensors: the normal loader reports it
        return False
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    return isinstance(metadata, dict) and is_tuning_delta_metadata(metadata)


def delta_base_path(delta_path, delta: TuningDelta) -> Path:
    """The base generator a delta names, in the delta's folder, checked against the sha256 it recorded."""
    delta_path = Path(delta_path)
    name = str(delta.base_file)
    parts = name.replace("\\", "/").split("/")
    # a plain name (or subfolder/name) beside the delta: an absolute path or '..' would let a file in the model
    # folder pull weights from anywhere on the disk
    folder = os.path.abspath(delta_path.parent)
    base = Path(os.path.normpath(os.path.join(folder, *parts)))
    if (os.path.isabs(name) or os.path.splitdrive(name)[0] or any(p in ("", ".", "..") for p in parts)
            or os.path.commonpath([folder, str(base)]) != folder):
        raise CheckpointError(delta_path, f"names its base generator as {name!r}, a path that leaves the delta's "
                              "folder; a delta's base must be a file name in the same folder.",
                              "Save the tuned generator again with 'TransEdit Save Tuned StyleGAN'.")
    if not base.is_file():
        raise CheckpointError(delta_path, f"is a tuning delta of {delta.base_file}, which is not in the same "
                              f"folder ({delta_path.parent}).",
                              f"Put {delta.base_file} (the generator the tuning started from) beside it.")
    digest = file_sha256(base)
    if digest != delta.base_sha256:
        raise CheckpointError(delta_path, f"was made from a different {delta.base_file} (sha256 "
                              f"{delta.base_sha256[:12]}..., the file beside it has {digest[:12]}...).",
                              f"Put the exact {delta.base_file} the tuning started from beside it.")
    if is_tuning_delta_file(base):  # deltas chain only through full generator files
        raise CheckpointError(delta_path, f"names {delta.base_file} as its base, which is itself a tuning delta.",
                              "Save tuning deltas against a full generator file.")
    return base


def tuned_fingerprint(base_fingerprint: str, tuned: StyleGAN2Generator) -> str:
    """A fingerprint for tuned weights: the base's and a digest of every parameter's sum (cheap, content-bound),
    so caches keyed by generator never take the tuned generator for its base."""
    h = hashlib.sha1(base_fingerprint.encode())
    sums = torch.stack([p.detach().double().sum() for p in tuned.parameters()]).cpu()
    h.update(sums.numpy().tobytes())
    return h.hexdigest()[:16]


def tuned_descriptor(base_desc, tuned: StyleGAN2Generator, source: Optional[str] = None, note: str = ""):
    """The base's StyleGAN2Descriptor with `tuned` as its model (same W space and latent_avg), a fingerprint of
    its own, `source` (e.g. the delta file) and a note saying what was tuned."""
    notes = list(getattr(base_desc, "notes", []) or []) + ([note] if note else [])
    return replace(base_desc, model=tuned, fingerprint=tuned_fingerprint(base_desc.fingerprint, tuned),
                   source=str(source or base_desc.source), notes=notes)


def read_tuning_delta(path) -> TuningDelta:
    tensors, metadata = read_safetensors(Path(path))
    if not is_tuning_delta_metadata(metadata):
        raise CheckpointError(path, "is not a TransEdit tuning delta (no 'stylegan2_tuning_delta' format tag).",
                              "Save one with 'TransEdit Save Tuned StyleGAN'.")
    if metadata.get("format_version") != DELTA_VERSION:
        raise CheckpointError(path, f"is a tuning delta of format version {metadata.get('format_version')!r}; "
                              f"this TransEdit reads version {DELTA_VERSION}.", "Update TransEdit.")
    for key in ("base_file", "base_sha256"):
        if not metadata.get(key):
            raise CheckpointError(path, f"is a tuning delta without '{key}' in its metadata; it cannot name "
                                  "its base generator.", "Save the tuned generator again.")
    try:
        config = json.loads(metadata.get("config") or "{}")
    except json.JSONDecodeError:
        raise CheckpointError(path, "has an unreadable 'config' entry in its metadata.") from None
    for key, value in tensors.items():  # a NaN or integer delta would load and render garbage without a word
        if not value.is_floating_point():
            raise CheckpointError(path, f"holds {key} as {str(value.dtype).replace('torch.', '')}; a tuning delta "
                                  "holds floating-point differences.", "Save the tuned generator again.")
        if not bool(torch.isfinite(value).all()):
            raise CheckpointError(path, f"holds NaN or infinite values in {key}.",
                                  "Save the tuned generator again (the tuning may have diverged: lower its "
                                  "learning rate).")
    return TuningDelta(tensors=tensors, base_file=metadata["base_file"], base_sha256=metadata["base_sha256"],
                       config=config, metadata=dict(metadata))


def apply_tuning_delta(base_generator: StyleGAN2Generator, delta: TuningDelta, strength: float = 1.0
                       ) -> StyleGAN2Generator:
    """A new generator: base + strength * delta (the base is untouched). Errors name the mismatch."""
    sd = base_generator.state_dict()
    unknown = [k for k in delta.tensors if k not in sd]
    if unknown:
        raise ValueError(f"tuning delta for {delta.base_file}: keys {unknown[:3]} are not in this generator; "
                         f"load the delta with its own base file")
    out = {}
    for key, value in sd.items():
        value = value.detach().clone()
        if key in delta.tensors:
            d = delta.tensors[key]
            if d.shape != value.shape:
                raise ValueError(f"tuning delta for {delta.base_file}: {key} has shape {tuple(d.shape)}, the "
                                 f"generator's is {tuple(value.shape)}; load the delta with its own base file")
            if not d.is_floating_point() or not bool(torch.isfinite(d).all()):
                raise ValueError(f"tuning delta for {delta.base_file}: {key} is not finite floating point "
                                 f"({d.dtype}); save the tuned generator again")
            value = value + strength * d.to(value.device, value.dtype)
            if not bool(torch.isfinite(value).all()):  # finite but huge: the sum overflows
                raise ValueError(f"tuning delta for {delta.base_file}: {key} overflows when added to the base; "
                                 "save the tuned generator again")
        out[key] = value
    gen = StyleGAN2Generator(base_generator.config)
    gen.load_state_dict(out)
    return gen.to(next(base_generator.parameters()).device).eval().requires_grad_(False)
