"""PUT's sampling: filling the unknown tokens of a masked picture pass by pass, as the official code does (the
CVPR 2022 model's `sample_largest` / raster `sample`, the TPAMI 2024 model's `sample` with its N-per-pass,
all-at-once and cosine/linear/average schedules), from the official global RNG (parity) or from one seeded CPU
generator per sample (the node: Gumbel-max on host noise, no host sync per pass)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Union

import torch
import torch.nn.functional as F

from ..core.devices import host_side
from .transformer import PUTTransformer

Schedule = Union[int, str, None]


def official_top_k(filter_ratio: float, c: int) -> int:
    """How many of C logits the official `logits_top_k` (filter_type 'count') keeps for its `filter_ratio` (the
    official configs' num_token_for_sampling): 0 <= r <= 1: k = max(int((1 - r) * C), 1), so r = 1 is greedy;
    r > 1: k = int(r). The sampler itself takes the count (top_k)."""
    r = abs(filter_ratio)
    k = max(int((1 - r) * c), 1) if r <= 1 else max(int(r), 1)
    return min(k, c)


def top_k_filter(logits: torch.Tensor, top_k: Optional[int]) -> torch.Tensor:
    """Keep the `top_k` largest logits (None: all), the rest -inf (the official `logits_top_k`)."""
    c = logits.shape[-1]
    k = c if top_k is None else min(max(int(top_k), 1), c)
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
    else:  # the official [n // total] * total, normalised below to the same plan, but without dividing by zero
        weights = [1] * total  # when a small hole has fewer unknown tokens than passes
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
def sample_tokens(model: PUTTransformer, feature: torch.Tensor, token: torch.Tensor, token_type: torch.Tensor,
                  unmask_ratio: torch.Tensor, *, schedule: Schedule = 1, top_k: Optional[int] = 1,
                  logit_scale: float = 1.0, raster: bool = False, rng: Optional[SamplerRNG] = None,
                  on_iteration: Optional[Callable[[SamplingState], None]] = None,
                  autocast_dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """Fill every token whose patch is not fully known; returns tokens [B, L].

    schedule: tokens per pass (an int N; -1 all at once; None max(1, L // 500)) or a TPAMI schedule
    ('cosine_N', 'linear_N', 'average_N': N passes); top_k: how many codes each draw chooses among (1 = greedy,
    None = all); logit_scale multiplies the logits before the softmax (the official code's "temperature" factor:
    1 / a user's temperature). The CVPR model runs the
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
        return top_k_filter(lg, top_k) * logit_scale

    def sample(lg):
        """Tokens for logits [b, n, C], from the official global RNG or by per-sample Gumbel-max. The latter only
        needs the k codes the top-k filter keeps: noise for [b, n, k] (in descending-logit order), not [b, n, C]."""
        if rng.official:
            return rng.draw(F.softmax(scores_of(lg), dim=-1))
        k = lg.shape[-1] if top_k is None else min(max(int(top_k), 1), lg.shape[-1])
        if k == lg.shape[-1]:
            return rng.choose(lg * logit_scale)
        values, codes = lg.topk(k, dim=-1)
        return codes.gather(-1, rng.choose(values * logit_scale).unsqueeze(-1)).squeeze(-1)

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
        if schedule not in (1, None):
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
        ntpi = -1 if schedule is None else schedule
        if not isinstance(ntpi, int):
            raise ValueError("the CVPR 2022 model takes a number of tokens per iteration (or -1), not "
                             f"{schedule!r}; schedules are a TPAMI 2024 option")
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
    nums = step_counts(n_unknown, schedule, seq)
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
def inpaint(model: PUTTransformer, image: torch.Tensor, mask: torch.Tensor, *, num_samples: int = 1,
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
