"""A hostile face clip with known ground truth, for the video tests and benchmarks/bench_face_video.py.

Footage as an artist shoots it, not one smooth shot: 90 frames (at 24 fps) of two shots. In the first the
person (the astronaut's face, cut from the pack's test photo) drifts slowly, nods fast (frames 8-20: the head
turns 0.35 rad and bobs), and a dark bar passes in front of the face (frames 28-33). A hard cut at frame 45
changes the background and puts the face 194 px away and 1.3x larger (at 640x480). Then a second, smaller
face (tinted: another person) slides in from the left (frames 50-57) and stays, and the person slides out to
the right (frames 62-67) and is gone for the last 22 frames.

Everything is placed in unit coordinates (multiples of the frame's height), so the clip renders at any size;
:class:`HostileClip` holds the truth: where each face's eyes and mouth corners are in every frame (also while
hidden), whether they can be seen, the cut, the occlusion and the nod.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from example_clip import ASTRONAUT_LANDMARKS

FRAMES = 90
CUT = 45
NOD = (8, 20)  # first and last frame of the fast nod
OCCLUDED = (28, 33)  # the bar covers the face in these frames (inclusive)
ENTER = (50, 57)  # the second face slides in
EXIT = (62, 67)  # the person slides out
PATCH = (104, 10, 344, 250)  # x0, y0, x1, y1 of the face patch in the 512x512 photo
BACKGROUNDS = ((96, 112, 136), (176, 148, 112))  # per shot


@dataclass
class HostileClip:
    frames: np.ndarray | None  # uint8 [T, H, W, 3] (None when only the truth was asked for)
    person: np.ndarray  # [T, 4, 2] eyes and mouth corners of the followed person, also while hidden
    person_visible: np.ndarray  # [T] bools: on screen and not covered
    other: np.ndarray  # [T, 4, 2] the second face
    other_visible: np.ndarray
    cuts: list
    occluded: list
    nod: list

    def detections(self, noise: float = 0.0, seed: int = 0) -> list:
        """Per frame the visible faces as a detector reports them (largest first), landmarks with Gaussian
        noise of ``noise`` pixels."""
        from transedit.models.face.landmarks import FaceLandmarks

        rng = np.random.default_rng(seed)
        out = []
        for t in range(len(self.person)):
            faces = []
            for pts, seen in ((self.person[t], self.person_visible[t]), (self.other[t], self.other_visible[t])):
                p = pts + rng.normal(0.0, noise, pts.shape)
                if seen:
                    faces.append(FaceLandmarks(eye_left=p[0], eye_right=p[1], mouth_left=p[2], mouth_right=p[3]))
            out.append(sorted(faces, key=lambda f: -f.area))
        return out


def _ramp(t: float, a: float, b: float) -> float:
    return float(np.clip((t - a) / (b - a), 0.0, 1.0))


def person_motion(t: int) -> tuple[float, float, float, float]:
    """(patch side / frame height, angle, centre x, centre y in frame heights) of the person at frame t."""
    if t < CUT:
        side, x, y = 0.55, 0.50 + 0.002 * t, 0.46
        angle = 0.0
        if NOD[0] <= t <= NOD[1]:
            u = (t - NOD[0]) / (NOD[1] - NOD[0])
            angle = 0.35 * math.sin(2 * math.pi * u)
            y += 0.06 * math.sin(2 * math.pi * u)
        return side, angle, x, y
    # after the cut: 1.3x the size, 194 px (at 480 rows) to the right, then leaving to the right
    x = 0.50 + 0.002 * CUT + 194 / 480 + 0.9 * _ramp(t, EXIT[0], EXIT[1] + 1)
    return 0.55 * 1.3, 0.05 * math.sin(t / 7.0), x, 0.46


def other_motion(t: int) -> tuple[float, float, float, float]:
    """The second, smaller face: off screen until ENTER, then slides in from the left and stays."""
    x = -0.4 + 0.72 * _ramp(t, ENTER[0], ENTER[1] + 1)
    return 0.5, -0.04, x, 0.54


def _matrix(motion, height: int) -> np.ndarray:
    """Patch pixel-centre coordinates -> frame pixel-centre coordinates."""
    side, angle, cx, cy = motion
    patch_side = PATCH[2] - PATCH[0]
    k = side * height / patch_side
    c, s = math.cos(angle), math.sin(angle)
    rot = np.array([[k * c, -k * s], [k * s, k * c]])
    centre = np.array([(patch_side - 1) / 2.0] * 2)
    shift = np.array([cx * height, cy * height]) - rot @ centre
    return np.array([[rot[0, 0], rot[0, 1], shift[0]], [rot[1, 0], rot[1, 1], shift[1]], [0.0, 0.0, 1.0]])


def _points(mat: np.ndarray) -> np.ndarray:
    pts = ASTRONAUT_LANDMARKS - np.array(PATCH[:2], dtype=np.float64)
    return (np.concatenate([pts, np.ones((4, 1))], axis=1) @ mat.T)[:, :2]


def _inside(pts: np.ndarray, hw) -> bool:
    """A detector needs the whole face, with a margin of half the eye distance, inside the frame."""
    margin = 0.5 * np.hypot(*(pts[1] - pts[0]))
    return bool((pts.min(axis=0) >= margin).all() and (pts[:, 0].max() <= hw[1] - 1 - margin)
                and (pts[:, 1].max() <= hw[0] - 1 - margin))


def _bar(t: int, hw) -> tuple[int, int, int, int] | None:
    """The occluder's box in frame t: a dark upright bar over the person's face."""
    if not OCCLUDED[0] <= t <= OCCLUDED[1]:
        return None
    pts = _points(_matrix(person_motion(t), hw[0]))
    cx, half = pts[:, 0].mean(), 1.3 * np.hypot(*(pts[1] - pts[0]))
    return int(cx - half), 0, int(cx + half) + 1, hw[0]


def make_clip(frame_hw: tuple[int, int] = (480, 640), count: int = FRAMES, render: bool = True) -> HostileClip:
    """The clip and its truth at ``frame_hw`` (the truth alone with ``render`` False, which is instant)."""
    h, w = frame_hw
    person, other, seen, other_seen = [], [], [], []
    for t in range(count):
        p = _points(_matrix(person_motion(t), h))
        o = _points(_matrix(other_motion(t), h))
        person.append(p)
        other.append(o)
        seen.append(_inside(p, frame_hw) and _bar(t, frame_hw) is None)
        other_seen.append(t >= CUT and _inside(o, frame_hw))
    frames = _render(frame_hw, count) if render else None
    return HostileClip(frames=frames, person=np.stack(person), person_visible=np.array(seen),
                       other=np.stack(other), other_visible=np.array(other_seen), cuts=[CUT] if CUT < count else [],
                       occluded=list(range(OCCLUDED[0], OCCLUDED[1] + 1)), nod=list(range(NOD[0], NOD[1] + 1)))


def _sprites(tints=((1.0, 1.0, 1.0), (0.8, 0.95, 1.15))):
    """The face patch cut from the test photo, once per tint, and the soft round mask that makes it a head."""
    from PIL import Image
    from skimage import data

    patch = np.asarray(Image.fromarray(data.astronaut()).convert("RGB").crop(PATCH), dtype=np.float64)
    images = [Image.fromarray((patch * np.array(tint)).clip(0, 255).astype(np.uint8)) for tint in tints]
    side = patch.shape[0]
    yy, xx = np.mgrid[:side, :side]
    mask = Image.fromarray((np.clip(1.0 - np.hypot(xx - side / 2, yy - side / 2) / (side / 2), 0, 0.15) / 0.15
                            * 255).astype(np.uint8))
    return images, mask


def _background(frame_hw, colour):
    from PIL import Image

    h, w = frame_hw
    ys = np.linspace(0.0, 1.0, h)[:, None, None]
    return Image.fromarray(np.broadcast_to(np.array(colour, dtype=np.float64) * (0.8 + 0.4 * ys), (h, w, 3))
                           .astype(np.uint8))


def _draw(canvas, image, mask, motion) -> None:
    """Paste one head (``image`` through ``mask``) where ``motion`` puts it, into the PIL ``canvas``."""
    from PIL import Image

    w, h = canvas.size
    inv = np.linalg.inv(_matrix(motion, h))
    corner = inv @ np.array([[1, 0, -0.5], [0, 1, -0.5], [0, 0, 1]])  # PIL maps pixel corners
    corner[:2, 2] += 0.5
    coeffs = tuple(corner[:2].reshape(-1))
    moved = image.transform((w, h), Image.Transform.AFFINE, coeffs, resample=Image.Resampling.BICUBIC)
    alpha = mask.transform((w, h), Image.Transform.AFFINE, coeffs, resample=Image.Resampling.BILINEAR)
    canvas.paste(moved, (0, 0), alpha)


def _render(frame_hw, count: int) -> np.ndarray:
    from PIL import ImageDraw

    h, w = frame_hw
    (patch, tinted), mask = _sprites()
    frames = np.empty((count, h, w, 3), np.uint8)
    for t in range(count):
        canvas = _background(frame_hw, BACKGROUNDS[0 if t < CUT else 1])
        layers = [(patch, person_motion(t))]
        if t >= CUT:
            layers.insert(0, (tinted, other_motion(t)))
        for image, motion in layers:
            _draw(canvas, image, mask, motion)
        bar = _bar(t, frame_hw)
        if bar is not None:
            ImageDraw.Draw(canvas).rectangle((bar[0], bar[1], bar[2] - 1, bar[3] - 1), fill=(28, 28, 30))
        frames[t] = np.asarray(canvas)
    return frames


# ------------------------------------------------------------------------------ the two-person clip
# 60 frames at 240x360 (any size: unit coordinates). Shot 1: A (the photo's face) walks right while B (smaller,
# tinted blue: further back) walks left; they cross and B is hidden behind A in frames TWO_HIDDEN. A hard cut at
# TWO_CUT: A goes on where they were, B is gone and C (tinted orange) stands far from where B was last seen; A
# leaves to the right in frames TWO_EXIT and is gone for the rest.
TWO_FRAMES = 60
TWO_CUT = 30
TWO_EXIT = (44, 51)
TWO_HIDDEN_DISTANCE = 0.15  # B is hidden while its centre is this close (frame heights) to A's
TWO_TINTS = {"A": (1.0, 1.0, 1.0), "B": (0.8, 0.95, 1.15), "C": (1.15, 0.9, 0.75)}


def two_person_motion(name: str, t: int):
    """(side, angle, x, y) in frame heights of person A, B or C at frame t (None: not in this shot)."""
    if name == "A":
        if t < TWO_CUT:
            return 0.5, 0.0, 0.4 + 0.02 * t, 0.5
        return 0.5, 0.0, 0.4 + 0.02 * (TWO_CUT - 1) + 0.002 * (t - TWO_CUT) + 0.9 * _ramp(t, TWO_EXIT[0],
                                                                                           TWO_EXIT[1] + 1), 0.5
    if name == "B":
        return (0.42, 0.03, 1.1 - 0.02 * t, 0.52) if t < TWO_CUT else None
    return (0.45, -0.03, 0.2, 0.52) if t >= TWO_CUT else None


@dataclass
class TwoPersonClip:
    frames: np.ndarray | None
    points: dict  # name -> [T, 4, 2] eyes and mouth corners (NaN while not in the shot)
    visible: dict  # name -> [T] bools
    cuts: list

    def detections(self, noise: float = 0.0, seed: int = 0) -> list:
        """Per frame the visible faces as a detector reports them (largest first)."""
        from transedit.models.face.landmarks import FaceLandmarks

        rng = np.random.default_rng(seed)
        out = []
        for t in range(len(self.visible["A"])):
            faces = []
            for name in self.points:
                p = self.points[name][t] + rng.normal(0.0, noise, (4, 2))
                if self.visible[name][t]:
                    faces.append(FaceLandmarks(eye_left=p[0], eye_right=p[1], mouth_left=p[2], mouth_right=p[3]))
            out.append(sorted(faces, key=lambda f: -f.area))
        return out

    def identity(self, t: int, face, tolerance: float = 6.0):
        """Whose face ``face`` (landmarks in frame t) is, or None."""
        for name, points in self.points.items():
            if np.isfinite(points[t]).all() and np.abs(face.as_array() - points[t]).max() <= tolerance:
                return name
        return None


def make_two_person_clip(frame_hw: tuple[int, int] = (240, 360), render: bool = True) -> TwoPersonClip:
    h, w = frame_hw
    points, visible = {}, {}
    for name in TWO_TINTS:
        motions = [two_person_motion(name, t) for t in range(TWO_FRAMES)]
        points[name] = np.stack([np.full((4, 2), np.nan) if m is None else _points(_matrix(m, h)) for m in motions])
        visible[name] = np.array([m is not None and _inside(points[name][t], frame_hw)
                                  for t, m in enumerate(motions)])
    for t in range(TWO_CUT):  # B walks behind A
        if abs(two_person_motion("A", t)[2] - two_person_motion("B", t)[2]) < TWO_HIDDEN_DISTANCE:
            visible["B"][t] = False
    frames = None
    if render:
        sprites, mask = _sprites(tuple(TWO_TINTS.values()))
        frames = np.empty((TWO_FRAMES, h, w, 3), np.uint8)
        for t in range(TWO_FRAMES):
            canvas = _background(frame_hw, BACKGROUNDS[0 if t < TWO_CUT else 1])
            for name, image in sorted(zip(TWO_TINTS, sprites), key=lambda item: item[0] != "A", reverse=True):
                motion = two_person_motion(name, t)  # A last: in front
                if motion is not None:
                    _draw(canvas, image, mask, motion)
            frames[t] = np.asarray(canvas)
    return TwoPersonClip(frames=frames, points=points, visible=visible, cuts=[TWO_CUT])


# ------------------------------------------------------------------------------ what the tests measure
def true_quads(points: np.ndarray) -> np.ndarray:
    """[T, 4, 2] landmarks -> [T, 4, 2] FFHQ crop quads (the crop a perfect detector and no smoothing give)."""
    from transedit.models.face.align import ffhq_quad
    from transedit.models.face.landmarks import FaceLandmarks

    return np.stack([ffhq_quad(FaceLandmarks(eye_left=p[0], eye_right=p[1], mouth_left=p[2], mouth_right=p[3]))[0]
                     for p in points])


def crop_jitter(quads: np.ndarray, truth: np.ndarray, frames=None) -> float:
    """Mean frame-to-frame motion of the crop's corners beyond the true motion (pixels), over the pairs of
    consecutive frames that are both in ``frames`` (default all)."""
    keep = np.ones(len(quads), dtype=bool) if frames is None else np.isin(np.arange(len(quads)), list(frames))
    pairs = keep[1:] & keep[:-1]
    moved = np.diff(quads, axis=0) - np.diff(truth, axis=0)
    return float(np.linalg.norm(moved, axis=-1).mean(axis=-1)[pairs].mean())


def crop_lag(quads_per_seed: np.ndarray, truth: np.ndarray, frames) -> float:
    """The largest systematic error of the crop over ``frames`` (pixels): per frame and corner the distance of
    the mean crop over several noise seeds ([S, T, 4, 2]) from the truth, so the noise averages out and what
    is left is the smoother trailing the motion."""
    frames = list(frames)
    bias = quads_per_seed.mean(axis=0)[frames] - truth[frames]
    return float(np.linalg.norm(bias, axis=-1).max())


def found_errors(status, landmarks, clip: HostileClip, tolerance: float = 6.0) -> dict:
    """How the 'found' report differs from the truth: frames where the person is in plain view but not
    reported found ('missed'), and frames reported found on landmarks that are not the person's ('wrong')."""
    missed = [t for t in range(len(status)) if clip.person_visible[t] and status[t] != "found"]
    wrong = [t for t in range(len(status)) if status[t] == "found" and
             (landmarks[t] is None or np.abs(landmarks[t].as_array() - clip.person[t]).max() > tolerance)]
    return {"missed": missed, "wrong": wrong}
