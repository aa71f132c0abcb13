"""Face video: the temporal smoother, person tracking, smoothed crops, lost frames, Paste Back's smoothed colour
match and fade, chunked pasting, and Smooth Latents (detectors stubbed with landmarks of known motion).
Over 600 lines: one suite for one stage, each hostile case beside the planted fault that shows its check can fail."""
import dataclasses
import re

import numpy as np
import pytest
import torch

from transedit.models.face import landmarks as fl
from transedit.models.face import paste as fp
from transedit.models.face import video as fv
from transedit.models.core.latent import StyleLatent
from transedit.models.face.temporal import smooth_series, smoothing_weights
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
    from transedit.models.face import align as fa

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


# =============================================================================== footage, not one smooth shot
import hostile_clip as hc  # noqa: E402
from transedit.models.face import temporal  # noqa: E402


def dense_reference(values, sigma, present, segments=None):
    """The smoother as a dense [T, T] matrix built row by row (the pre-banded implementation), applied to each
    segment on its own: what the banded smoother must equal."""
    values = np.asarray(values, dtype=np.float64)
    present = np.asarray(present, dtype=bool)
    segments = np.zeros(len(values), dtype=int) if segments is None else np.asarray(segments)
    out = values.copy()
    for s in np.unique(segments):
        idx = np.flatnonzero(segments == s)
        p = present[idx]
        if not p.any():
            continue
        n = len(idx)
        if sigma <= 0:
            m, fit = np.eye(n), p.copy()
        else:
            radius = max(1, int(np.ceil(4.0 * sigma)))
            offs = np.arange(-radius, radius + 1)
            g = np.exp(-0.5 * (offs / sigma) ** 2)
            m, fit = np.zeros((n, n)), np.zeros(n, dtype=bool)
            for t in range(n):
                src = t + offs
                ok = (src >= 0) & (src < n)
                src, d, w = src[ok], offs[ok].astype(float), g[ok] * p[src[ok]]
                s0, s1, s2 = w.sum(), (w * d).sum(), (w * d * d).sum()
                if s0 < 0.5:
                    continue
                det = s0 * s2 - s1 * s1
                m[t, src] = w * (s2 - s1 * d) / det if det > 1e-9 * s0 * s0 else w / s0
                fit[t] = True
        fitted = np.flatnonzero(fit)
        for t in np.flatnonzero(~fit):
            k = np.searchsorted(fitted, t)
            before, after = fitted[:k], fitted[k:]
            if before.size and after.size:
                u = (t - before[-1]) / (after[0] - before[-1])
                m[t] = (1 - u) * m[before[-1]] + u * m[after[0]]
            else:
                m[t] = m[before[-1]] if before.size else m[after[0]]
        out[idx] = m @ np.where(p[:, None], values[idx].reshape(n, -1), 0.0).reshape(values[idx].shape)
    return out


def mismatches_dense(smoother, trials=60, seed=0) -> int:
    """How many random series (lengths, gaps, cuts, widths) ``smoother`` gets different from the dense one."""
    rng = np.random.default_rng(seed)
    bad = 0
    for _ in range(trials):
        count = int(rng.integers(2, 40))
        sigma = float(rng.choice([0.0, 0.4, 1.0, 2.0, 3.5]))
        present = rng.random(count) < rng.uniform(0.3, 1.0)
        present[rng.integers(count)] = True
        segments = temporal.segment_ids(count, rng.integers(1, count, size=int(rng.integers(0, 3))))
        values = rng.normal(size=(count, 3))
        if not np.allclose(smoother(values, sigma, present, segments), dense_reference(values, sigma, present,
                                                                                       segments), atol=1e-9):
            bad += 1
    return bad


def test_banded_smoother_equals_the_dense_one_segment_by_segment():
    assert mismatches_dense(smooth_series) == 0
    # planted faults: a smoother that ignores the cuts, or one that smooths over one width too many, is told apart
    assert mismatches_dense(lambda v, s, p, seg: smooth_series(v, s, p)) > 10
    assert mismatches_dense(lambda v, s, p, seg: smooth_series(v, s * 1.1, p, seg)) > 10
    m = smoothing_weights(np.ones(30, dtype=bool), 1.0)
    assert m.shape == (30, 30) and np.count_nonzero(m[15]) == 9  # a band: 4 sigma either side, nothing beyond


def test_fit_and_noise_gain_equal_the_dense_rows():
    rng = np.random.default_rng(11)
    for _ in range(25):
        count = int(rng.integers(3, 30))
        sigma = float(rng.choice([0.0, 0.6, 1.5, 3.0]))
        present = rng.random(count) < 0.8
        present[rng.integers(count)] = True
        segments = temporal.segment_ids(count, rng.integers(1, count, size=int(rng.integers(0, 3))))
        values = rng.normal(size=(count, 2))
        fit, fitted, gain = temporal.local_linear_fit(torch.from_numpy(values), sigma, present, segments)
        rows = np.eye(count) if sigma == 0 else dense_reference(np.eye(count), sigma, present, segments)
        assert np.array_equal(fitted, present) if sigma == 0 else fitted[present].all()
        assert np.allclose(fit.numpy()[fitted], (rows @ np.where(present[:, None], values, 0.0))[fitted])
        assert np.allclose(gain[fitted], np.sqrt((rows ** 2).sum(axis=1))[fitted])
        assert np.isinf(gain[~fitted]).all()
    # one present frame within reach of a missing one: its weighted mean, i.e. that frame's value, gain 1
    fit, fitted, gain = temporal.local_linear_fit(torch.tensor([[4.0], [0.0]], dtype=torch.float64), 1.5,
                                                  np.array([1, 0], dtype=bool), np.zeros(2, dtype=int))
    assert fitted.tolist() == [True, True] and np.allclose(fit[:, 0], 4.0) and np.allclose(gain, 1.0)


def test_segment_ids_and_input_checks():
    assert temporal.segment_ids(6, [3, 0, 9, 3, 5]).tolist() == [0, 0, 0, 1, 1, 2]
    assert temporal.segment_ids(3, [1, 2]).tolist() == [0, 1, 2] and temporal.segment_ids(2, [2]).tolist() == [0, 0]
    # the first frame alone present: held over its shot, never carried into the next one
    only_first = np.array([5.0, 1.0, 2.0, 3.0])
    present = np.array([1, 0, 0, 0], dtype=bool)
    assert smooth_series(only_first, 0.3, present).tolist() == [5.0] * 4
    assert smooth_series(only_first, 0.3, present, [0, 1, 1, 1]).tolist() == [5.0, 1.0, 2.0, 3.0]
    assert smooth_series(only_first[::-1].copy(), 0.3, present[::-1].copy()).tolist() == [5.0] * 4
    with pytest.raises(ValueError, match="present has 3 entries for 4"):
        smooth_series(np.zeros(4), 1.0, np.ones(3, dtype=bool))
    with pytest.raises(ValueError, match="segments has 2 entries for 4"):
        smooth_series(np.zeros(4), 1.0, None, [0, 1])
    with pytest.raises(ValueError, match="no frame"):
        temporal.smooth_adaptive(np.zeros(4), 1.0, np.zeros(4, dtype=bool))


def crosses_cut(smoothed, cut, levels=(0.0, 10.0)) -> float:
    """How far a smoothed step (levels[0] before ``cut``, levels[1] from it) strays from its own shot's level."""
    return float(max(np.abs(smoothed[:cut] - levels[0]).max(), np.abs(smoothed[cut:] - levels[1]).max()))


def test_no_smoothing_or_filling_crosses_a_cut():
    step = np.r_[np.zeros(20), np.full(20, 10.0)]
    seg = temporal.segment_ids(40, [20])
    present = np.ones(40, dtype=bool)
    present[17:23] = False  # a gap on both sides of the cut: filled from its own shot only
    for sigma in (0.0, 1.0, 3.0, 8.0):
        assert crosses_cut(smooth_series(step, sigma, present, seg), 20) < 1e-9
        assert crosses_cut(temporal.smooth_adaptive(step, sigma, present, seg)[0], 20) < 1e-9
    assert crosses_cut(smooth_series(step, 3.0, present), 20) > 2  # planted: without the cut it blends
    # a shot without any present frame keeps its values; the torch path the same
    present[20:] = False
    held = smooth_series(step, 2.0, present, seg)
    assert np.array_equal(held[20:], step[20:]) and np.allclose(held[:17], 0)
    t_out = smooth_series(torch.from_numpy(step).float(), 2.0, present, seg)
    assert torch.allclose(t_out, torch.from_numpy(held).float())


def test_noise_estimate_and_adaptive_width():
    rng = np.random.default_rng(4)
    noise = rng.normal(0.0, 2.0, size=(400, 2))
    ramp = np.linspace(0, 50, 400)[:, None] + noise
    est = temporal.estimate_noise(ramp)
    assert np.all(np.abs(est - 2.0) < 0.3)  # a steady motion does not count as noise
    assert np.isnan(temporal.estimate_noise(ramp[:6], np.array([1, 1, 1, 0, 1, 1], dtype=bool))).all()
    assert temporal.adaptive_ladder(3.0) == pytest.approx([0, 3 / 32 ** 0.5, 0.75, 3 / 8 ** 0.5, 1.5, 3 / 2 ** 0.5, 3])
    assert temporal.adaptive_ladder(0.0) == [0.0] and temporal.adaptive_ladder(0.5) == [0.0, 0.5]
    # a steady noisy series keeps the widest Gaussian nearly everywhere: the jitter goes as with a fixed width
    smoothed, widths = temporal.smooth_adaptive(ramp, 3.0)
    assert (widths == 3.0).mean() > 0.9
    fixed = smooth_series(ramp, 3.0)
    assert np.abs(smoothed - fixed).mean() < 0.05 * 2.0
    # a fast swing in the middle: narrower there, and far nearer the truth than the fixed width
    t = np.arange(120, dtype=float)
    truth = np.where((t >= 50) & (t <= 62), 40 * np.sin(2 * np.pi * (t - 50) / 12), 0.0)[:, None]
    noisy = truth + rng.normal(0.0, 0.5, size=truth.shape)
    smoothed, widths = temporal.smooth_adaptive(noisy, 3.0)
    assert (widths[51:62] < 3.0).mean() > 0.7 and (widths[:40] == 3.0).mean() > 0.9
    lag_fixed = np.abs(smooth_series(noisy, 3.0) - truth)[48:65].max()
    lag_adaptive = np.abs(smoothed - truth)[48:65].max()
    assert lag_adaptive < 0.25 * lag_fixed and lag_adaptive < 3.0
    # the interval threshold matters: a huge one never narrows (planted: adaptivity switched off)
    assert (temporal.smooth_adaptive(noisy, 3.0, threshold=1e6)[1] == 3.0).all()
    # too few frames to know the noise: the fixed width, for every frame
    few, w = temporal.smooth_adaptive(np.arange(4.0), 2.0)
    assert np.allclose(few, np.arange(4.0)) and (w == 2.0).all()
    # a missing frame takes the narrower width of its present neighbours
    present = np.ones(120, dtype=bool)
    present[56] = False
    _, w = temporal.smooth_adaptive(noisy, 3.0, present)
    assert w[56] == min(w[55], w[57])


def adaptive_reference(values, sigma, present, segments, noise_floor, threshold, pooled=False):
    """The interval rule written out with dense matrices from :func:`dense_reference`: per width the estimate
    M @ v and its noise gain sqrt(sum of squared weights in the row); per present frame the widest width whose
    interval meets all narrower ones' in every column; a missing frame the narrower of its neighbours'. The noise
    is each shot's own (``pooled``: the clip's, the old rule, kept to show the difference is caught); a shot too
    short for an estimate never narrows."""
    count = len(values)
    noise = np.full(values.shape, np.inf)  # an infinite interval agrees with everything: the widest is kept
    for shot in np.unique(segments):
        rows = segments == shot
        est = (temporal.estimate_noise(values, present, segments) if pooled
               else temporal.estimate_noise(values[rows], present[rows]))
        if not np.isnan(est).any():
            noise[rows] = np.maximum(est, noise_floor)
    widths = temporal.adaptive_ladder(sigma)
    estimates, choice = [], np.zeros(count, dtype=int)
    lower, upper = np.full(values.shape, -np.inf), np.full(values.shape, np.inf)
    alive = np.ones(count, dtype=bool)
    for k, width in enumerate(widths):
        rows = np.eye(count) if width == 0 else dense_reference(np.eye(count), width, present, segments)
        est = rows @ np.where(present[:, None], values, 0.0)
        gain = np.sqrt((rows ** 2).sum(axis=1))
        estimates.append(dense_reference(values, width, present, segments))
        half = np.where(np.isfinite(noise), threshold * gain[:, None] * noise, np.inf)  # 0 * inf: no NaN
        lower = np.maximum(lower, est - half)
        upper = np.minimum(upper, est + half)
        alive &= (lower <= upper).all(axis=1) | ~present
        choice[alive] = k
    for t in np.flatnonzero(~present):
        same = [s for s in range(count) if present[s] and segments[s] == segments[t]]
        before = [s for s in same if s < t]
        after = [s for s in same if s > t]
        near = [choice[before[-1]]] if before else []
        near += [choice[after[0]]] if after else []
        choice[t] = min(near) if near else len(widths) - 1
    return np.stack(estimates)[choice, np.arange(count)], np.array(widths)[choice]


def test_adaptive_smoother_equals_the_interval_rule_written_out():
    rng = np.random.default_rng(7)
    t = np.arange(70, dtype=float)
    swing = np.where((t > 20) & (t < 34), 30 * np.sin(2 * np.pi * (t - 20) / 14), 0.0)
    values = np.stack([swing, 0.5 * swing + 3], axis=1) + rng.normal(0, 0.7, size=(70, 2))
    present = rng.random(70) > 0.15
    present[[0, 69]] = True
    segments = temporal.segment_ids(70, [45])
    for sigma, floor, threshold in ((3.0, 0.0, 1.5), (2.0, 0.9, 1.0), (4.0, 0.0, 2.5)):
        got, widths = temporal.smooth_adaptive(values, sigma, present, segments, noise_floor=floor,
                                               threshold=threshold)
        want, want_widths = adaptive_reference(values, sigma, present, segments, floor, threshold)
        assert np.array_equal(widths, want_widths), (sigma, np.flatnonzero(widths != want_widths))
        assert np.allclose(got, want, atol=1e-9)
        assert len(set(widths[present])) > 2  # the example does exercise the rule: several widths are used
    quiet = values * 0.05  # noise well under a pixel: the default floor (none) and threshold apply
    got, widths = temporal.smooth_adaptive(quiet, 3.0, present, segments)
    want, want_widths = adaptive_reference(quiet, 3.0, present, segments, 0.0, temporal.ICI_THRESHOLD)
    assert np.array_equal(widths, want_widths) and np.allclose(got, want, atol=1e-9)
    # planted: a rule that ignores the noise floor or the threshold picks other widths
    _, floored = temporal.smooth_adaptive(values, 2.0, present, segments, noise_floor=0.0, threshold=1.0)
    assert not np.array_equal(floored, adaptive_reference(values, 2.0, present, segments, 0.9, 1.0)[1])


@pytest.fixture(scope="module")
def hostile():
    return hc.make_clip((120, 160))


def test_hostile_clip_truth_is_what_it_says():
    clip = hc.make_clip(render=False)
    assert clip.frames is None and clip.cuts == [45] and clip.occluded == list(range(28, 34))
    visible = np.flatnonzero(clip.person_visible)
    assert fv.frame_ranges(visible) == "0-27, 34-63" and fv.frame_ranges(np.flatnonzero(clip.other_visible)) == "56-89"
    quads = hc.true_quads(clip.person)
    jump = np.linalg.norm(quads[45].mean(0) - quads[44].mean(0))
    side = np.linalg.norm(quads[:, 3] - quads[:, 0], axis=-1)
    assert 185 < jump < 205 and side[45] / side[44] == pytest.approx(1.3)
    assert np.abs(np.diff(quads[8:21, 0], axis=0)).max() > 15  # the nod is fast: corners move > 15 px a frame
    dets = clip.detections(noise=0.0)
    assert [len(f) for f in dets[55:58]] == [1, 2, 2] and dets[56][0].area > dets[56][1].area


def test_metrics_catch_planted_faults(hostile):
    truth = hc.true_quads(hostile.person)
    assert hc.crop_jitter(truth, truth) == 0
    wobble = truth.copy()
    wobble[::2] += 1.0  # every other frame 1 px off in x and y: each pair of frames moves sqrt(2) px too much
    assert hc.crop_jitter(wobble, truth) == pytest.approx(np.sqrt(2))
    assert hc.crop_jitter(wobble, truth, frames=range(10, 20)) == pytest.approx(np.sqrt(2))
    assert hc.crop_jitter(wobble + (np.arange(90) >= 50)[:, None, None] * 5.0, truth, frames=range(50, 90)) == \
        pytest.approx(np.sqrt(2))  # only pairs inside the frames count: the step at 49-50 is left out
    late = np.concatenate([truth[:1], truth[:-1]])  # a crop one frame behind
    seeds = np.stack([late, late])
    assert hc.crop_lag(seeds, truth, hostile.nod) > 5 and hc.crop_lag(np.stack([truth]), truth, hostile.nod) == 0
    status = ["found" if v else "lost" for v in hostile.person_visible]
    lms = [f[0] if v else None for f, v in zip(hostile.detections(), hostile.person_visible)]
    assert hc.found_errors(status, lms, hostile) == {"missed": [], "wrong": []}
    status[50], lms[60] = "lost", hostile.detections()[60][1]  # planted: a missed frame, another person's face
    assert hc.found_errors(status, lms, hostile) == {"missed": [50], "wrong": [60]}


def clip_change(frames_u8) -> np.ndarray:
    return fv.frame_change(fv.frame_signatures(torch.from_numpy(frames_u8).float() / 255.0))


def test_cut_detector_on_the_hostile_clip(hostile):
    change = clip_change(hostile.frames)
    assert fv.find_cuts(change) == hostile.cuts  # not the bar, the nod, the entry or the exit
    assert change[0] == 0 and change[45] > fv.CUT_CHANGE
    # planted: the same clip without its cut (shot one played twice) has none; with two cuts, both are found
    no_cut = np.concatenate([hostile.frames[:45], hostile.frames[:45]])
    assert fv.find_cuts(clip_change(no_cut)) == [] or fv.find_cuts(clip_change(no_cut)) == [45]
    two = np.concatenate([hostile.frames[:30], hostile.frames[45:75], hostile.frames[:30]])
    assert fv.find_cuts(clip_change(two)) == [30, 60]
    smooth = clip_change(hostile.frames[:44])
    assert fv.find_cuts(smooth) == []
    # a strobing shot changes every frame as much as a cut would: no cut, the usual change is that large
    strobe = np.array([0.5 if t % 2 else 0.05 for t in range(30)])
    assert fv.find_cuts(strobe) == []
    strobe[15] = 0.9
    assert fv.find_cuts(strobe) == []
    calm = np.full(30, 0.01)
    calm[0], calm[12] = 0.0, fv.CUT_CHANGE
    assert fv.find_cuts(calm) == [12]
    calm[12] = fv.CUT_CHANGE * 0.99
    assert fv.find_cuts(calm) == []
    assert fv.find_cuts(np.zeros(1)) == [] and fv.frame_change(np.zeros((1, 48))).tolist() == [0.0]


def test_signatures_are_colour_histograms():
    frames = torch.zeros(2, 200, 10, 3)
    frames[1, :, :, 0] = 1.0  # red channel all the way up
    sig = fv.frame_signatures(frames)
    assert sig.shape == (2, 48) and torch.allclose(sig.sum(1), torch.full((2,), 3.0))
    assert sig[0, 0] == 1 and sig[1, 15] == 1 and sig[1, 16] == 1
    assert fv.frame_change(sig).tolist() == pytest.approx([0.0, 1 / 3])
    assert fv.SIGNATURE_ROWS < 200  # the frame was sampled down, still every channel sums to one
    striped = torch.zeros(1, 2 * fv.SIGNATURE_ROWS, 4, 3)
    striped[0, 1::2] = 1.0  # every other row white: sampled every other row, only the black rows are seen
    assert fv.frame_signatures(striped)[0, 0] == 1
    assert fv.frame_signatures(striped[:, :fv.SIGNATURE_ROWS + 1])[0, 0] == pytest.approx(0.5, abs=0.01)


def test_the_artists_clip_every_visible_frame_found_no_other_person(hostile, monkeypatch):
    """The issue's run: cut, fast nod, bar, second face, exit. Found = exactly the frames the person is in view."""
    dets = hostile.detections(noise=0.5, seed=1)
    change = clip_change(hostile.frames)
    clip = fv.align_clip(dets, smoothing=3.0, interpolate_lost=True, change=change)
    assert hc.found_errors(clip.status, clip.landmarks, hostile) == {"missed": [], "wrong": []}
    assert clip.cuts == [45] and [s.how for s in clip.shots] == ["first", "new person"]
    assert clip.frames(fv.INTERPOLATED) == []  # the bar (6 frames) and the exit are not painted over
    assert clip.frames(fv.LOST) == list(range(28, 34)) + list(range(64, 90))
    assert list(np.flatnonzero(np.diff(clip.segments))) == [44]
    truth = hc.true_quads(hostile.person)
    side = np.linalg.norm(truth[:, 3] - truth[:, 0], axis=-1)
    err = np.linalg.norm(clip.quads - truth, axis=-1).max(-1) / side
    assert err[40:50].max() < 0.05  # no glide across the cut (it was a whole crop off)
    assert np.allclose(clip.quads[70:], clip.quads[70]) and np.abs(clip.quads[64:] - clip.quads[63]).max() < 3  # held
    report = clip.summary()
    assert "cuts (new shots) at frames 45" in report and "a new person followed from frame 45" in report
    assert re.search(r"\d+ px from where the person was last seen, 1\.[23]x the size", report) and "left untouched in 32 frames: 28-33, 64-89" in report
    # planted faults the checks must catch: no cut detection (frames after the cut 'missed'), and the old
    # unbounded gate (the other person taken after the exit)
    blind = fv.align_clip(dets, smoothing=3.0, change=None)
    assert hc.found_errors(blind.status, blind.landmarks, hostile)["missed"][:3] == [45, 46, 47]
    monkeypatch.setattr(fv, "TRACK_GATE_MAX", np.inf)
    monkeypatch.setattr(fv, "TRACK_SCALE", 2.5)
    greedy = fv.align_clip(dets, smoothing=3.0, change=change)
    assert hc.found_errors(greedy.status, greedy.landmarks, hostile)["wrong"]


def test_adaptive_crop_follows_the_fast_nod(hostile):
    truth = hc.true_quads(hostile.person)
    change = clip_change(hostile.frames)

    def quads(adaptive, sigma):
        return np.stack([fv.align_clip(hostile.detections(noise=0.25, seed=s), smoothing=sigma, change=change,
                                       adaptive=adaptive).quads for s in range(8)])

    adaptive, fixed, raw = quads(True, 3.0), quads(False, 3.0), quads(False, 0.0)
    steady = [t for t in range(1, 45) if t not in hostile.nod and hostile.person_visible[t]]
    lags = [hc.crop_lag(q, truth, hostile.nod) for q in (adaptive, fixed)]
    assert lags[1] > 2.5 * lags[0] and lags[0] < 0.06 * 48  # the crop side is ~48 px at this size
    jit = [np.mean([hc.crop_jitter(q[s], truth, steady) for s in range(8)]) for q in (adaptive, fixed, raw)]
    assert jit[0] < 1.2 * jit[1] and jit[0] < 0.3 * jit[2]  # still steady where the face is steady


def test_face_jump_cut_needs_the_jump_and_some_change():
    person = [[face_at(60 + t, 80)] for t in range(10)]
    after = [[face_at(200, 90, 52)] for _ in range(10)]
    frames = person + after
    change = np.full(20, 0.01)
    change[0], change[10] = 0.0, 0.15  # too weak for a cut by colour alone
    clip = fv.align_clip(frames, smoothing=1.0, change=change)
    assert clip.cuts == [10] and clip.frames(fv.FOUND) == list(range(20))
    assert clip.shots[1].how == "new person"
    assert fv.align_clip(frames, smoothing=1.0, change=np.where(change == 0.15, 0.05, change)).cuts == []
    # the person hidden while another face, already there before, stays: no jump, the person is lost
    stay = [[face_at(60, 80), face_at(200, 90, 30)] for _ in range(10)] + [[face_at(200, 90, 30)]] * 10
    clip = fv.align_clip(stay, smoothing=1.0, change=change)
    assert clip.cuts == [] and clip.frames(fv.LOST) == list(range(10, 20))
    # the same jump backwards (the track starts after it): found in both parts
    back = [[face_at(200, 90, 52)]] * 3 + [[face_at(60 + t, 80)] for t in range(5)]
    ch = np.full(8, 0.01)
    ch[0], ch[3] = 0.0, 0.2
    assert fv.face_jump_cuts(back, fv.track_person(back, cuts=[])[0], ch) == [3]
    with pytest.raises(ValueError, match="change has 3 entries for 20"):
        fv.align_clip(frames, change=np.zeros(3))


def test_a_cut_with_the_face_in_place_keeps_the_person():
    frames = [[face_at(30, 100, 60), face_at(100, 100, 40)] for _ in range(12)]  # follow the smaller face
    track, shots = fv.track_clip(frames, face_index=1, cuts=[6])
    assert [s.how for s in shots] == ["first", "same person"] and shots[1].start == 6
    assert all(f is frames[t][1] for t, f in enumerate(track))
    gone = frames[:6] + [[]] * 2 + [[face_at(300, 100, 40)]] * 4  # a new shot: the face appears elsewhere
    track, shots = fv.track_clip(gone, face_index=0, cuts=[6])
    assert shots[1].how == "new person" and shots[1].start == 8 and "270 px" in shots[1].detail
    track, shots = fv.track_clip(frames[:6] + [[]] * 6, cuts=[6])
    assert shots[1].how == "no face" and shots[1].start == -1 and track[6:] == [None] * 6
    clip = fv.align_clip(frames[:6] + [[]] * 6, smoothing=2.0, change=np.r_[0, [0.01] * 5, 0.9, [0.01] * 5])
    assert "shot 6-11: no face; passed through" in clip.summary() and np.isnan(clip.quads[6:]).all()
    assert np.isfinite(clip.quads[:6]).all()


def test_the_gate_is_bounded():
    assert fv.track_gate(1) == fv.TRACK_GATE and fv.track_gate(3) == pytest.approx(fv.TRACK_GATE + 0.2)
    assert fv.track_gate(1000) == fv.TRACK_GATE_MAX
    size = fv.ffhq_quad(face_at(100, 100))[1]
    frames = [[face_at(100, 100)]] + [[]] * 40 + [[face_at(100 + 0.8 * size, 100)]]
    track, _ = fv.track_person(frames)
    assert track[-1] is None  # 0.8 crop sizes away after 40 lost frames: someone else
    frames[-1] = [face_at(100 + 0.7 * size, 100)]
    assert fv.track_person(frames)[0][-1] is not None
    frames[-1] = [face_at(100, 100, 40 * 1.7)]  # in place but 1.7x the size: someone else
    assert fv.track_person(frames)[0][-1] is None


def test_gaps_interpolated_only_when_short_and_inside_a_shot():
    present = np.array([1, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 1, 0, 1, 1, 0], dtype=bool)
    seg = temporal.segment_ids(16, [12])
    status = fv.gap_status(present, seg, interpolate_lost=True)
    f, i, lost = fv.FOUND, fv.INTERPOLATED, fv.LOST
    assert status == [f, i, i, i, f, lost, lost, lost, lost, f, i, f, lost, f, f, lost]
    assert fv.gap_status(present, seg, interpolate_lost=False) == [f if p else lost for p in present]
    assert fv.gap_status(~present, seg, True)[:2] == [lost, f]  # the clip's first frames: nothing before
    assert fv.gap_status(np.array([1, 0, 1], dtype=bool), np.array([0, 1, 1]), True)[1] == lost  # across a cut


def test_paste_strength_stays_in_its_shot():
    status = [fv.FOUND] * 3 + [fv.LOST] + [fv.FOUND] * 4
    assert np.allclose(fv.paste_strength(status, 2.0, [0, 0, 0, 0, 1, 1, 1, 1]), [1, 2 / 3, 1 / 3, 0, 1, 1, 1, 1])
    assert np.allclose(fv.paste_strength(status, 2.0), [1, 2 / 3, 1 / 3, 0, 1 / 3, 2 / 3, 1, 1])
    assert np.allclose(fv.paste_strength([fv.LOST] + [fv.FOUND] * 3, 1.0, [0, 1, 1, 1]), [0, 1, 1, 1])


def test_summary_lines():
    frames = [[face_at(100 + 3 * t, 100)] for t in range(30)]
    assert fv.align_clip(frames).smoothing == 3.0 and fv.align_clip(frames).adaptive  # the defaults
    clip = fv.align_clip(frames, smoothing=2.0, adaptive=False)
    assert clip.summary().splitlines()[0] == "video mode: 30 frames, crop smoothed over 2 frames (centre 0.666667)"
    assert (clip.widths == 2.0).all() and clip.cuts == [] and not clip.adaptive
    frames[10:12] = [[], []]
    clip = fv.align_clip(frames, smoothing=2.0)
    lines = clip.summary().splitlines()
    assert lines[0].startswith("video mode: 30 frames, crop smoothed over up to 2 frames") and \
        lines[0].endswith("less where the face moves fast")
    assert "crop interpolated in 2 frames: 10-11 (gaps of at most 3 frames inside a shot)" in lines
    nod = hc.make_clip(render=False)
    clip = fv.align_clip(nod.detections(noise=0.5)[:45], smoothing=3.0)
    narrowed = [t for t in clip.frames(fv.FOUND) if clip.widths[t] < 3.0]
    assert 0 < len(narrowed) < 40
    assert f"smoothing narrowed for fast motion in {len(narrowed)} frames: {fv.frame_ranges(narrowed)}" in \
        clip.summary().splitlines()


def two_shot_clip(count=20, cut=10):
    """Random frames, dark in the first shot and bright in the second: a cut the histograms see."""
    g = torch.Generator().manual_seed(5)
    frames = torch.rand(count, 120, 160, 3, generator=g) * 0.4
    frames[cut:] += 0.6
    return frames


def test_align_face_finds_the_cut_and_paste_back_matches_colours_per_shot(monkeypatch):
    frames = two_shot_clip()
    faces = [[face_at(70 + t, 60, 20)] for t in range(10)] + [[face_at(100, 70, 26)] for _ in range(10)]
    (aligned, align, report), _ = run_video_align(monkeypatch, frames, faces, smoothing=3.0)
    assert align.segments == [0] * 10 + [1] * 10 and "cuts (new shots) at frames 10" in report
    assert align.status == [fv.FOUND] * 20
    edited = torch.full_like(aligned, 0.5)
    paste = nodes.TransEditPasteBack()
    out, mask = paste.paste(frames, edited, align, "ellipse", 0.04, "rgb")

    def face_level(result, t):
        inside = mask[t] > 0.99
        return float(result[t][inside].mean())

    def shot_level(t):  # the photo's own level where the face is pasted: what the colour match aims at
        return float(frames[t][mask[t] > 0.99].mean())

    def worst(result):
        return max(abs(face_level(result, t) - shot_level(t)) for t in (8, 9, 10, 11))

    assert worst(out) < 0.03
    # planted: the same alignment without its shots blends the colour match across the cut
    blended, _ = paste.paste(frames, edited, dataclasses.replace(align, segments=None), "ellipse", 0.04, "rgb")
    assert worst(blended) > 0.1


def test_a_shot_without_the_face_gets_the_centre_square(monkeypatch):
    frames = two_shot_clip()
    faces = [[face_at(70 + t, 60, 20)] for t in range(10)] + [[] for _ in range(10)]
    (aligned, align, report), _ = run_video_align(monkeypatch, frames, faces, if_no_face="pass through")
    assert align.found == [True] * 10 + [False] * 10 and "shot 10-19: no face; passed through" in report
    from transedit.models.face import align as fa

    assert np.allclose(align.records[15].quad, fa.centre_quad(120, 160))
    out, mask = nodes.TransEditPasteBack().paste(frames, aligned, align, "ellipse", 0.04, "lab")
    assert torch.equal(out[10:], frames[10:]) and mask[10:].max() == 0


def test_smooth_latents_stays_inside_each_shot(monkeypatch):
    frames = two_shot_clip()
    faces = [[face_at(70 + t, 60, 20)] for t in range(10)] + [[face_at(100, 70, 26)] for _ in range(10)]
    (_, align, _), _ = run_video_align(monkeypatch, frames, faces)
    latent = _latent(20, with_features=True)
    step = torch.zeros(20, 6, 8)
    step[10:] = 10.0
    features = [[torch.full((4, 2), 10.0 * (t >= 10))] for t in range(20)]
    latent = latent.with_wplus(step).with_extras({**latent.extras, "smart_features": features})
    (out,) = editing.TransEditSmoothLatents().smooth(latent, 2.0, align)
    assert torch.allclose(out.wplus, step, atol=1e-5)
    assert all(torch.allclose(f[0], torch.full((4, 2), 10.0 * (t >= 10)), atol=1e-5)
               for t, f in enumerate(out.extras["smart_features"]))
    # planted: without the shots the step is blurred across the cut
    (blurred,) = editing.TransEditSmoothLatents().smooth(latent, 2.0, dataclasses.replace(align, segments=None))
    assert (blurred.wplus - step).abs().max() > 1.0


def test_usual_change_window_and_short_clips():
    change = (np.arange(30) ** 2) * 1e-4
    assert fv.usual_change(change, 15) == pytest.approx((14 ** 2 + 16 ** 2) / 2 * 1e-4)  # frames 7-23 but 15
    assert fv.usual_change(change, 3) == pytest.approx((6 ** 2 + 7 ** 2) / 2 * 1e-4)  # frames 1-11 but 3
    assert fv.usual_change(change, 28) == pytest.approx(24 ** 2 * 1e-4)  # frames 20-29 but 28
    assert fv.usual_change(np.array([0.0, 0.5]), 1) == 0.0  # nothing around: no usual change to compare with
    assert fv.find_cuts([0.0, 0.5]) == [1] and fv.find_cuts([0.0, 0.5, 0.01]) == [1]
    # at the ratio exactly: a cut; just under it: none
    calm = np.full(20, 0.1)
    calm[0], calm[10] = 0.0, 0.4
    assert fv.find_cuts(calm) == [10]
    calm[10] = 0.399
    assert fv.find_cuts(calm) == []


def test_tracking_steps_and_gaps():
    size = fv.ffhq_quad(face_at(100, 100))[1]

    def followed(*xs):
        frames = [[face_at(100 + x * size, 100)] if x is not None else [] for x in xs]
        return [f is not None for f in fv.track_person(frames)[0]]

    assert followed(0, 0.3) == [True, True] and followed(0, 0.4) == [True, False]  # one frame: 0.35 crop sizes
    assert followed(0, 0, 0.4)[2] is False  # the gap starts again after a found frame
    assert followed(0, None, 0.42)[2] is True and followed(0, None, 0.5)[2] is False  # one lost frame: 0.45
    # the track also runs backwards: face_index 1 exists from frame 3 on; before, the person is still followed
    a = [face_at(100 + t, 100, 40) for t in range(6)]
    frames = [[a[t]] for t in range(3)] + [[face_at(300, 100, 60), a[t]] for t in range(3, 6)]
    track, start = fv.track_person(frames, face_index=1)
    assert start == 3 and [f is a[t] for t, f in enumerate(track)] == [True] * 6
    # cuts at the clip's edges are no cuts; one at frame 1 is
    frames = [[face_at(100, 100)]] * 5
    assert len(fv.track_clip(frames, cuts=[0, 5, 7])[1]) == 1
    assert [(s.first, s.last) for s in fv.track_clip(frames, cuts=[1])[1]] == [(0, 0), (1, 4)]


def test_noise_estimate_edges():
    assert np.isfinite(temporal.estimate_noise(np.arange(7.0))).all()  # 5 second differences are enough
    assert np.isnan(temporal.estimate_noise(np.arange(6.0))).all()
    assert temporal.estimate_noise(np.arange(40.0) ** 2)[0] == 0  # steady acceleration is no noise
    # a cut between the frames of a second difference: that one is left out
    jump = np.r_[np.zeros(8), np.full(8, 100.0)]
    assert temporal.estimate_noise(jump, None, temporal.segment_ids(16, [8]))[0] == 0


def test_shot_openings():
    a = face_at(100, 100)
    size = fv.ffhq_quad(a)[1]
    # a shot without faces right after the person was found: no face (nothing from the shot before counts)
    assert [s.how for s in fv.track_clip([[], [a], [], []], cuts=[2])[1]] == ["first", "no face"]
    # half a crop away in the very next frame: beyond one frame's gate, so a new person
    moved = face_at(100 + 0.5 * size, 100)
    assert fv.track_clip([[a]] * 3 + [[moved]], cuts=[3])[1][1].how == "new person"
    assert fv.track_clip([[a]] * 3 + [[face_at(100 + 0.3 * size, 100)]], cuts=[3])[1][1].how == "same person"
    assert fv.track_person([[], []]) == ([None, None], -1)
    assert temporal.adaptive_ladder(0.5 * 2 ** 0.5) == pytest.approx([0, 0.5, 0.5 * 2 ** 0.5])


def test_face_jump_edges():
    a, far = face_at(60, 80), face_at(220, 90, 50)
    change = np.r_[0.0, np.full(7, 0.01)]
    change[2] = 0.15
    # the person is found in one frame only, then the faces jump: still a cut
    assert fv.align_clip([[], [a], [far], [far], [far], [far], [far], [far]], smoothing=0, change=change).cuts == [2]
    change = np.r_[0.0, 0.15, np.full(6, 0.01)]
    assert fv.align_clip([[a]] + [[far]] * 7, smoothing=0, change=change).cuts == [1]  # at the clip's second frame
    # a face that moved 0.4 crop sizes in one frame was not there before: the faces jumped
    size = fv.ffhq_quad(far)[1]
    other = face_at(220 + 0.4 * size, 90, 50)
    track = [a, None]
    assert fv.face_jump_cuts([[a, far], [other]], track, [0.0, 0.15]) == [1]
    assert fv.face_jump_cuts([[a, far], [face_at(220 + 0.3 * size, 90, 50)]], track, [0.0, 0.15]) == []
    # too few frames to know the noise: the fixed width is reported for every frame, whatever it is
    assert (temporal.smooth_adaptive(np.arange(4.0), 0.5)[1] == 0.5).all()


def test_crop_is_centre_and_axis_smoothed_as_stit_does():
    clip = hc.make_clip(render=False)
    dets = clip.detections(noise=0.5, seed=3)[:28]  # up to the bar: the nod and a steady stretch
    params = np.stack([fv.quad_params(fv.ffhq_quad(f[0])[0]) for f in dets])
    for adaptive in (True, False):
        got = np.stack([fv.quad_params(q) for q in fv.align_clip(dets, smoothing=3.0, adaptive=adaptive).quads])
        if adaptive:
            centre = temporal.smooth_adaptive(params[:, :2], 1.0, noise_floor=fv.CROP_NOISE_FLOOR)[0]
            axis = temporal.smooth_adaptive(params[:, 2:], 3.0, noise_floor=fv.CROP_NOISE_FLOOR)[0]
        else:
            centre, axis = smooth_series(params[:, :2], 1.0), smooth_series(params[:, 2:], 3.0)
        assert np.allclose(got, np.concatenate([centre, axis], axis=1), atol=1e-9)


def test_adaptive_edges_first_frame_and_empty_shot():
    rng = np.random.default_rng(2)
    values = np.cumsum(rng.normal(size=(30, 1)), axis=0)
    present = np.ones(30, dtype=bool)
    present[[1, 2]] = False  # the nearest present frame before them is frame 0
    present[20:] = False  # and the second shot has none at all
    segments = temporal.segment_ids(30, [20])
    got, widths = temporal.smooth_adaptive(values, 2.0, present, segments)
    want, want_widths = adaptive_reference(values, 2.0, present, segments, 0.0, temporal.ICI_THRESHOLD)
    assert np.array_equal(widths, want_widths) and np.allclose(got, want)
    assert (widths[20:] == 2.0).all() and np.array_equal(got[20:], values[20:])
    assert widths[1] == min(widths[0], widths[3])


def test_paste_strength_two_lost_runs_and_the_first_frame():
    f, lost = fv.FOUND, fv.LOST
    status = [f, f, lost, f, f, f, f, lost, f, f]
    assert np.allclose(fv.paste_strength(status, 2.0), np.array([2, 1, 0, 1, 2, 2, 1, 0, 1, 2]) / 3)
    assert np.allclose(fv.paste_strength([lost, f, f], 1.0), [0, 0.5, 1])
    frames = [[face_at(100 + 3 * t, 100)] for t in range(30)]
    assert fv.align_clip(frames, smoothing=1.0).summary().splitlines()[0].endswith("less where the face moves fast")
    assert not fv.align_clip(frames, smoothing=0.0).summary().splitlines()[0].endswith("moves fast")


# ------------------------------------------------------- a detected face is never lost; shots smoothed alone
def test_a_detected_face_is_never_lost_after_a_jump(monkeypatch):
    size = fv.ffhq_quad(face_at(300, 300))[1]

    def jumped(share, at=10, count=20):
        """The only face of every frame moves ``share`` crop sizes at frame ``at`` (a jolt, no cut)."""
        return [[face_at(300 + (share * size if t >= at else 0), 300)] for t in range(count)]

    def check(frames, **kw):
        clip = fv.align_clip(frames, smoothing=2.0, **kw)
        assert clip.frames(fv.FOUND) == list(range(len(frames)))
        assert all(clip.landmarks[t] is frames[t][-1] for t in range(len(frames)))  # the person: last listed
        centres = np.array([fv.ffhq_quad(f[-1])[0].mean(0) for f in frames])
        assert np.abs(clip.quads.mean(axis=1) - centres)[[0, 9, 11, 19]].max() < 0.5  # crops at the face
        return clip

    for share in (0.5, 0.75):  # interpolated (gap 2) and lost (gap 4) before
        check(jumped(share))
    # the track runs backwards too: face_index 1 exists only after the jump; the frames before are claimed
    frames = jumped(0.6)
    frames[12:] = [[face_at(0, 300, 60), f[0]] for f in frames[12:]]
    check(frames, face_index=1)
    # with a colour change at the jump it is a cut, and the report says so: a new person from frame 10
    change = np.r_[0.0, np.full(19, 0.01)]
    change[10] = 0.15
    clip = check(jumped(0.75), change=change)
    assert clip.cuts == [10] and clip.shots[1].how == "new person" and clip.shots[1].start == 10
    # other people in the gap are not claimed: a stranger stays a stranger while the person jumps
    frames = jumped(0.7)
    stranger = face_at(300 + 0.7 * size, 300 + 1.2 * size)
    for t in range(10, 14):
        frames[t] = [stranger, frames[t][0]]
    track = fv.track_person(frames)[0]
    assert all(track[t] is frames[t][1] for t in range(10, 14))
    # planted: without the step back over the gap the jump leaves detected frames out
    monkeypatch.setattr(fv, "reclaim_gap", lambda *a, **k: None)
    with pytest.raises(AssertionError):
        check(jumped(0.5))
    with pytest.raises(AssertionError):
        check(jumped(0.75))


def test_a_jump_inside_the_track_is_still_a_face_jump_cut(monkeypatch):
    size = fv.ffhq_quad(face_at(100, 100))[1]
    frames = [[face_at(100, 100)]] * 6 + [[face_at(100 + 0.6 * size, 100)]] * 6
    track = fv.track_person(frames)[0]
    assert all(f is not None for f in track)  # found throughout, yet the person vanished at frame 6
    change = np.r_[0.0, np.full(11, 0.01)]
    change[6] = 0.15
    assert fv.face_jump_cuts(frames, track, change) == [6]
    assert fv.face_jump_cuts(frames, track, np.where(change == 0.15, 0.05, change)) == []  # too little change
    steady = [[face_at(100 + 0.3 * size * (t >= 6), 100)] for t in range(12)]  # within a frame's gate: no jump
    assert fv.face_jump_cuts(steady, fv.track_person(steady)[0], change) == []


def test_a_shot_is_smoothed_alone_whatever_the_other_shots(monkeypatch):
    rng = np.random.default_rng(0)
    nod = [[face_at(300 + 20 * np.sin(t / 2.0), 300)] for t in range(30)]  # shot A: a fast nod, clean landmarks
    steady = [[face_at(300, 300)] for _ in range(60)]  # shot B: a steady face ...
    jittery = [[face_at(300 + rng.normal(0, 3), 300 + rng.normal(0, 3))] for _ in range(60)]  # ... or a noisy one
    change = np.full(90, 0.01)
    change[0], change[30] = 0.0, 0.9

    def shot_a(shot_b):
        clip = fv.align_clip(nod + shot_b, change=change)
        assert clip.cuts == [30]
        return clip.quads[:30], clip.widths[:30]

    (q1, w1), (q2, w2) = shot_a(steady), shot_a(jittery)
    assert np.array_equal(q1, q2) and np.array_equal(w1, w2)
    # a shot too short for a noise estimate keeps the full width, whatever the other shot's noise
    short = temporal.segment_ids(36, [30])
    series = np.r_[20 * np.sin(np.arange(30) / 2.0), [0.0, 5.0, -5.0, 5.0, -5.0, 0.0]][:, None]
    _, widths = temporal.smooth_adaptive(series, 3.0, None, short)
    assert (widths[30:] == 3.0).all() and (widths[:30] < 3.0).any()
    # planted: the clip's pooled noise (the old rule) lets shot B move shot A's crops
    pooled = temporal.estimate_noise
    monkeypatch.setattr(temporal, "noise_per_segment",
                        lambda v, p, s: np.broadcast_to(pooled(v, p, s), np.shape(v)).copy())
    (p1, _), (p2, _) = shot_a(steady), shot_a(jittery)
    assert np.abs(p1 - p2).max() > 0.1


def test_adaptive_reference_per_shot_differs_from_the_pooled_one():
    # the reference used above is per shot; the pooled rule picks other widths on shots of unequal noise
    rng = np.random.default_rng(3)
    t = np.arange(80, dtype=float)
    values = (np.where(t < 40, 15 * np.sin(t / 2.0), 0.0) + np.where(t < 40, 0.1, 3.0) * rng.normal(size=80))[:, None]
    present, segments = np.ones(80, dtype=bool), temporal.segment_ids(80, [40])
    _, widths = temporal.smooth_adaptive(values, 3.0, present, segments)
    assert np.array_equal(widths, adaptive_reference(values, 3.0, present, segments, 0.0, 1.5)[1])
    assert not np.array_equal(widths, adaptive_reference(values, 3.0, present, segments, 0.0, 1.5, pooled=True)[1])
