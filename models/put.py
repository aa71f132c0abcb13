"""PUT (Liu et al., CVPR 2022; TPAMI 2024): pluralistic inpainting with an un-quantized transformer over the
P-VQVAE's patch features (see `put_codec.py` for the auto-encoder).

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
from typing import Callable, Mapping, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from .put_codec import PatchVQVAE

Schedule = Union[int, str, None]
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
class _PUTTransformer(nn.Module):
    """Shared interface. Token sequences are row-major over the token grid: l = row * w + col."""

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


class PUTTransformerCVPR(_PUTTransformer):
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


class PUTTransformerTPAMI(_PUTTransformer):
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


def build_put(config: PUTConfig, codec: PatchVQVAE) -> _PUTTransformer:
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
    activation = options.get("block_activate") or options.get("act_layer") or "GELU2"
    combine = options.get("combine_rec_and_gt")
    return PUTConfig(version=version, dim=dim, n_layer=n_layer, n_head=int(heads), token_shape=(side, seq // side),
                     num_token=int(sd["to_logits.weight"].shape[0]), mlp_hidden=int(sd[hidden_key].shape[0]),
                     activation=str(activation), qkv_bias="blocks.0.attn.q_bias" in sd,
                     learn_mask_emb="mask_emb" in sd,
                     combine_rec_and_gt=bool(version == "tpami2024" if combine is None else combine))


# -------------------------------------------------------------------------------------------- sampling
def top_k_filter(logits: torch.Tensor, filter_ratio: float) -> torch.Tensor:
    """The official `logits_top_k` (filter_type 'count'): keep the top k logits, the rest -inf.
    0 <= r <= 1: k = max(int((1 - r) * C), 1) (so r = 1 is greedy); r > 1: k = int(r)."""
    r = abs(filter_ratio)
    c = logits.shape[-1]
    k = max(int((1 - r) * c), 1) if r <= 1 else max(int(r), 1)
    k = min(k, c)
    if k == c:
        return logits
    val, ind = torch.topk(logits, k=k, dim=-1)
    return torch.full_like(logits, float("-inf")).scatter_(-1, ind, val)


def step_counts(n_unknown: int, schedule: Schedule, seq_len: int) -> list[int]:
    """TPAMI's tokens per iteration for `n_unknown` tokens: an int (N per iteration, the last one shrunk),
    -1 (all at once), None (max(1, L // 500)), or 'cosine_N' / 'linear_N' / 'average_N' (and the reversed
    'cosine-1_N' / 'linear-1_N')."""
    if n_unknown <= 0:
        return []
    if schedule is None:
        schedule = max(1, seq_len // 500)
    if isinstance(schedule, int):
        if schedule <= 0:
            return [-1]
        total = (n_unknown + schedule - 1) // schedule
        nums = [schedule] * total
        nums[-1] -= sum(nums) - n_unknown
        return nums
    kind, _, count = str(schedule).rpartition("_")
    if kind not in ("cosine", "linear", "average", "cosine-1", "linear-1") or not count.isdigit() or int(count) < 1:
        raise ValueError(f"unknown schedule {schedule!r}: use an int, 'cosine_N', 'linear_N' or 'average_N'")
    total = int(count)
    if kind.startswith("cosine"):
        weights = [math.cos(math.pi * s / total) + 1 for s in range(total)]
    elif kind.startswith("linear"):
        weights = list(range(total, 0, -1))
    else:
        weights = [n_unknown // total] * total
    factor = float(n_unknown) / sum(weights)
    nums = [round(w * factor) for w in weights]
    diff = sum(nums) - n_unknown
    idx = 0
    while diff != 0:  # fix rounding one unit at a time, from index 1 cyclically (as the official code)
        idx = (idx + 1) % len(nums)
        nums[idx] += 1 if diff < 0 else -1
        diff += 1 if diff < 0 else -1
    return nums[::-1] if kind.endswith("-1") else nums


class SamplerRNG:
    """Where the random draws come from.

    official: the global torch RNG, with exactly the official code's sequence of `torch.multinomial` calls
    (one call per iteration over all rows it samples), so a `torch.manual_seed` before reproduces its runs.
    per_sample: one torch.Generator per batch row, drawing only for that row's chosen positions, so row i's
    result depends on its own seed only (not on the batch it was run in).
    """

    def __init__(self, generators: Optional[Sequence[torch.Generator]] = None):
        self.generators = list(generators) if generators is not None else None

    @property
    def official(self) -> bool:
        return self.generators is None

    def draw(self, probs: torch.Tensor, rows: Optional[torch.Tensor] = None) -> torch.Tensor:
        """probs [b, n, C] -> samples [b, n]; rows = the batch rows (indices into generators)."""
        b, n, c = probs.shape
        if self.official:
            return torch.multinomial(probs.reshape(-1, c), 1).view(b, n)
        out = []
        for j in range(b):
            g = self.generators[int(rows[j]) if rows is not None else j]
            p = probs[j]
            if p.device != g.device:
                p = p.to(g.device)
            out.append(torch.multinomial(p, 1, generator=g).view(n).to(probs.device))
        return torch.stack(out)


@dataclass
class SamplingState:
    """Handed to the per-iteration callback: enough to render a preview of the current fill."""

    iteration: int
    total: Optional[int]  # known in advance for TPAMI schedules; None for CVPR (data-dependent)
    tokens: torch.Tensor  # [B, L]
    known: torch.Tensor  # [B, L] bool


@torch.no_grad()
def sample_tokens(model: _PUTTransformer, feature: torch.Tensor, token: torch.Tensor, token_type: torch.Tensor,
                  unmask_ratio: torch.Tensor, *, tokens_per_iter: Schedule = 1, filter_ratio: float = 1.0,
                  temperature: float = 1.0, raster: bool = False, rng: Optional[SamplerRNG] = None,
                  on_iteration: Optional[Callable[[SamplingState], None]] = None,
                  autocast_dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """Fill every token whose patch is not fully known; returns tokens [B, L].

    temperature is the official factor (logits * temperature before the softmax). The CVPR model runs the
    official `sample_largest` (or raster `sample`, 1 token per iteration); the TPAMI model its `sample`.
    """
    rng = rng or SamplerRNG()
    b = feature.shape[0]
    token = token.reshape(b, -1).clone()
    known = (token_type.reshape(b, -1) == 1).clone()
    seq = token.shape[1]
    dev_type = feature.device.type
    amp = torch.autocast(dev_type, dtype=autocast_dtype, enabled=autocast_dtype is not None)
    with amp:
        emb = model.embed(feature, unmask_ratio)

    def logits_of(e):
        with amp:
            return model.logits(e).float()

    def probs_of(lg):
        return F.softmax(top_k_filter(lg, filter_ratio) * temperature, dim=-1)

    def write(rows, positions, samples, write_mask):
        """Set tokens/features at (rows, positions) where write_mask [b, n] (positions unique per row).
        Gather/where/scatter rather than boolean indexing: no host sync per iteration."""
        with amp:
            feats = model.token_embedding(samples, positions).to(emb.dtype)
        sub_emb, sub_tok, sub_known = emb[rows], token[rows], known[rows]
        idx = positions.unsqueeze(-1).expand(-1, -1, sub_emb.shape[-1])
        sub_emb.scatter_(1, idx, torch.where(write_mask.unsqueeze(-1), feats, sub_emb.gather(1, idx)))
        sub_tok.scatter_(1, positions, torch.where(write_mask, samples, sub_tok.gather(1, positions)))
        sub_known.scatter_(1, positions, sub_known.gather(1, positions) | write_mask)
        emb[rows], token[rows], known[rows] = sub_emb, sub_tok, sub_known

    iteration = 0
    if model.config.version == "cvpr2022" and raster:
        if tokens_per_iter not in (1, None):
            raise ValueError("raster sampling fills one token per iteration")
        all_rows = torch.arange(b, device=token.device)
        for i in range(seq):
            if bool(known[:, i].all()):
                continue
            lg = logits_of(emb)[:, i:i + 1]
            samples = rng.draw(probs_of(lg), all_rows)
            positions = torch.full((b, 1), i, dtype=torch.long, device=token.device)
            write(all_rows, positions, samples, ~known[:, i:i + 1])
            iteration += 1
            if on_iteration:
                on_iteration(SamplingState(iteration, None, token, known))
        return token

    if model.config.version == "cvpr2022":
        ntpi = -1 if tokens_per_iter is None else tokens_per_iter
        if not isinstance(ntpi, int):
            raise ValueError("the CVPR 2022 model takes a number of tokens per iteration (or -1), not "
                             f"{tokens_per_iter!r}; schedules are a TPAMI 2024 option")
        while not bool(known.all()):
            rows = (~known.all(dim=1)).nonzero().view(-1)
            lg = logits_of(emb[rows])  # [b', L, C]
            if ntpi == -1 or ntpi >= seq:
                all_pos = torch.arange(seq, device=token.device).expand(len(rows), seq)
                samples = rng.draw(probs_of(lg), rows)
                write(rows, all_pos, samples, ~known[rows])
                iteration += 1
                if on_iteration:
                    on_iteration(SamplingState(iteration, None, token, known))
                break
            conf = lg.max(dim=-1).values.masked_fill(known[rows], float("-inf"))
            positions = torch.topk(conf, k=ntpi, dim=1).indices  # [b', ntpi]
            chosen = torch.gather(lg, 1, positions.unsqueeze(-1).expand(-1, -1, lg.shape[-1]))
            samples = rng.draw(probs_of(chosen), rows)
            write(rows, positions, samples, ~torch.gather(known[rows], 1, positions))
            iteration += 1
            if on_iteration:
                on_iteration(SamplingState(iteration, None, token, known))
        return token

    # TPAMI 2024
    n_unknown = int((~known).sum(dim=1).max())
    nums = step_counts(n_unknown, tokens_per_iter, seq)
    all_rows = torch.arange(b, device=token.device)
    all_pos = torch.arange(seq, device=token.device).expand(b, seq)
    for sn in nums:
        lg = logits_of(emb)  # [B, L, C]
        # the official draws a sample at every position of every row; per-sample generators only need the
        # chosen positions' distributions (a position's filtered maximum is its raw maximum)
        probs = probs_of(lg) if rng.official else None
        if sn == -1 or sn >= seq:
            positions, fill = all_pos, ~known
        elif raster:
            order = torch.arange(seq, device=token.device).expand(b, seq) + known.long() * (seq + 1)
            positions = torch.topk(-order, k=sn, dim=1).indices
            fill = ~torch.gather(known, 1, positions)
        else:
            conf = lg.max(dim=-1).values.masked_fill(known, float("-inf"))
            positions = torch.topk(conf, k=sn, dim=1).indices
            fill = ~torch.gather(known, 1, positions)
        if rng.official:
            samples = torch.gather(rng.draw(probs), 1, positions)
        else:
            chosen = torch.gather(lg, 1, positions.unsqueeze(-1).expand(-1, -1, lg.shape[-1]))
            samples = rng.draw(probs_of(chosen), all_rows)
        write(all_rows, positions, samples, fill)
        iteration += 1
        if on_iteration:
            on_iteration(SamplingState(iteration, len(nums), token, known))
    return token


@torch.no_grad()
def inpaint(model: _PUTTransformer, image: torch.Tensor, mask: torch.Tensor, *, num_samples: int = 1,
            **sampling) -> torch.Tensor:
    """image [1, 3, H, W] 0..255, mask [1, 1, H, W] (1 = known) at the model's size -> [num_samples, 3, H, W]
    0..255 (the official decode; the caller composites). Extra keyword arguments go to :func:`sample_tokens`."""
    image = image.expand(num_samples, -1, -1, -1)
    mask = mask.expand(num_samples, -1, -1, -1)
    codec = model.content_codec
    data = codec.get_features(image, mask)
    tokens = sample_tokens(model, data["feature"], data["token"], data["token_type"], data["unmask_ratio"],
                           **sampling)
    return codec.decode(tokens, image, mask, combine_rec_and_gt=model.config.combine_rec_and_gt)
