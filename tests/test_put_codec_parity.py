"""PUT's P-VQVAE against the official code: ../shared/fixtures/put (reduced CVPR 2022 and TPAMI 2024 codecs in
official keys, their encoder/quantizer outputs, decoder intermediates and the final decoded images of every
sampling run). Tolerances are the fixture README's recommended ones."""
import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import TEST_DEVICE, fixture_dir
from transedit.models.put.codec import (PatchVQVAE, PVQVAEConfig, default_masked_embed_start, infer_pvqvae_config,
                                        load_pvqvae)

VERSIONS = ("cvpr2022", "tpami2024")
TOL_FEAT = dict(atol=1e-5, rtol=0)
TOL_DIST = dict(atol=1e-4, rtol=0)  # squared distances of up to ~40: a few fp32 ulps
TOL_IMAGE = dict(atol=1e-2, rtol=0)  # 0..255
GREEDY_RUN = {"cvpr2022": "largest_ntpi1_top1", "tpami2024": "ntpi1_top1"}
FULL = {"cvpr2022": "cvpr2022_ffhq", "tpami2024": "tpami2024_ffhq_res256"}
PREFIX = "content_codec."


def close(actual, expected, tol):
    torch.testing.assert_close(actual.detach().cpu().float(), expected.float(), **tol)


@pytest.fixture(scope="module", params=VERSIONS)
def fx(request):
    root = fixture_dir("put")
    version = request.param
    sd = load_file(str(root / f"put_{version}_small_transformer_model.safetensors"))
    codec_sd = {k[len(PREFIX):]: v for k, v in sd.items() if k.startswith(PREFIX)}
    values = json.loads((root / f"put_{version}_small_values.json").read_text())
    io = load_file(str(root / f"put_{version}_small_io.safetensors"))
    codec = load_pvqvae(codec_sd).to(TEST_DEVICE)
    return dict(version=version, sd=codec_sd, values=values, io=io, codec=codec,
                codec_params=values["reduced_transformer_config"]["params"]["content_codec_config"]["params"])


def test_strict_load_and_config(fx):
    codec_sd, params = fx["sd"], fx["codec_params"]
    cfg = infer_pvqvae_config(codec_sd)
    quant = params["quantizer_config"]["params"]
    enc = params["encoder_config"]["params"]
    dec = params["decoder_config"]["params"]
    assert cfg.version == fx["version"]
    assert (cfg.n_e, cfg.e_dim, cfg.masked_embed_start) == (quant["n_e"], quant["e_dim"], quant["masked_embed_start"])
    assert cfg.patch_size == enc["stride"] == dec["stride"]
    assert cfg.enc_num_res_blocks == enc["num_res_block"] and cfg.dec_num_res_blocks == dec["num_res_block"]
    assert cfg.dec_res_after_up == dec.get("num_res_block_after_resolution_change", 0)
    assert cfg.upsample == dec.get("upsample_type", "deconv")
    assert cfg.ref_downsample == dec.get("encoder_downsample_layer", "downsample")
    codec = PatchVQVAE(cfg)
    assert set(codec.state_dict()) == set(codec_sd)
    codec.load_state_dict(codec_sd, strict=True)
    assert codec.embed_dim == codec_sd["post_quant_conv.weight"].shape[0]
    assert codec.token_shape(64, 48) == (8, 6)
    # the transformer state dict (with its prefix) and a P-VQVAE checkpoint with loss.* load the same
    full = {PREFIX + k: v for k, v in codec_sd.items()} | {"pos_emb": torch.zeros(1)}
    assert infer_pvqvae_config(full) == cfg
    with_loss = dict(codec_sd) | {"loss.discriminator.main.0.weight": torch.zeros(1)}
    assert infer_pvqvae_config(with_loss) == cfg
    load_pvqvae(with_loss)
    assert infer_pvqvae_config(codec_sd, masked_embed_start=20).masked_embed_start == 20


@pytest.mark.parametrize("version", VERSIONS)
def test_full_size_manifests(version):
    manifest = json.loads((fixture_dir("put") / "put_full_manifests.json").read_text())[FULL[version]]
    pv = manifest["p_vqvae"]["state_dict_keys"]
    tr = {k[len(PREFIX):]: v for k, v in manifest["transformer"]["state_dict_keys"].items() if k.startswith(PREFIX)}
    assert any(k.startswith("loss.") for k in pv)
    for keys in (pv, tr):
        sd = {k: torch.empty(v["shape"], dtype=getattr(torch, v["dtype"]), device="meta") for k, v in keys.items()}
        cfg = infer_pvqvae_config(sd)  # loss.* ignored
        expected = dict(cvpr2022=(1024, 512, 256, 8, "deconv", "conv", 8, 0),
                        tpami2024=(9216, 8192, 256, 8, "nearest", "downsample", 2, 2))[version]
        assert (cfg.version, cfg.n_e, cfg.masked_embed_start, cfg.e_dim, cfg.patch_size, cfg.upsample,
                cfg.ref_downsample, cfg.dec_num_res_blocks, cfg.dec_res_after_up) == (version, *expected)
        assert cfg.enc_num_res_blocks == 8 and cfg.enc_res_ch == 256
        with torch.device("meta"):
            codec = PatchVQVAE(cfg)
        inference = {k: v for k, v in sd.items() if not k.startswith("loss.")}
        codec.load_state_dict(inference, strict=True, assign=True)
        n = sum(t.numel() for t in codec.state_dict().values())
        assert n == manifest["p_vqvae"]["num_elements_inference"]
        assert codec.embed_dim == 256


def test_masked_embed_start_rule():
    assert default_masked_embed_start(1024, "cvpr2022") == 512
    assert default_masked_embed_start(9216, "tpami2024") == 8192
    assert default_masked_embed_start(64, "cvpr2022") == 32
    assert default_masked_embed_start(64, "tpami2024") == 32


@pytest.mark.parametrize("upsample,ref", [("nearest", "downsample"), ("deconv", "conv")])
def test_config_round_trip_patch16(upsample, ref):
    """A TPAMI-512-like layout (16x16 patches, 4 resolution changes) is read back from its own weights and runs."""
    version = "tpami2024" if upsample == "nearest" else "cvpr2022"
    cfg = PVQVAEConfig(version=version, patch_size=16, n_e=36, e_dim=16,
                       masked_embed_start=default_masked_embed_start(36, version),
                       enc_res_ch=32, enc_num_res_blocks=3, enc_out_ch=24, dec_in_ch=20, dec_res_ch=32,
                       dec_num_res_blocks=1, dec_res_after_up=2 if ref == "downsample" else 0, dec_base_ch=8,
                       upsample=upsample, ref_downsample=ref, ref_res_blocks=ref == "downsample")
    assert cfg.masked_embed_start == (32 if version == "tpami2024" else 18)
    with torch.device("meta"):
        codec = PatchVQVAE(cfg)
    assert infer_pvqvae_config(codec.state_dict()) == cfg
    assert codec.embed_dim == 20
    codec = PatchVQVAE(cfg).eval()
    image = torch.rand(2, 3, 64, 32) * 255
    mask = torch.ones(2, 1, 64, 32, dtype=torch.bool)
    mask[:, :, 10:40, 5:20] = False
    out = codec.get_features(image, mask)
    assert out["feature"].shape == (2, 16, 4, 2) and out["token"].shape == (2, 8)
    assert ((out["token"] < cfg.masked_embed_start) == (out["token_type"].view(2, -1) == 1)).all()
    rec = codec.decode(out["token"], image, mask, combine_rec_and_gt=True)
    assert rec.shape == image.shape
    known = mask.expand_as(image)
    torch.testing.assert_close(rec[known], image[known], atol=1e-3, rtol=0)


def test_encoder_and_quantizer(fx):
    codec, io = fx["codec"], fx["io"]
    image, mask = io["image"].to(TEST_DEVICE), io["mask"].to(TEST_DEVICE)
    pre = codec.masked_input(image, mask)
    close(pre, io["preprocessed_masked_image"], TOL_FEAT)
    close(codec.encoder(pre), io["encoder_out"], TOL_FEAT)
    out = codec.get_features(image, mask)
    close(out["feature"], io["feature"], TOL_FEAT)
    assert torch.equal(out["token_type"].cpu(), io["token_type"])
    close(out["unmask_ratio"], io["unmask_ratio"], dict(atol=0, rtol=0))
    b, _, h, w = io["token_type"].shape
    assert out["token"].shape == (b, h * w) and out["token"].dtype == torch.long
    assert torch.equal(out["token"].cpu().view(b, h, w), io["token_masked_input"])
    # the quantizer also reproduces the official tokens from the official features
    assert torch.equal(codec.quantize_indices(io["feature"].to(TEST_DEVICE), io["token_type"]).cpu().view(b, h, w),
                       io["token_masked_input"])
    close(codec.distances(out["feature"]), io["distance_masked_input"], TOL_DIST)
    # unmasked-image targets: every token treated as known
    full = codec.get_features(image, torch.ones_like(mask))
    close(full["feature"], io["feature_unmasked_image"], TOL_FEAT)
    assert torch.equal(full["token"].cpu().view(b, h, w), io["token_target_unmasked_image"])
    assert (full["token_type"] == 1).all()
    # a float 0/1 mask is the same as a bool one
    out_f = codec.get_features(image, mask.float())
    assert torch.equal(out_f["token"], out["token"])


def test_codebook_lookup(fx):
    codec, io = fx["codec"], fx["io"]
    tokens = io[f"sample_{GREEDY_RUN[fx['version']]}_tokens"].to(TEST_DEVICE)
    emb = codec.codebook_lookup(tokens)
    assert emb.shape == (*tokens.shape, codec.config.e_dim)
    assert torch.equal(emb.cpu(), fx["sd"]["quantize.embedding"][tokens.cpu()])


def test_decoder_intermediates(fx):
    codec, io, version = fx["codec"], fx["io"], fx["version"]
    run = GREEDY_RUN[version]
    combine = fx["codec_params"]["combine_rec_and_gt"]
    assert combine == (version == "tpami2024")
    inter = {}
    image = codec.decode(io[f"sample_{run}_tokens"].to(TEST_DEVICE), io["image"].to(TEST_DEVICE),
                         io["mask"].to(TEST_DEVICE), combine_rec_and_gt=combine, intermediates=inter)
    prefix = f"decode_{run}_"
    close(inter["post_quant_conv"], io[prefix + "post_quant_conv"], TOL_FEAT)
    close(inter["decoder_after_res_layers"], io[prefix + "decoder_after_res_layers"], TOL_FEAT)
    refs = [k for k in io if k.startswith(prefix + "ref_encoder_")]
    assert len(refs) == codec.config.levels
    for key in refs:
        expected = io[key]
        assert key.endswith("x".join(map(str, expected.shape)))
        close(inter["ref_encoder"][tuple(expected.shape[-2:])], expected, TOL_FEAT)
    close(inter["decoder_out"], io[prefix + "decoder_out_normalized"], TOL_FEAT)
    close(image, io[prefix + "decoded_image_0_255"], TOL_IMAGE)


def test_decode_every_sampling_run(fx):
    codec, io = fx["codec"], fx["io"]
    combine = fx["codec_params"]["combine_rec_and_gt"]
    runs = sorted(k[len("sample_"):-len("_tokens")] for k in io if k.startswith("sample_") and k.endswith("_tokens"))
    assert set(runs) == set(fx["values"]["sampling_runs"])
    image, mask = io["image"].to(TEST_DEVICE), io["mask"].to(TEST_DEVICE)
    for run in runs:
        out = codec.decode(io[f"sample_{run}_tokens"].to(TEST_DEVICE), image, mask, combine_rec_and_gt=combine)
        assert out.dtype == torch.float32 and out.min() >= 0 and out.max() <= 255
        close(out, io[f"sample_{run}_completed"], TOL_IMAGE)
    # batched decode of several runs at once equals the per-run decodes (no cross-sample leakage)
    tokens = torch.cat([io[f"sample_{r}_tokens"] for r in runs]).to(TEST_DEVICE)
    n = len(runs)
    out = codec.decode(tokens, image.repeat(n, 1, 1, 1), mask.repeat(n, 1, 1, 1), combine_rec_and_gt=combine)
    close(out, torch.cat([io[f"sample_{r}_completed"] for r in runs]), TOL_IMAGE)


def test_residual_quirk_matters(fx):
    """Guards the in-place-ReLU residual (relu(x) + f(relu(x))): the plain x + f(x) would not match."""
    block = fx["codec"].encoder.res_layers[0]
    x = torch.randn(4, block.layers[1].in_features, device=TEST_DEVICE)
    plain = x + block.layers[3](torch.relu(block.layers[1](torch.relu(x))))
    assert not torch.allclose(block(x), plain)
    close(block(x), torch.relu(x) + (plain - x), TOL_FEAT)
