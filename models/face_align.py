"""FFHQ-style face alignment and paste-back for StyleGAN encoders.

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

import math
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Protocol, Sequence, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "FaceAlignError",
    "NoFaceFound",
    "BatchSizeMismatch",
    "MissingDependencyError",
    "FaceLandmarks",
    "as_face_landmarks",
    "LandmarkProvider",
    "MediaPipeLandmarks",
    "DlibLandmarks",
    "AlignRecord",
    "ffhq_quad",
    "align_faces",
    "paste_back",
    "face_mask",
    "MEDIAPIPE_INSTALL",
    "MASK_SHAPES",
]

MEDIAPIPE_INSTALL = 'pip install "mediapipe==0.10.14"'
MASK_SHAPES = ("ellipse", "square", "face")
PADDING_MODES = ("blur", "reflect", "zeros")
_MASK_RES = 256


# ---------------------------------------------------------------------------
# Errors


class FaceAlignError(ValueError):
    """Base class for the alignment errors that depend on the input data."""


class NoFaceFound(FaceAlignError):
    """No (or not enough) faces in image ``index`` of the batch."""

    def __init__(self, index: int, detail: str = ""):
        self.index = int(index)
        msg = f"no face found in image {self.index} of the batch"
        if detail:
            msg += f" ({detail})"
        super().__init__(msg)


class BatchSizeMismatch(FaceAlignError):
    """The images, edited faces and align records do not line up."""


class MissingDependencyError(ImportError):
    """An optional landmark backend is not installed."""


# ---------------------------------------------------------------------------
# Landmarks


def _point(p: Any) -> np.ndarray:
    a = np.asarray(p, dtype=np.float64).reshape(-1)
    if a.shape != (2,) or not np.all(np.isfinite(a)):
        raise ValueError(f"expected a finite (x, y) point, got {p!r}")
    return a


@dataclass
class FaceLandmarks:
    """The four points the FFHQ recipe needs, in pixel-centre ``(x, y)``.

    ``eye_left``/``mouth_left`` are on the *image* left, i.e. the subject's
    right eye / mouth corner (the FFHQ/iBUG-68 "left").  ``points`` keeps the
    detector's raw points (68 for dlib, 478 for the MediaPipe mesh) if any.
    """

    eye_left: np.ndarray
    eye_right: np.ndarray
    mouth_left: np.ndarray
    mouth_right: np.ndarray
    points: np.ndarray | None = None
    score: float | None = None
    source: str = "user"

    def __post_init__(self):
        self.eye_left = _point(self.eye_left)
        self.eye_right = _point(self.eye_right)
        self.mouth_left = _point(self.mouth_left)
        self.mouth_right = _point(self.mouth_right)
        if self.points is not None:
            self.points = np.asarray(self.points, dtype=np.float64).reshape(-1, 2)

    def as_array(self) -> np.ndarray:
        """``(4, 2)``: eye_left, eye_right, mouth_left, mouth_right."""
        return np.stack([self.eye_left, self.eye_right, self.mouth_left, self.mouth_right])

    @property
    def area(self) -> float:
        """Area of the bounding box of the points (used to sort faces)."""
        pts = self.points if self.points is not None and len(self.points) else self.as_array()
        span = pts.max(axis=0) - pts.min(axis=0)
        return float(span[0] * span[1])

    @classmethod
    def from_ibug68(cls, lm: Any, **kw) -> "FaceLandmarks":
        """From the 68-point iBUG/dlib layout (what the FFHQ metadata uses):
        eye centres are the means of the 6-point eye contours 36-41 / 42-47,
        mouth corners are points 48 and 54."""
        lm = np.asarray(lm, dtype=np.float64).reshape(68, 2)
        kw.setdefault("source", "ibug68")
        return cls(lm[36:42].mean(axis=0), lm[42:48].mean(axis=0), lm[48], lm[54], points=lm, **kw)


# MediaPipe face mesh indices (478 points with refine_landmarks=True).  The six
# contour points per eye are the ones matching the iBUG-68 eye contours
# (outer corner, two upper lid points, inner corner, two lower lid points).
MP_EYE_LEFT = (33, 160, 158, 133, 153, 144)  # image left / subject's right
MP_EYE_RIGHT = (362, 385, 387, 263, 373, 380)  # image right / subject's left
MP_IRIS_LEFT = 468
MP_IRIS_RIGHT = 473
MP_MOUTH_LEFT = 61
MP_MOUTH_RIGHT = 291


def _from_mesh(pts: np.ndarray, eye_mode: str = "contour", **kw) -> FaceLandmarks:
    if eye_mode == "iris":
        if len(pts) < 478:
            raise ValueError("eye_mode='iris' needs the 478-point refined mesh")
        el, er = pts[MP_IRIS_LEFT], pts[MP_IRIS_RIGHT]
    elif eye_mode == "contour":
        el, er = pts[list(MP_EYE_LEFT)].mean(axis=0), pts[list(MP_EYE_RIGHT)].mean(axis=0)
    else:
        raise ValueError(f"eye_mode must be 'contour' or 'iris', not {eye_mode!r}")
    kw.setdefault("source", "mediapipe")
    return FaceLandmarks(el, er, pts[MP_MOUTH_LEFT], pts[MP_MOUTH_RIGHT], points=pts, **kw)


_DICT_KEYS = {
    "eye_left": ("eye_left", "left_eye"),
    "eye_right": ("eye_right", "right_eye"),
    "mouth_left": ("mouth_left", "left_mouth", "mouth_corner_left"),
    "mouth_right": ("mouth_right", "right_mouth", "mouth_corner_right"),
}


def as_face_landmarks(obj: Any) -> FaceLandmarks:
    """Normalise user landmarks to :class:`FaceLandmarks`.

    Accepts a :class:`FaceLandmarks`; a mapping with keys ``eye_left``,
    ``eye_right``, ``mouth_left``, ``mouth_right`` (image left/right); or an
    array of shape ``(68, 2)`` (iBUG/dlib), ``(468|478, 2)`` (MediaPipe mesh
    in pixels), ``(5, 2)`` (eye_left, eye_right, nose, mouth_left, mouth_right
    -- the RetinaFace/InsightFace order) or ``(4, 2)`` (eye_left, eye_right,
    mouth_left, mouth_right).
    """
    if isinstance(obj, FaceLandmarks):
        return obj
    if isinstance(obj, Mapping):
        vals = {}
        for name, keys in _DICT_KEYS.items():
            for k in keys:
                if k in obj:
                    vals[name] = obj[k]
                    break
            else:
                raise ValueError(f"landmark mapping lacks {name!r} (has {sorted(obj)})")
        return FaceLandmarks(**vals, source="user")
    if isinstance(obj, torch.Tensor):
        obj = obj.detach().cpu().numpy()
    a = np.asarray(obj, dtype=np.float64)
    if a.ndim != 2 or a.shape[1] != 2:
        raise ValueError(f"landmarks must be an (N, 2) array, got shape {a.shape}")
    n = a.shape[0]
    if n == 68:
        return FaceLandmarks.from_ibug68(a)
    if n in (468, 478):
        return _from_mesh(a)
    if n == 5:
        return FaceLandmarks(a[0], a[1], a[3], a[4], points=a, source="5point")
    if n == 4:
        return FaceLandmarks(a[0], a[1], a[2], a[3], points=a, source="4point")
    raise ValueError(f"don't know a landmark layout with {n} points (use 68, 478, 5 or 4)")


@runtime_checkable
class LandmarkProvider(Protocol):
    """Anything with ``detect_landmarks(uint8 HxWx3 RGB array) -> list``.

    The list holds one :class:`FaceLandmarks` (or anything
    :func:`as_face_landmarks` accepts) per face, largest face first; an empty
    list means no face.
    """

    def detect_landmarks(self, image: np.ndarray) -> list: ...


def _as_uint8_rgb(image: Any) -> np.ndarray:
    if isinstance(image, torch.Tensor):
        t = image.detach()
        if t.is_floating_point():
            t = (t.clamp(0, 1) * 255).round()
        image = t.to(torch.uint8).cpu().numpy()
    a = np.asarray(image)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    if a.ndim != 3 or a.shape[2] not in (3, 4):
        raise ValueError(f"expected an HxWx3 image, got shape {a.shape}")
    a = a[..., :3]
    if a.dtype != np.uint8:
        if np.issubdtype(a.dtype, np.floating):
            a = np.clip(np.rint(a * 255.0), 0, 255)
        a = a.astype(np.uint8)
    return np.ascontiguousarray(a)


def _sort_largest_first(faces: list[FaceLandmarks]) -> list[FaceLandmarks]:
    return sorted(faces, key=lambda f: f.area, reverse=True)


class MediaPipeLandmarks:
    """Landmarks from the MediaPipe face mesh (optional dependency).

    Uses the legacy ``mediapipe.solutions.face_mesh`` API of mediapipe 0.10.x,
    whose wheels ship the face detector and mesh models, so it runs offline.
    Install with ``pip install "mediapipe==0.10.14"``.

    ``eye_mode="contour"`` (default) averages six eye-contour points like the
    FFHQ recipe averages the dlib eye contours; ``"iris"`` uses the iris
    centres instead (follows gaze, so not what FFHQ did).

    The MediaPipe detector is the short-range model: it finds faces that fill
    a reasonable part of the picture (selfie / portrait framing), and may miss
    small faces in wide group shots.
    """

    def __init__(self, max_num_faces: int = 4, min_detection_confidence: float = 0.5, eye_mode: str = "contour"):
        if eye_mode not in ("contour", "iris"):
            raise ValueError(f"eye_mode must be 'contour' or 'iris', not {eye_mode!r}")
        mp = _import_mediapipe()
        self.eye_mode = eye_mode
        self._lock = threading.Lock()
        self._mesh = mp.solutions.face_mesh.FaceMesh(
            static_image_mode=True,
            max_num_faces=int(max_num_faces),
            refine_landmarks=True,
            min_detection_confidence=float(min_detection_confidence),
        )

    def detect_landmarks(self, image: Any) -> list[FaceLandmarks]:
        img = _as_uint8_rgb(image)
        h, w = img.shape[:2]
        with self._lock, warnings.catch_warnings():
            # protobuf 4.x deprecation noise from inside mediapipe 0.10
            warnings.filterwarnings("ignore", message=r"SymbolDatabase\.GetPrototype")
            result = self._mesh.process(img)
        faces = []
        for face in result.multi_face_landmarks or ():
            # Normalised mesh coordinates run over the whole image extent;
            # convert to pixel-centre coordinates.
            pts = np.array([[p.x * w - 0.5, p.y * h - 0.5] for p in face.landmark], dtype=np.float64)
            faces.append(_from_mesh(pts, self.eye_mode))
        return _sort_largest_first(faces)

    __call__ = detect_landmarks

    def close(self) -> None:
        mesh, self._mesh = getattr(self, "_mesh", None), None
        if mesh is not None:
            mesh.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _import_mediapipe():
    try:
        import mediapipe as mp  # noqa: PLC0415 - optional dependency
    except ImportError as e:
        raise MissingDependencyError(
            "MediaPipe face landmarks need the optional package mediapipe 0.10.x "
            f"(it bundles its face models and runs offline). Install it with: {MEDIAPIPE_INSTALL}"
        ) from e
    solutions = getattr(mp, "solutions", None)
    if solutions is None or not hasattr(solutions, "face_mesh"):
        raise MissingDependencyError(
            f"mediapipe {getattr(mp, '__version__', '?')} lacks the legacy "
            f"mediapipe.solutions.face_mesh API this node uses. Install that release: {MEDIAPIPE_INSTALL}"
        )
    return mp


class DlibLandmarks:
    """Landmarks from dlib's frontal face detector + a 68-point predictor.

    ``predictor_path`` is the user's ``shape_predictor_68_face_landmarks.dat``
    (the predictor FFHQ was aligned with).  Both dlib and the file are
    optional; constructing this without either raises a clear error.
    ``upsample`` is the number of times the detector upsamples the image
    (finds smaller faces, slower).
    """

    def __init__(self, predictor_path: str | Path, upsample: int = 1):
        path = Path(predictor_path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(
                f"dlib landmark predictor not found: {str(path)!r}. Download "
                "shape_predictor_68_face_landmarks.dat (dlib model files, bz2-compressed), "
                "decompress it and pass its path."
            )
        try:
            import dlib  # noqa: PLC0415 - optional dependency
        except ImportError as e:
            raise MissingDependencyError(
                "dlib landmarks need the optional package dlib (pip install dlib; it compiles "
                "from source and needs cmake and a C++ compiler). MediaPipeLandmarks "
                f"is the easier option: {MEDIAPIPE_INSTALL}"
            ) from e
        self.path = path
        self.upsample = int(upsample)
        self._lock = threading.Lock()
        self._detector = dlib.get_frontal_face_detector()
        self._predictor = dlib.shape_predictor(str(path))

    def detect_landmarks(self, image: Any) -> list[FaceLandmarks]:
        img = _as_uint8_rgb(image)
        faces = []
        with self._lock:
            rects = list(self._detector(img, self.upsample))
            rects.sort(key=lambda r: r.width() * r.height(), reverse=True)
            for r in rects:
                shape = self._predictor(img, r)
                pts = np.array([[shape.part(i).x, shape.part(i).y] for i in range(68)], dtype=np.float64)
                faces.append(FaceLandmarks.from_ibug68(pts, source="dlib"))
        return faces  # already largest detector box first

    __call__ = detect_landmarks


class RetinaFaceLandmarks:
    """Eye centres and mouth corners from RetinaFace's five points (models/retinaface.py), largest box first.

    ``detector`` is a loaded :class:`retinaface.RetinaFace` on any device; ``detect_batch`` runs a whole
    batch of same-size images in one forward. FFHQ's recipe takes exactly these four points (from the
    68-point layout it averages each eye contour); the nose is kept in ``points``.
    """

    def __init__(self, detector, threshold: float = 0.8):
        self.detector = detector
        self.threshold = float(threshold)

    @staticmethod
    def _as_batch(images: Any) -> torch.Tensor:
        t = images if isinstance(images, torch.Tensor) else torch.from_numpy(np.asarray(images))
        if t.dim() == 3:
            t = t[None]
        if t.dim() != 4 or t.shape[-1] not in (3, 4):
            raise ValueError(f"expected [B, H, W, 3] images, got shape {tuple(t.shape)}")
        t = t[..., :3]
        t = t.float() / 255.0 if not t.is_floating_point() else t.float()
        return t.permute(0, 3, 1, 2)

    def detect_batch(self, images: Any) -> list[list[FaceLandmarks]]:
        found = self.detector.detect(self._as_batch(images), threshold=self.threshold)
        out = []
        for faces in found:
            faces = sorted(faces, key=lambda f: float(np.prod(np.clip(f.box[2:] - f.box[:2], 0, None))), reverse=True)
            out.append([FaceLandmarks(f.points[0], f.points[1], f.points[3], f.points[4], points=f.points,
                                      score=f.score, source="retinaface") for f in faces])
        return out

    def detect_landmarks(self, image: Any) -> list[FaceLandmarks]:
        return self.detect_batch(image)[0]

    __call__ = detect_landmarks


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


# ---------------------------------------------------------------------------
# Tensor helpers


def _as_image_list(images: Any, device, what: str) -> tuple[list[torch.Tensor], bool]:
    """-> list of [3, H, W] float tensors, and whether the input was a batch tensor."""
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
        if t.dtype == torch.uint8:
            t = t.float() / 255.0
        elif not t.is_floating_point():
            t = t.float()
        out.append(t.to(device=device, dtype=torch.float32).permute(2, 0, 1).contiguous())
    return out, batched


def _reflect_index(n: int, before: int, after: int, device) -> torch.Tensor:
    """Indices of numpy's 'reflect' padding (edge not repeated), any pad size."""
    idx = torch.arange(-before, n + after, device=device)
    if n == 1:
        return torch.zeros_like(idx)
    period = 2 * (n - 1)
    idx = idx.remainder(period)
    return torch.where(idx >= n, period - idx, idx)


def _reflect_pad(x: torch.Tensor, left: int, right: int, top: int, bottom: int) -> torch.Tensor:
    h, w = x.shape[-2:]
    x = x.index_select(-1, _reflect_index(w, left, right, x.device))
    return x.index_select(-2, _reflect_index(h, top, bottom, x.device))


def _gauss_kernel(sigma: float, device) -> torch.Tensor:
    r = max(1, int(math.ceil(3.0 * sigma)))
    xs = torch.arange(-r, r + 1, device=device, dtype=torch.float32)
    k = torch.exp(-0.5 * (xs / sigma) ** 2)
    return k / k.sum()


def _blur(x: torch.Tensor, sigma: float, border: str = "reflect") -> torch.Tensor:
    """Separable Gaussian blur of [N, C, H, W]; border 'reflect' or 'zeros'."""
    if sigma <= 0:
        return x
    n, c, h, w = x.shape
    k = _gauss_kernel(sigma, x.device)
    r = (k.numel() - 1) // 2
    if border == "reflect":
        xp = _reflect_pad(x, r, r, r, r)
    else:
        xp = F.pad(x, (r, r, r, r))
    kx = k.view(1, 1, 1, -1).expand(c, 1, 1, -1)
    ky = k.view(1, 1, -1, 1).expand(c, 1, -1, 1)
    return F.conv2d(F.conv2d(xp, kx, groups=c), ky, groups=c)


def _big_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur; wide ones run on a downsampled copy (used for padding only)."""
    if sigma <= 6.0:
        return _blur(x, sigma)
    f = int(sigma // 3)
    h, w = x.shape[-2:]
    small = F.interpolate(x, size=(max(1, round(h / f)), max(1, round(w / f))), mode="area")
    small = _blur(small, sigma / f)
    return F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)


def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    shrinking = size[0] < x.shape[-2] or size[1] < x.shape[-1]
    return F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=shrinking).clamp_(0.0, 1.0)


def _norm_matrix(h: int, w: int) -> np.ndarray:
    """pixel-centre coords -> grid_sample normalised coords (align_corners=False)."""
    return np.array([[2.0 / w, 0.0, 1.0 / w - 1.0], [0.0, 2.0 / h, 1.0 / h - 1.0], [0.0, 0.0, 1.0]])


def _warp(img: torch.Tensor, src_from_out: np.ndarray, src_hw, out_hw, mode="bilinear", padding_mode="zeros"):
    """Sample ``img`` [N, C, h, w] on an ``out_hw`` grid; ``src_from_out`` (3x3)
    maps output pixel-centre coords to ``img``'s pixel-centre coords."""
    h, w = src_hw
    oh, ow = out_hw
    theta = _norm_matrix(h, w) @ src_from_out @ np.linalg.inv(_norm_matrix(oh, ow))
    theta_t = torch.as_tensor(theta[:2], dtype=torch.float32, device=img.device)[None].expand(img.shape[0], 2, 3)
    grid = F.affine_grid(theta_t, [img.shape[0], img.shape[1], oh, ow], align_corners=False)
    return F.grid_sample(img, grid, mode=mode, padding_mode=padding_mode, align_corners=False)


def _translate(dx: float, dy: float) -> np.ndarray:
    return np.array([[1.0, 0.0, dx], [0.0, 1.0, dy], [0.0, 0.0, 1.0]])


def _scale(sx: float, sy: float, ox: float = 0.0, oy: float = 0.0) -> np.ndarray:
    return np.array([[sx, 0.0, ox], [0.0, sy, oy], [0.0, 0.0, 1.0]])


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
    work_from_src = _translate(-x0, -y0)
    # 2. Shrink with anti-aliasing so the quad is at most T pixels across.
    if qsize > T:
        r = T / qsize
        h, w = work.shape[-2:]
        nh, nw = max(1, int(round(h * r))), max(1, int(round(w * r)))
        sy, sx = _resize_coords(h, nh), _resize_coords(w, nw)
        work = _resize(work, (nh, nw))
        work_from_src = _scale(sx[0], sy[0], sx[1], sy[1]) @ work_from_src
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
            work = _reflect_pad(work, pl, pr, pt, pb)
            work_from_src = _translate(pl, pt) @ work_from_src
            if padding == "blur":
                work = _fade_padding(work, (pl, pr, pt, pb), qsize_w)
    # 4. One affine warp to T x T, then anti-aliased downsample to size.
    src_from_T = _source_from_aligned(quad, T)
    out = _warp(work, work_from_src @ src_from_T, work.shape[-2:], (T, T))
    if T != size:
        out = _resize(out, (size, size))
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
    blurred = _big_blur(x, qsize * 0.02)
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
    imgs, _ = _as_image_list(images, device, "images")
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
            faces = detector.detect_landmarks(_as_uint8_rgb(img.permute(1, 2, 0)))
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
    imgs, _ = _as_image_list([image], device or "cpu", "image")
    img = imgs[0]
    quad = np.asarray(quad, dtype=np.float64).reshape(4, 2)
    qsize = float(np.hypot(*(quad[3] - quad[0])))
    _, H, W = img.shape
    record = AlignRecord.from_quad((H, W), quad, int(output_size), **record_kw)
    return _align_one(img, quad, qsize, int(output_size), int(supersample), padding).permute(1, 2, 0), record


# ---------------------------------------------------------------------------
# Paste back


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
        m = _blur(m, float(feather) * size, border="zeros")
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
    origs, batched = _as_image_list(original, device, "original")
    edits, _ = _as_image_list(edited_aligned, device, "edited_aligned")
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
            edit = _resize(edit, (S_use, S_use))
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
            warped = _warp(edit, a_from_s @ _translate(x0, y0), (S_use, S_use), region, padding_mode="border")
            m = _warp(mask_a, m_from_s @ _translate(x0, y0), (S_mask, S_mask), region, padding_mode="zeros")
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
