"""SMART: StylePrompter's local cross-attention that refines one generator feature map from encoder features.

Pure PyTorch, written from the paper's description and the checkpoint layout (key names match the
official ``decoder.module.smart_block.*`` after stripping that prefix).

* query = query_proj(generator feature), (B, L, C) with l = row*q + col, split into heads (contiguous).
* every encoder level i gives K, V = input_proj[i](feature_i).chunk(2) (levels concatenated in order).
* each query position attends to a fixed set of keys (``attn_idx``, q*q x K): one nearest key from each
  level no larger than the query grid, and the (ratio x ratio) patch under it from larger levels.
* the weights are the raw dot products q.k: no softmax, no 1/sqrt(d), no normalisation (as trained).
* x = pre + proj(sum_k w_k * beta1 * v_k);  x = x + beta2 * linear2(relu(linear1(x))).

The block is applied through the generator's ``feature_hook`` (see :meth:`SMART.hook`): the generator has
no StylePrompter-specific code path.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable, Mapping, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from ..core.precision import FP16_ACTIVATION_LIMIT

Beta = Union[None, float, Sequence[float]]


@dataclass
class SMARTConfig:
    q_channel: int = 512
    embed_dim: int = 512
    kv_channels: Sequence[int] = (768, 768, 384, 192)
    kv_shapes: Sequence[int] = (8, 8, 16, 32)
    q_shape: int = 16
    ffn_dim: int = 1024
    head_num: int = 4
    refined_layer: int = 4

    def __post_init__(self):
        self.kv_channels = tuple(int(c) for c in self.kv_channels)
        self.kv_shapes = tuple(int(s) for s in self.kv_shapes)
        if len(self.kv_channels) != len(self.kv_shapes):
            raise ValueError("kv_channels and kv_shapes need one entry per encoder level")
        if self.embed_dim % self.head_num:
            raise ValueError("embed_dim must be divisible by head_num")
        if self.embed_dim != self.q_channel:
            raise ValueError("SMART splits heads by the query's channel count: embed_dim must equal q_channel")
        for s in self.kv_shapes:
            if s > self.q_shape and s % self.q_shape:
                raise ValueError(f"level side {s} must be a multiple of the query side {self.q_shape}")

    @property
    def keys_per_query(self) -> int:
        return sum(1 if s <= self.q_shape else (s // self.q_shape) ** 2 for s in self.kv_shapes)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["kv_channels"], d["kv_shapes"] = list(self.kv_channels), list(self.kv_shapes)
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> "SMARTConfig":
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


def refined_resolution(refined_layer: int) -> int:
    """Generator conv index -> the side of the feature map it outputs (layer 4 -> 16)."""
    return 2 ** ((refined_layer + 4) // 2)


def infer_smart_config(smart_sd: Mapping[str, torch.Tensor], kv_shapes: Optional[Sequence[int]] = None,
                       refined_layer: int = 4, head_num: int = 4) -> SMARTConfig:
    """Widths from shapes (keys without ``decoder.module.smart_block.``).

    head_num (4 in the official model) and the level sides are not recorded by any shape: pass them, or
    kv_shapes from the encoder's ``StylePrompterConfig.feature_shapes()``; default is the official
    [8, 8, 16, 32].
    """
    prefix = "decoder.module.smart_block."
    sd = {k[len(prefix):]: v for k, v in smart_sd.items() if k.startswith(prefix)} or dict(smart_sd)
    try:
        embed_dim, q_channel = (int(n) for n in sd["query_proj.weight"].shape)
        kv = []
        while f"input_proj.{len(kv)}.0.weight" in sd:
            kv.append(int(sd[f"input_proj.{len(kv)}.0.weight"].shape[1]))
        ffn_dim = int(sd["linear1.weight"].shape[0])
    except KeyError as e:
        raise ValueError(f"not a SMART state dict (missing {e})") from None
    shapes = tuple(kv_shapes) if kv_shapes is not None else (8, 8, 16, 32)[:len(kv)]
    return SMARTConfig(q_channel=q_channel, embed_dim=embed_dim, kv_channels=kv, kv_shapes=shapes,
                       q_shape=refined_resolution(refined_layer), ffn_dim=ffn_dim, head_num=head_num,
                       refined_layer=refined_layer)


def local_index_table(q_shape: int, kv_shapes: Sequence[int]) -> torch.Tensor:
    """[q*q, K] int64 indices into the concatenation of the flattened levels (row-major each)."""
    r, c = torch.meshgrid(torch.arange(q_shape), torch.arange(q_shape), indexing="ij")
    r, c = r.reshape(-1), c.reshape(-1)
    cols, offset = [], 0
    for s in kv_shapes:
        if s <= q_shape:
            cols.append(offset + (r * s // q_shape) * s + (c * s // q_shape))
        else:
            k = s // q_shape
            for a in range(k):
                for b in range(k):
                    cols.append(offset + (k * r + a) * s + (k * c + b))
        offset += s * s
    return torch.stack(cols, dim=1).long()


def flow_query_index(flow: Sequence[torch.Tensor], q_shape: int) -> torch.Tensor:
    """Official flow displacement: (x_off, y_off) [q, q] -> [q*q] query index (round half-to-even per axis,
    no per-axis clamp; < 0 -> 0 and >= q*q -> q-1, as the official code does)."""
    x_off, y_off = flow[0]
    dev = x_off.device
    cols = torch.arange(q_shape, device=dev).repeat(q_shape)
    rows = torch.arange(q_shape, device=dev).repeat_interleave(q_shape)
    q = torch.round(cols + x_off.flatten()).long() + torch.round(rows + y_off.flatten()).long() * q_shape
    q = torch.where(q < 0, torch.zeros_like(q), q)
    return torch.where(q >= q_shape * q_shape, torch.full_like(q, q_shape - 1), q)


def split_beta(beta: Beta) -> tuple[float, float]:
    if beta is None:
        return 1.0, 1.0
    if isinstance(beta, (tuple, list)):
        if len(beta) != 2:
            raise ValueError(f"beta must be a number or a (beta1, beta2) pair, got {beta!r}")
        return float(beta[0]), float(beta[1])
    if isinstance(beta, torch.Tensor) and beta.numel() == 2:
        return float(beta.flatten()[0]), float(beta.flatten()[1])
    return float(beta), float(beta)


class SMART(nn.Module):
    def __init__(self, config: SMARTConfig):
        super().__init__()
        self.config = cfg = config
        self.query_proj = nn.Linear(cfg.q_channel, cfg.embed_dim)
        self.input_proj = nn.ModuleList(nn.Sequential(nn.Linear(c, 2 * cfg.embed_dim)) for c in cfg.kv_channels)
        self.proj = nn.Linear(cfg.embed_dim, cfg.embed_dim)
        self.linear1 = nn.Linear(cfg.embed_dim, cfg.ffn_dim)
        self.linear2 = nn.Linear(cfg.ffn_dim, cfg.q_channel)
        self.register_buffer("attn_idx", local_index_table(cfg.q_shape, cfg.kv_shapes), persistent=False)

    def forward(self, pre: torch.Tensor, features: Sequence[torch.Tensor], beta: Beta = None,
                flow: Optional[Sequence] = None, intermediates: Optional[dict] = None) -> torch.Tensor:
        """pre [B, q*q, C] (l = row*q + col), features [B, h_i*w_i, c_i] in the encoder's SMART order."""
        cfg = self.config
        b1, b2 = split_beta(beta)
        b, l, c = pre.shape
        if l != cfg.q_shape ** 2 or c != cfg.q_channel:
            raise ValueError(f"SMART expects [B, {cfg.q_shape ** 2}, {cfg.q_channel}], got {tuple(pre.shape)}")
        if len(features) != len(cfg.kv_channels):
            raise ValueError(f"SMART expects {len(cfg.kv_channels)} feature levels, got {len(features)}")
        nh, d = cfg.head_num, c // cfg.head_num
        idx = self.attn_idx
        if flow is not None:
            idx = idx[flow_query_index(flow, cfg.q_shape).to(idx.device)]
        q = self.query_proj(pre)
        ks, vs = [], []
        for proj, f in zip(self.input_proj, features):
            if f.shape[0] != b:
                raise ValueError("SMART features and generator feature have different batch sizes")
            k_, v_ = proj(f.to(pre.dtype)).chunk(2, dim=-1)
            ks.append(k_)
            vs.append(v_)
        k = torch.cat(ks, dim=1).view(b, -1, nh, d)
        v = torch.cat(vs, dim=1).view(b, -1, nh, d) * b1
        kg = k[:, idx]                                # [B, L, K, nh, d]
        vg = v[:, idx]
        qh = q.view(b, l, nh, d)
        w = torch.einsum("blhd,blkhd->blhk", qh, kg)  # raw dot products, no softmax
        attn = torch.einsum("blhk,blkhd->blhd", w, vg).reshape(b, l, c)
        proj_out = self.proj(attn)
        x = pre + proj_out
        ffn = self.linear2(F.relu(self.linear1(x)))
        if intermediates is not None:
            intermediates.update({"smart.query_proj": q, "smart.proj_out": proj_out, "smart.ffn_out": ffn})
        return x + b2 * ffn

    def refine_map(self, x: torch.Tensor, features: Sequence[torch.Tensor], beta: Beta = None,
                   flow: Optional[Sequence] = None) -> torch.Tensor:
        """Generator feature map [B, C, q, q] -> refined map of the same shape."""
        b, c, h, w = x.shape
        out = self.forward(x.reshape(b, c, h * w).transpose(1, 2), features, beta=beta, flow=flow)
        return out.transpose(1, 2).reshape(b, c, h, w).contiguous()

    def hook(self, features: Sequence[torch.Tensor], beta: Beta = None, flow: Optional[Sequence] = None,
             layer: Optional[int] = None) -> Callable[[int, torch.Tensor], Optional[torch.Tensor]]:
        """A ``feature_hook`` for ``StyleGAN2Generator.synthesis``: refines conv layer ``refined_layer``."""
        target = self.config.refined_layer if layer is None else layer

        def _hook(index: int, x: torch.Tensor) -> Optional[torch.Tensor]:
            if index != target:
                return None
            # always fp32, whatever the generator runs in: the raw q.k products are neither scaled nor
            # softmax-normalised, so they overflow fp16 where fp32 is fine (one 16x16 map: cheap)
            with torch.autocast(x.device.type, enabled=False):
                out = self.refine_map(x.float(), [f.to(x.device).float() for f in features], beta=beta, flow=flow)
            if x.dtype == torch.float16:
                out = out.clamp(-FP16_ACTIVATION_LIMIT, FP16_ACTIVATION_LIMIT)
            return out.to(x.dtype)

        return _hook
