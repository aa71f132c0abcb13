"""Checkpoint registry: the one place that turns a weights file into a model.

Reading a file (`read_checkpoint`) is separate from knowing an architecture (`ARCHITECTURES`):
1. the file's *format* is detected from its bytes (torch zip / legacy torch pickle, NVlabs pickle,
   safetensors) and read without ever executing code from it;
2. the container is unwrapped into named state dicts (`g_ema`, `g`, `decoder`, ...) plus extras
   (`latent_avg`, `opts`, safetensors metadata);
3. each architecture `detect`s itself from key names and `load`s by inferring every hyperparameter from
   tensor shapes (spandrel-style: no config file needed).

Errors are `CheckpointError` (a ValueError) naming the file and the formats TransEdit knows.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import struct
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch

from .errors import CheckpointError
from .latent import model_fingerprint
from .stylegan2 import StyleGAN2Config, StyleGAN2Generator

KNOWN_FORMATS = (
    "rosinality/pSp/e4e/Style Transformer/StylePrompter .pt or .pth ({'g_ema', 'latent_avg'} or "
    "{'state_dict' with decoder.*, 'opts', 'latent_avg'})",
    "NVlabs stylegan2-ada-pytorch / stylegan3-repo StyleGAN2 .pkl (G_ema)",
    "TransEdit .safetensors (written by `transedit convert`) or a safetensors of rosinality g_ema keys",
)
TRANSEDIT_FORMAT_KEY = "transedit_format"
# Sub-models stored side by side in one encoder training checkpoint's state_dict.
SUBMODEL_PREFIXES = ("encoder", "decoder", "classifier")


def _formats_hint() -> str:
    return "TransEdit reads: " + "; ".join(KNOWN_FORMATS) + "."


# ----------------------------------------------------------------------------------------- reading
@dataclass
class RawCheckpoint:
    path: str
    format: str  # "torch" | "nvlabs-pkl" | "safetensors"
    state_dicts: dict[str, dict[str, torch.Tensor]]  # named sub-state-dicts, e.g. {"g_ema": ..., "g": ...}
    extras: dict = field(default_factory=dict)  # latent_avg, opts, metadata, config


def _sniff(path: Path) -> str:
    with open(path, "rb") as f:
        head = f.read(16)
    if len(head) < 8:
        raise CheckpointError(path, "file is empty or truncated.", _formats_hint())
    if head[:4] == b"PK\x03\x04":
        return "torch-zip"
    if head[0] == 0x80:  # pickle protocol 2+: legacy torch.save or a plain pickle (NVlabs)
        return "pickle"
    (header_len,) = struct.unpack("<Q", head[:8])
    if 2 <= header_len <= 100_000_000 and head[8:9] == b"{":
        return "safetensors"
    raise CheckpointError(path, "unrecognised file type (not a PyTorch, pickle or safetensors file).",
                          _formats_hint())


def _is_nvlabs_pickle(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(1 << 16)
    return b"torch_utils.persistence" in head or b"torch_utils\npersistence" in head


def _check_torch_zip(path: Path) -> None:
    """torch.save stores every member of its zip uncompressed. A compressed member can inflate far beyond
    the file (a zip bomb: a few MB that expand to many GB), and torch.load inflates members into memory
    before any check — so refuse compressed members, and members that claim more bytes than the file has."""
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
        raise CheckpointError(path, f"could not be read as a PyTorch checkpoint ({type(e).__name__}: {e}); the "
                              "file may be truncated or corrupt — download it again.", _formats_hint()) from None
    packed = [m.filename for m in members if m.compress_type != zipfile.ZIP_STORED]
    if packed:
        raise CheckpointError(path, f"has compressed members ({', '.join(packed[:2])}): torch.save never "
                              "compresses, and a compressed member can expand without bound (a 'zip bomb'). "
                              "Refusing to inflate it.", "Download the original file again.")
    claimed, size = sum(m.file_size for m in members), path.stat().st_size
    if claimed > size:
        raise CheckpointError(path, f"declares {claimed} bytes of members in a {size}-byte file (overlapping or "
                              "forged entries). Refusing to read it.", "Download the original file again.")


def _torch_load(path: Path):
    """torch.load with weights_only=True; rosinality's train.py also pickles an argparse.Namespace."""
    with open(path, "rb") as f:
        if f.read(4) == b"PK\x03\x04":
            _check_torch_zip(Path(path))
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError, struct.error) as e:
        text = str(e)
        if "Weights only load failed" in text or "Unsupported global" in text:
            found = re.search(r"GLOBAL ([\w.]+)", text)
            what = f" (it references {found.group(1)})" if found else ""
            raise CheckpointError(path, f"refusing to load: the file contains code or objects that are not "
                                  f"plain tensors{what}; TransEdit never executes code from weight files.",
                                  "Convert it with the official code into a plain state dict, or use safetensors.")
        raise CheckpointError(path, f"could not be read as a PyTorch checkpoint ({type(e).__name__}: "
                              f"{text.splitlines()[0] if text else 'no detail'}); the file may be truncated "
                              "or corrupt — download it again.", _formats_hint()) from None
    except Exception as e:  # the unpickler raises pickle.UnpicklingError and others for hostile input
        if e.__class__.__name__ == "UnpicklingError":
            raise CheckpointError(path, f"refusing to load: {str(e).splitlines()[0]}; TransEdit never "
                                  "executes code from weight files.") from None
        raise


def _read_safetensors(path: Path):
    from safetensors import safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        return load_file(str(path), device="cpu"), metadata
    except Exception as e:  # safetensors raises its own SafetensorError (not a public class)
        if isinstance(e, (KeyboardInterrupt, SystemExit)):
            raise
        raise CheckpointError(path, f"is not a valid safetensors file ({e}); it may be truncated — "
                              "download or convert it again.") from None


def _check_weight_dtypes(path, module: torch.nn.Module, sd: dict[str, torch.Tensor]) -> None:
    """Refuse integer/bool tensors where the model has floating-point weights: load_state_dict would cast
    them silently into nonsense."""
    own = module.state_dict()
    bad = [f"{k} ({v.dtype})" for k, v in sd.items()
           if k in own and own[k].is_floating_point() and isinstance(v, torch.Tensor) and not v.is_floating_point()]
    if bad:
        raise CheckpointError(path, f"holds non-floating-point tensors where weights belong (e.g. {bad[:3]}); "
                              "it is damaged or not a weight file.", "Download or convert it again.")
    # shapes the layout inferred from the other tensors does not allow (load_state_dict would raise a bare
    # RuntimeError about a module the user never heard of)
    wrong = [f"{k} {tuple(v.shape)} (expected {tuple(own[k].shape)})" for k, v in sd.items()
             if k in own and isinstance(v, torch.Tensor) and tuple(v.shape) != tuple(own[k].shape)]
    if wrong:
        raise CheckpointError(path, f"has tensors whose shapes do not fit the rest of the file (e.g. {wrong[:2]}); "
                              "it is damaged or was edited.", "Download or convert it again.")


def _strip_prefix(sd: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def _strip_dataparallel(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if sd and all(k.startswith("module.") for k in sd):
        return _strip_prefix(sd, "module.")
    return sd


def _tensor_dict(obj) -> Optional[dict[str, torch.Tensor]]:
    if isinstance(obj, dict) and obj and all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in obj.items()):
        return dict(obj)
    return None


def read_checkpoint(path) -> RawCheckpoint:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(path, "file not found.", "Put weight files in ComfyUI's models folder and refresh.")
    kind = _sniff(path)
    if kind == "safetensors":
        sd, metadata = _read_safetensors(path)
        extras: dict = {"metadata": metadata}
        if "latent_avg" in sd:
            extras["latent_avg"] = sd.pop("latent_avg")
        if metadata.get("config"):
            extras["config"] = json.loads(metadata["config"])
        if metadata.get("format") == "transedit-encoder":  # written by transedit.train: encoder.*, decoder.*, smart.*
            extras["opts"] = json.loads(metadata.get("opts") or "{}")
            parts = {part: _strip_prefix(sd, part + ".") for part in ("encoder", "decoder", "smart")}
            return RawCheckpoint(str(path), "safetensors", {k: v for k, v in parts.items() if v}, extras)
        name = metadata.get("weights", "g_ema")
        return RawCheckpoint(str(path), "safetensors", {name: _strip_dataparallel(sd)}, extras)

    if kind == "pickle" and _is_nvlabs_pickle(path):
        from . import nvlabs_pickle

        sd, config, w_avg = nvlabs_pickle.nvlabs_generator_state(path)
        extras = {"config": config}
        if w_avg is not None:
            extras["latent_avg"] = w_avg
        return RawCheckpoint(str(path), "nvlabs-pkl", {"g_ema": sd}, extras)

    obj = _torch_load(path)
    state_dicts: dict[str, dict[str, torch.Tensor]] = {}
    extras = {}
    if isinstance(obj, dict):
        for key, name in (("g_ema", "g_ema"), ("G_ema", "g_ema"), ("g", "g"), ("G", "g"), ("d", "d"),
                          ("teacher", "teacher"), ("student", "student"), ("ema", "ema"), ("model", "model")):
            sd = _tensor_dict(obj.get(key))
            if sd is not None and name not in state_dicts:
                state_dicts[name] = _strip_dataparallel(sd)
        inner = _tensor_dict(obj.get("state_dict"))
        if inner is not None:
            inner = _strip_dataparallel(inner)
            state_dicts["state_dict"] = inner
            # encoder training checkpoints: encoder.*, decoder.* (+ DataParallel module.) in one dict
            for part in SUBMODEL_PREFIXES:
                sub = _strip_dataparallel(_strip_prefix(inner, part + "."))
                if sub:
                    state_dicts[part] = sub
        if not state_dicts and _tensor_dict(obj) is not None:
            state_dicts["state_dict"] = _strip_dataparallel(obj)
        if isinstance(obj.get("latent_avg"), torch.Tensor):
            extras["latent_avg"] = obj["latent_avg"]
        if isinstance(obj.get("opts"), dict):
            extras["opts"] = obj["opts"]
    if not state_dicts:
        raise CheckpointError(path, "holds no state dict TransEdit recognises.", _formats_hint())
    decoder = state_dicts.get("decoder")
    if decoder and any(k.startswith("generator.") for k in decoder):
        # StylePrompter's full checkpoint: decoder = {generator.*: StyleGAN2, smart_block.*: SMART}
        state_dicts["decoder"] = _strip_prefix(decoder, "generator.")
        smart = _strip_prefix(decoder, "smart_block.")
        if smart:
            state_dicts["smart"] = smart
    return RawCheckpoint(str(path), "torch", state_dicts, extras)


def load_plain_state_dict(path) -> dict[str, torch.Tensor]:
    """A plain state dict from a local .pth/.pt (pretrained helper networks: LPIPS, ArcFace, a Swin backbone):
    weights_only loading with errors naming the file, unwrapped from {'state_dict' | 'model' | 'net': ...} and
    DataParallel prefixes."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(path, "file not found.")
    obj = _torch_load(path)
    for key in ("state_dict", "model", "net"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    sd = _tensor_dict(obj)
    if sd is None:
        raise CheckpointError(path, "is not a state dict of tensors.")
    return _strip_dataparallel(sd)


# ------------------------------------------------------------------------------------ architectures
@dataclass
class ModelDescriptor:
    """What a loader hands to the nodes: the module plus what is known about it."""

    family: str
    model: torch.nn.Module
    config: object
    source: str  # file path
    source_format: str
    weights: str  # which state dict inside the file (g_ema, g, decoder, ...)
    fingerprint: str
    latent_avg: Optional[torch.Tensor] = None  # [style_dim] W mean
    latent_avg_source: str = "checkpoint"  # or "estimated"
    supports_bf16: bool = True
    supports_fp16: bool = True
    notes: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return os.path.basename(self.source)


@dataclass(frozen=True)
class Architecture:
    id: str
    detect: Callable[[dict[str, torch.Tensor]], bool]
    load: Callable[[RawCheckpoint, str], ModelDescriptor]


STYLEGAN2_REQUIRED_KEYS = ("style.1.weight", "input.input", "conv1.conv.weight", "to_rgb1.conv.weight")


def is_stylegan2_state_dict(sd: dict[str, torch.Tensor]) -> bool:
    return all(k in sd for k in STYLEGAN2_REQUIRED_KEYS)


def infer_stylegan2_config(sd: dict[str, torch.Tensor], path="<state dict>", **overrides) -> StyleGAN2Config:
    """Every hyperparameter from shapes: style_dim, z_dim, n_mlp, size (from the ToRGB count), widths."""
    try:
        style_dim, z_dim = sd["style.1.weight"].shape
        n_mlp = 0
        while f"style.{n_mlp + 1}.weight" in sd:
            n_mlp += 1
        n_rgbs = 0
        while f"to_rgbs.{n_rgbs}.conv.weight" in sd:
            n_rgbs += 1
        size = 2 ** (n_rgbs + 2)
        channels = {4: int(sd["input.input"].shape[1])}
        for k in range(n_rgbs):
            channels[2 ** (k + 3)] = int(sd[f"convs.{2 * k}.conv.weight"].shape[1])
    except (KeyError, ValueError, IndexError) as e:
        raise CheckpointError(path, f"looks like a StyleGAN2 generator but its layout is incomplete ({e}).",
                              _formats_hint()) from None
    cfg = dict(size=size, style_dim=int(style_dim), n_mlp=n_mlp, channels=channels,
               z_dim=None if z_dim == style_dim else int(z_dim))
    cfg.update(overrides)
    return StyleGAN2Config(**cfg)


def _load_stylegan2(raw: RawCheckpoint, weights: str) -> ModelDescriptor:
    sd = raw.state_dicts[weights]
    stored = raw.extras.get("config") or {}
    overrides = {k: stored[k] for k in ("lr_mlp", "conv_clamp") if k in stored and stored[k] is not None}
    config = infer_stylegan2_config(sd, raw.path, **overrides)
    model = StyleGAN2Generator(config)
    sd = dict(sd)
    # rosinality's FIR kernels are buffers but constant; checkpoints from stripped exports may omit them.
    for key, buf in model.state_dict().items():
        if key.endswith((".blur.kernel", ".upsample.kernel")) and key not in sd:
            sd[key] = buf
    _check_weight_dtypes(raw.path, model, sd)
    result = model.load_state_dict(sd, strict=False)
    problems = []
    if result.missing_keys:
        problems.append(f"missing {len(result.missing_keys)} keys (e.g. {result.missing_keys[:3]})")
    if result.unexpected_keys:
        problems.append(f"unexpected {len(result.unexpected_keys)} keys (e.g. {result.unexpected_keys[:3]})")
    if problems:
        raise CheckpointError(raw.path, f"StyleGAN2 weights '{weights}' do not match the layout inferred "
                              f"from their shapes (size {config.size}, style_dim {config.style_dim}): "
                              + "; ".join(problems) + ".")
    model.eval().requires_grad_(False)
    notes = []
    latent_avg = raw.extras.get("latent_avg")
    latent_avg_source = "checkpoint"
    if latent_avg is not None and latent_avg.ndim >= 2 and latent_avg.shape[-1] == config.style_dim:
        latent_avg = latent_avg.reshape(-1, config.style_dim).mean(0)  # pSp/e4e store it repeated per W+ row
    if latent_avg is not None and latent_avg.numel() != config.style_dim:
        notes.append(f"ignored latent_avg of shape {tuple(latent_avg.shape)} (style_dim is {config.style_dim})")
        latent_avg = None
    if latent_avg is None:
        # rosinality's train.py checkpoints carry no W mean; truncation needs one, so estimate it.
        latent_avg = model.mean_latent(4096, seed=0).reshape(-1)
        latent_avg_source = "estimated"
        notes.append("no latent_avg in the file: estimated the W mean from 4096 samples (seed 0)")
    latent_avg = latent_avg.reshape(-1).float()
    if weights == "g":
        notes.append("the file has no g_ema; using the non-EMA generator 'g'")
    return ModelDescriptor(
        family="stylegan2", model=model, config=config, source=raw.path, source_format=raw.format,
        weights=weights, fingerprint=model_fingerprint("stylegan2", config.to_dict(), sd),
        latent_avg=latent_avg, latent_avg_source=latent_avg_source, notes=notes)


ARCHITECTURES: list[Architecture] = [
    Architecture("stylegan2", is_stylegan2_state_dict, _load_stylegan2),
]

# Which sub-state-dict to prefer for each role, best first.
GENERATOR_WEIGHTS_ORDER = ("g_ema", "decoder", "state_dict", "g")


def load_stylegan2(path) -> ModelDescriptor:
    """Load a StyleGAN2 generator from any supported file (the EMA weights when there are several)."""
    raw = read_checkpoint(path)
    arch = ARCHITECTURES[0]
    for name in GENERATOR_WEIGHTS_ORDER + tuple(raw.state_dicts):
        sd = raw.state_dicts.get(name)
        if sd is not None and arch.detect(sd):
            return arch.load(raw, name)
    stylegan3 = any(re.match(r"synthesis\.L\d+_", k) or k.startswith("synthesis.input.freqs")
                    for sd in raw.state_dicts.values() for k in sd)
    if stylegan3:
        raise CheckpointError(path, "is a StyleGAN3 generator, which TransEdit does not support yet.",
                              "Use a StyleGAN2 (or StyleGAN2-ADA) checkpoint.")
    found = ", ".join(f"'{n}' ({len(sd)} tensors, e.g. {next(iter(sd), '-')})" for n, sd in raw.state_dicts.items())
    raise CheckpointError(path, f"contains no StyleGAN2 generator (found {found}).", _formats_hint())


# ------------------------------------------------------------------------------------------ encoders
ENCODER_FAMILIES = ("style_transformer", "psp", "e4e", "styleprompter", "swinstyleformer")


@dataclass
class EncoderDescriptor:
    """An inversion encoder (images -> W+) and the StyleGAN2 generator bundled in the same file, if any."""

    family: str
    model: torch.nn.Module  # models.inversion.LatentEncoder
    config: object
    source: str
    generator: Optional[ModelDescriptor]
    opts: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    smart: Optional[torch.nn.Module] = None  # StylePrompter's SMART block (full checkpoints only)

    @property
    def name(self) -> str:
        return os.path.basename(self.source)

    @property
    def input_size(self) -> tuple[int, int]:
        """(h, w) the official transforms resize to: 256x256, or 192x256 for the cars encoders."""
        if self.family in ("styleprompter", "swinstyleformer"):
            return (self.config.img_size, self.config.img_size)
        if self.opts.get("input_size"):  # encoders trained by transedit.train at another size
            side = int(self.opts["input_size"])
            return (side, side)
        return (192, 256) if str(self.opts.get("dataset_type", "")).startswith("cars") else (256, 256)


def detect_encoder_family(sd: dict[str, torch.Tensor], opts: dict) -> Optional[str]:
    from .swinstyleformer import is_swinstyleformer_state_dict

    if is_swinstyleformer_state_dict(sd):
        return "swinstyleformer"
    if "latent_tok" in sd and any(k.startswith("layers.0.blocks.") for k in sd):
        return "styleprompter"
    if "z" in sd and any(k.startswith("transformerlayer_coarse.") for k in sd):
        return "style_transformer"
    if "styles.0.convs.0.weight" in sd and "latlayer1.weight" in sd:
        # pSp and e4e share every key name; only the training options tell them apart.
        return "e4e" if str(opts.get("encoder_type", "")) == "Encoder4Editing" else "psp"
    return None


def load_encoder(path) -> EncoderDescriptor:
    """Load a Style Transformer / pSp / e4e training checkpoint ({'state_dict', 'opts', 'latent_avg'})."""
    from .inversion import LatentEncoder
    from .psp import build_psp_encoder, infer_psp_config
    from .smart import SMART, infer_smart_config
    from .style_transformer import StyleTransformerEncoder, infer_style_transformer_config
    from .styleprompter import StylePrompterEncoder, infer_styleprompter_config

    raw = read_checkpoint(path)
    opts = dict(raw.extras.get("opts") or {})
    enc_sd = raw.state_dicts.get("encoder")
    if enc_sd is None:
        if any(is_stylegan2_state_dict(sd) for sd in raw.state_dicts.values()):
            raise CheckpointError(path, "is a StyleGAN2 generator, not an inversion encoder.",
                                  "Load it with 'TransEdit Load StyleGAN' (models/stylegan).")
        raise CheckpointError(path, "contains no inversion encoder (expected a training checkpoint with "
                              "'state_dict' holding encoder.* keys).", "TransEdit reads Style Transformer, pSp and "
                              "e4e checkpoints (from their official repositories).")
    family = detect_encoder_family(enc_sd, opts)
    if family is None:
        if any(k.startswith("transformerlayer.") for k in enc_sd):
            raise CheckpointError(path, "is a Style Transformer EditTransformer (reference-based editing), "
                                  "not an inversion encoder.", "Use it with the latent edit nodes.")
        raise CheckpointError(path, f"has an encoder TransEdit does not recognise (keys like "
                              f"{sorted(enc_sd)[:3]}).", "Supported: Style Transformer, pSp, e4e, StylePrompter, "
                              "and SwinStyleformer files written by transedit.train.")
    notes = []
    generator = None
    dec_sd = raw.state_dicts.get("decoder")
    if dec_sd is not None and is_stylegan2_state_dict(dec_sd):
        generator = _load_stylegan2(raw, "decoder")
    if family == "style_transformer":
        config = infer_style_transformer_config(enc_sd, opts)
        module = StyleTransformerEncoder(config)
    elif family == "styleprompter":
        config = infer_styleprompter_config(enc_sd, opts)
        module = StylePrompterEncoder(config)
    elif family == "swinstyleformer":
        from .swinstyleformer import SwinStyleformerEncoder, infer_swinstyleformer_config

        try:
            config = infer_swinstyleformer_config(enc_sd, opts)
        except ValueError as e:
            raise CheckpointError(path, f"{e}.", "Export it with python -m transedit.train.") from None
        module = SwinStyleformerEncoder(config)
    else:
        config = infer_psp_config(enc_sd, opts, kind=family)
        module = build_psp_encoder(config)
    _check_weight_dtypes(path, module, enc_sd)
    result = module.load_state_dict(enc_sd, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(path, f"{family} encoder weights do not match the layout inferred from their shapes "
                              f"(missing {result.missing_keys[:3]}, unexpected {result.unexpected_keys[:3]}).")
    if generator is not None and (generator.config.n_latent, generator.config.style_dim) != (module.n_latent, module.style_dim):
        raise CheckpointError(path, f"its encoder predicts W+ [{module.n_latent}, {module.style_dim}] but its "
                              f"bundled generator takes [{generator.config.n_latent}, {generator.config.style_dim}].")
    if family == "style_transformer" and generator is None:
        raise CheckpointError(path, "is a Style Transformer encoder without its StyleGAN2 decoder; its queries "
                              "come from the decoder's mapping network, so the file must hold both (as the "
                              "official checkpoints do).")
    latent_avg = raw.extras.get("latent_avg")
    if latent_avg is None and getattr(config, "start_from_latent_avg", False):
        if generator is None:
            raise CheckpointError(path, "has no latent_avg and no generator to take it from.")
        latent_avg = generator.latent_avg
        notes.append(f"no latent_avg in the file: using the generator's ({generator.latent_avg_source})")
    smart = None
    smart_sd = raw.state_dicts.get("smart")
    if family == "styleprompter" and smart_sd:
        smart = SMART(infer_smart_config(smart_sd, kv_shapes=[side for side, _ in config.feature_shapes()]))
        _check_weight_dtypes(path, smart, smart_sd)
        result = smart.load_state_dict(smart_sd, strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise CheckpointError(path, f"SMART weights do not match their inferred layout (missing "
                                  f"{result.missing_keys[:3]}, unexpected {result.unexpected_keys[:3]}).")
        smart.eval().requires_grad_(False)
    mapping = generator.model if family == "style_transformer" else None
    model = LatentEncoder(module, latent_avg, mapping=mapping).eval().requires_grad_(False)
    return EncoderDescriptor(family, model, config, str(path), generator, opts, notes, smart)


@dataclass
class EditTransformerDescriptor:
    """Style Transformer's reference-based EditTransformer and the generator stored beside it."""

    model: torch.nn.Module  # models.style_transformer.EditTransformer
    config: object
    source: str
    generator: Optional[ModelDescriptor]
    notes: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return os.path.basename(self.source)


def load_edit_transformer(path) -> EditTransformerDescriptor:
    """The official ref-edit checkpoint: {'state_dict': encoder.module.transformerlayer.*, decoder.module.*,
    classifier.module.* (training-only, ignored as the official load_weights does), 'opts'}."""
    from .style_transformer import EditTransformer, infer_edit_transformer_config

    raw = read_checkpoint(path)
    enc_sd = raw.state_dicts.get("encoder")
    if enc_sd is None or not any(k.startswith("transformerlayer.") for k in enc_sd) or "z" in enc_sd:
        raise CheckpointError(path, "is not a Style Transformer EditTransformer checkpoint (expected "
                              "encoder.module.transformerlayer.* keys).",
                              "Use the reference-editing checkpoint from sapphire497/style-transformer.")
    config = infer_edit_transformer_config(enc_sd, raw.extras.get("opts"))
    model = EditTransformer(config)
    _check_weight_dtypes(path, model, enc_sd)
    result = model.load_state_dict(enc_sd, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(path, f"EditTransformer weights do not match their inferred layout (missing "
                              f"{result.missing_keys[:3]}, unexpected {result.unexpected_keys[:3]}).")
    model.eval().requires_grad_(False)
    generator = None
    dec_sd = raw.state_dicts.get("decoder")
    if dec_sd is not None and is_stylegan2_state_dict(dec_sd):
        generator = _load_stylegan2(raw, "decoder")
        if generator.config.style_dim != config.d_model:
            raise CheckpointError(path, f"its EditTransformer works on {config.d_model}-wide codes but its "
                                  f"generator's style_dim is {generator.config.style_dim}.")
    return EditTransformerDescriptor(model, config, str(path), generator)


# -------------------------------------------------------------------------------------- DINO ViT
DINO_REQUIRED_KEYS = ("cls_token", "pos_embed", "patch_embed.proj.weight", "blocks.0.attn.qkv.weight")
# DINO training checkpoints keep the ViT under backbone.* (teacher/student, DataParallel module.*).
DINO_WEIGHTS_ORDER = ("teacher", "state_dict", "model", "g_ema", "student")
DINO_HINT = ("Put a DINO ViT in models/vit: the official dino_vitbase8_pretrain.pth (or _small / patch16) from "
             "facebookresearch/dino, or timm's vit_*_224.dino model.safetensors.")


@dataclass
class DinoDescriptor:
    model: torch.nn.Module  # models.dino.DinoViT, frozen, eval
    config: object  # models.dino.DinoConfig
    source: str
    notes: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return os.path.basename(self.source)


def _dino_candidate(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    sd = _strip_dataparallel(sd)
    if sd and all(k.startswith("backbone.") or k.startswith("head.") for k in sd):
        sd = _strip_prefix(sd, "backbone.")
    return sd


def load_dino(path) -> DinoDescriptor:
    """A DINO ViT (any size/patch) from an official .pth (backbone or full training checkpoint) or timm
    .safetensors, loaded strictly; refuses other ViTs (DINOv2, supervised classifiers) with the reason."""
    from .dino import DinoViT, infer_dino_config

    raw = read_checkpoint(path)
    names = [n for n in DINO_WEIGHTS_ORDER if n in raw.state_dicts] + \
        [n for n in raw.state_dicts if n not in DINO_WEIGHTS_ORDER]
    for name in names:
        sd = _dino_candidate(raw.state_dicts[name])
        if not all(k in sd for k in DINO_REQUIRED_KEYS):
            continue
        if any(k in sd for k in ("mask_token", "register_tokens")) or "blocks.0.ls1.gamma" in sd:
            raise CheckpointError(path, "is a DINOv2 ViT; Splice's losses are defined on DINO (v1) features.",
                                  DINO_HINT)
        head = sd.get("head.weight")
        if head is not None and head.ndim == 2 and head.shape[0] == 1000:
            raise CheckpointError(path, "is a supervised ImageNet ViT classifier (it has a 1000-class head); "
                                  "Splice needs DINO's self-supervised features.", DINO_HINT)
        sd = {k: v for k, v in sd.items() if not k.startswith("head.")}
        try:
            config = infer_dino_config(sd, raw.extras.get("metadata"))
        except (KeyError, ValueError, IndexError) as e:
            raise CheckpointError(path, f"looks like a ViT but its layout is incomplete ({e}).", DINO_HINT) from None
        model = DinoViT(config)
        _check_weight_dtypes(path, model, sd)
        result = model.load_state_dict({k: v.float() for k, v in sd.items()}, strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise CheckpointError(path, f"ViT weights do not match a DINO ViT (patch {config.patch_size}, dim "
                                  f"{config.embed_dim}, depth {config.depth}): missing {result.missing_keys[:3]}, "
                                  f"unexpected {result.unexpected_keys[:3]}.", DINO_HINT)
        notes = []
        if name == "teacher":
            notes.append("training checkpoint: using the teacher backbone (what DINO releases)")
        return DinoDescriptor(model.eval().requires_grad_(False), config, str(path), notes)
    found = ", ".join(f"'{n}' ({len(sd)} tensors, e.g. {next(iter(sd), '-')})" for n, sd in raw.state_dicts.items())
    raise CheckpointError(path, f"is not a DINO ViT (found {found}).", DINO_HINT)


def save_random_dino(path, config=None, seed: int = 0, overwrite: bool = False) -> Path:
    """A DINO ViT with random weights in the official key layout (timm-style safetensors, heads in metadata);
    for tests and demos. Weights are drawn large enough that features are not degenerate."""
    from safetensors.torch import save_file

    from .dino import DinoConfig, DinoViT

    # 64 channels per head, DINO's convention, so heads are inferred right from a plain .pth as well
    config = config or DinoConfig(patch_size=8, embed_dim=128, depth=2, num_heads=2)
    gen = torch.Generator().manual_seed(seed)
    sd = {}
    for k, v in DinoViT(config).state_dict().items():
        if k.endswith("norm1.weight") or k.endswith("norm2.weight") or k == "norm.weight":
            t = 1 + 0.1 * torch.randn(v.shape, generator=gen)
        elif v.ndim >= 2 and k not in ("cls_token", "pos_embed"):
            fan_in = v[0].numel()
            t = torch.randn(v.shape, generator=gen) / fan_in ** 0.5
        else:
            t = 0.5 * torch.randn(v.shape, generator=gen) if k in ("cls_token", "pos_embed") else \
                0.1 * torch.randn(v.shape, generator=gen)
        sd[k] = t.contiguous()
    meta = {"arch": f"DINO ViT patch={config.patch_size} embed={config.embed_dim} depth={config.depth} "
                    f"heads={config.num_heads} (random weights, TransEdit test model)"}
    return atomic_write(path, lambda tmp: save_file(sd, tmp, metadata=meta), overwrite=overwrite)


# ------------------------------------------------------------------------------------------- PUT
PUT_HINT = ("Put a PUT transformer checkpoint in models/put: the official OUTPUT/<exp>/checkpoint/last.pth of a "
            "transformer_* / vit_* experiment (it contains the P-VQVAE), renamed as you like.")
PUT_OPTION_KEYS = ("n_head", "num_heads", "block_activate", "act_layer", "combine_rec_and_gt", "masked_embed_start",
                   "im_scale", "im_mean", "im_std")


@dataclass
class PUTDescriptor:
    model: torch.nn.Module  # models.put PUTTransformerCVPR / PUTTransformerTPAMI (with .content_codec)
    config: object  # models.put.PUTConfig
    source: str
    weights: str  # "ema" or "model"
    notes: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return os.path.basename(self.source)


def _put_options(path: Path) -> tuple[dict, Optional[str]]:
    """Hyperparameters no tensor shape shows (heads, activation, masked_embed_start, combine_rec_and_gt)
    from the official config.yaml next to the checkpoint: <stem>.yaml, config.yaml, ../configs/config.yaml."""
    candidates = [path.with_suffix(".yaml"), path.parent / "config.yaml", path.parent.parent / "configs" / "config.yaml"]
    for cand in candidates:
        if not cand.is_file():
            continue
        try:
            import yaml  # ComfyUI itself depends on PyYAML

            data = yaml.safe_load(cand.read_text())
        except Exception:  # no PyYAML, or not YAML: fall back to shape inference
            continue
        found: dict = {}

        def walk(node):
            if isinstance(node, dict):
                for k, v in node.items():
                    if k in PUT_OPTION_KEYS and k not in found and (not isinstance(v, (dict, list))
                                                                   or (k.startswith("im_") and isinstance(v, list))):
                        found[k] = v
                    walk(v)
            elif isinstance(node, list):
                for v in node:
                    walk(v)
        walk(data)
        return found, str(cand)
    return {}, None


def load_put(path, **overrides) -> PUTDescriptor:
    """A PUT transformer (CVPR 2022 or TPAMI 2024) with its P-VQVAE from an official checkpoint (or a
    safetensors of its state dict); EMA weights when the file has them."""
    from .put import build_put, infer_put_config
    from .put_codec import PatchVQVAE, infer_pvqvae_config

    path = Path(path)
    raw = read_checkpoint(path)
    name = next((n for n in ("ema", "model", "state_dict", "g_ema") if n in raw.state_dicts), None)
    if name is None:
        name = next(iter(raw.state_dicts))
    sd = raw.state_dicts[name]
    if "to_logits.weight" not in sd or "emb_proj.weight" not in sd:
        if any(k.startswith("encoder.pre_layers.") for k in sd) and any(k.startswith("quantize.") for k in sd):
            raise CheckpointError(path, "is a P-VQVAE (PUT's auto-encoder) checkpoint, not a transformer; "
                                  "inpainting needs the transformer checkpoint, which already contains the "
                                  "P-VQVAE.", PUT_HINT)
        raise CheckpointError(path, f"is not a PUT transformer (found e.g. {list(sd)[:3]}).", PUT_HINT)
    codec_sd = _strip_prefix(sd, "content_codec.")
    if not codec_sd:
        raise CheckpointError(path, "holds a PUT transformer without its P-VQVAE (no content_codec.* weights); "
                              "use the full checkpoint the official training wrote.", PUT_HINT)
    options, source = _put_options(path)
    options.update(overrides)
    notes = [f"options from {source}: {options}"] if source else \
        ["no config.yaml beside the checkpoint: heads = width / 64 (the official models' ratio)"]
    # the transformer predicts exactly the codebook's unmasked codes, so its class count is the split
    codec_over = {"masked_embed_start": int(options.get("masked_embed_start") or sd["to_logits.weight"].shape[0])}
    for k in ("im_scale", "im_mean", "im_std"):  # image normalisation (ImageNet-normalised TPAMI models)
        if k in options:
            v = options[k]
            codec_over[k] = tuple(float(x) for x in v) if isinstance(v, (list, tuple)) else (float(v),) * 3
    codec = PatchVQVAE(infer_pvqvae_config(codec_sd, **codec_over))
    _check_weight_dtypes(path, codec, codec_sd)
    result = codec.load_state_dict(codec_sd, strict=False)
    problems = [k for k in result.missing_keys] + [k for k in result.unexpected_keys if not k.startswith("loss.")]
    if problems:
        raise CheckpointError(path, f"its P-VQVAE weights do not match the layout inferred from their shapes "
                              f"({problems[:3]}).", PUT_HINT)
    tsd = {k: v for k, v in sd.items() if not k.startswith("content_codec.")}
    config = infer_put_config(tsd, options)
    model = build_put(config, codec)
    _check_weight_dtypes(path, model, sd)
    result = model.load_state_dict(sd, strict=False)
    missing = [k for k in result.missing_keys]
    unexpected = [k for k in result.unexpected_keys if not k.startswith("content_codec.loss.")]
    if missing or unexpected:
        raise CheckpointError(path, f"PUT transformer weights do not match the inferred {config.version} layout "
                              f"(missing {missing[:3]}, unexpected {unexpected[:3]}).", PUT_HINT)
    if name == "ema":
        notes.append("using the EMA weights")
    return PUTDescriptor(model.eval().requires_grad_(False), config, str(path), name, notes)


def save_random_put(path, version: str = "cvpr2022", seed: int = 0, overwrite: bool = False) -> Path:
    """A tiny PUT transformer with its P-VQVAE (64 px images, 8x8 patches, 8x8 tokens, codebook 64 = 32 + 32,
    width 64, one head so `width // 64` infers it) and random weights, for tests and the demo. A `.pth`
    path gets the official training container ({'last_epoch', 'last_iter', 'spend_time', 'model',
    'optimizer_and_scheduler'}); a `.safetensors` path the bare state dict."""
    from .put import PUTConfig, build_put
    from .put_codec import PatchVQVAE, PVQVAEConfig

    tpami = version == "tpami2024"
    codec_cfg = PVQVAEConfig(version=version, patch_size=8, n_e=64, e_dim=64, masked_embed_start=32,
                             enc_res_ch=64, enc_num_res_blocks=2, enc_out_ch=64, dec_in_ch=64, dec_res_ch=64,
                             dec_num_res_blocks=2, dec_res_after_up=2 if tpami else 0,
                             upsample="nearest" if tpami else "deconv",
                             ref_downsample="downsample" if tpami else "conv", ref_res_blocks=tpami)
    config = PUTConfig(version=version, dim=64, n_layer=2, n_head=1, token_shape=(8, 8), num_token=32,
                       mlp_hidden=256, qkv_bias=tpami, learn_mask_emb=tpami, combine_rec_and_gt=tpami)
    torch.manual_seed(seed)  # module init below; the weights themselves come from `gen`
    model = build_put(config, PatchVQVAE(codec_cfg))
    gen = torch.Generator().manual_seed(seed)
    norms = {f"{name}.{p}" for name, mod in model.named_modules() if isinstance(mod, torch.nn.LayerNorm)
             for p in ("weight", "bias")}
    sd = {}
    for k, v in model.state_dict().items():
        if not v.is_floating_point():
            t = v.clone()
        elif k.endswith("quantize.embedding"):  # codebook entries spread like the encoder's features
            t = torch.randn(v.shape, generator=gen)
        elif k.endswith(("cluster_size", "embedding_avg")):
            t = v.clone()
        elif k in norms:
            t = (1 if k.endswith("weight") else 0) + 0.1 * torch.randn(v.shape, generator=gen)
        elif k in ("pos_emb", "mask_emb"):
            t = 0.3 * torch.randn(v.shape, generator=gen)
        elif v.ndim >= 2:
            t = torch.randn(v.shape, generator=gen) / v[0].numel() ** 0.5
        else:
            t = 0.05 * torch.randn(v.shape, generator=gen)
        sd[k] = t.contiguous()
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        meta = {"arch": f"PUT {version} tiny (random weights, TransEdit test model)"}
        return atomic_write(path, lambda tmp: save_file(sd, tmp, metadata=meta), overwrite=overwrite)
    container = {"last_epoch": 0, "last_iter": 0, "spend_time": 0.0, "model": sd,
                 "optimizer_and_scheduler": {}}
    return atomic_write(path, lambda tmp: torch.save(container, tmp), overwrite=overwrite)


# ----------------------------------------------------------------------------------------- writing
def atomic_write(path, write: Callable[[str], None], overwrite: bool = False) -> Path:
    """Write via a temp file in the same folder, then move into place; never clobber unless asked."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; pass overwrite=True (--overwrite) to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        if overwrite:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)  # fails if someone created `path` meanwhile: no clobbering
            except FileExistsError:
                raise FileExistsError(f"{path} already exists; pass overwrite=True to replace it") from None
            except OSError:  # filesystems without hard links
                os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def save_stylegan2_safetensors(desc: ModelDescriptor, path, overwrite: bool = False) -> Path:
    from safetensors.torch import save_file

    tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in desc.model.state_dict().items()}
    if desc.latent_avg is not None:
        tensors["latent_avg"] = desc.latent_avg.detach().cpu().float().contiguous()
    metadata = {
        TRANSEDIT_FORMAT_KEY: "stylegan2",
        "config": json.dumps(desc.config.to_dict()),
        "weights": desc.weights,
        "latent_avg_source": desc.latent_avg_source,
        "converted_from": os.path.basename(desc.source),
        "converted_from_format": desc.source_format,
    }
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata), overwrite)


def save_random_generator(path, config: Optional[StyleGAN2Config] = None, seed: int = 0,
                          overwrite: bool = False) -> Path:
    """Random-weight generator in an official container (tests, demo, benchmarks).

    `.pt`/`.pth` writes rosinality's `{'g_ema', 'latent_avg'}`; `.safetensors` writes TransEdit's format.
    """
    config = config or StyleGAN2Config(size=64, style_dim=64, n_mlp=2, channels={4: 32, 8: 32, 16: 32, 32: 32, 64: 16})
    torch.manual_seed(seed)
    model = StyleGAN2Generator(config).eval()
    with torch.no_grad():  # official init leaves these at constants; perturb so every term matters
        for name, p in model.named_parameters():
            if name.endswith(("noise.weight", "activate.bias")) or (name.endswith(".bias") and "to_rgb" in name):
                p.add_(0.1 * torch.randn_like(p))
    latent_avg = model.mean_latent(1024, seed=seed).reshape(-1)
    path = Path(path)
    if path.suffix == ".safetensors":
        desc = ModelDescriptor("stylegan2", model, config, str(path), "random", "g_ema",
                               model_fingerprint("stylegan2", config.to_dict(), model.state_dict()), latent_avg)
        return save_stylegan2_safetensors(desc, path, overwrite)
    container = {"g_ema": model.state_dict(), "latent_avg": latent_avg}
    return atomic_write(path, lambda tmp: torch.save(container, tmp), overwrite)


def save_random_edit_transformer(path, style_dim: int = 64, seed: int = 0, overwrite: bool = False) -> Path:
    """A random EditTransformer for W+ codes `style_dim` wide, in the official ref-edit container
    ({'state_dict': encoder.module.*, 'opts'}) that Load Edit Transformer reads (tests, demo)."""
    from .style_transformer import EditTransformer, EditTransformerConfig

    torch.manual_seed(seed)
    model = EditTransformer(EditTransformerConfig(d_model=style_dim, nhead=4, dim_feedforward=2 * style_dim)).eval()
    container = {"state_dict": {f"encoder.module.{k}": v for k, v in model.state_dict().items()}, "opts": {}}
    return atomic_write(Path(path), lambda tmp: torch.save(container, tmp), overwrite)


def save_random_encoder(path, family: str = "style_transformer", generator_config: Optional[StyleGAN2Config] = None,
                        seed: int = 0, overwrite: bool = False) -> Path:
    """A tiny random encoder + its decoder in the official training-checkpoint container (tests, demo).

    {'state_dict': encoder.module.* + decoder.module.*, 'opts': {...}, 'latent_avg'} — the layout
    Style Transformer, pSp and e4e release their checkpoints in.
    """
    from .irse import IRSEConfig
    from .psp import PSPConfig, build_psp_encoder
    from .smart import SMART, SMARTConfig
    from .style_transformer import StyleTransformerConfig, StyleTransformerEncoder
    from .styleprompter import StylePrompterConfig, StylePrompterEncoder

    if family not in ENCODER_FAMILIES:
        raise ValueError(f"family must be one of {ENCODER_FAMILIES}, got {family!r}")
    gcfg = generator_config or StyleGAN2Config(size=64, style_dim=64, n_mlp=2,
                                               channels={4: 32, 8: 32, 16: 32, 32: 32, 64: 16})
    torch.manual_seed(seed)
    generator = StyleGAN2Generator(gcfg).eval()
    sd = gcfg.style_dim
    backbone = IRSEConfig(input_width=16, widths=(16, 32, 48, sd), units=(1, 1, 1, 1))
    smart = None
    if family == "styleprompter":  # the reduced geometry of the official parity fixture
        spc = StylePrompterConfig(embed_dim=16, depths=(1, 2, 2, 1), num_heads=(2, 4, 8, 16),
                                  n_latent=gcfg.n_latent, head_hidden=128, style_dim=sd, cpb_hidden=64)
        encoder = StylePrompterEncoder(spc)
        shapes = spc.feature_shapes()
        q = gcfg.channels[16]
        smart = SMART(SMARTConfig(q_channel=q, embed_dim=q, kv_channels=[c for _, c in shapes],
                                  kv_shapes=[side for side, _ in shapes], ffn_dim=2 * q)).eval()
        opts = {"encoder_type": "StylePrompter", "output_size": gcfg.size}
    elif family == "style_transformer":
        encoder = StyleTransformerEncoder(StyleTransformerConfig(backbone=backbone, d_model=sd, nhead=4,
                                                                 dim_feedforward=2 * sd, n_latent=gcfg.n_latent))
        opts = {"encoder_type": "StyleTransformer", "output_size": gcfg.size}
    else:
        n = gcfg.n_latent
        encoder = build_psp_encoder(PSPConfig(backbone=backbone, kind=family, n_styles=n, style_dim=sd,
                                              coarse_ind=min(3, n), middle_ind=min(7, n)))
        opts = {"encoder_type": "Encoder4Editing" if family == "e4e" else "GradualStyleEncoder",
                "output_size": gcfg.size, "start_from_latent_avg": True}
    encoder.eval()
    with torch.no_grad():  # BN running stats away from identity so eval-mode BN matters
        for name, buf in encoder.named_buffers():
            if name.endswith("running_var"):
                buf.uniform_(0.5, 1.5)
            elif name.endswith("running_mean"):
                buf.normal_(0, 0.1)
    latent_avg = generator.mean_latent(512, seed=seed).reshape(-1)
    state = {f"encoder.module.{k}": v for k, v in encoder.state_dict().items()}
    if smart is None:
        state.update({f"decoder.module.{k}": v for k, v in generator.state_dict().items()})
    else:  # StylePrompter's full layout: the generator and SMART side by side under the decoder
        state.update({f"decoder.module.generator.{k}": v for k, v in generator.state_dict().items()})
        state.update({f"decoder.module.smart_block.{k}": v for k, v in smart.state_dict().items()})
    container = {"state_dict": state, "opts": opts, "latent_avg": latent_avg}
    return atomic_write(Path(path), lambda tmp: torch.save(container, tmp), overwrite)

