"""The pack's one seeding policy (docs/precision-and-gpu.md: Seeds): every random draw comes from a seeded CPU torch.Generator and is
then moved to the compute device, so a seed selects the same latents, noise, crops and samples on every device.
Here: no node makes a device generator or draws from the global RNG, and a seed repeats a run."""
import pytest
import torch

from conftest import model_folders
from transedit.random_weights import save_random_dino, save_random_generator, save_random_put
from transedit.nodes import put as put_nodes
from transedit.nodes import splice as splice_nodes
from transedit.nodes import stylegan as sg_nodes


@pytest.fixture(scope="module")
def handles(tmp_path_factory):
    with model_folders(tmp_path_factory.mktemp("seed_models"), ("stylegan", "put", "vit")) as root:
        save_random_generator(root / "stylegan" / "g.pt")
        save_random_put(root / "put" / "p.pth")
        save_random_dino(root / "vit" / "d.safetensors")
        yield dict(gen=sg_nodes.TransEditLoadStyleGAN().load("g.pt")[0], put=put_nodes.TransEditLoadPUT().load("p.pth")[0],
                   vit=splice_nodes.TransEditLoadDINO().load("d.safetensors")[0])


def _runs(h):
    latent = sg_nodes.TransEditSampleLatent().sample(h["gen"], 3, 2, 0.7)[0]
    image = sg_nodes.TransEditGenerate().generate(h["gen"], latent, "random", 5, "fp32")[0]
    photo = torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(0))
    mask = torch.zeros(1, 64, 64)
    mask[:, 16:40, 16:40] = 1
    filled = put_nodes.TransEditPUTInpaint().inpaint(
        h["put"], photo, mask, num_samples=2, seed=9, schedule="tokens per iteration", tokens_per_iter=4, iterations=1,
        top_k=8, temperature=1.0, order="most confident first (official)", output_mode="crop around mask", context=0.5,
        feather=0, precision="fp32")[0]
    spliced = splice_nodes.TransEditSplice().splice(h["vit"], photo, photo.flip(2), preset="fast", steps=3,
                                                    output_size=0, seed=4, early_stop=False, precision="fp32",
                                                    preview_every=0)[0]
    return latent.wplus, image, filled, spliced


def test_every_draw_is_from_a_seeded_cpu_generator(handles, monkeypatch):
    made = []
    real = torch.Generator

    def recording(*args, **kwargs):
        made.append(torch.device(kwargs.get("device", args[0] if args else "cpu")))
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "Generator", recording)
    before = torch.random.get_rng_state()
    _runs(handles)
    assert made and all(d.type == "cpu" for d in made), made
    assert torch.equal(torch.random.get_rng_state(), before), "a node drew from the global RNG"


def test_a_seed_repeats_every_stage(handles):
    for a, b in zip(_runs(handles), _runs(handles)):
        assert torch.equal(a, b)
