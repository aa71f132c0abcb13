"""Face stage: FFHQ alignment before inversion, paste-back into the photo afterwards."""
from __future__ import annotations

from dataclasses import dataclass

import os

import numpy as np
import torch

from ..models.face import align as face_align
from ..models.face import landmarks as face_landmarks
from ..models.face import paste as face_paste
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

    def __len__(self) -> int:
        return len(self.records)

    @property
    def is_video(self) -> bool:
        return self.status is not None


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
                   "mouth positions). StyleGAN encoders only work on such crops. Connect TE_ALIGN to Paste Back.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "images": ("IMAGE", {"tooltip": "Photos; one face per image is aligned."}),
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
        }}

    RETURN_TYPES = ("IMAGE", "TE_ALIGN", "STRING")
    RETURN_NAMES = ("aligned", "align", "report")
    OUTPUT_TOOLTIPS = ("Aligned face squares [B, S, S, 3].", "The transform per image, for Paste Back.",
                       "What happened: in video mode which frames had the face, which were interpolated or left "
                       "untouched.")
    FUNCTION = "align"
    CATEGORY = CATEGORY
    SEARCH_ALIASES = ["face crop", "ffhq align", "face detection", "retinaface", "video face", "face tracking"]

    def align(self, images, detector, output_size, face_index, if_no_face, padding, temporal_mode="off",
              smoothing=3.0):
        node = "TransEdit Align Face"
        images = check_images(node, "images", images)
        size = check_int(node, "output_size", output_size, 64, 2048)
        face_index = check_int(node, "face_index", face_index, 0, 63)
        if_no_face = check_choice(node, "if_no_face", if_no_face, NO_FACE_CHOICES)
        padding = check_choice(node, "padding", padding, PADDING_CHOICES)
        temporal_mode = check_choice(node, "temporal_mode", temporal_mode, TEMPORAL_MODES)
        smoothing = check_float(node, "smoothing", smoothing, 0.0, 30.0)
        if if_no_face == "interpolate" and temporal_mode != "video":
            raise NodeInputError(node, "if_no_face", "'interpolate' fills a lost frame from the frames around it, "
                                 "which separate photos do not have.",
                                 "set temporal_mode to 'video' for a clip's frames, or if_no_face to 'pass through'.")
        finder = _make_detector(node, detector)
        device = bridge.compute_device()  # the 2x-supersampled warp and the blur padding are the heavy part
        if temporal_mode == "video":
            try:
                return self._align_clip(node, images, finder, size, face_index, if_no_face, padding, smoothing,
                                        device)
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
    def _align_clip(node, images, finder, size, face_index, if_no_face, padding, smoothing, device):
        """Video mode: every frame's faces first (landmarks only, so a long clip costs little), then the person's
        track and the smoothed crops, then one warp per frame."""
        count = images.shape[0]
        progress = bridge.Progress(2 * count)
        batch_detect = getattr(finder, "detect_batch", None)
        step = DETECTOR_BATCH if batch_detect is not None else 1

        def detect(start: int, stop: int) -> tuple[list, torch.Tensor]:
            found = (batch_detect(images[start:stop]) if batch_detect is not None
                     else [finder.detect_landmarks(image) for image in images[start:stop]])
            signatures = face_video.frame_signatures(images[start:stop].to(device))  # colour histograms: the cuts
            progress.update(stop - start)
            return found, signatures

        chunks = run_in_chunks(node, count, step, detect, what="detecting faces in one frame",
                               advice="use a smaller detector (mobilenet0.25) or free GPU memory.")
        frames = [faces for found, _ in chunks for faces in found]
        change = face_video.frame_change(torch.cat([signatures for _, signatures in chunks]))
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
                   "blend; the MASK output is the pasted region (e.g. for a diffusion inpaint pass).")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "original": ("IMAGE", {"tooltip": "The photos that went into Align Face."}),
            "edited": ("IMAGE", {"tooltip": "Edited aligned faces (any square size), one per photo."}),
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
        }}

    RETURN_TYPES = ("IMAGE", "MASK")
    RETURN_NAMES = ("images", "mask")
    OUTPUT_TOOLTIPS = ("Photos with the edited faces pasted in.", "Where the face was pasted (0..1).")
    FUNCTION = "paste"
    CATEGORY = CATEGORY
    SEARCH_ALIASES = ["face paste", "uncrop", "face composite", "blend face back"]
    HAS_INTERMEDIATE_OUTPUT = True  # 0.33: a cached run still shows its before/after pictures

    chunk_size = None  # frames per chunk (None: 8 on a CPU, 16 on a GPU); tests set it

    def paste(self, original, edited, align, mask_shape, feather, color_match, color_smoothing=-1.0):
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
        n = len(align)
        if original.shape[0] != n:
            raise NodeInputError(node, "original", f"has {original.shape[0]} images but 'align' describes {n}.",
                                 "connect the same photos that went into Align Face.")
        if edited.shape[0] != n:
            raise NodeInputError(node, "edited", f"has {edited.shape[0]} images but 'align' describes {n}.",
                                 "generate one edited face per aligned photo.")
        if edited.shape[1] != edited.shape[2]:
            raise NodeInputError(node, "edited", f"is {edited.shape[2]}x{edited.shape[1]}; aligned faces are square.")
        for i, rec in enumerate(align.records):
            if tuple(rec.source_size) != tuple(original.shape[1:3]):
                raise NodeInputError(node, "original", f"image {i} is {original.shape[2]}x{original.shape[1]} but was "
                                     f"{rec.source_size[1]}x{rec.source_size[0]} when aligned.",
                                     "connect the same photos that went into Align Face.")
        sigma = (align.smoothing if align.is_video else 0.0) if color_smoothing < 0 else color_smoothing
        space = False if color_match == "off" else color_match
        device = bridge.compute_device()
        todo = [i for i, ok in enumerate(align.found) if ok]
        # a clip's face fades out and back in around frames where it was lost, instead of popping
        strength = (face_video.paste_strength(align.status, align.smoothing, align.segments) if align.is_video
                    else None)
        chunk = self.chunk_size or (8 if device.type == "cpu" else 16)
        advice = "lower the resolution of the photos or free GPU memory."
        stats = None
        if todo and space and sigma > 0:  # a clip: one colour match that drifts slowly, not one per frame
            progress = bridge.Progress(len(todo))

            def measure(start: int, stop: int):
                found = [face_paste.paste_color_stats(original[i:i + 1], edited[i:i + 1], [align.records[i]],
                                                      feather=feather, mask_shape=mask_shape, color_match=space,
                                                      device=device) for i in todo[start:stop]]
                progress.update(stop - start)
                return torch.cat([m for m, _ in found]), torch.cat([v for _, v in found])

            measured = run_in_chunks(node, len(todo), chunk, measure, what="measuring the colours of one frame",
                                     advice=advice)
            # smoothed along the clip's own frame numbers, so a stretch of lost frames counts as time passing
            per_frame, present = torch.zeros(n, 4, 3), np.zeros(n, dtype=bool)
            per_frame[todo] = torch.cat([m for m, _ in measured])
            present[todo] = torch.cat([v for _, v in measured]).numpy()
            stats = smooth_series(per_frame, sigma, present, align.segments)[todo] if present.any() else None
        # each face is blended straight into the output over its box: a long clip of full-size frames is copied
        # once (the output itself), and only a face's neighbourhood is ever converted, warped or colour-matched.
        # A chunk that runs out of memory is redone from the photos, which these writes never touch.
        out, masks = original.clone(), torch.zeros(original.shape[:3], dtype=original.dtype, device=original.device)
        progress = bridge.Progress(max(len(todo), 1))

        def paste(start: int, stop: int) -> None:
            for k, i in enumerate(todo[start:stop], start):
                face_paste.paste_back(original[i:i + 1], edited[i:i + 1], [align.records[i]], feather=feather,
                                      mask_shape=mask_shape, color_match=space,
                                      color_stats=None if stats is None else stats[k:k + 1],
                                      strength=None if strength is None else strength[i:i + 1],
                                      into=(out[i:i + 1], masks[i:i + 1]), device=device)
            progress.update(stop - start, preview=comfy_image_to_pil(out[todo[start]]))

        run_in_chunks(node, len(todo), chunk, paste, what="pasting one face back", advice=advice)
        device = bridge.intermediate_device()
        return bridge.with_ui((out.to(device), masks.to(device)), compare_ui(original, out, "photo", "pasted back"))


NODE_CLASS_MAPPINGS = {
    "TransEditAlignFace": TransEditAlignFace,
    "TransEditPasteBack": TransEditPasteBack,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "TransEditAlignFace": "TransEdit Align Face",
    "TransEditPasteBack": "TransEdit Paste Back",
}
