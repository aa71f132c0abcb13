"""StylePrompter encoder: a SwinV2-style backbone whose latent tokens ride along in every window.

Reimplemented in pure PyTorch from the paper's description and the checkpoint layout (key names match
the official checkpoint after stripping ``encoder.module.``), so official weights load strictly.

Architecture summary (what the checkpoint implies):

* patch embedding: conv(patch, stride patch) -> row-major flatten -> LayerNorm; no absolute position.
* ``latent_tok`` [T, C0]: learned tokens (T = n_latent of the target generator), the same for every image.
* each stage: SwinV2 blocks (cosine attention with a clamped learnable logit scale, continuous
  relative-position bias from ``cpb_mlp``, res-post-norm) then PatchMerging except in the last stage.
  Effective window = min(grid, window); shift (window//2 on odd blocks) only where grid > window.
* every window attends over its ws*ws patch tokens followed by the T latent tokens. Position bias and
  the shift mask apply to the patch x patch block only. The latent-token outputs are summed over the
  windows *of the same image*, normed with norm1 and added to the tokens; tokens skip the MLP.
  (The official code pairs windows and tokens across batch items when B > 1; here each image only ever
  sees its own windows, so a batch gives exactly the per-image results.)
* ``dim_up_layers[i]`` (Linear C->2C, LayerNorm) lift the tokens between stages.
* ``prediction_head``: Linear -> tanh -> Linear -> tanh -> Linear per token, then + latent_avg.

``forward(x, return_features=True)`` returns ``(codes, features)`` with the features in the order SMART
consumes them: [last stage (G/8 x G/8, 8C), stage 2 after merging (8C), stage 1 after merging (4C),
stage 0 after merging (2C)] for a 4-stage model, each (B, h*w, c) row-major.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Mapping, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .latent_encoder import EncoderFamily

ENCODER_PREFIX = "encoder.module."
GENERATOR_PREFIXES = ("decoder.module.generator.", "decoder.module.")
SMART_PREFIX = "decoder.module.smart_block."

_LOGIT_SCALE_MAX = math.log(100.0)


# --------------------------------------------------------------------------------------------- config
@dataclass
class StylePrompterConfig:
    embed_dim: int = 96
    depths: Sequence[int] = (2, 2, 6, 2)
    num_heads: Sequence[int] = (3, 6, 12, 24)
    n_latent: int = 18
    img_size: int = 256
    patch_size: int = 4
    in_chans: int = 3
    window_size: int = 16
    mlp_ratio: float = 4.0
    cpb_hidden: int = 512
    head_layers: int = 3
    head_hidden: int = 1024
    style_dim: int = 512
    qkv_bias: bool = True

    def __post_init__(self):
        self.depths = tuple(int(d) for d in self.depths)
        self.num_heads = tuple(int(h) for h in self.num_heads)
        if len(self.depths) != len(self.num_heads):
            raise ValueError("depths and num_heads must have one entry per stage")
        if self.img_size % self.patch_size:
            raise ValueError("img_size must be a multiple of patch_size")
        grid = self.img_size // self.patch_size
        if grid % (2 ** (self.num_stages - 1)):
            raise ValueError("the patch grid must halve evenly at every stage")

    @property
    def num_stages(self) -> int:
        return len(self.depths)

    def stage_dim(self, i: int) -> int:
        return self.embed_dim * 2 ** i

    def stage_grid(self, i: int) -> int:
        return self.img_size // self.patch_size // 2 ** i

    def stage_window(self, i: int) -> int:
        return min(self.window_size, self.stage_grid(i))

    def stage_shift(self, i: int, block: int) -> int:
        if block % 2 == 0 or self.stage_grid(i) <= self.window_size:
            return 0
        return self.window_size // 2

    def feature_shapes(self) -> list[tuple[int, int]]:
        """(side, channels) of the features as returned (SMART order: deepest first)."""
        out = []
        for i in range(self.num_stages):
            last = i == self.num_stages - 1
            out.append((self.stage_grid(i) // (1 if last else 2), self.stage_dim(i) * (1 if last else 2)))
        return out[::-1]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["depths"], d["num_heads"] = list(self.depths), list(self.num_heads)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "StylePrompterConfig":
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


def infer_styleprompter_config(encoder_sd: Mapping[str, torch.Tensor], opts: Optional[Mapping] = None,
                               **overrides) -> StylePrompterConfig:
    """Every hyperparameter from the encoder state dict's shapes (keys without ``encoder.module.``).

    img_size comes from a shifted block's mask (windows per image) or, failing that, from a last stage
    whose window was clipped to its grid; otherwise opts["img_size"] or 256. window_size is stage 0's
    (2*ws-1) coordinate table.
    """
    sd = strip_prefix(encoder_sd, ENCODER_PREFIX) if any(k.startswith(ENCODER_PREFIX) for k in encoder_sd) \
        else encoder_sd
    opts = dict(opts or {})
    try:
        w = sd["patch_embed.proj.weight"]
        embed_dim, in_chans, patch = int(w.shape[0]), int(w.shape[1]), int(w.shape[-1])
        n_latent = int(sd["latent_tok"].shape[0])
        depths, heads, windows = [], [], []
        while f"layers.{len(depths)}.blocks.0.norm1.weight" in sd:
            i = len(depths)
            d = 0
            while f"layers.{i}.blocks.{d}.norm1.weight" in sd:
                d += 1
            depths.append(d)
            heads.append(int(sd[f"layers.{i}.blocks.0.attn.cpb_mlp.2.weight"].shape[0]))
            windows.append((int(sd[f"layers.{i}.blocks.0.attn.relative_coords_table"].shape[1]) + 1) // 2)
        cpb_hidden = int(sd["layers.0.blocks.0.attn.cpb_mlp.0.weight"].shape[0])
        mlp_ratio = sd["layers.0.blocks.0.mlp.fc1.weight"].shape[0] / embed_dim
        head_layers = 0
        while f"prediction_head.layers.{head_layers}.weight" in sd:
            head_layers += 1
        head_hidden = int(sd["prediction_head.layers.0.weight"].shape[0])
        style_dim = int(sd[f"prediction_head.layers.{head_layers - 1}.weight"].shape[0])
        qkv_bias = "layers.0.blocks.0.attn.q_bias" in sd
    except (KeyError, IndexError) as e:
        raise ValueError(f"not a StylePrompter encoder state dict (missing {e})") from None
    if not depths:
        raise ValueError("not a StylePrompter encoder state dict (no layers.*.blocks.*)")
    window = windows[0]
    img_size = None
    for i, d in enumerate(depths):
        for b in range(d):
            m = sd.get(f"layers.{i}.blocks.{b}.attn_mask")
            if m is not None and img_size is None:
                n_w = int(round(math.sqrt(m.shape[0])))
                img_size = n_w * windows[i] * 2 ** i * patch
    if img_size is None and windows[-1] < window:
        img_size = windows[-1] * 2 ** (len(depths) - 1) * patch
    if img_size is None:
        img_size = int(opts.get("img_size", 256))
    cfg = dict(embed_dim=embed_dim, depths=depths, num_heads=heads, n_latent=n_latent, img_size=img_size,
               patch_size=patch, in_chans=in_chans, window_size=window, mlp_ratio=mlp_ratio,
               cpb_hidden=cpb_hidden, head_layers=head_layers, head_hidden=head_hidden, style_dim=style_dim,
               qkv_bias=qkv_bias)
    cfg.update(overrides)
    return StylePrompterConfig(**cfg)


def strip_prefix(sd: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def split_styleprompter_state_dict(sd: Mapping[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """Official container state_dict -> {"encoder", "generator", "smart"} (smart empty for baseline)."""
    enc = strip_prefix(sd, ENCODER_PREFIX)
    smart = strip_prefix(sd, SMART_PREFIX)
    if any(k.startswith(GENERATOR_PREFIXES[0]) for k in sd):
        gen = strip_prefix(sd, GENERATOR_PREFIXES[0])
    else:  # baseline layout: decoder.module.<G>
        gen = {k: v for k, v in strip_prefix(sd, GENERATOR_PREFIXES[1]).items()
               if not k.startswith("smart_block.")}
    return {"encoder": enc, "generator": gen, "smart": smart}


# --------------------------------------------------------------------------------------------- helpers
def _coords_table(ws: int) -> torch.Tensor:
    """[1, 2ws-1, 2ws-1, 2] log-spaced relative offsets (pretrained window 0 -> divide by ws-1)."""
    r = torch.arange(-(ws - 1), ws, dtype=torch.float32)
    t = torch.stack(torch.meshgrid(r, r, indexing="ij"), dim=-1).unsqueeze(0)
    t = t / max(ws - 1, 1) * 8
    return torch.sign(t) * torch.log2(t.abs() + 1.0) / math.log2(8)


def _position_index(ws: int) -> torch.Tensor:
    """[ws*ws, ws*ws] int64 index into the (2ws-1)^2 table for every pair of window positions."""
    ys, xs = torch.meshgrid(torch.arange(ws), torch.arange(ws), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    dh = ys[:, None] - ys[None, :] + ws - 1
    dw = xs[:, None] - xs[None, :] + ws - 1
    return dh * (2 * ws - 1) + dw


def _shift_mask(grid: int, ws: int, shift: int) -> torch.Tensor:
    """[nW, ws*ws, ws*ws] 0/-100 mask keeping shifted windows from mixing the 9 rolled regions."""
    region = torch.zeros(grid, grid)
    bounds = ((0, grid - ws), (grid - ws, grid - shift), (grid - shift, grid))
    label = 0
    for h0, h1 in bounds:
        for w0, w1 in bounds:
            region[h0:h1, w0:w1] = label
            label += 1
    win = _partition(region.view(1, grid, grid, 1), ws).view(-1, ws * ws)
    diff = win[:, None, :] - win[:, :, None]
    return torch.where(diff != 0, torch.tensor(-100.0), torch.tensor(0.0))


def _partition(x: torch.Tensor, ws: int) -> torch.Tensor:
    """[B, H, W, C] -> [B * nW, ws, ws, C], windows batch-major then row-major."""
    b, h, w, c = x.shape
    x = x.view(b, h // ws, ws, w // ws, ws, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, ws, ws, c)


def _unpartition(x: torch.Tensor, ws: int, h: int, w: int) -> torch.Tensor:
    b = x.shape[0] // ((h // ws) * (w // ws))
    x = x.view(b, h // ws, w // ws, ws, ws, -1).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h, w, -1)


# --------------------------------------------------------------------------------------------- modules
class PatchEmbed(nn.Module):
    def __init__(self, patch: int, in_chans: int, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, patch, stride=patch)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x).flatten(2).transpose(1, 2))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class WindowAttention(nn.Module):
    """Cosine window attention over [ws*ws patch tokens, T latent tokens] per window."""

    def __init__(self, dim: int, ws: int, heads: int, cpb_hidden: int = 512, qkv_bias: bool = True):
        super().__init__()
        self.dim, self.ws, self.heads = dim, ws, heads
        self.logit_scale = nn.Parameter(torch.full((heads, 1, 1), math.log(10.0)))
        self.cpb_mlp = nn.Sequential(nn.Linear(2, cpb_hidden), nn.ReLU(inplace=True),
                                     nn.Linear(cpb_hidden, heads, bias=False))
        self.register_buffer("relative_coords_table", _coords_table(ws))
        self.register_buffer("relative_position_index", _position_index(ws))
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        if qkv_bias:
            self.q_bias = nn.Parameter(torch.zeros(dim))
            self.v_bias = nn.Parameter(torch.zeros(dim))
        else:
            self.q_bias = self.v_bias = None
        self.proj = nn.Linear(dim, dim)

    def position_bias(self) -> torch.Tensor:
        """[heads, ws*ws, ws*ws] = 16 * sigmoid(cpb_mlp(table))[index]."""
        n = self.ws * self.ws
        table = self.cpb_mlp(self.relative_coords_table).view(-1, self.heads)
        bias = table[self.relative_position_index.view(-1)].view(n, n, self.heads).permute(2, 0, 1)
        return 16 * torch.sigmoid(bias)

    def forward(self, x: torch.Tensor, n_images: int, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x [B*nW, N, C] (N = ws*ws + T), mask [nW, ws*ws, ws*ws] or None -> [B*nW, N, C]."""
        bw, n, c = x.shape
        npatch = self.ws * self.ws
        bias = None
        if self.q_bias is not None:
            bias = torch.cat((self.q_bias, torch.zeros_like(self.v_bias), self.v_bias))
        qkv = F.linear(x, self.qkv.weight, bias).view(bw, n, 3, self.heads, c // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        scale = torch.clamp(self.logit_scale, max=_LOGIT_SCALE_MAX).exp()  # [heads, 1, 1]
        # cosine attention normalised in fp32: F.normalize's eps (1e-12) is 0 in fp16, so a zero row (a latent
        # token, for one) would give 0/0 = NaN there; the products go back to the compute dtype for SDPA
        q = (F.normalize(q.float(), dim=-1) * scale).to(v.dtype)
        k = F.normalize(k.float(), dim=-1).to(v.dtype)

        # additive bias over the full (N x N) logits; latent rows/columns get none
        pb = self.position_bias().to(q.dtype)
        if mask is not None:
            nw = mask.shape[0]
            block = pb.unsqueeze(0) + mask.to(q.dtype).unsqueeze(1)  # [nW, heads, P, P]
        else:
            nw = 1
            block = pb.unsqueeze(0)
        add = q.new_zeros(nw, self.heads, n, n)
        add[:, :, :npatch, :npatch] = block
        if nw > 1:  # one bias per window position, broadcast over the images (no per-image copy of it)
            b = bw // nw
            shape = (b, nw, self.heads, n, c // self.heads)
            out = F.scaled_dot_product_attention(q.reshape(shape), k.reshape(shape), v.reshape(shape),
                                                 attn_mask=add, scale=1.0).reshape(bw, self.heads, n, -1)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=add, scale=1.0)
        return self.proj(out.transpose(1, 2).reshape(bw, n, c))


class SwinBlock(nn.Module):
    def __init__(self, dim: int, grid: int, heads: int, ws: int, shift: int, mlp_ratio: float,
                 cpb_hidden: int, qkv_bias: bool):
        super().__init__()
        self.grid, self.ws, self.shift = grid, ws, shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, ws, heads, cpb_hidden, qkv_bias)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        if shift > 0:
            self.register_buffer("attn_mask", _shift_mask(grid, ws, shift))
        else:
            self.attn_mask = None

    def forward(self, x: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, G*G, C], tokens [B, T, C]."""
        b, l, c = x.shape
        g, ws, s = self.grid, self.ws, self.shift
        t = tokens.shape[1]
        h = x.view(b, g, g, c)
        if s:
            h = torch.roll(h, shifts=(-s, -s), dims=(1, 2))
        win = _partition(h, ws).view(-1, ws * ws, c)
        nw = win.shape[0] // b
        # each image's windows are paired with that image's own tokens
        tok = tokens.unsqueeze(1).expand(b, nw, t, c).reshape(b * nw, t, c)
        out = self.attn(torch.cat([win, tok], dim=1), b, self.attn_mask)
        tok_out = out[:, ws * ws:].reshape(b, nw, t, c).sum(1)
        tokens = tokens + self.norm1(tok_out)
        h = _unpartition(out[:, :ws * ws].reshape(-1, ws, ws, c), ws, g, g)
        if s:
            h = torch.roll(h, shifts=(s, s), dims=(1, 2))
        x = x + self.norm1(h.reshape(b, l, c))
        x = x + self.norm2(self.mlp(x))
        return x, tokens


class PatchMerging(nn.Module):
    def __init__(self, grid: int, dim: int):
        super().__init__()
        self.grid = grid
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(2 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, c = x.shape
        h = x.view(b, self.grid, self.grid, c)
        h = torch.cat([h[:, 0::2, 0::2], h[:, 1::2, 0::2], h[:, 0::2, 1::2], h[:, 1::2, 1::2]], dim=-1)
        return self.norm(self.reduction(h.view(b, -1, 4 * c)))


class Stage(nn.Module):
    def __init__(self, cfg: StylePrompterConfig, i: int):
        super().__init__()
        dim, grid, ws = cfg.stage_dim(i), cfg.stage_grid(i), cfg.stage_window(i)
        self.blocks = nn.ModuleList(
            SwinBlock(dim, grid, cfg.num_heads[i], ws, cfg.stage_shift(i, j), cfg.mlp_ratio, cfg.cpb_hidden,
                      cfg.qkv_bias) for j in range(cfg.depths[i]))
        self.downsample = PatchMerging(grid, dim) if i < cfg.num_stages - 1 else None


class PredictionHead(nn.Module):
    def __init__(self, n_layers: int, in_dim: int, hidden: int, out_dim: int):
        super().__init__()
        dims = [in_dim] + [hidden] * (n_layers - 1) + [out_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x):
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = torch.tanh(x)
        return x


class StylePrompterEncoder(nn.Module):
    """Image [B, 3, S, S] in [-1, 1] -> W+ codes [B, n_latent, style_dim] (+ multi-scale features).

    ``latent_avg`` is a non-persistent buffer (it lives at the checkpoint's top level, not in the encoder
    state dict); set it with :meth:`set_latent_avg`. Until then codes are the raw head output.
    """

    def __init__(self, config: StylePrompterConfig, latent_avg: Optional[torch.Tensor] = None):
        super().__init__()
        self.config = cfg = config
        self.patch_embed = PatchEmbed(cfg.patch_size, cfg.in_chans, cfg.embed_dim)
        self.layers = nn.ModuleList(Stage(cfg, i) for i in range(cfg.num_stages))
        self.latent_tok = nn.Parameter(torch.zeros(cfg.n_latent, cfg.embed_dim))
        self.dim_up_layers = nn.ModuleList(
            nn.Sequential(nn.Linear(cfg.stage_dim(i), cfg.stage_dim(i) * 2), nn.LayerNorm(cfg.stage_dim(i) * 2))
            for i in range(cfg.num_stages - 1))
        self.prediction_head = PredictionHead(cfg.head_layers, cfg.stage_dim(cfg.num_stages - 1), cfg.head_hidden,
                                              cfg.style_dim)
        self.register_buffer("latent_avg", torch.zeros(cfg.style_dim), persistent=False)
        self.has_latent_avg = False
        if latent_avg is not None:
            self.set_latent_avg(latent_avg)

    @property
    def n_latent(self) -> int:
        return self.config.n_latent

    @property
    def style_dim(self) -> int:
        return self.config.style_dim

    def set_latent_avg(self, latent_avg: Optional[torch.Tensor]) -> "StylePrompterEncoder":
        if latent_avg is None:
            self.latent_avg.zero_()
            self.has_latent_avg = False
        else:
            self.latent_avg.copy_(latent_avg.reshape(-1).to(self.latent_avg))
            self.has_latent_avg = True
        return self

    def forward(self, x: torch.Tensor, return_features: bool = False, with_latent_avg: bool = True,
                intermediates: Optional[dict] = None):
        """x [B, C, S, S] -> codes [B, n_latent, style_dim], or (codes, features) with return_features.

        features: list (deepest first, SMART's order), each [B, h*w, c]. Pass a dict as
        ``intermediates`` to collect every block/dim_up output (names as in the parity fixtures).
        """
        cfg = self.config
        if x.ndim != 4 or x.shape[1:] != (cfg.in_chans, cfg.img_size, cfg.img_size):
            raise ValueError(f"expected [B, {cfg.in_chans}, {cfg.img_size}, {cfg.img_size}], got {tuple(x.shape)}")
        b = x.shape[0]
        h = self.patch_embed(x)
        tokens = self.latent_tok.unsqueeze(0).expand(b, -1, -1).to(h.dtype)
        if intermediates is not None:
            intermediates["enc.patch_embed"] = h
        features = []
        for i, stage in enumerate(self.layers):
            for j, block in enumerate(stage.blocks):
                h, tokens = block(h, tokens)
                if intermediates is not None:
                    intermediates[f"enc.layers.{i}.blocks.{j}.x"] = h
                    intermediates[f"enc.layers.{i}.blocks.{j}.tokens"] = tokens
            if stage.downsample is not None:
                h = stage.downsample(h)
            features.append(h)
            if i < cfg.num_stages - 1:
                tokens = self.dim_up_layers[i](tokens)
                if intermediates is not None:
                    intermediates[f"enc.dim_up.{i}"] = tokens
        codes = self.prediction_head(tokens)
        if intermediates is not None:
            intermediates["codes_raw"] = codes
        if with_latent_avg and self.has_latent_avg:
            codes = codes + self.latent_avg.to(codes.dtype)
        features = features[::-1]
        return (codes, features) if return_features else codes


# ------------------------------------------------------------------------------------------------ files
# The official checkpoints (I2-Multimedia-Lab/StylePrompter): {'state_dict': encoder.* + decoder.*
# (full: decoder.generator.* and decoder.smart_block.*), 'opts', 'latent_avg'}.
def _is_styleprompter(sd: dict, opts: dict) -> bool:
    return "latent_tok" in sd and any(k.startswith("layers.0.blocks.") for k in sd)


def _build_encoder(sd: dict, opts: dict):
    config = infer_styleprompter_config(sd, opts)
    return config, StylePrompterEncoder(config)


ENCODER = EncoderFamily("styleprompter", _is_styleprompter, _build_encoder)
