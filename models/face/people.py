"""Every person in a clip, each followed as its own track (Align Face's ``faces: all`` in video mode).

The one-person tracking of video.py generalised: the clip is split into shots at the same cuts
(:func:`video.find_clip_cuts`), and inside a shot every open track takes, frame by frame, the detection
nearest to where its person is predicted to be: moving on at the velocity a line fitted to their last
MOTION_FRAMES detections in the shot gives (constant velocity; where no face is there, where they were last
seen: they stopped or turned), within the same gate (TRACK_GATE crop sizes
around the prediction, widening while the person is missing up to TRACK_GATE_MAX, and a similar size:
TRACK_SCALE). A track with one detection has no velocity yet: its first step may go FIRST_STEP_GATE crop sizes,
so a fast mover is not split into one person per frame. Tracks and detections are paired one to one, nearest
pairs first, so two people never share a face, two people crossing keep their own tracks, and a person who is
hidden while another passes in front keeps their own track instead of taking the other's face. A track missing
for more than RETIRE_AFTER frames is closed for the rest of the shot (it cannot take someone who comes later). A
detection no track takes starts a new person (largest first, at most ``max_people`` faces per frame). After a cut
a person goes on when a face is where they were last seen (no motion is carried over a cut) in the first frame of
the new shot that has faces; otherwise their track ends and the faces there are new people.

Faces are not recognised, so two limits remain: someone who leaves and someone else who appears where the first
one would be within RETIRE_AFTER frames continue one track, and two people who swap places exactly at a cut swap
tracks.

Each track is then smoothed and filled like the one-person clip (:func:`video.clip_from_track`) over its own
span: from the first to the last frame it was found in.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from . import video
from .landmarks import FaceLandmarks
from .temporal import segment_ids

MOTION_FRAMES = 4  # a track's velocity: a line through its last this many detections in the shot
FIRST_STEP_GATE = video.TRACK_GATE_MAX  # crop sizes a one-detection track (velocity unknown) may step
RETIRE_AFTER = 10  # a track missing this many frames in a row is closed: longer than a passer-by hides someone


@dataclass
class PersonTrack:
    """One person: ``faces`` per frame of the clip (FaceLandmarks or None), ``how`` they started ('first': in
    the clip's first frames with faces, 'appeared': inside a shot, 'new person': after a cut), ``clip``: their
    smoothed crops (a :class:`video.ClipAlignment` over the whole clip; only ``span`` is used)."""

    number: int
    faces: list
    how: str
    clip: video.ClipAlignment | None = None

    @property
    def found(self) -> list[int]:
        return [t for t, face in enumerate(self.faces) if face is not None]

    @property
    def span(self) -> range:
        """The frames the track covers: its first to its last detection."""
        found = self.found
        return range(found[0], found[-1] + 1)


@dataclass
class PeopleAlignment:
    """Every person's track in a clip, numbered in the order they first appear (largest first on one frame)."""

    tracks: list
    cuts: list
    frames: int
    max_people: int
    smoothing: float
    segments: np.ndarray = field(repr=False, default=None)

    def summary(self) -> str:
        lines = [f"video mode, every face: {self.frames} frames, {len(self.tracks)} people followed "
                 f"(at most {self.max_people} per frame), crops smoothed over up to {self.smoothing:g} frames"]
        if self.cuts:
            lines.append(f"cuts (new shots) at frames {', '.join(map(str, self.cuts))}: nothing is tracked, "
                         "smoothed or interpolated across them; a face not where someone was is a new person")
        for track in self.tracks:
            status = [track.clip.status[t] for t in track.span]
            interpolated = [t for t in track.span if track.clip.status[t] == video.INTERPOLATED]
            lost = [t for t in track.span if track.clip.status[t] == video.LOST]
            line = (f"person {track.number}: frames {track.span.start}-{track.span.stop - 1} ({len(status)} crops), "
                    f"found in {len(track.found)}")
            if interpolated:
                line += f", interpolated {video.frame_ranges(interpolated)}"
            if lost:
                line += f", left untouched {video.frame_ranges(lost)}"
            line += {"first": "", "appeared": f"; appeared in frame {track.span.start}",
                     "new person": f"; a new person after the cut at frame {track.span.start} (faces are not "
                                   "recognised)"}[track.how]
            lines.append(line)
        if not self.tracks:
            lines.append("no frame has a face: every frame passes through")
        return "\n".join(lines)


def velocity(history: list) -> np.ndarray | None:
    """Pixels per frame of a line fitted to ``history`` ([(frame, centre)], the last detections in the shot);
    None with fewer than two (unknown)."""
    if len(history) < 2:
        return None
    frames = np.array([t for t, _ in history], dtype=float)
    centres = np.stack([c for _, c in history])
    frames -= frames.mean()
    return (frames[:, None] * (centres - centres.mean(axis=0))).sum(axis=0) / (frames ** 2).sum()


def places_to_look(centre: np.ndarray, speed: np.ndarray | None, gap: int) -> list:
    """Where a track's person may be ``gap`` frames after they were last seen at ``centre``, in the order they
    are looked for: moved on at their velocity, then (no face claimed there) where they were: they stopped or
    turned, which the velocity of the frames before does not foresee."""
    if speed is None:
        return [centre]
    return [centre + speed * gap, centre]


def _pair(tracks: list, last: dict, faces: list, t: int, motion: dict | None = None) -> dict:
    """Track number -> index into ``faces``: gated (track, face) pairs taken nearest first, one to one; first
    around each track's predicted place, then the faces left around the places where tracks left were last seen.
    ``motion``: track number -> its detections in this shot ([(frame, centre)]); a track not in it (carried
    over a cut) is looked for where it was last seen."""
    motion = motion or {}
    looks = {}
    for number in tracks:
        seen_at, seen = last[number]
        centre, size = video.centre_and_size(seen)
        gate = video.track_gate(t - seen_at)
        speed = None
        if number in motion:
            speed = velocity(motion[number][-MOTION_FRAMES:])
            if speed is None:  # one detection: no velocity yet, allow a fast first step
                gate = max(gate, FIRST_STEP_GATE)
        looks[number] = (places_to_look(centre, speed, t - seen_at), size, gate)
    found = [video.centre_and_size(face) for face in faces]
    taken, used = {}, set()
    for rank in range(max((len(places) for places, _, _ in looks.values()), default=0)):
        pairs = []
        for number, (places, size, gate) in looks.items():
            if number in taken or rank >= len(places):
                continue
            for j, (c, s) in enumerate(found):
                dist = float(np.hypot(*(c - places[rank])))
                if (j not in used and dist <= size * gate
                        and 1.0 / video.TRACK_SCALE <= s / size <= video.TRACK_SCALE):
                    pairs.append((dist, number, j))
        for _, number, j in sorted(pairs):
            if number not in taken and j not in used:
                taken[number] = j
                used.add(j)
    return taken


def track_people(frames: Sequence[Sequence[FaceLandmarks]], cuts: Sequence[int] = (), max_people: int = 8,
                 min_size: float = 0.0) -> list[PersonTrack]:
    """Every person through a clip split into shots at ``cuts`` (see the module doc). ``frames``: per frame the
    detected faces; faces whose crop is smaller than ``min_size`` pixels are left out."""
    if max_people < 1:
        raise ValueError(f"max_people must be at least 1, got {max_people}")
    count = len(frames)
    frames = [sorted((f for f in faces if video.usable(f) and video.centre_and_size(f)[1] >= min_size),
                     key=lambda f: -video.centre_and_size(f)[1]) for faces in frames]
    tracks: list[PersonTrack] = []
    last: dict = {}  # track number -> (frame, face) where the person was last seen
    bounds = sorted({0, count} | {int(c) for c in cuts if 0 < c < count})
    carried: list = []  # people seen in the shot before, who may go on after the cut
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        open_tracks: list = []
        motion: dict = {}  # track number -> its detections in this shot, [(frame, centre)]
        known = len(tracks)  # people seen before this shot
        first = next((t for t in range(lo, hi) if frames[t]), -1)
        for t in range(lo, hi):
            faces = frames[t]
            if not faces:
                continue
            # a track missing more than RETIRE_AFTER frames is closed: it cannot take a later arrival
            open_tracks = [n for n in open_tracks if t - last[n][0] - 1 <= RETIRE_AFTER]
            candidates = open_tracks + (carried if t == first else [])
            taken = _pair(candidates, last, faces, t, motion)
            for number, j in taken.items():
                tracks[number].faces[t] = faces[j]
                last[number] = (t, faces[j])
                motion.setdefault(number, []).append((t, video.centre_and_size(faces[j])[0]))
                if number not in open_tracks:
                    open_tracks.append(number)
            used = set(taken.values())
            room = max_people - len(taken)
            for j, face in enumerate(faces):  # largest first
                if j in used or room <= 0:
                    continue
                number = len(tracks)
                how = "appeared" if t != first else ("new person" if known else "first")
                tracks.append(PersonTrack(number, [None] * count, how))
                tracks[number].faces[t] = face
                last[number] = (t, face)
                motion[number] = [(t, video.centre_and_size(face)[0])]
                open_tracks.append(number)
                room -= 1
        carried = [n for n in open_tracks if hi - last[n][0] - 1 <= RETIRE_AFTER]
    return tracks


def align_people(frames: Sequence[Sequence[FaceLandmarks]], *, max_people: int = 8, min_size: float = 0.0,
                 smoothing: float = 3.0, interpolate_lost: bool = True, change=None,
                 adaptive: bool = True) -> PeopleAlignment:
    """Find the cuts (as :func:`video.align_clip` does), track every person and smooth each one's crops inside
    its shots. ``change``: :func:`video.frame_change` of the frames (None: no cut is looked for)."""
    if smoothing < 0:
        raise ValueError(f"smoothing must be >= 0 frames, got {smoothing}")
    count = len(frames)
    cuts = [] if change is None else video.find_clip_cuts(frames, change)
    segments = segment_ids(count, cuts)
    tracks = track_people(frames, cuts, max_people, min_size)
    for track in tracks:
        span = track.span
        shot = video.Shot(span.start, span.stop - 1, span.start, track.how)
        track.clip = video.clip_from_track(track.faces, [shot], segments, smoothing=smoothing,
                                           interpolate_lost=interpolate_lost, adaptive=adaptive)
    return PeopleAlignment(tracks=tracks, cuts=list(cuts), frames=count, max_people=max_people,
                           smoothing=smoothing, segments=segments)
