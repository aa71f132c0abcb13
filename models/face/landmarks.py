"""Facial landmarks for FFHQ alignment: the data type (eye centres, mouth corners), the errors of the face
stage, and the landmark providers (RetinaFace from models/face/retinaface.py, mediapipe's face mesh, a dlib 68-point
predictor). Points are (x, y) in pixel-centre coordinates (see align.py)."""
from __future__ import annotations

import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Protocol, runtime_checkable

import numpy as np
import torch

MEDIAPIPE_INSTALL = 'pip install "mediapipe==0.10.14"'


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


def as_uint8_rgb(image: Any) -> np.ndarray:
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
        img = as_uint8_rgb(image)
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
        img = as_uint8_rgb(image)
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
    """Eye centres and mouth corners from RetinaFace's five points (models/face/retinaface.py), largest box first.

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
