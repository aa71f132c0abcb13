"""FFHQ-style face alignment for StyleGAN encoders (paste-back: paste.py; landmarks: landmarks.py).

Encoders trained on FFHQ (pSp, e4e, Style Transformer, ...) only work on crops
aligned the way the FFHQ data set was made.  This module

* finds facial landmarks with an optional detector (MediaPipe face mesh or a
  user supplied dlib 68-point predictor), or takes landmarks from the caller;
* computes the FFHQ crop square ("quad") from the eye and mouth positions with
  the formulas of the FFHQ recipe;
* resamples that square into an ``S x S`` image with torch (any device) in one
  affine warp, with anti-aliasing when shrinking and the FFHQ style
  reflect + blur padding where the square leaves the photo;
* warps an edited aligned face back into the photo with a feathered mask and
  optional colour matching.

Nothing here imports ComfyUI.  Images are channels-last floats in ``0..1``
(ComfyUI IMAGE convention, ``[B, H, W, 3]``); masks are ``[B, H, W]`` floats.

Coordinate convention
---------------------
Points are ``(x, y)`` in *pixel-centre* coordinates: the centre of pixel
``(row j, column i)`` is ``(i, j)`` and the image covers ``[-0.5, W-0.5]``.
That is what dlib returns, and what the FFHQ landmarks use (the official script
adds 0.5 before handing the quad to PIL, whose coordinates have the origin at
the image corner).  The crop square maps onto the *outer edges* of the output
image: quad corner 0 (top left) lands at ``(-0.5, -0.5)`` in output pixel
coordinates, corner 2 at ``(S-0.5, S-0.5)``.  With that convention the mapping
is exactly the one the official script's ``QUAD`` transform plus final resize
produce, so :attr:`AlignRecord.aligned_from_source` maps a source landmark to
its position in the aligned image.

Where the eyes land
-------------------
For an upright face whose eye-to-mouth vector is perpendicular to the
eye-to-eye vector and whose eye-to-mouth distance ``h`` is at most ``1.111``
times the eye distance ``d``, the recipe puts the eyes at
``x = 0.375 S`` and ``0.625 S`` (``+/- d / (4 * 2d)`` around the centre) and
at ``y = (0.5 - 0.025 h / d) S`` -- ``0.475 S`` when ``h == d`` -- and the
mouth centre at ``y = (0.5 + 0.225 h / d) S`` (``0.725 S`` for ``h == d``).  (Positions are in continuous coordinates; subtract 0.5 for
pixel-centre coordinates.)

Differences from the official PIL pipeline
------------------------------------------
The official script shrinks the photo by an integer factor (PIL LANCZOS),
crops, reflect-pads with a blur/median fade, applies a bilinear PIL ``QUAD``
transform at 4x the output size and resizes down with LANCZOS, quantising to
uint8 in between.  Here:

* the geometry is the same mapping, applied as one affine matrix (the quad is
  a rotated square, so PIL's bilinear quad map is affine too);
* the official integer shrink rescales the quad by ``1/shrink`` in
  pixel-centre coordinates, which shifts it by up to half a shrunk pixel
  against the resized image (a rounding quirk); here shrinking keeps the
  geometry exact;
* shrinking uses torch's anti-aliased *bicubic* resize instead of LANCZOS, to
  a non-integer factor that brings the crop square to ``supersample * S``
  pixels, then a bilinear warp at that size and an anti-aliased bicubic
  downsample to ``S`` (official: supersample 4; default here 2);
* padding follows the official rule (pad when the square comes within 4 px of
  the photo edge, pad every side by at least ``0.3 * qsize``, reflect, blend
  towards a Gaussian blur of ``sigma = 0.02 * qsize`` and then towards the
  per-channel median), but large blurs are computed on a downsampled copy and
  nothing is quantised to uint8;
* everything stays in float32.

The test suite contains an independent re-implementation of the official PIL
pipeline (uint8 output) and compares on synthetic textured images, 256 px
output: mean absolute difference about 0.002 (on 0..1) for upright, rotated
and border-padded faces, about 0.008 when the official integer shrink is
involved -- of which all but about 0.003 is the official half-pixel quirk
above (a shift of at most a quarter output pixel).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from .image_ops import as_image_list, big_blur, reflect_pad, resize, scale, translate, warp
from .landmarks import BatchSizeMismatch, FaceLandmarks, LandmarkProvider, NoFaceFound, as_face_landmarks, as_uint8_rgb

PADDING_MODES = ("blur", "reflect", "zeros")


# ---------------------------------------------------------------------------
# Geometry


def ffhq_quad(face: Any) -> tuple[np.ndarray, float]:
    """The FFHQ crop square for one face: ``(quad (4, 2), qsize)``.

    Corners in the official order: top-left, bottom-left, bottom-right,
    top-right (as seen in the aligned output), pixel-centre coordinates.
    """
    f = as_face_landmarks(face)
    eye_mid = 0.5 * (f.eye_left + f.eye_right)
    eye_vec = f.eye_right - f.eye_left
    mouth_vec = 0.5 * (f.mouth_left + f.mouth_right) - eye_mid
    # Horizontal axis of the crop: the eye line blended with the normal of
    # the eye-to-mouth direction ((vx, vy) -> (-vy, vx)), then scaled to half
    # the crop size.
    half = eye_vec - np.array([-mouth_vec[1], mouth_vec[0]])
    norm = np.hypot(*half)
    if not norm > 0:
        raise ValueError("degenerate landmarks: eyes and mouth coincide")
    half = half / norm * max(np.hypot(*eye_vec) * 2.0, np.hypot(*mouth_vec) * 1.8)
    down = np.array([-half[1], half[0]])  # the horizontal axis turned 90 degrees
    centre = eye_mid + 0.1 * mouth_vec
    quad = np.stack([centre - half - down, centre - half + down, centre + half + down, centre + half - down])
    return quad, float(np.hypot(*half) * 2.0)


def _source_from_aligned(quad: np.ndarray, size: int) -> np.ndarray:
    """3x3 affine: aligned pixel-centre coords (size ``size``) -> source."""
    q0, q1, q3 = quad[0], quad[1], quad[3]
    ex = (q3 - q0) / size  # source step per output column
    ey = (q1 - q0) / size  # source step per output row
    t = q0 + 0.5 * ex + 0.5 * ey
    return np.array([[ex[0], ey[0], t[0]], [ex[1], ey[1], t[1]], [0.0, 0.0, 1.0]])


def _apply(m: np.ndarray, pts: Any) -> np.ndarray:
    p = np.asarray(pts, dtype=np.float64)
    flat = p.reshape(-1, 2)
    out = flat @ m[:2, :2].T + m[:2, 2]
    return out.reshape(p.shape)


def _resize_coords(old: int, new: int) -> np.ndarray:
    """1-D affine (scale, offset) for pixel-centre coords under a resize."""
    s = new / old
    return np.array([s, 0.5 * s - 0.5])


@dataclass
class AlignRecord:
    """How one aligned face relates to its source photo.

    ``source_size`` is ``(H, W)``; ``quad`` the FFHQ crop square in source
    pixel-centre coordinates (official corner order); the two 3x3 matrices map
    homogeneous pixel-centre ``(x, y, 1)`` between source and aligned images.
    """

    source_size: tuple[int, int]
    quad: np.ndarray
    output_size: int
    aligned_from_source: np.ndarray
    source_from_aligned: np.ndarray
    face_index: int = 0
    landmarks: FaceLandmarks | None = field(default=None, repr=False)

    @classmethod
    def from_quad(cls, source_size: tuple[int, int], quad: Any, output_size: int, **kw) -> "AlignRecord":
        quad = np.asarray(quad, dtype=np.float64).reshape(4, 2)
        s_from_a = _source_from_aligned(quad, int(output_size))
        return cls(
            source_size=(int(source_size[0]), int(source_size[1])),
            quad=quad,
            output_size=int(output_size),
            aligned_from_source=np.linalg.inv(s_from_a),
            source_from_aligned=s_from_a,
            **kw,
        )

    @property
    def qsize(self) -> float:
        return float(np.hypot(*(self.quad[3] - self.quad[0])))

    def resized(self, output_size: int) -> "AlignRecord":
        """The same crop for an aligned image of another size."""
        return AlignRecord.from_quad(
            self.source_size, self.quad, output_size, face_index=self.face_index, landmarks=self.landmarks
        )

    def to_aligned(self, points: Any) -> np.ndarray:
        return _apply(self.aligned_from_source, points)

    def to_source(self, points: Any) -> np.ndarray:
        return _apply(self.source_from_aligned, points)

    def to_dict(self) -> dict:
        """JSON-friendly summary (matrices as nested lists)."""
        return {
            "source_size": list(self.source_size),
            "quad": self.quad.tolist(),
            "output_size": self.output_size,
            "aligned_from_source": self.aligned_from_source.tolist(),
            "source_from_aligned": self.source_from_aligned.tolist(),
            "face_index": self.face_index,
        }

    @classmethod
    def from_dict(cls, d: Mapping) -> "AlignRecord":
        return cls.from_quad(d["source_size"], d["quad"], d["output_size"], face_index=int(d.get("face_index", 0)))


def _align_one(img: torch.Tensor, quad: np.ndarray, qsize: float, size: int, supersample: int, padding: str) -> torch.Tensor:
    """[3, H, W] -> [3, size, size] following the FFHQ recipe (see module doc)."""
    _, H, W = img.shape
    T = size * supersample
    # 1. Crop the quad's bounding box plus a border (like the official crop).
    border = max(int(round(qsize * 0.1)), 3)
    x0 = int(np.floor(quad[:, 0].min())) - border
    y0 = int(np.floor(quad[:, 1].min())) - border
    x1 = int(np.ceil(quad[:, 0].max())) + border + 1
    y1 = int(np.ceil(quad[:, 1].max())) + border + 1
    x0, y0 = min(max(x0, 0), W - 1), min(max(y0, 0), H - 1)
    x1, y1 = max(min(x1, W), x0 + 1), max(min(y1, H), y0 + 1)
    work = img[None, :, y0:y1, x0:x1]
    work_from_src = translate(-x0, -y0)
    # 2. Shrink with anti-aliasing so the quad is at most T pixels across.
    if qsize > T:
        r = T / qsize
        h, w = work.shape[-2:]
        nh, nw = max(1, int(round(h * r))), max(1, int(round(w * r)))
        sy, sx = _resize_coords(h, nh), _resize_coords(w, nw)
        work = resize(work, (nh, nw))
        work_from_src = scale(sx[0], sy[0], sx[1], sy[1]) @ work_from_src
        qsize_w = qsize * nw / w
    else:
        qsize_w = qsize
    quad_w = _apply(work_from_src, quad)
    # 3. Pad (reflect + blur/median fade) when the quad gets near an edge.
    if padding != "zeros":
        h, w = work.shape[-2:]
        border_w = max(int(round(qsize_w * 0.1)), 3)
        need = (
            max(border_w - int(np.floor(quad_w[:, 0].min())), 0),
            max(int(np.ceil(quad_w[:, 0].max())) - w + border_w, 0),
            max(border_w - int(np.floor(quad_w[:, 1].min())), 0),
            max(int(np.ceil(quad_w[:, 1].max())) - h + border_w, 0),
        )
        if max(need) > border_w - 4:
            p = max(int(round(qsize_w * 0.3)), 1)
            pl, pr, pt, pb = (max(n, p) for n in need)
            work = reflect_pad(work, pl, pr, pt, pb)
            work_from_src = translate(pl, pt) @ work_from_src
            if padding == "blur":
                work = _fade_padding(work, (pl, pr, pt, pb), qsize_w)
    # 4. One affine warp to T x T, then anti-aliased downsample to size.
    src_from_T = _source_from_aligned(quad, T)
    out = warp(work, work_from_src @ src_from_T, work.shape[-2:], (T, T))
    if T != size:
        out = resize(out, (size, size))
    return out[0].clamp_(0.0, 1.0)


def _fade_padding(x: torch.Tensor, pads: tuple[int, int, int, int], qsize: float) -> torch.Tensor:
    """FFHQ-style fade of a reflect-padded [1, 3, h, w] image: blend towards a
    blur (fully in the padding, ramping in over a third of the pad width
    inside the photo) and then linearly towards the median colour at the outer
    edge of the padding."""
    pl, pr, pt, pb = pads
    _, _, h, w = x.shape
    xs = torch.arange(w, device=x.device, dtype=torch.float32)
    ys = torch.arange(h, device=x.device, dtype=torch.float32)
    mx = 1.0 - torch.minimum(xs / pl, (w - 1 - xs) / pr)
    my = 1.0 - torch.minimum(ys / pt, (h - 1 - ys) / pb)
    m = torch.maximum(mx[None, :], my[:, None])[None, None]
    blurred = big_blur(x, qsize * 0.02)
    x = x + (blurred - x) * (m * 3.0 + 1.0).clamp(0.0, 1.0)
    med = x.flatten(2).median(dim=2).values[..., None, None]
    return x + (med - x) * m.clamp(0.0, 1.0)


def _pick_face(faces: Any, index: int, face_index: int) -> FaceLandmarks:
    if faces is None:
        raise NoFaceFound(index, "no landmarks given")
    if isinstance(faces, FaceLandmarks) or isinstance(faces, Mapping):
        faces = [faces]
    elif isinstance(faces, (np.ndarray, torch.Tensor)):
        a = faces.detach().cpu().numpy() if isinstance(faces, torch.Tensor) else faces
        faces = [a] if a.ndim == 2 else list(a)
    else:
        faces = list(faces)
        # a bare list of (x, y) pairs is one face, not many
        if faces and np.asarray(faces[0], dtype=object).shape == (2,) and not isinstance(faces[0], (FaceLandmarks, Mapping)):
            faces = [np.asarray(faces, dtype=np.float64)]
    if not faces:
        raise NoFaceFound(index)
    if not 0 <= face_index < len(faces):
        raise NoFaceFound(index, f"face_index {face_index} requested but only {len(faces)} face(s) found")
    return as_face_landmarks(faces[face_index])


def align_faces(
    images: Any,
    landmarks: Sequence[Any] | None = None,
    *,
    detector: LandmarkProvider | None = None,
    output_size: int = 1024,
    face_index: int = 0,
    supersample: int = 2,
    padding: str = "blur",
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, list[AlignRecord]]:
    """FFHQ-align one face per image.

    ``images``: ``[B, H, W, 3]`` float tensor (0..1) or a list of ``[H, W, 3]``
    tensors/arrays (float 0..1 or uint8; sizes may differ).

    ``landmarks``: one entry per image, each one face (anything
    :func:`as_face_landmarks` accepts) or a list of faces, largest first; or
    ``None`` to run ``detector`` (a :class:`LandmarkProvider`).
    ``face_index`` picks the face (0 = largest).

    ``supersample``: the warp runs at ``supersample * output_size`` and is
    downsampled with anti-aliasing (official FFHQ: 4).  ``padding``:
    ``"blur"`` (FFHQ reflect + blur fade), ``"reflect"`` or ``"zeros"``.

    Returns aligned faces ``[B, S, S, 3]`` on ``device`` (default: the
    images' device) and one :class:`AlignRecord` per image.  Raises
    :class:`NoFaceFound` naming the image's batch index.
    """
    if padding not in PADDING_MODES:
        raise ValueError(f"padding must be one of {PADDING_MODES}, not {padding!r}")
    size = int(output_size)
    if size < 1 or int(supersample) < 1:
        raise ValueError("output_size and supersample must be positive")
    if device is None:
        device = images.device if isinstance(images, torch.Tensor) else (
            images[0].device if isinstance(images, Sequence) and images and isinstance(images[0], torch.Tensor) else "cpu"
        )
    imgs, _ = as_image_list(images, device, "images")
    if not imgs:
        raise ValueError("no images given")
    if landmarks is None:
        if detector is None:
            raise ValueError("pass landmarks or a detector")
        if not hasattr(detector, "detect_landmarks"):
            raise TypeError("detector must have a detect_landmarks(image) method")
    elif len(landmarks) != len(imgs):
        raise BatchSizeMismatch(f"{len(landmarks)} landmark entries for {len(imgs)} images")

    out, records = [], []
    for i, img in enumerate(imgs):
        if landmarks is None:
            faces = detector.detect_landmarks(as_uint8_rgb(img.permute(1, 2, 0)))
        else:
            faces = landmarks[i]
        face = _pick_face(faces, i, int(face_index))
        quad, qsize = ffhq_quad(face)
        _, H, W = img.shape
        records.append(AlignRecord.from_quad((H, W), quad, size, face_index=int(face_index), landmarks=face))
        out.append(_align_one(img, quad, qsize, size, int(supersample), padding))
    return torch.stack(out).permute(0, 2, 3, 1).contiguous(), records


def centre_quad(height: int, width: int) -> np.ndarray:
    """The quad of the image's centred square (what a face-less image is 'aligned' to)."""
    side = float(min(height, width))
    x0, y0 = (width - side) / 2.0, (height - side) / 2.0
    return np.array([[x0, y0], [x0, y0 + side], [x0 + side, y0 + side], [x0 + side, y0]], dtype=np.float64)


def align_to_quad(image: Any, quad: Any, output_size: int, *, supersample: int = 2, padding: str = "blur",
                  device: torch.device | str | None = None, **record_kw) -> tuple[torch.Tensor, AlignRecord]:
    """Warp one image's quad (corners in FFHQ order: top-left, bottom-left, bottom-right, top-right) to an
    ``output_size`` square; returns ([S, S, 3], its AlignRecord)."""
    if padding not in PADDING_MODES:
        raise ValueError(f"padding must be one of {PADDING_MODES}, not {padding!r}")
    imgs, _ = as_image_list([image], device or "cpu", "image")
    img = imgs[0]
    quad = np.asarray(quad, dtype=np.float64).reshape(4, 2)
    qsize = float(np.hypot(*(quad[3] - quad[0])))
    _, H, W = img.shape
    record = AlignRecord.from_quad((H, W), quad, int(output_size), **record_kw)
    return _align_one(img, quad, qsize, int(output_size), int(supersample), padding).permute(1, 2, 0), record
