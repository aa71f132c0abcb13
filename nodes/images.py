"""Pictures between the pack's models and ComfyUI: generator output to IMAGE, one IMAGE to a PIL preview."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from . import comfy_bridge as bridge


def gan_to_comfy_image(images: torch.Tensor) -> torch.Tensor:
    """[B,3,H,W] in [-1,1] -> ComfyUI IMAGE [B,H,W,3] fp32 in [0,1] on the intermediate device."""
    out = ((images.float() + 1.0) * 0.5).clamp_(0.0, 1.0).permute(0, 2, 3, 1)
    return out.to(bridge.intermediate_device()).contiguous()


def comfy_image_to_pil(image: torch.Tensor) -> Image.Image:
    """One [H,W,3] ComfyUI image -> PIL (for progress previews)."""
    arr = (image.detach().float().clamp(0, 1).cpu().numpy() * 255.0).round().astype(np.uint8)
    return Image.fromarray(arr)
