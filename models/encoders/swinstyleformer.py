"""SwinStyleformer (Mao et al., IEEE TCSVT 2024, arXiv 2406.13153), implemented from the paper: there is no
public code and there are no public weights, so TransEdit builds it and `transedit.train` trains it.

What the paper states, and how it is built here:

- **Pure-transformer inversion network on a Swin backbone with a smaller window** than the standard Swin
  (7, or 8 at 256²), to recover local detail: timm's Swin Transformer blocks (shifted windows, relative
  position bias, SDPA attention) with ``window_size = 4`` by default. At 256² input with 4×4 patches the
  stages are 64², 32², 16², 8² tokens; 4 divides every stage, so every stage keeps its shifted windows.
- **Multi-scale connections** when extracting the feature maps: a top-down feature pyramid over the four
  stages (1×1 lateral projections to ``pyramid_dim``, upsample-and-add from the deepest, a LayerNorm per
  level), so every level carries both the deep semantics and its own resolution's detail.
- **Map-to-style with learnable queries**: instead of self-attention over image tokens, each W+ code has a
  learnable query vector; transformer decoder blocks (query self-attention, cross-attention from the queries
  to one pyramid level's tokens, MLP; pre-norm) turn the queries into the codes, and a linear head maps them
  to ``style_dim``. The codes are predicted as offsets from the generator's mean latent (``latent_avg`` is
  added by :class:`~transedit.models.encoders.latent_encoder.LatentEncoder`), as in pSp/e4e/Style Transformer.
- **Inversion discriminator + distribution alignment loss**: see ``transedit.train`` — the discriminator is a
  latent-code MLP (e4e's design) trained against W samples from the generator's mapping network, and the
  alignment loss matches the first two moments (mean and covariance) of the predicted codes to W's.

Choices the public text leaves open, as named configuration values (why in brackets):

- ``window_size = 4`` ("smaller than standard"; the largest power of two below Swin-T's 7/8 that divides every
  stage at 256²);
- Swin-T widths: ``embed_dim 96, depths (2, 2, 6, 2), heads (3, 6, 12, 24)`` (the paper's backbone size);
- ``level_of_group = (3, 2, 1)``: coarse codes (0..3, pose/shape) read the deepest level (8², stage 4),
  middle codes (4..7) the 16² level, fine codes (8..) the 32² level — pSp's coarse/middle/fine split, which
  StyleGAN's layer semantics imply; ``group_bounds = (4, 8)``;
- ``decoder_depth = 2`` decoder blocks per group, ``pyramid_dim = style_dim`` (512 for FFHQ 1024), 8 heads.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .latent_encoder import EncoderFamily


@dataclass
class SwinStyleformerConfig:
    img_size: int = 256
    patch_size: int = 4
    embed_dim: int = 96
    depths: tuple = (2, 2, 6, 2)
    num_heads: tuple = (3, 6, 12, 24)
    window_size: int = 4
    mlp_ratio: float = 4.0
    drop_path_rate: float = 0.1
    n_latent: int = 18
    style_dim: int = 512
    pyramid_dim: Optional[int] = None  # None = style_dim
    decoder_depth: int = 2
    decoder_heads: int = 8
    group_bounds: tuple = (4, 8)  # codes [0, 4) coarse, [4, 8) middle, [8, n) fine
    level_of_group: tuple = (3, 2, 1)  # pyramid level (0 = finest, 64² at 256²) each group attends to
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        self.depths, self.num_heads = tuple(self.depths), tuple(self.num_heads)
        self.group_bounds, self.level_of_group = tuple(self.group_bounds), tuple(self.level_of_group)
        grid = self.img_size // self.patch_size
        for stage in range(len(self.depths)):
            side = grid // 2 ** stage
            if side % self.window_size and side > self.window_size:
                raise ValueError(f"window_size {self.window_size} does not divide stage {stage}'s {side}x{side} grid")
        if len(self.level_of_group) != len(self.group_bounds) + 1:
            raise ValueError("level_of_group needs one level per code group (len(group_bounds) + 1)")

    @property
    def width(self) -> int:
        return self.pyramid_dim or self.style_dim

    def to_dict(self) -> dict:
        d = asdict(self)
        for k in ("depths", "num_heads", "group_bounds", "level_of_group"):
            d[k] = list(d[k])
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "SwinStyleformerConfig":
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})

    @classmethod
    def preset(cls, name: str, n_latent: int = 18, style_dim: int = 512) -> "SwinStyleformerConfig":
        """'swin_t' (the paper's size at 256²) or 'tiny' (tests)."""
        if name == "swin_t":
            return cls(n_latent=n_latent, style_dim=style_dim)
        if name == "tiny":
            return cls(img_size=64, embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 2, 2, 4), window_size=2,
                       n_latent=n_latent, style_dim=style_dim, decoder_depth=1, decoder_heads=2,
                       drop_path_rate=0.0)
        raise ValueError(f"unknown SwinStyleformer preset {name!r} (swin_t, tiny)")


class _QueryDecoderBlock(nn.Module):
    """Learnable queries: self-attention among them, cross-attention into image tokens, MLP (pre-norm)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm_self = nn.LayerNorm(dim)
        self.self_attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(dim)
        self.cross_attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm_mlp = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, int(dim * mlp_ratio)), nn.GELU(), nn.Linear(int(dim * mlp_ratio), dim))

    def forward(self, q: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        h = self.norm_self(q)
        q = q + self.self_attn(h, h, h, need_weights=False)[0]
        kv = self.norm_kv(tokens)
        q = q + self.cross_attn(self.norm_q(q), kv, kv, need_weights=False)[0]
        return q + self.mlp(self.norm_mlp(q))


class SwinStyleformerEncoder(nn.Module):
    """Image [B, 3, H, W] in [-1, 1] -> W+ offsets [B, n_latent, style_dim] (LatentEncoder adds latent_avg)."""

    def __init__(self, config: SwinStyleformerConfig):
        super().__init__()
        from timm.models.swin_transformer import SwinTransformer

        self.config = c = config
        self.n_latent, self.style_dim = c.n_latent, c.style_dim
        self.backbone = SwinTransformer(img_size=c.img_size, patch_size=c.patch_size, embed_dim=c.embed_dim,
                                        depths=c.depths, num_heads=c.num_heads, window_size=c.window_size,
                                        mlp_ratio=c.mlp_ratio, drop_path_rate=c.drop_path_rate, num_classes=0)
        self.backbone.head = nn.Identity()
        self.backbone.norm = nn.Identity()  # the pyramid normalises every level itself
        widths = [c.embed_dim * 2 ** i for i in range(len(c.depths))]
        d = c.width
        # code groups that have codes for this generator (a 256-px generator has no fine group), and the
        # pyramid levels they read: only those (and the levels between them and the deepest) are built
        bounds = (0, *c.group_bounds, c.n_latent)
        self.groups = [(min(bounds[g], c.n_latent), min(bounds[g + 1], c.n_latent), c.level_of_group[g])
                       for g in range(len(bounds) - 1) if min(bounds[g + 1], c.n_latent) > min(bounds[g], c.n_latent)]
        self.finest = min(level for _, _, level in self.groups)
        self.lateral = nn.ModuleList([nn.Linear(w, d) for w in widths[self.finest:]])
        self.level_norm = nn.ModuleList([nn.LayerNorm(d) for _ in widths[self.finest:]])
        self.queries = nn.Parameter(torch.randn(c.n_latent, d) * 0.02)
        self.level_embed = nn.Parameter(torch.zeros(len(widths) - self.finest, d))
        self.decoders = nn.ModuleList([
            nn.ModuleList([_QueryDecoderBlock(d, c.decoder_heads) for _ in range(c.decoder_depth)])
            for _ in self.groups])
        self.out_norm = nn.LayerNorm(d)
        self.to_style = nn.Linear(d, c.style_dim)
        nn.init.zeros_(self.to_style.weight)  # start at latent_avg: a stable first step for every family
        nn.init.zeros_(self.to_style.bias)

    @property
    def input_size(self) -> int:
        return self.config.img_size

    def pyramid(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Top-down feature pyramid from the finest level any code group reads to the deepest, finest first:
        [B, h_i, w_i, D] per level (index 0 = stage `self.finest`)."""
        h = self.backbone.patch_embed(x)
        stages = []
        for layer in self.backbone.layers:
            h = layer(h)
            stages.append(h)
        levels = [lat(s) for lat, s in zip(self.lateral, stages[self.finest:])]
        for i in range(len(levels) - 2, -1, -1):  # deepest -> finest: add the upsampled coarser level
            up = F.interpolate(levels[i + 1].permute(0, 3, 1, 2), size=levels[i].shape[1:3], mode="nearest")
            levels[i] = levels[i] + up.permute(0, 2, 3, 1)
        return [norm(lv) + emb for norm, lv, emb in zip(self.level_norm, levels, self.level_embed)]

    def forward(self, x: torch.Tensor, return_features: bool = False):
        """-> codes [B, n_latent, style_dim], or (codes, pyramid levels [B, D, h, w] finest first)."""
        c = self.config
        if x.shape[-2:] != (c.img_size, c.img_size):
            x = F.interpolate(x, size=(c.img_size, c.img_size), mode="bilinear", align_corners=False, antialias=True)
        levels = self.pyramid(x)
        b = x.shape[0]
        codes = []
        for (lo, hi, level), blocks in zip(self.groups, self.decoders):
            tokens = levels[level - self.finest].flatten(1, 2)
            q = self.queries[lo:hi].unsqueeze(0).expand(b, -1, -1)
            for block in blocks:
                q = block(q, tokens)
            codes.append(q)
        out = self.to_style(self.out_norm(torch.cat(codes, 1)))
        if return_features:
            return out, [lv.permute(0, 3, 1, 2) for lv in levels]
        return out


def infer_swinstyleformer_config(sd: dict, opts: Optional[dict] = None) -> SwinStyleformerConfig:
    """The config is stored in the exported file's metadata (the model has no official checkpoints)."""
    opts = dict(opts or {})
    if "swinstyleformer_config" not in opts:
        raise ValueError("a SwinStyleformer file must carry its config (written by transedit.train)")
    return SwinStyleformerConfig.from_dict(opts["swinstyleformer_config"])


def is_swinstyleformer_state_dict(sd: dict) -> bool:
    return "queries" in sd and any(k.startswith("backbone.layers.") for k in sd) and "to_style.weight" in sd


def load_backbone_weights(encoder: SwinStyleformerEncoder, path) -> dict:
    """Initialise the Swin backbone from a local timm / official Swin checkpoint (e.g. swin_tiny_patch4_window7_224):
    tensors of the same shape are copied, relative-position bias tables are resized to this window
    (bicubic, as when fine-tuning Swin at another window), the classifier head and final norm are ignored.
    Returns counts {copied, resized, skipped}."""
    from ..core.checkpoint_io import load_plain_state_dict

    own = encoder.backbone.state_dict()
    loaded, counts = {}, {"copied": 0, "resized": 0, "skipped": 0}
    for k, v in load_plain_state_dict(path).items():
        k = k[len("backbone."):] if k.startswith("backbone.") else k
        if k not in own:
            counts["skipped"] += 1
            continue
        if v.shape == own[k].shape:
            loaded[k] = v
            counts["copied"] += 1
        elif k.endswith("relative_position_bias_table"):
            old, new = int(round(v.shape[0] ** 0.5)), int(round(own[k].shape[0] ** 0.5))
            grid = v.T.reshape(1, v.shape[1], old, old)
            loaded[k] = F.interpolate(grid, size=(new, new), mode="bicubic", align_corners=False).reshape(
                v.shape[1], new * new).T
            counts["resized"] += 1
        else:
            counts["skipped"] += 1
    encoder.backbone.load_state_dict(loaded, strict=False)
    if counts["copied"] == 0:
        raise ValueError(f"{path}: no tensor matches this Swin backbone (widths/depths differ?)")
    return counts


def _build_encoder(sd: dict, opts: dict):
    config = infer_swinstyleformer_config(sd, opts)
    return config, SwinStyleformerEncoder(config)


ENCODER = EncoderFamily("swinstyleformer", lambda sd, opts: is_swinstyleformer_state_dict(sd), _build_encoder)
