"""StyleGAN nodes outside ComfyUI (the bridge's plain-torch fallback): shapes, dtypes, batches, errors."""
import pytest
import torch

from transedit.models.core.latent import StyleLatent
from transedit.random_weights import save_random_generator
from transedit.models.stylegan.generator import StyleGAN2Config
from transedit.nodes import comfy_bridge as bridge
from transedit.nodes import rendering
from transedit.nodes.inputs import NodeInputError
from transedit.nodes.stylegan import TransEditGenerate, TransEditLoadStyleGAN, TransEditSampleLatent


@pytest.fixture
def model_dir(tmp_path, tiny_config):
    folder = tmp_path / "stylegan"
    save_random_generator(folder / "tiny.pt", tiny_config, seed=1)
    other = StyleGAN2Config(size=16, style_dim=24, n_mlp=1, channels={4: 8, 8: 8, 16: 8})
    save_random_generator(folder / "sub" / "other.safetensors", other, seed=2)
    bridge.set_fallback_folder("stylegan", [str(folder)])
    yield folder
    bridge._fallback_paths.pop("stylegan", None)


@pytest.fixture
def gen(model_dir):
    return TransEditLoadStyleGAN().load("tiny.pt")[0]


def sample(gen, seed=0, batch=2, trunc=0.7):
    return TransEditSampleLatent().sample(gen, seed, batch, trunc)[0]


def generate(gen, latent, noise="const", noise_seed=0, precision="fp32"):
    return TransEditGenerate().generate(gen, latent, noise, noise_seed, precision)[0]


def test_loader_lists_files_in_subfolders(model_dir):
    choices = TransEditLoadStyleGAN.INPUT_TYPES()["required"]["ckpt_name"][0]
    assert choices == ["sub/other.safetensors", "tiny.pt"]


def test_sample_latent_shapes_and_determinism(gen):
    lat = sample(gen, seed=5, batch=3)
    assert isinstance(lat, StyleLatent)
    assert lat.wplus.shape == (3, gen.config.n_latent, gen.config.style_dim)
    assert lat.wplus.dtype == torch.float32 and lat.wplus.device.type == "cpu"
    # image i depends on seed + i only, not on the batch size
    torch.testing.assert_close(sample(gen, seed=6, batch=1).wplus[0], lat.wplus[1])
    assert not torch.allclose(lat.wplus[0], lat.wplus[1])
    # truncation 0 gives the W mean, truncation 1 the raw mapping
    torch.testing.assert_close(sample(gen, trunc=0.0).wplus[0, 0], gen.descriptor.latent_avg)


def test_generate_image_contract(gen):
    lat = sample(gen, batch=3)
    img = generate(gen, lat)
    assert img.shape == (3, 32, 32, 3) and img.dtype == torch.float32 and img.device.type == "cpu"
    assert img.min() >= 0 and img.max() <= 1 and img.std() > 0.01
    torch.testing.assert_close(generate(gen, lat), img, rtol=0, atol=0)  # const noise is deterministic


def test_generate_matches_model_synthesis(gen):
    lat = sample(gen, batch=2)
    images = generate(gen, lat)  # loads the model onto the compute device
    model = gen.descriptor.model
    with torch.no_grad():
        ref = model.synthesis(lat.wplus.to(next(model.parameters()).device)).cpu()
    torch.testing.assert_close(images, ((ref + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1))


def test_noise_modes(gen):
    lat = sample(gen, batch=2)
    a = generate(gen, lat, "random", 1)
    torch.testing.assert_close(generate(gen, lat, "random", 1), a, rtol=0, atol=0)
    assert not torch.allclose(generate(gen, lat, "random", 2), a)
    # per-image noise seeds: image 1 with seed 1 == image 0 with seed 2
    single = StyleLatent(lat.wplus[1:2])
    torch.testing.assert_close(generate(gen, single, "random", 2)[0], a[1])
    assert not torch.allclose(generate(gen, lat, "none"), generate(gen, lat, "const"))


def test_chunked_batches_equal_one_pass(gen, monkeypatch):
    lat = sample(gen, batch=7)
    monkeypatch.setattr(TransEditGenerate, "chunk_size", 7)
    whole = generate(gen, lat)
    monkeypatch.setattr(TransEditGenerate, "chunk_size", 3)
    torch.testing.assert_close(generate(gen, lat), whole)


def test_out_of_memory_halves_the_chunk(gen, monkeypatch):
    lat = sample(gen, batch=6)
    whole = generate(gen, lat)
    real = rendering._synthesise
    calls = []

    def flaky(module, wplus, *args):
        calls.append(wplus.shape[0])
        if wplus.shape[0] > 2:
            raise bridge.oom_exception()("CUDA out of memory (simulated)")
        return real(module, wplus, *args)

    monkeypatch.setattr(rendering, "_synthesise", flaky)
    monkeypatch.setattr(TransEditGenerate, "chunk_size", 8)
    torch.testing.assert_close(generate(gen, lat), whole)
    assert calls[:3] == [6, 3, 1]  # each retry halves what failed


def test_cancel_propagates(gen, monkeypatch):
    class Interrupted(Exception):
        pass

    calls = {"n": 0}

    def interrupt():
        calls["n"] += 1
        if calls["n"] > 1:
            raise Interrupted()

    monkeypatch.setattr(bridge, "check_interrupt", interrupt)
    monkeypatch.setattr(TransEditGenerate, "chunk_size", 1)
    with pytest.raises(Interrupted):
        generate(gen, sample(gen, batch=3))
    assert calls["n"] == 2


def test_bf16_is_close_to_fp32(gen):
    lat = sample(gen, batch=2)
    diff = (generate(gen, lat, precision="bf16") - generate(gen, lat)).abs()
    assert generate(gen, lat, precision="bf16").dtype == torch.float32
    assert diff.mean() < 0.02


# ------------------------------------------------------------------------------------ errors
def test_latent_from_other_generator_is_refused(gen, model_dir):
    other = TransEditLoadStyleGAN().load("sub/other.safetensors")[0]
    lat = sample(other, batch=1)
    with pytest.raises(NodeInputError) as e:
        generate(gen, lat)
    msg = str(e.value)
    assert "TransEdit Generate" in msg and "'latent'" in msg and "Fix:" in msg and "tiny.pt" in msg


@pytest.mark.parametrize("kwargs,input_name", [
    (dict(seed=-1), "seed"), (dict(seed=2 ** 64), "seed"), (dict(batch=0), "batch_size"),
    (dict(batch=65), "batch_size"), (dict(trunc=1.5), "truncation"), (dict(trunc=float("nan")), "truncation"),
])
def test_sample_latent_limits(gen, kwargs, input_name):
    with pytest.raises(NodeInputError, match=f"TransEdit Sample Latent: input '{input_name}'"):
        sample(gen, **kwargs)


def test_generate_bad_inputs(gen):
    lat = sample(gen, batch=1)
    with pytest.raises(NodeInputError, match="'noise_mode'"):
        generate(gen, lat, noise="blue")
    with pytest.raises(NodeInputError, match="'precision'"):
        generate(gen, lat, precision="fp8")
    with pytest.raises(NodeInputError, match="'generator'"):
        generate("not a model", lat)
    with pytest.raises(NodeInputError, match="'latent'"):
        generate(gen, torch.zeros(1, 8, 32))
    with pytest.raises(NodeInputError, match="NaN"):
        generate(gen, StyleLatent(torch.full_like(lat.wplus, float("nan"))))


def test_missing_weight_file(model_dir):
    with pytest.raises(NodeInputError, match="'ckpt_name'.*not found"):
        TransEditLoadStyleGAN().load("gone.pt")
