"""Encoder inversion stage: photo -> W+ with Style Transformer, pSp or e4e."""
from __future__ import annotations

import torch

from typing import Optional

from ..models.core.descriptor import ModelDescriptor
from ..models.encoders.irse import preprocess_fast, preprocess_official
from ..models.core.latent import StyleLatent
from ..models.core.precision import DEFAULT_POLICY
from ..models.registry import load_encoder
from . import comfy_bridge as bridge
from .chunks import run_in_chunks
from .handles import ModelHandle, load_handle
from .inputs import NodeInputError, check_choice, check_float, check_images
from .precision import PRECISIONS, auto_tooltip, resolve_precision
from .rendering import StyleGANHandle

CATEGORY = "TransEdit/Inversion"
RESIZE_MODES = ("official (PIL)", "fast (torch)")


class EncoderHandle(ModelHandle):
    """What flows on a TE_ENCODER wire (an EncoderDescriptor: the encoder, and the SMART block of a StylePrompter
    full checkpoint)."""

    _smart: Optional["SmartHandle"] = None

    def smart_handle(self) -> Optional["SmartHandle"]:
        """The checkpoint's SMART block as a handle of its own (made on first use, then the same one), or None."""
        smart = self.descriptor.smart
        if smart is not None and self._smart is None:
            self._smart = SmartHandle(ModelDescriptor(family="smart", model=smart, config=smart.config,
                                                      source=self.descriptor.source))
        return self._smart

    def __repr__(self) -> str:
        m = self.descriptor.model
        return f"{self.descriptor.family}({self.name}, W+ {m.n_latent}x{m.style_dim})"

class TransEditLoadEncoder:
    DESCRIPTION = ("Loads an inversion encoder from models/gan_encoders: Style Transformer, pSp or e4e training "
                   "checkpoints as released. Their StyleGAN2 decoder comes out as the second output, so one "
                   "file is enough.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "encoder_name": (bridge.list_models("gan_encoders"), {
                "tooltip": "Checkpoint in ComfyUI/models/gan_encoders (e.g. style_transformer_ffhq.pt, "
                           "e4e_ffhq_encode.pt, psp_ffhq_encode.pt)."}),
        }}

    RETURN_TYPES = ("TE_ENCODER", "TE_STYLEGAN")
    RETURN_NAMES = ("encoder", "generator")
    OUTPUT_TOOLTIPS = ("The encoder, for Invert.",
                       "The StyleGAN2 generator stored in the same file (the one the encoder was trained for).")
    FUNCTION = "load"
    CATEGORY = CATEGORY
    SEARCH_ALIASES = ["gan encoder", "style transformer", "psp", "e4e", "styleprompter"]

    def load(self, encoder_name):
        node = "TransEdit Load Encoder"
        encoder = load_handle(node, "encoder_name", "gan_encoders", encoder_name, load_encoder, EncoderHandle)
        bundled = encoder.descriptor.generator
        return (encoder, StyleGANHandle(bundled) if bundled is not None else None)


class TransEditInvert:
    DESCRIPTION = ("Encodes photos into StyleGAN W+ latents. Feed it FFHQ-aligned faces (TransEdit Align Face): "
                   "the encoders are trained on such crops. Every image of a batch gets the result it gets alone.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "encoder": ("TE_ENCODER", {"tooltip": "From TransEdit Load Encoder."}),
            "images": ("IMAGE", {"tooltip": "Aligned face crops (any size; resized to 256x256 as the official code does)."}),
            "resize": (list(RESIZE_MODES), {"default": RESIZE_MODES[0],
                                             "tooltip": "official: PIL bilinear exactly as the official "
                                                        "transforms (bit-exact); fast: antialiased torch resize "
                                                        "on the GPU (within one 8-bit level)."}),
            "precision": (list(PRECISIONS), {"default": "auto",
                                             "tooltip": auto_tooltip(DEFAULT_POLICY)
                                             + " W+ stays fp32 either way."}),
        }}

    RETURN_TYPES = ("TE_LATENT",)
    RETURN_NAMES = ("latent",)
    OUTPUT_TOOLTIPS = ("W+ latents, one per image, for Generate and the edit nodes.",)
    FUNCTION = "invert"
    CATEGORY = CATEGORY
    SEARCH_ALIASES = ["gan inversion", "image to latent", "encode face", "photo to w+"]

    chunk_size = None  # None = by device (4 on CPU, 16 on GPU); halved on out-of-memory

    def invert(self, encoder, images, resize, precision):
        node = "TransEdit Invert"
        if not isinstance(encoder, EncoderHandle):
            raise NodeInputError(node, "encoder", f"must be a TE_ENCODER, got {type(encoder).__name__}.",
                                 "connect the 'encoder' output of TransEdit Load Encoder.")
        images = check_images(node, "images", images)
        resize = check_choice(node, "resize", resize, RESIZE_MODES)
        precision = check_choice(node, "precision", precision, PRECISIONS)
        desc = encoder.descriptor
        module = encoder.load()
        device = next(module.parameters()).device
        dtype = resolve_precision(precision, device, encoder.precision)
        total = images.shape[0]
        progress = bridge.Progress(total)
        keep_features = desc.family == "styleprompter"  # SMART refines with the encoder's features
        inter = bridge.intermediate_device()

        def encode(start: int, stop: int):
            batch = images[start:stop]
            if resize == RESIZE_MODES[0]:
                x = preprocess_official(batch.cpu(), size=desc.input_size).to(device)
            else:
                x = preprocess_fast(batch.to(device), size=desc.input_size)
            feats = None
            with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
                if keep_features:
                    wplus, levels = module(x, return_features=True)
                    # kept on the intermediate device (not pinned in VRAM), fp32: one copy per level for the whole
                    # chunk (not one per image and level), then split per image
                    moved = [f.float().to(inter) for f in levels]
                    feats = [[f[i] for f in moved] for i in range(x.shape[0])]
                else:
                    wplus = module(x)
            progress.update(stop - start)
            return wplus.float().cpu(), feats

        chunks = run_in_chunks(node, total, self.chunk_size or (4 if device.type == "cpu" else 16), encode,
                               what="encoding one image", keep=(encoder.managed,),
                               advice="use precision bf16/fp16, or free GPU memory held by other programs.")
        results = [w for w, _ in chunks]
        features = [f for _, per_image in chunks if per_image for f in per_image]
        wplus = torch.cat(results, 0)
        gen = desc.generator
        # the input photos ride along (CPU) so Generate can show photo | result in the compare widget
        extras = {"encoder": desc.name, "family": desc.family, "source_images": images.detach().float().cpu()}
        if keep_features:
            extras["smart_features"] = features
        return (StyleLatent(wplus=wplus, generator=gen.fingerprint if gen is not None else "",
                            generator_name=desc.name, extras=extras),)


class SmartHandle(ModelHandle):
    """StylePrompter's SMART block from a full checkpoint, managed like any model (it rides in a latent's extras
    from SMART Refine to Generate)."""

class TransEditSMARTRefine:
    DESCRIPTION = ("StylePrompter's SMART: at render time, refines the generator's 16x16 style feature with the "
                   "encoder's multi-scale features — sharper, more faithful inversions that stay editable. "
                   "Edits may come before or after this node.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "latent": ("TE_LATENT", {"tooltip": "A latent from TransEdit Invert with a StylePrompter checkpoint "
                                                "(edited or not)."}),
            "encoder": ("TE_ENCODER", {"tooltip": "The StylePrompter *full* checkpoint (it holds SMART)."}),
            "beta1": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 2.0, "step": 0.05,
                                "tooltip": "Scales the attention values (how much encoder detail is injected)."}),
            "beta2": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 2.0, "step": 0.05,
                                "tooltip": "Scales the feed-forward residual."}),
        }}

    RETURN_TYPES = ("TE_LATENT",)
    RETURN_NAMES = ("latent",)
    OUTPUT_TOOLTIPS = ("The same W+, marked for SMART refinement; TransEdit Generate applies it.",)
    FUNCTION = "refine"
    CATEGORY = CATEGORY
    SEARCH_ALIASES = ["styleprompter", "f-space refine", "identity refine"]

    def refine(self, latent, encoder, beta1, beta2):
        node = "TransEdit SMART Refine"
        if not isinstance(latent, StyleLatent):
            raise NodeInputError(node, "latent", f"must be a TE_LATENT, got {type(latent).__name__}.")
        if not isinstance(encoder, EncoderHandle):
            raise NodeInputError(node, "encoder", f"must be a TE_ENCODER, got {type(encoder).__name__}.",
                                 "connect TransEdit Load Encoder with a StylePrompter full checkpoint.")
        beta1 = check_float(node, "beta1", beta1, 0.0, 2.0)
        beta2 = check_float(node, "beta2", beta2, 0.0, 2.0)
        desc = encoder.descriptor
        if desc.smart is None:
            raise NodeInputError(node, "encoder", f"'{desc.name}' has no SMART block (a {desc.family} "
                                 "checkpoint, or StylePrompter's baseline).",
                                 "load StylePrompter's full checkpoint (the one trained with SMART).")
        feats = latent.extras.get("smart_features")
        if not feats or len(feats) != latent.batch_size:
            raise NodeInputError(node, "latent", "carries no StylePrompter encoder features.",
                                 "invert the images with a StylePrompter checkpoint (TransEdit Invert) first.")
        extras = dict(latent.extras)
        extras["smart"] = {"handle": encoder.smart_handle(), "beta": (beta1, beta2)}
        return (latent.with_extras(extras),)


NODE_CLASS_MAPPINGS = {
    "TransEditLoadEncoder": TransEditLoadEncoder,
    "TransEditInvert": TransEditInvert,
    "TransEditSMARTRefine": TransEditSMARTRefine,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "TransEditLoadEncoder": "TransEdit Load Encoder",
    "TransEditInvert": "TransEdit Invert",
    "TransEditSMARTRefine": "TransEdit SMART Refine",
}
