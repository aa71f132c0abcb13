"""The per-step loops make no host synchronisation (tests/sync_sentinel.py counts them on the CPU, so a regression
shows here without a GPU): Splice's training step, PUT's sampling passes, StyleGAN2 synthesis, DINO's
preprocessing, the encoders' forward; and where a node must bring results back (Invert's features, RetinaFace's
detections), the number of copies does not grow with the number of images or faces."""
from __future__ import annotations

import pytest
import torch

from sync_sentinel import SyncCounter, per_step


def test_the_sentinel_sees_syncs_and_ignores_host_side_draws():
    from transedit.models.devices import host_side

    @host_side
    def draw(gen):
        return torch.rand((), generator=gen).item()

    x = torch.ones(3)
    with SyncCounter() as syncs:
        draw(torch.Generator().manual_seed(0))
        _ = torch.tensor([1.0])  # the test's own calls are not the pack's: not counted
    assert syncs.total() == 0
    from transedit.models import put_sampling

    with SyncCounter() as syncs:
        put_sampling.top_k_filter(x[None], 1)  # pack code without syncs
    assert syncs.total() == 0


def test_stylegan2_synthesis_has_none():
    from transedit.models.stylegan2 import StyleGAN2Config, StyleGAN2Generator

    g = StyleGAN2Generator(StyleGAN2Config(size=32, style_dim=32, n_mlp=2,
                                           channels={4: 16, 8: 16, 16: 16, 32: 8})).eval()
    w = torch.randn(2, g.n_latent, 32)
    for kwargs in ({}, {"noise_mode": "random", "noise_seed": 3}, {"dtype": torch.bfloat16}):
        with torch.no_grad(), SyncCounter() as syncs:
            g.synthesis(w, **kwargs)
        assert syncs.total() == 0, (kwargs, syncs.counts)


@pytest.fixture(scope="module")
def dino(tmp_path_factory):
    from transedit.models.registry import load_dino
    from transedit.random_weights import save_random_dino

    return load_dino(save_random_dino(tmp_path_factory.mktemp("dino") / "d.safetensors")).model.eval()


def test_dino_preprocessing_and_forward_have_none(dino):
    from transedit.models.dino import preprocess

    images = torch.rand(2, 3, 40, 56)
    with torch.no_grad():
        dino(preprocess(images, size=32))  # the normalisation constants are copied to the device once, here
    with torch.no_grad(), SyncCounter() as syncs:
        dino(preprocess(images, size=32))
    assert syncs.total() == 0, syncs.counts


def test_splice_training_step_has_none(dino):
    """Steps between two early-stop checks (the one sync per 200-step window) wait for nothing; the random draws
    are host-side (a CPU generator), so a seed gives the same run on every device."""
    from transedit.models.splice import SpliceSettings, SpliceTrainer

    a, b = torch.rand(1, 3, 40, 40), torch.rand(1, 3, 40, 48)
    trainer = SpliceTrainer(dino, a, b, SpliceSettings(steps=100, dino_size=32, early_stop=False))
    trainer.step()  # step 0 (appearance term only) and any first-step setup

    def run(n):
        for _ in range(n):
            trainer.step()

    assert per_step(run, 2, 6) == {}
    with SyncCounter() as syncs:
        run(3)
    assert syncs.total() == 0, syncs.counts


@pytest.mark.parametrize("family", ["style_transformer", "psp", "e4e", "styleprompter", "swinstyleformer"])
def test_encoder_forward_has_none(tmp_path, family):
    from transedit.models.registry import load_encoder
    from transedit.random_weights import save_random_encoder

    desc = load_encoder(save_random_encoder(tmp_path / "e.pt", family=family))
    x = torch.rand(2, 3, *desc.input_size) * 2 - 1
    with torch.no_grad(), SyncCounter() as syncs:
        desc.model(x, return_features=family == "styleprompter")
    assert syncs.total() == 0, syncs.counts


@pytest.fixture(scope="module", params=["cvpr2022", "tpami2024"])
def put_model(request, tmp_path_factory):
    from transedit.models.registry import load_put
    from transedit.random_weights import save_random_put

    path = save_random_put(tmp_path_factory.mktemp("put") / f"{request.param}.pth", version=request.param)
    return load_put(path).model.eval()


def put_fill(model, hole: int, schedule=1, raster: bool = False):
    """Three samples of one picture with a hole of `hole` x `hole` tokens, per-sample CPU generators (the node's
    way)."""
    from transedit.models.put_sampling import SamplerRNG, sample_tokens

    h, w = model.image_size
    p = model.patch_size
    img = torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(0)).expand(3, -1, -1, -1) * 255
    known = torch.ones(3, 1, h, w)
    known[..., p:p + hole * p, p:p + hole * p] = 0
    data = model.content_codec.get_features(img, known)
    gens = [torch.Generator().manual_seed(s) for s in range(3)]
    return sample_tokens(model, data["feature"], data["token"], data["token_type"], data["unmask_ratio"],
                         schedule=schedule, top_k=4, raster=raster, rng=SamplerRNG(gens))


def test_put_sampling_passes_have_none(put_model):
    """The number of syncs does not grow with the number of passes (a larger hole at 2 tokens per pass means
    more passes); what a fill does once (planning its passes) is allowed."""
    assert per_step(lambda hole: put_fill(put_model, hole, schedule=2), 2, 4) == {}


def test_put_raster_order_has_none(put_model):
    if put_model.config.version != "cvpr2022":
        pytest.skip("the CVPR model's raster loop (the TPAMI one shares the schedule loop above)")
    assert per_step(lambda hole: put_fill(put_model, hole, raster=True), 2, 4) == {}


def test_retinaface_reads_back_once_per_batch(tmp_path):
    """However many images and detections, one copy of the batch's best boxes comes back (it used to be several
    per image and two per face)."""
    from transedit.models.registry import load_retinaface
    from transedit.random_weights import save_random_retinaface

    model = load_retinaface(save_random_retinaface(tmp_path / "r.pth", backbone="mobilenet0.25")).model.eval()
    images = torch.rand(3, 3, 64, 80, generator=torch.Generator().manual_seed(0))
    model.detect(images[:1])  # device constants made once

    def run(n):
        faces = model.detect(images[:n], threshold=0.0)
        assert sum(map(len, faces)) >= n  # the random detector finds plenty: the read-back is really exercised

    assert per_step(run, 1, 3) == {}


def test_invert_copies_back_per_chunk_not_per_image(tmp_path):
    """StylePrompter's encoder features come back to the intermediate device once per level and chunk, whatever
    the number of images in the chunk."""
    from conftest import model_folders
    from transedit.random_weights import save_random_encoder
    from transedit.nodes.inversion import TransEditInvert, TransEditLoadEncoder

    with model_folders(tmp_path, ("gan_encoders",)):
        save_random_encoder(tmp_path / "gan_encoders" / "sp.pt", family="styleprompter")
        encoder, _ = TransEditLoadEncoder().load("sp.pt")
    node = TransEditInvert()
    node.chunk_size = 4
    photos = torch.rand(3, 64, 64, 3, generator=torch.Generator().manual_seed(1))
    node.invert(encoder, photos[:1], "fast (torch)", "fp32")

    assert per_step(lambda n: node.invert(encoder, photos[:n], "fast (torch)", "fp32"), 1, 3, moves=True) == {}
