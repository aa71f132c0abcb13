"""Paste-back: an edited, aligned face warped back into its photo with a feathered mask of a chosen shape and
optional colour matching (LAB or RGB statistics inside the mask); pixels outside the pasted square are returned
unchanged. The inverse of align.py's mapping (AlignRecord)."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from .align import AlignRecord
from .image_ops import as_float, as_image_list, blur, resize, translate, warp
from .landmarks import BatchSizeMismatch

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


def _to_space(x: torch.Tensor, space: str) -> torch.Tensor:
    if space == "lab":
        import kornia.color  # noqa: PLC0415

        return kornia.color.rgb_to_lab(x.clamp(0, 1))
    return x


def _stats_in_space(a: torch.Tensor, b: torch.Tensor, w: torch.Tensor) -> torch.Tensor | None:
    """[4, 3]: per-channel mean and std of ``a``, then of ``b`` ([1, 3, h, w], already in the colour space)
    under weights ``w``; None where the weights cover less than one pixel."""
    if float(w.sum()) < 1.0:
        return None
    ma, sa = _weighted_stats(a, w)
    mb, sb = _weighted_stats(b, w)
    return torch.stack([ma.reshape(3), sa.reshape(3), mb.reshape(3), sb.reshape(3)])


def _apply_in_space(a: torch.Tensor, stats: torch.Tensor, space: str) -> torch.Tensor:
    """Move ``a``'s per-channel statistics from its own (rows 0, 1 of ``stats``) to the reference's (rows 2, 3);
    the gain is clamped to 0.5..2 so that a flat region is never blown up. Returns RGB."""
    ma, sa, mb, sb = (row.reshape(1, 3, 1, 1).to(a) for row in stats)
    a = (a - ma) * (sb / sa).clamp(0.5, 2.0) + mb
    if space == "lab":
        import kornia.color  # noqa: PLC0415

        return kornia.color.lab_to_rgb(a, clip=True)
    return a.clamp(0.0, 1.0)


class _Pasted:
    """One edited face warped into its photo's region: the box (x0, y0, x1, y1), the warped face, the mask and
    the photo's pixels there ([1, C, h, w] on the device); empty when the square misses the photo. ``img`` is
    the whole photo [3, H, W] on any device (a view is enough: only the region is read)."""

    def __init__(self, i, img, edit, rec, feather, mask_shape, mask_margin, device):
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
        # Anti-alias: if the face is smaller in the photo than in the aligned image, shrink the aligned image
        # to about that size first.
        S_use = S
        if rec.qsize < S:
            S_use = max(1, int(round(rec.qsize)))
            edit = resize(edit, (S_use, S_use))
        a_from_s = rec.resized(S_use).aligned_from_source
        # The feathered mask is smooth: build it at <= 256 px (cheap blur) and let the warp interpolate it.
        S_mask = S_use if feather <= 0 else min(S_use, _MASK_RES)
        mask_a = face_mask(S_mask, mask_shape, mask_margin, feather, device=device)[None, None]
        m_from_s = rec.resized(S_mask).aligned_from_source
        # Region of the photo covered by the warped square.
        self.x0 = max(int(np.floor(rec.quad[:, 0].min())) - 2, 0)
        self.y0 = max(int(np.floor(rec.quad[:, 1].min())) - 2, 0)
        self.x1 = min(int(np.ceil(rec.quad[:, 0].max())) + 3, W)
        self.y1 = min(int(np.ceil(rec.quad[:, 1].max())) + 3, H)
        self.empty = not (self.x1 > self.x0 and self.y1 > self.y0)
        if self.empty:
            return
        region = (self.y1 - self.y0, self.x1 - self.x0)
        shift = translate(self.x0, self.y0)
        self.face = warp(edit, a_from_s @ shift, (S_use, S_use), region, padding_mode="border")
        self.mask = warp(mask_a, m_from_s @ shift, (S_mask, S_mask), region, padding_mode="zeros").clamp_(0.0, 1.0)
        self.photo = as_float(img[None, :, self.y0:self.y1, self.x0:self.x1], device)

    def composite(self, out_hwc: torch.Tensor, mask_hw: torch.Tensor, space, stats=None, strength=None,
                  over: bool = False) -> None:
        """Blend into ``out_hwc`` [H, W, 3] and record the mask in ``mask_hw`` [H, W] (any device and float
        dtype), over the box only: with ``space`` ("lab"/"rgb") the face's colour statistics are first moved to
        ``stats`` ([4, 3]) or, without, to the photo's own inside the mask; ``strength`` scales the mask.
        ``over``: blend over what ``out_hwc`` already holds there (a face pasted before, in a group photo) and
        keep the larger mask value, instead of over the photo itself."""
        if self.empty:
            return
        face, m, photo = self.face, self.mask, self.photo
        if space:
            a = _to_space(face, space)
            if stats is None:
                stats = _stats_in_space(a, _to_space(photo, space), m)
            if stats is not None:
                face = _apply_in_space(a, stats, space)
        if strength is not None:
            m = m * float(strength)
        box = (slice(self.y0, self.y1), slice(self.x0, self.x1))
        if over:
            base = out_hwc[box].permute(2, 0, 1)[None].to(device=face.device, dtype=face.dtype)
            out_hwc[box] = (base + (face - base) * m)[0].permute(1, 2, 0).to(out_hwc)
            mask_hw[box] = torch.maximum(mask_hw[box], m[0, 0].to(mask_hw))
            return
        out_hwc[box] = (photo + (face - photo) * m)[0].permute(1, 2, 0).to(out_hwc)
        mask_hw[box] = m[0, 0].to(mask_hw)


def _prepare(original, edited_aligned, records, device, color_match):
    if color_match is True:
        color_match = "lab"
    if color_match not in (False, None, "lab", "rgb"):
        raise ValueError(f"color_match must be True, False, 'lab' or 'rgb', not {color_match!r}")
    if device is None:
        device = original.device if isinstance(original, torch.Tensor) else (
            original[0].device if isinstance(original, Sequence) and original and isinstance(original[0], torch.Tensor) else "cpu"
        )
    origs, batched = as_image_list(original, device, "original", views=True)  # photos are read by region
    edits, _ = as_image_list(edited_aligned, device, "edited_aligned")
    records = list(records)
    if not (len(origs) == len(edits) == len(records)):
        raise BatchSizeMismatch(
            f"batch sizes differ: {len(origs)} original image(s), {len(edits)} edited face(s), {len(records)} align record(s)"
        )
    return origs, edits, records, batched, device, color_match


def paste_color_stats(
    original: Any,
    edited_aligned: Any,
    records: Sequence[AlignRecord],
    *,
    feather: float = 0.04,
    mask_shape: str = "ellipse",
    mask_margin: float = 0.1,
    color_match: bool | str = "lab",
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The colour statistics :func:`paste_back` would match, per image: ([B, 4, 3] float32 on the CPU, rows: the
    edited face's mean and std, then the photo's; [B] bool, False where the mask misses the photo). For video, smooth them over
    time and hand them back to :func:`paste_back` as ``color_stats``."""
    origs, edits, records, _, device, space = _prepare(original, edited_aligned, records, device, color_match)
    if not space:
        raise ValueError("color_match is off: there are no statistics to compute")
    stats, valid = torch.zeros(len(origs), 4, 3), torch.zeros(len(origs), dtype=torch.bool)
    for i, (img, edit, rec) in enumerate(zip(origs, edits, records)):
        pasted = _Pasted(i, img, edit, rec, feather, mask_shape, mask_margin, device)
        if pasted.empty:
            continue
        found = _stats_in_space(_to_space(pasted.face, space), _to_space(pasted.photo, space), pasted.mask)
        if found is not None:
            stats[i], valid[i] = found.float().cpu(), True
    return stats, valid


def paste_back(
    original: Any,
    edited_aligned: Any,
    records: Sequence[AlignRecord],
    *,
    feather: float = 0.04,
    mask_shape: str = "ellipse",
    mask_margin: float = 0.1,
    color_match: bool | str = True,
    color_stats: torch.Tensor | None = None,
    strength: Sequence[float] | None = None,
    into: tuple[torch.Tensor, torch.Tensor] | None = None,
    over: bool = False,
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
    original's inside the mask before blending (gain clamped to 0.5..2);
    ``color_stats`` ([B, 4, 3], from :func:`paste_color_stats`, e.g. smoothed
    over a clip's frames) replaces the statistics measured per image.
    ``strength`` (per image, 0..1) scales the mask (a clip's fade around
    frames whose face was lost).

    Returns ``(composited, mask)``: ``[B, H, W, 3]`` and ``[B, H, W]`` tensors
    for tensor input, lists of ``[H, W, 3]`` / ``[H, W]`` for list input.
    Pixels outside the warped face square are returned unchanged. With
    ``into`` = (images [B, H, W, 3], masks [B, H, W]), already holding the
    photos and zeros, the faces are blended into those in place, over their
    boxes only (a clip's full-size frames are never copied), and they are
    returned. With ``over`` each face is blended over what ``into`` already holds (several faces of one
    photo, pasted one after another: see :func:`paste_order`) and the masks keep their maximum.
    """
    if mask_shape not in MASK_SHAPES:
        raise ValueError(f"mask_shape must be one of {MASK_SHAPES}, not {mask_shape!r}")
    origs, edits, records, batched, device, space = _prepare(original, edited_aligned, records, device, color_match)
    if color_stats is not None and tuple(color_stats.shape) != (len(origs), 4, 3):
        raise BatchSizeMismatch(f"color_stats must be [{len(origs)}, 4, 3], got {tuple(color_stats.shape)}")
    if strength is not None and len(strength) != len(origs):
        raise BatchSizeMismatch(f"{len(strength)} strengths for {len(origs)} images")
    if into is not None and (into[0].shape[0] != len(origs) or into[1].shape[0] != len(origs)):
        raise BatchSizeMismatch(f"into holds {into[0].shape[0]} images for {len(origs)} photos")

    outs, masks = [], []
    for i, (img, edit, rec) in enumerate(zip(origs, edits, records)):
        pasted = _Pasted(i, img, edit, rec, feather, mask_shape, mask_margin, device)
        if into is not None:
            out, mask_full = into[0][i], into[1][i]
        else:
            out = as_float(img, device).permute(1, 2, 0).contiguous()
            mask_full = torch.zeros(img.shape[1:], device=device)
        pasted.composite(out, mask_full, space, None if color_stats is None else color_stats[i],
                         None if strength is None else strength[i], over=over)
        outs.append(out)
        masks.append(mask_full)
    if into is not None:
        return into
    if batched and len({tuple(o.shape) for o in outs}) == 1:
        return torch.stack(outs), torch.stack(masks)
    return outs, masks


def paste_order(records: Sequence[AlignRecord], sources: Sequence[int]) -> dict[int, list[int]]:
    """Photo -> its crops in the order they are pasted: smallest face first, so where faces overlap the larger
    (closer) one ends on top; equal sizes keep the crops' order."""
    order: dict[int, list[int]] = {}
    for k in sorted(range(len(records)), key=lambda k: (records[k].qsize, k)):
        order.setdefault(int(sources[k]), []).append(k)
    return order
