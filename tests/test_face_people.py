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

    def each_track_its_nearest(tracks, last, faces, t, motion=None):  # not one to one: hidden B's track takes A's face
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


def synthetic_face(cx, cy, eyes=20.0):
    from transedit.models.face.landmarks import FaceLandmarks

    return FaceLandmarks(eye_left=(cx - eyes / 2, cy), eye_right=(cx + eyes / 2, cy),
                         mouth_left=(cx - eyes / 3, cy + eyes), mouth_right=(cx + eyes / 3, cy + eyes))


def test_the_gate_does_not_widen_with_time_caps_count_and_a_cut_at_frame_one():
    x = synthetic_face(100, 100)
    size = fv.centre_and_size(x)[1]
    # X stands still for 10 frames, then vanishes as Y appears half a crop away: one frame's gate says new person
    frames = [[x]] * 10 + [[synthetic_face(100 + 0.5 * size, 100)]] * 3
    tracks = fpeople.track_people(frames)
    assert [t.found for t in tracks] == [list(range(10)), [10, 11, 12]] and tracks[1].how == "appeared"
    # at most max_people faces per frame, the largest; 8 by default
    crowd = [[synthetic_face(60 * k, 100, 20 + k) for k in range(1, 11)]] * 2
    assert len(fpeople.track_people(crowd)) == 8
    capped = fpeople.track_people(crowd, max_people=2)
    assert [fv.centre_and_size(t.faces[0])[0][0] for t in capped] == [600.0, 540.0]
    # a cut right after the first frame still splits the shots
    moved = [[x], [synthetic_face(100 + 2 * size, 100)]]
    assert [t.how for t in fpeople.track_people(moved, cuts=[1])] == ["first", "new person"]
    assert [t.how for t in fpeople.track_people(moved)] == ["first", "appeared"]


def test_a_short_gap_is_interpolated_by_default_and_reported():
    x = [[synthetic_face(100 + t, 100)] for t in range(12)]
    x[5] = x[6] = []
    people = fpeople.align_people(x, smoothing=1.0)
    (track,) = people.tracks
    assert [track.clip.status[t] for t in (4, 5, 6, 7)] == [fv.FOUND, fv.INTERPOLATED, fv.INTERPOLATED, fv.FOUND]
    assert "person 0: frames 0-11 (12 crops), found in 10, interpolated 5-6" in people.summary()
    default = fpeople.align_people(x)
    assert (default.max_people, default.smoothing) == (8, 3.0) and "up to 3 frames" in default.summary()
    assert default.tracks[0].clip.adaptive  # narrower smoothing where the face moves fast, as for one person
    assert fpeople.align_people(x, smoothing=0.5).smoothing == 0.5
    with pytest.raises(ValueError, match="smoothing must be >= 0"):
        fpeople.align_people(x, smoothing=-0.5)
    lost = fpeople.align_people(x, smoothing=1.0, interpolate_lost=False)
    assert "left untouched 5-6" in lost.summary() and "interpolated" not in lost.summary()


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


# ------------------------------------------------------------------------------------------- the nodes
from transedit.models.face import landmarks as fl  # noqa: E402
from transedit.models.face import paste as fp  # noqa: E402
from transedit.nodes import faces as nodes  # noqa: E402
from transedit.nodes.inputs import NodeInputError  # noqa: E402


class ManyFaces:
    """A detector stub: per image a fixed list of faces (in the order given, not sorted)."""

    def __init__(self, per_image):
        self.per_image = list(per_image)

    def detect_landmarks(self, image):
        return list(self.per_image.pop(0))


def face_at(cx, cy, scale=40.0):
    return fl.FaceLandmarks(eye_left=(cx - scale / 2, cy), eye_right=(cx + scale / 2, cy),
                            mouth_left=(cx - scale / 3, cy + scale), mouth_right=(cx + scale / 3, cy + scale))


def align_all(monkeypatch, images, per_image, **kw):
    monkeypatch.setattr(nodes, "_make_detector", lambda node, choice: ManyFaces(per_image))
    args = dict(detector=nodes.MEDIAPIPE, output_size=64, face_index=0, if_no_face="error", padding="zeros",
                faces="all")
    args.update(kw)
    return nodes.TransEditAlignFace().align(images, **args)


@pytest.fixture
def group():
    g = torch.Generator().manual_seed(1)
    return torch.rand(3, 220, 300, 3, generator=g)


def test_every_face_of_every_photo_in_order_with_its_map(monkeypatch, group):
    small, big, mid = face_at(60, 80, 20), face_at(200, 90, 40), face_at(120, 100, 30)
    aligned, align, report = align_all(monkeypatch, group, [[small, big, mid], [], [mid]],
                                       if_no_face="pass through")
    assert aligned.shape == (5, 64, 64, 3) and len(align) == 5 and align.images == 3
    assert align.sources == [0, 0, 0, 1, 2] and align.faces == [0, 1, 2, 0, 0]
    assert align.found == [True, True, True, False, True]
    # largest first inside a photo: the crop of face k is the crop face_index k gives in 'one' mode
    for k, face in enumerate([big, mid, small]):
        one, one_align, _ = align_all(monkeypatch, group[:1], [[big, mid, small]], faces="one", face_index=k)
        assert torch.allclose(aligned[k], one[0]) and np.allclose(align.records[k].quad, one_align.records[0].quad)
    x0, y0, x1, y1 = align.box(1)  # the map back: the middle face's square in photo 0
    centre = fv.centre_and_size(mid)[0]
    assert x0 < centre[0] < x1 and y0 < centre[1] < y1 and 0 <= x0 and x1 <= 300
    assert "5 faces" not in report and "4 faces aligned" in report and "faces per photo: 3, 0, 1" in report
    assert "no face (passed through): 1" in report


def test_cap_minimum_size_and_errors(monkeypatch, group):
    faces = [face_at(60, 80, 20), face_at(200, 90, 40), face_at(120, 100, 30)]
    _, align, _ = align_all(monkeypatch, group[:1], [faces], max_faces=2)
    assert len(align) == 2 and [r.landmarks for r in align.records] == [faces[1], faces[2]]
    _, align, _ = align_all(monkeypatch, group[:1], [faces], min_face_size=100)
    sizes = [fv.centre_and_size(f)[1] for f in faces]
    assert len(align) == sum(s >= 100 for s in sizes) >= 1
    with pytest.raises(NodeInputError, match=r"TransEdit Align Face: input 'images' image 1 of the batch: no face"
                                             r" found of at least \d+ px.*lower min_face_size"):
        align_all(monkeypatch, group[:2], [[faces[1]], faces[:1]], min_face_size=int(sizes[1]) - 1)
    with pytest.raises(NodeInputError, match="input 'max_faces'"):
        align_all(monkeypatch, group[:1], [faces], max_faces=0)
    with pytest.raises(NodeInputError, match="input 'faces' must be one of"):
        align_all(monkeypatch, group[:1], [faces], faces="every")
    with pytest.raises(NodeInputError, match="input 'min_face_size'"):
        align_all(monkeypatch, group[:1], [faces], min_face_size=-1)


def test_one_mode_with_a_minimum_size_skips_small_faces(monkeypatch, group):
    faces = [face_at(200, 90, 40), face_at(60, 80, 20)]
    _, align, _ = align_all(monkeypatch, group[:1], [faces], faces="one", face_index=1, if_no_face="pass through",
                            min_face_size=int(fv.centre_and_size(faces[0])[1]) - 1)
    assert align.found == [False]  # only one face is big enough: face_index 1 has none


def test_paste_back_every_face_in_one_pass_larger_on_top(monkeypatch, group):
    near, far = face_at(150, 100, 44), face_at(185, 110, 30)  # overlapping squares; 'near' is larger
    photos = group[:1]
    aligned, align, _ = align_all(monkeypatch, photos, [[far, near]])
    assert align.faces == [0, 1] and align.records[0].landmarks is near
    red, blue = torch.zeros(64, 64, 3), torch.zeros(64, 64, 3)
    red[..., 0], blue[..., 2] = 1.0, 1.0
    edited = torch.stack([red, blue])  # near: red, far: blue
    out, mask = nodes.TransEditPasteBack().paste(photos, edited, align, "ellipse", 0.0, "off")
    singles = [fp.paste_back(photos, edited[k:k + 1], [align.records[k]], feather=0.0, color_match=False)[1][0]
               for k in range(2)]
    inside = [m >= 0.999 for m in singles]  # fully covered (the warped mask's edge pixels are partly)
    both = inside[0] & inside[1]
    assert both.sum() > 50  # the faces do overlap
    assert (out[0][both][:, 0] > 0.99).all() and (out[0][both][:, 2] < 0.01).all()  # the nearer face on top
    only_far = inside[1] & (singles[0] == 0)
    assert (out[0][only_far][:, 2] > 0.99).all()  # the far face where the near one does not cover it
    assert torch.equal(mask[0], torch.maximum(singles[0], singles[1]))  # one mask: both faces
    outside = mask[0] == 0
    assert torch.equal(out[0][outside], photos[0][outside])
    # planted fault: pasted in crop order (largest first) the far face ends on top where they overlap
    monkeypatch.setattr(fp, "paste_order", lambda records, sources: {0: [0, 1]})
    wrong, _ = nodes.TransEditPasteBack().paste(photos, edited, align, "ellipse", 0.0, "off")
    assert not (wrong[0][both][:, 0] > 0.99).all()


def test_each_photo_gets_its_own_faces_and_errors_name_the_fix(monkeypatch, group):
    per_image = [[face_at(60, 80, 20), face_at(200, 90, 40)], [face_at(150, 120, 36)], [face_at(80, 60, 24)] * 1]
    aligned, align, _ = align_all(monkeypatch, group, per_image)
    assert align.sources == [0, 0, 1, 2]
    out, mask = nodes.TransEditPasteBack().paste(group, torch.zeros_like(aligned), align, "ellipse", 0.04, "off")
    for i in range(3):  # each photo changed exactly where its own faces are
        expected = torch.zeros(220, 300, dtype=torch.bool)
        for k in [k for k in range(4) if align.sources[k] == i]:
            expected |= fp.paste_back(group[i:i + 1], aligned[k:k + 1], [align.records[k]])[1][0] > 0
        assert torch.equal(mask[i] > 0, expected)
    with pytest.raises(NodeInputError, match="'edited' has 3 images but 'align' describes 4.*one edited face per "
                                             "aligned face"):
        nodes.TransEditPasteBack().paste(group, aligned[:3], align, "ellipse", 0.04, "off")
    with pytest.raises(NodeInputError, match="'original' has 4 images but 'align' describes 3"):
        nodes.TransEditPasteBack().paste(torch.cat([group, group[:1]]), aligned, align, "ellipse", 0.04, "off")


def test_select_faces_edits_one_face_and_pastes_into_the_other_result(monkeypatch, group):
    per_image = [[face_at(60, 80, 20), face_at(200, 90, 40)], [face_at(150, 120, 36)]]
    aligned, align, _ = align_all(monkeypatch, group[:2], per_image)
    select = nodes.TransEditSelectFaces()
    first, first_align = select.select(aligned, align, "0")
    rest, rest_align = select.select(aligned, align, "1-")
    assert first.shape[0] == 2 and first_align.sources == [0, 1] and rest_align.sources == [0]
    assert torch.equal(first[1], aligned[2]) and torch.equal(rest[0], aligned[1])
    step, _ = nodes.TransEditPasteBack().paste(group[:2], torch.zeros_like(first), first_align, "ellipse", 0.04, "off")
    final, _ = nodes.TransEditPasteBack().paste(step, torch.ones_like(rest), rest_align, "ellipse", 0.04, "off")
    together, _ = nodes.TransEditPasteBack().paste(group[:2], torch.cat([torch.zeros_like(aligned[:1]),
                                                                         torch.ones_like(aligned[1:2]),
                                                                         torch.zeros_like(aligned[2:])]),
                                                   align, "ellipse", 0.04, "off")
    assert torch.allclose(final, together, atol=1e-6)  # the faces do not overlap: two passes = one
    assert select.select(aligned, align, "0, 1")[1].faces == [0, 1, 0]
    for bad, match in (("x", "must list face numbers"), ("3-1", "runs backwards"), ("5", "selects none of the faces "
                                                                                        "there are \\(0, 1\\)")):
        with pytest.raises(NodeInputError, match=f"TransEdit Select Faces: input 'faces' {bad and ''}.*{match}"):
            select.select(aligned, align, bad)
    with pytest.raises(NodeInputError, match="input 'aligned' has 2 images but 'align' describes 3"):
        select.select(aligned[:2], align, "0")


def test_video_every_person_node(monkeypatch):
    clip = hc.make_two_person_clip(frame_hw=(120, 180))
    frames = torch.from_numpy(clip.frames[10:40]).float() / 255  # B hidden in 4-11, the cut at 20
    (aligned, align, report) = align_all(monkeypatch, frames, clip.detections(noise=0.3)[10:40],
                                         temporal_mode="video", smoothing=2.0, if_no_face="interpolate")
    assert aligned.shape[0] == len(align) == 30 + 20 + 10 and align.images == 30
    assert align.faces == [0] * 30 + [1] * 20 + [2] * 10  # by person, then frame
    assert align.sources == list(range(30)) + list(range(20)) + list(range(20, 30))
    # each person's shots are segments of their own: person 0's two shots, then 1, then 2
    assert align.segments == [0] * 20 + [1] * 10 + [2] * 20 + [3] * 10
    assert [align.status[30 + t] for t in range(2, 14)] == [fv.FOUND] * 2 + [fv.LOST] * 8 + [fv.FOUND] * 2
    assert "3 people followed" in report and "person 1: frames 0-19 (20 crops), found in 12" in report
    out, mask = nodes.TransEditPasteBack().paste(frames, aligned, align, "ellipse", 0.04, "lab")
    assert out.shape == frames.shape and mask[25].max() > 0.9 and mask[3].max() > 0.9
    with pytest.raises(NodeInputError, match="no face in frames 0-2"):
        align_all(monkeypatch, frames[:3], [[], [], []], temporal_mode="video")
    (empty, none_align, none_report) = align_all(monkeypatch, frames[:3], [[], [], []], temporal_mode="video",
                                                 if_no_face="pass through")
    assert empty.shape[0] == 3 and none_align.found == [False] * 3 and "no frame has a face" in none_report


# ------------------------------------------- motion model and retirement (people crossing, fast movers, leavers)
CROP = fv.centre_and_size(synthetic_face(0, 0))[1]  # 80 px


def named_walk(paths: dict, frames: int, noise: float = 0.0, seed: int = 0):
    """Per frame [(name, face)] for people walking ``paths``: name -> t -> (x, y) or None (not there)."""
    rng = np.random.default_rng(seed)
    out = []
    for t in range(frames):
        here = [(name, path(t)) for name, path in paths.items() if path(t) is not None]
        out.append([(name, synthetic_face(*(np.asarray(xy) + rng.normal(0, noise, 2)))) for name, xy in here])
    return out


def follow(named, **kw):
    """Track the faces and give per track the names its found frames show."""
    frames = [[face for _, face in faces] for faces in named]
    names = [{id(face): name for name, face in faces} for faces in named]
    tracks = fpeople.track_people(frames, **kw)
    return [{names[t][id(track.faces[t])] for t in track.found} for track in tracks], tracks


def crossing(speed, frames=30):
    """A walks right and B left along the same line at ``speed`` crop sizes per frame, same size, no one hidden."""
    step = speed * CROP
    return named_walk({"A": lambda t: (100 + step * t, 200),
                       "B": lambda t: (100 + step * (frames - 1 - t), 200)}, frames, noise=0.5)


@pytest.mark.parametrize("speed", [0.1, 0.2, 0.4])
def test_two_people_crossing_at_the_same_height_keep_their_identities(speed, monkeypatch):
    people, tracks = follow(crossing(speed))
    assert people == [{"A"}, {"B"}] and [len(t.found) for t in tracks] == [30, 30]
    with monkeypatch.context() as m:  # planted: no motion model (each track looked for where last seen)
        m.setattr(fpeople, "velocity", lambda history: None if len(history) < 2 else np.zeros(2))
        assert any(len(names) > 1 for names in follow(crossing(speed))[0])


def test_a_fast_mover_stays_one_track(monkeypatch):
    fast = 0.5 * CROP  # 40 px a frame for 80 px crops, beyond one frame's gate around the last position
    walk = named_walk({"A": lambda t: (50 + fast * t, 100),
                       "B": lambda t: (50 + fast * (29 - t), 400)}, 30, noise=0.5)
    people, tracks = follow(walk)
    assert people == [{"A"}, {"B"}] and [t.found for t in tracks] == [list(range(30))] * 2
    with monkeypatch.context() as m:  # planted: no motion model -> one 'person' per frame or so
        m.setattr(fpeople, "velocity", lambda history: None if len(history) < 2 else np.zeros(2))
        assert len(follow(walk)[0]) > 10
    with monkeypatch.context() as m:  # planted: the first step no wider than a moving track's gate
        m.setattr(fpeople, "FIRST_STEP_GATE", fv.TRACK_GATE)
        assert len(follow(walk)[0]) > 10


def test_a_retired_track_does_not_take_a_later_arrival(monkeypatch):
    step = 0.1 * CROP
    gone = fpeople.RETIRE_AFTER + 2  # frames A is missing before C appears where A would have walked to
    paths = {"A": lambda t: (100 + step * t, 100) if t < 6 else None,
             "B": lambda t: (600, 300),  # keeps the shot's frames from being empty
             "C": lambda t: (100 + step * t, 100) if t >= 6 + gone else None}
    walk = named_walk(paths, 6 + gone + 10, noise=0.3)
    people, tracks = follow(walk)
    assert people == [{"A"}, {"B"}, {"C"}] and tracks[2].how == "appeared"
    assert tracks[0].found == list(range(6))
    with monkeypatch.context() as m:  # planted: no retirement -> A's stale track takes C
        m.setattr(fpeople, "RETIRE_AFTER", 10 ** 6)
        assert {"A", "C"} in follow(walk)[0]
    # a person hidden for up to RETIRE_AFTER frames is still taken up again (B behind A in the two-person clip
    # is hidden for 8); the limit, documented: someone else where A would be within that time continues A's track
    soon = dict(paths, C=lambda t: (100 + step * t, 100) if t >= 9 else None)
    assert follow(named_walk(soon, 20, noise=0.3))[0] == [{"A", "C"}, {"B"}]


def test_the_documented_limit_two_people_swapping_places_at_a_cut_swap_tracks():
    # faces are not recognised: after a cut each track goes on with the face where it was last seen
    walk = named_walk({"A": lambda t: (100, 100) if t < 10 else (400, 100),
                       "B": lambda t: (400, 100) if t < 10 else (100, 100)}, 20)
    people, tracks = follow(walk, cuts=[10])
    assert people == [{"A", "B"}, {"A", "B"}] and [t.how for t in tracks] == ["first", "first"]


def test_a_person_who_stops_or_turns_back_keeps_their_track(monkeypatch):
    stops = named_walk({"A": lambda t: (50 + 0.5 * CROP * min(t, 10), 100)}, 20, noise=0.5)  # fast, then still
    turns = named_walk({"A": lambda t: (400 + 0.3 * CROP * (10 - abs(t - 10)), 100)}, 20, noise=0.5)
    assert [len(follow(stops)[0]), len(follow(turns)[0])] == [1, 1]
    with monkeypatch.context() as m:  # planted: only the predicted place is looked at -> a second 'person'
        m.setattr(fpeople, "places_to_look",
                  lambda centre, speed, gap: [centre if speed is None else centre + speed * gap])
        assert [len(follow(stops)[0]), len(follow(turns)[0])] == [2, 2]


def test_only_a_one_detection_track_gets_the_wide_first_step():
    x = synthetic_face(100, 100)
    half_away = [synthetic_face(100 + 0.5 * CROP, 100)]
    # seen twice, standing still: its velocity is known (zero), so a face half a crop away is someone else
    assert [t.found for t in fpeople.track_people([[x]] * 2 + [half_away] * 2)] == [[0, 1], [2, 3]]
    assert [t.found for t in fpeople.track_people([[x]] + [half_away] * 2)] == [[0, 1, 2]]  # seen once: goes on


@pytest.mark.parametrize("cut", [False, True])
def test_retirement_comes_after_exactly_retire_after_missing_frames(cut):
    def people(missing):  # A seen in frames 0-5, missing, then back where they stood (after a cut, if any)
        back = 6 + missing
        frames = [[synthetic_face(100, 100)]] * 6 + [[]] * missing + [[synthetic_face(100, 100)]] * 3
        frames = [faces + [synthetic_face(600, 300)] for faces in frames] if not cut else frames
        return [t.found for t in fpeople.track_people(frames, cuts=[back] if cut else [])][:2]

    limit = fpeople.RETIRE_AFTER
    extra = [] if cut else [list(range(9 + limit))]  # the bystander's track
    assert people(limit) == [list(range(6)) + list(range(6 + limit, 9 + limit))] + extra
    assert people(limit + 1)[0] == list(range(6)) and len(people(limit + 1)) == 2
