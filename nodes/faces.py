"""Face stage: FFHQ alignment before inversion, paste-back into the photo afterwards, and Select Faces between.
Over 600 lines: Align Face's four ways (one face or every face, photos or a clip), Paste Back and Select Faces all
read and write the one TE_ALIGN type defined here."""
from __future__ import annotations

from dataclasses import dataclass

import os
import re

import numpy as np
import torch

from ..models.face import align as face_align
from ..models.face import landmarks as face_landmarks
from ..models.face import paste as face_paste
from ..models.face import people as face_people
from ..models.face import video as face_video
from ..models.face.temporal import smooth_series
from ..models.registry import load_retinaface
from ..models.face.retinaface import RETINAFACE_FILES
from . import comfy_bridge as bridge
from .chunks import run_in_chunks
from .compare import compare_ui
from .images import comfy_image_to_pil
from .inputs import NodeInputError, check_choice, check_float, check_images, check_int, load_model_file

CATEGORY = "TransEdit/Face"
MEDIAPIPE = "mediapipe (bundled models)"
NO_FACE_CHOICES = ("error", "pass through", "interpolate")
TEMPORAL_MODES = ("off", "video")
PADDING_CHOICES = face_align.PADDING_MODES
MASK_SHAPES = face_paste.MASK_SHAPES
COLOR_MATCH = ("lab", "rgb", "off")
FACES_CHOICES = ("one", "all")
MAX_FACES = 64


def big_enough(faces, min_size: int, ordered: bool = False) -> list:
    """The detected faces whose FFHQ crop is at least ``min_size`` pixels across, degenerate ones left out;
    ``ordered``: largest crop first (ties keep the detector's order). With neither, the detector's list as it is
    (face_index counts in it, as before these options)."""
    if min_size <= 0 and not ordered:
        return list(faces)
    sized = [(face_video.centre_and_size(f)[1], f) for f in faces if face_video.usable(f)]
    if ordered:
        sized.sort(key=lambda pair: -pair[0])
    return [f for size, f in sized if size >= min_size]


@dataclass
class FaceAlignment:
    """What flows on a TE_ALIGN wire: per image, how the aligned square maps back into the photo."""

    records: list  # face_align.AlignRecord per image
    found: list  # bool per image: False = nothing to paste (no face; paste-back leaves that image untouched)
    # video mode: each frame's face_video status (found / interpolated / lost) and the crop's smoothing in frames,
    # which Paste Back reuses for its colour statistics and its fade around lost frames; None for separate photos
    status: list | None = None
    smoothing: float = 0.0
    # video mode: per frame the number of its shot (a new one after each hard cut), so that Paste Back's colour
    # match and Smooth Latents stay inside a shot; None: one shot
    segments: list | None = None
    # faces: all: per crop the image (video: frame) it was cut from, and its face number there (photos: its rank
    # by size in its image, 0 = the largest; video: the person's track); None: crop i is face 0 of image i
    sources: list | None = None
    faces: list | None = None
    image_count: int | None = None  # how many photos the crops came from (None: one crop per photo)

    def __len__(self) -> int:
        return len(self.records)

    @property
    def is_video(self) -> bool:
        return self.status is not None

    @property
    def images(self) -> int:
        return len(self.records) if self.image_count is None else self.image_count

    def source(self, crop: int) -> int:
        return crop if self.sources is None else self.sources[crop]

    def face(self, crop: int) -> int:
        return 0 if self.faces is None else self.faces[crop]

    def box(self, crop: int) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1): the pixels of its photo the crop's square covers (clipped to the photo)."""
        rec = self.records[crop]
        h, w = rec.source_size
        x0, y0 = np.floor(rec.quad.min(axis=0)).astype(int)
        x1, y1 = np.ceil(rec.quad.max(axis=0)).astype(int) + 1
        return max(int(x0), 0), max(int(y0), 0), min(int(x1), w), min(int(y1), h)

    def select(self, crops: list) -> "FaceAlignment":
        """The same photos with only the given crops (in that order), e.g. one person to edit on their own."""
        pick = lambda values: None if values is None else [values[k] for k in crops]  # noqa: E731
        return FaceAlignment([self.records[k] for k in crops], pick(self.found), status=pick(self.status),
                             smoothing=self.smoothing, segments=pick(self.segments),
                             sources=[self.source(k) for k in crops], faces=[self.face(k) for k in crops],
                             image_count=self.images)


RETINAFACE = "retinaface: "
DETECTOR_BATCH = 8  # images per RetinaFace forward


def _retinaface_files() -> list[str]:
    """The released RetinaFace files (listed whether present or not, so a workflow that names one always
    validates and a missing file gets TransEdit's message with the download link), then any other
    detection_* / retinaface* file found in models/facedetection."""
    known = list(RETINAFACE_FILES)
    found = [f for f in bridge.list_models("facedetection") if f not in known
             and ("retinaface" in f.lower() or os.path.basename(f).lower().startswith("detection_"))]
    return known + found


def _detector_choices() -> list[str]:
    dats = [f for f in bridge.list_models("face_landmarks") if f.lower().endswith(".dat")]
    return [RETINAFACE + f for f in _retinaface_files()] + [MEDIAPIPE] + [f"dlib: {f}" for f in dats]


_retinaface_cache: dict = {}  # path -> ((mtime, size), ManagedModel): one detector kept between runs


def _retinaface(node: str, name: str):
    path = bridge.model_path("facedetection", name)
    if path is None:
        url = RETINAFACE_FILES.get(name, "https://github.com/xinntao/facexlib/releases/tag/v0.1.0")
        raise NodeInputError(node, "detector", f"'{name}' is not in models/facedetection.",
                             f"download it from {url} into ComfyUI/models/facedetection (face-restore and face-swap "
                             "packs use the same file, so it may already be on your disk elsewhere), or choose "
                             "mediapipe or a dlib predictor.")
    stamp = (os.path.getmtime(path), os.path.getsize(path))
    cached = _retinaface_cache.get(path)
    if cached is None or cached[0] != stamp:
        descriptor = load_model_file(node, "detector", "facedetection", name, load_retinaface)
        _retinaface_cache.clear()
        cached = _retinaface_cache[path] = (stamp, bridge.ManagedModel(descriptor.model))
    return face_landmarks.RetinaFaceLandmarks(cached[1].load())


def _make_detector(node: str, choice: str):
    if choice.startswith(RETINAFACE):
        return _retinaface(node, choice[len(RETINAFACE):])
    if choice == MEDIAPIPE:
        try:
            return face_landmarks.MediaPipeLandmarks(max_num_faces=8)
        except face_landmarks.MissingDependencyError as e:
            raise NodeInputError(node, "detector", f"needs mediapipe, which is not installed ({e}).",
                                 'choose a RetinaFace detector (no extra package), run `pip install '
                                 '"mediapipe==0.10.14"` in ComfyUI\'s Python (Python <= 3.12), or choose a '
                                 "dlib shape_predictor_68_face_landmarks.dat placed in models/face_landmarks.") from None
    if choice.startswith("dlib: "):
        name = choice[len("dlib: "):]
        path = bridge.model_path("face_landmarks", name)
        if path is None:
            raise NodeInputError(node, "detector", f"'{name}' was not found.", "put it in models/face_landmarks.")
        try:
            return face_landmarks.DlibLandmarks(path)
        except face_landmarks.MissingDependencyError as e:
            raise NodeInputError(node, "detector", f"needs dlib, which is not installed ({e}).",
                                 "`pip install dlib`, or choose RetinaFace or mediapipe.") from None
    raise NodeInputError(node, "detector", f"unknown detector {choice!r}.", f"choose one of {_detector_choices()}.")


class TransEditAlignFace:
    DESCRIPTION = ("Finds a face in each photo and crops it the way FFHQ was made (eyes level, fixed eye and "
                   "mouth positions). StyleGAN encoders only work on such crops. Connect TE_ALIGN to Paste Back. "
                   "faces: all crops every face of a group photo (in video: follows every person), for one edit "
                   "on all of them or, through Select Faces, one per face.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "images": ("IMAGE", {"tooltip": "Photos; one face per image is aligned (every face with faces: "
                                            "all)."}),
            "detector": (_detector_choices(), {"tooltip": "RetinaFace (pure PyTorch, GPU or CPU, batched): "
                                                          "detection_Resnet50_Final.pth or detection_mobilenet0.25_"
                                                          "Final.pth from facexlib's release in models/facedetection. "
                                                          "mediapipe needs `pip install \"mediapipe==0.10.14\"` "
                                                          "(Python <= 3.12). dlib needs dlib and "
                                                          "shape_predictor_68_face_landmarks.dat in models/face_landmarks."}),
            "output_size": ("INT", {"default": 1024, "min": 64, "max": 2048, "step": 64,
                                    "tooltip": "Side of the aligned square. Encoders resize to 256 themselves; "
                                               "1024 keeps detail for the before/after and paste-back."}),
            "face_index": ("INT", {"default": 0, "min": 0, "max": 63,
                                   "tooltip": "Which face when there are several: 0 = the largest."}),
            "if_no_face": (list(NO_FACE_CHOICES), {"tooltip": "error: stop and name the image; pass through: leave "
                                                             "that photo (video: frame) untouched in Paste Back; "
                                                             "interpolate (video mode): fill a gap of at most "
                                                             f"{face_video.MAX_INTERPOLATED_GAP} frames inside a shot "
                                                             "from the frames around it and paste it like the others; "
                                                             "longer gaps (an occluder, the person leaving) pass "
                                                             "through with a fade."}),
            "padding": (list(PADDING_CHOICES), {"default": "blur",
                                                 "tooltip": "How to fill where the crop leaves the photo: blur is "
                                                            "FFHQ's reflect-and-blur."}),
        }, "optional": {
            "temporal_mode": (list(TEMPORAL_MODES), {"default": "off",
                                                     "tooltip": "video: the images are one clip's frames in order. "
                                                                "The person picked by face_index in the first frame "
                                                                "is followed from frame to frame, and the crop is "
                                                                "smoothed over time so it does not jitter. Hard "
                                                                "cuts are found and nothing is smoothed across "
                                                                "them. off: each image is aligned on its own."}),
            "smoothing": ("FLOAT", {"default": 3.0, "min": 0.0, "max": 30.0, "step": 0.5,
                                    "tooltip": "Video mode: over how many frames the crop's size and rotation are "
                                               "smoothed at most (Gaussian sigma; its position uses a third of it, "
                                               "as in STIT); narrower where the face moves fast, so it does not "
                                               "lag. 0 follows each frame's detection. Paste Back smooths its "
                                               "colour match over the same span."}),
            "faces": (list(FACES_CHOICES), {"default": "one",
                                            "tooltip": "one: the face face_index picks, one crop per image. all: "
                                                       "every face becomes its own crop, ordered by image, then "
                                                       "largest first (video: by person, then frame; each person "
                                                       "followed as its own track). Paste Back puts them all back; "
                                                       "Select Faces picks some for their own edit."}),
            "max_faces": ("INT", {"default": 8, "min": 1, "max": MAX_FACES,
                                  "tooltip": "faces: all: at most this many faces per image (video: per frame), "
                                             "the largest."}),
            "min_face_size": ("INT", {"default": 0, "min": 0, "max": 4096, "step": 8,
                                      "tooltip": "Faces whose crop square is smaller than this many pixels in the "
                                                 "photo are ignored (e.g. 64 to skip faces in the background). "
                                                 "0: any size."}),
        }}

    RETURN_TYPES = ("IMAGE", "TE_ALIGN", "STRING")
    RETURN_NAMES = ("aligned", "align", "report")
    OUTPUT_TOOLTIPS = ("Aligned face squares [B, S, S, 3]; faces: all: one per face, by image then largest "
                       "first (video: by person, then frame).",
                       "The transform per crop and the image it came from, for Paste Back and Select Faces.",
                       "What happened: faces per photo; in video mode which frames had the face (every face: "
                       "each person's frames), which were interpolated or left untouched.")
    FUNCTION = "align"
    CATEGORY = CATEGORY
    SEARCH_ALIASES = ["face crop", "ffhq align", "face detection", "retinaface", "video face", "face tracking"]

    def align(self, images, detector, output_size, face_index, if_no_face, padding, temporal_mode="off",
              smoothing=3.0, faces="one", max_faces=8, min_face_size=0):
        node = "TransEdit Align Face"
        images = check_images(node, "images", images)
        size = check_int(node, "output_size", output_size, 64, 2048)
        face_index = check_int(node, "face_index", face_index, 0, 63)
        if_no_face = check_choice(node, "if_no_face", if_no_face, NO_FACE_CHOICES)
        padding = check_choice(node, "padding", padding, PADDING_CHOICES)
        temporal_mode = check_choice(node, "temporal_mode", temporal_mode, TEMPORAL_MODES)
        smoothing = check_float(node, "smoothing", smoothing, 0.0, 30.0)
        every_face = check_choice(node, "faces", faces, FACES_CHOICES) == "all"
        max_faces = check_int(node, "max_faces", max_faces, 1, MAX_FACES)
        min_size = check_int(node, "min_face_size", min_face_size, 0, 4096)
        if if_no_face == "interpolate" and temporal_mode != "video":
            raise NodeInputError(node, "if_no_face", "'interpolate' fills a lost frame from the frames around it, "
                                 "which separate photos do not have.",
                                 "set temporal_mode to 'video' for a clip's frames, or if_no_face to 'pass through'.")
        finder = _make_detector(node, detector)
        device = bridge.compute_device()  # the 2x-supersampled warp and the blur padding are the heavy part
        if temporal_mode == "video" or every_face:
            try:
                if temporal_mode != "video":
                    return self._align_every_face(node, images, finder, size, if_no_face, padding, max_faces,
                                                  min_size, device)
                if every_face:
                    return self._align_people(node, images, finder, size, if_no_face, padding, smoothing,
                                              max_faces, min_size, device)
                return self._align_clip(node, images, finder, size, face_index, if_no_face, padding, smoothing,
                                        device, min_size)
            finally:
                close = getattr(finder, "close", None)
                if close is not None:
                    close()
        progress = bridge.Progress(images.shape[0])
        out, records, found = [], [], []
        batch_detect = getattr(finder, "detect_batch", None)
        pending: list = []
        try:
            for i, image in enumerate(images):
                bridge.check_interrupt()
                if batch_detect is not None:  # one forward per DETECTOR_BATCH images
                    if not pending:
                        pending = list(batch_detect(images[i:i + DETECTOR_BATCH]))
                    faces = pending.pop(0)
                else:
                    faces = finder.detect_landmarks(image)
                faces = big_enough(faces, min_size)
                if len(faces) > face_index:
                    aligned, recs = face_align.align_faces(image[None], [faces], output_size=size,
                                                           face_index=face_index, padding=padding, device=device)
                    aligned, record = aligned[0], recs[0]
                    found.append(True)
                elif if_no_face == "error":
                    what = "no face" if not faces else f"only {len(faces)} face(s), face_index is {face_index}"
                    raise NodeInputError(node, "images", f"image {i} of the batch: {what} found.",
                                         "use a photo with a clearly visible face, lower face_index, or set "
                                         "if_no_face to 'pass through'.")
                else:
                    h, w = image.shape[:2]
                    aligned, record = face_align.align_to_quad(image, face_align.centre_quad(h, w), size,
                                                               padding=padding, device=device)
                    found.append(False)
                    bridge.log.warning("%s: no face in image %d; passing its centre square through", node, i)
                out.append(aligned)
                records.append(record)
                progress.update(1, preview=comfy_image_to_pil(aligned))
        finally:
            close = getattr(finder, "close", None)
            if close is not None:
                close()
        aligned = torch.stack(out).to(bridge.intermediate_device())
        missing = [i for i, ok in enumerate(found) if not ok]
        report = f"{len(found)} photos aligned separately; face found in {len(found) - len(missing)}"
        if missing:
            report += f"\nno face (passed through): {face_video.frame_ranges(missing)}"
        return (aligned, FaceAlignment(records, found), report)

    @staticmethod
    def _detect_all(node, images, finder, progress, device, min_size: int = 0, signatures: bool = True,
                    ordered: bool = False):
        """Every image's faces (landmarks only, largest first, none under min_size) and, for a clip, the frames'
        colour signatures (the cuts)."""
        count = images.shape[0]
        batch_detect = getattr(finder, "detect_batch", None)
        step = DETECTOR_BATCH if batch_detect is not None else 1

        def detect(start: int, stop: int) -> tuple[list, torch.Tensor | None]:
            found = (batch_detect(images[start:stop]) if batch_detect is not None
                     else [finder.detect_landmarks(image) for image in images[start:stop]])
            found = [big_enough(faces, min_size, ordered) for faces in found]
            marks = face_video.frame_signatures(images[start:stop].to(device)) if signatures else None
            progress.update(stop - start)
            return found, marks

        chunks = run_in_chunks(node, count, step, detect, what="detecting faces in one frame",
                               advice="use a smaller detector (mobilenet0.25) or free GPU memory.")
        frames = [faces for found, _ in chunks for faces in found]
        change = face_video.frame_change(torch.cat([marks for _, marks in chunks])) if signatures else None
        return frames, change

    @staticmethod
    def _align_every_face(node, images, finder, size, if_no_face, padding, max_faces, min_size, device):
        """faces: all on separate photos: each image's faces, largest first (at most max_faces), one crop each;
        an image without a face gives one pass-through crop (or the error)."""
        count = images.shape[0]
        progress = bridge.Progress(2 * count)
        frames, _ = TransEditAlignFace._detect_all(node, images, finder, progress, device, min_size,
                                                   signatures=False, ordered=True)
        out, records, found, sources, numbers = [], [], [], [], []
        for i, (image, faces) in enumerate(zip(images, frames)):
            bridge.check_interrupt()
            faces = faces[:max_faces]
            if not faces:
                if if_no_face == "error":
                    raise NodeInputError(node, "images", f"image {i} of the batch: no face found"
                                         + (f" of at least {min_size} px" if min_size else "") + ".",
                                         "use photos with clearly visible faces, lower min_face_size, or set "
                                         "if_no_face to 'pass through'.")
                h, w = image.shape[:2]
                aligned, record = face_align.align_to_quad(image, face_align.centre_quad(h, w), size,
                                                           padding=padding, device=device)
                out.append(aligned)
                records.append(record)
                found.append(False)
                sources.append(i)
                numbers.append(0)
                bridge.log.warning("%s: no face in image %d; passing its centre square through", node, i)
            else:
                for k, face in enumerate(faces):
                    aligned, record = face_align.align_to_quad(image, face_align.ffhq_quad(face)[0], size,
                                                               padding=padding, device=device, face_index=k,
                                                               landmarks=face)
                    out.append(aligned)
                    records.append(record)
                found.extend([True] * len(faces))
                sources.extend([i] * len(faces))
                numbers.extend(range(len(faces)))
            progress.update(1, preview=comfy_image_to_pil(out[-1]))
        aligned = torch.stack(out).to(bridge.intermediate_device())
        per_image = [sum(1 for s, ok in zip(sources, found) if s == i and ok) for i in range(count)]
        report = (f"{count} photos, every face: {sum(per_image)} faces aligned (ordered by photo, then largest "
                  f"first; at most {max_faces} per photo" + (f", none under {min_size} px" if min_size else "")
                  + ")\nfaces per photo: " + ", ".join(map(str, per_image)))
        missing = [i for i, k in enumerate(per_image) if k == 0]
        if missing:
            report += f"\nno face (passed through): {face_video.frame_ranges(missing)}"
        return (aligned, FaceAlignment(records, found, sources=sources, faces=numbers, image_count=count), report)

    @staticmethod
    def _align_people(node, images, finder, size, if_no_face, padding, smoothing, max_faces, min_size, device):
        """faces: all in video mode: every person as their own track; crops ordered by person, then frame (each
        person a clip of its own for Smooth Latents), each track's crops smoothed inside its shots."""
        count = images.shape[0]
        progress = bridge.Progress(2 * count)
        frames, change = TransEditAlignFace._detect_all(node, images, finder, progress, device, min_size)
        people = face_people.align_people(frames, max_people=max_faces, min_size=min_size, smoothing=smoothing,
                                          interpolate_lost=if_no_face == "interpolate", change=change)
        faceless = [t for t, faces in enumerate(frames) if not faces]
        if if_no_face == "error" and faceless:
            raise NodeInputError(node, "images", f"no face in frames {face_video.frame_ranges(faceless)} (of "
                                 f"{count}).", "set if_no_face to 'interpolate' or 'pass through' (frames without "
                                 "anyone are left untouched), or lower min_face_size.")
        crops = [(track, t) for track in people.tracks for t in track.span]
        if not crops:  # nobody anywhere: one pass-through crop per frame, as in 'one' mode
            h, w = images.shape[1:3]
            out, records = zip(*(face_align.align_to_quad(images[t], face_align.centre_quad(h, w), size,
                                                          padding=padding, device=device) for t in range(count)))
            alignment = FaceAlignment(list(records), [False] * count, status=[face_video.LOST] * count,
                                      smoothing=smoothing, segments=[int(s) for s in people.segments],
                                      sources=list(range(count)), faces=[0] * count, image_count=count)
            return (torch.stack(out).to(bridge.intermediate_device()), alignment, people.summary())
        out, records, status, segments = [], [], [], []
        shots = {}  # (person, shot) -> a segment number of its own, so nothing is smoothed from one to the other
        progress = bridge.Progress(len(crops))
        for k, (track, t) in enumerate(crops):
            bridge.check_interrupt()
            aligned, record = face_align.align_to_quad(images[t], track.clip.quads[t], size, padding=padding,
                                                       device=device, face_index=track.number,
                                                       landmarks=track.clip.landmarks[t])
            out.append(aligned.to(bridge.intermediate_device()))
            records.append(record)
            status.append(track.clip.status[t])
            segments.append(shots.setdefault((track.number, int(people.segments[t])), len(shots)))
            progress.update(1, preview=comfy_image_to_pil(aligned) if k % 8 == 0 else None)
        alignment = FaceAlignment(records, [s != face_video.LOST for s in status], status=status,
                                  smoothing=smoothing, segments=segments, sources=[t for _, t in crops],
                                  faces=[track.number for track, _ in crops], image_count=count)
        return (torch.stack(out), alignment, people.summary())

    @staticmethod
    def _align_clip(node, images, finder, size, face_index, if_no_face, padding, smoothing, device, min_size=0):
        """Video mode: every frame's faces first (landmarks only, so a long clip costs little), then the person's
        track and the smoothed crops, then one warp per frame."""
        count = images.shape[0]
        progress = bridge.Progress(2 * count)
        frames, change = TransEditAlignFace._detect_all(node, images, finder, progress, device, min_size)
        clip = face_video.align_clip(frames, face_index=face_index, smoothing=smoothing,
                                     interpolate_lost=if_no_face == "interpolate", change=change)
        lost = [t for t, s in enumerate(clip.status) if s != face_video.FOUND]
        if if_no_face == "error" and lost:
            what = ("no frame has the face" if clip.start < 0 else
                    f"the person is missing in frames {face_video.frame_ranges(lost)} (of {count})")
            raise NodeInputError(node, "images", f"{what}.",
                                 "set if_no_face to 'interpolate' (fill those frames from their neighbours) or "
                                 "'pass through' (leave them untouched), or lower face_index.")
        h, w = images.shape[1:3]
        out, records = [], []
        for t in range(count):
            bridge.check_interrupt()
            quad = clip.quads[t] if np.isfinite(clip.quads[t]).all() else face_align.centre_quad(h, w)  # faceless shot
            aligned, record = face_align.align_to_quad(images[t], quad, size, padding=padding, device=device,
                                                       face_index=face_index, landmarks=clip.landmarks[t])
            out.append(aligned.to(bridge.intermediate_device()))
            records.append(record)
            progress.update(1, preview=comfy_image_to_pil(aligned) if t % 8 == 0 else None)
        if lost:
            bridge.log.warning("%s: %s", node, clip.summary().replace("\n", "; "))
        found = [s != face_video.LOST for s in clip.status]
        alignment = FaceAlignment(records, found, status=list(clip.status), smoothing=smoothing,
                                  segments=[int(s) for s in clip.segments])
        return (torch.stack(out), alignment, clip.summary())


class TransEditPasteBack:
    DESCRIPTION = ("Puts edited aligned faces back into the original photos with a feathered, colour-matched "
                   "blend; the MASK output is the pasted region (e.g. for a diffusion inpaint pass). With Align "
                   "Face's faces: all, every face goes back into its own photo in one pass; where faces overlap "
                   "the smaller is pasted first, so the larger (closer) face ends on top.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "original": ("IMAGE", {"tooltip": "The photos that went into Align Face."}),
            "edited": ("IMAGE", {"tooltip": "Edited aligned faces (any square size), one per aligned face (one "
                                            "per photo unless Align Face aligned every face)."}),
            "align": ("TE_ALIGN", {"tooltip": "From Align Face, for the same photos."}),
            "mask_shape": (list(MASK_SHAPES), {"default": "ellipse",
                                               "tooltip": "Shape of the blended region in the aligned square."}),
            "feather": ("FLOAT", {"default": 0.04, "min": 0.0, "max": 0.5, "step": 0.01,
                                  "tooltip": "Softness of the mask edge, as a fraction of the face square."}),
            "color_match": (list(COLOR_MATCH), {"default": "lab",
                                                "tooltip": "Match the edited face's colour statistics to the "
                                                           "photo inside the mask (lab is perceptual)."}),
        }, "optional": {
            "color_smoothing": ("FLOAT", {"default": -1.0, "min": -1.0, "max": 30.0, "step": 0.5,
                                          "tooltip": "Over how many frames the colour match is smoothed (Gaussian "
                                                     "sigma), so a clip's face does not flicker. -1 follows Align "
                                                     "Face: its smoothing in video mode, per image otherwise. 0: "
                                                     "per image."}),
            "mask": ("MASK", {"tooltip": "Paste with this region instead of mask_shape: a MASK in aligned-crop "
                                         "space, the edited faces' size, one per face or one for all (e.g. "
                                         "Stitching Tune's mask, STIT's paste). feather then shrinks and blurs it "
                                         "by that share of the side (STIT's feathered paste; 0: as is)."}),
        }}

    RETURN_TYPES = ("IMAGE", "MASK")
    RETURN_NAMES = ("images", "mask")
    OUTPUT_TOOLTIPS = ("Photos with the edited faces pasted in.", "Where the faces were pasted (0..1; "
                                                                     "overlapping faces: the larger value).")
    FUNCTION = "paste"
    CATEGORY = CATEGORY
    SEARCH_ALIASES = ["face paste", "uncrop", "face composite", "blend face back"]
    HAS_INTERMEDIATE_OUTPUT = True  # 0.33: a cached run still shows its before/after pictures

    chunk_size = None  # frames per chunk (None: 8 on a CPU, 16 on a GPU); tests set it

    def paste(self, original, edited, align, mask_shape, feather, color_match, color_smoothing=-1.0, mask=None):
        node = "TransEdit Paste Back"
        original = check_images(node, "original", original)
        edited = check_images(node, "edited", edited)
        if not isinstance(align, FaceAlignment):
            raise NodeInputError(node, "align", f"must be a TE_ALIGN, got {type(align).__name__}.",
                                 "connect the 'align' output of TransEdit Align Face.")
        mask_shape = check_choice(node, "mask_shape", mask_shape, MASK_SHAPES)
        feather = check_float(node, "feather", feather, 0.0, 0.5)
        color_match = check_choice(node, "color_match", color_match, COLOR_MATCH)
        color_smoothing = check_float(node, "color_smoothing", color_smoothing, -1.0, 30.0)
        n, photos = len(align), align.images
        if original.shape[0] != photos:
            raise NodeInputError(node, "original", f"has {original.shape[0]} images but 'align' describes {photos}.",
                                 "connect the same photos that went into Align Face.")
        if edited.shape[0] != n:
            what = "aligned photo" if align.sources is None else "aligned face"
            raise NodeInputError(node, "edited", f"has {edited.shape[0]} images but 'align' describes {n}.",
                                 f"generate one edited face per {what}.")
        if edited.shape[1] != edited.shape[2]:
            raise NodeInputError(node, "edited", f"is {edited.shape[2]}x{edited.shape[1]}; aligned faces are square.")
        for k, rec in enumerate(align.records):
            if tuple(rec.source_size) != tuple(original.shape[1:3]):
                raise NodeInputError(node, "original", f"image {align.source(k)} is {original.shape[2]}x"
                                     f"{original.shape[1]} but was {rec.source_size[1]}x{rec.source_size[0]} when "
                                     "aligned.", "connect the same photos that went into Align Face.")
        crop_mask = _check_crop_mask(node, mask, n, edited.shape[1])
        sigma = (align.smoothing if align.is_video else 0.0) if color_smoothing < 0 else color_smoothing
        space = False if color_match == "off" else color_match
        device = bridge.compute_device()
        todo = [k for k, ok in enumerate(align.found) if ok]
        source = [align.source(k) for k in range(n)]
        # a clip's face fades out and back in around frames where it was lost, instead of popping
        strength = (face_video.paste_strength(align.status, align.smoothing, align.segments) if align.is_video
                    else None)
        chunk = self.chunk_size or (8 if device.type == "cpu" else 16)
        advice = "lower the resolution of the photos or free GPU memory."
        stats = None
        if todo and space and sigma > 0:  # a clip: one colour match that drifts slowly, not one per frame
            progress = bridge.Progress(len(todo))

            def measure(start: int, stop: int):
                found = [face_paste.paste_color_stats(original[source[k]:source[k] + 1], edited[k:k + 1],
                                                      [align.records[k]], feather=feather, mask_shape=mask_shape,
                                                      color_match=space, crop_mask=crop_mask(k), device=device)
                         for k in todo[start:stop]]
                progress.update(stop - start)
                return torch.cat([m for m, _ in found]), torch.cat([v for _, v in found])

            measured = run_in_chunks(node, len(todo), chunk, measure, what="measuring the colours of one frame",
                                     advice=advice)
            # smoothed along the clip's own frame numbers, so a stretch of lost frames counts as time passing
            per_frame, present = torch.zeros(n, 4, 3), np.zeros(n, dtype=bool)
            per_frame[todo] = torch.cat([m for m, _ in measured])
            present[todo] = torch.cat([v for _, v in measured]).numpy()
            if present.any():
                stats = torch.zeros(n, 4, 3)
                stats[todo] = smooth_series(per_frame, sigma, present, align.segments)[todo]
        # each face is blended straight into the output over its box: a long clip of full-size frames is copied
        # once (the output itself), and only a face's neighbourhood is ever converted, warped or colour-matched.
        # A chunk that runs out of memory is redone from the photos, which these writes never touch: a photo
        # with several faces starts again from itself and pastes them smallest first (the closest face on top).
        order = face_paste.paste_order([align.records[k] for k in todo], [source[k] for k in todo])
        photo_list = sorted(order)
        out, masks = original.clone(), torch.zeros(original.shape[:3], dtype=original.dtype, device=original.device)
        progress = bridge.Progress(max(len(photo_list), 1))

        def paste(start: int, stop: int) -> None:
            for i in photo_list[start:stop]:
                crops = [todo[j] for j in order[i]]
                several = len(crops) > 1
                if several:
                    out[i].copy_(original[i])
                    masks[i].zero_()
                for k in crops:
                    face_paste.paste_back(original[i:i + 1], edited[k:k + 1], [align.records[k]], feather=feather,
                                          mask_shape=mask_shape, color_match=space,
                                          color_stats=None if stats is None else stats[k:k + 1],
                                          strength=None if strength is None else strength[k:k + 1],
                                          into=(out[i:i + 1], masks[i:i + 1]), over=several,
                                          crop_mask=crop_mask(k), device=device)
            progress.update(stop - start, preview=comfy_image_to_pil(out[photo_list[start]]))

        run_in_chunks(node, len(photo_list), chunk, paste, what="pasting one face back", advice=advice)
        device = bridge.intermediate_device()
        return bridge.with_ui((out.to(device), masks.to(device)), compare_ui(original, out, "photo", "pasted back"))


def _check_crop_mask(node: str, mask, crops: int, side: int):
    """Paste Back's optional region mask -> crop number -> its [1, S, S] mask (None without a mask)."""
    if mask is None:
        return lambda k: None
    if not isinstance(mask, torch.Tensor) or mask.dim() not in (2, 3):
        got = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise NodeInputError(node, "mask", f"must be a MASK [N, H, W], got {got}.",
                             "connect a MASK, e.g. Stitching Tune's mask output.")
    mask = mask[None] if mask.dim() == 2 else mask
    if tuple(mask.shape[1:]) != (side, side):
        raise NodeInputError(node, "mask", f"is {mask.shape[2]}x{mask.shape[1]} but the edited faces are "
                             f"{side}x{side}; the mask must be in the same aligned-crop space.",
                             "use the mask made for these crops (Stitching Tune's), or resize it to the edited "
                             "faces' size.")
    if mask.shape[0] not in (1, crops):
        raise NodeInputError(node, "mask", f"has {mask.shape[0]} masks but 'align' describes {crops} faces.",
                             f"give one mask per aligned face ({crops}), or a single mask for all.")
    if not torch.isfinite(mask).all():
        raise NodeInputError(node, "mask", "holds NaN or infinite values.", "check the node that made the mask.")
    return lambda k: mask[k if mask.shape[0] > 1 else 0][None]


_FACE_LIST = re.compile(r"^\s*\d+\s*(-\s*\d*\s*)?(,\s*\d+\s*(-\s*\d*\s*)?)*$")


def parse_face_list(node: str, name: str, text) -> list[tuple[int, int]]:
    """'0', '0, 2', '1-3', '2-' (2 and up) -> inclusive (first, last) ranges (last may be a large number)."""
    if not isinstance(text, str) or not _FACE_LIST.match(text):
        raise NodeInputError(node, name, f"must list face numbers like '0', '0, 2', '1-3' or '1-' (1 and up), "
                             f"got {str(text)[:40]!r}.", "write face numbers as Align Face's report counts them "
                             "(0 = the largest face in each photo; in video, person 0 is the first one seen).")
    ranges = []
    for part in text.split(","):
        lo, dash, hi = part.partition("-")
        first = int(lo)
        last = (int(hi) if hi.strip() else 1 << 30) if dash else first
        if last < first:
            raise NodeInputError(node, name, f"range '{part.strip()}' runs backwards.", f"write it as '{last}-{first}'.")
        ranges.append((first, last))
    return ranges


class TransEditSelectFaces:
    DESCRIPTION = ("Picks some of the faces Align Face found (faces: all), so they get an edit of their own: "
                   "edit the selection, Paste Back with the selected align, then paste another selection's edit "
                   "into that result. Face numbers as in Align Face's report: 0 = the largest face of each photo; "
                   "in video mode the person's number.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "aligned": ("IMAGE", {"tooltip": "Align Face's aligned faces."}),
            "align": ("TE_ALIGN", {"tooltip": "Align Face's align output for the same faces."}),
            "faces": ("STRING", {"default": "0", "tooltip": "Which faces: '0', '0, 2', '1-3' or '1-' (1 and up). "
                                                            "0 is the largest face of each photo; in video, "
                                                            "person 0 is the first one seen."}),
        }}

    RETURN_TYPES = ("IMAGE", "TE_ALIGN")
    RETURN_NAMES = ("aligned", "align")
    OUTPUT_TOOLTIPS = ("The selected aligned faces, in Align Face's order.",
                       "Their transform, for Paste Back into the same photos (the others stay as they are).")
    FUNCTION = "select"
    CATEGORY = CATEGORY
    SEARCH_ALIASES = ["face index", "choose face", "pick face", "per face edit", "split faces"]

    def select(self, aligned, align, faces):
        node = "TransEdit Select Faces"
        aligned = check_images(node, "aligned", aligned)
        if not isinstance(align, FaceAlignment):
            raise NodeInputError(node, "align", f"must be a TE_ALIGN, got {type(align).__name__}.",
                                 "connect the 'align' output of TransEdit Align Face.")
        if aligned.shape[0] != len(align):
            raise NodeInputError(node, "aligned", f"has {aligned.shape[0]} images but 'align' describes "
                                 f"{len(align)}.", "connect the aligned faces and the align of the same Align Face.")
        ranges = parse_face_list(node, "faces", faces)
        crops = [k for k in range(len(align)) if any(lo <= align.face(k) <= hi for lo, hi in ranges)]
        if not crops:
            present = sorted({align.face(k) for k in range(len(align))})
            raise NodeInputError(node, "faces", f"selects none of the faces there are ({', '.join(map(str, present))}).",
                                 "choose among those numbers (set Align Face's faces to 'all' to get more than "
                                 "one face per photo).")
        index = torch.tensor(crops, dtype=torch.long)
        return (aligned.index_select(0, index), align.select(crops))


NODE_CLASS_MAPPINGS = {
    "TransEditAlignFace": TransEditAlignFace,
    "TransEditPasteBack": TransEditPasteBack,
    "TransEditSelectFaces": TransEditSelectFaces,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "TransEditAlignFace": "TransEdit Align Face",
    "TransEditPasteBack": "TransEdit Paste Back",
    "TransEditSelectFaces": "TransEdit Select Faces",
}
