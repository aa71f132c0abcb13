"""The encoder families behind one interface: images in [-1, 1] -> W+ (what the official forward decodes)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
from torch import nn

from ..core.checkpoint_io import RawCheckpoint, check_weight_dtypes
from ..core.errors import CheckpointError
from .irse import offset_by_latent_avg
from ..core.precision import DEFAULT_POLICY, PrecisionPolicy
from ..core.descriptor import ModelDescriptor


class LatentEncoder(nn.Module):
    """Any TransEdit encoder plus its checkpoint's latent_avg.

    forward(x [B, 3, 256, 256] in [-1, 1], return_features=False) -> W+ [B, n_latent, style_dim]
    (codes + latent_avg when the encoder's config says start_from_latent_avg).

    Style Transformer's queries are the generator's mapping network applied to learnt z; they do not
    depend on the image, so they are computed once here (pass `mapping=`) and kept as a buffer: the
    encoder then needs no reference to the generator and moves between devices on its own.
    """

    def __init__(self, encoder: nn.Module, latent_avg: Optional[torch.Tensor] = None, mapping=None):
        super().__init__()
        self.encoder = encoder
        self.register_buffer("latent_avg", None if latent_avg is None else latent_avg.detach().clone().float())
        query = None
        if mapping is not None:
            if not hasattr(encoder, "compute_query"):
                raise ValueError(f"{type(encoder).__name__} takes no mapping network")
            with torch.no_grad():
                query = encoder.compute_query(mapping).detach().clone().float()
        elif hasattr(encoder, "compute_query"):
            raise ValueError(f"{type(encoder).__name__} needs the generator's mapping network (pass mapping=)")
        self.register_buffer("query", query)

    @property
    def PRECISION(self) -> PrecisionPolicy:  # noqa: N802 (the name every model family's policy has)
        return getattr(self.encoder, "PRECISION", DEFAULT_POLICY)

    @property
    def n_latent(self) -> int:
        return self.encoder.n_latent

    @property
    def style_dim(self) -> int:
        return self.encoder.style_dim

    def _run(self, x: torch.Tensor, return_features: bool):
        if self.query is not None:
            return self.encoder(x, query=self.query, return_features=return_features)
        return self.encoder(x, return_features=return_features)

    def encode_codes(self, x: torch.Tensor, return_features: bool = False):
        return self._run(x, return_features)

    def forward(self, x: torch.Tensor, return_features: bool = False):
        out = self._run(x, return_features)
        codes, feats = out if return_features else (out, None)
        # Under autocast the heads return bf16/fp16; W+ itself is kept in fp32 (latent_avg is large).
        add = getattr(self.encoder, "to_wplus", None) or offset_by_latent_avg
        with torch.autocast(codes.device.type, enabled=False):
            wplus = add(codes.float(), self.latent_avg)
        return (wplus, feats) if return_features else wplus


# ------------------------------------------------------------------------------- files: the shared part
# Every encoder family's official training checkpoint has one container, {'state_dict': encoder.* (+
# module.), decoder.*, 'opts', 'latent_avg'}; each family module says how to recognise its encoder keys
# and build the module (EncoderFamily), the rest (bundled generator, latent_avg, SMART) is common.
# The checkpoint's bundled generator (decoder.*) as a loaded descriptor, or None: the stylegan family's loader,
# passed in by the registry so that this family imports only the core and itself.
DecoderLoader = Callable[[RawCheckpoint], Optional[ModelDescriptor]]


@dataclass(frozen=True)
class EncoderFamily:
    id: str
    detect: Callable[[dict, dict], bool]  # (encoder state dict, opts) -> is it this family's?
    build: Callable[[dict, dict], tuple]  # (encoder state dict, opts) -> (config, module), or ValueError


@dataclass(kw_only=True)
class EncoderDescriptor(ModelDescriptor):
    """An inversion encoder (a LatentEncoder: images -> W+) and the StyleGAN2 generator bundled in the same file,
    if any."""

    generator: Optional[ModelDescriptor]  # a StyleGAN2Descriptor
    opts: dict = field(default_factory=dict)
    smart: Optional[torch.nn.Module] = None  # StylePrompter's SMART block (full checkpoints only)

    @property
    def input_size(self) -> tuple[int, int]:
        """(h, w) the official transforms resize to: 256x256, or 192x256 for the cars encoders."""
        if self.family in ("styleprompter", "swinstyleformer"):
            return (self.config.img_size, self.config.img_size)
        if self.opts.get("input_size"):  # encoders trained by transedit.train at another size
            side = int(self.opts["input_size"])
            return (side, side)
        return (192, 256) if str(self.opts.get("dataset_type", "")).startswith("cars") else (256, 256)


def checkpoint_opts(raw: RawCheckpoint) -> dict:
    return dict(raw.extras.get("opts") or {})


def load_encoder_checkpoint(raw: RawCheckpoint, family: EncoderFamily,
                            load_decoder: DecoderLoader) -> EncoderDescriptor:
    """Build `family`'s encoder from raw.state_dicts['encoder'] and assemble it with the file's generator (read by
    `load_decoder`), latent_avg and SMART block."""
    from .smart import SMART, infer_smart_config

    path = raw.path
    opts = checkpoint_opts(raw)
    enc_sd = raw.state_dicts["encoder"]
    notes = []
    generator = load_decoder(raw)
    try:
        config, module = family.build(enc_sd, opts)
    except ValueError as e:
        raise CheckpointError(path, f"{e}.", "Export it with python -m transedit.train.") from None
    check_weight_dtypes(path, module, enc_sd)
    result = module.load_state_dict(enc_sd, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(path, f"{family.id} encoder weights do not match the layout inferred from their "
                              f"shapes (missing {result.missing_keys[:3]}, unexpected {result.unexpected_keys[:3]}).")
    if generator is not None and (generator.config.n_latent, generator.config.style_dim) != (module.n_latent, module.style_dim):
        raise CheckpointError(path, f"its encoder predicts W+ [{module.n_latent}, {module.style_dim}] but its "
                              f"bundled generator takes [{generator.config.n_latent}, {generator.config.style_dim}].")
    if family.id == "style_transformer" and generator is None:
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
    if family.id == "styleprompter" and smart_sd:
        smart = SMART(infer_smart_config(smart_sd, kv_shapes=[side for side, _ in config.feature_shapes()]))
        check_weight_dtypes(path, smart, smart_sd)
        result = smart.load_state_dict(smart_sd, strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise CheckpointError(path, f"SMART weights do not match their inferred layout (missing "
                                  f"{result.missing_keys[:3]}, unexpected {result.unexpected_keys[:3]}).")
        smart.eval().requires_grad_(False)
    mapping = generator.model if family.id == "style_transformer" else None
    model = LatentEncoder(module, latent_avg, mapping=mapping).eval().requires_grad_(False)
    return EncoderDescriptor(family=family.id, model=model, config=config, source=str(path), generator=generator,
                             opts=opts, notes=notes, smart=smart)
