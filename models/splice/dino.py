"""DINO ViT (Caron et al. 2021) as Splice's feature extractor, built on timm's VisionTransformer.

The weights are DINO's own key layout (`cls_token`, `pos_embed`, `patch_embed.proj.*`, `blocks.i.*`,
`norm.*`), which is also timm's, so the original `.pth` state dicts and timm's `.safetensors` both load
strictly into the same module. The forward is ours rather than timm's because Splice needs three things
timm does not give in one pass:

- any input size, with DINO's *own* position-embedding interpolation (bicubic with a `+0.1` scale factor,
  which differs from timm's resampling by up to ~1e-2);
- the keys of the last block (the qkv Linear applied to `norm1(x)`, bias included, [CLS] included);
- the [CLS] token of the last block's output *before* the final norm.

Images go in as float [B, 3, H, W] in [0, 1]; :func:`preprocess` does Splice's
``Resize(224, max_size=480)`` + ImageNet normalisation on the whole batch at once.
"""
from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from typing import Mapping, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..core.checkpoint_io import RawCheckpoint, check_weight_dtypes, strip_dataparallel, strip_prefix
from ..core.descriptor import ModelDescriptor
from ..core.devices import device_constant
from ..core.errors import CheckpointError
from ..core.precision import PrecisionPolicy

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Official DINO backbones: embed dim -> heads (heads are not visible in any tensor shape).
DINO_HEADS = {192: 3, 384: 6, 768: 12, 1024: 16}


@dataclass
class DinoConfig:
    patch_size: int = 8
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    img_size: int = 224  # the grid pos_embed was trained for (pos_embed has (img_size/patch)^2 + 1 rows)

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def name(self) -> str:
        size = {384: "small", 768: "base", 192: "tiny", 1024: "large"}.get(self.embed_dim, f"d{self.embed_dim}")
        return f"dino_vit_{size}_patch{self.patch_size}"


def infer_dino_config(sd: Mapping[str, torch.Tensor], metadata: Optional[Mapping[str, str]] = None) -> DinoConfig:
    """Every hyperparameter from tensor shapes; heads from the file's metadata or DINO's embed-dim table."""
    dim, _, patch, _ = sd["patch_embed.proj.weight"].shape
    depth = 0
    while f"blocks.{depth}.attn.qkv.weight" in sd:
        depth += 1
    hidden = sd["blocks.0.mlp.fc1.weight"].shape[0]
    grid = math.isqrt(sd["pos_embed"].shape[1] - 1)
    heads = None
    for text in (metadata or {}).values():
        found = re.search(r"\bheads=(\d+)", str(text))
        if found:
            heads = int(found.group(1))
    if heads is None:
        heads = DINO_HEADS.get(int(dim), max(1, int(dim) // 64))
    return DinoConfig(patch_size=int(patch), embed_dim=int(dim), depth=depth, num_heads=heads,
                      mlp_ratio=hidden / dim, qkv_bias="blocks.0.attn.qkv.bias" in sd, img_size=grid * int(patch))


def resized_size(height: int, width: int, size: int = 224, max_size: Optional[int] = 480) -> tuple[int, int]:
    """torchvision ``Resize(size, max_size)``'s output size: short side -> size, long side capped."""
    short, long = (height, width) if height <= width else (width, height)
    new_short, new_long = size, int(size * long / short)
    if max_size is not None and new_long > max_size:
        new_short, new_long = int(max_size * new_short / new_long), max_size
    return (new_short, new_long) if height <= width else (new_long, new_short)


def preprocess(images: torch.Tensor, size: int = 224, max_size: Optional[int] = 480,
               antialias: bool = True) -> torch.Tensor:
    """[B, 3, H, W] in [0, 1] -> DINO input: bilinear resize (short side `size`) + ImageNet normalise.

    antialias=True is what the official code does with torchvision >= 0.17 (the fixtures' run); Splice's
    pinned torchvision 0.10 did not antialias tensors, which only matters when downscaling. We keep the
    antialiased version on purpose: a large crop seen without it aliases badly at 224.
    """
    images = images.float()  # generator outputs may be bf16 under autocast; resizing is done in fp32
    h, w = images.shape[-2:]
    out = resized_size(h, w, size, max_size)
    if out != (h, w):
        images = F.interpolate(images, size=out, mode="bilinear", align_corners=False, antialias=antialias)
    mean = device_constant(IMAGENET_MEAN, images.device, images.dtype, (1, 3, 1, 1))
    std = device_constant(IMAGENET_STD, images.device, images.dtype, (1, 3, 1, 1))
    return (images - mean) / std


def build_vit(config: DinoConfig) -> nn.Module:
    from timm.models.vision_transformer import VisionTransformer

    return VisionTransformer(img_size=config.img_size, patch_size=config.patch_size, embed_dim=config.embed_dim,
                             depth=config.depth, num_heads=config.num_heads, mlp_ratio=config.mlp_ratio,
                             qkv_bias=config.qkv_bias, num_classes=0, global_pool="token")


@dataclass
class DinoFeatures:
    keys: torch.Tensor  # [B, T, D] last block's keys (heads concatenated in qkv order), [CLS] first
    cls: torch.Tensor  # [B, D] last block's [CLS] before the final norm


def self_similarity(keys: torch.Tensor) -> torch.Tensor:
    """[B, T, D] -> cosine self-similarity [B, T, T] (computed in fp32: the loss compares small differences)."""
    k = keys.float()
    norms = k.norm(dim=-1, keepdim=True)
    return (k @ k.transpose(1, 2)) / (norms @ norms.transpose(1, 2)).clamp_min(1e-8)


class DinoViT(nn.Module):
    """A frozen DINO ViT that returns Splice's features for any input size."""

    # Splice trains through it: bf16 keeps fp32's exponent range for the input gradients (fp16 would need loss
    # scaling, so a GPU without native bf16 runs auto in fp32); the losses themselves are computed in fp32
    PRECISION = PrecisionPolicy(fp16=True, bf16=True, auto_gpu="bf16", auto_without_bf16="fp32",
                                evidence="training through DINO: bf16 needs no loss scaling")

    def __init__(self, config: DinoConfig):
        super().__init__()
        self.config = config
        self.vit = build_vit(config)
        self.eval().requires_grad_(False)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        return self.vit.load_state_dict(state_dict, strict=strict, assign=assign)

    def state_dict(self, *args, **kwargs):
        return self.vit.state_dict(*args, **kwargs)

    def train(self, mode: bool = True):  # DINO is only ever used as a fixed feature extractor
        return super().train(False)

    def position_embedding(self, grid_h: int, grid_w: int, dtype: torch.dtype,
                           pixel_size: Optional[tuple[int, int]] = None) -> torch.Tensor:
        """DINO's ``interpolate_pos_encoding``: [1, 1 + grid_h*grid_w, D].

        DINO keeps the trained embedding only when the token count equals the trained grid's *and* the input's
        pixel height equals its width (`npatch == N and w == h`); a 224x228 input also has a 28x28 grid, yet
        DINO resamples (by (28 + 0.1) / 28), so the pixel size decides, not the grid."""
        pos = self.vit.pos_embed
        n = pos.shape[1] - 1
        pixel_h, pixel_w = pixel_size if pixel_size is not None else (grid_h, grid_w)
        if grid_h * grid_w == n and pixel_h == pixel_w:
            return pos.to(dtype)
        side = math.isqrt(n)
        dim = pos.shape[-1]
        grid = pos[:, 1:].float().reshape(1, side, side, dim).permute(0, 3, 1, 2)
        # DINO scales by (grid + 0.1) / side and uses that factor directly (not the output size) for the
        # sampling positions; reproducing it exactly is what makes the keys match the official ones.
        grid = F.interpolate(grid, scale_factor=((grid_h + 0.1) / side, (grid_w + 0.1) / side), mode="bicubic",
                             align_corners=False)
        if grid.shape[-2:] != (grid_h, grid_w):
            raise RuntimeError(f"position embedding interpolated to {tuple(grid.shape[-2:])}, "
                               f"expected {(grid_h, grid_w)}")
        grid = grid.permute(0, 2, 3, 1).reshape(1, grid_h * grid_w, dim)
        return torch.cat([pos[:, :1].float(), grid], dim=1).to(dtype)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised images [B, 3, H, W] -> tokens [B, 1 + (H//p)(W//p), D] (sizes not divisible are floored)."""
        tokens = self.vit.patch_embed.proj(x)  # stride-p conv: floors like DINO's
        gh, gw = tokens.shape[-2:]
        tokens = tokens.flatten(2).transpose(1, 2)
        cls = self.vit.cls_token.expand(x.shape[0], -1, -1).to(tokens.dtype)
        tokens = torch.cat([cls, tokens], dim=1)
        return tokens + self.position_embedding(gh, gw, tokens.dtype, pixel_size=tuple(x.shape[-2:]))

    @staticmethod
    def _block(block: nn.Module, x: torch.Tensor, want_keys: bool):
        """One pre-norm transformer block; with want_keys also the keys [B, T, D] from its qkv projection."""
        attn = block.attn
        b, t, d = x.shape
        heads = attn.num_heads
        qkv = attn.qkv(block.norm1(x))
        q, k, v = qkv.view(b, t, 3, heads, d // heads).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)  # DINO's softmax(q k^T / sqrt(d)) v
        out = attn.proj(out.transpose(1, 2).reshape(b, t, d))
        x = x + block.ls1(out)
        x = x + block.ls2(block.mlp(block.norm2(x)))
        return x, (qkv[..., d:2 * d] if want_keys else None)

    @staticmethod
    def _last_block(block: nn.Module, x: torch.Tensor):
        """The last block when only its keys and its [CLS] output are wanted (Splice's features): keys for
        every token, but attention, projection and MLP for the [CLS] row alone; the other rows' outputs are
        never used. The same arithmetic as `_block` for that row, and about 3/4 of the block's work saved."""
        attn = block.attn
        b, t, d = x.shape
        heads = attn.num_heads
        qkv = attn.qkv(block.norm1(x))
        q, k, v = qkv.view(b, t, 3, heads, d // heads).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q[:, :, :1], k, v)  # [B, heads, 1, d/heads]
        cls = x[:, :1] + block.ls1(attn.proj(out.transpose(1, 2).reshape(b, 1, d)))
        cls = cls + block.ls2(block.mlp(block.norm2(cls)))
        return cls[:, 0], qkv[..., d:2 * d]

    def forward(self, x: torch.Tensor, intermediates: Optional[dict] = None) -> DinoFeatures:
        """Normalised images [B, 3, H, W] -> last-block keys and pre-norm [CLS]."""
        h = self.embed(x)
        keys = None
        last = len(self.vit.blocks) - 1
        for i, block in enumerate(self.vit.blocks):
            if i == last and intermediates is None:
                cls, keys = self._last_block(block, h)
                return DinoFeatures(keys=keys, cls=cls)
            h, k = self._block(block, h, want_keys=i == last)
            if intermediates is not None:
                intermediates[f"block{i}"] = h
            if k is not None:
                keys = k
        return DinoFeatures(keys=keys, cls=h[:, 0])

    def final_cls(self, x: torch.Tensor) -> torch.Tensor:
        """The model's own output (final norm applied) — what DINO's forward returns; for checks only."""
        h = self.embed(x)
        for block in self.vit.blocks:
            h, _ = self._block(block, h, want_keys=False)
        return self.vit.norm(h)[:, 0]


def keys_per_head(keys: torch.Tensor, heads: int) -> torch.Tensor:
    """[B, T, D] -> [B, heads, T, D/heads], the layout the official extractor returns."""
    b, t, d = keys.shape
    return keys.view(b, t, heads, d // heads).permute(0, 2, 1, 3)


# ------------------------------------------------------------------------------------------------ files
# facebookresearch/dino releases backbone state dicts (dino_vitbase8_pretrain.pth: the ViT keys alone) and
# full training checkpoints (main_dino.py's save_on_master: {'student', 'teacher', 'optimizer', 'epoch',
# 'args', 'dino_loss'}, the ViT under [module.]backbone.*, the projection under head.*); timm publishes
# the same ViT keys as model.safetensors.
DINO_REQUIRED_KEYS = ("cls_token", "pos_embed", "patch_embed.proj.weight", "blocks.0.attn.qkv.weight")
# DINO training checkpoints keep the ViT under backbone.* (teacher/student, DataParallel module.*).
DINO_WEIGHTS_ORDER = ("teacher", "state_dict", "model", "g_ema", "student")
DINO_HINT = ("Put a DINO ViT in models/vit: the official dino_vitbase8_pretrain.pth (or _small / patch16) from "
             "facebookresearch/dino, or timm's vit_*_224.dino model.safetensors.")


@dataclass(kw_only=True)
class DinoDescriptor(ModelDescriptor):
    """A frozen DINO ViT (eval mode) and its config (patch, width, depth, heads, from the weights)."""


def _dino_candidate(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    sd = strip_dataparallel(sd)
    if sd and all(k.startswith("backbone.") or k.startswith("head.") for k in sd):
        sd = strip_prefix(sd, "backbone.")
    return sd


def detect(raw: RawCheckpoint) -> bool:
    return any(all(k in _dino_candidate(sd) for k in DINO_REQUIRED_KEYS) for sd in raw.state_dicts.values())


def load(raw: RawCheckpoint) -> DinoDescriptor:
    """A DINO ViT (any size/patch) from an official .pth (backbone or full training checkpoint) or timm
    .safetensors, loaded strictly; refuses other ViTs (DINOv2, supervised classifiers) with the reason."""
    path = raw.path
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
        check_weight_dtypes(path, model, sd)
        result = model.load_state_dict({k: v.float() for k, v in sd.items()}, strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise CheckpointError(path, f"ViT weights do not match a DINO ViT (patch {config.patch_size}, dim "
                                  f"{config.embed_dim}, depth {config.depth}): missing {result.missing_keys[:3]}, "
                                  f"unexpected {result.unexpected_keys[:3]}.", DINO_HINT)
        notes = []
        if name == "teacher":
            notes.append("training checkpoint: using the teacher backbone (what DINO releases)")
        return DinoDescriptor(family="dino", model=model.eval().requires_grad_(False), config=config,
                              source=str(path), notes=notes)
    found = ", ".join(f"'{n}' ({len(sd)} tensors, e.g. {next(iter(sd), '-')})" for n, sd in raw.state_dicts.items())
    raise CheckpointError(path, f"is not a DINO ViT (found {found}).", DINO_HINT)
