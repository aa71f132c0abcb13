"""StyleGAN2 generator against the official rosinality code (../shared/fixtures golden tensors)."""
import json

import pytest
import torch
from safetensors.torch import load_file

from transedit.models.registry import infer_stylegan2_config, load_stylegan2
from transedit.models.stylegan.generator import StyleGAN2Config, StyleGAN2Generator

from conftest import TEST_DEVICE

# The spec (atol 1e-5) with the fixture README's rtol for fp32 CPU.
TOL = dict(atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def io(sg2_fixtures):
    return {k: v.to(TEST_DEVICE) for k, v in load_file(sg2_fixtures / "io_stylegan2_small.safetensors").items()}


@pytest.fixture(scope="module", params=["grouped", "shared"])
def gen(sg2_fixtures, request):
    """Both formulations of the modulated conv must match the official code."""
    meta = json.loads((sg2_fixtures / "stylegan2_small.json").read_text())
    cfg = StyleGAN2Config(size=meta["constructor"]["size"], style_dim=meta["constructor"]["style_dim"],
                          n_mlp=meta["constructor"]["n_mlp"], channels=meta["channels_patch"]["small"])
    g = StyleGAN2Generator(cfg).eval()
    g.load_state_dict(load_file(sg2_fixtures / "stylegan2_small.safetensors"), strict=True)
    return g.set_modconv_formulation(request.param).to(TEST_DEVICE)


def close(actual, expected):
    torch.testing.assert_close(actual, expected.to(actual.device), **TOL)


@torch.no_grad()
def test_mapping(gen, io):
    close(gen.mapping(io["in_z"]), io["out_w"])
    close(gen.mapping(io["in_z2"]), io["out_w2"])
    close(gen.mapping(io["in_mean_latent_z"]).mean(0, keepdim=True), io["out_mean_latent_recomputed"])


@torch.no_grad()
@pytest.mark.parametrize("case", ["plain", "truncated"])
def test_z_input(gen, io, case):
    kw = {} if case == "plain" else dict(truncation=float(io["in_truncation"]), truncation_latent=io["in_mean_latent"])
    img, lat = gen([io["in_z"]], return_latents=True, **kw)
    suffix = "" if case == "plain" else "_trunc"
    close(img, io[f"out_img_a_z{suffix}"])
    close(lat, io[f"out_latent_a_z{suffix}"])


@torch.no_grad()
def test_wplus_input(gen, io):
    close(gen([io["in_w_plus"]], input_is_latent=True), io["out_img_b_wplus"])
    close(gen([io["in_w_plus"]], input_is_latent=True, truncation=float(io["in_truncation"]),
              truncation_latent=io["in_mean_latent"]), io["out_img_b_wplus_trunc"])
    close(gen([io["out_w"]], input_is_latent=True), io["out_img_b_w"])
    # synthesis() is the W+ entry point the nodes use
    close(gen.synthesis(io["in_w_plus"], noise_mode="const"), io["out_img_b_wplus"])


@torch.no_grad()
def test_style_mixing(gen, io):
    ii = int(io["in_inject_index"])
    img, lat = gen([io["in_z"], io["in_z2"]], inject_index=ii, return_latents=True)
    close(img, io["out_img_c_mix_z"])
    close(lat, io["out_latent_c_mix_z"])
    img, lat = gen([io["in_z"], io["in_z2"]], inject_index=ii, truncation=float(io["in_truncation"]),
                   truncation_latent=io["in_mean_latent"], return_latents=True)
    close(img, io["out_img_c_mix_z_trunc"])
    close(lat, io["out_latent_c_mix_z_trunc"])
    close(gen([io["out_w"], io["out_w2"]], input_is_latent=True, inject_index=ii), io["out_img_c_mix_w"])


@torch.no_grad()
def test_explicit_noise(gen, io):
    noise = [io[f"in_noise_per_sample_{i}"] for i in range(gen.config.num_noises)]
    close(gen([io["in_w_plus"]], input_is_latent=True, noise=noise), io["out_img_d_wplus_explicit_noise"])


@torch.no_grad()
def test_intermediate_features(gen, io):
    _, feats = gen([io["in_z"]], return_features=True)
    for res in (4, 8, 16, 32, 64):
        close(feats[f"rgb{res}"], io[f"out_feat_a_skip_{res}"])
    close(feats["conv4"], io["out_feat_a_convs3_16"])  # the SMART injection point

    _, feats = gen([io["in_w_plus"]], input_is_latent=True, return_features=True)
    close(feats["conv0"], io["out_feat_b_conv1_4"])
    for k, res in enumerate([8, 8, 16, 16, 32, 32, 64, 64]):
        close(feats[f"conv{k + 1}"], io[f"out_feat_b_convs{k}_{res}"])
    for res in (4, 8, 16, 32, 64):
        close(feats[f"rgb{res}"], io[f"out_feat_b_skip_{res}"])


@torch.no_grad()
def test_feature_hook_replaces_layer_4(gen, io):
    """Replacing the 16x16 feature after layer 4 with itself changes nothing; with zeros it changes the image."""
    seen = []

    def identity(layer, x):
        seen.append(layer)
        return None

    close(gen.synthesis(io["in_w_plus"], feature_hook=identity), io["out_img_b_wplus"])
    assert seen == list(range(9))

    ref_feat = io["out_feat_b_convs3_16"]
    captured = {}

    def replace(layer, x):
        if layer == 4:
            captured["in"] = x.clone()
            return torch.zeros_like(x)
        return None

    out = gen.synthesis(io["in_w_plus"], feature_hook=replace)
    close(captured["in"], ref_feat)
    assert (out - io["out_img_b_wplus"]).abs().max() > 1e-2


@torch.no_grad()
@pytest.mark.parametrize("path", ["stylegan2_small_rosinality.pt", "stylegan2_small.safetensors",
                                  "style_transformer_small.pt", "edit_transformer_small.pt"])
def test_registry_loads_every_fixture_container(sg2_fixtures, io, path):
    desc = load_stylegan2(sg2_fixtures / path)
    desc.model.to(TEST_DEVICE)
    assert desc.config.size == 64 and desc.config.n_latent == 10 and desc.config.style_dim == 64
    close(desc.model.synthesis(io["in_w_plus"]), io["out_img_b_wplus"])
    if path == "stylegan2_small_rosinality.pt":
        close(desc.latent_avg, io["in_mean_latent"].reshape(-1).cpu())
        assert desc.latent_avg_source == "checkpoint"


def test_config_f_manifest_loads_strictly(sg2_fixtures):
    manifest = json.loads((sg2_fixtures / "manifest_stylegan2_1024.json").read_text())
    entries = manifest["g_ema_state_dict"]
    sd = {k: torch.zeros(v["shape"], dtype=getattr(torch, v["dtype"])) for k, v in entries.items()}
    cfg = infer_stylegan2_config(sd)
    assert (cfg.size, cfg.n_latent, cfg.style_dim, cfg.n_mlp) == (1024, 18, 512, 8)
    assert cfg.channels == {int(k): v for k, v in manifest["derived"]["channels"].items()}
    g = StyleGAN2Generator(cfg)
    g.load_state_dict(sd, strict=True)
    ours = {k: (list(v.shape), "parameter" if k in dict(g.named_parameters()) else "buffer")
            for k, v in g.state_dict().items()}
    theirs = {k: (v["shape"], v["kind"]) for k, v in entries.items()}
    assert ours == theirs
    assert sum(p.numel() for p in g.parameters()) == manifest["num_params_g"]
