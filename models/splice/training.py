"""Splice (Tumanyan et al., CVPR 2022): structure of image A, appearance of image B, by training a small
generator per image pair against DINO-ViT losses.

- :class:`SkipGenerator` — the official generator (a Deep-Image-Prior "skip" network: five stride-2 levels,
  1x1 skip branches, bilinear upsampling, BatchNorm that always uses the batch's statistics, sigmoid
  output), with the official state-dict key names (``1.0.1.0.weight``, ..., ``9.0.weight``).
- :class:`SpliceLoss` — the official loss and its schedule: structure (self-similarity of the last layer's
  keys), appearance ([CLS] before the final norm), identity (keys of G(B) vs B), the whole image every
  ``entire_every`` steps, appearance only at the first step.
- :class:`SpliceAugment` — the official data pipeline (square crops covering >= 95 % of the height, flips,
  colour jitter and blur on A) with every random draw made on a seeded CPU generator, so a run is
  reproducible on any device and needs no host<->device synchronisation.
- :class:`SpliceTrainer` — the optimisation loop (Adam lr 2e-3, betas (0, 0.99), constant lr) with a step
  API the ComfyUI node drives (progress, preview, cancel) and optional early stopping on a plateau.

Images are float [B, 3, H, W] in [0, 1] throughout.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..core.devices import host_side
from .dino import DinoFeatures, DinoViT, preprocess, self_similarity


# ------------------------------------------------------------------------------------------ generator
@dataclass
class SkipConfig:
    in_channels: int = 3
    out_channels: int = 3
    channels_down: Sequence[int] = (16, 32, 64, 128, 128)
    channels_up: Sequence[int] = (16, 32, 64, 128, 128)
    channels_skip: Sequence[int] = (4, 4, 4, 4, 4)
    kernel_down: int = 3
    kernel_up: int = 3
    kernel_skip: int = 1
    upsample_mode: str = "bilinear"

    def __post_init__(self):
        self.channels_down = tuple(int(c) for c in self.channels_down)
        self.channels_up = tuple(int(c) for c in self.channels_up)
        self.channels_skip = tuple(int(c) for c in self.channels_skip)
        if not len(self.channels_down) == len(self.channels_up) == len(self.channels_skip):
            raise ValueError("channels_down, channels_up and channels_skip need one entry per level")

    def to_dict(self) -> dict:
        d = asdict(self)
        for k in ("channels_down", "channels_up", "channels_skip"):
            d[k] = list(d[k])
        return d


class _Numbered(nn.Sequential):
    """nn.Sequential whose children are named "1", "2", ... (the official code's ``Module.add`` naming)."""

    def add(self, module: nn.Module) -> "_Numbered":
        self.add_module(str(len(self) + 1), module)
        return self


class BatchStatNorm(nn.BatchNorm2d):
    """BatchNorm2d that always normalises with the current batch's statistics, as Splice does (its
    generator is never put in eval mode). Running statistics are still updated like PyTorch's."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.num_batches_tracked is not None and not torch.is_inference_mode_enabled():
            self.num_batches_tracked.add_(1)
        track = self.running_mean if not torch.is_inference_mode_enabled() else None
        return F.batch_norm(x, track, None if track is None else self.running_var, self.weight, self.bias,
                            True, self.momentum, self.eps)


class _Concat(nn.Module):
    """Concatenate the children's outputs on channels, centre-cropping them to the smallest size."""

    def __init__(self, *branches: nn.Module):
        super().__init__()
        for i, b in enumerate(branches):
            self.add_module(str(i), b)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [m(x) for m in self.children()]
        h = min(o.shape[-2] for o in outs)
        w = min(o.shape[-1] for o in outs)
        cropped = []
        for o in outs:
            dh, dw = (o.shape[-2] - h) // 2, (o.shape[-1] - w) // 2
            cropped.append(o[..., dh:dh + h, dw:dw + w])
        return torch.cat(cropped, dim=1)


def _conv(cin: int, cout: int, k: int, stride: int = 1) -> nn.Sequential:
    # the official conv() wraps the Conv2d in a Sequential (room for padders/downsamplers): key "<i>.0.weight"
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, padding=(k - 1) // 2, bias=True))


def _act() -> nn.Module:
    return nn.LeakyReLU(0.2, inplace=True)


class SkipGenerator(nn.Module):
    """Image [B, 3, H, W] in [0, 1] -> image [B, 3, H, W] in (0, 1). Any H, W (>= 1)."""

    def __init__(self, config: Optional[SkipConfig] = None):
        super().__init__()
        self.config = cfg = config or SkipConfig()
        levels = len(cfg.channels_down)
        net = _Numbered()
        current, depth_in = net, cfg.in_channels
        for i in range(levels):
            deeper, skip = _Numbered(), _Numbered()
            has_skip = cfg.channels_skip[i] > 0
            current.add(_Concat(skip, deeper) if has_skip else deeper)
            below = cfg.channels_up[i + 1] if i < levels - 1 else cfg.channels_down[i]
            current.add(BatchStatNorm(cfg.channels_skip[i] + below))
            if has_skip:
                skip.add(_conv(depth_in, cfg.channels_skip[i], cfg.kernel_skip))
                skip.add(BatchStatNorm(cfg.channels_skip[i]))
                skip.add(_act())
            deeper.add(_conv(depth_in, cfg.channels_down[i], cfg.kernel_down, stride=2))
            deeper.add(BatchStatNorm(cfg.channels_down[i]))
            deeper.add(_act())
            deeper.add(_conv(cfg.channels_down[i], cfg.channels_down[i], cfg.kernel_down))
            deeper.add(BatchStatNorm(cfg.channels_down[i]))
            deeper.add(_act())
            deeper_main = _Numbered()
            if i < levels - 1:
                deeper.add(deeper_main)
            deeper.add(nn.Upsample(scale_factor=2, mode=cfg.upsample_mode))
            current.add(_conv(cfg.channels_skip[i] + below, cfg.channels_up[i], cfg.kernel_up))
            current.add(BatchStatNorm(cfg.channels_up[i]))
            current.add(_act())
            current.add(_conv(cfg.channels_up[i], cfg.channels_up[i], 1))  # the official need1x1_up
            current.add(BatchStatNorm(cfg.channels_up[i]))
            current.add(_act())
            depth_in, current = cfg.channels_down[i], deeper_main
        net.add(_conv(cfg.channels_up[0], cfg.out_channels, 1))
        net.add(nn.Sigmoid())
        self.net = net

    # The official state dict has no "net." prefix.
    def state_dict(self, *args, **kwargs):
        return self.net.state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        return self.net.load_state_dict(state_dict, strict=strict, assign=assign)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def reset_parameters(self, generator: Optional[torch.Generator] = None, gain: float = 0.02) -> "SkipGenerator":
        """The official ``init_weights('xavier', 0.02)``: xavier-normal convs, zero biases, BN weight N(1, 0.02)."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_in = m.in_channels * m.kernel_size[0] * m.kernel_size[1]
                fan_out = m.out_channels * m.kernel_size[0] * m.kernel_size[1]
                std = gain * math.sqrt(2.0 / (fan_in + fan_out))
                with torch.no_grad():
                    m.weight.copy_(torch.randn(m.weight.shape, generator=generator) * std)
                    m.bias.zero_()
            elif isinstance(m, nn.BatchNorm2d):
                with torch.no_grad():
                    m.weight.copy_(1.0 + 0.02 * torch.randn(m.weight.shape, generator=generator))
                    m.bias.zero_()
                m.reset_running_stats()
        return self


def apply_generator(gen: SkipGenerator, images: torch.Tensor) -> torch.Tensor:
    """Run G on each image as its own batch (the official per-call BatchNorm statistics)."""
    return torch.cat([gen(images[i:i + 1]) for i in range(images.shape[0])], dim=0)


# ------------------------------------------------------------------------------------------------ loss
@dataclass
class SpliceLambdas:
    """The official ``conf/default/config.yaml`` weights and schedule."""

    global_cls: float = 10.0
    global_ssim: float = 1.0
    global_identity: float = 1.0
    entire_cls: float = 10.0
    entire_ssim: float = 1.0
    entire_every: int = 75
    cls_warmup: int = 1

    def to_dict(self) -> dict:
        return asdict(self)


class SpliceLoss:
    """Splice's ``LossG``: features of the generator outputs vs the (no-grad) targets.

    `dino` sees every image through :func:`preprocess` (short side `size`, the official config's
    dino_global_patch_size, 224; long side <= 480).
    """

    def __init__(self, dino: DinoViT, lambdas: Optional[SpliceLambdas] = None, antialias: bool = True,
                 size: int = 224):
        self.dino, self.lambdas, self.antialias, self.size = dino, lambdas or SpliceLambdas(), antialias, size

    def features(self, images: torch.Tensor) -> DinoFeatures:
        """[B, 3, H, W] in [0, 1] (one size) -> DINO features; batch of any size."""
        return self.dino(preprocess(images, size=self.size, antialias=self.antialias))

    def features_of(self, images: Sequence[torch.Tensor]) -> list[DinoFeatures]:
        """Several [1, 3, h, w] images -> their features, one DINO call per distinct input size (square
        crops all become size x size, so a step's crops share one batched call)."""
        inputs = [preprocess(x, size=self.size, antialias=self.antialias) for x in images]
        groups: dict[tuple, list[int]] = {}
        for i, x in enumerate(inputs):
            groups.setdefault(tuple(x.shape[-2:]), []).append(i)
        out: list[Optional[DinoFeatures]] = [None] * len(inputs)
        for idx in groups.values():
            f = self.dino(torch.cat([inputs[i] for i in idx], dim=0))
            for j, i in enumerate(idx):
                out[i] = DinoFeatures(keys=f.keys[j:j + 1], cls=f.cls[j:j + 1])
        return out

    def active(self, step: int) -> dict[str, float]:
        """The lambdas in effect at `step` (0 where a term is off)."""
        lam = self.lambdas
        warm = step >= lam.cls_warmup
        entire = lam.entire_every > 0 and step % lam.entire_every == 0
        return {"global_cls": lam.global_cls, "global_ssim": lam.global_ssim if warm else 0.0,
                "global_identity": lam.global_identity if warm else 0.0,
                "entire_cls": lam.entire_cls if entire else 0.0, "entire_ssim": lam.entire_ssim if entire else 0.0}

    @staticmethod
    def terms(out: dict[str, DinoFeatures], target: dict[str, DinoFeatures], lambdas: dict[str, float],
              entire_ssim_target: Optional[torch.Tensor] = None) -> dict[str, torch.Tensor]:
        """Loss terms (unweighted) for the active lambdas.

        out: "x_global" (G(A crop)), "y_global" (G(B crop)), "x_entire" (G(A)) as needed;
        target: "A_global", "B_global", and "A_entire" (or its self-similarity as entire_ssim_target).
        """
        t: dict[str, torch.Tensor] = {}
        if lambdas["global_ssim"]:
            t["global_ssim"] = F.mse_loss(self_similarity(out["x_global"].keys),
                                          self_similarity(target["A_global"].keys))
        if lambdas["global_cls"]:
            t["global_cls"] = F.mse_loss(out["x_global"].cls.float(), target["B_global"].cls.float())
        if lambdas["global_identity"]:
            t["global_identity"] = F.mse_loss(out["y_global"].keys.float(), target["B_global"].keys.float())
        if lambdas["entire_ssim"]:
            ref = entire_ssim_target if entire_ssim_target is not None else self_similarity(target["A_entire"].keys)
            t["entire_ssim"] = F.mse_loss(self_similarity(out["x_entire"].keys), ref)
        if lambdas["entire_cls"]:
            t["entire_cls"] = F.mse_loss(out["x_entire"].cls.float(), target["B_global"].cls.float())
        return t

    @staticmethod
    def total(terms: dict[str, torch.Tensor], lambdas: dict[str, float]) -> torch.Tensor:
        return sum(lambdas[k] * v for k, v in terms.items())


# ---------------------------------------------------------------------------------------- augmentation
def _grayscale(x: torch.Tensor) -> torch.Tensor:
    return (0.2989 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])


def _adjust_hue(x: torch.Tensor, shift: float) -> torch.Tensor:
    import kornia

    hsv = kornia.color.rgb_to_hsv(x)  # hue in [0, 2*pi)
    hue = torch.remainder(hsv[:, 0:1] + shift * 2 * math.pi, 2 * math.pi)
    return kornia.color.hsv_to_rgb(torch.cat([hue, hsv[:, 1:]], dim=1)).clamp(0, 1)


def color_jitter(x: torch.Tensor, factors: dict[str, float], order: Sequence[str]) -> torch.Tensor:
    """torchvision ColorJitter's operations (same definitions) applied in the given order."""
    for op in order:
        f = factors[op]
        if op == "brightness":
            x = (x * f).clamp(0, 1)
        elif op == "contrast":
            mean = _grayscale(x).mean(dim=(1, 2, 3), keepdim=True)
            x = (f * x + (1 - f) * mean).clamp(0, 1)
        elif op == "saturation":
            x = (f * x + (1 - f) * _grayscale(x)).clamp(0, 1)
        elif op == "hue":
            x = _adjust_hue(x, f)
    return x


def gaussian_blur3(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """torchvision GaussianBlur(3) with a given sigma (reflect padding)."""
    # built on x's device from a Python float: no host-to-device copy inside the training step
    k = torch.exp(-(torch.arange(3, dtype=torch.float32, device=x.device) - 1) ** 2 / (2 * sigma ** 2))
    k = (k / k.sum()).to(x.dtype)
    c = x.shape[1]
    x = F.pad(x, (1, 1, 1, 1), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, 3).expand(c, 1, 1, 3), groups=c)
    return F.conv2d(x, k.view(1, 1, 3, 1).expand(c, 1, 3, 1), groups=c)


@dataclass
class CropDraw:
    top: int
    left: int
    side: int
    flip: bool


@dataclass
class StructureDraw:
    """One step's draws for the structure image A, in the official order of application."""

    flip: bool
    jitter: Optional[dict]  # ColorJitter factors per operation, or None when RandomApply(p=0.5) skipped it
    jitter_order: tuple  # the order ColorJitter applies its operations in (a random permutation)
    blur_sigma: Optional[float]  # GaussianBlur(3) sigma, or None when RandomApply(p=0.2) skipped it
    crop: CropDraw  # the square crop, taken last (crop.flip is False: the flip is above)


class SpliceAugment:
    """The official per-step data (omerbt/Splice data/Dataset.py + data/transforms.py): A goes through
    `dino_structure_transforms` — flip, colour jitter, blur, on the *whole* image — and then Global_crops'
    square crop; B is flipped and cropped. Draws are made on a seeded CPU generator, so a run is repeatable.
    (Jitter before the crop matters: contrast blends with the whole image's mean grey, and the blur's reflect
    padding sits at the image border, not the crop's.)"""

    def __init__(self, seed: int, min_cover: float = 0.95, jitter=(0.4, 0.4, 0.2, 0.1), jitter_p: float = 0.5,
                 blur_p: float = 0.2, blur_sigma=(0.1, 2.0)):
        self.rng = torch.Generator().manual_seed(int(seed))
        self.min_cover, self.jitter, self.jitter_p = min_cover, jitter, jitter_p
        self.blur_p, self.blur_sigma = blur_p, blur_sigma

    @host_side
    def _uniform(self, lo: float, hi: float) -> float:
        return lo + (hi - lo) * torch.rand((), generator=self.rng).item()

    @host_side
    def _coin(self, p: float) -> bool:
        return torch.rand((), generator=self.rng).item() < p

    @host_side  # draws on the seeded CPU generator: a seed gives the same run on any device
    def draw_crop(self, height: int, width: int, flip: bool = True) -> CropDraw:
        """Global_crops: side ~ U(min_cover*h, h) rounded, square, clipped to the width, random position."""
        side = int(round(self._uniform(self.min_cover * height, height)))
        side = max(1, min(side, width, height))
        top = int(torch.randint(0, height - side + 1, (), generator=self.rng))
        left = int(torch.randint(0, width - side + 1, (), generator=self.rng))
        return CropDraw(top, left, side, self._coin(0.5) if flip else False)

    @host_side
    def draw_structure(self, height: int, width: int) -> StructureDraw:
        flip = self._coin(0.5)
        jitter, order = None, ()
        if self._coin(self.jitter_p):
            b, c, s, h = self.jitter
            jitter = {"brightness": self._uniform(1 - b, 1 + b), "contrast": self._uniform(1 - c, 1 + c),
                      "saturation": self._uniform(1 - s, 1 + s), "hue": self._uniform(-h, h)}
            order = tuple(("brightness", "contrast", "saturation", "hue")[i] for i in torch.randperm(4, generator=self.rng))
        sigma = self._uniform(*self.blur_sigma) if self._coin(self.blur_p) else None
        return StructureDraw(flip, jitter, order, sigma, self.draw_crop(height, width, flip=False))

    @staticmethod
    def crop(image: torch.Tensor, d: CropDraw) -> torch.Tensor:
        out = image[..., d.top:d.top + d.side, d.left:d.left + d.side]
        return out.flip(-1) if d.flip else out

    @staticmethod
    def apply_structure(image: torch.Tensor, d: StructureDraw) -> torch.Tensor:
        x = image.flip(-1) if d.flip else image
        if d.jitter is not None:
            x = color_jitter(x, d.jitter, d.jitter_order)
        if d.blur_sigma is not None:
            x = gaussian_blur3(x, d.blur_sigma)
        return SpliceAugment.crop(x, d.crop)

    def structure(self, image: torch.Tensor) -> torch.Tensor:
        """A [1, 3, H, W] -> augmented square crop (flip, jitter p=0.5, blur p=0.2 on the whole image, then crop)."""
        return self.apply_structure(image, self.draw_structure(*image.shape[-2:]))

    def appearance(self, image: torch.Tensor) -> torch.Tensor:
        """B [1, 3, H, W] -> flipped (p=0.5) square crop."""
        return self.crop(image, self.draw_crop(*image.shape[-2:]))


# ------------------------------------------------------------------------------------------- training
@dataclass
class SpliceSettings:
    steps: int = 10_000
    lr: float = 2e-3
    betas: tuple = (0.0, 0.99)
    seed: int = 0
    lambdas: SpliceLambdas = field(default_factory=SpliceLambdas)
    autocast_dtype: Optional[torch.dtype] = None  # bf16/fp16 for DINO on GPU; None = fp32
    early_stop: bool = True
    plateau_window: int = 200  # steps per averaging window
    plateau_tol: float = 0.01  # relative improvement below which a window counts as flat
    plateau_patience: int = 3  # flat windows in a row before stopping
    min_steps: int = 400
    antialias: bool = True
    compile: bool = False
    dino_size: int = 224  # short side DINO sees (the official config's dino_global_patch_size)


def _autograd_ready(module: nn.Module) -> nn.Module:
    """Gradients flow *through* the frozen DINO to the generator, so its weights are saved for backward;
    weights created under inference_mode (e.g. loaded by a host that runs everything in it) cannot be.
    Replace any such tensors by ordinary copies, in place."""
    if any(t.is_inference() for t in list(module.parameters()) + list(module.buffers())):
        with torch.inference_mode(False), torch.no_grad():
            for m in module.modules():
                for name, p in list(m.named_parameters(recurse=False)):
                    if p.is_inference():
                        setattr(m, name, nn.Parameter(p.clone(), requires_grad=p.requires_grad))
                for name, b in list(m.named_buffers(recurse=False)):
                    if b is not None and b.is_inference():
                        m._buffers[name] = b.clone()
    return module


def _adam(params: list, lr: float, betas: tuple) -> torch.optim.Optimizer:
    """The official optimiser (Adam, lr 2e-3, betas (0, 0.99)) in PyTorch's fused form where the device has one:
    one kernel per step, and its step count stays on the device (the default form reads it back with .item()
    every step). The same update, up to floating-point rounding."""
    try:
        return torch.optim.Adam(params, lr=lr, betas=betas, fused=True)
    except (RuntimeError, TypeError, ValueError):  # an older torch, or a device without the fused kernel
        return torch.optim.Adam(params, lr=lr, betas=betas)


@dataclass
class StepReport:
    step: int
    loss: Optional[float]  # host value only at plateau checks (a sync); None otherwise
    stopped_early: bool = False


class SpliceTrainer:
    """Trains one SkipGenerator for one (structure, appearance) pair.

    ``run()`` loops; ``step()`` makes one official iteration. Host synchronisation happens only every
    `plateau_window` steps (the early-stop check) and when the caller asks for a preview.
    """

    def __init__(self, dino: DinoViT, structure: torch.Tensor, appearance: torch.Tensor,
                 settings: Optional[SpliceSettings] = None, generator_config: Optional[SkipConfig] = None):
        # Hosts such as ComfyUI run nodes under inference_mode; training needs autograd whatever the caller's mode.
        with torch.inference_mode(False), torch.enable_grad():
            self._init(dino, structure, appearance, settings, generator_config)

    def _init(self, dino, structure, appearance, settings, generator_config):
        self.settings = s = settings or SpliceSettings()
        if structure.ndim != 4 or structure.shape[:2] != (1, 3) or appearance.ndim != 4 or appearance.shape[:2] != (1, 3):
            raise ValueError("structure and appearance must be single RGB images [1, 3, H, W]")
        self.device = structure.device
        self.dino = _autograd_ready(dino)
        self.A = structure.float().clone().contiguous()  # clone: inference tensors cannot be saved for backward
        self.B = appearance.to(self.device).float().clone().contiguous()
        init = torch.Generator().manual_seed(int(s.seed))
        with torch.random.fork_rng(devices=[]):  # the layers' default init would draw from the global RNG
            gen = SkipGenerator(generator_config)
        self.gen = gen.reset_parameters(init).to(self.device)
        self.gen.train()
        self.forward_g = torch.compile(self.gen) if s.compile else self.gen
        self.opt = _adam(list(self.gen.parameters()), s.lr, tuple(s.betas))
        self.loss = SpliceLoss(dino, s.lambdas, antialias=s.antialias, size=s.dino_size)
        self.augment = SpliceAugment(seed=int(s.seed) + 1)
        self.step_index = 0
        self.history: list[tuple[int, float]] = []  # (step, mean global loss over the window)
        self._window_sum = torch.zeros((), device=self.device)
        self._window_n = 0
        self._flat = 0
        self._best: Optional[float] = None
        with torch.no_grad(), self._autocast():
            # the whole structure image never changes: its self-similarity target is computed once
            self.entire_ssim_target = self_similarity(self.loss.features(self.A).keys)

    def _autocast(self):
        dtype = self.settings.autocast_dtype
        return torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None)

    def step(self) -> StepReport:
        with torch.inference_mode(False), torch.enable_grad():
            return self._step()

    def _step(self) -> StepReport:
        s, step = self.settings, self.step_index
        lambdas = self.loss.active(step)
        a_crop = self.augment.structure(self.A)
        b_crop = self.augment.appearance(self.B)
        self.opt.zero_grad(set_to_none=True)
        with self._autocast():
            with torch.no_grad():  # targets: one batched DINO call
                names = (["A_global"] if lambdas["global_ssim"] else []) + ["B_global"]
                crops = {"A_global": a_crop, "B_global": b_crop}
                target = dict(zip(names, self.loss.features_of([crops[n] for n in names])))
            # G runs once per input, as the official code does (each call is its own BatchNorm batch)
            generated = {"x_global": self.forward_g(a_crop)}
            if lambdas["entire_ssim"] or lambdas["entire_cls"]:
                generated["x_entire"] = self.forward_g(self.A)
            if lambdas["global_identity"]:
                generated["y_global"] = self.forward_g(b_crop)
            out = dict(zip(generated, self.loss.features_of(list(generated.values()))))
            terms = self.loss.terms(out, target, lambdas, self.entire_ssim_target)
            total = self.loss.total(terms, lambdas)
        total.backward()
        self.opt.step()
        self.step_index += 1
        report = StepReport(step=step, loss=None)
        if step >= s.lambdas.cls_warmup:  # track the per-step (global) loss, which every step after 0 has
            glob = sum(lambdas[k] * terms[k] for k in ("global_ssim", "global_cls", "global_identity") if k in terms)
            self._window_sum += glob.detach().float()
            self._window_n += 1
            if self._window_n >= s.plateau_window:
                mean = (self._window_sum / self._window_n).item()  # the one host sync per window
                self.history.append((self.step_index, mean))
                self._window_sum.zero_()
                self._window_n = 0
                report.loss = mean
                if self._best is not None and mean > self._best * (1 - s.plateau_tol):
                    self._flat += 1
                else:
                    self._flat = 0
                self._best = mean if self._best is None else min(self._best, mean)
                report.stopped_early = (s.early_stop and self._flat >= s.plateau_patience
                                        and self.step_index >= s.min_steps)
        return report

    @torch.no_grad()
    def render(self, image: Optional[torch.Tensor] = None) -> torch.Tensor:
        """G(A) (or G(image)) as the official code saves it: train-mode BatchNorm, no grad."""
        return apply_generator(self.gen, self.A if image is None else image.to(self.device).float())

    def run(self, on_step: Optional[Callable[[StepReport], None]] = None) -> torch.Tensor:
        while self.step_index < self.settings.steps:
            report = self.step()
            if on_step is not None:
                on_step(report)
            if report.stopped_early:
                break
        return self.render()
