"""Pivotal tuning stage (issue 34): PTI / STIT tuning of a generator around pivot latents, the tuned generator's
delta file (saved here, loaded back by Load StyleGAN), the LPIPS and BiSeNet face-parsing loaders, STIT's face-region
mask and its stitching tuning.

A tuned generator flows on the TE_STYLEGAN wire like any other: a StyleGANHandle (so Generate, Edit Studio, SeFa,
SMART and the face-video path take it) whose module is a tuned copy under ComfyUI's memory management, while the
base file's handle is left as it was.

Over 600 lines because the stage's six nodes share its handles, input checks and the delta file's save/load path.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, replace
from typing import Optional

import torch
import torch.nn.functional as F

from ..models.core.descriptor import ModelDescriptor
from ..models.core.errors import CheckpointError
from ..models.core.latent import StyleLatent
from ..models.stylegan.generator import PRECISION_BY_FILE
from ..models.face.parsing import FACE_PARSING_FILE, FACE_PARSING_URL, PARSING_SIZE, face_region_mask
from ..models.perceptual.lpips import LPIPS_DOWNLOADS
from ..models.registry import load_face_parser, load_lpips, load_stylegan2
from ..models.stylegan.tuning import (PTI_PRESET, STIT_PRESET, apply_tuning_delta, file_sha256 as hash_file,
                                      is_tuning_delta_file,
                                      pivotal_tune, read_tuning_delta, save_tuning_delta, stitch_tune,
                                      stitching_masks)
from . import comfy_bridge as bridge
from .chunks import run_in_chunks
from .compare import compare_ui
from .handles import ModelHandle, load_handle
from .images import comfy_image_to_pil, gan_to_comfy_image
from .inputs import MAX_SEED, NodeInputError, check_choice, check_float, check_images, check_int
from .latents import check_latent
from .precision import PRECISIONS, auto_tooltip_by_file
from .rendering import StyleGANHandle, check_generator, render_latents

CATEGORY = "TransEdit/Tuning"
PRESETS = {"PTI": PTI_PRESET, "STIT": STIT_PRESET}
LOCALITY = ("preset", "on", "off")
LPIPS_NETS = ("alex", "vgg")
STITCH_LOSSES = ("l2", "l1")
MAX_STEPS = 100_000
# where a tuned generator's base file may live (what Load StyleGAN and Load Encoder read), in search order
BASE_FOLDERS = ("stylegan", "gan_encoders")
DEFAULT_PREFIX = "tuned/pti"
STIT_CROP = 1024  # STIT's pixel settings (dilations, border) are in pixels of its 1024 px crops
LPIPS_SOURCES = tuple((f"{net} {kind} {name}", url) for net, files in LPIPS_DOWNLOADS.items()
                      for kind, (name, url) in files.items())
PARSER_SOURCES = ((f"face-parsing.PyTorch {FACE_PARSING_FILE}", FACE_PARSING_URL),)


# ------------------------------------------------------------------------------------------ handles
class LPIPSHandle(ModelHandle):
    """What flows on a TE_LPIPS wire: a frozen LPIPS (backbone + linear heads)."""

    def load(self):
        model = super().load()
        model.eval().requires_grad_(False)  # a loss: gradients flow through it, never into it
        return model


class FaceParserHandle(ModelHandle):
    """What flows on a TE_FACE_PARSER wire: BiSeNet face parsing (19 classes)."""


@dataclass(frozen=True)
class TuningInfo:
    """Where a tuned generator came from: the base file (what a delta is written against) and the tuning."""

    base_source: str  # the base generator's file (a generator file, or an encoder file with its decoder)
    base_fingerprint: str
    mode: str  # "PTI", "STIT", or "delta" (read back from a file)
    steps_run: int = 0
    frames: int = 0
    stopped_early: bool = False


class TunedStyleGANHandle(StyleGANHandle):
    """A TE_STYLEGAN whose weights were tuned from a base file: everything a StyleGANHandle is, plus its origin."""

    def __init__(self, descriptor, tuning: TuningInfo, label: str):
        super().__init__(descriptor)
        self.tuning = tuning
        self.label = label

    @property
    def name(self) -> str:
        return self.label


def _check_lpips(node: str, lpips) -> LPIPSHandle:
    if not isinstance(lpips, LPIPSHandle):
        raise NodeInputError(node, "lpips", f"must be a TE_LPIPS, got {type(lpips).__name__}.",
                             "connect the output of 'TransEdit Load LPIPS'.")
    return lpips


def _check_parser(node: str, parser) -> FaceParserHandle:
    if not isinstance(parser, FaceParserHandle):
        raise NodeInputError(node, "parser", f"must be a TE_FACE_PARSER, got {type(parser).__name__}.",
                             "connect the output of 'TransEdit Load Face Parser'.")
    return parser


def _links(sources) -> str:
    return "; ".join(f"{title}: {url}" for title, url in sources)


def _model_file(node: str, input_name: str, folder: str, filename: str, sources) -> str:
    """The chosen file's path, or an error that says where it goes and where the official file is."""
    path = bridge.model_path(folder, filename) if isinstance(filename, str) and filename else None
    if path is None:
        raise NodeInputError(node, input_name, f"'{filename}' was not found in {bridge.folder_paths_for(folder)}.",
                             f"put the file in ComfyUI/models/{folder} and press Refresh (R). Official files: "
                             f"{_links(sources)}")
    return path


def _as_targets(node: str, images: torch.Tensor, size: int) -> torch.Tensor:
    """IMAGE [N,H,W,3] square crops -> [N,3,size,size] in [-1,1] on the CPU (the tuning streams them to the device)."""
    h, w = images.shape[1:3]
    if h != w:
        raise NodeInputError(node, "images", f"are {w}x{h}: the tuning compares them with the generator's square "
                             "output.", "connect the aligned square crops of 'TransEdit Align Face'.")
    x = images.permute(0, 3, 1, 2)
    if h != size:  # aligned crops of any size: the generator's resolution is what the losses see
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return (x * 2.0 - 1.0).clamp(-1.0, 1.0).contiguous()


class _StepProgress:
    """The engine's on_step(step, total, preview_or_None) as ComfyUI's progress bar with a preview picture."""

    def __init__(self, total: int, offset: int = 0, grand_total: Optional[int] = None):
        self.bar = bridge.Progress(grand_total or total)
        self.offset = offset

    def __call__(self, step: int, total: int, preview=None) -> None:
        picture = None
        if preview is not None:
            picture = comfy_image_to_pil(gan_to_comfy_image(preview[:1].detach())[0])
        self.bar.update(max(0, self.offset + int(step) - self.bar.done), preview=picture)


def _should_cancel() -> bool:
    """The engine's Cancel poll: ComfyUI's interrupt is raised from inside the loop (the engine frees what it
    holds on the way out), so the prompt stops within one poll."""
    bridge.check_interrupt()
    return False


# --------------------------------------------------------------------------------------------- loaders
class TransEditLoadLPIPS:
    DESCRIPTION = ("Loads LPIPS (Zhang et al. 2018), the perceptual distance PTI and STIT tune with: torchvision's "
                   "backbone file plus LPIPS v0.1's linear heads, both from models/lpips. Equal to the reference "
                   "`lpips` package on the same weights.")

    @classmethod
    def INPUT_TYPES(cls):
        files = bridge.list_models("lpips")
        return {"required": {
            "net": (list(LPIPS_NETS), {"default": "alex",
                                      "tooltip": "alex: AlexNet, what PTI and STIT use; vgg: VGG16 (the trainer's "
                                                 "loss). The files must be this net's."}),
            "backbone": (files, {"tooltip": "torchvision's ImageNet weights in ComfyUI/models/lpips: "
                                            "alexnet-owt-7be5be79.pth (alex) or vgg16-397923af.pth (vgg)."}),
            "heads": (files, {"tooltip": "LPIPS v0.1 linear heads in ComfyUI/models/lpips: alex.pth or vgg.pth "
                                         "(from the lpips package, lpips/weights/v0.1/)."}),
        }}

    RETURN_TYPES = ("TE_LPIPS",)
    RETURN_NAMES = ("lpips",)
    OUTPUT_TOOLTIPS = ("LPIPS, for Pivotal Tune.",)
    FUNCTION = "load"
    CATEGORY = CATEGORY
    SEARCH_ALIASES = ["lpips", "perceptual loss", "perceptual similarity"]

    def load(self, net, backbone, heads):
        node = "TransEdit Load LPIPS"
        net = check_choice(node, "net", net, LPIPS_NETS)
        backbone_path = _model_file(node, "backbone", "lpips", backbone, LPIPS_SOURCES)
        heads_path = _model_file(node, "heads", "lpips", heads, LPIPS_SOURCES)
        try:
            with torch.inference_mode(False):  # tuning back-propagates through it: no inference tensors
                model = load_lpips(backbone_path, heads_path)
        except CheckpointError as e:
            raise NodeInputError(node, "backbone", f"and 'heads' cannot be used together: {e}",
                                 f"choose the {net} backbone and the {net}.pth heads (official files: "
                                 f"{_links(LPIPS_SOURCES)}).") from None
        if model.net != net:
            raise NodeInputError(node, "backbone", f"'{backbone}' holds the {model.net} network but net is '{net}'.",
                                 f"set net to '{model.net}', or choose the {net} backbone and heads files.")
        return (LPIPSHandle(ModelDescriptor(family=f"lpips_{net}", model=model, config=net, source=backbone_path)),)


class TransEditLoadFaceParser:
    DESCRIPTION = ("Loads the BiSeNet face-parsing model STIT uses (zllrunning/face-parsing.PyTorch's "
                   "79999_iter.pth, 19 classes) from models/face_parsing, for Face Region Mask.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "parser_name": (bridge.list_models("face_parsing"), {
                "tooltip": "BiSeNet weights in ComfyUI/models/face_parsing (79999_iter.pth). Read without "
                           "running any code from the file."}),
        }}

    RETURN_TYPES = ("TE_FACE_PARSER",)
    RETURN_NAMES = ("parser",)
    OUTPUT_TOOLTIPS = ("The face parser, for Face Region Mask.",)
    FUNCTION = "load"
    CATEGORY = CATEGORY
    SEARCH_ALIASES = ["bisenet", "face parsing", "face segmentation"]

    def load(self, parser_name):
        node = "TransEdit Load Face Parser"
        _model_file(node, "parser_name", "face_parsing", parser_name, PARSER_SOURCES)
        return (load_handle(node, "parser_name", "face_parsing", parser_name, load_face_parser, FaceParserHandle),)


# ------------------------------------------------------------------------------------------- pivotal tune
def tuning_config(node: str, preset: str, steps: int, learning_rate: float, early_stop_lpips: float,
                  locality_regularization: str):
    """The preset's official settings with the node's overrides (0 / -1 / 'preset' keep the preset's)."""
    preset = check_choice(node, "preset", preset, PRESETS)
    steps = check_int(node, "steps", steps, 0, MAX_STEPS)
    learning_rate = check_float(node, "learning_rate", learning_rate, 0.0, 1.0)
    early_stop_lpips = check_float(node, "early_stop_lpips", early_stop_lpips, -1.0, 1.0)
    locality = check_choice(node, "locality_regularization", locality_regularization, LOCALITY)
    config = PRESETS[preset]
    changes = {}
    if steps:
        changes["steps"] = steps
    if learning_rate:
        changes["lr"] = learning_rate
    if early_stop_lpips >= 0:  # 0: never stop early
        changes["early_stop_lpips"] = early_stop_lpips or None
    if locality != "preset":
        changes["locality_regularization"] = locality == "on"
    return replace(config, **changes) if changes else config


class TransEditPivotalTune:
    DESCRIPTION = ("Pivotal tuning: tunes a copy of the generator so that the pivot latents (Invert's, of one photo "
                   "or of every frame of a clip) reproduce their aligned crops — identity that survives the edit. "
                   "PTI (Roich et al. 2021): 350 steps, lr 3e-4, L2 + LPIPS, stop at LPIPS 0.06. STIT (Tzaban et al. "
                   "2022): one generator for the whole clip, 50 steps over every frame, lr 3e-5, locality "
                   "regularisation. The output is a TE_STYLEGAN for every node that takes one; the input generator "
                   "is left as it was. Shows the current reconstruction while it runs; Cancel stops it.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "generator": ("TE_STYLEGAN", {"tooltip": "The generator the pivots were inverted with (Load "
                                                         "Encoder's second output, or Load StyleGAN)."}),
                "latent": ("TE_LATENT", {"tooltip": "The pivots: Invert's latents of the aligned crops (STIT uses "
                                                    "e4e's). One per image."}),
                "images": ("IMAGE", {"tooltip": "The aligned crops the pivots were inverted from (Align Face), one "
                                                "per latent; resized to the generator's resolution."}),
                "lpips": ("TE_LPIPS", {"tooltip": "From 'TransEdit Load LPIPS' (PTI and STIT use alex)."}),
                "preset": (list(PRESETS), {"default": "PTI",
                                           "tooltip": "PTI: a photo (350 steps, lr 3e-4, stop at LPIPS 0.06). STIT: "
                                                      "a clip (50 steps over every frame, lr 3e-5, locality "
                                                      "regularisation). Each setting below overrides one."}),
                "steps": ("INT", {"default": 0, "min": 0, "max": MAX_STEPS,
                                  "tooltip": "0 = the preset's (PTI 350, STIT 50); otherwise at most this many."}),
                "seed": ("INT", {"default": 0, "min": 0, "max": MAX_SEED,
                                 "tooltip": "Seeds the tuning's random draws (the locality regulariser's samples, "
                                            "as numpy's seed in the official code)."}),
                "precision": (list(PRECISIONS), {"default": "auto",
                                                 "tooltip": auto_tooltip_by_file(PRECISION_BY_FILE)
                                                 + " fp32 is the official code's (force_fp32). On a CPU with bf16 "
                                                   "instructions (AVX512-BF16, AMX) bf16 tunes about 1.7x faster to "
                                                   "the same losses, not the same weights."}),
            },
            "optional": {
                "learning_rate": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 1e-5, "advanced": True,
                                            "tooltip": "Adam learning rate; 0 = the preset's (PTI 3e-4, STIT 3e-5)."}),
                "early_stop_lpips": ("FLOAT", {"default": -1.0, "min": -1.0, "max": 1.0, "step": 0.01,
                                               "advanced": True,
                                               "tooltip": "Stop once LPIPS is at most this; -1 = the preset's (PTI "
                                                          "0.06, STIT none), 0 = never stop early."}),
                "locality_regularization": (list(LOCALITY), {"default": "preset", "advanced": True,
                                                             "tooltip": "Keep the generator unchanged away from the "
                                                                        "pivots (PTI's regulariser): preset = PTI "
                                                                        "off, STIT on."}),
            },
        }

    RETURN_TYPES = ("TE_STYLEGAN",)
    RETURN_NAMES = ("generator",)
    OUTPUT_TOOLTIPS = ("The tuned generator, for Generate, Edit Studio, the edit nodes and Stitching Tune; save it "
                       "with 'TransEdit Save Tuned StyleGAN'.",)
    FUNCTION = "tune"
    CATEGORY = CATEGORY
    SEARCH_ALIASES = ["pti", "stit", "pivotal tuning", "identity", "generator tuning"]
    HAS_INTERMEDIATE_OUTPUT = True  # 0.33: a cached run still shows its before/after pictures

    def tune(self, generator, latent, images, lpips, preset, steps, seed, precision, learning_rate=0.0,
             early_stop_lpips=-1.0, locality_regularization="preset"):
        node = "TransEdit Pivotal Tune"
        generator = check_generator(node, generator)
        latent = generator.check_latent(check_latent(node, "latent", latent), node)
        lpips = _check_lpips(node, lpips)
        images = check_images(node, "images", images, strict=True)
        seed = check_int(node, "seed", seed, 0, MAX_SEED)
        precision = check_choice(node, "precision", precision, PRECISIONS)
        config = tuning_config(node, preset, steps, learning_rate, early_stop_lpips, locality_regularization)
        if images.shape[0] != latent.batch_size:
            raise NodeInputError(node, "images", f"has {images.shape[0]} images for {latent.batch_size} pivot "
                                 "latents; each latent is tuned toward its own crop.",
                                 "connect the aligned crops that went into Invert (the same batch).")
        if not torch.isfinite(latent.wplus).all():
            raise NodeInputError(node, "latent", "contains NaN or infinite values.",
                                 "check the node that produced it.")
        targets = _as_targets(node, images, generator.config.size)
        progress = _StepProgress(config.steps * latent.batch_size)

        def work(_start: int, _stop: int):
            module = generator.load()
            perceptual = lpips.load()
            device = next(module.parameters()).device
            with torch.inference_mode(False), torch.enable_grad():
                return pivotal_tune(module, latent.wplus, targets, perceptual, config, device=device, seed=seed,
                                    w_avg=generator.descriptor.latent_avg, precision=precision, on_step=progress,
                                    should_cancel=_should_cancel)

        # the whole tuning is one item: out of memory unloads every other model once, then names what to lower
        (result,) = run_in_chunks(node, 1, 1, work, what=f"tuning a {generator.config.size}px generator",
                                  keep=(generator.managed, lpips.managed),
                                  advice="free GPU memory held by other models or programs, or tune on a CPU.")
        progress(progress.bar.total, progress.bar.total)  # an early stop ends the bar too
        tuned = result.generator.to(bridge.offload_device()).eval().requires_grad_(False)
        base = generator.tuning if isinstance(generator, TunedStyleGANHandle) else None
        info = TuningInfo(base_source=base.base_source if base else generator.descriptor.source,
                          base_fingerprint=base.base_fingerprint if base else generator.descriptor.fingerprint,
                          mode=preset if base is None else f"{base.mode}+{preset}", steps_run=int(result.steps_run),
                          frames=latent.batch_size, stopped_early=bool(result.stopped_early))
        # the same fingerprint as the base: its latents (the pivots, their edits) belong to the tuned generator
        descriptor = replace(generator.descriptor, model=tuned, notes=[])
        handle = TunedStyleGANHandle(descriptor, info, f"{os.path.basename(info.base_source)} ({info.mode}-tuned)")
        last = result.losses[-1].tolist() if len(result.losses) else []
        bridge.log.info("%s: %s, %d step(s) over %d image(s)%s; last losses (l2, lpips, total) %s", node, info.mode,
                        info.steps_run, info.frames, ", stopped early" if info.stopped_early else "",
                        [round(v, 4) for v in last])
        return bridge.with_ui((handle,), self._ui(handle, latent, images))

    @staticmethod
    def _ui(handle, latent: StyleLatent, images: torch.Tensor):
        """Before/after pairs for the frontend: the crop and the tuned generator's reconstruction (first few)."""
        if not bridge.IN_COMFYUI:
            return None
        shown = list(range(min(4, latent.batch_size)))
        rendered, _ = render_latents("TransEdit Pivotal Tune", handle, latent, items=shown, progress=False)
        return compare_ui(images[shown], rendered, "photo", "tuned")


# --------------------------------------------------------------------------------------------- deltas
_sha_cache: dict = {}


def file_sha256(path: str) -> str:
    """The file's SHA-256, cached by path, size and modification time (a base file is hashed once per change)."""
    st = os.stat(path)
    key = (os.path.realpath(path), st.st_size, st.st_mtime_ns)
    if key not in _sha_cache:
        _sha_cache[key] = hash_file(path)
    return _sha_cache[key]


def locate_base(path: str) -> Optional[tuple[str, str]]:
    """(model folder, name inside it) of a file in one of BASE_FOLDERS, or None. The path as the folder lists it
    counts first (a model file is often a link to a shared store), then with links resolved."""
    for resolve in (os.path.abspath, os.path.realpath):
        file = resolve(path)
        for folder in BASE_FOLDERS:
            for root in bridge.folder_paths_for(folder):
                root = resolve(root)
                if os.path.commonpath([root, file]) == root and file != root:
                    return folder, os.path.relpath(file, root).replace(os.sep, "/")
    return None


MAX_PREFIX = 1000  # with the models folder, well under the usual 4096-byte path limit
MAX_NAME_PART = 150  # file systems allow 255 bytes; ".<stem>.<pid>.partial.safetensors" adds up to ~45
_PREFIX = re.compile(r"^[A-Za-z0-9 _.\-]+(/[A-Za-z0-9 _.\-]+)*$")


def _unique_target(node: str, prefix: str) -> tuple[str, str]:
    """(folder, name stem) under models/stylegan for `prefix` ("sub/name"); checked so it cannot leave the folder."""
    prefix = prefix.strip().strip("/")
    if not prefix or not _PREFIX.match(prefix) or any(part in (".", "..") for part in prefix.split("/")):
        raise NodeInputError(node, "filename_prefix", f"{prefix!r} is not a usable name (letters, digits, space, "
                             "'_', '-', '.', and '/' between folder names).", "use e.g. tuned/pti.")
    too_long = [part for part in prefix.split("/") if len(part) > MAX_NAME_PART]
    if len(prefix) > MAX_PREFIX:  # refused before any folder of it is made
        raise NodeInputError(node, "filename_prefix", f"is {len(prefix)} characters long; at most {MAX_PREFIX}.",
                             "use a shorter name, e.g. tuned/pti.")
    if too_long:
        raise NodeInputError(node, "filename_prefix", f"has a name part of {len(too_long[0])} characters; at most "
                             f"{MAX_NAME_PART} fit a file name with the number and temporary suffix added.",
                             "use a shorter name, e.g. tuned/pti.")
    root = bridge.folder_paths_for("stylegan")[0]
    sub, _, stem = prefix.rpartition("/")
    folder = os.path.join(root, *sub.split("/")) if sub else root
    return folder, stem


def _publish(tmp: str, folder: str, stem: str) -> str:
    """Move the finished file `tmp` to the first free folder/stem_NNNNN.safetensors, never replacing a file (a hard
    link fails when the name is taken; where links are not supported, the name is checked just before)."""
    n = 1
    while True:
        final = os.path.join(folder, f"{stem}_{n:05d}.safetensors")
        if not os.path.exists(final):
            try:
                os.link(tmp, final)
                os.unlink(tmp)
                return final
            except FileExistsError:  # another save took this number between the check and the link
                n += 1
                continue
            except OSError:  # no hard links on this file system
                if not os.path.exists(final):
                    os.replace(tmp, final)
                    return final
        n += 1


class TransEditSaveTunedStyleGAN:
    DESCRIPTION = ("Saves a tuned generator (Pivotal Tune's) into models/stylegan as a small .safetensors delta: only "
                   "the tensors tuning changed, as differences from the base file, which it names with its SHA-256. "
                   "Load StyleGAN lists and loads it (the base must stay in its model folder). Never replaces a file: "
                   "each save gets a new numbered name.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "generator": ("TE_STYLEGAN", {"tooltip": "A tuned generator (Pivotal Tune's output)."}),
            "filename_prefix": ("STRING", {"default": DEFAULT_PREFIX,
                                           "tooltip": "Name under ComfyUI/models/stylegan ('/' makes subfolders); "
                                                      "_00001, _00002, ... is added."}),
        }}

    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("ckpt_name",)
    OUTPUT_TOOLTIPS = ("The saved file's name in models/stylegan (what Load StyleGAN lists).",)
    FUNCTION = "save"
    CATEGORY = CATEGORY
    OUTPUT_NODE = True
    SEARCH_ALIASES = ["save pti", "save tuned generator", "export tuned"]

    def save(self, generator, filename_prefix):
        node = "TransEdit Save Tuned StyleGAN"
        generator = check_generator(node, generator)
        if not isinstance(generator, TunedStyleGANHandle):
            raise NodeInputError(node, "generator", f"'{generator.name}' is not a tuned generator: its file already "
                                 "holds it.", "connect the output of 'TransEdit Pivotal Tune'.")
        if not isinstance(filename_prefix, str):
            raise NodeInputError(node, "filename_prefix", f"must be text, got {type(filename_prefix).__name__}.")
        folder, stem = _unique_target(node, filename_prefix)
        info = generator.tuning
        where = locate_base(info.base_source)
        if where is None or not os.path.isfile(info.base_source):
            raise NodeInputError(node, "generator", f"was tuned from '{info.base_source}', which is not in "
                                 f"ComfyUI/models/{' or models/'.join(BASE_FOLDERS)} (a delta names its base there).",
                                 "load the base generator from a model folder, tune again, then save.")
        base = load_stylegan2(info.base_source)
        if base.fingerprint != info.base_fingerprint:
            raise NodeInputError(node, "generator", f"was tuned from '{where[1]}', but that file has changed since.",
                                 "put the original file back, or tune the generator again.")
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as e:  # a folder part names an existing file, or the path is too long for the system
            raise NodeInputError(node, "filename_prefix", f"{filename_prefix.strip()!r} cannot be made into a folder "
                                 f"under models/stylegan: {e.strerror or e}.",
                                 "use a folder name that is not an existing file, and a shorter path.") from None
        tmp = os.path.join(folder, f".{stem}.{os.getpid()}.partial.safetensors")
        try:
            save_tuning_delta(generator.descriptor.model, base.model, tmp, file_sha256(info.base_source),
                              base_file=where[1], extra_metadata={"base_name": where[1], "base_folder": where[0],
                                                                  "mode": info.mode, "steps": info.steps_run,
                                                                  "frames": info.frames})
            final = _publish(tmp, folder, stem)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        name = os.path.relpath(final, bridge.folder_paths_for("stylegan")[0]).replace(os.sep, "/")
        bridge.log.info("%s: wrote %s (base %s/%s)", node, final, *where)
        return bridge.with_ui((name,), {"text": [name]})


def _meta_int(meta: dict, key: str) -> int:
    try:
        return int(meta.get(key) or 0)
    except ValueError:
        return 0


def load_tuned_delta(node: str, input_name: str, path: str, shown: str) -> TunedStyleGANHandle:
    """A delta file as a tuned generator: its base is found in the model folder the delta names (that of Load
    StyleGAN or Load Encoder), its SHA-256 checked, the differences added."""
    try:
        delta = read_tuning_delta(path)
    except CheckpointError as e:
        raise NodeInputError(node, input_name, f"cannot be used: {e}",
                             "pick another file, or tune the base generator again and save.") from None
    meta = delta.metadata
    folder = meta.get("base_folder") if meta.get("base_folder") in BASE_FOLDERS else "stylegan"
    base_name = meta.get("base_name") or delta.base_file
    base_path = bridge.model_path(folder, base_name)
    if base_path is None:
        raise NodeInputError(node, input_name, f"'{shown}' was tuned from '{base_name}', which was not found in "
                             f"{bridge.folder_paths_for(folder)}.",
                             f"put '{base_name}' (the generator it was tuned from) in ComfyUI/models/{folder} "
                             "and press Refresh (R).")
    if locate_base(base_path) is None:  # the folder lookup confines names; a linked-in folder must not widen it
        raise NodeInputError(node, input_name, f"'{shown}' names its base '{base_name}' outside "
                             f"ComfyUI/models/{folder}.",
                             f"put '{base_name}' in ComfyUI/models/{folder} and save the tuned generator again.")
    if is_tuning_delta_file(base_path):  # a delta's base found by the registry could name a file anywhere
        raise NodeInputError(node, input_name, f"'{shown}' names '{base_name}' as its base, which is itself a "
                             "tuning delta.", "load the full generator it was tuned from, tune again and save.")
    if file_sha256(base_path) != delta.base_sha256:
        raise NodeInputError(node, input_name, f"'{shown}' was tuned from another '{base_name}' than the one in "
                             f"models/{folder} (its SHA-256 differs).",
                             f"put the original '{base_name}' back, or tune that generator again and save.")
    try:
        base = load_stylegan2(base_path)
        tuned = apply_tuning_delta(base.model, delta)
    except (CheckpointError, ValueError) as e:
        raise NodeInputError(node, input_name, f"cannot be used: {e}",
                             "pick another file, or tune the base generator again and save.") from None
    for note in base.notes:
        bridge.log.info("TransEdit: %s: %s", base.name, note)
    info = TuningInfo(base_source=base_path, base_fingerprint=base.fingerprint, mode=meta.get("mode") or "delta",
                      steps_run=_meta_int(meta, "steps"), frames=_meta_int(meta, "frames"))
    descriptor = replace(base, model=tuned.eval().requires_grad_(False), notes=[])
    return TunedStyleGANHandle(descriptor, info, os.path.basename(path))


# --------------------------------------------------------------------------------------- face region mask
class TransEditFaceRegionMask:
    DESCRIPTION = ("The face region of aligned crops as STIT computes it: BiSeNet parses each crop (at 512 px, "
                   "ImageNet normalisation) and every class but background, cloth and hat is foreground. For "
                   "Stitching Tune's mask; any MASK (e.g. ComfyUI's face masks) can be used there instead.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "parser": ("TE_FACE_PARSER", {"tooltip": "From 'TransEdit Load Face Parser'."}),
            "images": ("IMAGE", {"tooltip": "Aligned face crops (Align Face)."}),
        }}

    RETURN_TYPES = ("MASK",)
    RETURN_NAMES = ("mask",)
    OUTPUT_TOOLTIPS = ("1 on the face (skin, hair, eyes, mouth, ears, neck ...), 0 elsewhere; the crops' size.",)
    FUNCTION = "mask"
    CATEGORY = CATEGORY
    SEARCH_ALIASES = ["face mask", "face parsing mask", "bisenet mask", "face segmentation"]

    chunk_size = None  # crops per pass (None: 1 on a CPU, 8 on a GPU); halved on out-of-memory

    def mask(self, parser, images):
        node = "TransEdit Face Region Mask"
        parser = _check_parser(node, parser)
        images = check_images(node, "images", images, strict=True)
        module = parser.load()
        device = next(module.parameters()).device
        progress = bridge.Progress(images.shape[0])

        def parse(start: int, stop: int) -> torch.Tensor:
            x = images[start:stop].permute(0, 3, 1, 2).to(device) * 2.0 - 1.0
            with torch.inference_mode():
                m = face_region_mask(module, x)  # STIT's 512 px parse
            # nearest keeps it a hard mask, and a 1024 px crop's mask goes back to exactly STIT's 512 one
            m = F.interpolate(m, size=tuple(x.shape[-2:]), mode="nearest")
            progress.update(stop - start)
            return m[:, 0].float().to(bridge.intermediate_device())

        masks = run_in_chunks(node, images.shape[0], self.chunk_size or (1 if device.type == "cpu" else 8), parse,
                              what="parsing one face", keep=(parser.managed,),
                              advice="free GPU memory held by other models or programs.")
        return (torch.cat(masks, 0),)


# ------------------------------------------------------------------------------------------ stitching
def _check_mask(node: str, mask, n: int, size: int = PARSING_SIZE) -> torch.Tensor:
    """MASK [B,H,W] (or [H,W]) -> [n,1,size,size] in 0..1 on the CPU (one mask serves every frame), at the
    resolution STIT dilates it at (512: its parse)."""
    if not isinstance(mask, torch.Tensor) or mask.ndim not in (2, 3, 4) or (mask.ndim == 4 and mask.shape[1] != 1):
        raise NodeInputError(node, "mask", f"must be a MASK [B, H, W], got "
                             f"{tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__}.",
                             "connect 'TransEdit Face Region Mask' or another MASK output.")
    m = mask.detach().to("cpu", torch.float32)
    m = m.reshape(-1, *m.shape[-2:]) if m.ndim != 2 else m[None]  # [B, 1, H, W] (a MASK with a channel) too
    if m.shape[0] not in (1, n):
        raise NodeInputError(node, "mask", f"has {m.shape[0]} masks for {n} frames.",
                             "give one mask per crop (Face Region Mask on the same crops), or a single mask.")
    if m.shape[-1] != m.shape[-2]:
        raise NodeInputError(node, "mask", f"is {m.shape[-1]}x{m.shape[-2]}: it must cover the square aligned crops.",
                             "compute it on the aligned crops (Face Region Mask on Align Face's output).")
    if not bool(torch.isfinite(m).all()):  # as Paste Back: a NaN region is a fault upstream, not "no face"
        raise NodeInputError(node, "mask", "holds NaN or infinite values.", "check the node that made the mask.")
    m = m.clamp(0, 1)[:, None]
    if m.shape[-1] != size:
        m = F.interpolate(m, size=(size, size), mode="nearest")
    return m.expand(n, -1, -1, -1) if m.shape[0] == 1 else m


class TransEditStitchingTune:
    DESCRIPTION = ("STIT's stitching tuning (edit_video_stitching_tuning.py): per frame, a fresh copy of the tuned "
                   "generator is tuned so that the edited face agrees with the original crop on a border around the "
                   "face region (and stays close to the edit inside it), so the paste has no seam. Returns the "
                   "stitched crops and the region to paste them with.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "generator": ("TE_STYLEGAN", {"tooltip": "The (pivotal-)tuned generator the edit is rendered with."}),
                "latent": ("TE_LATENT", {"tooltip": "The edited latents, one per crop."}),
                "images": ("IMAGE", {"tooltip": "The original aligned crops (Align Face), one per latent."}),
                "mask": ("MASK", {"tooltip": "The face region per crop: Face Region Mask, or any MASK (e.g. "
                                             "ComfyUI's face masks); one mask serves every crop."}),
                "steps": ("INT", {"default": 100, "min": 1, "max": 10_000,
                                  "tooltip": "Tuning steps per frame (STIT 100)."}),
                "learning_rate": ("FLOAT", {"default": 3e-4, "min": 1e-6, "max": 1.0, "step": 1e-5,
                                            "tooltip": "Adam learning rate (STIT 3e-4)."}),
                "content_weight": ("FLOAT", {"default": 0.01, "min": 0.0, "max": 100.0, "step": 0.001,
                                             "tooltip": "Weight of staying close to the edit inside the region "
                                                        "(STIT 0.01)."}),
                "border_pixels": ("INT", {"default": 50, "min": 0, "max": 512,
                                          "tooltip": "Width of the image-border band (in 1024-px crop pixels, as "
                                                     "STIT; scaled to the crop size) that must match the original."}),
                "inner_dilation": ("INT", {"default": 0, "min": 0, "max": 512,
                                           "tooltip": "Grow the face region by this many 1024-px pixels first "
                                                      "(STIT 0)."}),
                "outer_dilation": ("INT", {"default": 50, "min": 0, "max": 512,
                                           "tooltip": "Width of the band around the region that must match the "
                                                      "original; also how far the paste mask reaches (STIT 50)."}),
                "whole_image_border": ("BOOLEAN", {"default": False,
                                                   "tooltip": "Match the original everywhere outside the region, "
                                                              "not only on the band (STIT's flag)."}),
            },
            "optional": {
                "loss": (list(STITCH_LOSSES), {"default": "l2", "advanced": True,
                                               "tooltip": "Distance on the border and content (STIT --l2/--l1)."}),
                "border_threshold": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 4.0, "step": 0.01,
                                               "advanced": True,
                                               "tooltip": "Border differences below this are not penalised "
                                                          "(STIT's border_loss_threshold, 0)."}),
            },
        }

    RETURN_TYPES = ("IMAGE", "MASK")
    RETURN_NAMES = ("images", "mask")
    OUTPUT_TOOLTIPS = ("The stitched crops (the generator's resolution), for Paste Back.",
                       "The full region to paste (face region grown by outer_dilation), per crop.")
    FUNCTION = "stitch"
    CATEGORY = CATEGORY
    SEARCH_ALIASES = ["stit", "stitching tuning", "seamless paste", "border tuning"]
    HAS_INTERMEDIATE_OUTPUT = True  # 0.33: a cached run still shows its before/after pictures

    chunk_size = 8  # frames per engine call (each still tuned alone, from the same weights); halved on out-of-memory

    def stitch(self, generator, latent, images, mask, steps, learning_rate, content_weight, border_pixels,
               inner_dilation, outer_dilation, whole_image_border, loss="l2", border_threshold=0.0):
        node = "TransEdit Stitching Tune"
        generator = check_generator(node, generator)
        latent = generator.check_latent(check_latent(node, "latent", latent), node)
        images = check_images(node, "images", images, strict=True)
        steps = check_int(node, "steps", steps, 1, 10_000)
        lr = check_float(node, "learning_rate", learning_rate, 1e-6, 1.0)
        content_weight = check_float(node, "content_weight", content_weight, 0.0, 100.0)
        border_pixels = check_int(node, "border_pixels", border_pixels, 0, 512)
        inner_dilation = check_int(node, "inner_dilation", inner_dilation, 0, 512)
        outer_dilation = check_int(node, "outer_dilation", outer_dilation, 0, 512)
        if not isinstance(whole_image_border, bool):
            raise NodeInputError(node, "whole_image_border", f"must be true or false, got {whole_image_border!r}.")
        loss = check_choice(node, "loss", loss, STITCH_LOSSES)
        border_threshold = check_float(node, "border_threshold", border_threshold, 0.0, 4.0)
        n = latent.batch_size
        if images.shape[0] != n:
            raise NodeInputError(node, "images", f"has {images.shape[0]} crops for {n} edited latents.",
                                 "connect the aligned crops the latents were inverted from (the same batch).")
        if not torch.isfinite(latent.wplus).all():
            raise NodeInputError(node, "latent", "contains NaN or infinite values.",
                                 "check the node that produced it (e.g. an edit strength that is too large).")
        size = generator.config.size
        crops = _as_targets(node, images, size)
        face = _check_mask(node, mask, n)
        # the settings are in STIT's 1024 px crop pixels: the same share of the face at any generator size
        content, border, full = stitching_masks(face, *(round(v * size / STIT_CROP) for v in (
            border_pixels, inner_dilation, outer_dilation)), whole_image_border=whole_image_border, crop_size=size)
        progress = _StepProgress(steps, grand_total=steps * n)

        def frames(start: int, stop: int) -> torch.Tensor:
            module = generator.load()
            device = next(module.parameters()).device
            progress.offset = start * steps
            with torch.inference_mode(False), torch.enable_grad():
                out = stitch_tune(module, latent.wplus[start:stop], crops[start:stop], border[start:stop],
                                  content[start:stop], steps=steps, lr=lr, content_weight=content_weight,
                                  l2=loss == "l2", border_threshold=border_threshold, device=device,
                                  on_step=progress, should_cancel=_should_cancel)
            return gan_to_comfy_image(out.detach())

        # the engine tunes each frame of a chunk from a fresh copy, as STIT; chunks only save its set-up per call
        out = run_in_chunks(node, n, self.chunk_size, frames, what=f"stitching one {size}px frame",
                            keep=(generator.managed,),
                            advice="free GPU memory held by other models or programs, or stitch on a CPU.")
        stitched = torch.cat(out, 0)
        full_mask = full[:, 0].float().clamp(0, 1).to(bridge.intermediate_device())
        return bridge.with_ui((stitched, full_mask), compare_ui(images, stitched, "original", "stitched"))


NODE_CLASS_MAPPINGS = {
    "TransEditLoadLPIPS": TransEditLoadLPIPS,
    "TransEditPivotalTune": TransEditPivotalTune,
    "TransEditSaveTunedStyleGAN": TransEditSaveTunedStyleGAN,
    "TransEditLoadFaceParser": TransEditLoadFaceParser,
    "TransEditFaceRegionMask": TransEditFaceRegionMask,
    "TransEditStitchingTune": TransEditStitchingTune,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "TransEditLoadLPIPS": "TransEdit Load LPIPS",
    "TransEditPivotalTune": "TransEdit Pivotal Tune",
    "TransEditSaveTunedStyleGAN": "TransEdit Save Tuned StyleGAN",
    "TransEditLoadFaceParser": "TransEdit Load Face Parser",
    "TransEditFaceRegionMask": "TransEdit Face Region Mask",
    "TransEditStitchingTune": "TransEdit Stitching Tune",
}
