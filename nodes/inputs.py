"""Checking what a node receives: the user-facing error (which node, which input, what is wrong, how to fix
it), model files chosen from a folder, numbers, choices and IMAGEs."""
from __future__ import annotations

import math

from typing import Callable, TypeVar

import numpy as np
import torch

from ..models.core.errors import CheckpointError
from . import comfy_bridge as bridge

T = TypeVar("T")

MAX_SEED = 0xFFFF_FFFF_FFFF_FFFF


class NodeInputError(ValueError):
    """A user-facing error: which node, which input, what is wrong, how to fix it."""

    def __init__(self, node: str, input_name: str, problem: str, fix: str = ""):
        super().__init__(f"{node}: input '{input_name}' {problem}" + (f" Fix: {fix}" if fix else ""))
        self.node, self.input_name = node, input_name


def require_model_file(node: str, input_name: str, folder: str, filename: str) -> str:
    """The full path of a file chosen from a model folder, or an error that says where it belongs."""
    path = bridge.model_path(folder, filename)
    if path is None:
        raise NodeInputError(node, input_name, f"'{filename}' was not found in {bridge.folder_paths_for(folder)}.",
                             f"put the file in ComfyUI/models/{folder} and press Refresh (R).")
    return path


def load_model_file(node: str, input_name: str, folder: str, filename: str, loader: Callable[[str], T]) -> T:
    """The file chosen in `input_name`, read by a registry loader. A file that cannot be used (wrong family,
    damaged, hostile) becomes a NodeInputError naming the node and the input; the loader's reason, which
    names the file, follows."""
    path = require_model_file(node, input_name, folder, filename)
    try:
        return loader(path)
    except CheckpointError as e:
        raise NodeInputError(node, input_name, f"cannot be used: {e}") from None


def check_int(node: str, name: str, value, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise NodeInputError(node, name, f"must be an integer, got {type(value).__name__}.")
    if not lo <= int(value) <= hi:
        raise NodeInputError(node, name, f"must be between {lo} and {hi}, got {value}.",
                             f"set {name} within {lo}..{hi}.")
    return int(value)


def check_float(node: str, name: str, value, lo: float, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)) or value != value:
        raise NodeInputError(node, name, f"must be a number, got {value!r}.")
    if not lo <= float(value) <= hi:
        raise NodeInputError(node, name, f"must be between {lo} and {hi}, got {value}.",
                             f"set {name} within {lo}..{hi}.")
    return float(value)


def check_choice(node: str, name: str, value, choices) -> str:
    if value not in choices:
        raise NodeInputError(node, name, f"must be one of {list(choices)}, got {value!r}.")
    return value


# how far outside [0, 1] a strict check lets pixels go (resampling overshoot upstream), cleaned like the rest
IMAGE_RANGE_TOLERANCE = 0.01


def check_images(node: str, name: str, images, min_size: int = 8, strict: bool = False) -> torch.Tensor:
    """A ComfyUI IMAGE as fp32 RGB in [0, 1] on the CPU: greyscale expanded, alpha dropped, NaN/inf cleaned.
    A clean fp32 CPU input comes back as itself (no copy), so nodes must not write into what this returns.
    strict: NaN/inf or values beyond IMAGE_RANGE_TOLERANCE outside [0, 1] are refused, not cleaned (for nodes
    that fit a model to the pixels: it would fit the cleaned garbage, a 0..255 picture clamped to nearly white).

    On the CPU because inputs may come from anywhere (under --gpu-only a VAE Decode hands over CUDA images,
    Load Image CPU ones) and several inputs are combined; each node moves what it computes on to its device."""
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[-1] not in (1, 3, 4):
        raise NodeInputError(node, name, f"must be an IMAGE [B, H, W, C], got "
                             f"{tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__}.")
    if images.shape[0] == 0:
        raise NodeInputError(node, name, "is an empty batch.", "connect at least one image.")
    if images.shape[1] < min_size or images.shape[2] < min_size:
        raise NodeInputError(node, name, f"is {images.shape[2]}x{images.shape[1]} pixels; at least "
                             f"{min_size}x{min_size} is needed.", "use a larger image.")
    images = images.detach().to("cpu", torch.float32)
    if images.shape[-1] == 1:
        images = images.expand(-1, -1, -1, 3)
    images = images[..., :3]
    # one pass over the pixels, and a copy only when something needs cleaning: a clip's frames can be gigabytes
    lo, hi = images.aminmax()  # NaN and +-inf show up here
    if bool(torch.isfinite(lo) & torch.isfinite(hi) & (lo >= 0) & (hi <= 1)):
        return images
    if strict:
        lo, hi = float(lo), float(hi)
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise NodeInputError(node, name, "hold NaN or infinite values.",
                                 "check the node that made them (e.g. a decode or an upscale that overflowed).")
        if lo < -IMAGE_RANGE_TOLERANCE or hi > 1 + IMAGE_RANGE_TOLERANCE:
            raise NodeInputError(node, name, f"range from {lo:.3g} to {hi:.3g}; a ComfyUI IMAGE is 0..1.",
                                 "connect the crops from 'TransEdit Align Face' (or divide 0..255 pictures by 255).")
    return torch.nan_to_num(images, nan=0.0, posinf=1.0, neginf=0.0).clamp(0, 1)
