"""Paste-back: an edited, aligned face warped back into its photo with a feathered mask of a chosen shape and
optional colour matching (LAB or RGB statistics inside the mask), or with a caller's mask in aligned-crop space (e.g.
STIT's stitching region); pixels outside the pasted square are returned unchanged. The inverse of align.py's mapping
(AlignRecord)."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

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


_SMALL_KERNELS = (None, (0.25, 0.5, 0.25), (0.0625, 0.25, 0.375, 0.25, 0.0625),
                  (0.03125, 0.109375, 0.21875, 0.28125, 0.21875, 0.109375, 0.03125))


def feather_crop_mask(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """A caller's mask [N, 1, S, S] softened the way STIT's feathered paste does it: shrunk by ``radius`` pixels (a
    minimum over a (2r+1) square, nothing beyond the crop's edge) and then blurred over the same (2r+1) support
    (Gaussian, the sigma OpenCV picks for that kernel), so the soft edge stays inside the region. 0: unchanged."""
    radius = int(radius)
    if radius <= 0:
        return mask
    k = 2 * radius + 1
    # the minimum is separable: rows then columns (a k x k pool would cost k times more)
    m = -F.max_pool2d(-F.pad(mask, (radius, radius, 0, 0)), (1, k), stride=1)
    m = -F.max_pool2d(-F.pad(m, (0, 0, radius, radius)), (k, 1), stride=1)
    if radius < len(_SMALL_KERNELS):  # OpenCV's fixed kernels for sizes 3, 5 and 7
        g = torch.tensor(_SMALL_KERNELS[radius], device=mask.device, dtype=mask.dtype)
    else:
        sigma = 0.3 * ((k - 1) * 0.5 - 1) + 0.8
        xs = torch.arange(-radius, radius + 1, device=mask.device, dtype=mask.dtype)
        g = torch.exp(-0.5 * (xs / sigma) ** 2)
    g = g / g.sum()
    # OpenCV's default border (mirrored without repeating the edge pixel); a mask too small for that is padded
    # with its edge
    small = radius >= min(m.shape[-2:])
    m = F.pad(m, (radius, radius, radius, radius), mode="replicate" if small else "reflect")
    m = F.conv2d(m, g.view(1, 1, 1, -1))
    return F.conv2d(m, g.view(1, 1, -1, 1)).clamp_(0.0, 1.0)


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
    the whole photo [3, H, W] on any device (a view is enough: only the region is read). ``crop_mask``: a caller's
    mask [s, s] in aligned-crop space used instead of the shape, ``feather`` then being STIT's radius as a fraction
    of its side."""

    def __init__(self, i, img, edit, rec, feather, mask_shape, mask_margin, device, crop_mask=None):
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
        if crop_mask is not None:
            if crop_mask.dim() != 2 or crop_mask.shape[0] != crop_mask.shape[1]:
                raise ValueError(f"crop mask {i} must be a square [S, S] mask, got {tuple(crop_mask.shape)}")
            mask_a = crop_mask.to(device=device, dtype=torch.float32)[None, None].clamp(0.0, 1.0)
            mask_a = feather_crop_mask(mask_a, round(float(feather) * mask_a.shape[-1]))
            if mask_a.shape[-1] > S_use:  # anti-aliased like the face; area: no ringing beyond the region
                mask_a = F.interpolate(mask_a, size=(S_use, S_use), mode="area")
            S_mask = mask_a.shape[-1]
        else:
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


def _crop_masks(crop_mask, count: int) -> list | None:
    """A caller's masks ([B, S, S], one per face or one for all, or a list of [S, S]) -> one [S, S] per face."""
    if crop_mask is None:
        return None
    masks = list(crop_mask.unbind(0)) if isinstance(crop_mask, torch.Tensor) and crop_mask.dim() == 3 else (
        [crop_mask] if isinstance(crop_mask, torch.Tensor) else list(crop_mask))
    if len(masks) == 1:
        masks = masks * count
    if len(masks) != count:
        raise BatchSizeMismatch(f"{len(masks)} crop masks for {count} faces (give one per face, or one for all)")
    return masks


def paste_color_stats(
    original: Any,
    edited_aligned: Any,
    records: Sequence[AlignRecord],
    *,
    feather: float = 0.04,
    mask_shape: str = "ellipse",
    mask_margin: float = 0.1,
    color_match: bool | str = "lab",
    crop_mask: Any = None,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The colour statistics :func:`paste_back` would match, per image: ([B, 4, 3] float32 on the CPU, rows: the
    edited face's mean and std, then the photo's; [B] bool, False where the mask misses the photo). For video, smooth them over
    time and hand them back to :func:`paste_back` as ``color_stats``."""
    origs, edits, records, _, device, space = _prepare(original, edited_aligned, records, device, color_match)
    if not space:
        raise ValueError("color_match is off: there are no statistics to compute")
    stats, valid = torch.zeros(len(origs), 4, 3), torch.zeros(len(origs), dtype=torch.bool)
    crop_masks = _crop_masks(crop_mask, len(origs))
    for i, (img, edit, rec) in enumerate(zip(origs, edits, records)):
        pasted = _Pasted(i, img, edit, rec, feather, mask_shape, mask_margin, device,
                         None if crop_masks is None else crop_masks[i])
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
    crop_mask: Any = None,
    device: torch.device | str | None = None,
) -> tuple[Any, Any]:
    """Warp edited aligned faces back into their photos.

    ``original``: ``[B, H, W, 3]`` tensor or list of ``[H, W, 3]`` images (the
    images :func:`align_faces` got); ``edited_aligned``: ``[B, S, S, 3]``
    (any ``S``; the records are rescaled); ``records``: one per image.

    The blend mask is :func:`face_mask` (``mask_shape``, ``mask_margin``,
    ``feather`` as fractions of the aligned side) warped into the photo;
    with ``crop_mask`` ([B, s, s] in aligned-crop space, any square size,
    one per image or one for all) that mask is warped instead, shrunk and
    blurred by ``feather`` × s pixels as STIT's feathered paste (0: as is).
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

    crop_masks = _crop_masks(crop_mask, len(origs))
    outs, masks = [], []
    for i, (img, edit, rec) in enumerate(zip(origs, edits, records)):
        pasted = _Pasted(i, img, edit, rec, feather, mask_shape, mask_margin, device,
                         None if crop_masks is None else crop_masks[i])
        if into is not None:
            out, mask_full = into[0][i], into[1][i]
        else:
            # a copy: the photo is a view of the caller's tensor, which must not be written to
            out = as_float(img, device).permute(1, 2, 0).clone(memory_format=torch.contiguous_format)
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
