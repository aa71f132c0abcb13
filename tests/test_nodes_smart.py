"""StylePrompter through the registry and the nodes: Invert keeps features, SMART Refine + Generate
reproduce the official SMART images; edits before/after SMART; bad input."""
import shutil

import pytest
import torch
from safetensors.torch import load_file

from conftest import fixture_dir
from transedit.models.core.latent import StyleLatent
from transedit.models.registry import load_encoder
from transedit.random_weights import save_random_encoder
from transedit.nodes import comfy_bridge as bridge
from transedit.nodes.inputs import NodeInputError
from transedit.nodes.inversion import RESIZE_MODES, TransEditInvert, TransEditLoadEncoder, TransEditSMARTRefine
from transedit.nodes.stylegan import TransEditGenerate

TOL = dict(atol=5e-4, rtol=1e-5)  # config_small.json's image tolerance


@pytest.fixture(scope="module")
def sp_dir(tmp_path_factory):
    src = fixture_dir("styleprompter_smart")
    folder = tmp_path_factory.mktemp("gan_encoders")
    shutil.copy(src / "ckpt_full_small.pt", folder / "styleprompter_full.pt")
    save_random_encoder(folder / "e4e.pt", "e4e")
    return src, folder


@pytest.fixture(autouse=True)
def folders(sp_dir):
    bridge.set_fallback_folder("gan_encoders", [str(sp_dir[1])])
    yield
    bridge._fallback_paths.pop("gan_encoders", None)


@pytest.fixture(scope="module")
def io(sp_dir):
    return load_file(sp_dir[0] / "io_single.safetensors")


def invert_fixture_input(encoder, io):
    """Invert on the fixture's preprocessed input (bypassing resizing) exactly as the node does."""
    x = io["input"]
    lat = TransEditInvert().invert(encoder, ((x + 1) / 2).permute(0, 2, 3, 1), RESIZE_MODES[0], "fp32")[0]
    return lat


def to_comfy(img):
    return ((img + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1)


def test_registry_reads_both_styleprompter_layouts(sp_dir, io):
    desc = load_encoder(sp_dir[1] / "styleprompter_full.pt")
    assert desc.family == "styleprompter" and desc.smart is not None and desc.generator.config.size == 64
    with torch.no_grad():
        wplus, feats = desc.model(io["input"], return_features=True)
    torch.testing.assert_close(wplus, io["codes"], atol=1e-4, rtol=1e-5)
    for i, f in enumerate(feats):
        torch.testing.assert_close(f, io[f"features.{i}"], atol=1e-3, rtol=1e-5)


def test_invert_smart_generate_reproduces_official_images(io, monkeypatch):
    encoder, generator = TransEditLoadEncoder().load("styleprompter_full.pt")
    # feed the fixture's preprocessed input unchanged (resizing is tested elsewhere)
    monkeypatch.setattr("transedit.nodes.inversion.preprocess_official", lambda imgs, size: io["input"][: len(imgs)])
    lat = TransEditInvert().invert(encoder, torch.zeros(2, 256, 256, 3), RESIZE_MODES[0], "fp32")[0]
    torch.testing.assert_close(lat.wplus, io["codes"], atol=1e-4, rtol=1e-5)
    assert len(lat.extras["smart_features"]) == 2 and lat.extras["smart_features"][0][0].device.type == "cpu"

    plain = TransEditGenerate().generate(generator, lat, "const", 0, "fp32")[0]
    torch.testing.assert_close(plain, to_comfy(io["image.no_smart"]), **TOL)
    for (b1, b2), key in [((1.0, 1.0), "image.smart.beta_1_1"), ((0.5, 0.0), "image.smart.beta_0.5_0")]:
        refined = TransEditSMARTRefine().refine(lat, encoder, b1, b2)[0]
        out = TransEditGenerate().generate(generator, refined, "const", 0, "fp32")[0]
        torch.testing.assert_close(out, to_comfy(io[key]), **TOL)
    assert "smart" not in lat.extras  # inputs are never modified


def test_edits_before_and_after_smart(io, monkeypatch):
    from transedit.nodes.editing import TransEditMixLatents

    encoder, generator = TransEditLoadEncoder().load("styleprompter_full.pt")
    monkeypatch.setattr("transedit.nodes.inversion.preprocess_official", lambda imgs, size: io["input"][: len(imgs)])
    lat = TransEditInvert().invert(encoder, torch.zeros(2, 256, 256, 3), RESIZE_MODES[0], "fp32")[0]
    ref = StyleLatent(lat.wplus.flip(0), lat.generator, lat.generator_name)
    mixed_then_refined = TransEditSMARTRefine().refine(
        TransEditMixLatents().mix(lat, ref, "fine", "0-3", 1.0)[0], encoder, 1.0, 1.0)[0]
    refined_then_mixed = TransEditMixLatents().mix(
        TransEditSMARTRefine().refine(lat, encoder, 1.0, 1.0)[0], ref, "fine", "0-3", 1.0)[0]
    a = TransEditGenerate().generate(generator, mixed_then_refined, "const", 0, "fp32")[0]
    b = TransEditGenerate().generate(generator, refined_then_mixed, "const", 0, "fp32")[0]
    torch.testing.assert_close(a, b)
    plain = TransEditGenerate().generate(generator, TransEditMixLatents().mix(lat, ref, "fine", "0-3", 1.0)[0],
                                         "const", 0, "fp32")[0]
    assert (a - plain).abs().max() > 1e-3  # SMART still acts on the edited latent


def test_smart_bad_inputs(io, monkeypatch, tmp_path):
    encoder, generator = TransEditLoadEncoder().load("styleprompter_full.pt")
    monkeypatch.setattr("transedit.nodes.inversion.preprocess_official", lambda imgs, size: io["input"][: len(imgs)])
    lat = TransEditInvert().invert(encoder, torch.zeros(1, 256, 256, 3), RESIZE_MODES[0], "fp32")[0]
    with pytest.raises(NodeInputError, match="'beta1' must be between 0.0 and 2.0"):
        TransEditSMARTRefine().refine(lat, encoder, 2.5, 1.0)
    with pytest.raises(NodeInputError, match="'beta2'"):
        TransEditSMARTRefine().refine(lat, encoder, 1.0, -0.1)
    e4e, _ = TransEditLoadEncoder().load("e4e.pt")
    with pytest.raises(NodeInputError, match="has no SMART block.*full checkpoint"):
        TransEditSMARTRefine().refine(lat, e4e, 1.0, 1.0)
    with pytest.raises(NodeInputError, match="carries no StylePrompter encoder features"):
        TransEditSMARTRefine().refine(StyleLatent(lat.wplus), encoder, 1.0, 1.0)
    # baseline checkpoint: no SMART block
    ckpt = torch.load(bridge.model_path("gan_encoders", "styleprompter_full.pt"), weights_only=True)
    sd = ckpt["state_dict"]
    ckpt["state_dict"] = {k.replace("decoder.module.generator.", "decoder.module."): v for k, v in sd.items()
                          if "smart_block" not in k}
    torch.save(ckpt, tmp_path / "baseline.pt")
    bridge.set_fallback_folder("gan_encoders", [str(tmp_path)])
    base, base_gen = TransEditLoadEncoder().load("baseline.pt")
    assert base.descriptor.smart is None and base.descriptor.family == "styleprompter"
    with pytest.raises(NodeInputError, match="baseline"):
        TransEditSMARTRefine().refine(lat, base, 1.0, 1.0)
    # a SMART latent rendered by a generator whose 16x16 feature doesn't fit
    refined = TransEditSMARTRefine().refine(lat, encoder, 1.0, 1.0)[0]
    from transedit.models.stylegan.generator import StyleGAN2Config

    narrow = StyleGAN2Config(size=64, style_dim=64, n_mlp=2, channels={4: 32, 8: 32, 16: 16, 32: 16, 64: 16})
    save_random_encoder(tmp_path / "st.pt", "style_transformer", generator_config=narrow)
    _, other_gen = TransEditLoadEncoder().load("st.pt")
    with pytest.raises(NodeInputError, match="16x16 feature"):
        TransEditGenerate().generate(other_gen, refined, "const", 0, "fp32")
