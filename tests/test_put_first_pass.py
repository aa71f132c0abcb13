"""PUT sampling computes the first pass once for samples of one picture, and each sample still gets what it
would get alone."""
import pytest
import torch

from transedit.models.put.sampling import SamplerRNG, inpaint
from transedit.models.registry import load_put
from transedit.random_weights import save_random_put


@pytest.mark.parametrize("version", ["cvpr2022", "tpami2024"])
@pytest.mark.parametrize("schedule", [-1, 5])
def test_samples_share_the_first_pass_and_match_running_alone(tmp_path, version, schedule):
    model = load_put(save_random_put(tmp_path / f"{version}.safetensors", version=version)).model.eval()
    image = (torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 255).round()
    mask = torch.ones(1, 1, 64, 64)
    mask[..., 13:45, 18:50] = 0
    batches = []
    original = model.logits

    def spy(emb):
        batches.append(emb.shape[0])
        return original(emb)

    model.logits = spy
    seeds = (11, 12, 13)
    together = inpaint(model, image, mask, num_samples=3, schedule=schedule, top_k=8,
                       rng=SamplerRNG([torch.Generator().manual_seed(s) for s in seeds]))
    assert batches[0] == 1  # the shared first pass, once
    assert all(b == 3 for b in batches[1:]) or version == "cvpr2022"  # CVPR drops finished rows
    alone = torch.cat([inpaint(model, image, mask, num_samples=1, schedule=schedule, top_k=8,
                               rng=SamplerRNG([torch.Generator().manual_seed(s)])) for s in seeds])
    torch.testing.assert_close(together, alone, rtol=0, atol=1e-3)
    assert not torch.equal(together[0], together[1])  # top-8 sampling: the samples do differ
