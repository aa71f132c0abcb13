"""Style Transformer (Hu et al., CVPR 2022) inversion encoder and its reference-based EditTransformer.

Reimplemented from the description of the official code (sapphire497/style-transformer, where the
encoder class is `GradualStyleEncoder` in models/encoders/style_transformer_encoders.py), with its module
tree and parameter names, so an official checkpoint's `encoder.module.*` entries load strictly after
stripping that prefix (`decoder.module.*` is a rosinality generator, see models/stylegan/generator.py).

Inversion, for an image x in [-1, 1] at 256x256:

    c1, c2, c3 = IR-SE-50 body[6], body[20], body[23]        (128ch 64x64, 256ch 32x32, 512ch 16x16)
    p2 = up(c3) + latlayer1(c2);  p1 = up(p2) + latlayer2(c1)   (bilinear, align_corners=True)
    q  = generator.mapping(z)                               z: learnt [1, n_latent, 512], one query per W+ row
    q  = layer_coarse(q, c3); q = layer_medium(q, p2); q = layer_fine(q, p1)
    codes = q  (+ latent_avg when the checkpoint was trained with start_from_latent_avg)

Each layer is a DETR-style post-norm transformer decoder layer without positional encodings:
self-attention over the queries, cross-attention from the queries to the flattened feature map, a ReLU
FFN, each followed by residual + LayerNorm. The queries depend on the *generator's* mapping network, not
on the image, so the encoder needs that mapping (pass `mapping=` / `query=`, or `bind_mapping` once).

Attention runs batch-first through `F.scaled_dot_product_attention` (the official code runs
`nn.MultiheadAttention` sequence-first); parameters keep nn.MultiheadAttention's packed names.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Callable, Mapping, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..core.descriptor import ModelDescriptor
from ..core.checkpoint_io import RawCheckpoint, check_weight_dtypes
from ..core.errors import CheckpointError
from .latent_encoder import DecoderLoader, EncoderFamily
from .irse import IRSEConfig, IRSEFPNTrunk, offset_by_latent_avg, infer_irse_config, strip_prefix

DEFAULT_NHEAD = 4  # the official value; head count cannot be read from weight shapes


# ----------------------------------------------------------------------------------------- transformer
class PackedMultiheadAttention(nn.Module):
    """Multi-head attention with nn.MultiheadAttention's parameters (`in_proj_weight` [3d, d] holding the
    q, k, v projections in that order, `in_proj_bias`, `out_proj`), computed batch-first with SDPA."""

    def __init__(self, d_model: int, nhead: int):
        super().__init__()
        if d_model % nhead:
            raise ValueError(f"d_model {d_model} is not divisible by nhead {nhead}")
        self.d_model, self.nhead = d_model, nhead
        self.in_proj_weight = nn.Parameter(torch.empty(3 * d_model, d_model))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * d_model))
        self.out_proj = nn.Linear(d_model, d_model)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        return x.reshape(b, n, self.nhead, self.d_model // self.nhead).transpose(1, 2)

    def forward(self, query: torch.Tensor, memory: Optional[torch.Tensor] = None) -> torch.Tensor:
        """query [B, Lq, d]; memory [B, Lk, d] (keys = values), or None for self-attention."""
        d = self.d_model
        w, b = self.in_proj_weight, self.in_proj_bias
        if memory is None:
            q, k, v = F.linear(query, w, b).chunk(3, dim=-1)
        else:
            q = F.linear(query, w[:d], b[:d])
            k, v = F.linear(memory, w[d:], b[d:]).chunk(2, dim=-1)
        out = F.scaled_dot_product_attention(self._heads(q), self._heads(k), self._heads(v))
        out = out.transpose(1, 2).reshape(query.shape)
        return self.out_proj(out)


class TransformerDecoderLayer(nn.Module):
    """Post-norm decoder layer (DETR `forward_post`, no positional embeddings; dropout is training-only
    and left out): t = LN1(t + SA(t)); t = LN2(t + CA(t, mem)); t = LN3(t + W2 relu(W1 t)). Batch-first."""

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int):
        super().__init__()
        self.self_attn = PackedMultiheadAttention(d_model, nhead)
        self.multihead_attn = PackedMultiheadAttention(d_model, nhead)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)

    def forward(self, tgt: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        tgt = self.norm1(tgt + self.self_attn(tgt))
        tgt = self.norm2(tgt + self.multihead_attn(tgt, memory))
        return self.norm3(tgt + self.linear2(F.relu(self.linear1(tgt))))


def _layer_dims(sd: Mapping[str, torch.Tensor], prefix: str) -> tuple[int, int]:
    d_model = int(sd[f"{prefix}.norm1.weight"].shape[0])
    ffn = int(sd[f"{prefix}.linear1.weight"].shape[0])
    return d_model, ffn


def _nhead_from(opts: Optional[Mapping], nhead: Optional[int], d_model: int) -> int:
    if nhead is None and opts:
        nhead = opts.get("nhead") or opts.get("num_heads")
    nhead = int(nhead or DEFAULT_NHEAD)
    if d_model % nhead:
        raise ValueError(f"nhead {nhead} does not divide d_model {d_model}")
    return nhead


def _tokens(x: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] -> [B, H*W, C], row-major (token h*W + w), as the official flatten(2)."""
    return x.flatten(2).transpose(1, 2)


MappingLike = Callable[[torch.Tensor], torch.Tensor]


def _as_mapping(mapping) -> MappingLike:
    # A StyleGAN2Generator (its `mapping` method) or any callable [N, C] -> [N, C], e.g. its `style` MLP.
    fn = getattr(mapping, "mapping", None)
    return fn if callable(fn) else mapping


# ----------------------------------------------------------------------------------------- inversion
@dataclass(frozen=True)
class StyleTransformerConfig:
    backbone: IRSEConfig = field(default_factory=IRSEConfig)
    d_model: int = 512  # = the generator's style_dim and the FPN width
    nhead: int = DEFAULT_NHEAD
    dim_feedforward: int = 1024
    n_latent: int = 18  # W+ rows = 2*log2(generator size) - 2
    start_from_latent_avg: bool = True  # official default; codes + latent_avg
    learn_in_w: bool = False

    @property
    def style_dim(self) -> int:
        return self.d_model

    def to_dict(self) -> dict:
        d = asdict(self)
        d["backbone"] = self.backbone.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "StyleTransformerConfig":
        d = dict(d)
        d["backbone"] = IRSEConfig(**d.get("backbone", {}))
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


def infer_style_transformer_config(encoder_state_dict: Mapping[str, torch.Tensor],
                                   opts: Optional[Mapping] = None,
                                   nhead: Optional[int] = None) -> StyleTransformerConfig:
    """Every size from shapes; `nhead` (not visible in shapes) from the argument, `opts['nhead']`, or 4.

    Accepts the encoder's own keys or a whole checkpoint state dict (`encoder.module.*` is picked out).
    `opts` (the checkpoint's dict) supplies start_from_latent_avg / learn_in_w; unknown fields are ignored.
    """
    sd = strip_prefix(dict(encoder_state_dict))
    backbone = infer_irse_config(sd)
    _, n_latent, d_model = sd["z"].shape
    d2, ffn = _layer_dims(sd, "transformerlayer_coarse")
    if d2 != d_model or sd["latlayer1.weight"].shape[0] != d_model:
        raise ValueError("Style Transformer: z, latlayer and transformer widths disagree")
    opts = dict(opts or {})
    return StyleTransformerConfig(
        backbone=backbone, d_model=int(d_model), nhead=_nhead_from(opts, nhead, int(d_model)),
        dim_feedforward=ffn, n_latent=int(n_latent),
        start_from_latent_avg=bool(opts.get("start_from_latent_avg", True)),
        learn_in_w=bool(opts.get("learn_in_w", False)))


class StyleTransformerEncoder(IRSEFPNTrunk):
    """Official key names: `z`, `input_layer.*`, `body.*`, `latlayer1/2.*`, `transformerlayer_{coarse,medium,fine}.*`.

    forward(x [B,3,256,256] in [-1,1], query=None, *, mapping=None, return_features=False)
        -> codes [B, n_latent, d_model] before latent_avg (or (codes, features)).
    Built in eval mode (BatchNorm uses running statistics, so each image is independent of its batch).
    """

    kind = "style_transformer"

    def __init__(self, config: StyleTransformerConfig = StyleTransformerConfig()):
        super().__init__()
        self.config = config
        self._build_trunk(config.backbone)
        self._build_latlayers(config.d_model)
        if config.backbone.tap_channels[2] != config.d_model:
            raise ValueError("Style Transformer needs c3 width == d_model (c3 is the coarse layer's memory)")
        args = (config.d_model, config.nhead, config.dim_feedforward)
        self.transformerlayer_coarse = TransformerDecoderLayer(*args)
        self.transformerlayer_medium = TransformerDecoderLayer(*args)
        self.transformerlayer_fine = TransformerDecoderLayer(*args)
        self.z = nn.Parameter(torch.randn(1, config.n_latent, config.d_model))
        self.__dict__["_mapping"] = None  # a reference, never a submodule: not in state_dict, not moved
        self.eval()

    @property
    def n_latent(self) -> int:
        return self.config.n_latent

    @property
    def style_dim(self) -> int:
        return self.config.d_model

    def bind_mapping(self, mapping) -> "StyleTransformerEncoder":
        """Remember the generator (or its mapping callable) used to turn `z` into queries when forward()
        is called without `query`/`mapping`. Stored as a plain reference (not part of this module)."""
        self.__dict__["_mapping"] = None if mapping is None else _as_mapping(mapping)
        return self

    def compute_query(self, mapping=None) -> torch.Tensor:
        """The image-independent queries: mapping(z) as [1, n_latent, d_model] (expand over the batch).

        The official code maps the batch-expanded z; the mapping is row-wise, so one copy suffices."""
        fn = _as_mapping(mapping) if mapping is not None else self._mapping
        if fn is None:
            raise ValueError("Style Transformer queries come from the StyleGAN mapping network: pass "
                             "mapping=<generator> (or query=...), or call encoder.bind_mapping(generator) once")
        z = self.z[0]
        return fn(z).reshape(1, *z.shape).to(z.dtype)

    def forward(self, x: torch.Tensor, query: Optional[torch.Tensor] = None, *, mapping=None,
                return_features: bool = False):
        self._check_input(x)
        if query is None:
            query = self.compute_query(mapping)
        query = query.to(x.dtype)
        if query.shape[0] != x.shape[0]:
            query = query.expand(x.shape[0], -1, -1)
        feats: Optional[dict] = {"query": query} if return_features else None
        c1, c2, c3 = self.backbone_features(x, feats)
        p2 = self.fpn_p2(c3, c2, feats)
        p1 = self.fpn_p1(p2, c1, feats)
        q = self.transformerlayer_coarse(query, _tokens(c3))
        if feats is not None:
            feats["tf_coarse"] = q
        q = self.transformerlayer_medium(q, _tokens(p2))
        if feats is not None:
            feats["tf_medium"] = q
        q = self.transformerlayer_fine(q, _tokens(p1))
        if feats is not None:
            feats["tf_fine"] = q
            return q, feats
        return q

    def to_wplus(self, codes: torch.Tensor, latent_avg: Optional[torch.Tensor]) -> torch.Tensor:
        """codes + latent_avg when the checkpoint's opts say start_from_latent_avg (the official default)."""
        if not self.config.start_from_latent_avg:
            return codes
        return offset_by_latent_avg(codes, latent_avg)


# ----------------------------------------------------------------------------------------- editing
@dataclass(frozen=True)
class EditTransformerConfig:
    d_model: int = 512
    nhead: int = DEFAULT_NHEAD
    dim_feedforward: int = 1024

    def to_dict(self) -> dict:
        return asdict(self)


def infer_edit_transformer_config(encoder_state_dict: Mapping[str, torch.Tensor],
                                  opts: Optional[Mapping] = None,
                                  nhead: Optional[int] = None) -> EditTransformerConfig:
    sd = strip_prefix(dict(encoder_state_dict))
    d_model, ffn = _layer_dims(sd, "transformerlayer")
    return EditTransformerConfig(d_model=d_model, nhead=_nhead_from(opts, nhead, d_model), dim_feedforward=ffn)


class EditTransformer(nn.Module):
    """Reference-based editing (the official `EditTransformerEncoder`; key prefix `transformerlayer.`).

    forward(src_wplus [B, n, C], ref_wplus [B, m, C]) -> edited W+ [B, n, C]: one post-norm decoder layer
    with the source codes as queries and the reference codes as keys/values. The output is used as the
    new W+ directly (no latent_avg, no extra residual).
    """

    kind = "edit_transformer"

    def __init__(self, config: EditTransformerConfig = EditTransformerConfig()):
        super().__init__()
        self.config = config
        self.transformerlayer = TransformerDecoderLayer(config.d_model, config.nhead, config.dim_feedforward)
        self.eval()

    def forward(self, src_wplus: torch.Tensor, ref_wplus: torch.Tensor) -> torch.Tensor:
        if src_wplus.ndim != 3 or ref_wplus.ndim != 3 or src_wplus.shape[-1] != self.config.d_model:
            raise ValueError(f"expected W+ [B, n, {self.config.d_model}], got {tuple(src_wplus.shape)} "
                             f"and {tuple(ref_wplus.shape)}")
        return self.transformerlayer(src_wplus, ref_wplus.to(src_wplus.dtype))


# ------------------------------------------------------------------------------------------------ files
# sapphire497/style-transformer saves {'state_dict': encoder.module.* + decoder.module.*, 'opts',
# 'latent_avg'} for inversion, and {'state_dict': encoder.module.transformerlayer.*, decoder.module.*,
# classifier.module.*, 'opts'} for reference-based editing.
def _is_style_transformer(sd: dict, opts: dict) -> bool:
    return "z" in sd and any(k.startswith("transformerlayer_coarse.") for k in sd)


def _build_encoder(sd: dict, opts: dict):
    config = infer_style_transformer_config(sd, opts)
    return config, StyleTransformerEncoder(config)


ENCODER = EncoderFamily("style_transformer", _is_style_transformer, _build_encoder)


@dataclass(kw_only=True)
class EditTransformerDescriptor(ModelDescriptor):
    """Style Transformer's reference-based EditTransformer and the generator stored beside it."""

    generator: Optional[ModelDescriptor] = None  # a StyleGAN2Descriptor


def is_edit_transformer_checkpoint(raw: RawCheckpoint) -> bool:
    enc_sd = raw.state_dicts.get("encoder")
    return enc_sd is not None and any(k.startswith("transformerlayer.") for k in enc_sd) and "z" not in enc_sd


def load_edit_transformer_checkpoint(raw: RawCheckpoint, load_decoder: DecoderLoader) -> EditTransformerDescriptor:
    """The official ref-edit checkpoint: {'state_dict': encoder.module.transformerlayer.*, decoder.module.*,
    classifier.module.* (training-only, ignored as the official load_weights does), 'opts'}; `load_decoder` reads
    the generator stored beside it."""
    path = raw.path
    enc_sd = raw.state_dicts.get("encoder")
    if not is_edit_transformer_checkpoint(raw):
        raise CheckpointError(path, "is not a Style Transformer EditTransformer checkpoint (expected "
                              "encoder.module.transformerlayer.* keys).",
                              "Use the reference-editing checkpoint from sapphire497/style-transformer.")
    config = infer_edit_transformer_config(enc_sd, raw.extras.get("opts"))
    model = EditTransformer(config)
    check_weight_dtypes(path, model, enc_sd)
    result = model.load_state_dict(enc_sd, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(path, f"EditTransformer weights do not match their inferred layout (missing "
                              f"{result.missing_keys[:3]}, unexpected {result.unexpected_keys[:3]}).")
    model.eval().requires_grad_(False)
    generator = load_decoder(raw)
    if generator is not None and generator.config.style_dim != config.d_model:
        raise CheckpointError(path, f"its EditTransformer works on {config.d_model}-wide codes but its "
                              f"generator's style_dim is {generator.config.style_dim}.")
    return EditTransformerDescriptor(family="edit_transformer", model=model, config=config, source=str(path),
                                     generator=generator)
