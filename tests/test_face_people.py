"""Every face: Align Face's `faces: all` on photos (crops, map back, Paste Back of overlapping faces, Select
Faces) and in video (one track per person through a two-person hostile clip, with planted tracking faults)."""
import numpy as np
import pytest
import torch

import hostile_clip as hc
from transedit.models.face import people as fpeople
from transedit.models.face import video as fv


@pytest.fixture(scope="module")
def two():
    return hc.make_two_person_clip(render=False)


def identities(clip, tracks):
    """Per track the set of people its found frames show (one name each when nobody is swapped)."""
    return [{clip.identity(t, track.faces[t]) for t in track.found} for track in tracks]


def test_two_people_crossing_a_cut_and_one_leaving_keep_their_tracks(two):
    tracks = fpeople.track_people(two.detections(noise=0.5), cuts=two.cuts)
    assert identities(two, tracks) == [{"A"}, {"B"}, {"C"}]
    a, b, c = tracks
    # A: through the crossing and the cut (a face where they were) until they leave
    assert a.found == list(np.flatnonzero(two.visible["A"])) and a.how == "first"
    # B: hidden behind A for 8 frames and taken up again on the other side; ends at the cut
    assert b.found == list(np.flatnonzero(two.visible["B"])) and b.how == "first"
    assert b.span == range(0, hc.TWO_CUT)
    # C stands far from where B was last seen: a new person, not B going on
    assert c.how == "new person" and c.found == list(range(hc.TWO_CUT, hc.TWO_FRAMES))


def test_planted_faults_swap_identities(two, monkeypatch):
    frames = two.detections(noise=0.5)
    with monkeypatch.context() as m:  # nearest-box assignment without the gate: B's track takes C after the cut
        m.setattr(fv, "track_gate", lambda gap: np.inf)
        m.setattr(fv, "TRACK_SCALE", np.inf)
        assert {"B", "C"} in identities(two, fpeople.track_people(frames, cuts=two.cuts))

    def each_track_its_nearest(tracks, last, faces, t):  # not one to one: hidden B's track takes A's face
        taken = {}
        for number in tracks:
            centre, size = fv.centre_and_size(last[number][1])
            gate = size * fv.track_gate(t - last[number][0])
            near = [(np.hypot(*(fv.centre_and_size(f)[0] - centre)), j) for j, f in enumerate(faces)]
            best = min(near)
            if best[0] <= gate:
                taken[number] = best[1]
        return taken

    with monkeypatch.context() as m:
        m.setattr(fpeople, "_pair", each_track_its_nearest)
        assert {"A", "B"} in identities(two, fpeople.track_people(frames, cuts=two.cuts))


def test_cap_and_minimum_size(two):
    frames = two.detections()
    capped = fpeople.track_people(frames, cuts=two.cuts, max_people=1)
    assert identities(two, capped) == [{"A"}, {"C"}]  # one face per frame: the largest; C once A has left
    gone = next(t for t in range(hc.TWO_CUT, hc.TWO_FRAMES) if not two.visible["A"][t])
    assert capped[1].how == "appeared" and capped[1].span.start == gone
    size_b = fv.centre_and_size(frames[0][1])[1]
    small_out = fpeople.track_people(frames, cuts=two.cuts, min_size=size_b + 1)
    assert {"B"} not in identities(two, small_out) and {"A"} in identities(two, small_out)
    with pytest.raises(ValueError, match="max_people"):
        fpeople.track_people(frames, max_people=0)


def test_align_people_on_the_rendered_clip_finds_the_cut_and_reports_each_track():
    clip = hc.make_two_person_clip(frame_hw=(120, 180))
    change = fv.frame_change(fv.frame_signatures(torch.from_numpy(clip.frames).float() / 255))
    people = fpeople.align_people(clip.detections(noise=0.3), change=change, smoothing=2.0)
    assert people.cuts == [hc.TWO_CUT]
    assert identities(clip, people.tracks) == [{"A"}, {"B"}, {"C"}]
    for track in people.tracks:  # each track's crops stay finite over its span, smoothed inside its shots
        assert np.isfinite(track.clip.quads[list(track.span)]).all()
        assert all(track.clip.status[t] == fv.FOUND for t in track.found)
    b = people.tracks[1]
    hidden = [t for t in b.span if t not in b.found]
    assert hidden == list(range(14, 22)) and all(b.clip.status[t] == fv.LOST for t in hidden)  # 8 > 3: lost
    report = people.summary()
    assert "3 people followed" in report and "cuts (new shots) at frames 30" in report
    assert "person 0: frames 0-47 (48 crops), found in 48" in report
    assert "person 1: frames 0-29 (30 crops), found in 22, left untouched 14-21" in report
    assert "person 2: frames 30-59 (30 crops), found in 30; a new person after the cut at frame 30" in report
