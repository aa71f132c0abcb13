"""Smoothing a per-frame quantity over time, for video: alignment quads, colour statistics, W+ latents.

One smoother serves them all: a Gaussian-weighted local *linear* fit at every frame (LOESS of degree 1). Inside
a clip with every frame present it is a Gaussian blur of the series; where a plain blur would bias the ends of
the clip towards its middle (a face moving steadily would lag at the first and last frames), the local line
follows the motion. Frames marked missing contribute nothing; they are filled from the fit around them, and a
gap longer than the kernel reaches is bridged by a straight line between the smoothed values on either side
(held constant before the first and after the last present frame).

A clip may be split into segments (the shots between hard cuts): nothing is fitted, filled or bridged across a
segment boundary, and a segment without any present frame keeps its values as they came.

The fit is computed band by band: one pass per kernel offset accumulates the weighted sums every frame needs,
so time and memory grow with frames x columns x kernel width, never frames squared (a 10-minute clip at 30 fps
is 18000 frames: a dense matrix would be 2.6 GB).

:func:`smooth_adaptive` picks the width per frame (the intersection-of-confidence-intervals rule, Katkovnik's
ICI): the widest Gaussian whose estimate agrees with every narrower one within the noise, so a face standing
still is smoothed fully and a fast nod is followed without lag.
"""
from __future__ import annotations

import numpy as np
import torch

KERNEL_RADIUS = 4.0  # the Gaussian is cut at 4 sigma: weights below 3e-4 of the centre's
MIN_FIT_WEIGHT = 0.5  # a frame's fit needs this much kernel weight (the centre frame's is 1) to be trusted
ICI_THRESHOLD = 1.5  # adaptive: estimates agree when their +-1.5 standard deviation intervals overlap (chosen by
# benchmarks/bench_face_video.py: lag on a fast nod against jitter on a steady face)
MIN_ADAPTIVE_SIGMA = 0.5  # adaptive: the narrowest Gaussian tried before the raw series


def segment_ids(count: int, cuts=()) -> np.ndarray:
    """[count] ints numbering the segments; ``cuts`` are the frames that start a new one."""
    ids = np.zeros(count, dtype=np.int64)
    for c in sorted(set(int(c) for c in cuts)):
        if 0 < c < count:
            ids[c:] += 1
    return ids


def _as_inputs(count: int, present, segments) -> tuple[np.ndarray, np.ndarray]:
    present = np.ones(count, dtype=bool) if present is None else np.asarray(present, dtype=bool)
    if present.shape != (count,):
        raise ValueError(f"present has {present.shape[0]} entries for {count} frames")
    segments = np.zeros(count, dtype=np.int64) if segments is None else np.asarray(segments, dtype=np.int64)
    if segments.shape != (count,):
        raise ValueError(f"segments has {segments.shape[0]} entries for {count} frames")
    return present, segments


def _neighbours(fitted: np.ndarray, segments: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per frame the nearest fitted frame at or before it and at or after it in its own segment (-1: none)."""
    idx = np.arange(fitted.shape[0])
    before = np.maximum.accumulate(np.where(fitted, idx, -1))
    after = np.minimum.accumulate(np.where(fitted, idx, fitted.shape[0])[::-1])[::-1]
    after = np.where(after < fitted.shape[0], after, -1)
    before = np.where((before >= 0) & (segments[np.maximum(before, 0)] == segments), before, -1)
    after = np.where((after >= 0) & (segments[np.maximum(after, 0)] == segments), after, -1)
    return before, after


def _fill(fit: torch.Tensor, fitted: np.ndarray, segments: np.ndarray, original: torch.Tensor) -> torch.Tensor:
    """Unfitted frames: a straight line between the fitted frames around them in their segment, held at the
    segment's ends; a segment with nothing fitted keeps ``original``."""
    if fitted.all():
        return fit
    before, after = _neighbours(fitted, segments)
    a = np.where(before >= 0, before, after)
    b = np.where(after >= 0, after, before)
    none = a < 0
    span = np.maximum(b - a, 1)
    u = np.where(b > a, (np.arange(fitted.shape[0]) - a) / span, 0.0)
    a_t = torch.from_numpy(np.maximum(a, 0)).to(fit.device)
    b_t = torch.from_numpy(np.maximum(b, 0)).to(fit.device)
    u_t = torch.from_numpy(u).to(device=fit.device, dtype=fit.dtype)[:, None]
    out = (1 - u_t) * fit[a_t] + u_t * fit[b_t]
    if none.any():
        out[torch.from_numpy(none).to(fit.device)] = original[torch.from_numpy(none).to(fit.device)]
    return out


def local_linear_fit(flat: torch.Tensor, sigma: float, present: np.ndarray, segments: np.ndarray):
    """The banded fit of ``flat`` ([T, C] tensor; missing frames may hold anything) before any filling.
    Returns (fit [T, C], fitted [T] bools, noise gain [T]: the square root of the sum of squared weights, i.e.
    the fit's standard deviation per unit of white noise in the series; inf where not fitted)."""
    count = flat.shape[0]
    dev, dtype = flat.device, flat.dtype
    if sigma <= 0:
        gain = np.where(present, 1.0, np.inf)
        return flat, present.copy(), gain
    radius = max(1, int(np.ceil(KERNEL_RADIUS * sigma)))
    keep = torch.from_numpy(present).to(device=dev)
    values = torch.where(keep[:, None], flat, torch.zeros((), dtype=dtype, device=dev))  # missing may be NaN
    s0, s1, s2 = (np.zeros(count) for _ in range(3))
    q0, q1, q2 = (np.zeros(count) for _ in range(3))
    sv = torch.zeros_like(values)
    sdv = torch.zeros_like(values)
    for d in range(-radius, radius + 1):
        lo, hi = max(0, -d), min(count, count - d)
        if lo >= hi:
            continue
        w = np.exp(-0.5 * (d / sigma) ** 2) * present[lo + d:hi + d] * (segments[lo:hi] == segments[lo + d:hi + d])
        s0[lo:hi] += w
        s1[lo:hi] += w * d
        s2[lo:hi] += w * d * d
        q0[lo:hi] += w * w
        q1[lo:hi] += w * w * d
        q2[lo:hi] += w * w * d * d
        w_t = torch.from_numpy(w).to(device=dev, dtype=dtype)[:, None]
        shifted = values[lo + d:hi + d] * w_t
        sv[lo:hi] += shifted
        sdv[lo:hi] += shifted * d
    det = s0 * s2 - s1 * s1
    fitted = s0 >= MIN_FIT_WEIGHT
    line = fitted & (det > 1e-9 * s0 * s0)  # else all weight at one offset: the weighted mean
    safe_det = np.where(line, det, 1.0)
    safe_s0 = np.where(fitted, s0, 1.0)
    a = np.where(line, s2 / safe_det, 1.0 / safe_s0)  # fit = a * sum(w v) - b * sum(w d v)
    b = np.where(line, s1 / safe_det, 0.0)
    a_t = torch.from_numpy(a).to(device=dev, dtype=dtype)[:, None]
    b_t = torch.from_numpy(b).to(device=dev, dtype=dtype)[:, None]
    fit = a_t * sv - b_t * sdv
    var = np.where(line, (s2 * s2 * q0 - 2 * s2 * s1 * q1 + s1 * s1 * q2) / (safe_det * safe_det),
                   q0 / (safe_s0 * safe_s0))
    gain = np.where(fitted, np.sqrt(np.maximum(var, 0.0)), np.inf)
    return fit, fitted, gain


def _flatten(values):
    if isinstance(values, torch.Tensor):
        return values.reshape(values.shape[0], -1).float()
    return torch.from_numpy(np.asarray(values, dtype=np.float64).reshape(values.shape[0], -1))


def _restore(flat: torch.Tensor, values):
    if isinstance(values, torch.Tensor):
        return flat.reshape(values.shape).to(values.dtype)
    return flat.numpy().reshape(np.shape(values))


def smooth_series(values, sigma: float, present=None, segments=None):
    """Smooth ``values`` ([T, ...] numpy array or tensor) along its first axis with a Gaussian of ``sigma``
    frames (0: unchanged, missing frames still filled). ``present`` ([T] bools, default all) marks the frames
    that count; the others are filled. ``segments`` ([T] ints, e.g. from :func:`segment_ids`) keeps every fit
    and fill inside its segment. Returns the same type, dtype and device (tensors: computed in fp32)."""
    count = values.shape[0]
    present, segments = _as_inputs(count, present, segments)
    if not present.any():
        raise ValueError("no frame of the series is present; nothing to smooth")
    flat = _flatten(values)
    fit, fitted, _ = local_linear_fit(flat, float(sigma), present, segments)
    return _restore(_fill(fit, fitted, segments, flat), values)


def smoothing_weights(present, sigma: float, segments=None) -> np.ndarray:
    """The [T, T] matrix M with smoothed = M @ values (the smoother applied to the identity). Quadratic in T:
    for inspection and small clips only; :func:`smooth_series` never builds it."""
    present = np.asarray(present, dtype=bool)
    return smooth_series(np.eye(present.shape[0]), sigma, present, segments)


def estimate_noise(values, present=None, segments=None) -> np.ndarray:
    """Per column, the standard deviation of the series' frame-to-frame noise, from the median absolute
    deviation of second differences over runs of present frames (robust to the few frames of fast motion:
    for white noise of deviation s, a second difference has deviation s * sqrt(6)). NaN where fewer than 5
    second differences exist."""
    count = values.shape[0]
    present, segments = _as_inputs(count, present, segments)
    flat = _flatten(values).double().cpu().numpy()
    ok = present[:-2] & present[1:-1] & present[2:] & (segments[:-2] == segments[2:])
    if ok.sum() < 5:
        return np.full(flat.shape[1], np.nan)
    d2 = (flat[2:] - 2 * flat[1:-1] + flat[:-2])[ok]
    mad = np.median(np.abs(d2 - np.median(d2, axis=0)), axis=0)
    return 1.4826 * mad / np.sqrt(6.0)


def noise_per_segment(values, present=None, segments=None) -> np.ndarray:
    """[T, C]: per frame, :func:`estimate_noise` of its own segment alone (NaN where that segment is too short
    for an estimate), so a shot's smoothing never depends on how noisy another shot is."""
    count = values.shape[0]
    present, segments = _as_inputs(count, present, segments)
    flat = _flatten(values).double().cpu().numpy()
    noise = np.full(flat.shape, np.nan)
    for segment in np.unique(segments):
        rows = segments == segment
        noise[rows] = estimate_noise(flat[rows], present[rows])
    return noise


def adaptive_ladder(sigma: float) -> list[float]:
    """The widths :func:`smooth_adaptive` tries, narrowest first: 0 (the raw series), then from
    MIN_ADAPTIVE_SIGMA up to ``sigma`` in steps of sqrt(2)."""
    if sigma <= 0:
        return [0.0]
    widths = [float(sigma)]
    while widths[-1] / np.sqrt(2.0) >= MIN_ADAPTIVE_SIGMA - 1e-9:
        widths.append(widths[-1] / np.sqrt(2.0))
    return [0.0] + widths[::-1]


def smooth_adaptive(values, sigma: float, present=None, segments=None, *, noise_floor: float = 0.0,
                    threshold: float = ICI_THRESHOLD):
    """Like :func:`smooth_series` with ``sigma`` as the widest Gaussian, narrowed per frame where the series
    moves faster than the smoother follows. Each frame takes the widest width of :func:`adaptive_ladder` whose
    estimate's interval (+-``threshold`` standard deviations of the noise of the frame's own segment, from
    :func:`noise_per_segment`, at least ``noise_floor``) overlaps the intervals of all narrower widths in every
    column. A segment too short for a noise estimate (fewer than 5 second differences) keeps ``sigma``: with no
    measure of its noise there is no basis to narrow, and borrowing another shot's noise would tie the shots
    together. A missing frame takes the
    narrower choice of the present frames around it. Meant for a few columns (it keeps one estimate per width).
    Returns (smoothed like ``values``, the width used per frame [T])."""
    count = values.shape[0]
    present, segments = _as_inputs(count, present, segments)
    if not present.any():
        raise ValueError("no frame of the series is present; nothing to smooth")
    flat = _flatten(values)
    noise = noise_per_segment(values, present, segments)
    known = ~np.isnan(noise).any(axis=1)  # a segment too short to know its noise: no basis to narrow anything
    if not known.any():
        return smooth_series(values, sigma, present, segments), np.full(count, float(max(sigma, 0.0)))
    noise = np.where(known[:, None], np.maximum(noise, noise_floor), 0.0)
    noise = torch.from_numpy(noise).to(device=flat.device, dtype=flat.dtype)
    widths = adaptive_ladder(float(sigma))
    estimates = []
    lower = torch.full_like(flat, -np.inf)
    upper = torch.full_like(flat, np.inf)
    alive = np.ones(count, dtype=bool)
    choice = np.zeros(count, dtype=np.int64)
    for k, width in enumerate(widths):
        fit, fitted, gain = local_linear_fit(flat, width, present, segments)
        estimates.append(_fill(fit, fitted, segments, flat))
        half = torch.from_numpy(np.where(np.isfinite(gain), gain, 0.0)).to(flat)[:, None] * noise * threshold
        lower = torch.maximum(lower, fit - half)
        upper = torch.minimum(upper, fit + half)
        agree = (lower <= upper).all(dim=1).cpu().numpy()
        alive &= agree | ~present | ~known
        choice[alive] = k
    # a missing frame follows the narrower of its present neighbours' widths (it has no interval of its own)
    before, after = _neighbours(present, segments)
    nb = np.stack([np.where(before >= 0, choice[np.maximum(before, 0)], len(widths) - 1),
                   np.where(after >= 0, choice[np.maximum(after, 0)], len(widths) - 1)])
    choice = np.where(present, choice, nb.min(axis=0))
    stacked = torch.stack(estimates)  # [K, T, C]
    picked = stacked[torch.from_numpy(choice).to(flat.device), torch.arange(count, device=flat.device)]
    return _restore(picked, values), np.array(widths)[choice]
