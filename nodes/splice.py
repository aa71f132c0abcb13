"""ViT appearance splice stage: Splice (structure of one image, appearance of another) with DINO-ViT losses."""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..models.splice.dino import DinoViT
from ..models.registry import load_dino
from ..models.splice.training import SpliceLambdas, SpliceSettings, SpliceTrainer, apply_generator
from . import comfy_bridge as bridge
from .chunks import run_in_chunks
from .compare import compare_ui
from .handles import ModelHandle, load_handle
from .images import comfy_image_to_pil
from .inputs import MAX_SEED, NodeInputError, check_choice, check_float, check_images, check_int
from .precision import auto_tooltip, resolve_precision

CATEGORY = "TransEdit/Splice"
# Step counts. `official` is the paper's config; the shorter presets rely on early stopping as well
# (see docs/performance.md "Splice: minutes, not hours" for the loss-vs-steps measurement behind them).
PRESETS = {"fast": 800, "balanced": 2500, "official": 10_000}
SPLICE_PRECISIONS = ("auto", "fp32", "bf16")
# The generator halves its input five times and normalises with batch statistics, which needs >= 2x2
# values at the deepest level: crops (>= 95 % of the side) of a 40 px image are the smallest that work.
MIN_SIDE = 40
MAX_ASPECT = 8.0
MAX_OUTPUT = 2048


class DinoHandle(ModelHandle):
    """What flows on a TE_VIT wire: a frozen DINO ViT managed by ComfyUI's memory manager."""

    def load(self):
        model = super().load()
        model.eval().requires_grad_(False)  # frozen whatever happened to it before
        return model

    def __repr__(self) -> str:
        return f"DINO({self.name}, {self.config.name})"


@dataclass
class SpliceGenerators:
    """What flows on a TE_SPLICE_GEN wire: one trained generator per (structure, appearance) pair, on CPU."""

    generators: list  # SkipGenerator, CPU
    output_sizes: list  # (H, W) each was trained at
    info: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.generators)

    def __repr__(self) -> str:
        return f"SpliceGenerators({len(self)} x {self.output_sizes[0]})"


def _check_vit(node: str, vit) -> DinoHandle:
    if not isinstance(vit, DinoHandle):
        raise NodeInputError(node, "vit", f"must be a TE_VIT, got {type(vit).__name__}.",
                             "connect the output of 'TransEdit Load DINO'.")
    return vit


def _check_splice_images(node: str, name: str, images) -> torch.Tensor:
    images = check_images(node, name, images, min_size=MIN_SIDE)
    h, w = images.shape[1:3]
    if max(h, w) / min(h, w) > MAX_ASPECT:
        raise NodeInputError(node, name, f"is {w}x{h}: an aspect ratio above {MAX_ASPECT:g}:1 leaves DINO too few "
                             "patches on the short side.", "crop it closer to square first.")
    return images


def _long_side_size(h: int, w: int, long_side: int) -> tuple[int, int]:
    """(H, W) with the long side `long_side` and the aspect kept; 0 keeps (h, w)."""
    if long_side <= 0 or max(h, w) == long_side:
        return h, w
    scale = long_side / max(h, w)
    return max(1, round(h * scale)), max(1, round(w * scale))


def _resize(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    return F.interpolate(image, size=size, mode="bilinear", align_corners=False, antialias=True).clamp(0, 1)


def _pairs(node: str, n_structure: int, n_appearance: int) -> list[tuple[int, int]]:
    if n_structure == n_appearance:
        return [(i, i) for i in range(n_structure)]
    if n_appearance == 1:
        return [(i, 0) for i in range(n_structure)]
    if n_structure == 1:
        return [(0, j) for j in range(n_appearance)]
    raise NodeInputError(node, "appearance", f"has {n_appearance} images but structure has {n_structure}; they "
                         "must pair up one to one, or one side must be a single image (used for all).",
                         "make the batch sizes equal, or give one appearance (or one structure) image.")


class TransEditLoadDINO:
    DESCRIPTION = ("Loads a DINO ViT from models/vit for Splice: the official facebookresearch/dino .pth "
                   "(dino_vitbase8_pretrain.pth is Splice's default) or timm's vit_*_224.dino safetensors. "
                   "Size, patch and depth are read from the weights.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "vit_name": (bridge.list_models("vit"), {
                "tooltip": "DINO weights in ComfyUI/models/vit (e.g. dino_vitbase8_pretrain.pth, or a timm "
                           "vit_small_patch8_224.dino model.safetensors renamed to something recognisable)."}),
        }}

    RETURN_TYPES = ("TE_VIT",)
    RETURN_NAMES = ("vit",)
    OUTPUT_TOOLTIPS = ("The frozen DINO ViT, for Splice.",)
    FUNCTION = "load"
    CATEGORY = CATEGORY
    SEARCH_ALIASES = ["dino", "vit", "splice backbone"]

    def load(self, vit_name):
        node = "TransEdit Load DINO"
        with torch.inference_mode(False):  # Splice back-propagates through DINO: no inference tensors
            return (load_handle(node, "vit_name", "vit", vit_name, load_dino, DinoHandle),)


class TransEditSplice:
    DESCRIPTION = ("Splice (CVPR 2022): repaints the structure image with the appearance image's look by "
                   "training a small generator for the pair against DINO-ViT losses (keys' self-similarity "
                   "for structure, [CLS] for appearance). Shows a live preview; Cancel stops within one step.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "vit": ("TE_VIT", {"tooltip": "DINO from 'TransEdit Load DINO' (Splice used dino_vitb8)."}),
                "structure": ("IMAGE", {"tooltip": "Image(s) whose layout and shapes are kept (Splice's A)."}),
                "appearance": ("IMAGE", {"tooltip": "Image(s) whose colours and textures are transferred (B). "
                                                    "Batches pair up one to one, or one image serves all."}),
                "preset": (list(PRESETS), {"default": "fast",
                                           "tooltip": f"Training length: fast {PRESETS['fast']}, balanced "
                                                      f"{PRESETS['balanced']}, official {PRESETS['official']} "
                                                      "steps (the paper). fast/balanced also stop early once "
                                                      "the loss stops improving."}),
                "steps": ("INT", {"default": 0, "min": 0, "max": 100_000,
                                  "tooltip": "0 = the preset's step count; otherwise exactly this many (maximum)."}),
                "output_size": ("INT", {"default": 512, "min": 0, "max": MAX_OUTPUT, "step": 8,
                                        "tooltip": "Long side of the result in pixels (0 = the structure image's "
                                                   "size). DINO always sees 224 px on the short side, so this "
                                                   "mostly sets the detail and the time per step."}),
                "seed": ("INT", {"default": 0, "min": 0, "max": MAX_SEED,
                                 "tooltip": "Seeds the generator's initial weights and every augmentation (drawn "
                                            "on the CPU: the same draws on every device). On a CPU a seed repeats "
                                            "a run exactly; on a GPU runs differ slightly, because PyTorch's "
                                            "bilinear-resize gradients are not deterministic there."}),
                "early_stop": ("BOOLEAN", {"default": True,
                                           "tooltip": "Stop when the loss has stopped improving (fast and "
                                                      "balanced only; official always runs all its steps)."}),
                "precision": (list(SPLICE_PRECISIONS), {"default": "auto",
                                                        "tooltip": auto_tooltip(DinoViT.PRECISION) + " (Autocast "
                                                        "for DINO: bf16's range needs no loss scaling.)"}),
                "preview_every": ("INT", {"default": 50, "min": 0, "max": 10_000,
                                          "tooltip": "Show the current result every N steps (0 = never)."}),
            },
            "optional": {
                "lambda_structure": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 100.0, "step": 0.1,
                                               "advanced": True,
                                               "tooltip": "Weight of the structure (self-similarity) loss on crops."}),
                "lambda_appearance": ("FLOAT", {"default": 10.0, "min": 0.0, "max": 100.0, "step": 0.1,
                                                "advanced": True,
                                                "tooltip": "Weight of the appearance ([CLS]) loss on crops."}),
                "lambda_identity": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 100.0, "step": 0.1,
                                              "advanced": True,
                                              "tooltip": "Weight of the identity loss (G(appearance) keeps the "
                                                         "appearance image's keys)."}),
                "entire_every": ("INT", {"default": 75, "min": 0, "max": 10_000, "advanced": True,
                                         "tooltip": "Also train on the whole structure image every N steps "
                                                    "(0 = never)."}),
                "learning_rate": ("FLOAT", {"default": 2e-3, "min": 1e-5, "max": 1e-1, "step": 1e-4,
                                            "advanced": True, "tooltip": "Adam learning rate (official 2e-3)."}),
                "compile": ("BOOLEAN", {"default": False, "advanced": True,
                                        "tooltip": "torch.compile the generator (GPU; the first steps are slow "
                                                   "while it compiles)."}),
            },
        }

    RETURN_TYPES = ("IMAGE", "TE_SPLICE_GEN")
    RETURN_NAMES = ("images", "splice_generator")
    OUTPUT_TOOLTIPS = ("The spliced images [batch, H, W, 3], one per pair.",
                       "The trained generator(s), to apply to more frames with 'TransEdit Apply Splice'.")
    FUNCTION = "splice"
    CATEGORY = CATEGORY
    SEARCH_ALIASES = ["appearance transfer", "style transfer", "texture transfer", "dino splice"]
    HAS_INTERMEDIATE_OUTPUT = True  # 0.33: a cached run still shows its before/after pictures

    def splice(self, vit, structure, appearance, preset, steps, output_size, seed, early_stop, precision,
               preview_every, lambda_structure=1.0, lambda_appearance=10.0, lambda_identity=1.0, entire_every=75,
               learning_rate=2e-3, compile=False):
        node = "TransEdit Splice"
        vit = _check_vit(node, vit)
        structure = _check_splice_images(node, "structure", structure)
        appearance = _check_splice_images(node, "appearance", appearance)
        preset = check_choice(node, "preset", preset, PRESETS)
        steps = check_int(node, "steps", steps, 0, 100_000) or PRESETS[preset]
        output_size = check_int(node, "output_size", output_size, 0, MAX_OUTPUT)
        if 0 < output_size < MIN_SIDE:
            raise NodeInputError(node, "output_size", f"must be 0 or at least {MIN_SIDE}, got {output_size}.")
        seed = check_int(node, "seed", seed, 0, MAX_SEED)
        precision = check_choice(node, "precision", precision, SPLICE_PRECISIONS)
        preview_every = check_int(node, "preview_every", preview_every, 0, 10_000)
        lambdas = SpliceLambdas(
            global_ssim=check_float(node, "lambda_structure", lambda_structure, 0.0, 100.0),
            global_cls=check_float(node, "lambda_appearance", lambda_appearance, 0.0, 100.0),
            global_identity=check_float(node, "lambda_identity", lambda_identity, 0.0, 100.0),
            entire_every=check_int(node, "entire_every", entire_every, 0, 10_000))
        lambdas.entire_cls = lambdas.global_cls
        lambdas.entire_ssim = lambdas.global_ssim
        lr = check_float(node, "learning_rate", learning_rate, 1e-5, 1e-1)
        pairs = _pairs(node, structure.shape[0], appearance.shape[0])
        a_size = _long_side_size(*structure.shape[1:3], output_size)
        if min(a_size) < MIN_SIDE:
            raise NodeInputError(node, "output_size", f"{output_size} makes the {structure.shape[2]}x"
                                 f"{structure.shape[1]} structure image {a_size[1]}x{a_size[0]}; its short side "
                                 f"must be at least {MIN_SIDE} px.", "raise output_size (or use 0: native size).")

        dino = vit.load()
        device = next(dino.parameters()).device
        dtype = resolve_precision(precision, device, vit.precision)
        progress = bridge.Progress(steps * len(pairs))

        def train(n: int, _stop: int):
            i, j = pairs[n]
            a = _resize(structure[i:i + 1].permute(0, 3, 1, 2), a_size).to(device)
            # B only feeds 224-px DINO crops and the identity term: no need to keep it larger than A
            b = appearance[j:j + 1].permute(0, 3, 1, 2)
            bh, bw = b.shape[-2:]
            b_long = min(max(bh, bw), max(max(a_size), math.ceil(MIN_SIDE * max(bh, bw) / min(bh, bw))))
            b = _resize(b, _long_side_size(bh, bw, b_long)).to(device)
            settings = SpliceSettings(
                steps=steps, lr=lr, seed=(seed + n) % (MAX_SEED + 1), lambdas=lambdas,
                autocast_dtype=None if dtype == torch.float32 else dtype,
                early_stop=early_stop and preset != "official", compile=compile)
            image, gen, done = self._train_pair(dino, a, b, settings, progress, preview_every)
            return image.permute(0, 2, 3, 1).float().to(bridge.intermediate_device()), gen, tuple(a.shape[-2:]), done

        # one pair at a time: a pair that does not fit cannot be split, so out of memory ends with what to lower
        trained = run_in_chunks(node, len(pairs), 1, train, what="training one pair", keep=(vit.managed,),
                                advice="lower output_size, use precision bf16 or a smaller ViT (ViT-S).")
        results, generators, sizes, stopped = (list(column) for column in zip(*trained))
        bridge.log.info("TransEdit Splice: trained %d pair(s); steps %s", len(pairs), stopped)
        out = SpliceGenerators(generators, sizes, info={"vit": vit.name, "steps": stopped, "preset": preset,
                                                         "seed": seed})
        # every pair's result has the structure batch's (shared) size, so they stack
        spliced = torch.cat(results, 0)
        return bridge.with_ui((spliced, out), compare_ui(structure[[i for i, _ in pairs]], spliced, "structure",
                                                         "splice"))

    @staticmethod
    def _train_pair(dino, a, b, settings, progress, preview_every):
        """Train one pair; returns (G(A) [1,3,H,W], generator on CPU, steps made). Frees everything on exit."""
        trainer = None
        try:
            trainer = SpliceTrainer(dino, a, b, settings)
            while trainer.step_index < settings.steps:
                bridge.check_interrupt()  # Cancel: stops before the next step
                report = trainer.step()
                preview = None
                if preview_every and trainer.step_index % preview_every == 0:
                    preview = comfy_image_to_pil(trainer.render()[0].permute(1, 2, 0))
                progress.update(1, preview=preview)
                if report.stopped_early:
                    progress.update(settings.steps - trainer.step_index)
                    break
            image = trainer.render()
            gen = copy.deepcopy(trainer.gen).cpu().requires_grad_(False)
            return image, gen, trainer.step_index
        finally:
            del trainer  # generator, optimiser state and cached targets go now, also on Cancel or OOM
            bridge.soft_empty_cache()


class TransEditApplySplice:
    DESCRIPTION = ("Applies a generator trained by 'TransEdit Splice' to more images (e.g. other frames of the "
                   "same scene): no training, one forward pass per image.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "splice_generator": ("TE_SPLICE_GEN", {"tooltip": "From TransEdit Splice."}),
            "images": ("IMAGE", {"tooltip": "Images to repaint. With one trained generator every image uses it; "
                                            "with several, image i uses generator i."}),
            "match_training_size": ("BOOLEAN", {"default": True,
                                                "tooltip": "Resize each image to the size its generator was "
                                                           "trained at (best fidelity), then back."}),
        }}

    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("images",)
    OUTPUT_TOOLTIPS = ("The repainted images, same size as the input.",)
    FUNCTION = "apply"
    CATEGORY = CATEGORY
    SEARCH_ALIASES = ["apply style transfer", "reuse splice"]

    def apply(self, splice_generator, images, match_training_size):
        node = "TransEdit Apply Splice"
        if not isinstance(splice_generator, SpliceGenerators):
            raise NodeInputError(node, "splice_generator", f"must be a TE_SPLICE_GEN, got "
                                 f"{type(splice_generator).__name__}.", "connect TransEdit Splice's second output.")
        images = _check_splice_images(node, "images", images)
        n, k = images.shape[0], len(splice_generator)
        if k != 1 and k != n:
            raise NodeInputError(node, "images", f"has {n} images for {k} trained generators.",
                                 "give one image per generator, or train a single pair.")
        device = bridge.compute_device()
        progress = bridge.Progress(n)

        def repaint(i: int, _stop: int) -> torch.Tensor:
            gen = copy.deepcopy(splice_generator.generators[0 if k == 1 else i]).to(device)
            x = images[i:i + 1].permute(0, 3, 1, 2).to(device)
            h, w = x.shape[-2:]
            if match_training_size:
                th, tw = splice_generator.output_sizes[0 if k == 1 else i]
                x = F.interpolate(x, size=(th, tw), mode="bilinear", align_corners=False, antialias=True)
            with torch.inference_mode():
                y = apply_generator(gen, x)
            if y.shape[-2:] != (h, w):
                y = F.interpolate(y, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
            y = y.clamp(0, 1).permute(0, 2, 3, 1).float().to(bridge.intermediate_device())
            progress.update(1, preview=comfy_image_to_pil(y[0]))
            return y

        # one image per pass: each may have its own generator and size
        out = run_in_chunks(node, n, 1, repaint, what="repainting one image",
                            advice="turn match_training_size on (the trained size) or use smaller images.")
        return (torch.cat(out, 0),)


NODE_CLASS_MAPPINGS = {
    "TransEditLoadDINO": TransEditLoadDINO,
    "TransEditSplice": TransEditSplice,
    "TransEditApplySplice": TransEditApplySplice,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "TransEditLoadDINO": "TransEdit Load DINO",
    "TransEditSplice": "TransEdit Splice (appearance transfer)",
    "TransEditApplySplice": "TransEdit Apply Splice",
}
