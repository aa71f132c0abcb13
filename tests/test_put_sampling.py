"""PUT's per-sample draws (what the node uses): Gumbel-max on noise from each sample's seeded CPU generator is an
exact draw from softmax(logits), respects top-k filtering, and depends on the seed only (docs/precision-and-gpu.md: Seeds)."""
import pytest
import torch

from transedit.models.put.sampling import SamplerRNG, top_k_filter


def test_gumbel_max_draws_follow_the_softmax():
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0, 0.5])
    n = 40_000
    rng = SamplerRNG([torch.Generator().manual_seed(7)])
    samples = rng.choose(logits.expand(1, n, -1))[0]
    freq = torch.bincount(samples, minlength=5).float() / n
    p = torch.softmax(logits, -1)
    sigma = (p * (1 - p) / n).sqrt()
    assert ((freq - p).abs() < 5 * sigma).all(), (freq, p)


def test_filtered_codes_are_never_drawn_and_temperature_sharpens():
    logits = torch.randn(1, 2000, 32, generator=torch.Generator().manual_seed(1))
    scores = top_k_filter(logits, 4)
    rng = SamplerRNG([torch.Generator().manual_seed(2)])
    samples = rng.choose(scores)
    allowed = torch.topk(logits, 4, dim=-1).indices
    assert (samples.unsqueeze(-1) == allowed).any(-1).all()
    greedy = rng.choose(top_k_filter(logits, 1))  # top 1: deterministic
    assert torch.equal(greedy, logits.argmax(-1))


def test_a_row_depends_on_its_own_seed_only():
    scores = torch.randn(3, 50, 16, generator=torch.Generator().manual_seed(3))
    together = SamplerRNG([torch.Generator().manual_seed(s) for s in (4, 5, 6)]).choose(scores)
    alone = SamplerRNG([torch.Generator().manual_seed(5)]).choose(scores[1:2])
    assert torch.equal(together[1:2], alone)
    again = SamplerRNG([torch.Generator().manual_seed(s) for s in (4, 5, 6)]).choose(scores)
    assert torch.equal(together, again)


def test_per_sample_generators_must_live_on_the_cpu():
    class DeviceGenerator:  # what torch.Generator(device="cuda") reports (no GPU here to make one)
        device = torch.device("cuda")

    with pytest.raises(ValueError, match="CPU generators"):
        SamplerRNG([torch.Generator(), DeviceGenerator()])


def test_the_schedules_exact_plans_at_their_edges():
    """Every plan pinned where a slip would show: rounding fixed from the second pass on, cyclically, in either
    direction; one unknown token; the default pace of one pass per 500 tokens; counts above and below 1."""
    from transedit.models.put.sampling import official_top_k, step_counts

    assert step_counts(7, "linear_5", 64) == [2, 3, 1, 1, 0]  # rounded 6: one more, at pass 2
    assert step_counts(9, "linear_4", 64) == [4, 2, 2, 1]  # rounded 10: one less, at pass 2
    assert step_counts(5, "average_3", 64) == [2, 1, 2] and step_counts(5, "average_2", 64) == [2, 3]
    assert step_counts(25, "cosine_4", 64) == [10, 9, 5, 1] and step_counts(10, "cosine_3", 64) == [5, 4, 1]
    assert step_counts(6, "cosine-1_4", 64) == [0, 1, 3, 2] and step_counts(3, "linear_3", 64) == [2, 1, 0]
    assert step_counts(11, "linear-1_5", 64) == step_counts(11, "linear_5", 64)[::-1]
    # a hole smaller than the number of passes (the official average divides by zero here)
    assert step_counts(2, "average_3", 64) == [1, 0, 1]
    assert step_counts(4, "cosine_1", 64) == [4]
    assert step_counts(1, 3, 64) == [1] and step_counts(1, "linear_2", 64) == [1, 0]
    assert step_counts(4, None, 64) == [1, 1, 1, 1]  # max(1, 64 // 500)
    assert step_counts(4, None, 1000) == [2, 2] and step_counts(4, None, 999) == [1, 1, 1, 1]
    assert step_counts(3, 0, 64) == [-1]
    for bad in ("cosine_0", "cosine_x", "linear_", "cosine-2_3"):
        with pytest.raises(ValueError, match="schedule"):
            step_counts(5, bad, 64)
    assert [official_top_k(r, 8) for r in (0.0, 0.5, 0.75, 0.9, 1.0)] == [8, 4, 2, 1, 1]
    assert [official_top_k(r, 8) for r in (-0.5, 1.5, 2, 3.0, 20)] == [4, 1, 2, 3, 8]


def test_top_k_filter_keeps_the_largest_along_the_last_axis():
    logits = torch.tensor([[[0.1, 0.5, 0.3], [0.9, -1.0, 0.2]], [[0.0, 0.4, 0.8], [0.7, 0.6, -0.1]]])
    kept = torch.isfinite(top_k_filter(logits, 2))
    assert kept.tolist() == [[[False, True, True], [True, False, True]], [[False, True, True], [True, True, False]]]
    assert torch.isfinite(top_k_filter(logits, 0)).sum() == 4  # at least one per row
    assert top_k_filter(logits, None) is logits and top_k_filter(logits, 3) is logits
