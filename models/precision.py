"""Which floating-point precisions a model family runs in, and what `auto` means for it.

Each family declares a `PrecisionPolicy` (its model class's `PRECISION`): whether its half-precision path is
safe (the blocks that need fp32 keep it inside the family's own code: StyleGAN2's styles, demodulation and RGB
skip sum, SMART's unscaled attention), and which half type `auto` takes on a CUDA GPU. The choice of `auto` is
measured: benchmarks/precision_sweep.py runs every stage at full official size in fp32, bf16 and fp16 and records
the error against fp32 (README: "Precision"). On a CPU `auto` is fp32 (exact; CPU half precision is slower).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

HALF_TYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
# fp16 overflows at 65504; an activation clamp at half of it keeps a sum or a bias add of two such values finite.
# Only ever reached where fp32 itself would exceed the range a trained network uses by orders of magnitude.
FP16_ACTIVATION_LIMIT = 32768.0


@dataclass(frozen=True)
class PrecisionPolicy:
    fp16: bool = True  # its fp16 path is safe (overflow-guarded where it needs to be)
    bf16: bool = True
    auto_gpu: str = "bf16"  # what "auto" means on a CUDA GPU ("fp16", "bf16" or "fp32")
    evidence: str = ""  # one line: why auto_gpu (see README "Precision")

    def resolve(self, choice: str, device: torch.device, device_has_bf16: bool,
                warn: Optional[Callable[[str], None]] = None) -> torch.dtype:
        """The dtype to run in for the user's choice ("auto", "fp32", "bf16", "fp16") on `device`."""
        warn = warn or (lambda message: None)
        if choice == "fp32":
            return torch.float32
        if choice == "auto":
            if device.type != "cuda":
                return torch.float32
            choice = self.auto_gpu
            if choice == "fp32":
                return torch.float32
        allowed = {"fp16": self.fp16, "bf16": self.bf16 and device_has_bf16}
        if choice not in allowed:
            raise ValueError(f"unknown precision {choice!r}")
        if allowed[choice]:
            return HALF_TYPES[choice]
        other = "bf16" if choice == "fp16" else "fp16"
        why = "this model's fp16 path is not safe" if choice == "fp16" else (
            "the device has no bf16" if not device_has_bf16 else "this model does not support bf16")
        if allowed[other] and device.type == "cuda":
            warn(f"{choice} requested but {why}; running in {other}")
            return HALF_TYPES[other]
        warn(f"{choice} requested but {why}; running in fp32")
        return torch.float32


# The default for code that has not measured anything better: bf16's range never overflows.
DEFAULT_POLICY = PrecisionPolicy(evidence="bf16 keeps fp32's exponent range")


def guard_fp16(x: torch.Tensor) -> torch.Tensor:
    """Clamp an fp16 activation into the range where adding two of them stays finite (inf becomes the limit);
    any other dtype passes untouched (no copy)."""
    if x.dtype != torch.float16:
        return x
    return x.clamp(-FP16_ACTIVATION_LIMIT, FP16_ACTIVATION_LIMIT)
