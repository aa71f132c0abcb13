"""The precision input every model-running node has, resolved with the model family's own policy
(models/precision.py) and the device's abilities (the bridge)."""
from __future__ import annotations

import torch

from ..models.precision import DEFAULT_POLICY, PrecisionPolicy
from . import comfy_bridge as bridge

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def resolve_precision(precision: str, device: torch.device, policy: PrecisionPolicy = DEFAULT_POLICY) -> torch.dtype:
    """The dtype a model runs in. `policy` is the model family's (a handle's `precision`, read from its descriptor:
    the model class's PRECISION): which half types its code keeps safe, and what 'auto' takes on a CUDA GPU
    (measured per family; fp32 on the CPU). A choice the model or the device cannot run falls back, with a
    warning in the log."""
    return policy.resolve(precision, device, bridge.supports_bf16(device),
                          warn=lambda message: bridge.log.warning("TransEdit: %s: %s", device, message))
