"""The precision input every model-running node has, resolved with the model family's own policy
(models/core/precision.py) and the abilities of the device the model runs on (models/core/devices.py), and the tooltip
that says what `auto` means, written from that same policy so the two cannot drift."""
from __future__ import annotations

import torch

from ..models.core.devices import has_native_bf16
from ..models.core.precision import DEFAULT_POLICY, PrecisionPolicy
from . import comfy_bridge as bridge

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
OLD_GPUS = "T4, V100, RTX 20xx"  # CUDA GPUs before Ampere: bf16 only emulated


def resolve_precision(precision: str, device: torch.device, policy: PrecisionPolicy = DEFAULT_POLICY) -> torch.dtype:
    """The dtype a model runs in. `policy` is the model family's (a handle's `precision`, read from its descriptor:
    the model class's PRECISION): which half types its code keeps safe, and what 'auto' takes on a CUDA GPU
    (measured per family; fp32 on the CPU). `device` is where the model runs: its own bf16 ability counts, not
    the current CUDA device's. A choice the model or the device cannot run falls back, with a warning in the log."""
    return policy.resolve(precision, device, has_native_bf16(device),
                          warn=lambda message: bridge.log.warning("TransEdit: %s: %s", device, message))


def _half_text(choice: str, policy: PrecisionPolicy) -> str:
    if choice == "fp32":
        return "fp32"
    blocks = policy.fp16_blocks if choice == "fp16" else policy.bf16_blocks
    if blocks.count is None:
        return choice
    clamp = (f", activations clamped to ±{blocks.clamp:g} there" if blocks.clamp is not None
             else " at the model's own clamp")
    return f"{choice} in the {blocks.count} highest-resolution blocks{clamp}, the rest fp32 (NVlabs' recipe)"


def _gpu_text(policy: PrecisionPolicy) -> str:
    if policy.auto_gpu == "bf16":
        return (f"on a GPU with native bf16 (Ampere or newer) bf16; on older GPUs ({OLD_GPUS}) "
                f"{_half_text(policy.auto_without_bf16, policy)}")
    return f"on a GPU {_half_text(policy.auto_gpu, policy)}"


def auto_tooltip(policy: PrecisionPolicy) -> str:
    """What `auto` (and fp16, where a recipe decides its blocks) means for a family, in the node's words."""
    text = f"auto: {_gpu_text(policy)}; on a CPU fp32."
    if policy.fp16_blocks.count is not None:
        text += " fp16 means the same." if policy.auto_gpu == "fp16" else f" fp16: {_half_text('fp16', policy)}."
    return text


def auto_tooltip_by_file(cases: dict[str, PrecisionPolicy]) -> str:
    """What `auto` and fp16 mean for a family whose policy depends on the file (label -> that case's policy,
    e.g. models.stylegan.generator.PRECISION_BY_FILE), in the node's words."""
    text = " ".join(f"auto, generator {label}: {_gpu_text(policy)}." for label, policy in cases.items())
    text += " On a CPU fp32."
    for label, policy in cases.items():
        blocks = policy.fp16_blocks
        if policy.auto_gpu != "fp16" and blocks.count is not None:
            text += f" fp16, generator {label}: {_half_text('fp16', policy)}"
            text += f"; trained without it, it may exceed ±{blocks.clamp:g}." if blocks.clamp is not None else "."
    return text
