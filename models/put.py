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
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from .checkpoint_io import RawCheckpoint, check_weight_dtypes, read_official_yaml, strip_prefix
from .descriptor import ModelDescriptor
from .devices import host_side
from .errors import CheckpointError
from .precision import PrecisionPolicy
from .put_codec import PatchVQVAE, infer_pvqvae_config

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

    # the logits only rank codes (softmax in fp32 after them) and attention is softmax-normalised: bf16, whose
    # range is fp32's, is the safe GPU default; fp16 runs too (README "Precision")
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
    activation = options.get("activation") or options.get("block_activate") or options.get("act_layer") or "GELU2"
    combine = options.get("combine_rec_and_gt")
    return PUTConfig(version=version, dim=dim, n_layer=n_layer, n_head=int(heads), token_shape=(side, seq // side),
                     num_token=int(sd["to_logits.weight"].shape[0]), mlp_hidden=int(sd[hidden_key].shape[0]),
                     activation=str(activation), qkv_bias="blocks.0.attn.q_bias" in sd,
                     learn_mask_emb="mask_emb" in sd,
                     combine_rec_and_gt=bool(version == "tpami2024" if combine is None else combine))


# -------------------------------------------------------------------------------------------- sampling
def top_k_count(filter_ratio: float, c: int) -> int:
    """How many of C logits the official `logits_top_k` (filter_type 'count') keeps:
    0 <= r <= 1: k = max(int((1 - r) * C), 1) (so r = 1 is greedy); r > 1: k = int(r)."""
    r = abs(filter_ratio)
    k = max(int((1 - r) * c), 1) if r <= 1 else max(int(r), 1)
    return min(k, c)


def top_k_filter(logits: torch.Tensor, filter_ratio: float) -> torch.Tensor:
    """The official `logits_top_k` (filter_type 'count'): keep the top k logits (top_k_count), the rest -inf."""
    c = logits.shape[-1]
    k = top_k_count(filter_ratio, c)
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
    (one call per iteration over all rows it samples), so a `torch.manual_seed` before reproduces its runs (the
    parity tests; multinomial reads the probabilities back, a host sync per pass on a GPU).
    per_sample (what the node uses): one seeded *CPU* torch.Generator per batch row. Each pass draws Gumbel noise
    for that row's chosen positions on its generator (host memory, no GPU involved), moves it to the device in
    one copy, and takes argmax(logits + noise): the Gumbel-max trick, an exact draw from softmax(logits). Row i's
    fill depends on its own seed only (not on the batch it ran in) and is the same on every device, up to
    floating-point near-ties between two codes' logits; the sampling loop never waits for the GPU.
    """

    def __init__(self, generators: Optional[Sequence[torch.Generator]] = None):
        self.generators = list(generators) if generators is not None else None
        if self.generators is not None and any(g.device.type != "cpu" for g in self.generators):
            raise ValueError("per-sample generators must be CPU generators (a seed means the same on every device)")

    @property
    def official(self) -> bool:
        return self.generators is None

    def draw(self, probs: torch.Tensor) -> torch.Tensor:
        """Official mode: probs [b, n, C] -> samples [b, n] from the global RNG, as the official code draws."""
        b, n, c = probs.shape
        return torch.multinomial(probs.reshape(-1, c), 1).view(b, n)

    @host_side
    def gumbel(self, shape: tuple, device: torch.device) -> torch.Tensor:
        """Per-sample mode: standard Gumbel noise [b, *shape], row j from generator j, on `device` (one copy)."""
        pin = device.type == "cuda"
        u = torch.stack([torch.rand(shape, generator=g) for g in self.generators])
        noise = -torch.log(-torch.log(u.clamp_min(torch.finfo(torch.float32).tiny)))
        if pin:
            noise = noise.pin_memory()
        return noise.to(device, non_blocking=pin)

    def choose(self, scores: torch.Tensor) -> torch.Tensor:
        """Per-sample mode: scores [b, n, C] (tempered, top-k filtered logits; -inf = excluded) -> samples [b, n]
        distributed as softmax(scores), by Gumbel-max."""
        return (scores.float() + self.gumbel(tuple(scores.shape[1:]), scores.device)).argmax(dim=-1)


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

    first_pass = True

    def logits_of(e):
        # Samples of one picture start from the same tokens, so the first pass is the same for every row:
        # computed once (all-at-once fills of N samples cost one pass, not N). Later passes differ per row.
        nonlocal first_pass
        if first_pass:
            first_pass = False
            if e.shape[0] > 1 and torch.equal(e, e[:1].expand_as(e)):
                with amp:
                    return model.logits(e[:1]).float().expand(e.shape[0], -1, -1)
        with amp:
            return model.logits(e).float()

    def scores_of(lg):  # the official logits_top_k, then the official temperature factor
        return top_k_filter(lg, filter_ratio) * temperature

    def sample(lg):
        """Tokens for logits [b, n, C], from the official global RNG or by per-sample Gumbel-max. The latter only
        needs the k codes the top-k filter keeps: noise for [b, n, k] (in descending-logit order), not [b, n, C]."""
        if rng.official:
            return rng.draw(F.softmax(scores_of(lg), dim=-1))
        k = top_k_count(filter_ratio, lg.shape[-1])
        if k == lg.shape[-1]:
            return rng.choose(lg * temperature)
        values, codes = lg.topk(k, dim=-1)
        return codes.gather(-1, rng.choose(values * temperature).unsqueeze(-1)).squeeze(-1)

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
    all_rows = torch.arange(b, device=token.device)
    if model.config.version == "cvpr2022" and raster:
        if tokens_per_iter not in (1, None):
            raise ValueError("raster sampling fills one token per iteration")
        # the positions some row still has to fill, known before the loop (one read-back, not one per token)
        for i in (~known).any(dim=0).nonzero().view(-1).tolist():
            samples = sample(logits_of(emb)[:, i:i + 1])
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
        if rng.official:  # the official loop: each pass samples only the rows that still have unknown tokens
            while not bool(known.all()):
                rows = (~known.all(dim=1)).nonzero().view(-1)
                lg = logits_of(emb[rows])  # [b', L, C]
                if ntpi == -1 or ntpi >= seq:
                    all_pos = torch.arange(seq, device=token.device).expand(len(rows), seq)
                    write(rows, all_pos, sample(lg), ~known[rows])
                    iteration += 1
                    if on_iteration:
                        on_iteration(SamplingState(iteration, None, token, known))
                    break
                conf = lg.max(dim=-1).values.masked_fill(known[rows], float("-inf"))
                positions = torch.topk(conf, k=ntpi, dim=1).indices  # [b', ntpi]
                chosen = torch.gather(lg, 1, positions.unsqueeze(-1).expand(-1, -1, lg.shape[-1]))
                write(rows, positions, sample(chosen), ~torch.gather(known[rows], 1, positions))
                iteration += 1
                if on_iteration:
                    on_iteration(SamplingState(iteration, None, token, known))
            return token
        # per-sample rows: the number of passes is known up front (one read-back), and every pass runs all rows;
        # a row with fewer unknown tokens left than the pass fills writes only those (the others are masked)
        n_unknown = int((~known).sum(dim=1).max())
        passes = 0 if n_unknown == 0 else (1 if ntpi == -1 or ntpi >= seq else -(-n_unknown // ntpi))
        all_pos = torch.arange(seq, device=token.device).expand(b, seq)
        for _ in range(passes):
            lg = logits_of(emb)
            if ntpi == -1 or ntpi >= seq:
                positions, fill = all_pos, ~known
                samples = sample(lg)
            else:
                conf = lg.max(dim=-1).values.masked_fill(known, float("-inf"))
                positions = torch.topk(conf, k=ntpi, dim=1).indices
                fill = ~torch.gather(known, 1, positions)
                samples = sample(torch.gather(lg, 1, positions.unsqueeze(-1).expand(-1, -1, lg.shape[-1])))
            write(all_rows, positions, samples, fill)
            iteration += 1
            if on_iteration:
                on_iteration(SamplingState(iteration, passes, token, known))
        return token

    # TPAMI 2024
    n_unknown = int((~known).sum(dim=1).max())
    nums = step_counts(n_unknown, tokens_per_iter, seq)
    all_pos = torch.arange(seq, device=token.device).expand(b, seq)
    for sn in nums:
        lg = logits_of(emb)  # [B, L, C]
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
        if rng.official:  # the official draws a sample at every position of every row, then keeps the chosen
            samples = torch.gather(sample(lg), 1, positions)
        else:  # per-sample rows only need the chosen positions' distributions
            samples = sample(torch.gather(lg, 1, positions.unsqueeze(-1).expand(-1, -1, lg.shape[-1])))
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
