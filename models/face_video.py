"""Face alignment over the frames of a clip: one person followed from frame to frame, the FFHQ crop smoothed
over time, and frames where the face is lost filled in or marked (the approach of STIT, Tzaban et al.,
"Stitch it in Time", SIGGRAPH Asia 2022: align on temporally smoothed landmarks, edit every frame the same way,
paste back with a stable blend).

The crop is smoothed as STIT smooths it: its centre and its half-axis vector (size and rotation in one pair of
numbers, so no angle wraps) each over time, the centre with a narrower Gaussian than the axis because heads
move faster than they turn or change size (STIT's defaults: 1 and 3 frames).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from .face_align import ffhq_quad
from .face_landmarks import FaceLandmarks
from .temporal import smooth_series

FOUND, INTERPOLATED, LOST = "found", "interpolated", "lost"
CENTRE_SHARE = 1.0 / 3.0  # the centre's sigma as a share of the axis sigma (STIT: 1 vs 3 frames)
TRACK_GATE = 0.35  # a detection continues the track within this many crop sizes of its last centre ...
TRACK_GATE_PER_FRAME = 0.1  # ... plus this much per frame it has been missing (it may have moved meanwhile)
TRACK_SCALE = 1.6  # ... and when its crop is at most this many times larger or smaller


def quad_params(quad: np.ndarray) -> np.ndarray:
    """An FFHQ quad (4 corners, official order) -> [centre x, centre y, half-axis x, half-axis y]."""
    quad = np.asarray(quad, dtype=np.float64).reshape(4, 2)
    return np.concatenate([quad.mean(axis=0), (quad[3] - quad[0]) / 2.0])


def quad_from_params(params: np.ndarray) -> np.ndarray:
    """The inverse of :func:`quad_params`: the square spanned by the half axis and its normal."""
    centre, half = np.asarray(params[:2], dtype=np.float64), np.asarray(params[2:4], dtype=np.float64)
    down = np.array([-half[1], half[0]])
    return np.stack([centre - half - down, centre - half + down, centre + half + down, centre + half - down])


def _centre_and_size(face: FaceLandmarks) -> tuple[np.ndarray, float]:
    quad, qsize = ffhq_quad(face)
    return quad.mean(axis=0), qsize


def _usable(face: FaceLandmarks) -> bool:
    """False for degenerate landmarks (eyes and mouth in one point), which no crop can be made from."""
    try:
        ffhq_quad(face)
    except ValueError:
        return False
    return True


def track_person(frames: Sequence[Sequence[FaceLandmarks]], face_index: int = 0) -> tuple[list, int]:
    """Follow one person through a clip. ``frames``: per frame, the detected faces largest first.

    The person is ``face_index`` (0 = largest) in the first frame with that many faces; from there the track
    runs forwards and backwards, taking in each frame the detection nearest to where the person was last seen
    (within TRACK_GATE crop sizes, widening while the person is missing, and of a similar size). Returns
    (per frame the person's landmarks or None, the frame the track started at; -1 when no frame has the face).
    """
    frames = [[f for f in faces if _usable(f)] for faces in frames]
    start = next((t for t, faces in enumerate(frames) if len(faces) > face_index), -1)
    track: list = [None] * len(frames)
    if start < 0:
        return track, -1
    track[start] = frames[start][face_index]
    for direction in (1, -1):
        centre, size = _centre_and_size(track[start])
        gap = 0
        t = start + direction
        while 0 <= t < len(frames):
            gap += 1
            best, best_dist = None, np.inf
            for face in frames[t]:
                c, s = _centre_and_size(face)
                dist = float(np.hypot(*(c - centre)))
                if dist <= size * (TRACK_GATE + TRACK_GATE_PER_FRAME * (gap - 1)) and \
                        1.0 / TRACK_SCALE <= s / size <= TRACK_SCALE and dist < best_dist:
                    best, best_dist = face, dist
            if best is not None:
                track[t] = best
                centre, size = _centre_and_size(best)
                gap = 0
            t += direction
    return track, start


@dataclass
class ClipAlignment:
    """The crop of every frame of a clip: quads [T, 4, 2] (source pixel-centre coordinates, official corner
    order) and each frame's status: found (the person was detected), interpolated (lost; its crop filled in
    from the frames around it) or lost (left for the caller to pass through)."""

    quads: np.ndarray
    status: list
    landmarks: list  # per frame the tracked FaceLandmarks or None
    start: int  # the frame the track started at
    smoothing: float
    raw_quads: np.ndarray = field(repr=False)  # the unsmoothed quads of found frames (NaN elsewhere)

    def frames(self, status: str) -> list[int]:
        return [t for t, s in enumerate(self.status) if s == status]

    def summary(self) -> str:
        """One line per fact, for the node's report output."""
        lines = [f"video mode: {len(self.status)} frames, crop smoothed over {self.smoothing:g} frames "
                 f"(centre {self.smoothing * CENTRE_SHARE:g})"]
        if self.start < 0:
            return "\n".join(lines + ["no frame has the face: every frame passes through"])
        lines.append(f"person followed from frame {self.start}; found in {len(self.frames(FOUND))} frames")
        for status in (INTERPOLATED, LOST):
            frames = self.frames(status)
            if frames:
                what = "crop interpolated" if status == INTERPOLATED else "left untouched"
                lines.append(f"{what} in {len(frames)} frames: {frame_ranges(frames)}")
        return "\n".join(lines)


def frame_ranges(frames: Sequence[int]) -> str:
    """[3, 4, 5, 9] -> '3-5, 9'."""
    parts, run = [], []
    for t in list(frames) + [None]:
        if run and (t is None or t != run[-1] + 1):
            parts.append(str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}")
            run = []
        if t is not None:
            run.append(t)
    return ", ".join(parts)


def align_clip(frames: Sequence[Sequence[FaceLandmarks]], *, face_index: int = 0, smoothing: float = 3.0,
               interpolate_lost: bool = True) -> ClipAlignment:
    """Track the person, take the FFHQ quad of every frame they are found in, smooth the quads over time
    (``smoothing``: Gaussian sigma in frames for the crop's size and rotation; its centre uses a third of it;
    0 keeps each frame's own crop) and fill the frames in between. With ``interpolate_lost`` the frames where
    the person is missing are marked interpolated, otherwise lost (their quads are filled all the same, so a
    caller can still crop something sensible). Raises ValueError for a negative smoothing."""
    if smoothing < 0:
        raise ValueError(f"smoothing must be >= 0 frames, got {smoothing}")
    track, start = track_person(frames, face_index)
    count = len(frames)
    raw = np.full((count, 4, 2), np.nan)
    present = np.array([face is not None for face in track], dtype=bool)
    if not present.any():
        return ClipAlignment(quads=raw, status=[LOST] * count, landmarks=track, start=-1, smoothing=smoothing,
                             raw_quads=raw)
    params = np.zeros((count, 4))
    for t in np.flatnonzero(present):
        raw[t] = ffhq_quad(track[t])[0]
        params[t] = quad_params(raw[t])
    smoothed = np.concatenate([smooth_series(params[:, :2], smoothing * CENTRE_SHARE, present),
                               smooth_series(params[:, 2:], smoothing, present)], axis=1)
    quads = np.stack([quad_from_params(p) for p in smoothed])
    missing = INTERPOLATED if interpolate_lost else LOST
    status = [FOUND if ok else missing for ok in present]
    return ClipAlignment(quads=quads, status=status, landmarks=track, start=start, smoothing=smoothing,
                         raw_quads=raw)


def paste_strength(status: Sequence[str], ramp: float) -> np.ndarray:
    """Per frame, how strongly the edited face is pasted: 0 on lost frames, rising linearly to 1 over ``ramp``
    frames on either side of them, so that a lost stretch fades out and back in instead of popping."""
    lost = np.array([s == LOST for s in status], dtype=bool)
    strength = np.ones(len(status))
    if not lost.any():
        return strength
    idx = np.arange(len(status))
    distance = np.min(np.abs(idx[:, None] - np.flatnonzero(lost)[None, :]), axis=1)
    if ramp > 0:
        strength = np.clip(distance / (ramp + 1.0), 0.0, 1.0)
    strength[lost] = 0.0
    return strength
