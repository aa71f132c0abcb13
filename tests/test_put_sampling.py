"""PUT's per-sample draws (what the node uses): Gumbel-max on noise from each sample's seeded CPU generator is an
exact draw from softmax(logits), respects top-k filtering, and depends on the seed only (README: Seeds)."""
import pytest
import torch

from transedit.models.put_sampling import SamplerRNG, top_k_filter


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
