"""Face video: the temporal smoother, person tracking, smoothed crops, lost frames, Paste Back's smoothed colour
match and fade, chunked pasting, and Smooth Latents (detectors stubbed with landmarks of known motion)."""
import numpy as np
import pytest
import torch

from transedit.models import face_landmarks as fl
from transedit.models import face_paste as fp
from transedit.models import face_video as fv
from transedit.models.latent import StyleLatent
from transedit.models.temporal import smooth_series, smoothing_weights
from transedit.nodes import editing
from transedit.nodes import faces as nodes
from transedit.nodes.inputs import NodeInputError


def face_at(cx, cy, scale=40.0, angle=0.0):
    """Eye and mouth landmarks of an upright face (eye distance `scale`) turned by `angle` radians about its centre."""
    pts = np.array([[-scale / 2, 0], [scale / 2, 0], [-scale / 3, scale], [scale / 3, scale]])
    c, s = np.cos(angle), np.sin(angle)
    pts = pts @ np.array([[c, s], [-s, c]]) + [cx, cy]
    return fl.FaceLandmarks(eye_left=pts[0], eye_right=pts[1], mouth_left=pts[2], mouth_right=pts[3])


def moving_faces(count, noise=0.0, seed=0):
    """A face gliding right and down, growing and turning slowly; landmarks with Gaussian noise (pixels)."""
    rng = np.random.default_rng(seed)
    truth, noisy = [], []
    for t in range(count):
        u = t / max(count - 1, 1)
        args = (100 + 60 * u, 90 + 20 * np.sin(np.pi * u), 40 + 8 * u, 0.15 * np.sin(2 * np.pi * u))
        truth.append(face_at(*args))
        f = face_at(*args)
        jitter = rng.normal(0.0, noise, size=(4, 2))
        noisy.append(fl.FaceLandmarks(eye_left=f.eye_left + jitter[0], eye_right=f.eye_right + jitter[1],
                                      mouth_left=f.mouth_left + jitter[2], mouth_right=f.mouth_right + jitter[3]))
    return truth, noisy


def crop_jitter(quads, true_quads):
    """Mean over frames and corners of the frame-to-frame corner motion beyond the true motion (pixels)."""
    moved = np.diff(quads, axis=0) - np.diff(true_quads, axis=0)
    return float(np.linalg.norm(moved, axis=-1).mean())


# ------------------------------------------------------------------------------------------ the smoother
def test_smoothing_is_a_gaussian_blur_inside_and_keeps_lines_everywhere():
    t = np.arange(40, dtype=np.float64)
    noise = np.random.default_rng(1).normal(size=40)
    smoothed = smooth_series(noise, 2.0)
    g = np.exp(-0.5 * (np.arange(-8, 9) / 2.0) ** 2)
    assert np.allclose(smoothed[10:30], np.convolve(noise, g / g.sum(), mode="same")[10:30])
    line = 3.0 * t - 7.0  # a face moving steadily: no lag at the ends of the clip, none across a gap
    assert np.allclose(smooth_series(line, 3.0), line)
    present = np.ones(40, dtype=bool)
    present[12:30] = False
    assert np.allclose(smooth_series(line, 3.0, present), line)
    assert np.allclose(smooth_series(line, 0.0, present), line)  # sigma 0: lost frames still filled


def test_missing_frames_are_filled_and_held_at_the_ends():
    values = np.array([5.0, 5.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 9.0, 9.0])
    present = np.array([1, 1, 0, 0, 0, 0, 0, 0, 1, 1], dtype=bool)
    filled = smooth_series(values, 0.5, present)  # the kernel cannot reach across: a straight line between
    assert np.allclose(filled, [5, 5, 5 + 4 / 7, 5 + 8 / 7, 5 + 12 / 7, 5 + 16 / 7, 5 + 20 / 7, 5 + 24 / 7, 9, 9])
    held = smooth_series(np.array([0.0, 0.0, 4.0, 4.0, 0.0]), 0.3, np.array([0, 0, 1, 1, 0], dtype=bool))
    assert np.allclose(held, 4.0)
    assert np.allclose(smoothing_weights(np.ones(7, dtype=bool), 1.5).sum(axis=1), 1.0)  # weights keep the level
    with pytest.raises(ValueError, match="no frame"):
        smooth_series(values, 1.0, np.zeros(10, dtype=bool))


def test_tensors_keep_dtype_and_device():
    x = torch.randn(12, 3, 5, dtype=torch.float64)
    out = smooth_series(x, 1.0)
    assert out.dtype == torch.float64 and out.shape == x.shape
    assert torch.allclose(out, torch.from_numpy(smooth_series(x.numpy(), 1.0)), atol=1e-6)


# ---------------------------------------------------------------------------------- tracking and crops
def test_the_person_is_followed_not_the_largest_face():
    frames = []
    for t in range(12):
        person = face_at(80 + 4 * t, 100, 40)  # walking right
        other = face_at(300, 100, 40 + 4 * t)  # someone else growing past the person's size
        frames.append(sorted([person, other], key=lambda f: -f.area))
    track, start = fv.track_person(frames, face_index=0)
    assert start == 0
    assert all(abs(f.eye_left[0] - (80 + 4 * t - 20)) < 1e-9 for t, f in enumerate(track))


def test_a_lost_person_is_not_replaced_by_someone_else():
    frames = [[face_at(100 + 2 * t, 100)] for t in range(10)]
    frames[4] = [face_at(400, 300)]  # the person leaves the frame, a stranger is there
    frames[5] = []
    track, _ = fv.track_person(frames)
    assert track[4] is None and track[5] is None
    assert track[6] is not None and abs(track[6].eye_left[0] - 92.0) < 1e-9
    # the track also runs backwards from the first frame with the face
    track, start = fv.track_person([[], [], [face_at(100, 100)], [face_at(101, 100)]])
    assert start == 2 and track[:2] == [None, None]


def test_smoothed_crops_cut_jitter_several_fold():
    truth, noisy = moving_faces(60, noise=1.5)
    true_quads = fv.align_clip([[f] for f in truth], smoothing=0).quads
    raw = fv.align_clip([[f] for f in noisy], smoothing=0).quads
    smooth = fv.align_clip([[f] for f in noisy], smoothing=3.0).quads
    assert crop_jitter(raw, true_quads) > 4 * crop_jitter(smooth, true_quads)
    # and the smoothed crop still follows the motion: no lag beyond the noise
    assert np.abs(smooth - true_quads).mean() < np.abs(raw - true_quads).mean()


def test_lost_frames_are_interpolated_or_left_and_reported():
    truth, _ = moving_faces(20)
    frames = [[f] for f in truth]
    for t in (7, 8, 9):
        frames[t] = []
    clip = fv.align_clip(frames, smoothing=2.0, interpolate_lost=True)
    assert clip.frames(fv.INTERPOLATED) == [7, 8, 9] and clip.frames(fv.FOUND) == [t for t in range(20) if t not in (7, 8, 9)]
    true_quads = fv.align_clip([[f] for f in truth], smoothing=0).quads
    qsize = np.hypot(*(true_quads[8, 3] - true_quads[8, 0]))
    assert np.abs(clip.quads[7:10] - true_quads[7:10]).max() < 0.03 * qsize  # filled where the face would be
    assert "crop interpolated in 3 frames: 7-9" in clip.summary()
    left = fv.align_clip(frames, smoothing=2.0, interpolate_lost=False)
    assert left.frames(fv.LOST) == [7, 8, 9] and "left untouched in 3 frames: 7-9" in left.summary()
    nobody = fv.align_clip([[], []])
    assert nobody.start == -1 and nobody.status == [fv.LOST, fv.LOST] and "no frame has the face" in nobody.summary()


def test_paste_strength_fades_around_lost_frames():
    status = [fv.FOUND] * 4 + [fv.LOST] * 2 + [fv.INTERPOLATED] + [fv.FOUND] * 3
    assert np.allclose(fv.paste_strength(status, 2.0), [1, 1, 2 / 3, 1 / 3, 0, 0, 1 / 3, 2 / 3, 1, 1])
    assert np.allclose(fv.paste_strength(status, 0.0), [1, 1, 1, 1, 0, 0, 1, 1, 1, 1])
    assert np.allclose(fv.paste_strength([fv.FOUND] * 3, 5.0), 1.0)


def test_frame_ranges():
    assert fv.frame_ranges([3, 4, 5, 9, 11, 12]) == "3-5, 9, 11-12" and fv.frame_ranges([]) == ""


# --------------------------------------------------------------------------------------------- the nodes
class ClipDetector:
    """Detections per frame from a list (batched like RetinaFace, so the node's chunked detection runs)."""

    def __init__(self, frames):
        self.frames, self.calls = list(frames), []

    def detect_batch(self, images):
        self.calls.append(images.shape[0])
        out, self.frames = self.frames[:images.shape[0]], self.frames[images.shape[0]:]
        return out


def run_video_align(monkeypatch, images, frames, **kw):
    detector = ClipDetector(frames)
    monkeypatch.setattr(nodes, "_make_detector", lambda node, choice: detector)
    args = dict(detector=nodes.MEDIAPIPE, output_size=64, face_index=0, if_no_face="interpolate", padding="blur",
                temporal_mode="video", smoothing=3.0)
    args.update(kw)
    return nodes.TransEditAlignFace().align(images, **args), detector


@pytest.fixture
def clip():
    g = torch.Generator().manual_seed(0)
    return torch.rand(20, 200, 260, 3, generator=g)


def test_align_face_video_mode(monkeypatch, clip):
    truth, noisy = moving_faces(20, noise=1.0)
    frames = [[f] for f in noisy]
    frames[5] = []
    (aligned, align, report), detector = run_video_align(monkeypatch, clip, frames)
    assert aligned.shape == (20, 64, 64, 3) and align.is_video and align.smoothing == 3.0
    assert detector.calls == [8, 8, 4]  # detected in chunks of DETECTOR_BATCH
    assert align.status[5] == fv.INTERPOLATED and align.found == [True] * 20
    assert "crop interpolated in 1 frames: 5" in report
    expected = fv.align_clip(frames, smoothing=3.0).quads
    assert np.allclose(np.stack([r.quad for r in align.records]), expected)
    (_, still_align, still_report), _ = run_video_align(monkeypatch, clip[:2], [[truth[0]], [truth[1]]],
                                                        temporal_mode="off", if_no_face="error")
    assert not still_align.is_video and "2 photos aligned separately" in still_report


def test_align_face_video_mode_errors_and_pass_through(monkeypatch, clip):
    truth, _ = moving_faces(20)
    frames = [[f] for f in truth]
    frames[3] = []
    with pytest.raises(NodeInputError, match=r"missing in frames 3 \(of 20\).*interpolate"):
        run_video_align(monkeypatch, clip, frames, if_no_face="error")
    (_, align, report), _ = run_video_align(monkeypatch, clip, frames, if_no_face="pass through")
    assert align.found[3] is False and align.status[3] == fv.LOST and "left untouched in 1 frames: 3" in report
    with pytest.raises(NodeInputError, match="temporal_mode to 'video'"):
        run_video_align(monkeypatch, clip[:2], frames[:2], temporal_mode="off")
    (aligned, align, report), _ = run_video_align(monkeypatch, clip[:3], [[], [], []], if_no_face="pass through")
    assert align.found == [False] * 3 and "no frame has the face" in report and aligned.shape[0] == 3


def test_paste_back_smooths_the_colour_match_over_frames(monkeypatch, clip):
    truth, _ = moving_faces(20)
    (aligned, align, _), _ = run_video_align(monkeypatch, clip, [[f] for f in truth], smoothing=3.0)
    # the photos flicker in brightness frame to frame; the edited face is the same every frame
    flicker = torch.tensor([0.15 if t % 2 else -0.15 for t in range(20)]).reshape(20, 1, 1, 1)
    photos = (clip * 0.5 + 0.25 + flicker).clamp(0, 1)
    edited = torch.full_like(aligned, 0.5)
    paste = nodes.TransEditPasteBack()
    per_frame, mask = paste.paste(photos, edited, align, "ellipse", 0.04, "rgb", color_smoothing=0.0)
    smoothed, _ = paste.paste(photos, edited, align, "ellipse", 0.04, "rgb")  # -1: Align Face's 3 frames
    inside = mask > 0.99

    def face_flicker(out):
        levels = torch.stack([out[t][inside[t]].mean() for t in range(20)])
        return float(levels.diff().abs().mean())

    assert face_flicker(per_frame) > 0.2  # matching each frame carries the flicker into the face
    assert face_flicker(smoothed) < 0.25 * face_flicker(per_frame)
    outside = mask == 0
    assert torch.equal(smoothed[outside], photos[outside])


def test_paste_back_fades_out_around_a_lost_stretch(monkeypatch, clip):
    truth, _ = moving_faces(20)
    frames = [[f] for f in truth]
    frames[10] = []
    (aligned, align, _), _ = run_video_align(monkeypatch, clip, frames, if_no_face="pass through", smoothing=2.0)
    out, mask = nodes.TransEditPasteBack().paste(clip, torch.zeros_like(aligned), align, "ellipse", 0.04, "off")
    peaks = [float(mask[t].max()) for t in range(20)]
    assert peaks[10] == 0 and torch.equal(out[10], clip[10])
    assert peaks[9] == pytest.approx(1 / 3, abs=0.01) and peaks[8] == pytest.approx(2 / 3, abs=0.01)
    assert peaks[11] == pytest.approx(1 / 3, abs=0.01) and peaks[0] > 0.99


def test_paste_back_reads_frames_in_place_and_survives_out_of_memory(monkeypatch, clip):
    truth, _ = moving_faces(20)
    (aligned, align, _), _ = run_video_align(monkeypatch, clip, [[f] for f in truth])
    edited = aligned.flip(1)
    whole = nodes.TransEditPasteBack()
    whole.chunk_size = 64
    expected = whole.paste(clip, edited, align, "ellipse", 0.04, "lab")
    seen, failed = [], []
    real = fp.paste_back

    def paste_back(original, *a, **k):
        # every call gets one frame, a view of the clip (a long clip's frames are never copied)
        seen.append((original.shape[0], original.untyped_storage().data_ptr() == clip.untyped_storage().data_ptr()))
        if k.get("into") is not None and len(seen) == 7 and not failed:
            failed.append(True)
            raise torch.OutOfMemoryError("simulated")  # mid-chunk: the chunk is redone at half its size
        return real(original, *a, **k)

    monkeypatch.setattr(fp, "paste_back", paste_back)
    chunked = nodes.TransEditPasteBack()
    chunked.chunk_size = 4
    got = chunked.paste(clip, edited, align, "ellipse", 0.04, "lab")
    assert failed and all(n == 1 and shared for n, shared in seen)
    assert torch.allclose(got[0], expected[0], atol=1e-6) and torch.equal(got[1], expected[1])


def _latent(count, with_features=False):
    g = torch.Generator().manual_seed(3)
    extras = {"source_images": torch.rand(count, 8, 8, 3, generator=g)}
    if with_features:
        extras["smart_features"] = [[torch.randn(4, 2, generator=g), torch.randn(16, 3, generator=g)]
                                    for _ in range(count)]
    return StyleLatent(wplus=torch.randn(count, 6, 8, generator=g), generator="g", generator_name="gen",
                       extras=extras)


def test_smooth_latents_node():
    node = editing.TransEditSmoothLatents()
    latent = _latent(12, with_features=True)
    (out,) = node.smooth(latent, 1.5)
    assert torch.allclose(out.wplus, smooth_series(latent.wplus, 1.5), atol=1e-6)
    assert out.extras["source_images"] is latent.extras["source_images"] and out.extras["edits"][-1] == {"smooth": 1.5}
    first = torch.stack([f[0] for f in latent.extras["smart_features"]])
    assert torch.allclose(torch.stack([f[0] for f in out.extras["smart_features"]]), smooth_series(first, 1.5), atol=1e-6)
    assert node.smooth(latent, 0.0)[0] is latent and node.smooth(_latent(1), 4.0)[0].batch_size == 1


def test_smooth_latents_leaves_out_frames_without_the_face(monkeypatch, clip):
    truth, _ = moving_faces(12)
    frames = [[f] for f in truth]
    frames[4] = []
    (_, align, _), _ = run_video_align(monkeypatch, clip[:12], frames, if_no_face="interpolate")
    latent = _latent(12)
    wplus = latent.wplus.clone()
    wplus[4] = 1000.0  # the inversion of a frame without the face: nonsense that must not leak into neighbours
    (out,) = editing.TransEditSmoothLatents().smooth(latent.with_wplus(wplus), 1.0, align)
    present = np.ones(12, dtype=bool)
    present[4] = False
    assert torch.allclose(out.wplus, smooth_series(wplus, 1.0, present), atol=1e-5)
    assert out.wplus.abs().max() < 100
    with pytest.raises(NodeInputError, match="describes 12 frames but the latent has 3"):
        editing.TransEditSmoothLatents().smooth(_latent(3), 1.0, align)
    with pytest.raises(NodeInputError, match="TE_ALIGN"):
        editing.TransEditSmoothLatents().smooth(_latent(3), 1.0, "not an alignment")


def test_degenerate_detections_are_skipped():
    point = fl.FaceLandmarks(eye_left=(5, 5), eye_right=(5, 5), mouth_left=(5, 5), mouth_right=(5, 5))
    track, start = fv.track_person([[point], [point, face_at(100, 100)], [face_at(101, 100)]])
    assert start == 1 and track[0] is None and track[2] is not None


def test_image_inputs_are_not_copied_unless_they_need_cleaning():
    from transedit.nodes.inputs import check_images

    clean = torch.rand(3, 16, 16, 4)
    got = check_images("node", "images", clean)
    assert got.untyped_storage().data_ptr() == clean.untyped_storage().data_ptr() and got.shape[-1] == 3
    dirty = clean.clone()
    dirty[0, 1, 1, 0], dirty[1, 2, 2, 1], dirty[2, 3, 3, 2] = float("nan"), float("inf"), -2.0
    got = check_images("node", "images", dirty)
    assert got.untyped_storage().data_ptr() != dirty.untyped_storage().data_ptr()
    assert torch.isfinite(got).all() and got.min() >= 0 and got.max() <= 1 and got[1, 2, 2, 1] == 1


class Cancelled(Exception):
    """Stands for ComfyUI's interrupt exception."""


def cancel_at(monkeypatch, n):
    from transedit.nodes import comfy_bridge as bridge

    checks = {"n": 0}

    def check():
        checks["n"] += 1
        if checks["n"] >= n:
            raise Cancelled()

    monkeypatch.setattr(bridge, "check_interrupt", check)


def test_cancel_stops_the_video_align_and_the_paste(monkeypatch, clip):
    truth, _ = moving_faces(20)
    frames = [[f] for f in truth]
    (aligned, align, _), _ = run_video_align(monkeypatch, clip, frames)
    expected = nodes.TransEditPasteBack().paste(clip, aligned, align, "ellipse", 0.04, "lab")
    from transedit.models import face_align as fa

    warps, pastes = [], []
    real_warp, real_paste = fa.align_to_quad, fp.paste_back
    with monkeypatch.context() as m:
        m.setattr(fa, "align_to_quad", lambda *a, **k: warps.append(1) or real_warp(*a, **k))
        cancel_at(m, 5)  # three detection chunks, then one check per warped frame
        with pytest.raises(Cancelled):
            run_video_align(m, clip, frames)
    assert len(warps) == 1
    with monkeypatch.context() as m:
        m.setattr(fp, "paste_back", lambda *a, **k: pastes.append(1) or real_paste(*a, **k))
        cancel_at(m, 7)  # five chunks measuring colours, then one check per chunk of four pasted frames
        paste = nodes.TransEditPasteBack()
        paste.chunk_size = 4
        with pytest.raises(Cancelled):
            paste.paste(clip, aligned, align, "ellipse", 0.04, "lab")
    assert len(pastes) == 4
    again = nodes.TransEditPasteBack().paste(clip, aligned, align, "ellipse", 0.04, "lab")
    assert torch.equal(again[0], expected[0]) and torch.equal(again[1], expected[1])
