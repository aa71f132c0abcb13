"""PUT (Liu et al., CVPR 2022; TPAMI 2024): pluralistic inpainting with an un-quantized transformer over the
P-VQVAE's patch features (see `codec.py` for the auto-encoder).

- :class:`PUTTransformerCVPR` — the CVPR 2022 transformer: features of every 8x8 patch (the masked image's,
  not quantized) -> logits over the codebook's "unmasked" half; separate key/query/value projections.
- :class:`PUTTransformerTPAMI` — the TPAMI 2024 ViT: the same, plus a learnt mask embedding blended into each
  token by its known-pixel ratio, fused qkv with q/v biases.
- :func:`sample_tokens` — the official iterative sampling: each iteration runs the transformer, picks the
  still-unknown positions with the most confident logits (or raster order), samples each from its top-k
  logits, writes the chosen codebook feature back, until every token is known. CVPR's `sample_largest`
  (and raster `sample`) and TPAMI's `sample` with its schedules (N tokens per iteration, all at once,
  cosine_N / linear_N / average_N).

Images are float [B, 3, H, W] in 0..255 and masks [B, 1, H, W] with **1 = known pixel** (PUT's convention),
as in the official code; the ComfyUI node converts once at its edge.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Mapping, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..core.checkpoint_io import RawCheckpoint, check_weight_dtypes, read_official_yaml, strip_prefix
from ..core.descriptor import ModelDescriptor
from ..core.errors import CheckpointError
from ..core.precision import PrecisionPolicy
from .codec import PatchVQVAE, infer_pvqvae_config

VERSIONS = ("cvpr2022", "tpami2024")


@dataclass
class PUTConfig:
    version: str  # "cvpr2022" | "tpami2024"
    dim: int
    n_layer: int
    n_head: int
    token_shape: tuple  # (h, w) of the token grid the position embedding covers
    num_token: int  # logits classes = the codebook's unmasked entries
    mlp_hidden: int
    activation: str = "GELU2"
    qkv_bias: bool = True  # TPAMI: q_bias / v_bias
    learn_mask_emb: bool = True  # TPAMI
    combine_rec_and_gt: bool = False  # the codec's final blend (TPAMI configs: True)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["token_shape"] = list(self.token_shape)
        return d


def _act(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    if name == "GELU2":
        return lambda x: x * torch.sigmoid(1.702 * x)
    if name == "GELU":
        return F.gelu
    raise ValueError(f"unknown activation {name!r}")


# --------------------------------------------------------------------------------------------- blocks
class _CVPRAttention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.key = nn.Linear(dim, dim)
        self.query = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        shape = (b, t, self.heads, c // self.heads)
        q = self.query(x).view(shape).transpose(1, 2)
        k = self.key(x).view(shape).transpose(1, 2)
        v = self.value(x).view(shape).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v)  # full bidirectional attention, scale 1/sqrt(d)
        return self.proj(out.transpose(1, 2).reshape(b, t, c))


class _CVPRBlock(nn.Module):
    def __init__(self, dim: int, heads: int, hidden: int, activation: str):
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.ln2 = nn.LayerNorm(dim)
        self.attn = _CVPRAttention(dim, heads)
        # official names: mlp.0 (Linear), mlp.1 (activation), mlp.2 (Linear), mlp.3 (Dropout)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.Identity(), nn.Linear(hidden, dim))
        self._act = _act(activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        h = self.mlp[0](self.ln2(x))
        return x + self.mlp[2](self._act(h))


class _TPAMIAttention(nn.Module):
    def __init__(self, dim: int, heads: int, qkv_bias: bool):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        if qkv_bias:
            self.q_bias = nn.Parameter(torch.zeros(dim))
            self.v_bias = nn.Parameter(torch.zeros(dim))
        else:
            self.q_bias = self.v_bias = None
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        bias = None
        if self.q_bias is not None:
            bias = torch.cat([self.q_bias, torch.zeros_like(self.v_bias), self.v_bias])
        qkv = F.linear(x, self.qkv.weight, bias).view(b, t, 3, self.heads, c // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, t, c))


class _TPAMIMlp(nn.Module):
    def __init__(self, dim: int, hidden: int, activation: str):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self._act = _act(activation)

    def forward(self, x):
        return self.fc2(self._act(self.fc1(x)))


class _TPAMIBlock(nn.Module):
    def __init__(self, dim: int, heads: int, hidden: int, activation: str, qkv_bias: bool):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = _TPAMIAttention(dim, heads, qkv_bias)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = _TPAMIMlp(dim, hidden, activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # eval: drop_path is the identity
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


# ---------------------------------------------------------------------------------------- transformers
class PUTTransformer(nn.Module):
    """Shared interface. Token sequences are row-major over the token grid: l = row * w + col."""

    # the logits only rank codes (softmax in fp32 after them) and attention is softmax-normalised: bf16, whose
    # range is fp32's, is the safe GPU default; fp16 runs too (docs/precision-and-gpu.md "Precision")
    PRECISION = PrecisionPolicy(fp16=True, bf16=True, auto_gpu="bf16", evidence="range-safe; fills compared in "
                                "benchmarks/precision_sweep.py")

    config: PUTConfig

    def __init__(self, config: PUTConfig, codec: PatchVQVAE):
        super().__init__()
        self.config = config
        self.content_codec = codec
        cfg = config
        seq = cfg.token_shape[0] * cfg.token_shape[1]
        self.emb_proj = nn.Linear(codec.embed_dim, cfg.dim)
        self.pos_emb = nn.Parameter(torch.zeros(1, seq, cfg.dim))
        self.to_logits = nn.Linear(cfg.dim, cfg.num_token)

    @property
    def patch_size(self) -> int:
        return self.content_codec.config.patch_size

    @property
    def image_size(self) -> tuple[int, int]:
        h, w = self.config.token_shape
        return h * self.patch_size, w * self.patch_size

    def _head_norm(self) -> nn.Module:
        raise NotImplementedError

    def embed(self, feature: torch.Tensor, unmask_ratio: torch.Tensor) -> torch.Tensor:
        """Codec features [B, C, h, w] (+ known-pixel ratio [B, 1, h, w]) -> token embeddings [B, L, D]."""
        raise NotImplementedError

    def token_embedding(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Sampled codebook indices [B, n] at positions [B, n] -> their embeddings [B, n, D]."""
        feat = self.emb_proj(self.content_codec.codebook_lookup(tokens).to(self.emb_proj.weight.dtype))
        pos = self.pos_emb[0][positions]
        return feat + pos.to(feat.dtype)

    def logits(self, emb: torch.Tensor) -> torch.Tensor:
        """Token embeddings [B, L, D] -> logits [B, L, num_token]."""
        for block in self.blocks:
            emb = block(emb)
        return self.to_logits(self._head_norm()(emb))


class PUTTransformerCVPR(PUTTransformer):
    def __init__(self, config: PUTConfig, codec: PatchVQVAE):
        super().__init__(config, codec)
        self.blocks = nn.Sequential(*[_CVPRBlock(config.dim, config.n_head, config.mlp_hidden, config.activation)
                                      for _ in range(config.n_layer)])
        self.layer_norm = nn.LayerNorm(config.dim)

    def _head_norm(self):
        return self.layer_norm

    def embed(self, feature, unmask_ratio=None):
        b, c, h, w = feature.shape
        return self.emb_proj(feature.permute(0, 2, 3, 1).reshape(b, h * w, c)) + self.pos_emb


class PUTTransformerTPAMI(PUTTransformer):
    def __init__(self, config: PUTConfig, codec: PatchVQVAE):
        super().__init__(config, codec)
        self.mask_emb = nn.Parameter(torch.zeros(1, config.dim, 1, 1)) if config.learn_mask_emb else None
        self.blocks = nn.Sequential(*[_TPAMIBlock(config.dim, config.n_head, config.mlp_hidden, config.activation,
                                                  config.qkv_bias) for _ in range(config.n_layer)])
        self.norm = nn.LayerNorm(config.dim)

    def _head_norm(self):
        return self.norm

    def embed(self, feature, unmask_ratio):
        b, c, h, w = feature.shape
        x = self.emb_proj(feature.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)  # [B, D, h, w]
        if self.mask_emb is not None:
            x = x * unmask_ratio + self.mask_emb * (1 - unmask_ratio)
        x = x + self.pos_emb.transpose(1, 2).reshape(1, -1, h, w)
        return x.flatten(2).transpose(1, 2)  # [B, L, D], row-major


def build_put(config: PUTConfig, codec: PatchVQVAE) -> PUTTransformer:
    cls = PUTTransformerCVPR if config.version == "cvpr2022" else PUTTransformerTPAMI
    return cls(config, codec)


def infer_put_config(sd: Mapping[str, torch.Tensor], options: Optional[Mapping] = None) -> PUTConfig:
    """Transformer hyperparameters from a state dict (keys without the codec); `options` from the official
    config.yaml when one was found (heads and activation are not visible in any tensor shape)."""
    options = dict(options or {})
    version = "tpami2024" if "blocks.0.attn.qkv.weight" in sd else "cvpr2022"
    dim = int(sd["emb_proj.weight"].shape[0])
    n_layer = 0
    while f"blocks.{n_layer}.norm1.weight" in sd or f"blocks.{n_layer}.ln1.weight" in sd:
        n_layer += 1
    seq = int(sd["pos_emb"].shape[1])
    side = math.isqrt(seq)
    hidden_key = "blocks.0.mlp.fc1.weight" if version == "tpami2024" else "blocks.0.mlp.0.weight"
    heads = options.get("n_head") or options.get("num_heads") or max(1, dim // 64)  # official widths: 64 per head
    activation = options.get("activation") or options.get("block_activate") or options.get("act_layer") or "GELU2"
    combine = options.get("combine_rec_and_gt")
    return PUTConfig(version=version, dim=dim, n_layer=n_layer, n_head=int(heads), token_shape=(side, seq // side),
                     num_token=int(sd["to_logits.weight"].shape[0]), mlp_hidden=int(sd[hidden_key].shape[0]),
                     activation=str(activation), qkv_bias="blocks.0.attn.q_bias" in sd,
                     learn_mask_emb="mask_emb" in sd,
                     combine_rec_and_gt=bool(version == "tpami2024" if combine is None else combine))


# ------------------------------------------------------------------------------------------------ files
# liuqk3/PUT's Solver.save writes OUTPUT/<exp>/checkpoint/last.pth (and <epoch>e_<iter>iter.pth) as
# {'last_epoch', 'last_iter', 'spend_time', 'model' (+ 'ema', 'clip_grad_norm' when configured),
# 'optimizer_and_scheduler'}; the transformer's state dict holds the P-VQVAE under content_codec.*.
# Logger.save_config writes the experiment's config as OUTPUT/<exp>/configs/config.yaml with yaml.dump
# (tuples as !!python/tuple); scripts/inference.py reads it from <checkpoint dir>/../configs/config.yaml.
PUT_HINT = ("Put a PUT transformer checkpoint in models/put: the official OUTPUT/<exp>/checkpoint/last.pth of a "
            "transformer_* / vit_* experiment (it contains the P-VQVAE), renamed as you like; keep the experiment's "
            "configs/config.yaml beside its checkpoint/ folder (or as <checkpoint name>.yaml next to it).")
# The official defaults (PatchVQGAN, VectorQuantizer, PatchConvDecoder2, both transformers) of the options
# that no tensor shape shows, and the values TransEdit computes; anything else is refused, not guessed.
PUT_SUPPORTED = {
    "resize_mask_type": ("pixel_shuffle", {"pixel_shuffle"}),
    "distance_type": ("euclidean", {"euclidean"}),
    "smooth_mask_kernel_size": (0, {0, 1}),
    "add_noise_to_image": (False, {False}),
    "encoder_partial_conv": (False, {False}),
    "attn_content_with_mask": (False, {False}),
    "input_feature_type": ("origin", {"origin"}),
    "mask_pixel_value": (None, {None}),
}


@dataclass(kw_only=True)
class PUTDescriptor(ModelDescriptor):
    """A PUT transformer (PUTTransformerCVPR / PUTTransformerTPAMI, its P-VQVAE as .content_codec)."""

    weights: str  # "ema" or "model"


@dataclass
class PUTSideConfig:
    """What an official config.yaml beside a checkpoint sets that its tensors do not show."""

    source: Optional[str]  # the file read, None when none was found
    transformer: dict  # infer_put_config options: n_head, activation, combine_rec_and_gt
    codec: dict  # PVQVAEConfig fields: masked_embed_start, im_scale / im_mean / im_std, upsample
    notes: list[str]


def put_config_candidates(path: Path) -> list[Path]:
    """Where a checkpoint's config can be: <name>.yaml beside it, config.yaml beside it, and the official
    experiment layout's ../configs/config.yaml."""
    return [path.with_suffix(".yaml"), path.parent / "config.yaml", path.parent.parent / "configs" / "config.yaml"]


def _section(params: dict, key: str, source: Path) -> dict:
    node = params.get(key) or {}
    if not isinstance(node, dict) or not isinstance(node.get("params", {}) or {}, dict):
        raise CheckpointError(source, f"its {key} is not a {{target, params}} mapping.", PUT_HINT)
    return node.get("params") or {}


def _normalisation(info, source: Path) -> dict:
    """PatchVQGAN's im_process_info {scale, mean, std} (each a number or one per channel)."""
    if not isinstance(info, dict) or set(info) - {"scale", "mean", "std"}:
        raise CheckpointError(source, f"im_process_info must be a mapping of scale / mean / std, got {info!r}.")
    default = {"scale": 127.5, "mean": 1.0, "std": 1.0}
    out = {}
    for key in ("scale", "mean", "std"):
        value = info.get(key, default[key])
        values = value if isinstance(value, (list, tuple)) else [value]
        try:
            values = [float(v) for v in values]
        except (TypeError, ValueError):
            raise CheckpointError(source, f"im_process_info.{key} must be numbers, got {value!r}.") from None
        if len(values) not in (1, 3) or (key != "mean" and any(v == 0 for v in values)):
            raise CheckpointError(source, f"im_process_info.{key} must be 1 or 3 non-zero numbers, got {value!r}.")
        out[f"im_{key}"] = tuple(values * 3 if len(values) == 1 else values)
    return out


def _put_config_from(data: dict, source: Path) -> PUTSideConfig:
    params = data["model"]["params"]
    codec_params = _section(params, "content_codec_config", source)
    quantizer = _section(codec_params, "quantizer_config", source)
    decoder = _section(codec_params, "decoder_config", source)
    options = {**params, **codec_params, **quantizer, **decoder}
    for key, (default, allowed) in PUT_SUPPORTED.items():
        value = options.get(key, default)
        if value not in allowed:
            raise CheckpointError(source, f"sets {key}: {value!r}, which TransEdit does not implement (it supports "
                                  f"{sorted(map(repr, allowed))}); its fills would not match the official code.",
                                  "Use a checkpoint trained with the official configs.")
    window = params.get("attn_window_size", [None])
    if window not in (None, [None]) and any(w is not None for w in (window if isinstance(window, list) else [window])):
        raise CheckpointError(source, f"sets attn_window_size: {window!r} (windowed attention), which TransEdit "
                              "does not implement.", "Use a checkpoint trained with the official configs.")
    heads = params.get("n_head", params.get("num_heads"))
    if not isinstance(heads, int) or heads < 1:
        raise CheckpointError(source, f"model.params has no valid n_head / num_heads (got {heads!r}).", PUT_HINT)
    transformer = {
        "n_head": heads,
        # the official default when a config leaves it out is GELU (both transformers' signatures)
        "activation": str(params.get("block_activate", params.get("act_layer", "GELU"))),
        "combine_rec_and_gt": bool(codec_params.get("combine_rec_and_gt", False)),
    }
    codec = _normalisation(codec_params.get("im_process_info", {}), source)
    if quantizer.get("masked_embed_start") is not None:
        codec["masked_embed_start"] = int(quantizer["masked_embed_start"])
    upsample = decoder.get("upsample_type", "deconv")
    if upsample not in ("deconv", "nearest", "bilinear"):
        raise CheckpointError(source, f"decoder upsample_type {upsample!r} is not one of deconv / nearest / bilinear.")
    codec["upsample"] = upsample
    shown = {**transformer, **codec}
    return PUTSideConfig(str(source), transformer, codec, [f"options from {source}: " + ", ".join(
        f"{k} {list(v) if isinstance(v, tuple) else v}" for k, v in shown.items())])


def read_put_config(path) -> PUTSideConfig:
    """The official config of the checkpoint at `path` (see put_config_candidates). A file that cannot be read
    safely is an error (never skipped silently); a YAML that is not a PUT transformer config is passed over
    with a note saying so."""
    path = Path(path)
    notes = []
    for cand in put_config_candidates(path):
        if not cand.is_file():
            continue
        data = read_official_yaml(cand)
        model = data.get("model")
        params = model.get("params") if isinstance(model, dict) else None
        if not isinstance(params, dict) or "content_codec_config" not in params:
            what = "a P-VQVAE config" if isinstance(params, dict) and "encoder_config" in params else \
                "not a PUT transformer config (no model.params.content_codec_config)"
            notes.append(f"{cand} not used: it is {what}")
            continue
        side = _put_config_from(data, cand)
        side.notes[:0] = notes
        return side
    notes.append("no config.yaml beside the checkpoint (looked for " + ", ".join(
        str(c) for c in put_config_candidates(path)) + "): heads = width / 64, GELU2, FFHQ normalisation "
        "(x / 127.5 - 1) and the codebook split of the official models")
    return PUTSideConfig(None, {}, {}, notes)


def detect(raw: RawCheckpoint) -> bool:
    """A PUT transformer (to_logits + emb_proj), or a P-VQVAE alone (refused by `load` with the reason)."""
    for sd in raw.state_dicts.values():
        if "to_logits.weight" in sd and "emb_proj.weight" in sd:
            return True
        if any(k.startswith("encoder.pre_layers.") for k in sd) and any(k.startswith("quantize.") for k in sd):
            return True
    return False


def load(raw: RawCheckpoint, **overrides) -> PUTDescriptor:
    """A PUT transformer (CVPR 2022 or TPAMI 2024) with its P-VQVAE from an official checkpoint (or a
    safetensors of its state dict); EMA weights when the file has them; the official config.yaml beside it
    read for what the weights do not show. `overrides` replace config values (n_head, activation,
    combine_rec_and_gt, or P-VQVAE fields)."""
    path = Path(raw.path)
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
    codec_sd = strip_prefix(sd, "content_codec.")
    if not codec_sd:
        raise CheckpointError(path, "holds a PUT transformer without its P-VQVAE (no content_codec.* weights); "
                              "use the full checkpoint the official training wrote.", PUT_HINT)
    side = read_put_config(path)
    codec_fields = {"masked_embed_start", "im_scale", "im_mean", "im_std", "upsample"}
    transformer_options = {**side.transformer, **{k: v for k, v in overrides.items() if k not in codec_fields}}
    codec_over = {**side.codec, **{k: v for k, v in overrides.items() if k in codec_fields}}
    # the transformer predicts exactly the codebook's unmasked codes, so its class count is the split
    codec_over.setdefault("masked_embed_start", int(sd["to_logits.weight"].shape[0]))
    inferred = infer_pvqvae_config(codec_sd)
    upsample = codec_over.get("upsample", inferred.upsample)
    if (upsample == "deconv") != (inferred.upsample == "deconv"):
        raise CheckpointError(path, f"its config says upsample_type {upsample!r} but the decoder's weights are "
                              f"{'transposed convolutions' if inferred.upsample == 'deconv' else 'resize + conv'}; "
                              "the config belongs to another model.", PUT_HINT)
    codec = PatchVQVAE(infer_pvqvae_config(codec_sd, **codec_over))
    check_weight_dtypes(path, codec, codec_sd)
    result = codec.load_state_dict(codec_sd, strict=False)
    problems = [k for k in result.missing_keys] + [k for k in result.unexpected_keys if not k.startswith("loss.")]
    if problems:
        raise CheckpointError(path, f"its P-VQVAE weights do not match the layout inferred from their shapes "
                              f"({problems[:3]}).", PUT_HINT)
    tsd = {k: v for k, v in sd.items() if not k.startswith("content_codec.")}
    config = infer_put_config(tsd, transformer_options)
    model = build_put(config, codec)
    check_weight_dtypes(path, model, sd)
    result = model.load_state_dict(sd, strict=False)
    missing = [k for k in result.missing_keys]
    unexpected = [k for k in result.unexpected_keys if not k.startswith("content_codec.loss.")]
    if missing or unexpected:
        raise CheckpointError(path, f"PUT transformer weights do not match the inferred {config.version} layout "
                              f"(missing {missing[:3]}, unexpected {unexpected[:3]}).", PUT_HINT)
    notes = list(side.notes)
    if overrides:
        notes.append(f"overridden by the caller: {overrides}")
    if name == "ema":
        notes.append("using the EMA weights")
    return PUTDescriptor(family="put", model=model.eval().requires_grad_(False), config=config, source=str(path),
                         weights=name, notes=notes)
