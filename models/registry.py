"""Checkpoint registry: the one place that turns a weights file into a model, by dispatch only.

It sits above the families (models/stylegan, encoders, face, splice, put, perceptual) and the core they share
(models/core): it imports them, none of them imports it, and no family imports another.

1. `read_checkpoint` reads the file without executing code from it (core/checkpoint_io.py; NVlabs `.pkl`
   through stylegan/nvlabs_pickle.py) into named state dicts plus extras;
2. each model family — in its own module, beside its model — `detect`s itself from key names, and
   `load`s by inferring every hyperparameter from tensor shapes and reading its official side files
   (opts, config.yaml): the StyleGAN2 generator, the encoder families (style_transformer, psp / e4e,
   styleprompter, swinstyleformer; shared assembly in encoders/latent_encoder.py), the EditTransformer,
   dino, put, retinaface, the LPIPS backbone and heads; an encoder file's bundled generator is read by the
   stylegan family's loader, handed to the encoder loaders here;
3. a file that is not the family asked for is named by the family it *is*, with the node that loads it.

Errors are `CheckpointError` (a ValueError) naming the file.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable

from .core.checkpoint_io import (KNOWN_FORMATS, TRANSEDIT_FORMAT_KEY, RawCheckpoint, atomic_write,  # noqa: F401
                                 formats_hint, is_nvlabs_pickle, load_plain_state_dict, read_official_yaml,
                                 read_safetensors, torch_load)
from .core.checkpoint_io import read_checkpoint as _read_torch_or_safetensors
from .core.errors import CheckpointError
from .encoders import psp, style_transformer, styleprompter, swinstyleformer
from .encoders.latent_encoder import EncoderDescriptor, checkpoint_opts, load_encoder_checkpoint
from .encoders.style_transformer import EditTransformerDescriptor  # noqa: F401
from .face import parsing as face_parsing
from .face import retinaface
from .perceptual import lpips
from .put import transformer as put
from .put.transformer import PUTDescriptor, read_put_config  # noqa: F401
from .splice import dino
from .splice.dino import DinoDescriptor  # noqa: F401
from .stylegan import generator as stylegan2
from .stylegan import tuning as stylegan_tuning
from .stylegan.generator import (StyleGAN2Descriptor, infer_stylegan2_config, is_stylegan2_state_dict,  # noqa: F401
                                 save_stylegan2_safetensors)

# Encoder families, most specific first: pSp and e4e share key names (opts tell them apart).
ENCODERS = (swinstyleformer.ENCODER, styleprompter.ENCODER, style_transformer.ENCODER, psp.E4E_ENCODER,
            psp.PSP_ENCODER)


def read_checkpoint(path) -> RawCheckpoint:
    """Any supported weight file as a RawCheckpoint (NVlabs pickles as their G_ema in rosinality's keys)."""
    path = Path(path)
    if path.is_file() and is_nvlabs_pickle(path):
        from .stylegan.nvlabs_pickle import read_nvlabs_checkpoint

        return read_nvlabs_checkpoint(path)
    return _read_torch_or_safetensors(path)


def _encoder_family(raw: RawCheckpoint):
    enc_sd = raw.state_dicts.get("encoder")
    if enc_sd is None:
        return None
    opts = checkpoint_opts(raw)
    return next((family for family in ENCODERS if family.detect(enc_sd, opts)), None)


def _load_encoder(raw: RawCheckpoint) -> EncoderDescriptor:
    family = _encoder_family(raw)
    if family is None:
        if raw.state_dicts.get("encoder") is not None:
            raise CheckpointError(raw.path, f"has an encoder TransEdit does not recognise (keys like "
                                  f"{sorted(raw.state_dicts['encoder'])[:3]}).", "Supported: Style Transformer, "
                                  "pSp, e4e, StylePrompter, and SwinStyleformer files written by transedit.train.")
        raise CheckpointError(raw.path, "contains no inversion encoder (expected a training checkpoint with "
                              "'state_dict' holding encoder.* keys).", "TransEdit reads Style Transformer, pSp, "
                              "e4e and StylePrompter checkpoints (from their official repositories).")
    return load_encoder_checkpoint(raw, family, load_decoder=stylegan2.load_bundled_generator)


@dataclass(frozen=True)
class Family:
    id: str
    title: str  # what the user is told the file is
    node: str  # the node that loads such a file
    folder: str  # the ComfyUI models folder such files go in
    detect: Callable[[RawCheckpoint], bool]
    load: Callable[..., object]


# Order matters for naming a file: encoder and EditTransformer checkpoints also hold a StyleGAN2 decoder.
FAMILIES = {f.id: f for f in (
    Family("encoder", "an inversion encoder", "'TransEdit Load Encoder'", "models/gan_encoders",
           lambda raw: _encoder_family(raw) is not None, _load_encoder),
    Family("edit_transformer", "a Style Transformer EditTransformer (reference-based editing)",
           "'TransEdit Load Edit Transformer'", "models/gan_encoders",
           style_transformer.is_edit_transformer_checkpoint,
           partial(style_transformer.load_edit_transformer_checkpoint, load_decoder=stylegan2.load_bundled_generator)),
    Family("put", "a PUT inpainting checkpoint", "'TransEdit Load PUT'", "models/put", put.detect, put.load),
    Family("dino", "a DINO ViT", "'TransEdit Load DINO'", "models/vit", dino.detect, dino.load),
    Family("retinaface", "a RetinaFace face detector", "'TransEdit Align Face' (detector)", "models/facedetection",
           retinaface.detect, retinaface.load),
    Family("face_parsing", "a BiSeNet face parser (face-parsing.PyTorch)", "'TransEdit Load Face Parser'",
           "models/face_parsing", face_parsing.detect, face_parsing.load),
    Family("lpips_backbone", "an LPIPS backbone (torchvision's ImageNet AlexNet / VGG16)", "'TransEdit Load LPIPS' "
           "(backbone)", "models/lpips", lpips.detect_backbone, lpips.load_backbone),
    Family("lpips_heads", "an LPIPS v0.1 heads file (alex.pth / vgg.pth)", "'TransEdit Load LPIPS' (heads)",
           "models/lpips", lpips.detect_heads, lpips.load_heads),
    Family("stylegan2", "a StyleGAN2 generator", "'TransEdit Load StyleGAN'", "models/stylegan",
           stylegan2.detect, stylegan2.load),
)}


def identify(raw: RawCheckpoint):
    """The first family (in FAMILIES' order) that recognises the file, or None."""
    return next((family for family in FAMILIES.values() if family.detect(raw)), None)


def load_as(path, family_id: str, **options):
    """Load `path` as `family_id`; a file of another family is refused naming what it is and where it goes."""
    raw = read_checkpoint(path)
    wanted = FAMILIES[family_id]
    if not wanted.detect(raw):
        other = identify(raw)
        if other is not None:
            raise CheckpointError(path, f"is {other.title}, not {wanted.title}.",
                                  f"Load it with {other.node} ({other.folder}); this input needs {wanted.title} "
                                  f"from {wanted.folder}.")
    return wanted.load(raw, **options)  # the family's own clear error when it is not one of its files


def load_stylegan2(path) -> StyleGAN2Descriptor:
    """A StyleGAN2 generator from any supported file (the EMA weights when there are several); a tuning delta
    (Save Tuned StyleGAN) loads as its base file, found in the same folder and hash-checked, plus the delta."""
    if stylegan_tuning.is_tuning_delta_file(path):
        return load_tuned_stylegan2(path)
    return load_as(path, "stylegan2")


def load_tuned_stylegan2(delta_path) -> StyleGAN2Descriptor:
    """A tuning delta applied to the base generator it names (same folder, sha256 checked)."""
    delta = stylegan_tuning.read_tuning_delta(delta_path)
    base_path = stylegan_tuning.delta_base_path(delta_path, delta)
    if stylegan_tuning.is_tuning_delta_file(base_path):
        raise CheckpointError(delta_path, f"names {delta.base_file} as its base, which is itself a tuning delta.",
                              "Save tuning deltas against a full generator file.")
    base = load_as(base_path, "stylegan2")
    try:
        tuned = stylegan_tuning.apply_tuning_delta(base.model, delta)
    except ValueError as e:
        raise CheckpointError(delta_path, f"does not fit {delta.base_file}: {e}.") from None
    return stylegan_tuning.tuned_descriptor(base, tuned, source=str(delta_path),
                                            note=f"tuning delta {Path(delta_path).name} applied to {delta.base_file}")


def load_encoder(path) -> EncoderDescriptor:
    """An inversion encoder from its official training checkpoint ({'state_dict', 'opts', 'latent_avg'})."""
    return load_as(path, "encoder")


def load_edit_transformer(path) -> EditTransformerDescriptor:
    return load_as(path, "edit_transformer")


def load_dino(path) -> DinoDescriptor:
    return load_as(path, "dino")


def load_put(path, **overrides) -> PUTDescriptor:
    return load_as(path, "put", **overrides)


def load_retinaface(path) -> retinaface.RetinaFaceDescriptor:
    return load_as(path, "retinaface")


def load_face_parser(path) -> face_parsing.FaceParserDescriptor:
    """face-parsing.PyTorch's BiSeNet (79999_iter.pth, as STIT uses it), every key loaded strictly."""
    return load_as(path, "face_parsing")


def load_lpips(backbone_path, heads_path) -> lpips.LPIPS:
    """LPIPS from a torchvision backbone file and its v0.1 heads file (either .pth or .safetensors); each file
    must be what its input asks for, and the two must be the same net."""
    return lpips.LPIPS.from_state_dicts(load_as(backbone_path, "lpips_backbone"), load_as(heads_path, "lpips_heads"),
                                        backbone_path, heads_path)
