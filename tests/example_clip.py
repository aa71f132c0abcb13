"""A face clip with known motion, for the video tests, the face-video benchmark and the demo.

The pack's test photo (scikit-image's astronaut, public domain, NASA) glides, turns and grows along a smooth
path over a grey background, so every frame's true transform — and with it where the face's landmarks truly
are — is known: what a tracker or a smoother gets wrong can be measured against it. `write_video` stores the
frames as an H.264 MP4 (PyAV, which ComfyUI's own video nodes use), `read_video` reads any clip back.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

EXAMPLE_CLIP_NAME = "transedit_example_clip.mp4"
# The astronaut's eye centres and mouth corners in the 512x512 photo (pixel-centre coordinates; found once with
# mediapipe's face mesh, and only ever used as the ground truth the synthetic clip moves along)
ASTRONAUT_LANDMARKS = np.array([[203.02, 101.00], [246.61, 103.28], [201.31, 138.72], [244.49, 140.49]])
BACKGROUND = 118  # grey around the moving photo


def clip_motion(count: int) -> np.ndarray:
    """Per frame (scale, angle in radians, centre x, centre y) of the photo in a unit frame ([0, 1] both ways):
    one smooth path — across and back a little, a slow nod, a slow zoom."""
    u = np.linspace(0.0, 1.0, count) if count > 1 else np.zeros(1)
    scale = 0.9 + 0.12 * np.sin(math.pi * u)
    angle = 0.14 * np.sin(2 * math.pi * u)
    cx = 0.42 + 0.16 * u
    cy = 0.52 + 0.05 * np.sin(2 * math.pi * u)
    return np.stack([scale, angle, cx, cy], axis=1)


def frame_from_photo(motion: np.ndarray, photo_size: int, frame_hw: tuple[int, int]) -> np.ndarray:
    """[T, 3, 3] affine matrices taking photo pixel-centre coordinates to frame pixel-centre coordinates.
    `scale` is the photo's side as a share of the frame's height."""
    h, w = frame_hw
    mats = []
    for scale, angle, cx, cy in motion:
        k = scale * h / photo_size
        c, s = math.cos(angle), math.sin(angle)
        centre_photo = (photo_size - 1) / 2.0
        rot = np.array([[k * c, -k * s], [k * s, k * c]])
        shift = np.array([cx * w, cy * h]) - 0.5 - rot @ np.array([centre_photo, centre_photo])
        mats.append(np.array([[rot[0, 0], rot[0, 1], shift[0]], [rot[1, 0], rot[1, 1], shift[1]], [0, 0, 1.0]]))
    return np.stack(mats)


def true_landmarks(count: int, frame_hw: tuple[int, int], photo_size: int = 512) -> np.ndarray:
    """[T, 4, 2]: where the astronaut's eyes and mouth corners are in each frame."""
    mats = frame_from_photo(clip_motion(count), photo_size, frame_hw)
    pts = np.concatenate([ASTRONAUT_LANDMARKS, np.ones((4, 1))], axis=1)
    return np.einsum("tij,kj->tki", mats, pts)[..., :2]


def render_clip(count: int, frame_hw: tuple[int, int] = (480, 640)) -> tuple[np.ndarray, np.ndarray]:
    """(frames uint8 [T, H, W, 3], frame_from_photo [T, 3, 3]) of the astronaut along clip_motion."""
    from PIL import Image
    from skimage import data

    photo = Image.fromarray(data.astronaut()).convert("RGB")
    size = photo.size[0]
    mats = frame_from_photo(clip_motion(count), size, frame_hw)
    h, w = frame_hw
    frames = np.empty((count, h, w, 3), np.uint8)
    for t, m in enumerate(mats):
        # PIL maps output pixel corners to input pixel corners: shift the pixel-centre inverse by half a pixel
        inv = np.linalg.inv(m)
        corner = inv @ np.array([[1, 0, -0.5], [0, 1, -0.5], [0, 0, 1]])
        corner[:2, 2] += 0.5
        canvas = Image.new("RGB", (w, h), (BACKGROUND,) * 3)
        moved = photo.transform((w, h), Image.Transform.AFFINE, tuple(corner[:2].reshape(-1)),
                                resample=Image.Resampling.BICUBIC)
        inside = Image.new("L", photo.size, 255).transform((w, h), Image.Transform.AFFINE,
                                                            tuple(corner[:2].reshape(-1)),
                                                            resample=Image.Resampling.BILINEAR)
        canvas.paste(moved, (0, 0), inside)
        frames[t] = np.asarray(canvas)
    return frames, mats


def write_video(path: os.PathLike, frames: np.ndarray, fps: int = 24) -> Path:
    """Frames uint8 [T, H, W, 3] (even H and W) -> an H.264 MP4 at high quality (crf 16, yuv420p)."""
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    with av.open(str(tmp), mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "16"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    os.replace(tmp, path)
    return path


def read_video(path: os.PathLike) -> tuple[np.ndarray, float]:
    """(frames uint8 [T, H, W, 3], frames per second) of any clip PyAV reads."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate or stream.base_rate or 0)
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
    return np.stack(frames), fps


def write_example_clip(path: os.PathLike, count: int = 12, frame_hw: tuple[int, int] = (480, 640),
                       fps: int = 12) -> Path:
    """The stand-in for a workflow's Load Video file: `count` frames of the moving astronaut."""
    frames, _ = render_clip(count, frame_hw)
    return write_video(path, frames, fps)
