"""Which floating-point precisions a model family runs in, and what `auto` means for it.

Each family declares a `PrecisionPolicy` (its model class's `PRECISION`): whether its half-precision path is
safe (the blocks that need fp32 keep it inside the family's own code: StyleGAN2's styles, demodulation and RGB
skip sum, SMART's unscaled attention), which half type `auto` takes on a CUDA GPU, what it takes on a GPU without
native bf16, and, for a generator built of resolution blocks, which blocks run in the half type (`HalfBlocks`).
On a CPU `auto` is fp32 (exact; CPU half precision is slower).

StyleGAN2's choice depends on the file (models/stylegan/generator.py): a generator trained with its own conv_clamp gets
NVlabs' recipe for the generators it trains (stylegan2-ada-pytorch, stylegan3: fp16 in the 4 highest-resolution
blocks at that clamp, the rest fp32); one trained without (rosinality .pt, TF-era conversions, which NVlabs' own
legacy loader runs in fp32) gets bf16, whose range is fp32's. Checked against fp32 on trained-like weights
(tests/test_precision_policy.py) and on official files when the GPU check has them (benchmarks/precision_sweep.py
prints "confirmed" or "refuted"); docs/precision-and-gpu.md "Precision".
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import torch

HALF_TYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
# fp16 overflows at 65504; an activation clamp at half of it keeps a sum or a bias add of two such values finite.
# Only a last resort (finite, not right): where accuracy matters the recipe's own clamp (HalfBlocks.clamp) is
# far below it.
FP16_ACTIVATION_LIMIT = 32768.0


@dataclass(frozen=True)
class HalfBlocks:
    """Where a generator made of resolution blocks runs its half type: the `count` highest-resolution blocks
    (None: every block), never a block below `min_resolution`; activations there are clamped to +-`clamp`
    (None: no clamp beyond the fp16 guard). The other blocks run in fp32."""

    count: Optional[int] = None
    clamp: Optional[float] = None
    min_resolution: int = 4

    def first_half_resolution(self, resolutions: Sequence[int]) -> int:
        """The lowest block resolution that runs in the half type (above the top one: none does)."""
        if self.count is None:
            return max(resolutions[0], self.min_resolution)
        return max(2 * resolutions[-1] >> self.count, self.min_resolution)

    def clamp_with(self, model_clamp: Optional[float]) -> Optional[float]:
        """The clamp inside a half-precision block of a model that clamps at `model_clamp` itself (None: never):
        the tighter of the two."""
        if self.clamp is None:
            return model_clamp
        if model_clamp is None:
            return self.clamp
        return min(self.clamp, model_clamp)


WHOLE_NETWORK = HalfBlocks()
# stylegan2-ada-pytorch / stylegan3 train.py: num_fp16_res=4, conv_clamp=256; networks.py never puts the 4x4
# block in fp16 (its first fp16 resolution is at least 8)
NVLABS_FP16 = HalfBlocks(count=4, clamp=256.0, min_resolution=8)
# the same blocks at the model's own conv_clamp: for a generator trained with one, which fp32 applies too
NVLABS_FP16_OWN_CLAMP = HalfBlocks(count=4, min_resolution=8)


@dataclass(frozen=True)
class PrecisionPolicy:
    fp16: bool = True  # its fp16 path is safe (overflow-guarded where it needs to be)
    bf16: bool = True
    auto_gpu: str = "bf16"  # what "auto" means on a CUDA GPU ("fp16", "bf16" or "fp32")
    # what "auto" means on a GPU whose bf16 is only emulated (before Ampere: T4, V100, RTX 20xx)
    auto_without_bf16: str = "fp16"
    evidence: str = ""  # one line: why auto_gpu (see docs/precision-and-gpu.md "Precision")
    fp16_blocks: HalfBlocks = field(default=WHOLE_NETWORK)  # block-structured generators only
    bf16_blocks: HalfBlocks = field(default=WHOLE_NETWORK)
    fp16_caution: str = ""  # logged whenever the model runs in fp16 (its fp16 path may change what it computes)

    def blocks_for(self, dtype: torch.dtype) -> HalfBlocks:
        """Which blocks of a block-structured generator run in `dtype` (fp16 or bf16)."""
        return self.fp16_blocks if dtype == torch.float16 else self.bf16_blocks

    def resolve(self, choice: str, device: torch.device, device_has_bf16: bool,
                warn: Optional[Callable[[str], None]] = None) -> torch.dtype:
        """The dtype to run in for the user's choice ("auto", "fp32", "bf16", "fp16") on `device`;
        `device_has_bf16`: that device runs bf16 natively (models.core.devices.has_native_bf16)."""
        warn = warn or (lambda message: None)
        if choice == "fp32":
            return torch.float32
        if choice == "auto":
            if device.type != "cuda":
                return torch.float32
            choice = self.auto_gpu
            if choice == "bf16" and not device_has_bf16:
                choice = self.auto_without_bf16  # what auto means there: no warning, nothing was asked for
            if choice == "fp32":
                return torch.float32
        allowed = {"fp16": self.fp16, "bf16": self.bf16 and device_has_bf16}
        if choice not in allowed:
            raise ValueError(f"unknown precision {choice!r}")
        if allowed[choice]:
            return self._half(choice, warn)
        other = "bf16" if choice == "fp16" else "fp16"
        why = "this model's fp16 path is not safe" if choice == "fp16" else (
            "the device has no native bf16" if not device_has_bf16 else "this model does not support bf16")
        # a model whose fp16 path comes with a caution never falls back into it: fp32 instead (what its auto does)
        if allowed[other] and device.type == "cuda" and not (other == "fp16" and self.fp16_caution):
            warn(f"{choice} requested but {why}; running in {other}")
            return self._half(other, warn)
        warn(f"{choice} requested but {why}; running in fp32")
        return torch.float32


    def _half(self, choice: str, warn: Callable[[str], None]) -> torch.dtype:
        if choice == "fp16" and self.fp16_caution:
            warn(self.fp16_caution)
        return HALF_TYPES[choice]


# The default for code that has not measured anything better: bf16's range never overflows.
DEFAULT_POLICY = PrecisionPolicy(evidence="bf16 keeps fp32's exponent range")


def guard_fp16(x: torch.Tensor) -> torch.Tensor:
    """Clamp an fp16 activation into the range where adding two of them stays finite (inf becomes the limit);
    any other dtype passes untouched (no copy)."""
    if x.dtype != torch.float16:
        return x
    return x.clamp(-FP16_ACTIVATION_LIMIT, FP16_ACTIVATION_LIMIT)


@dataclass(frozen=True)
class Agreement:
    """How far a half-precision output is from the fp32 one: relative L2 error ||out - ref|| / ||ref||, the
    largest absolute error, and whether every value is finite."""

    rel_l2: float
    max_abs: float
    finite: bool

    def within(self, rel_l2: float, max_abs: Optional[float] = None) -> bool:
        """Finite and inside both tolerances (an inf/NaN output never agrees, whatever its error reads)."""
        if not self.finite or not self.rel_l2 <= rel_l2:
            return False
        return max_abs is None or self.max_abs <= max_abs


def agreement(out: torch.Tensor, ref: torch.Tensor) -> Agreement:
    """Compare `out` (any dtype or device) with the fp32 reference `ref`, in fp32 on the CPU."""
    out, ref = out.detach().float().cpu(), ref.detach().float().cpu()
    if not bool(torch.isfinite(out).all()):
        return Agreement(rel_l2=float("inf"), max_abs=float("inf"), finite=False)
    diff = out - ref
    return Agreement(rel_l2=float(diff.norm() / ref.norm().clamp_min(1e-12)), max_abs=float(diff.abs().max()),
                     finite=True)
