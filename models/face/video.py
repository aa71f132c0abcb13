"""Face alignment over the frames of a clip: one person followed from frame to frame, the FFHQ crop smoothed
over time, and frames where the face is lost filled in or marked (the approach of STIT, Tzaban et al.,
"Stitch it in Time", SIGGRAPH Asia 2022: align on temporally smoothed landmarks, edit every frame the same way,
paste back with a stable blend).

The crop is smoothed as STIT smooths it: its centre and its half-axis vector (size and rotation in one pair of
numbers, so no angle wraps) each over time, the centre with a narrower Gaussian than the axis because heads
move faster than they turn or change size (STIT's defaults: 1 and 3 frames). By default the width adapts per
frame (models/face/temporal.smooth_adaptive): full on a steady face, narrower on a fast nod, so the crop does not lag.

Footage has hard cuts. A cut is found from the frames' colour histograms (a jump far above the clip's usual
frame-to-frame change), or from a weaker jump together with the face jumping: the person vanishes and faces
appear that were nowhere in the frame before. The clip is split into shots there; nothing (tracking,
smoothing, filling lost frames, Paste Back's colour match, Smooth Latents) reaches across a cut. In each new
shot the track goes on with a face where the person was (same place and size), otherwise it restarts on the
face ``face_index`` picks (0: the largest) and the report calls it a new person: faces are not recognised.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from .align import ffhq_quad
from .landmarks import FaceLandmarks
from .temporal import segment_ids, smooth_adaptive, smooth_series

FOUND, INTERPOLATED, LOST = "found", "interpolated", "lost"
CENTRE_SHARE = 1.0 / 3.0  # the centre's sigma as a share of the axis sigma (STIT: 1 vs 3 frames)
TRACK_GATE = 0.35  # a detection continues the track within this many crop sizes of its last centre ...
TRACK_GATE_PER_FRAME = 0.1  # ... plus this much per frame it has been missing (it may have moved meanwhile) ...
TRACK_GATE_MAX = 0.75  # ... but never more: a neighbour's head is about a crop size away
TRACK_SCALE = 1.6  # ... and when its crop is at most this many times larger or smaller
MAX_INTERPOLATED_GAP = 3  # 'interpolate' bridges detector drop-outs this short; longer gaps are occlusions or exits
HISTOGRAM_BINS = 16  # per colour channel, for the cut detector
SIGNATURE_ROWS = 96  # frames are sampled down to about this many rows for their histograms
CUT_CHANGE = 0.3  # a cut: this much of the colour histogram changes from one frame to the next ...
CUT_RATIO = 4.0  # ... and this many times the clip's usual change around it (a flickering shot is no cut)
CUT_WINDOW = 8  # frames on either side that give the usual change
CUT_WITH_FACE_JUMP = 0.1  # a weaker change is a cut when the face jumps there too
CROP_NOISE_FLOOR = 0.05  # pixels: below this a crop's wobble is not told apart from motion


def quad_params(quad: np.ndarray) -> np.ndarray:
    """An FFHQ quad (4 corners, official order) -> [centre x, centre y, half-axis x, half-axis y]."""
    quad = np.asarray(quad, dtype=np.float64).reshape(4, 2)
    return np.concatenate([quad.mean(axis=0), (quad[3] - quad[0]) / 2.0])


def quad_from_params(params: np.ndarray) -> np.ndarray:
    """The inverse of :func:`quad_params`: the square spanned by the half axis and its normal."""
    centre, half = np.asarray(params[:2], dtype=np.float64), np.asarray(params[2:4], dtype=np.float64)
    down = np.array([-half[1], half[0]])
    return np.stack([centre - half - down, centre - half + down, centre + half + down, centre + half - down])


# ------------------------------------------------------------------------------------------------- cuts
def frame_signatures(images: torch.Tensor) -> torch.Tensor:
    """[n, H, W, 3] frames (0..1) -> [n, 3 * HISTOGRAM_BINS] colour histograms (each channel sums to 1), from
    a grid of about SIGNATURE_ROWS rows; computed where the frames are, returned on the CPU."""
    step = max(1, images.shape[1] // SIGNATURE_ROWS)
    sample = images[:, ::step, ::step, :3].reshape(images.shape[0], -1, 3)
    bins = (sample.float() * HISTOGRAM_BINS).long().clamp_(0, HISTOGRAM_BINS - 1)
    bins += torch.arange(3, device=bins.device) * HISTOGRAM_BINS
    hist = torch.zeros(images.shape[0], 3 * HISTOGRAM_BINS, device=bins.device)
    hist.scatter_add_(1, bins.reshape(images.shape[0], -1), torch.ones(bins.shape[0], bins[0].numel(),
                                                                         device=bins.device))
    return (hist / sample.shape[1]).cpu()


def frame_change(signatures) -> np.ndarray:
    """[T] the share of the colour histogram that changes from the frame before (0 for the first frame)."""
    sig = np.asarray(signatures, dtype=np.float64)
    change = np.zeros(sig.shape[0])
    if sig.shape[0] > 1:
        change[1:] = 0.5 * np.abs(np.diff(sig, axis=0)).sum(axis=1) / 3.0
    return change


def usual_change(change: np.ndarray, t: int) -> float:
    """The median change of the CUT_WINDOW frames on either side of frame t (not t itself, not frame 0)."""
    around = [change[s] for s in range(max(1, t - CUT_WINDOW), min(len(change), t + CUT_WINDOW + 1)) if s != t]
    return float(np.median(around)) if around else 0.0


def _changes_enough(change: np.ndarray, t: int, level: float) -> bool:
    return change[t] >= level and change[t] >= CUT_RATIO * usual_change(change, t)


def find_cuts(change) -> list[int]:
    """The frames that start a new shot by their colours alone (see the module doc)."""
    change = np.asarray(change, dtype=np.float64)
    return [t for t in range(1, len(change)) if _changes_enough(change, t, CUT_CHANGE)]


# ---------------------------------------------------------------------------------------------- tracking
def centre_and_size(face: FaceLandmarks) -> tuple[np.ndarray, float]:
    quad, qsize = ffhq_quad(face)
    return quad.mean(axis=0), qsize


def usable(face: FaceLandmarks) -> bool:
    """False for degenerate landmarks (eyes and mouth in one point), which no crop can be made from."""
    try:
        ffhq_quad(face)
    except ValueError:
        return False
    return True


def track_gate(gap: int) -> float:
    """How far (crop sizes) a detection may be from the person's last centre after ``gap`` frames (1: the
    frame before): widening while they are missing, but bounded."""
    return min(TRACK_GATE + TRACK_GATE_PER_FRAME * (gap - 1), TRACK_GATE_MAX)


def _nearest(faces, centre: np.ndarray, size: float, gap: int):
    """The face nearest ``centre`` inside the gate and of a similar size, or None."""
    best, best_dist = None, np.inf
    for face in faces:
        c, s = centre_and_size(face)
        dist = float(np.hypot(*(c - centre)))
        if dist <= size * track_gate(gap) and 1.0 / TRACK_SCALE <= s / size <= TRACK_SCALE and dist < best_dist:
            best, best_dist = face, dist
    return best


@dataclass
class Shot:
    """Frames ``first``..``last`` between two cuts and how the person was found in them: ``how`` is 'first'
    (the clip's first shot with the face), 'same person' (a face where the person was before the cut), 'new
    person' (the face face_index picks, elsewhere) or 'no face'; ``start`` the frame the track starts at."""

    first: int
    last: int
    start: int
    how: str
    detail: str = ""


def reclaim_gap(frames, track: list, found: int, direction: int, skipped: int) -> None:
    """The person was found again at frame ``found`` after ``skipped`` frames without them (the gate had to
    widen first): walk back over those frames (``direction``: the step towards them) from the re-found face,
    with the same gate rules, and claim the detections that continue it; the others stay without the person."""
    centre, size = centre_and_size(track[found])
    gap = 0
    for t in range(found + direction, found + direction * (skipped + 1), direction):
        gap += 1
        best = _nearest(frames[t], centre, size, gap)
        if best is not None:
            track[t] = best
            centre, size = centre_and_size(best)
            gap = 0


def _follow(frames, track: list, lo: int, hi: int, start: int) -> None:
    """Extend the track from ``start`` forwards and backwards inside frames lo..hi-1; after each gap also back
    over the gap from where the person was found again (a detected face of the person is never left out)."""
    for direction in (1, -1):
        centre, size = centre_and_size(track[start])
        gap, t = 0, start + direction
        while lo <= t < hi:
            gap += 1
            best = _nearest(frames[t], centre, size, gap)
            if best is not None:
                track[t] = best
                centre, size = centre_and_size(best)
                if gap > 1:
                    reclaim_gap(frames, track, t, -direction, gap - 1)
                gap = 0
            t += direction


def track_clip(frames: Sequence[Sequence[FaceLandmarks]], face_index: int = 0, cuts: Sequence[int] = ()):
    """Follow one person through a clip split into shots at ``cuts``. ``frames``: per frame, the detected faces
    largest first. Returns (per frame the person's landmarks or None, the shots as :class:`Shot`)."""
    frames = [[f for f in faces if usable(f)] for faces in frames]
    track: list = [None] * len(frames)
    bounds = sorted({0, len(frames)} | {int(c) for c in cuts if 0 < c < len(frames)})
    shots, last_seen = [], None  # (frame, face) where the person was last found
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        start, how, detail = -1, "no face", ""
        if last_seen is not None:  # the same person if a face is where they were
            first = next((t for t in range(lo, hi) if frames[t]), -1)
            if first >= 0:
                centre, size = centre_and_size(last_seen[1])
                same = _nearest(frames[first], centre, size, first - last_seen[0])
                if same is not None:
                    start, how = first, "same person"
                    track[first] = same
        if start < 0:
            start = next((t for t in range(lo, hi) if len(frames[t]) > face_index), -1)
            if start >= 0:
                track[start] = frames[start][face_index]
                how = "first" if last_seen is None else "new person"
                if last_seen is not None:
                    (c0, s0), (c1, s1) = centre_and_size(last_seen[1]), centre_and_size(track[start])
                    detail = (f"{np.hypot(*(c1 - c0)):.0f} px from where the person was last seen, "
                              f"{s1 / s0:.2g}x the size")
        if start >= 0:
            _follow(frames, track, lo, hi, start)
            found = [t for t in range(lo, hi) if track[t] is not None]
            last_seen = (found[-1], track[found[-1]])
        shots.append(Shot(lo, hi - 1, start, how, detail))
    return track, shots


def track_person(frames: Sequence[Sequence[FaceLandmarks]], face_index: int = 0,
                 cuts: Sequence[int] = ()) -> tuple[list, int]:
    """:func:`track_clip`'s track and the frame it starts at (-1 when no frame has the face). Within a shot
    the person is ``face_index`` (0 = largest) in the first frame with that many faces; from there the track
    runs forwards and backwards, taking in each frame the detection nearest to where the person was last seen
    (within TRACK_GATE crop sizes, widening while the person is missing up to TRACK_GATE_MAX, and of a
    similar size); where the person is found again after a gap, the track also runs back over the gap from
    there (:func:`reclaim_gap`), so a face that jumped further than one frame's gate is not left out."""
    track, shots = track_clip(frames, face_index, cuts)
    return track, next((s.start for s in shots if s.start >= 0), -1)


def _appears_from_nowhere(faces, before) -> bool:
    """True when ``faces`` is not empty and none of them was near in the other frame (all faces jumped)."""
    if not faces:
        return False
    return all(_nearest(before, *centre_and_size(f), 1) is None for f in faces)


def _continues(before, after) -> bool:
    """True when the track goes on from one frame to the next: absent in both, or within one frame's gate (a
    track re-found after a gap and claimed back over it may jump further: the person vanished there)."""
    if before is None or after is None:
        return before is None and after is None
    return _nearest([after], *centre_and_size(before), 1) is not None


def face_jump_cuts(frames, track: list, change) -> list[int]:
    """Frames where the person vanishes (the track ends, starts, or jumps beyond one frame's gate) while faces
    appear that were nowhere in the frame before (or the other way round, for the track's backward part), with the colours changing at least CUT_WITH_FACE_JUMP:
    cuts the histogram alone is too weak to call."""
    frames = [[f for f in faces if usable(f)] for faces in frames]
    change = np.asarray(change, dtype=np.float64)
    cuts = []
    for t in range(1, len(frames)):
        if _continues(track[t - 1], track[t]) or not _changes_enough(change, t, CUT_WITH_FACE_JUMP):
            continue
        gone, came = (t - 1, t) if track[t - 1] is None else (t, t - 1)
        if _appears_from_nowhere(frames[gone], frames[came]):
            cuts.append(t)
    return cuts


# ------------------------------------------------------------------------------------------ the clip
@dataclass
class ClipAlignment:
    """The crop of every frame of a clip: quads [T, 4, 2] (source pixel-centre coordinates, official corner
    order; NaN in a shot without the face) and each frame's status: found (the person was detected),
    interpolated (a short gap; its crop filled in from the frames around it) or lost (left for the caller to
    pass through)."""

    quads: np.ndarray
    status: list
    landmarks: list  # per frame the tracked FaceLandmarks or None
    start: int  # the frame the track started at
    smoothing: float
    raw_quads: np.ndarray = field(repr=False)  # the unsmoothed quads of found frames (NaN elsewhere)
    segments: np.ndarray = None  # per frame its shot's number
    shots: list = field(default_factory=list)
    adaptive: bool = False
    widths: np.ndarray = None  # per frame the width the crop's axis was smoothed over (adaptive: up to smoothing)

    def __post_init__(self):
        count = len(self.status)
        if self.segments is None:
            self.segments = np.zeros(count, dtype=np.int64)
        if self.widths is None:
            self.widths = np.full(count, float(self.smoothing))

    @property
    def cuts(self) -> list[int]:
        return [s.first for s in self.shots[1:]]

    def frames(self, status: str) -> list[int]:
        return [t for t, s in enumerate(self.status) if s == status]

    def summary(self) -> str:
        """One line per fact, for the node's report output."""
        width = f"up to {self.smoothing:g}" if self.adaptive else f"{self.smoothing:g}"
        lines = [f"video mode: {len(self.status)} frames, crop smoothed over {width} frames "
                 f"(centre {self.smoothing * CENTRE_SHARE:g})"]
        if self.adaptive and self.smoothing > 0:
            narrowed = [t for t in self.frames(FOUND) if self.widths[t] < self.smoothing]
            lines[0] += ", less where the face moves fast"
            if narrowed:
                lines.append(f"smoothing narrowed for fast motion in {len(narrowed)} frames: {frame_ranges(narrowed)}")
        if self.cuts:
            lines.append(f"cuts (new shots) at frames {', '.join(map(str, self.cuts))}: no tracking, smoothing, "
                         "interpolation or colour matching crosses them")
        if self.start < 0:
            return "\n".join(lines + ["no frame has the face: every frame passes through"])
        lines.append(f"person followed from frame {self.start}; found in {len(self.frames(FOUND))} frames")
        for shot in self.shots[1:]:
            head = f"shot {shot.first}-{shot.last}:"
            if shot.how == "same person":
                lines.append(f"{head} the same person (a face where they were) from frame {shot.start}")
            elif shot.how == "new person":
                lines.append(f"{head} a new person followed from frame {shot.start} ({shot.detail}; faces are not "
                             "recognised: the largest face, or face_index's, is taken)")
            elif shot.how == "first":
                lines.append(f"{head} person followed from frame {shot.start}")
            else:
                lines.append(f"{head} no face; passed through")
        for status in (INTERPOLATED, LOST):
            frames = self.frames(status)
            if frames:
                if status == INTERPOLATED:
                    lines.append(f"crop interpolated in {len(frames)} frames: {frame_ranges(frames)} (gaps of at "
                                 f"most {MAX_INTERPOLATED_GAP} frames inside a shot)")
                else:
                    lines.append(f"left untouched in {len(frames)} frames: {frame_ranges(frames)} (face not "
                                 "detected: occluded, out of frame, or a gap too long to interpolate; the pasted "
                                 "face fades out and back in around them)")
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


def gap_status(present: np.ndarray, segments: np.ndarray, interpolate_lost: bool) -> list[str]:
    """Per frame found / interpolated / lost: with ``interpolate_lost`` a run of missing frames is interpolated
    when it is at most MAX_INTERPOLATED_GAP long and has found frames on both sides in its own shot."""
    status = [FOUND if ok else LOST for ok in present]
    if not interpolate_lost:
        return status
    t = 0
    while t < len(status):
        if present[t]:
            t += 1
            continue
        end = t
        while end < len(status) and not present[end] and segments[end] == segments[t]:
            end += 1
        bracketed = (t > 0 and present[t - 1] and segments[t - 1] == segments[t] and end < len(status)
                     and present[end] and segments[end] == segments[t])
        if bracketed and end - t <= MAX_INTERPOLATED_GAP:
            status[t:end] = [INTERPOLATED] * (end - t)
        t = end
    return status


def align_clip(frames: Sequence[Sequence[FaceLandmarks]], *, face_index: int = 0, smoothing: float = 3.0,
               interpolate_lost: bool = True, change=None, adaptive: bool = True) -> ClipAlignment:
    """Find the shots, track the person, take the FFHQ quad of every frame they are found in, smooth the quads
    over time inside each shot (``smoothing``: Gaussian sigma in frames for the crop's size and rotation, the
    widest used when ``adaptive``; its centre uses a third of it; 0 keeps each frame's own crop) and fill the
    frames in between. ``change``: :func:`frame_change` of the frames (None: no cut is looked for). With
    ``interpolate_lost`` short gaps are marked interpolated (see :func:`gap_status`), the rest lost; their
    quads are filled all the same inside the shot, so a caller can still crop something sensible. Raises
    ValueError for a negative smoothing or a ``change`` of the wrong length."""
    if smoothing < 0:
        raise ValueError(f"smoothing must be >= 0 frames, got {smoothing}")
    count = len(frames)
    cuts = [] if change is None else find_clip_cuts(frames, change, face_index)
    track, shots = track_clip(frames, face_index, cuts)
    return clip_from_track(track, shots, segment_ids(count, cuts), smoothing=smoothing,
                           interpolate_lost=interpolate_lost, adaptive=adaptive)


def find_clip_cuts(frames: Sequence[Sequence[FaceLandmarks]], change, face_index: int = 0) -> list[int]:
    """The clip's cuts as :func:`align_clip` finds them (colours, then face jumps of ``face_index``'s track)."""
    change = np.asarray(change, dtype=np.float64)
    if change.shape != (len(frames),):
        raise ValueError(f"change has {change.shape[0]} entries for {len(frames)} frames")
    cuts = find_cuts(change)
    track, _ = track_clip(frames, face_index, cuts)
    while True:  # each round adds a cut, so this ends
        jumps = [t for t in face_jump_cuts(frames, track, change) if t not in cuts]
        if not jumps:
            return cuts
        cuts = sorted(cuts + jumps[:1])
        track, _ = track_clip(frames, face_index, cuts)


def clip_from_track(track: list, shots: list, segments: np.ndarray, *, smoothing: float = 3.0,
                    interpolate_lost: bool = True, adaptive: bool = True) -> ClipAlignment:
    """One person's track (per frame landmarks or None) -> the smoothed crops of every frame (see
    :func:`align_clip`)."""
    count = len(track)
    start = next((s.start for s in shots if s.start >= 0), -1)
    raw = np.full((count, 4, 2), np.nan)
    present = np.array([face is not None for face in track], dtype=bool)
    if not present.any():
        return ClipAlignment(quads=raw, status=[LOST] * count, landmarks=track, start=-1, smoothing=smoothing,
                             raw_quads=raw, segments=segments, shots=shots, adaptive=adaptive)
    params = np.full((count, 4), np.nan)
    for t in np.flatnonzero(present):
        raw[t] = ffhq_quad(track[t])[0]
        params[t] = quad_params(raw[t])
    if adaptive:
        centre, _ = smooth_adaptive(params[:, :2], smoothing * CENTRE_SHARE, present, segments,
                                    noise_floor=CROP_NOISE_FLOOR)
        axis, widths = smooth_adaptive(params[:, 2:], smoothing, present, segments, noise_floor=CROP_NOISE_FLOOR)
    else:
        centre = smooth_series(params[:, :2], smoothing * CENTRE_SHARE, present, segments)
        axis, widths = smooth_series(params[:, 2:], smoothing, present, segments), None
    smoothed = np.concatenate([centre, axis], axis=1)  # NaN rows stay in shots without the face
    quads = np.stack([quad_from_params(p) for p in smoothed])
    status = gap_status(present, segments, interpolate_lost)
    return ClipAlignment(quads=quads, status=status, landmarks=track, start=start, smoothing=smoothing,
                         raw_quads=raw, segments=segments, shots=shots, adaptive=adaptive, widths=widths)


def paste_strength(status: Sequence[str], ramp: float, segments=None) -> np.ndarray:
    """Per frame, how strongly the edited face is pasted: 0 on lost frames, rising linearly to 1 over ``ramp``
    frames on either side of them, so that a lost stretch fades out and back in instead of popping. A fade
    stays inside its shot (``segments``: per frame its shot): a cut changes the picture at once anyway."""
    lost = np.array([s == LOST for s in status], dtype=bool)
    strength = np.ones(len(status))
    if not lost.any():
        return strength
    segments = np.zeros(len(status), dtype=np.int64) if segments is None else np.asarray(segments)
    idx = np.arange(len(status))
    before = np.maximum.accumulate(np.where(lost, idx, -1))  # the nearest lost frame on either side, O(T)
    after = np.minimum.accumulate(np.where(lost, idx, len(status))[::-1])[::-1]
    distance = np.full(len(status), np.inf)
    for near in (before, after):
        inside = (near >= 0) & (near < len(status))
        inside[inside] &= segments[near[inside]] == segments[inside]
        distance[inside] = np.minimum(distance[inside], np.abs(idx - near)[inside])
    if ramp > 0:
        strength = np.clip(distance / (ramp + 1.0), 0.0, 1.0)
    strength[lost] = 0.0
    return strength
