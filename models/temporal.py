"""Smoothing a per-frame quantity over time, for video: alignment quads, colour statistics, W+ latents.

One smoother serves them all: a Gaussian-weighted local *linear* fit at every frame (LOESS of degree 1). Inside
a clip with every frame present it is a Gaussian blur of the series; where a plain blur would bias the ends of
the clip towards its middle (a face moving steadily would lag at the first and last frames), the local line
follows the motion. Frames marked missing contribute nothing; they are filled from the fit around them, and a
gap longer than the kernel reaches is bridged by a straight line between the smoothed values on either side
(held constant before the first and after the last present frame).
"""
from __future__ import annotations

import numpy as np
import torch

KERNEL_RADIUS = 4.0  # the Gaussian is cut at 4 sigma: weights below 3e-4 of the centre's
MIN_FIT_WEIGHT = 0.5  # a frame's fit needs this much kernel weight (the centre frame's is 1) to be trusted


def _kernel(sigma: float) -> tuple[np.ndarray, np.ndarray]:
    radius = max(1, int(np.ceil(KERNEL_RADIUS * sigma)))
    offsets = np.arange(-radius, radius + 1, dtype=np.float64)
    return offsets, np.exp(-0.5 * (offsets / sigma) ** 2)


def smoothing_weights(present: np.ndarray, sigma: float) -> np.ndarray:
    """The [T, T] matrix M with smoothed = M @ values for a series of T frames (rows of missing frames filled as
    described in the module doc). Built once per clip and applied to any number of columns."""
    present = np.asarray(present, dtype=bool)
    t_count = present.shape[0]
    if not present.any():
        raise ValueError("no frame of the series is present; nothing to smooth")
    if sigma <= 0:
        m = np.eye(t_count)
        fit = present.copy()
    else:
        offsets, g = _kernel(float(sigma))
        m = np.zeros((t_count, t_count))
        fit = np.zeros(t_count, dtype=bool)
        for t in range(t_count):
            s = t + offsets.astype(int)
            inside = (s >= 0) & (s < t_count)
            s, d, w = s[inside], offsets[inside], g[inside] * present[s[inside]]
            s0, s1, s2 = w.sum(), (w * d).sum(), (w * d * d).sum()
            if s0 < MIN_FIT_WEIGHT:
                continue
            det = s0 * s2 - s1 * s1
            if det > 1e-9 * s0 * s0:  # a line through the frames around t, read at t
                m[t, s] = w * (s2 - s1 * d) / det
            else:  # all weight on one side of t at one offset, or a single frame: the weighted mean
                m[t, s] = w / s0
            fit[t] = True
    # frames the fit does not reach: a straight line between the nearest fitted frames, held at the ends
    fitted = np.flatnonzero(fit)
    for t in np.flatnonzero(~fit):
        after = fitted[np.searchsorted(fitted, t):]
        before = fitted[:np.searchsorted(fitted, t)]
        if before.size and after.size:
            a, b = before[-1], after[0]
            u = (t - a) / (b - a)
            m[t] = (1 - u) * m[a] + u * m[b]
        else:
            m[t] = m[before[-1]] if before.size else m[after[0]]
    return m


def smooth_series(values, sigma: float, present=None):
    """Smooth ``values`` ([T, ...] numpy array or tensor) along its first axis with a Gaussian of ``sigma``
    frames (0: unchanged, missing frames still filled). ``present`` ([T] bools, default all) marks the frames
    that count; the others are filled. Returns the same type, dtype and device (tensors: computed in fp32)."""
    t_count = values.shape[0]
    present = np.ones(t_count, dtype=bool) if present is None else np.asarray(present, dtype=bool)
    if present.shape != (t_count,):
        raise ValueError(f"present has {present.shape[0]} entries for {t_count} frames")
    m = smoothing_weights(present, sigma)
    if isinstance(values, torch.Tensor):
        flat = values.reshape(t_count, -1).float()
        out = torch.from_numpy(m).to(device=flat.device, dtype=torch.float32) @ flat
        return out.reshape(values.shape).to(values.dtype)
    arr = np.asarray(values, dtype=np.float64)
    return (m @ arr.reshape(t_count, -1)).reshape(arr.shape)
