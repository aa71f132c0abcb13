"""Paste-back: an edited, aligned face warped back into its photo with a feathered mask of a chosen shape and
optional colour matching (LAB or RGB statistics inside the mask); pixels outside the pasted square are returned
unchanged. The inverse of face_align.py's mapping (AlignRecord)."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from .face_align import AlignRecord
from .face_image_ops import as_image_list, blur, resize, translate, warp
from .face_landmarks import BatchSizeMismatch

MASK_SHAPES = ("ellipse", "square", "face")
_MASK_RES = 256


def face_mask(size: int, shape: str = "ellipse", margin: float = 0.1, feather: float = 0.04, device=None) -> torch.Tensor:
    """Soft mask ``[size, size]`` in aligned-face space.

    ``shape``: ``"ellipse"`` (inscribed ellipse, inset by ``margin``),
    ``"square"`` (the square inset by ``margin``) or ``"face"`` (a fixed
    ellipse around forehead, cheeks and chin of an FFHQ-aligned face: centre
    (0.5, 0.56), semi-axes (0.30, 0.36) of the side; ``margin`` is ignored).
    ``margin`` and ``feather`` (Gaussian sigma) are fractions of the side.
    The hard edge of the shape is the mask's 50 % contour.
    """
    if shape not in MASK_SHAPES:
        raise ValueError(f"mask shape must be one of {MASK_SHAPES}, not {shape!r}")
    c = (torch.arange(size, device=device, dtype=torch.float32) + 0.5) / size  # 0..1
    u, v = c[None, :], c[:, None]
    if shape == "face":
        hard = ((u - 0.5) / 0.30) ** 2 + ((v - 0.56) / 0.36) ** 2 <= 1.0
    else:
        r = 0.5 - float(margin)
        if r <= 0:
            raise ValueError("mask margin must be below 0.5")
        if shape == "ellipse":
            hard = (u - 0.5) ** 2 + (v - 0.5) ** 2 <= r * r
        else:
            hard = ((u - 0.5).abs() <= r) & ((v - 0.5).abs() <= r)
    m = hard.float()[None, None]
    if feather > 0:
        m = blur(m, float(feather) * size, border="zeros")
    return m[0, 0].clamp_(0.0, 1.0)


def _weighted_stats(x: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    ws = w.sum()
    mean = (x * w).sum(dim=(-2, -1), keepdim=True) / ws
    var = ((x - mean) ** 2 * w).sum(dim=(-2, -1), keepdim=True) / ws
    return mean, var.clamp_min(1e-12).sqrt()


def _color_match(src: torch.Tensor, ref: torch.Tensor, w: torch.Tensor, space: str) -> torch.Tensor:
    """Match per-channel mean/std of ``src`` to ``ref`` [1, 3, h, w] under weights ``w`` [1, 1, h, w]."""
    if float(w.sum()) < 1.0:
        return src
    if space == "lab":
        import kornia.color  # noqa: PLC0415

        a, b = kornia.color.rgb_to_lab(src.clamp(0, 1)), kornia.color.rgb_to_lab(ref.clamp(0, 1))
    else:
        a, b = src, ref
    ma, sa = _weighted_stats(a, w)
    mb, sb = _weighted_stats(b, w)
    gain = (sb / sa).clamp(0.5, 2.0)
    a = (a - ma) * gain + mb
    if space == "lab":
        return kornia.color.lab_to_rgb(a, clip=True)
    return a.clamp(0.0, 1.0)


def paste_back(
    original: Any,
    edited_aligned: Any,
    records: Sequence[AlignRecord],
    *,
    feather: float = 0.04,
    mask_shape: str = "ellipse",
    mask_margin: float = 0.1,
    color_match: bool | str = True,
    device: torch.device | str | None = None,
) -> tuple[Any, Any]:
    """Warp edited aligned faces back into their photos.

    ``original``: ``[B, H, W, 3]`` tensor or list of ``[H, W, 3]`` images (the
    images :func:`align_faces` got); ``edited_aligned``: ``[B, S, S, 3]``
    (any ``S``; the records are rescaled); ``records``: one per image.

    The blend mask is :func:`face_mask` (``mask_shape``, ``mask_margin``,
    ``feather`` as fractions of the aligned side) warped into the photo.
    ``color_match`` (``True``/``"lab"``, ``"rgb"`` or ``False``) matches the
    per-channel mean and standard deviation of the edited face to the
    original's inside the mask before blending (gain clamped to 0.5..2).

    Returns ``(composited, mask)``: ``[B, H, W, 3]`` and ``[B, H, W]`` tensors
    for tensor input, lists of ``[H, W, 3]`` / ``[H, W]`` for list input.
    Pixels outside the warped face square are returned unchanged.
    """
    if color_match is True:
        color_match = "lab"
    if color_match not in (False, None, "lab", "rgb"):
        raise ValueError(f"color_match must be True, False, 'lab' or 'rgb', not {color_match!r}")
    if mask_shape not in MASK_SHAPES:
        raise ValueError(f"mask_shape must be one of {MASK_SHAPES}, not {mask_shape!r}")
    if device is None:
        device = original.device if isinstance(original, torch.Tensor) else (
            original[0].device if isinstance(original, Sequence) and original and isinstance(original[0], torch.Tensor) else "cpu"
        )
    origs, batched = as_image_list(original, device, "original")
    edits, _ = as_image_list(edited_aligned, device, "edited_aligned")
    records = list(records)
    if not (len(origs) == len(edits) == len(records)):
        raise BatchSizeMismatch(
            f"batch sizes differ: {len(origs)} original image(s), {len(edits)} edited face(s), {len(records)} align record(s)"
        )

    outs, masks = [], []
    for i, (img, edit, rec) in enumerate(zip(origs, edits, records)):
        _, H, W = img.shape
        if tuple(rec.source_size) != (H, W):
            raise BatchSizeMismatch(
                f"align record {i} was made for a {rec.source_size[1]}x{rec.source_size[0]} image, "
                f"but original image {i} is {W}x{H}"
            )
        if edit.shape[-1] != edit.shape[-2]:
            raise ValueError(f"edited face {i} must be square, got {edit.shape[-1]}x{edit.shape[-2]}")
        S = edit.shape[-1]
        edit = edit[None]
        # Anti-alias: if the face is smaller in the photo than in the aligned
        # image, shrink the aligned image to about that size first.
        S_use = S
        if rec.qsize < S:
            S_use = max(1, int(round(rec.qsize)))
            edit = resize(edit, (S_use, S_use))
        a_from_s = rec.resized(S_use).aligned_from_source
        # The feathered mask is smooth: build it at <= 256 px (cheap blur) and
        # let the warp interpolate it.
        S_mask = S_use if feather <= 0 else min(S_use, _MASK_RES)
        mask_a = face_mask(S_mask, mask_shape, mask_margin, feather, device=device)[None, None]
        m_from_s = rec.resized(S_mask).aligned_from_source
        # Region of the photo covered by the warped square.
        x0 = max(int(np.floor(rec.quad[:, 0].min())) - 2, 0)
        y0 = max(int(np.floor(rec.quad[:, 1].min())) - 2, 0)
        x1 = min(int(np.ceil(rec.quad[:, 0].max())) + 3, W)
        y1 = min(int(np.ceil(rec.quad[:, 1].max())) + 3, H)
        out = img.clone()
        mask_full = torch.zeros(H, W, device=device)
        if x1 > x0 and y1 > y0:
            region = (y1 - y0, x1 - x0)
            warped = warp(edit, a_from_s @ translate(x0, y0), (S_use, S_use), region, padding_mode="border")
            m = warp(mask_a, m_from_s @ translate(x0, y0), (S_mask, S_mask), region, padding_mode="zeros")
            m = m.clamp_(0.0, 1.0)
            orig_r = img[None, :, y0:y1, x0:x1]
            if color_match:
                warped = _color_match(warped, orig_r, m, color_match)
            blended = orig_r + (warped - orig_r) * m
            out[:, y0:y1, x0:x1] = blended[0]
            mask_full[y0:y1, x0:x1] = m[0, 0]
        outs.append(out.permute(1, 2, 0))
        masks.append(mask_full)
    if batched and len({tuple(o.shape) for o in outs}) == 1:
        return torch.stack(outs), torch.stack(masks)
    return outs, masks
