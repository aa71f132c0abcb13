"""StyleGAN2 generator in pure PyTorch, with the module tree and key names of rosinality/stylegan2-pytorch.

rosinality's layout is what pSp, e4e, Style Transformer and StylePrompter ship, so those checkpoints load
with no key mapping at all; NVlabs pickles are mapped onto it by `models/registry.py`.

Differences from the official code, all numerically equivalent (see tests/test_stylegan2_parity.py):
- FIR up-sampling/blur are depthwise (transposed) convolutions instead of the generic `upfirdn2d`.
- No compiled CUDA ops: `fused_leaky_relu` is `leaky_relu(x + b) * sqrt(2)`.
- Two formulations of the modulated conv: "grouped" (one demodulated kernel per sample, a grouped conv —
  the official `fused=True` path) and "shared" (modulate the input, one shared-weight conv, demodulate
  the output — the official `fused=False` path). Measured on an H100 and on CPU (benchmarks/), grouped
  is as fast or faster in most cases and always needs less memory, so it is the default;
  channels_last made both slower (the depthwise FIR convs), so it is off by default.

Over 600 lines: the generator's layers, its key detection and its loader are one family, read together.
"""
from __future__ import annotations

import json
import math
import os
import re
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..core.descriptor import ModelDescriptor
from ..core.checkpoint_io import TRANSEDIT_FORMAT_KEY, RawCheckpoint, atomic_write, check_weight_dtypes, formats_hint
from ..core.errors import CheckpointError
from ..core.latent import model_fingerprint
from ..core.layers import SQRT2, EqualLinear
from ..core.precision import NVLABS_FP16, NVLABS_FP16_OWN_CLAMP, HalfBlocks, PrecisionPolicy, guard_fp16

MIN_SIZE, MAX_SIZE = 4, 2048

# A hook called after every StyledConv with (layer_index, feature); it may return a replacement feature.
# layer_index counts conv1 (4x4) as 0 and convs[k] as k + 1, so StylePrompter's SMART point (the second
# 16x16 conv) is layer 4.
FeatureHook = Callable[[int, torch.Tensor], Optional[torch.Tensor]]

NOISE_MODES = ("const", "random", "none")


def config_f_channels(size: int, channel_multiplier: int = 2) -> dict[int, int]:
    """The official width table (rosinality `Generator.channels`), extended to 2048."""
    table = {
        4: 512, 8: 512, 16: 512, 32: 512,
        64: 256 * channel_multiplier, 128: 128 * channel_multiplier, 256: 64 * channel_multiplier,
        512: 32 * channel_multiplier, 1024: 16 * channel_multiplier, 2048: 8 * channel_multiplier,
    }
    return {res: ch for res, ch in table.items() if res <= size}


@dataclass(frozen=True)
class StyleGAN2Config:
    """Everything needed to build a generator; every field but `lr_mlp` is inferable from weight shapes."""

    size: int = 1024
    style_dim: int = 512
    n_mlp: int = 8
    channels: dict[int, int] = field(default_factory=dict)  # resolution -> width; {} means config-f
    z_dim: Optional[int] = None  # NVlabs allows z_dim != w_dim; rosinality always has z_dim == style_dim
    lr_mlp: float = 0.01
    conv_clamp: Optional[float] = None  # NVlabs clamps every conv/ToRGB output (256 in ADA configs)

    def __post_init__(self):
        if self.size < MIN_SIZE or self.size > MAX_SIZE or self.size & (self.size - 1):
            raise ValueError(f"StyleGAN2 size must be a power of two in {MIN_SIZE}..{MAX_SIZE}, got {self.size}")
        if not self.channels:
            object.__setattr__(self, "channels", config_f_channels(self.size))
        channels = {int(k): int(v) for k, v in self.channels.items()}
        missing = [r for r in self.resolutions if r not in channels]
        if missing:
            raise ValueError(f"channel widths missing for resolutions {missing}")
        object.__setattr__(self, "channels", {r: channels[r] for r in self.resolutions})

    @property
    def log_size(self) -> int:
        return int(math.log2(self.size))

    @property
    def resolutions(self) -> list[int]:
        return [2 ** i for i in range(2, self.log_size + 1)]

    @property
    def n_latent(self) -> int:
        return self.log_size * 2 - 2

    @property
    def num_noises(self) -> int:
        return self.log_size * 2 - 3

    @property
    def input_dim(self) -> int:
        return self.z_dim or self.style_dim

    def noise_resolution(self, index: int) -> int:
        return 2 ** ((index + 5) // 2)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["channels"] = {str(k): v for k, v in self.channels.items()}
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "StyleGAN2Config":
        d = dict(d)
        d["channels"] = {int(k): int(v) for k, v in d.get("channels", {}).items()}
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in known})


# --------------------------------------------------------------------------------------------- layers
def fir_kernel_2d(taps: Sequence[float], gain: float) -> torch.Tensor:
    k = torch.tensor(taps, dtype=torch.float32)
    k = torch.outer(k, k)
    return k / k.sum() * gain


class PixelNorm(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(torch.mean(x * x, dim=1, keepdim=True) + 1e-8)


class FIRFilter(nn.Module):
    """The [1,3,3,1] FIR filter as a persistent buffer (it is in the official state dict).

    `upsample=True`: zero-insertion x2 then filter (ToRGB skip path, upfirdn2d up=2 pad (2,1)).
    `upsample=False`: filter with pad 1 (blur after the stride-2 transposed conv, upfirdn2d pad (1,1)).
    Both are depthwise (transposed) convolutions with the flipped kernel, which is what upfirdn2d computes.
    """

    def __init__(self, taps: Sequence[float] = (1, 3, 3, 1), upsample: bool = False):
        super().__init__()
        self.register_buffer("kernel", fir_kernel_2d(taps, gain=4.0))
        self.upsample = upsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        k = self.kernel.flip([0, 1]).to(x.dtype)[None, None].expand(c, 1, *self.kernel.shape)
        if self.upsample:
            return F.conv_transpose2d(x, k, stride=2, padding=1, groups=c)
        return F.conv2d(x, k, padding=1, groups=c)


MODCONV_FORMULATIONS = ("grouped", "shared")


class ModulatedConv2d(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, style_dim: int, demodulate: bool = True,
                 upsample: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(1, out_ch, in_ch, kernel_size, kernel_size))
        self.modulation = EqualLinear(style_dim, in_ch, bias_init=1.0)
        if upsample:
            self.blur = FIRFilter(upsample=False)
        self.scale = 1.0 / math.sqrt(in_ch * kernel_size ** 2)
        self.padding = kernel_size // 2
        self.demodulate = demodulate
        self.upsample = upsample
        self.formulation = "grouped"

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        # Styles and demodulation coefficients are tiny; keep them in fp32 even under autocast.
        with _no_autocast(x.device.type):
            s = self.modulation(w.float())  # [B, in]
            weight = self.weight[0] * self.scale  # [out, in, k, k]
            if self.formulation == "grouped":
                weight = weight[None] * s[:, None, :, None, None]  # [B, out, in, k, k]
                if self.demodulate:
                    weight = weight * torch.rsqrt(weight.square().sum((2, 3, 4)) + 1e-8)[:, :, None, None, None]
            elif self.demodulate:
                demod = torch.rsqrt(s.square() @ weight.square().sum((2, 3)).t() + 1e-8)  # [B, out]
        if self.formulation == "grouped":
            return self._grouped(x, weight.to(x.dtype))
        x = x * s.to(x.dtype)[:, :, None, None]
        weight = weight.to(x.dtype)
        if self.upsample:
            x = self.blur(F.conv_transpose2d(x, weight.transpose(0, 1), stride=2))
        else:
            x = F.conv2d(x, weight, padding=self.padding)
        if self.demodulate:
            x = x * demod.to(x.dtype)[:, :, None, None]
        return x

    def _grouped(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        b, in_ch, h, w = x.shape
        out_ch, k = weight.shape[1], weight.shape[-1]
        x = x.reshape(1, b * in_ch, h, w)
        if self.upsample:
            weight = weight.transpose(1, 2).reshape(b * in_ch, out_ch, k, k)
            out = F.conv_transpose2d(x, weight, stride=2, groups=b)
            return self.blur(out.reshape(b, out_ch, *out.shape[-2:]))
        out = F.conv2d(x, weight.reshape(b * out_ch, in_ch, k, k), padding=self.padding, groups=b)
        return out.reshape(b, out_ch, *out.shape[-2:])


class NoiseInjection(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor, noise: Optional[torch.Tensor]) -> torch.Tensor:
        if noise is None:
            return x
        return x + self.weight.to(x.dtype) * noise.to(x.dtype)


class BiasLeakyReLU(nn.Module):
    """rosinality's FusedLeakyReLU, without the CUDA kernel; `clamp` is NVlabs' conv_clamp."""

    def __init__(self, channels: int, clamp: Optional[float] = None):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels))
        self.clamp = clamp

    def forward(self, x: torch.Tensor, clamp: Optional[float] = None) -> torch.Tensor:
        """clamp: this call's clamp (a half-precision block's), used instead of the module's."""
        x = F.leaky_relu(x + self.bias.to(x.dtype)[None, :, None, None], 0.2) * SQRT2
        clamp = self.clamp if clamp is None else clamp
        if clamp is not None:
            x = x.clamp(-clamp, clamp)
        return guard_fp16(x)  # rosinality checkpoints have no conv_clamp: an fp16 overflow must not become inf


class StyledConv(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, style_dim: int, upsample: bool = False,
                 clamp: Optional[float] = None):
        super().__init__()
        self.conv = ModulatedConv2d(in_ch, out_ch, 3, style_dim, upsample=upsample)
        self.noise = NoiseInjection()
        self.activate = BiasLeakyReLU(out_ch, clamp)

    def forward(self, x, w, noise=None, clamp: Optional[float] = None):
        return self.activate(self.noise(self.conv(x, w), noise), clamp)


class ToRGB(nn.Module):
    def __init__(self, in_ch: int, style_dim: int, upsample: bool = True, clamp: Optional[float] = None):
        super().__init__()
        if upsample:
            self.upsample = FIRFilter(upsample=True)
        self.conv = ModulatedConv2d(in_ch, 3, 1, style_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))
        self.clamp = clamp

    def forward(self, x, w, skip=None, clamp: Optional[float] = None):
        out = self.conv(x, w) + self.bias.to(x.dtype)
        clamp = self.clamp if clamp is None else clamp
        if clamp is not None:
            out = out.clamp(-clamp, clamp)
        # the RGB image is the sum of every resolution's contribution: accumulated in fp32 (3 channels: cheap),
        # so a half-precision run rounds each layer's output once instead of the running sum at every level
        out = guard_fp16(out).float()
        if skip is not None:
            with _no_autocast(x.device.type):
                out = out + self.upsample(skip.float())
        return out


class ConstantInput(nn.Module):
    def __init__(self, channels: int, size: int = 4):
        super().__init__()
        self.input = nn.Parameter(torch.randn(1, channels, size, size))

    def forward(self, batch: int) -> torch.Tensor:
        return self.input.expand(batch, -1, -1, -1)


class _NoiseBuffers(nn.Module):
    """Holds `noises.noise_i` [1,1,R,R] — fixed noise that ships with every official checkpoint."""

    def __init__(self, config: StyleGAN2Config):
        super().__init__()
        for i in range(config.num_noises):
            r = config.noise_resolution(i)
            self.register_buffer(f"noise_{i}", torch.randn(1, 1, r, r))

    def __getitem__(self, i: int) -> torch.Tensor:
        return getattr(self, f"noise_{i}")


def _no_autocast(device_type: str):
    return torch.autocast(device_type, enabled=False)


# Which precision `auto` takes depends on how the file was trained (docs/precision-and-gpu.md "Precision").
# Trained with conv_clamp (NVlabs' ADA-era .pkl): NVlabs' own recipe for such generators, fp16 in the 4
# highest-resolution blocks (most of the work) at the model's own clamp, which bounds every fp16 conv output and
# which fp32 applies too, the wide low-resolution blocks in fp32.
PRECISION_WITH_CLAMP = PrecisionPolicy(
    fp16=True, bf16=True, auto_gpu="fp16", fp16_blocks=NVLABS_FP16_OWN_CLAMP,
    evidence="NVlabs' recipe at the model's own conv_clamp (fp16 in the top 4 blocks, rest fp32): the clamp is "
             "the trained network's; within 1e-3 of fp32 on trained-like proxies, bf16 ~7x further")
# Trained without a clamp (rosinality .pt, TF-era conversions, which NVlabs' legacy loader runs in fp32): the
# recipe's +-256 clamp may cut activations the network was trained to produce; bf16 keeps fp32's range whatever
# they are, fp32 where bf16 is only emulated.
PRECISION_WITHOUT_CLAMP = PrecisionPolicy(
    fp16=True, bf16=True, auto_gpu="bf16", auto_without_bf16="fp32", fp16_blocks=NVLABS_FP16,
    fp16_caution="fp16 clamps activations at ±256 in the 4 highest-resolution blocks; this generator was trained "
                 "without conv_clamp and may exceed that (bf16 and fp32 cannot)",
    evidence="trained without conv_clamp: bf16 keeps fp32's range (within 1e-2 of fp32 on trained-like proxies), "
             "fp32 on GPUs without native bf16")
# what the nodes' tooltips say, one entry per case
PRECISION_BY_FILE = {"with conv_clamp (NVlabs ADA-era .pkl)": PRECISION_WITH_CLAMP,
                     "without conv_clamp (rosinality .pt, TF-era StyleGAN2)": PRECISION_WITHOUT_CLAMP}


class _PolicyOfTheFile:
    """`PRECISION` of a generator: its file's case; read on the class, the case without a clamp (the common files
    and the one whose half precision is bounded by nothing the network learnt)."""

    def __get__(self, generator, owner=None) -> PrecisionPolicy:
        if generator is not None and generator.config.conv_clamp is not None:
            return PRECISION_WITH_CLAMP
        return PRECISION_WITHOUT_CLAMP


# --------------------------------------------------------------------------------------------- model
class StyleGAN2Generator(nn.Module):
    PRECISION = _PolicyOfTheFile()

    def __init__(self, config: StyleGAN2Config):
        super().__init__()
        self.config = config
        c, sd = config.channels, config.style_dim
        clamp = config.conv_clamp

        mapping = [PixelNorm()]
        for i in range(config.n_mlp):
            mapping.append(EqualLinear(config.input_dim if i == 0 else sd, sd, lr_mul=config.lr_mlp,
                                       activation=True))
        self.style = nn.Sequential(*mapping)

        self.input = ConstantInput(c[4])
        self.conv1 = StyledConv(c[4], c[4], sd, clamp=clamp)
        self.to_rgb1 = ToRGB(c[4], sd, upsample=False, clamp=clamp)

        self.convs = nn.ModuleList()
        self.to_rgbs = nn.ModuleList()
        in_ch = c[4]
        for res in config.resolutions[1:]:
            out_ch = c[res]
            self.convs.append(StyledConv(in_ch, out_ch, sd, upsample=True, clamp=clamp))
            self.convs.append(StyledConv(out_ch, out_ch, sd, clamp=clamp))
            self.to_rgbs.append(ToRGB(out_ch, sd, clamp=clamp))
            in_ch = out_ch
        self.noises = _NoiseBuffers(config)

    def set_modconv_formulation(self, formulation: str) -> "StyleGAN2Generator":
        """"grouped" (default, per-sample kernels) or "shared" (shared weights, modulated activations)."""
        if formulation not in MODCONV_FORMULATIONS:
            raise ValueError(f"formulation must be one of {MODCONV_FORMULATIONS}, got {formulation!r}")
        for m in self.modules():
            if isinstance(m, ModulatedConv2d):
                m.formulation = formulation
        return self

    # ------------------------------------------------------------------ latent space
    @property
    def n_latent(self) -> int:
        return self.config.n_latent

    @property
    def style_dim(self) -> int:
        return self.config.style_dim

    def mapping(self, z: torch.Tensor) -> torch.Tensor:
        """z [B, z_dim] -> w [B, style_dim]."""
        with _no_autocast(z.device.type):
            return self.style(z.float())

    @torch.no_grad()
    def mean_latent(self, n: int = 4096, seed: int = 0) -> torch.Tensor:
        """Monte-Carlo mean of W, [1, style_dim] (rosinality's `mean_latent`, but seeded)."""
        device = self.input.input.device
        gen = torch.Generator(device="cpu").manual_seed(seed)
        z = torch.randn(n, self.config.input_dim, generator=gen).to(device)
        return self.mapping(z).mean(0, keepdim=True)

    def to_wplus(self, styles: Sequence[torch.Tensor], input_is_latent: bool = False, truncation: float = 1.0,
                 truncation_latent: Optional[torch.Tensor] = None, inject_index: Optional[int] = None
                 ) -> torch.Tensor:
        """rosinality's style handling: map z (unless latent), truncate, broadcast, and mix two styles.

        One 2-D style is broadcast to every layer, a 3-D style is used as is, two 2-D styles take rows
        [0, inject_index) from the first and the rest from the second.
        """
        if not input_is_latent:
            styles = [self.mapping(s) for s in styles]
        if truncation < 1:
            if truncation_latent is None:
                raise ValueError("truncation < 1 needs truncation_latent (e.g. the checkpoint's latent_avg)")
            t = truncation_latent.reshape(1, -1).to(styles[0])
            styles = [t + truncation * (s - t) for s in styles]
        n = self.n_latent
        if len(styles) == 1:
            s = styles[0]
            return s if s.ndim == 3 else s.unsqueeze(1).expand(-1, n, -1)
        if len(styles) != 2:
            raise ValueError("to_wplus mixes at most two styles")
        if inject_index is None:
            raise ValueError("style mixing needs an explicit inject_index (1..n_latent-1)")
        a = styles[0] if styles[0].ndim == 3 else styles[0].unsqueeze(1).expand(-1, n, -1)
        b = styles[1] if styles[1].ndim == 3 else styles[1].unsqueeze(1).expand(-1, n, -1)
        return torch.cat([a[:, :inject_index], b[:, inject_index:]], dim=1)

    def truncate(self, wplus: torch.Tensor, psi: float, w_avg: torch.Tensor) -> torch.Tensor:
        return w_avg.reshape(1, 1, -1).to(wplus) + psi * (wplus - w_avg.reshape(1, 1, -1).to(wplus))

    # ------------------------------------------------------------------ synthesis
    def make_noise(self, batch: int, mode: str = "const", seed: Optional[int] = None,
                   device: Optional[torch.device] = None) -> list[Optional[torch.Tensor]]:
        if mode not in NOISE_MODES:
            raise ValueError(f"noise mode must be one of {NOISE_MODES}, got {mode!r}")
        if mode == "none":
            return [None] * self.config.num_noises
        if mode == "const":
            return [self.noises[i] for i in range(self.config.num_noises)]
        device = device or self.input.input.device
        gen = torch.Generator(device=device)
        gen.manual_seed(torch.seed() if seed is None else seed)
        return [torch.randn(batch, 1, r, r, generator=gen, device=device)
                for r in map(self.config.noise_resolution, range(self.config.num_noises))]

    def synthesis(self, wplus: torch.Tensor, noise: Optional[Sequence[Optional[torch.Tensor]]] = None,
                  noise_mode: str = "const", noise_seed: Optional[int] = None,
                  return_features: bool = False, feature_hook: Optional[FeatureHook] = None,
                  dtype: Optional[torch.dtype] = None, channels_last: bool = False,
                  max_resolution: Optional[int] = None,
                  rgb_hook: Optional[Callable[[int, torch.Tensor], None]] = None,
                  half_blocks: Optional[HalfBlocks] = None):
        """W+ [B, n_latent, style_dim] -> image [B, 3, size, size] (nominal range [-1, 1], not clamped).

        noise: explicit per-layer noise (overrides noise_mode); noise_mode "const" uses the checkpoint's
        buffers (deterministic, what parity needs), "random" draws fresh N(0,1) (seeded by noise_seed),
        "none" turns noise off. dtype=bfloat16/float16 runs the convolutions of the blocks `half_blocks` names
        under autocast (default: this file's policy, PRECISION: fp16 in NVlabs' blocks with their clamp, bf16
        everywhere), the other blocks in fp32.
        max_resolution: stop after that resolution's block and return the skip branch's RGB there (the
        image the network has built so far, [B, 3, r, r]); the layers above it are not run, so a 256 px
        preview of a 1024 px generator costs about a third of a full image (measured on a CPU). W+ rows of the skipped layers are unused.
        Returns the image, or (image, features) with features {"conv{L}": ..., "rgb{res}": ...}.
        """
        if max_resolution is not None and max_resolution not in self.config.resolutions:
            raise ValueError(f"max_resolution must be one of {self.config.resolutions}, got {max_resolution!r}")
        if wplus.ndim != 3 or wplus.shape[1:] != (self.n_latent, self.style_dim):
            raise ValueError(f"expected W+ of shape [B, {self.n_latent}, {self.style_dim}], got {tuple(wplus.shape)}")
        batch = wplus.shape[0]
        if noise is None:
            noise = self.make_noise(batch, noise_mode, noise_seed, wplus.device)
        elif len(noise) != self.config.num_noises:
            raise ValueError(f"expected {self.config.num_noises} noise tensors, got {len(noise)}")
        features: dict[str, torch.Tensor] = {}

        def emit(layer: int, x: torch.Tensor) -> torch.Tensor:
            if feature_hook is not None:
                replaced = feature_hook(layer, x)
                if replaced is not None:
                    x = replaced
            if return_features:
                features[f"conv{layer}"] = x
            return x

        half = dtype if dtype in (torch.bfloat16, torch.float16) else None
        blocks = (half_blocks or self.PRECISION.blocks_for(half)) if half is not None else None
        first_half = blocks.first_half_resolution(self.config.resolutions) if blocks is not None else None
        half_clamp = blocks.clamp_with(self.config.conv_clamp) if blocks is not None else None

        def block(res: int):
            """(precision context, clamp) for the block at resolution `res`; an fp32 block of a half-precision
            run is fp32 even inside a caller's autocast."""
            if first_half is None:
                return nullcontext(), None
            if res < first_half:
                return _no_autocast(wplus.device.type), None
            return torch.autocast(wplus.device.type, dtype=half), half_clamp

        context, clamp = block(4)
        with context:
            x = self.input(batch)
            if clamp is not None:
                x = x.clamp(-clamp, clamp)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            x = emit(0, self.conv1(x, wplus[:, 0], noise[0], clamp))
            skip = self.to_rgb1(x, wplus[:, 1], clamp=clamp)
        if return_features:
            features["rgb4"] = skip
        if rgb_hook is not None:
            rgb_hook(4, skip)
        i = 1
        for k, res in enumerate(self.config.resolutions[1:]):
            if max_resolution is not None and res > max_resolution:
                break
            up, conv, to_rgb = self.convs[2 * k], self.convs[2 * k + 1], self.to_rgbs[k]
            context, clamp = block(res)
            if clamp is not None and x.dtype != half:  # entering the half blocks: the fp32 input fits them too
                x = x.clamp(-clamp, clamp)
            with context:
                x = emit(2 * k + 1, up(x, wplus[:, i], noise[2 * k + 1], clamp))
                x = emit(2 * k + 2, conv(x, wplus[:, i + 1], noise[2 * k + 2], clamp))
                skip = to_rgb(x, wplus[:, i + 2], skip, clamp)
            if return_features:
                features[f"rgb{res}"] = skip
            if rgb_hook is not None:
                rgb_hook(res, skip)
            i += 2
        image = skip.float().contiguous()
        if return_features:
            return image, features
        return image

    def forward(self, styles: Sequence[torch.Tensor], input_is_latent: bool = False, truncation: float = 1.0,
                truncation_latent: Optional[torch.Tensor] = None, inject_index: Optional[int] = None,
                return_latents: bool = False, **synthesis_kwargs):
        """rosinality-compatible call: styles list -> image (and the W+ that was synthesised)."""
        wplus = self.to_wplus(styles, input_is_latent, truncation, truncation_latent, inject_index)
        out = self.synthesis(wplus, **synthesis_kwargs)
        return (out, wplus) if return_latents else out


# ------------------------------------------------------------------------- files: detect, load, save
# The official containers: rosinality's train.py `{'g', 'd', 'g_ema', 'g_optim', 'd_optim', 'args'}`,
# pSp/e4e/Style Transformer/StylePrompter `{'state_dict': decoder.*, 'opts', 'latent_avg'}`, NVlabs
# `.pkl` (see nvlabs_pickle.py) and TransEdit's own `.safetensors` (`transedit convert`).
@dataclass(kw_only=True)
class StyleGAN2Descriptor(ModelDescriptor):
    """A loaded generator: the file's format, which state dict inside it, its identity and its W mean."""

    source_format: str
    weights: str  # which state dict inside the file (g_ema, g, decoder, ...)
    fingerprint: str
    latent_avg: Optional[torch.Tensor] = None  # [style_dim] W mean
    latent_avg_source: str = "checkpoint"  # or "estimated"



STYLEGAN2_REQUIRED_KEYS = ("style.1.weight", "input.input", "conv1.conv.weight", "to_rgb1.conv.weight")


def is_stylegan2_state_dict(sd: dict[str, torch.Tensor]) -> bool:
    return all(k in sd for k in STYLEGAN2_REQUIRED_KEYS)


def infer_stylegan2_config(sd: dict[str, torch.Tensor], path="<state dict>", **overrides) -> StyleGAN2Config:
    """Every hyperparameter from shapes: style_dim, z_dim, n_mlp, size (from the ToRGB count), widths."""
    try:
        style_dim, z_dim = sd["style.1.weight"].shape
        n_mlp = 0
        while f"style.{n_mlp + 1}.weight" in sd:
            n_mlp += 1
        n_rgbs = 0
        while f"to_rgbs.{n_rgbs}.conv.weight" in sd:
            n_rgbs += 1
        size = 2 ** (n_rgbs + 2)
        channels = {4: int(sd["input.input"].shape[1])}
        for k in range(n_rgbs):
            channels[2 ** (k + 3)] = int(sd[f"convs.{2 * k}.conv.weight"].shape[1])
    except (KeyError, ValueError, IndexError) as e:
        raise CheckpointError(path, f"looks like a StyleGAN2 generator but its layout is incomplete ({e}).",
                              formats_hint()) from None
    cfg = dict(size=size, style_dim=int(style_dim), n_mlp=n_mlp, channels=channels,
               z_dim=None if z_dim == style_dim else int(z_dim))
    cfg.update(overrides)
    return StyleGAN2Config(**cfg)


def load_generator_weights(raw: RawCheckpoint, weights: str) -> StyleGAN2Descriptor:
    sd = raw.state_dicts[weights]
    stored = raw.extras.get("config") or {}
    overrides = {k: stored[k] for k in ("lr_mlp", "conv_clamp") if k in stored and stored[k] is not None}
    config = infer_stylegan2_config(sd, raw.path, **overrides)
    model = StyleGAN2Generator(config)
    sd = dict(sd)
    # rosinality's FIR kernels are buffers but constant; checkpoints from stripped exports may omit them.
    for key, buf in model.state_dict().items():
        if key.endswith((".blur.kernel", ".upsample.kernel")) and key not in sd:
            sd[key] = buf
    check_weight_dtypes(raw.path, model, sd)
    result = model.load_state_dict(sd, strict=False)
    problems = []
    if result.missing_keys:
        problems.append(f"missing {len(result.missing_keys)} keys (e.g. {result.missing_keys[:3]})")
    if result.unexpected_keys:
        problems.append(f"unexpected {len(result.unexpected_keys)} keys (e.g. {result.unexpected_keys[:3]})")
    if problems:
        raise CheckpointError(raw.path, f"StyleGAN2 weights '{weights}' do not match the layout inferred "
                              f"from their shapes (size {config.size}, style_dim {config.style_dim}): "
                              + "; ".join(problems) + ".")
    model.eval().requires_grad_(False)
    notes = []
    latent_avg = raw.extras.get("latent_avg")
    latent_avg_source = "checkpoint"
    if latent_avg is not None and latent_avg.ndim >= 2 and latent_avg.shape[-1] == config.style_dim:
        latent_avg = latent_avg.reshape(-1, config.style_dim).mean(0)  # pSp/e4e store it repeated per W+ row
    if latent_avg is not None and latent_avg.numel() != config.style_dim:
        notes.append(f"ignored latent_avg of shape {tuple(latent_avg.shape)} (style_dim is {config.style_dim})")
        latent_avg = None
    if latent_avg is None:
        # rosinality's train.py checkpoints carry no W mean; truncation needs one, so estimate it.
        latent_avg = model.mean_latent(4096, seed=0).reshape(-1)
        latent_avg_source = "estimated"
        notes.append("no latent_avg in the file: estimated the W mean from 4096 samples (seed 0)")
    latent_avg = latent_avg.reshape(-1).float()
    if weights == "g":
        notes.append("the file has no g_ema; using the non-EMA generator 'g'")
    return StyleGAN2Descriptor(
        family="stylegan2", model=model, config=config, source=raw.path, source_format=raw.format,
        weights=weights, fingerprint=model_fingerprint("stylegan2", config.to_dict(), sd),
        latent_avg=latent_avg, latent_avg_source=latent_avg_source, notes=notes)


def load_bundled_generator(raw: RawCheckpoint, weights: str = "decoder") -> Optional[StyleGAN2Descriptor]:
    """The generator an encoder or EditTransformer checkpoint carries as `weights`, or None when it carries none.
    The registry hands this to the encoder loaders, so that the encoders family need not import this one."""
    sd = raw.state_dicts.get(weights)
    return load_generator_weights(raw, weights) if sd is not None and is_stylegan2_state_dict(sd) else None


# Which sub-state-dict to prefer for each role, best first.
GENERATOR_WEIGHTS_ORDER = ("g_ema", "decoder", "state_dict", "g")


def detect(raw: RawCheckpoint) -> bool:
    """Does the file hold a StyleGAN2 generator (alone, or as an encoder checkpoint's decoder)?"""
    return any(is_stylegan2_state_dict(sd) for sd in raw.state_dicts.values())


def load(raw: RawCheckpoint) -> StyleGAN2Descriptor:
    """The StyleGAN2 generator in a file (the EMA weights when there are several)."""
    path = raw.path
    for name in GENERATOR_WEIGHTS_ORDER + tuple(raw.state_dicts):
        sd = raw.state_dicts.get(name)
        if sd is not None and is_stylegan2_state_dict(sd):
            return load_generator_weights(raw, name)
    stylegan3 = any(re.match(r"synthesis\.L\d+_", k) or k.startswith("synthesis.input.freqs")
                    for sd in raw.state_dicts.values() for k in sd)
    if stylegan3:
        raise CheckpointError(path, "is a StyleGAN3 generator, which TransEdit does not support yet.",
                              "Use a StyleGAN2 (or StyleGAN2-ADA) checkpoint.")
    found = ", ".join(f"'{n}' ({len(sd)} tensors, e.g. {next(iter(sd), '-')})" for n, sd in raw.state_dicts.items())
    raise CheckpointError(path, f"contains no StyleGAN2 generator (found {found}).", formats_hint())



def save_stylegan2_safetensors(desc: StyleGAN2Descriptor, path, overwrite: bool = False) -> Path:
    from safetensors.torch import save_file

    tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in desc.model.state_dict().items()}
    if desc.latent_avg is not None:
        tensors["latent_avg"] = desc.latent_avg.detach().cpu().float().contiguous()
    metadata = {
        TRANSEDIT_FORMAT_KEY: "stylegan2",
        "config": json.dumps(desc.config.to_dict()),
        "weights": desc.weights,
        "latent_avg_source": desc.latent_avg_source,
        "converted_from": os.path.basename(desc.source),
        "converted_from_format": desc.source_format,
    }
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata), overwrite)
