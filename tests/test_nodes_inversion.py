"""Load Encoder / Invert nodes: every family, batches, bundled generator, errors."""
import pytest
import torch

from transedit.models.registry import CheckpointError
from transedit.random_weights import save_random_encoder, save_random_generator
from transedit.models.stylegan.generator import StyleGAN2Config
from transedit.nodes import comfy_bridge as bridge
from transedit.nodes.inputs import NodeInputError
from transedit.nodes.inversion import RESIZE_MODES, TransEditInvert, TransEditLoadEncoder
from transedit.nodes.stylegan import TransEditGenerate, TransEditLoadStyleGAN


@pytest.fixture(scope="module")
def enc_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gan_encoders")
    for fam in ("style_transformer", "psp", "e4e"):
        save_random_encoder(folder / f"{fam}.pt", fam, seed=1)
    save_random_generator(folder / "not_an_encoder.pt")
    return folder


@pytest.fixture(autouse=True)
def folders(enc_dir):
    bridge.set_fallback_folder("gan_encoders", [str(enc_dir)])
    yield
    bridge._fallback_paths.pop("gan_encoders", None)


def photos(n=3, h=300, w=280, seed=0):
    return torch.rand(n, h, w, 3, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("family", ["style_transformer", "psp", "e4e"])
def test_invert_then_generate(family):
    encoder, generator = TransEditLoadEncoder().load(f"{family}.pt")
    lat = TransEditInvert().invert(encoder, photos(), RESIZE_MODES[0], "fp32")[0]
    assert lat.wplus.shape == (3, 10, 64) and lat.wplus.dtype == torch.float32 and lat.wplus.device.type == "cpu"
    assert torch.isfinite(lat.wplus).all() and not torch.allclose(lat.wplus[0], lat.wplus[1])
    assert lat.extras["family"] == family
    # the bundled generator decodes it, and the latent's generator fingerprint matches
    img = TransEditGenerate().generate(generator, lat, "const", 0, "fp32")[0]
    assert img.shape == (3, 64, 64, 3)
    assert lat.generator == generator.descriptor.fingerprint


def test_batch_items_are_independent_and_chunking_is_invisible(monkeypatch):
    encoder, _ = TransEditLoadEncoder().load("style_transformer.pt")
    x = photos(5)
    whole = TransEditInvert().invert(encoder, x, RESIZE_MODES[0], "fp32")[0].wplus
    one = TransEditInvert().invert(encoder, x[3:4], RESIZE_MODES[0], "fp32")[0].wplus
    torch.testing.assert_close(one[0], whole[3], atol=1e-5, rtol=1e-5)
    monkeypatch.setattr(TransEditInvert, "chunk_size", 2)
    torch.testing.assert_close(TransEditInvert().invert(encoder, x, RESIZE_MODES[0], "fp32")[0].wplus, whole,
                               atol=1e-5, rtol=1e-5)


def test_fast_resize_and_bf16_are_close():
    encoder, _ = TransEditLoadEncoder().load("psp.pt")
    x = photos(2)
    ref = TransEditInvert().invert(encoder, x, RESIZE_MODES[0], "fp32")[0].wplus
    fast = TransEditInvert().invert(encoder, x, RESIZE_MODES[1], "fp32")[0].wplus
    low = TransEditInvert().invert(encoder, x, RESIZE_MODES[0], "bf16")[0].wplus
    scale = ref.abs().mean()
    assert (fast - ref).abs().mean() < 0.05 * scale
    assert (low - ref).abs().mean() < 0.05 * scale


def test_odd_inputs_rgba_grey_large():
    encoder, _ = TransEditLoadEncoder().load("e4e.pt")
    assert TransEditInvert().invert(encoder, torch.rand(1, 64, 64, 4), RESIZE_MODES[0], "fp32")[0].wplus.shape[0] == 1
    assert TransEditInvert().invert(encoder, torch.rand(2, 40, 90, 1), RESIZE_MODES[1], "fp32")[0].wplus.shape[0] == 2
    big = torch.rand(1, 3000, 2000, 3)
    assert TransEditInvert().invert(encoder, big, RESIZE_MODES[0], "fp32")[0].wplus.shape == (1, 10, 64)


def test_errors():
    encoder, _ = TransEditLoadEncoder().load("psp.pt")
    with pytest.raises(NodeInputError, match="TransEdit Invert: input 'images' is an empty batch"):
        TransEditInvert().invert(encoder, torch.rand(0, 64, 64, 3), RESIZE_MODES[0], "fp32")
    with pytest.raises(NodeInputError, match="1x1 pixels"):
        TransEditInvert().invert(encoder, torch.rand(1, 1, 1, 3), RESIZE_MODES[0], "fp32")
    with pytest.raises(NodeInputError, match="'encoder' must be a TE_ENCODER"):
        TransEditInvert().invert("x", photos(1), RESIZE_MODES[0], "fp32")
    with pytest.raises(NodeInputError, match="'encoder_name'.*not found"):
        TransEditLoadEncoder().load("missing.pt")
    with pytest.raises(NodeInputError, match="TransEdit Load Encoder: input 'encoder_name' cannot be used: "
                                             "not_an_encoder.pt: is a StyleGAN2 generator, not an inversion encoder"):
        TransEditLoadEncoder().load("not_an_encoder.pt")


def test_latent_for_another_generator_names_both_files(tmp_path):
    encoder, _ = TransEditLoadEncoder().load("style_transformer.pt")
    lat = TransEditInvert().invert(encoder, photos(1), RESIZE_MODES[0], "fp32")[0]
    save_random_generator(tmp_path / "other.pt", StyleGAN2Config(size=32, style_dim=32, n_mlp=1,
                                                                 channels={4: 8, 8: 8, 16: 8, 32: 8}))
    bridge.set_fallback_folder("stylegan", [str(tmp_path)])
    try:
        other = TransEditLoadStyleGAN().load("other.pt")[0]
        with pytest.raises(NodeInputError) as e:
            TransEditGenerate().generate(other, lat, "const", 0, "fp32")
    finally:
        bridge._fallback_paths.pop("stylegan", None)
    assert "style_transformer.pt" in str(e.value) and "other.pt" in str(e.value)


def test_encoder_generator_mismatch_in_one_file(tmp_path):
    import torch as T

    path = save_random_encoder(tmp_path / "st.pt", "style_transformer")
    ckpt = T.load(path, weights_only=True)
    small = save_random_generator(tmp_path / "g.pt", StyleGAN2Config(size=32, style_dim=64, n_mlp=2,
                                                                     channels={4: 8, 8: 8, 16: 8, 32: 8}))
    g = T.load(small, weights_only=True)["g_ema"]
    ckpt["state_dict"] = {k: v for k, v in ckpt["state_dict"].items() if not k.startswith("decoder.")}
    ckpt["state_dict"].update({f"decoder.module.{k}": v for k, v in g.items()})
    T.save(ckpt, tmp_path / "mixed.pt")
    from transedit.models.registry import load_encoder

    with pytest.raises(CheckpointError, match=r"mixed.pt: its encoder predicts W\+ \[10, 64\] but its bundled generator takes \[8, 64\]"):
        load_encoder(tmp_path / "mixed.pt")


@pytest.mark.parametrize("family", ["psp", "e4e", "style_transformer"])
def test_cars_checkpoints_use_the_official_192x256_input(tmp_path, family, monkeypatch):
    import torch as T

    from transedit.models.encoders import irse
    from transedit.models.registry import load_encoder

    path = save_random_encoder(tmp_path / "cars.pt", family)
    ckpt = T.load(path, weights_only=True)
    ckpt["opts"]["dataset_type"] = "cars_encode"
    T.save(ckpt, path)
    desc = load_encoder(path)
    assert desc.input_size == (192, 256)
    x = irse.preprocess_official(torch.rand(2, 300, 400, 3), size=desc.input_size)
    assert x.shape == (2, 3, 192, 256)
    with T.no_grad():
        assert desc.model(x).shape == (2, 10, 64)
    seen = []
    real = irse.preprocess_official
    monkeypatch.setattr("transedit.nodes.inversion.preprocess_official",
                        lambda imgs, size: seen.append(size) or real(imgs, size))
    bridge.set_fallback_folder("gan_encoders", [str(tmp_path)])
    encoder, _ = TransEditLoadEncoder().load("cars.pt")
    TransEditInvert().invert(encoder, photos(1), RESIZE_MODES[0], "fp32")
    assert seen == [(192, 256)]


def test_low_precision_keeps_wplus_in_fp32():
    from transedit.models.registry import load_encoder

    desc = load_encoder(bridge.model_path("gan_encoders", "psp.pt"))
    x = torch.rand(1, 3, 256, 256) * 2 - 1
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        w = desc.model(x)
    assert w.dtype == torch.float32


def test_styleprompter_random_full_checkpoint_end_to_end(tmp_path):
    """Without the fixtures: a tiny official-layout StylePrompter full checkpoint through every node."""
    from transedit.nodes.inversion import TransEditSMARTRefine

    save_random_encoder(tmp_path / "sp.pt", "styleprompter")
    bridge.set_fallback_folder("gan_encoders", [str(tmp_path)])
    encoder, generator = TransEditLoadEncoder().load("sp.pt")
    assert encoder.descriptor.family == "styleprompter" and encoder.descriptor.smart is not None
    lat = TransEditInvert().invert(encoder, photos(2), RESIZE_MODES[0], "fp32")[0]
    assert len(lat.extras["smart_features"]) == 2
    plain = TransEditGenerate().generate(generator, lat, "const", 0, "fp32")[0]
    refined = TransEditSMARTRefine().refine(lat, encoder, 1.0, 1.0)[0]
    out = TransEditGenerate().generate(generator, refined, "const", 0, "fp32")[0]
    assert out.shape == plain.shape == (2, 64, 64, 3) and (out - plain).abs().max() > 1e-4
