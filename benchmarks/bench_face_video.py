"""Face video benchmark: how much the video mode steadies the crop and the pasted face, and what long clips cost.

    python benchmarks/bench_face_video.py                     # -> benchmarks/results/face_video_cpu.json + strip
    python benchmarks/bench_face_video.py --device cuda --out benchmarks/results/face_video_cuda.json

Ground truth comes from tests/example_clip.py: the pack's test photo (scikit-image's astronaut) glides, turns and
grows along a smooth path, so where her eyes and mouth are in every frame is known.

- **Crop jitter**: the landmarks of every frame get Gaussian noise (`--noise` pixels, a detector's frame-to-frame
  wobble); the FFHQ crops are computed per frame (Align Face with temporal_mode off) and in video mode
  (`--smoothing`). Jitter = the mean frame-to-frame motion of the crop's corners beyond the true motion
  (pixels, and as a share of the crop's side); position error = the mean distance of the corners from the true
  crop's (what smoothing must not give away to lag). Also with mediapipe's real detections on the rendered
  frames when mediapipe is installed.
- **Flicker** of the pasted result: the nodes themselves (Align Face -> Paste Back, colour match lab) with one
  fixed edited face for every frame (frame 0's true crop, tinted: an edit that is perfectly stable in face
  coordinates, so whatever moves is the alignment and the blend). Flicker = the mean absolute difference in the
  face region between each output frame and the next one carried back by the true motion (0-255), minus the
  same for the input frames (what resampling the moving photo alone gives).
- **Long clips**: Paste Back on `--memory-frames` frames at 1080p, each case in its own process: the peak
  memory beyond the frames in and out (which ComfyUI holds anyway), and the time per frame; with
  `--baseline-src`, the same for an older checkout's Paste Back.

- **Footage** (tests/hostile_clip.py: 90 frames, a fast nod, a bar over the face for 6 frames, a hard cut after
  which the face is 194 px away and 1.3x larger, a second smaller face entering, the person leaving): the cuts
  found, the frames reported found against the frames the person is in view (missed / someone else's face),
  the crop's error around the cut, occluded frames pasted over; with synthetic landmark noise and with
  mediapipe on the rendered frames. Then the smoothing choice: lag on the fast nod (the crop's bias, noise
  averaged out over seeds) against jitter on the steady frames, for fixed widths and the motion-adaptive one
  at several interval thresholds, and the default picked by a stated rule.
- **Banded smoother memory**: peak memory of the temporal smoother on 18000 frames (10 minutes at 30 fps),
  each case in its own process, against the T x T matrix the dense form needs.

Writes JSON (`--out`) and a frame strip (`--strip`): input frames, then per-frame and video-mode results, each
with its frame-to-frame flicker map (amplified).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
import example_clip as clip  # noqa: E402
import hostile_clip as hc  # noqa: E402
from bench_stylegan import RSSPeak  # noqa: E402

from transedit.models.face import align as fa  # noqa: E402
from transedit.models.face import landmarks as fl  # noqa: E402
from transedit.nodes import faces as face_nodes  # noqa: E402

try:  # absent from the releases before the video mode, which --baseline-src measures (Paste Back only)
    from transedit.models.face import video as fv  # noqa: E402
except ImportError:
    fv = None

MIB = 2 ** 20


def as_faces(points: np.ndarray) -> list[list[fl.FaceLandmarks]]:
    """[T, 4, 2] eyes and mouth corners -> per frame a one-face detection list."""
    return [[fl.FaceLandmarks(eye_left=p[0], eye_right=p[1], mouth_left=p[2], mouth_right=p[3])] for p in points]


def crop_stats(quads: np.ndarray, true_quads: np.ndarray) -> dict:
    side = float(np.mean(np.linalg.norm(true_quads[:, 3] - true_quads[:, 0], axis=-1)))
    moved = np.diff(quads, axis=0) - np.diff(true_quads, axis=0)
    jitter = float(np.linalg.norm(moved, axis=-1).mean())
    error = float(np.linalg.norm(quads - true_quads, axis=-1).mean())
    return {"jitter_px": round(jitter, 4), "jitter_share_of_crop": round(jitter / side, 6),
            "position_error_px": round(error, 4), "crop_side_px": round(side, 1)}


def jitter_study(count: int, hw, noise: float, smoothings: list[float], seed: int) -> dict:
    truth = clip.true_landmarks(count, hw)
    noisy = truth + np.random.default_rng(seed).normal(0.0, noise, truth.shape)
    true_quads = fv.align_clip(as_faces(truth), smoothing=0).quads
    per_frame = crop_stats(fv.align_clip(as_faces(noisy), smoothing=0).quads, true_quads)
    out = {"landmark_noise_px": noise, "per_frame": per_frame, "video_mode": {}}
    for s in smoothings:
        stats = crop_stats(fv.align_clip(as_faces(noisy), smoothing=s).quads, true_quads)
        stats["jitter_cut"] = round(per_frame["jitter_px"] / stats["jitter_px"], 2)
        out["video_mode"][str(s)] = stats
    return out


def mediapipe_study(frames: np.ndarray, hw, smoothings: list[float]) -> dict:
    try:
        detector = fl.MediaPipeLandmarks(max_num_faces=2)
    except fl.MissingDependencyError as e:
        return {"skipped": f"mediapipe is not installed ({e})"}
    with detector:
        detected = [detector.detect_landmarks(f) for f in frames]
    true_quads = fv.align_clip(as_faces(clip.true_landmarks(len(frames), hw)), smoothing=0).quads
    per_frame = crop_stats(fv.align_clip(detected, smoothing=0).quads, true_quads)
    out = {"frames_with_a_face": sum(bool(d) for d in detected), "per_frame": per_frame, "video_mode": {}}
    for s in smoothings:
        stats = crop_stats(fv.align_clip(detected, smoothing=s).quads, true_quads)
        stats["jitter_cut"] = round(per_frame["jitter_px"] / stats["jitter_px"], 2)
        out["video_mode"][str(s)] = stats
    return out


# --------------------------------------------------------------------------------------------- flicker
class ListDetector:
    def __init__(self, frames):
        self.frames = list(frames)

    def detect_landmarks(self, image):
        return self.frames.pop(0)


def run_nodes(frames: torch.Tensor, faces, template: torch.Tensor, video: bool, smoothing: float, device):
    face_nodes._make_detector = lambda node, choice, faces=list(faces): ListDetector(faces)
    align_node = face_nodes.TransEditAlignFace()
    aligned, align, _ = align_node.align(frames, face_nodes.MEDIAPIPE, template.shape[1], 0, "interpolate" if video
                                         else "error", "blur", "video" if video else "off", smoothing)
    edited = template.expand(frames.shape[0], -1, -1, -1)
    out, mask = face_nodes.TransEditPasteBack().paste(frames, edited, align, "ellipse", 0.04, "lab")
    return out, mask


def carried_back(frames: torch.Tensor, mats: np.ndarray) -> torch.Tensor:
    """frames[t] resampled into frame t-1's coordinates by the true motion: [T-1, H, W, 3]."""
    t_count, h, w, _ = frames.shape
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    pts = torch.stack([xs, ys, torch.ones_like(xs)], -1).reshape(-1, 3)
    grids = []
    for t in range(1, t_count):
        m = torch.from_numpy(mats[t] @ np.linalg.inv(mats[t - 1]))
        q = pts @ m.T
        gx, gy = (q[:, 0] + 0.5) / w * 2 - 1, (q[:, 1] + 0.5) / h * 2 - 1
        grids.append(torch.stack([gx, gy], -1).reshape(h, w, 2))
    grid = torch.stack(grids).float()
    src = frames[1:].permute(0, 3, 1, 2)
    return F.grid_sample(src, grid, mode="bilinear", padding_mode="border", align_corners=False).permute(0, 2, 3, 1)


def flicker_maps(frames: torch.Tensor, mats: np.ndarray) -> torch.Tensor:
    """[T-1, H, W]: |frame t-1 - frame t carried back| (0..255, mean over colours)."""
    return (frames[:-1] - carried_back(frames, mats)).abs().mean(-1) * 255.0


def flicker_study(count: int, hw, noise: float, smoothing: float, seed: int, device):
    frames_u8, mats = clip.render_clip(count, hw)
    frames = torch.from_numpy(frames_u8).float() / 255.0
    truth = clip.true_landmarks(count, hw)
    noisy = truth + np.random.default_rng(seed).normal(0.0, noise, truth.shape)
    true_quads = fv.align_clip(as_faces(truth), smoothing=0).quads
    template, _ = fa.align_to_quad(frames[0], true_quads[0], 256)
    template = (torch.floor(template * 4.0) / 4.0 + 0.125)[None]  # a posterised "painted" face: the edit
    # the face region: the true crop's inscribed ellipse, shrunk a little (where the paste is at full strength)
    region = []
    for t in range(count - 1):
        rec = fa.AlignRecord.from_quad(hw, true_quads[t], 64)
        ys, xs = np.mgrid[:hw[0], :hw[1]]
        p = rec.to_aligned(np.stack([xs, ys], -1).reshape(-1, 2)).reshape(hw[0], hw[1], 2) / 64.0 - 0.5
        region.append(torch.from_numpy((p ** 2).sum(-1) < 0.3 ** 2))
    region = torch.stack(region)
    baseline = float(flicker_maps(frames, mats)[region].mean())
    results, maps, outs = {"input_flicker": round(baseline, 4)}, {}, {}
    for name, video in (("per_frame", False), ("video_mode", True)):
        start = time.perf_counter()
        out, _ = run_nodes(frames, as_faces(noisy), template, video, smoothing, device)
        seconds = time.perf_counter() - start
        m = flicker_maps(out, mats)
        outs[name], maps[name] = out, m
        results[name] = {"flicker": round(float(m[region].mean()) - baseline, 4),
                         "raw_flicker": round(float(m[region].mean()), 4),
                         "s_per_frame_align_and_paste": round(seconds / count, 4)}
    results["flicker_cut"] = round(results["per_frame"]["flicker"] / max(results["video_mode"]["flicker"], 1e-6), 2)
    return results, frames, outs, maps, true_quads


def write_strip(path: Path, frames, outs, maps, true_quads, picks) -> None:
    """Rows: input, per-frame result and its frame-to-frame change, video-mode result and its change; each tile
    the face's neighbourhood in that frame (1.4 x the true crop)."""
    from PIL import Image, ImageDraw

    side = 224

    def box(t):
        centre, half = true_quads[t].mean(0), 0.7 * np.linalg.norm(true_quads[t][3] - true_quads[t][0])
        return int(centre[0] - half), int(centre[1] - half), int(centre[0] + half), int(centre[1] + half)

    def tile(img, t):
        x0, y0, x1, y1 = box(t)
        pic = Image.fromarray((img.clamp(0, 1) * 255).round().byte().numpy())
        return pic.crop((x0, y0, x1, y1)).resize((side, side), Image.BILINEAR)

    def heat(m, t):
        v = (m / 12.0).clamp(0, 1)  # a frame-to-frame difference of 12 levels (of 255) or more = full orange
        return tile(torch.stack([v, v * 0.6, v * 0.2], -1), t)

    rows = [("input frames", [tile(frames[t], t) for t in picks]),
            ("per-frame alignment", [tile(outs["per_frame"][t], t) for t in picks]),
            ("  its frame-to-frame change", [heat(maps["per_frame"][t - 1], t - 1) for t in picks]),
            ("video mode", [tile(outs["video_mode"][t], t) for t in picks]),
            ("  its frame-to-frame change", [heat(maps["video_mode"][t - 1], t - 1) for t in picks])]
    label_w = 190
    strip = Image.new("RGB", (label_w + side * len(picks), side * len(rows)), (24, 24, 24))
    draw = ImageDraw.Draw(strip)
    for r, (label, tiles) in enumerate(rows):
        draw.text((8, r * side + side // 2 - 6), label, fill=(230, 230, 230))
        for c, im in enumerate(tiles):
            strip.paste(im, (label_w + side * c, r * side))
    path.parent.mkdir(parents=True, exist_ok=True)
    strip.save(path, quality=82)


# ---------------------------------------------------------------------------------------------- footage
def footage_facts(hostile, detections, change, **kw) -> dict:
    """What Align Face's video mode makes of the hostile clip, against its truth."""
    aligned = fv.align_clip(detections, change=change, **kw)
    truth = hc.true_quads(hostile.person)
    side = np.linalg.norm(truth[:, 3] - truth[:, 0], axis=-1)
    err = np.linalg.norm(aligned.quads - truth, axis=-1).max(-1) / side
    after_cut = [t for t in range(45, 52)]
    strength = fv.paste_strength(aligned.status, aligned.smoothing, aligned.segments)
    pasted = [s != fv.LOST for s in aligned.status]
    return {"cuts_found": aligned.cuts, "cuts_true": hostile.cuts, **hc.found_errors(aligned.status, aligned.landmarks,
                                                                                     hostile),
            "interpolated": fv.frame_ranges(aligned.frames(fv.INTERPOLATED)),
            "left_untouched": fv.frame_ranges(aligned.frames(fv.LOST)),
            "occluded_frames_pasted": int(sum(pasted[t] and strength[t] > 0 for t in hostile.occluded)),
            "crop_error_after_cut_share_of_crop": [round(float(e), 3) for e in err[after_cut]],
            "shots": [{"frames": f"{s.first}-{s.last}", "how": s.how, "start": s.start} for s in aligned.shots]}


def smoothing_choice(hostile, change, noise: float, seeds: int) -> dict:
    """Lag on the fast nod and jitter on the steady frames, per smoothing scheme, at one landmark noise."""
    from transedit.models.face import temporal

    truth = hc.true_quads(hostile.person)
    side = float(np.linalg.norm(truth[:45, 3] - truth[:45, 0], axis=-1).mean())
    steady = [t for t in range(1, 45) if t not in hostile.nod and hostile.person_visible[t]]
    dets = [hostile.detections(noise, seed) for seed in range(seeds)]
    schemes = [(f"fixed {s:g}", dict(smoothing=s, adaptive=False), None) for s in (0.0, 1.0, 2.0, 3.0, 5.0)]
    schemes += [(f"adaptive {s:g}, threshold {g:g}", dict(smoothing=s, adaptive=True), g)
                for s in (3.0, 5.0) for g in (1.0, 1.5, 2.0, 3.0)]
    out = {}
    real = temporal.ICI_THRESHOLD
    try:
        for name, kw, threshold in schemes:
            quads = []
            for d in dets:
                if threshold is None:
                    quads.append(fv.align_clip(d, change=change, **kw).quads)
                else:
                    fv.smooth_adaptive = lambda *a, _t=threshold, **k: temporal.smooth_adaptive(*a, threshold=_t, **k)
                    quads.append(fv.align_clip(d, change=change, **kw).quads)
            quads = np.stack(quads)
            lag = hc.crop_lag(quads, truth, hostile.nod)
            jitter = float(np.mean([hc.crop_jitter(q, truth, steady) for q in quads]))
            nod_jitter = float(np.mean([hc.crop_jitter(q, truth, hostile.nod) for q in quads]))
            out[name] = {"nod_lag_px": round(lag, 2), "nod_lag_share_of_crop": round(lag / side, 4),
                         "steady_jitter_px": round(jitter, 3), "nod_jitter_px": round(nod_jitter, 3)}
    finally:
        fv.smooth_adaptive = temporal.smooth_adaptive
        temporal.ICI_THRESHOLD = real
    return {"landmark_noise_px": noise, "seeds": seeds, "crop_side_px": round(side, 1), "schemes": out}


def pick_default(choices: list[dict], width: float = 3.0) -> dict:
    """The rule for models/face/temporal.ICI_THRESHOLD: at Align Face's default width, the adaptive scheme with the
    least nod lag at its worst noise level, among those that are at most 10 % jitterier on the steady frames
    than STIT's fixed width 3 at every noise level."""
    names = [k for k in choices[0]["schemes"] if k.startswith(f"adaptive {width:g},")]
    ok = [k for k in names if all(c["schemes"][k]["steady_jitter_px"] <= 1.1 * c["schemes"]["fixed 3"]["steady_jitter_px"]
                                  for c in choices)]
    worst = {k: max(c["schemes"][k]["nod_lag_px"] for c in choices) for k in ok}
    best = min(worst, key=worst.get)
    from transedit.models.face import temporal

    in_code = f"adaptive {width:g}, threshold {temporal.ICI_THRESHOLD:g}"
    return {"rule": pick_default.__doc__.split("The rule for models/face/temporal.ICI_THRESHOLD: ")[1].replace("\n    ", " "),
            "within_jitter_budget": ok, "picked": best, "worst_nod_lag_px": worst[best],
            "fixed_3_worst_nod_lag_px": max(c["schemes"]["fixed 3"]["nod_lag_px"] for c in choices),
            "in_code": in_code, "code_follows_the_pick": in_code == best}


def footage_study(hw, noises, seeds: int) -> dict:
    hostile = hc.make_clip(hw)
    frames = torch.from_numpy(hostile.frames).float() / 255.0
    change = fv.frame_change(fv.frame_signatures(frames))
    out = {"clip": {"frames": len(frames), "size": f"{hw[1]}x{hw[0]}", "cut": hostile.cuts,
                    "occluded": fv.frame_ranges(hostile.occluded), "nod": fv.frame_ranges(hostile.nod),
                    "person_visible": fv.frame_ranges(np.flatnonzero(hostile.person_visible)),
                    "other_visible": fv.frame_ranges(np.flatnonzero(hostile.other_visible))},
           "largest_change_not_a_cut": round(float(np.delete(change, hostile.cuts).max()), 3),
           "change_at_cut": [round(float(change[c]), 3) for c in hostile.cuts]}
    dets = hostile.detections(1.0, 0)
    out["synthetic_noise_1px"] = footage_facts(hostile, dets, change, smoothing=3.0, interpolate_lost=True)
    out["synthetic_noise_1px_without_cut_detection"] = footage_facts(hostile, dets, None, smoothing=3.0,
                                                                     interpolate_lost=True)
    try:
        detector = fl.MediaPipeLandmarks(max_num_faces=4)
        with detector:
            found = [detector.detect_landmarks(f) for f in hostile.frames]
        out["mediapipe"] = footage_facts(hostile, found, change, smoothing=3.0, interpolate_lost=True)
        truth = hc.true_quads(hostile.person)
        out["mediapipe"]["nod_error_px"] = {}
        for name, kw in (("raw", dict(smoothing=0.0, adaptive=False)), ("fixed 3", dict(smoothing=3.0, adaptive=False)),
                         ("adaptive 3", dict(smoothing=3.0))):
            quads = fv.align_clip(found, change=change, **kw).quads
            out["mediapipe"]["nod_error_px"][name] = round(hc.crop_lag(quads[None], truth, hostile.nod), 2)
    except fl.MissingDependencyError as e:
        out["mediapipe"] = {"skipped": f"mediapipe is not installed ({e})"}
    out["smoothing_choice"] = [smoothing_choice(hostile, change, n, seeds) for n in noises]
    out["picked"] = pick_default(out["smoothing_choice"])
    return out


def smoother_memory_case(frames: int, columns: int, dense: bool) -> dict:
    from transedit.models.face import temporal

    values = np.random.default_rng(0).normal(size=(frames, columns))
    present = np.ones(frames, dtype=bool)
    present[::7] = False
    with RSSPeak() as peak:
        start = time.perf_counter()
        if dense:
            temporal.smoothing_weights(present, 3.0)
        else:
            temporal.smooth_series(values, 3.0, present, temporal.segment_ids(frames, [frames // 2]))
        seconds = time.perf_counter() - start
    return {"frames": frames, "columns": columns, "form": "dense T x T" if dense else "banded",
            "working_mib": round((peak.peak - peak.base) / MIB, 1), "input_mib": round(values.nbytes / MIB, 1),
            "seconds": round(seconds, 3)}


def smoother_memory_study(quick: bool = False) -> list[dict]:
    cases = [(18000, 4, False), (18000, 512, False), (1800, 4, False), (1800, 4, True), (3600, 4, True)]
    if quick:  # the GPU check on the CPU: one banded and one dense case, so the command never rots
        cases = [(1800, 4, False), (600, 4, True)]
    out = []
    for frames, columns, dense in cases:
        proc = subprocess.run([sys.executable, __file__, "--smoother-case", f"{frames},{columns},{int(dense)}"],
                              capture_output=True, text=True)
        case = (json.loads(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0
                else {"frames": frames, "failed": proc.stderr[-300:]})
        print(f"  smoother {case}", flush=True)
        out.append(case)
    out.append({"frames": 18000, "form": "dense T x T (not run)", "matrix_mib": round(18000 ** 2 * 8 / MIB)})
    return out


# ------------------------------------------------------------------------------------------- long clips
def memory_case(frames: int, height: int) -> dict:
    """One Paste Back run on `frames` frames of height `height` (16:9), in this process, with whichever
    transedit is importable (this checkout, or an older one through --baseline-src)."""
    hw = (height, height * 16 // 9)
    base_frames, _ = clip.render_clip(4, hw)
    original = torch.from_numpy(base_frames).float().div_(255.0)[torch.arange(frames) % 4].contiguous()
    quads = [fa.ffhq_quad(faces[0])[0] for faces in as_faces(clip.true_landmarks(4, hw))]
    records = [fa.AlignRecord.from_quad(hw, quads[t % 4], 256) for t in range(frames)]
    if fv is not None:
        align = face_nodes.FaceAlignment(records, [True] * frames, status=[fv.FOUND] * frames, smoothing=3.0)
    else:
        align = face_nodes.FaceAlignment(records, [True] * frames)
    edited = torch.rand(frames, 256, 256, 3, generator=torch.Generator().manual_seed(0))
    out_bytes = original.numel() * 4 + frames * hw[0] * hw[1] * 4  # the images and the mask it returns
    with RSSPeak() as peak:
        start = time.perf_counter()
        face_nodes.TransEditPasteBack().paste(original, edited, align, "ellipse", 0.04, "lab")
        seconds = time.perf_counter() - start
    return {"frames": frames, "size": f"{hw[1]}x{hw[0]}", "frames_in_mib": round(original.numel() * 4 / MIB),
            "outputs_mib": round(out_bytes / MIB), "working_mib": round((peak.peak - peak.base - out_bytes) / MIB),
            "s_per_frame": round(seconds / frames, 4)}


def memory_study(frame_counts, height, baseline_src: str | None, baseline_max: int) -> list[dict]:
    """Each case in a fresh process (peak RSS is per process). The baseline, an older checkout's Paste Back,
    only up to `baseline_max` frames: it holds several copies of every frame and would exhaust the memory."""
    cases = []
    runs = [("this version", None)] + ([("baseline", baseline_src)] if baseline_src else [])
    for frames in frame_counts:
        for label, src in runs:
            if src and frames > baseline_max:
                continue
            env = dict(os.environ)
            if src:  # the older package first on the path, under its import name
                env["PYTHONPATH"] = os.pathsep.join([src, env.get("PYTHONPATH", "")])
            proc = subprocess.run([sys.executable, __file__, "--memory-case", f"{frames},{height}"], env=env,
                                  capture_output=True, text=True)
            if proc.returncode != 0:
                case = {"frames": frames, "failed": f"exit {proc.returncode} ({'killed: out of memory' if proc.returncode in (-9, 137) else proc.stderr[-300:]})"}
            else:
                case = json.loads(proc.stdout.strip().splitlines()[-1])
            case["code"] = label
            cases.append(case)
            print(f"  paste back {case}", flush=True)
    return cases


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--frames", type=int, default=96, help="frames of the synthetic clip")
    ap.add_argument("--noise", type=float, default=1.5, help="landmark noise, pixels (sigma)")
    ap.add_argument("--smoothing", type=float, default=3.0, help="Align Face's smoothing in video mode")
    ap.add_argument("--memory-frames", default="30,60,120,300", help="clip lengths for the long-clip memory cases")
    ap.add_argument("--baseline-src", help="a folder holding an older checkout as `transedit/` (e.g. a symlink to a "
                                           "git worktree of the previous release): its Paste Back is measured too")
    ap.add_argument("--baseline-max-frames", type=int, default=60)
    ap.add_argument("--memory-height", type=int, default=1080)
    ap.add_argument("--out", default=str(HERE / "results" / "face_video_cpu.json"))
    ap.add_argument("--strip", default=str(HERE / "results" / "face_video_strip.jpg"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--footage-seeds", type=int, default=8, help="noise seeds per smoothing scheme (lag)")
    ap.add_argument("--quick", action="store_true", help="small smoother-memory cases (CI's GPU check on the CPU); "
                    "pass --footage-seeds 1 too")
    ap.add_argument("--memory-case", help=argparse.SUPPRESS)
    ap.add_argument("--smoother-case", help=argparse.SUPPRESS)
    ap.add_argument("--keep-long-clips", action="store_true", help="skip the long-clip Paste Back cases and keep "
                                                                     "those already in --out")
    args = ap.parse_args()
    if args.smoother_case:
        frames, columns, dense = (int(v) for v in args.smoother_case.split(","))
        print(json.dumps(smoother_memory_case(frames, columns, bool(dense))))
        return
    if args.memory_case:
        frames, height = (int(v) for v in args.memory_case.split(","))
        print(json.dumps(memory_case(frames, height)))
        return
    print("footage: the hostile clip ...", flush=True)
    footage = footage_study((480, 640), [0.5, 1.0], args.footage_seeds)
    print(json.dumps({k: footage[k] for k in ("picked", "mediapipe")}, default=str)[:2000], flush=True)
    print("banded smoother memory ...", flush=True)
    smoother = smoother_memory_study(args.quick)
    device = torch.device(args.device)
    os.environ.setdefault("TRANSEDIT_DEVICE", args.device)
    hw = (480, 640)
    smoothings = [1.0, 2.0, 3.0, 5.0]
    jitter, detected = {}, {}
    # the clip's path over --frames frames (a nod and a glide over 4 s at 24 fps), and the same path 4x faster
    for count in (args.frames, max(args.frames // 4, 8)):
        print(f"crop jitter over {count} frames (synthetic landmark noise, then mediapipe) ...", flush=True)
        jitter[str(count)] = jitter_study(count, hw, args.noise, smoothings, args.seed)
        detected[str(count)] = mediapipe_study(clip.render_clip(count, hw)[0], hw, smoothings)
        for name, study in (("synthetic", jitter[str(count)]), ("mediapipe", detected[str(count)])):
            if "per_frame" in study:
                print(f"  {name}: per frame {study['per_frame']}\n  {name}: smoothing {args.smoothing:g} "
                      f"{study['video_mode'][str(args.smoothing)]}", flush=True)
    print("flicker of the pasted face ...", flush=True)
    flicker, frames, outs, maps, true_quads = flicker_study(args.frames, hw, args.noise, args.smoothing, args.seed,
                                                           device)
    print(json.dumps(flicker), flush=True)
    picks = [1, args.frames // 4, args.frames // 2, 3 * args.frames // 4]
    write_strip(Path(args.strip), frames, outs, maps, true_quads, picks)
    print("long clips (Paste Back, one process per case) ...", flush=True)
    if args.keep_long_clips and Path(args.out).exists():
        memory = json.loads(Path(args.out).read_text())["long_clips_paste_back"]
    else:
        memory = memory_study([int(v) for v in args.memory_frames.split(",")], args.memory_height,
                              args.baseline_src, args.baseline_max_frames)
    result = {
        "benchmark": "face_video", "clip": {"frames": args.frames, "size": f"{hw[1]}x{hw[0]}",
                                            "source": "tests/example_clip.py (astronaut on a known path)"},
        "smoothing": args.smoothing, "crop_jitter_synthetic_by_frames": jitter,
        "crop_jitter_mediapipe_by_frames": detected,
        "paste_flicker": flicker, "footage": footage, "temporal_smoother_memory": smoother, "long_clips_paste_back": memory, "strip": os.path.relpath(args.strip, HERE.parent),
        "machine": {"device": torch.cuda.get_device_name(device) if device.type == "cuda"
                    else platform.processor() or platform.machine(),
                    "cpu_threads": torch.get_num_threads(), "torch": torch.__version__,
                    "python": platform.python_version()},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out} and {args.strip}")


if __name__ == "__main__":
    main()
