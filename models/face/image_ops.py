"""Image operations the face stage shares (alignment and paste-back): batches of channels-last pictures as
[3, H, W] float tensors on a device, reflect padding, Gaussian blurs (large ones on a downsampled copy),
anti-aliased resizing and affine warps given as 3x3 pixel-centre matrices. Pure torch, any device."""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F


def as_image_list(images: Any, device, what: str, views: bool = False) -> tuple[list[torch.Tensor], bool]:
    """-> list of [3, H, W] float tensors on ``device``, and whether the input was a batch tensor. With
    ``views`` the items are [3, H, W] views of the input as it is (its device and dtype, no copy: a long clip
    of full-size frames is not duplicated); read them through :func:`as_float`."""
    if isinstance(images, torch.Tensor) or isinstance(images, np.ndarray):
        t = torch.as_tensor(images)
        if t.ndim == 3:
            t = t[None]
        if t.ndim != 4 or t.shape[-1] not in (3, 4):
            raise ValueError(f"{what} must be [B, H, W, 3], got shape {tuple(t.shape)}")
        items, batched = list(t.unbind(0)), True
    elif isinstance(images, Sequence) and not isinstance(images, (str, bytes)):
        items, batched = [torch.as_tensor(np.asarray(i) if not isinstance(i, torch.Tensor) else i) for i in images], False
    else:
        raise TypeError(f"{what} must be a [B, H, W, 3] tensor or a list of [H, W, 3] images")
    out = []
    for i, t in enumerate(items):
        if t.ndim == 2:
            t = t[..., None].expand(*t.shape, 3)
        if t.ndim != 3 or t.shape[-1] not in (3, 4):
            raise ValueError(f"{what}[{i}] must be [H, W, 3], got shape {tuple(t.shape)}")
        t = t[..., :3]
        out.append(t.permute(2, 0, 1) if views else as_float(t, device).permute(2, 0, 1).contiguous())
    return out, batched


def as_float(t: torch.Tensor, device) -> torch.Tensor:
    """A picture (or a part of one) as float32 0..1 on ``device``: uint8 is divided by 255."""
    if t.dtype == torch.uint8:
        return t.to(device=device, dtype=torch.float32) / 255.0
    return t.to(device=device, dtype=torch.float32)


def reflect_index(n: int, before: int, after: int, device) -> torch.Tensor:
    """Indices of numpy's 'reflect' padding (edge not repeated), any pad size."""
    idx = torch.arange(-before, n + after, device=device)
    if n == 1:
        return torch.zeros_like(idx)
    period = 2 * (n - 1)
    idx = idx.remainder(period)
    return torch.where(idx >= n, period - idx, idx)


def reflect_pad(x: torch.Tensor, left: int, right: int, top: int, bottom: int) -> torch.Tensor:
    h, w = x.shape[-2:]
    x = x.index_select(-1, reflect_index(w, left, right, x.device))
    return x.index_select(-2, reflect_index(h, top, bottom, x.device))


def gauss_kernel(sigma: float, device) -> torch.Tensor:
    r = max(1, int(math.ceil(3.0 * sigma)))
    xs = torch.arange(-r, r + 1, device=device, dtype=torch.float32)
    k = torch.exp(-0.5 * (xs / sigma) ** 2)
    return k / k.sum()


def blur(x: torch.Tensor, sigma: float, border: str = "reflect") -> torch.Tensor:
    """Separable Gaussian blur of [N, C, H, W]; border 'reflect' or 'zeros'."""
    if sigma <= 0:
        return x
    n, c, h, w = x.shape
    k = gauss_kernel(sigma, x.device)
    r = (k.numel() - 1) // 2
    if border == "reflect":
        xp = reflect_pad(x, r, r, r, r)
    else:
        xp = F.pad(x, (r, r, r, r))
    kx = k.view(1, 1, 1, -1).expand(c, 1, 1, -1)
    ky = k.view(1, 1, -1, 1).expand(c, 1, -1, 1)
    return F.conv2d(F.conv2d(xp, kx, groups=c), ky, groups=c)


def big_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur; wide ones run on a downsampled copy (used for padding only)."""
    if sigma <= 6.0:
        return blur(x, sigma)
    f = int(sigma // 3)
    h, w = x.shape[-2:]
    small = F.interpolate(x, size=(max(1, round(h / f)), max(1, round(w / f))), mode="area")
    small = blur(small, sigma / f)
    return F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)


def resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    shrinking = size[0] < x.shape[-2] or size[1] < x.shape[-1]
    return F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=shrinking).clamp_(0.0, 1.0)


def norm_matrix(h: int, w: int) -> np.ndarray:
    """pixel-centre coords -> grid_sample normalised coords (align_corners=False)."""
    return np.array([[2.0 / w, 0.0, 1.0 / w - 1.0], [0.0, 2.0 / h, 1.0 / h - 1.0], [0.0, 0.0, 1.0]])


def warp(img: torch.Tensor, src_from_out: np.ndarray, src_hw, out_hw, mode="bilinear", padding_mode="zeros"):
    """Sample ``img`` [N, C, h, w] on an ``out_hw`` grid; ``src_from_out`` (3x3)
    maps output pixel-centre coords to ``img``'s pixel-centre coords."""
    h, w = src_hw
    oh, ow = out_hw
    theta = norm_matrix(h, w) @ src_from_out @ np.linalg.inv(norm_matrix(oh, ow))
    theta_t = torch.as_tensor(theta[:2], dtype=torch.float32, device=img.device)[None].expand(img.shape[0], 2, 3)
    grid = F.affine_grid(theta_t, [img.shape[0], img.shape[1], oh, ow], align_corners=False)
    return F.grid_sample(img, grid, mode=mode, padding_mode=padding_mode, align_corners=False)


def translate(dx: float, dy: float) -> np.ndarray:
    return np.array([[1.0, 0.0, dx], [0.0, 1.0, dy], [0.0, 0.0, 1.0]])


def scale(sx: float, sy: float, ox: float = 0.0, oy: float = 0.0) -> np.ndarray:
    return np.array([[sx, 0.0, ox], [0.0, sy, oy], [0.0, 0.0, 1.0]])
