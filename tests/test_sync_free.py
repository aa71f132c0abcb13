"""The per-step loops make no host synchronisation: Splice's training step, PUT's sampling passes, StyleGAN2
synthesis, DINO's preprocessing, the encoders' forward; and where a node must bring results back (Invert's
features, RetinaFace's detections), the number of copies does not grow with the number of images or faces.

Each loop runs on TRANSEDIT_TEST_DEVICE (the CPU unless set; ./dev.sh gpu-check sets its device) and is judged by
two detectors: the sync sentinel (tests/sync_sentinel.py, which counts the calls that would synchronise on a GPU,
so a regression shows on a CPU-only machine) and, on a CUDA device, PyTorch's own detector
(torch.cuda.set_sync_debug_mode), so the two are seen to agree. The planted syncs at the end show that PyTorch's
detector and the sentinel both fire on the GPU."""
from __future__ import annotations

import pytest
import torch

from conftest import TEST_DEVICE
from sync_sentinel import SyncCounter, cuda_per_step, cuda_sync_errors, per_step

ON_CUDA = TEST_DEVICE.type == "cuda"
NEEDS_CUDA = ("PyTorch's own sync detector (torch.cuda.set_sync_debug_mode) needs a CUDA device: run with "
              "TRANSEDIT_TEST_DEVICE=cuda, as ./dev.sh gpu-check does on a GPU machine")


class Sentinel:
    """The sync sentinel's verdicts."""

    name = "sentinel"

    def none(self, run) -> None:
        with SyncCounter() as syncs:
            run()
        assert syncs.total() == 0, syncs.counts

    def per_step(self, run, small: int, large: int, moves: bool = False) -> None:
        assert per_step(run, small, large, moves) == {}


class TorchCuda:
    """PyTorch's verdicts on a CUDA device: error mode where nothing may sync, warning counts per step."""

    name = "torch.cuda"

    def none(self, run) -> None:
        torch.cuda.synchronize()  # work queued before the loop is not the loop's
        with cuda_sync_errors():
            run()
        torch.cuda.synchronize()

    def per_step(self, run, small: int, large: int, moves: bool = False) -> None:
        torch.cuda.synchronize()
        assert cuda_per_step(run, small, large) == 0


def warm_up(run) -> None:
    """On a CUDA device, run once before judging: a first call initialises kernels and workspaces (the CPU needs
    no such run, and CI's time is short)."""
    if ON_CUDA:
        run()


@pytest.fixture(params=["sentinel", "torch.cuda"])
def detector(request):
    if request.param == "torch.cuda" and not ON_CUDA:
        pytest.skip(NEEDS_CUDA)
    return Sentinel() if request.param == "sentinel" else TorchCuda()


def test_the_sentinel_sees_the_pack_as_imported_here():
    """Not blind in this process, however the pack was imported (./dev.sh gpu-check imports it through a symlink):
    a pack function that copies host data to the device once is counted at its line."""
    import uuid

    import transedit
    from transedit.models.core.devices import device_constant

    fresh = [float(uuid.uuid4().int % 1000), 0.5]  # a constant not cached yet: this call builds it
    with SyncCounter() as syncs:
        device_constant(fresh, TEST_DEVICE)
        device_constant(fresh, TEST_DEVICE)  # the second call reuses it
    assert syncs.ops() == {"tensor"} and syncs.total() == 1, (transedit.__file__, syncs.counts)
    assert all(site.startswith("models/core/devices.py:") for _, site in syncs.counts), syncs.counts


def test_stylegan2_synthesis_has_none(detector):
    from transedit.models.stylegan.generator import StyleGAN2Config, StyleGAN2Generator

    g = StyleGAN2Generator(StyleGAN2Config(size=32, style_dim=32, n_mlp=2,
                                           channels={4: 16, 8: 16, 16: 16, 32: 8})).eval().to(TEST_DEVICE)
    w = torch.randn(2, g.n_latent, 32, device=TEST_DEVICE)
    for kwargs in ({}, {"noise_mode": "random", "noise_seed": 3}, {"dtype": torch.bfloat16}):
        with torch.no_grad():
            warm_up(lambda: g.synthesis(w, **kwargs))
            detector.none(lambda: g.synthesis(w, **kwargs))


@pytest.fixture(scope="module")
def dino(tmp_path_factory):
    from transedit.models.registry import load_dino
    from transedit.random_weights import save_random_dino

    return load_dino(save_random_dino(tmp_path_factory.mktemp("dino") / "d.safetensors")).model.eval().to(TEST_DEVICE)


def test_dino_preprocessing_and_forward_have_none(dino, detector):
    from transedit.models.splice.dino import preprocess

    images = torch.rand(2, 3, 40, 56, device=TEST_DEVICE)
    with torch.no_grad():
        dino(preprocess(images, size=32))  # the normalisation constants are copied to the device once, here
        detector.none(lambda: dino(preprocess(images, size=32)))


def test_splice_training_step_has_none(dino, detector):
    """Steps between two early-stop checks (the one sync per 200-step window) wait for nothing; the random draws
    are host-side (a CPU generator), so a seed gives the same run on every device."""
    from transedit.models.splice.training import SpliceSettings, SpliceTrainer

    a, b = (torch.rand(1, 3, 40, w, device=TEST_DEVICE) for w in (40, 48))
    trainer = SpliceTrainer(dino, a, b, SpliceSettings(steps=100, dino_size=32, early_stop=False))
    trainer.step()  # step 0 (appearance term only) and any first-step setup
    warm_up(trainer.step)

    def run(n):
        for _ in range(n):
            trainer.step()

    detector.per_step(run, 2, 6)
    detector.none(lambda: run(3))


@pytest.mark.parametrize("family", ["style_transformer", "psp", "e4e", "styleprompter", "swinstyleformer"])
def test_encoder_forward_has_none(tmp_path, family, detector):
    from transedit.models.registry import load_encoder
    from transedit.random_weights import save_random_encoder

    desc = load_encoder(save_random_encoder(tmp_path / "e.pt", family=family))
    model = desc.model.to(TEST_DEVICE)
    x = torch.rand(2, 3, *desc.input_size, device=TEST_DEVICE) * 2 - 1
    with torch.no_grad():
        warm_up(lambda: model(x, return_features=family == "styleprompter"))
        detector.none(lambda: model(x, return_features=family == "styleprompter"))


@pytest.fixture(scope="module", params=["cvpr2022", "tpami2024"])
def put_model(request, tmp_path_factory):
    from transedit.models.registry import load_put
    from transedit.random_weights import save_random_put

    path = save_random_put(tmp_path_factory.mktemp("put") / f"{request.param}.pth", version=request.param)
    return load_put(path).model.eval().to(TEST_DEVICE)


def put_fill(model, hole: int, schedule=1, raster: bool = False):
    """Three samples of one picture with a hole of `hole` x `hole` tokens, per-sample CPU generators (the node's
    way)."""
    from transedit.models.put.sampling import SamplerRNG, sample_tokens

    h, w = model.image_size
    p = model.patch_size
    img = torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(0)).expand(3, -1, -1, -1) * 255
    known = torch.ones(3, 1, h, w)
    known[..., p:p + hole * p, p:p + hole * p] = 0
    data = model.content_codec.get_features(img.to(TEST_DEVICE), known.to(TEST_DEVICE))
    gens = [torch.Generator().manual_seed(s) for s in range(3)]
    return sample_tokens(model, data["feature"], data["token"], data["token_type"], data["unmask_ratio"],
                         schedule=schedule, top_k=4, raster=raster, rng=SamplerRNG(gens))


def test_put_sampling_passes_have_none(put_model, detector):
    """The number of syncs does not grow with the number of passes (a larger hole at 2 tokens per pass means
    more passes); what a fill does once (planning its passes) is allowed."""
    warm_up(lambda: put_fill(put_model, 2, schedule=2))
    detector.per_step(lambda hole: put_fill(put_model, hole, schedule=2), 2, 4)


def test_put_raster_order_has_none(put_model, detector):
    if put_model.config.version != "cvpr2022":
        pytest.skip("the CVPR model's raster loop (the TPAMI one shares the schedule loop above)")
    warm_up(lambda: put_fill(put_model, 2, raster=True))
    detector.per_step(lambda hole: put_fill(put_model, hole, raster=True), 2, 4)


def test_retinaface_reads_back_once_per_batch(tmp_path, detector):
    """However many images and detections, one copy of the batch's best boxes comes back (it used to be several
    per image and two per face)."""
    from transedit.models.registry import load_retinaface
    from transedit.random_weights import save_random_retinaface

    model = load_retinaface(save_random_retinaface(tmp_path / "r.pth", backbone="mobilenet0.25")).model.eval()
    model.to(TEST_DEVICE)
    images = torch.rand(3, 3, 64, 80, generator=torch.Generator().manual_seed(0)).to(TEST_DEVICE)
    model.detect(images[:1])  # device constants made once

    def run(n):
        faces = model.detect(images[:n], threshold=0.0)
        assert sum(map(len, faces)) >= n  # the random detector finds plenty: the read-back is really exercised

    detector.per_step(run, 1, 3)


def test_invert_copies_back_per_chunk_not_per_image(tmp_path, monkeypatch, detector):
    """StylePrompter's encoder features come back to the intermediate device once per level and chunk, whatever
    the number of images in the chunk."""
    from conftest import model_folders
    from transedit.random_weights import save_random_encoder
    from transedit.nodes.inversion import TransEditInvert, TransEditLoadEncoder

    monkeypatch.setenv("TRANSEDIT_DEVICE", str(TEST_DEVICE))  # the node's compute device
    with model_folders(tmp_path, ("gan_encoders",)):
        save_random_encoder(tmp_path / "gan_encoders" / "sp.pt", family="styleprompter")
        encoder, _ = TransEditLoadEncoder().load("sp.pt")
    node = TransEditInvert()
    node.chunk_size = 4
    photos = torch.rand(3, 64, 64, 3, generator=torch.Generator().manual_seed(1))
    node.invert(encoder, photos[:1], "fast (torch)", "fp32")
    assert next(encoder.load().parameters()).device.type == TEST_DEVICE.type

    detector.per_step(lambda n: node.invert(encoder, photos[:n], "fast (torch)", "fp32"), 1, 3, moves=True)


# ------------------------------------------------------------------- planted syncs on the GPU: both detectors fire
# (implicit syncs only: an explicit torch.cuda.synchronize() is counted by the sentinel, tests/test_sync_sentinel.py;
# whether PyTorch's detector flags it is not relied on)
CUDA_PLANTED = '''
import math

import torch


def item(x): return x.sum().item()
def bool_(x): return bool(x.sum() > 0)
def formatted(x): return f"{x.sum():.3f}"
def tolist(x): return x.tolist()
def cpu(x): return x.cpu()
def to_host(x): return x.to("cpu")
def mask_index(x): return x[x > 2]
def mask_assign(x):
    y = x.clone()
    y[y > 2] = 0.0
    return y
def where_condition(x): return torch.where(x > 2)
def nonzero(x): return (x > 2).nonzero()
def masked_select(x): return x.masked_select(x > 2)
def unique(x): return torch.unique(x)
def multinomial(x): return torch.multinomial(x + 1, 1)
def repeat_interleave(x): return x.repeat_interleave(torch.ones_like(x, dtype=torch.long))
def allclose(x): return torch.allclose(x, x)
def host_tensor_to_device(x): return x + torch.tensor([1.0] * 6, device=x.device)
def copy_from_host(x): return x.clone().copy_(torch.ones(6))
def blur_kernel_built_on_host(x, sigma=1.5):
    k = torch.tensor([math.exp(-(i - 1) ** 2 / (2 * sigma ** 2)) for i in range(3)]).to(x.device)
    return torch.nn.functional.conv1d(x.view(1, 1, -1), (k / k.sum()).view(1, 1, 3))
'''


@pytest.mark.parametrize("name", ["item", "bool_", "formatted", "tolist", "cpu", "to_host", "mask_index",
                                  "mask_assign", "where_condition", "nonzero", "masked_select", "unique",
                                  "multinomial", "repeat_interleave", "allclose", "host_tensor_to_device",
                                  "copy_from_host", "blur_kernel_built_on_host"])
def test_planted_syncs_fire_both_detectors_on_the_gpu(name):
    if not ON_CUDA:
        pytest.skip(NEEDS_CUDA)
    from test_sync_sentinel import plant

    fn = getattr(plant("transedit.models.planted_cuda_syncs", "/nowhere/planted_cuda_syncs.py",
                       CUDA_PLANTED), name)
    x = torch.arange(6.0, device=TEST_DEVICE)
    fn(x)  # once outside the detectors: lazy CUDA set-up is not the plant's
    torch.cuda.synchronize()
    with SyncCounter() as syncs:
        fn(x)
    assert syncs.total() >= 1, f"the sentinel missed {name} on {TEST_DEVICE}"
    torch.cuda.synchronize()
    with pytest.raises(RuntimeError, match="synchronizing CUDA operation"), cuda_sync_errors():
        fn(x)
    assert cuda_per_step(lambda n: [fn(x) for _ in range(n)], 1, 3) >= 2, "the warning count sees each call"
