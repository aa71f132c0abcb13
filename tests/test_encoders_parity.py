"""Style Transformer / EditTransformer (and the shared pSp/e4e trunk) against the official code's golden
tensors in ../shared/fixtures/stylegan2_style_transformer (reduced widths; see its README)."""
import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from transedit.models.encoders.irse import offset_by_latent_avg, preprocess_fast, preprocess_official, strip_prefix
from transedit.models.encoders.latent_encoder import LatentEncoder
from transedit.models.encoders.psp import Encoder4Editing, GradualStyleEncoder, PSPConfig, infer_psp_config
from transedit.models.registry import infer_stylegan2_config
from transedit.models.encoders.style_transformer import (EditTransformer, StyleTransformerEncoder,
                                                         infer_edit_transformer_config, infer_style_transformer_config)
from transedit.models.stylegan.generator import StyleGAN2Generator

from conftest import TEST_DEVICE

# The fixture README's recommended fp32 tolerances.
CODES_TOL = dict(atol=1e-5, rtol=1e-5)
IMAGE_TOL = dict(atol=5e-5, rtol=1e-5)


def close(actual, expected, tol=CODES_TOL):
    torch.testing.assert_close(actual, expected.to(actual.device), **tol)


def seq_first(x):
    """Batch-first [B, L, C] -> the fixture's sequence-first (L, B, C)."""
    return x.permute(1, 0, 2)


def tokens_seq_first(fmap):
    return fmap.flatten(2).permute(2, 0, 1)


def load_pt(path):
    return torch.load(path, map_location="cpu", weights_only=True)


# ----------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def st_ckpt(sg2_fixtures):
    return load_pt(sg2_fixtures / "style_transformer_small.pt")


@pytest.fixture(scope="module")
def st_meta(sg2_fixtures):
    return json.loads((sg2_fixtures / "style_transformer_small.json").read_text())


@pytest.fixture(scope="module")
def st_io(sg2_fixtures):
    return {k: v.to(TEST_DEVICE) for k, v in load_file(sg2_fixtures / "io_style_transformer_small.safetensors").items()}


@pytest.fixture(scope="module")
def st_models(st_ckpt):
    sd = st_ckpt["state_dict"]
    enc_sd = strip_prefix(sd, ("encoder.module.",))
    dec_sd = strip_prefix(sd, ("decoder.module.",))
    assert len(enc_sd) + len(dec_sd) == len(sd)
    enc = StyleTransformerEncoder(infer_style_transformer_config(enc_sd, st_ckpt["opts"]))
    enc.load_state_dict(enc_sd, strict=True)
    gen = StyleGAN2Generator(infer_stylegan2_config(dec_sd)).eval()
    gen.load_state_dict(dec_sd, strict=True)
    return enc.to(TEST_DEVICE), gen.to(TEST_DEVICE)


@pytest.fixture(scope="module")
def st_run(st_models, st_io):
    enc, gen = st_models
    with torch.no_grad():
        codes, feats = enc(st_io["in_x"], mapping=gen, return_features=True)
    return codes, feats


# ------------------------------------------------------------------------------------ Style Transformer
def test_config_inferred_from_shapes(st_ckpt, st_meta, st_models):
    enc, gen = st_models
    cfg = enc.config
    red = st_meta["style_transformer"]["reductions"]
    assert list(cfg.backbone.widths) == red["IR-SE-50 block depths"]["small"]
    assert cfg.backbone.units == (3, 4, 14, 3)
    assert cfg.backbone.taps == (6, 20, 23)
    assert cfg.backbone.input_width == red["input_layer channels"]["small"]
    assert cfg.backbone.se_reduction == 16
    assert cfg.d_model == red["transformer d_model"]["small"]
    assert cfg.nhead == red["transformer nhead"]["small"]
    assert cfg.dim_feedforward == red["transformer dim_feedforward"]["small"]
    assert [1, cfg.n_latent, cfg.d_model] == red["z query parameter"]["small"]
    assert cfg.n_latent == gen.n_latent == st_ckpt["opts"]["n_styles"]
    assert cfg.start_from_latent_avg and not cfg.learn_in_w
    assert sum(p.numel() for p in enc.parameters()) == st_meta["style_transformer"]["encoder_num_params"]
    # Key order matches the official module too (not needed for loading, but it shows the same tree).
    assert list(enc.state_dict()) == list(strip_prefix(st_ckpt["state_dict"], ("encoder.module.",)))


@torch.no_grad()
def test_query_through_generator_mapping(st_models, st_io, st_run):
    enc, gen = st_models
    _, feats = st_run
    close(feats["query"].expand(2, -1, -1), st_io["out_query"])
    close(enc.compute_query(gen.style).expand(2, -1, -1), st_io["out_query"])  # the raw MLP works too


@torch.no_grad()
@pytest.mark.parametrize("mine, official", [
    ("input_layer", "input_layer"), ("c1", "c1_body6"), ("c2", "c2_body20"), ("c3", "c3_body23"),
    ("lat1", "latlayer1"), ("lat2", "latlayer2")])
def test_encoder_features(st_io, st_run, mine, official):
    _, feats = st_run
    close(feats[mine], st_io[f"out_feat_enc_{official}"], IMAGE_TOL)


@torch.no_grad()
def test_transformer_layer_inputs_and_outputs(st_io, st_run):
    _, f = st_run
    expected = {
        "coarse": (f["query"].expand(2, -1, -1), f["c3"], f["tf_coarse"]),
        "medium": (f["tf_coarse"], f["p2"], f["tf_medium"]),
        "fine": (f["tf_medium"], f["p1"], f["tf_fine"]),
    }
    for name, (tgt, memory_map, out) in expected.items():
        close(seq_first(tgt), st_io[f"out_feat_tf_{name}_tgt"])
        close(tokens_seq_first(memory_map), st_io[f"out_feat_tf_{name}_memory"], IMAGE_TOL)
        close(seq_first(out), st_io[f"out_feat_tf_{name}_out"])


@torch.no_grad()
def test_codes_and_images(st_ckpt, st_models, st_io, st_run):
    enc, gen = st_models
    codes, _ = st_run
    close(codes, st_io["out_codes_before_avg"])
    latent_avg = st_ckpt["latent_avg"]
    close(latent_avg.to(TEST_DEVICE), st_io["in_latent_avg"], dict(atol=0, rtol=0))
    wplus = enc.to_wplus(codes, latent_avg)
    close(wplus, st_io["out_codes"])
    img = gen.synthesis(wplus, noise_mode="const")
    close(img, st_io["out_img_raw"], IMAGE_TOL)
    close(F.avg_pool2d(img, 4), st_io["out_img_face_pool"], IMAGE_TOL)
    close(F.adaptive_avg_pool2d(img, 16), st_io["out_img_face_pool"], IMAGE_TOL)


@torch.no_grad()
def test_latent_encoder_wrapper(st_ckpt, st_models, st_io):
    enc, gen = st_models
    wrapped = LatentEncoder(enc, st_ckpt["latent_avg"], mapping=gen).to(TEST_DEVICE)
    assert {"latent_avg", "query"} <= set(dict(wrapped.named_buffers()))  # query precomputed once
    assert not any(k.startswith("encoder._mapping") for k in wrapped.state_dict())
    close(wrapped(st_io["in_x"]), st_io["out_codes"])
    close(wrapped.encode_codes(st_io["in_x"]), st_io["out_codes_before_avg"])
    enc.bind_mapping(None)
    with pytest.raises(ValueError, match="mapping"):
        enc(st_io["in_x"])


@torch.no_grad()
def test_batch_independence(st_models, st_io, st_run):
    enc, gen = st_models
    codes, _ = st_run
    x = st_io["in_x"]
    assert not enc.training  # built in eval mode: BatchNorm uses running statistics
    singles = torch.cat([enc(x[i:i + 1], mapping=gen) for i in range(x.shape[0])])
    close(singles, codes)
    # ... and a batch with other images in it
    mixed = enc(torch.cat([x, x.flip(0), torch.zeros_like(x[:1])]), mapping=gen)
    close(mixed[:2], codes)
    close(mixed[2:4], codes.flip(0))


def test_infer_accepts_whole_checkpoint_state_dict(st_ckpt, st_models):
    enc, _ = st_models
    assert infer_style_transformer_config(st_ckpt["state_dict"]) == enc.config
    assert infer_style_transformer_config(st_ckpt["state_dict"], nhead=8).nhead == 8
    with pytest.raises(ValueError):
        infer_style_transformer_config(st_ckpt["state_dict"], nhead=5)


# ------------------------------------------------------------------------------------ EditTransformer
@pytest.fixture(scope="module")
def edit(sg2_fixtures):
    ckpt = load_pt(sg2_fixtures / "edit_transformer_small.pt")
    assert "latent_avg" not in ckpt
    sd = ckpt["state_dict"]
    enc_sd = strip_prefix(sd, ("encoder.module.",))
    dec_sd = strip_prefix(sd, ("decoder.module.",))
    assert any(k.startswith("classifier.module.") for k in sd)  # training-only, not loaded (as official)
    model = EditTransformer(infer_edit_transformer_config(enc_sd, ckpt["opts"]))
    model.load_state_dict(enc_sd, strict=True)
    gen = StyleGAN2Generator(infer_stylegan2_config(dec_sd)).eval()
    gen.load_state_dict(dec_sd, strict=True)
    io = {k: v.to(TEST_DEVICE) for k, v in load_file(sg2_fixtures / "io_edit_transformer_small.safetensors").items()}
    return model.to(TEST_DEVICE), gen.to(TEST_DEVICE), io


@torch.no_grad()
def test_edit_transformer(edit):
    model, gen, io = edit
    assert (model.config.d_model, model.config.nhead, model.config.dim_feedforward) == (64, 4, 128)
    close(seq_first(io["in_src_wplus"]), io["out_feat_tf_tgt_seqfirst"], dict(atol=0, rtol=0))
    close(seq_first(io["in_ref_wplus"]), io["out_feat_tf_memory_seqfirst"], dict(atol=0, rtol=0))
    codes = model(io["in_src_wplus"], io["in_ref_wplus"])
    close(codes, io["out_codes"])
    close(codes, io["out_codes_only"])
    img = gen.synthesis(codes, noise_mode="const")
    close(img, io["out_img_raw"])
    close(F.avg_pool2d(img, 4), io["out_img_face_pool"])
    singles = torch.cat([model(io["in_src_wplus"][i:i + 1], io["in_ref_wplus"][i:i + 1]) for i in range(2)])
    close(singles, codes)


# ------------------------------------------------------------------------------------ preprocessing
def test_preprocess_official_is_exact(st_io):
    images = st_io["in_image_uint8_hwc"].cpu()
    assert images.dtype == torch.uint8 and images.shape[1:] == (320, 288, 3)
    close(preprocess_official(images), st_io["in_x_256_official_transform"].cpu(), dict(atol=1e-6, rtol=0))
    close(preprocess_official(images, size=64), st_io["in_x"].cpu(), dict(atol=1e-6, rtol=0))
    # ComfyUI IMAGE floats (uint8 / 255) and PIL images give the same result
    close(preprocess_official(images.float() / 255), st_io["in_x_256_official_transform"].cpu(),
          dict(atol=1e-6, rtol=0))
    from PIL import Image

    pils = [Image.fromarray(a.numpy()) for a in images]
    close(preprocess_official(pils), st_io["in_x_256_official_transform"].cpu(), dict(atol=1e-6, rtol=0))


def test_preprocess_fast_is_within_one_level(st_io):
    """The torch path skips PIL's 8-bit rounding: at most one 8-bit level (2/255 in [-1, 1]) off."""
    images = st_io["in_image_uint8_hwc"]
    level = 2 / 255
    for size, ref in ((256, "in_x_256_official_transform"), (64, "in_x")):
        for x in (preprocess_fast(images.float() / 255, size), preprocess_fast(images, size)):
            diff = (x - st_io[ref]).abs()
            assert diff.max().item() <= level + 1e-6, (size, diff.max().item())
            assert diff.mean().item() < 0.5 * level, (size, diff.mean().item())


def test_offset_by_latent_avg_layouts():
    codes = torch.randn(2, 5, 4)
    avg = torch.randn(4)
    want = codes + avg.repeat(2, 1, 1)  # Style Transformer's [C]
    close(offset_by_latent_avg(codes, avg), want)
    close(offset_by_latent_avg(codes, avg[None]), want)
    rows = torch.randn(5, 4)  # pSp / e4e store [n_styles, C]
    close(offset_by_latent_avg(codes, rows), codes + rows.repeat(2, 1, 1))
    close(offset_by_latent_avg(codes[:, 0], avg), codes[:, 0] + avg.repeat(2, 1))  # learn_in_w
    assert offset_by_latent_avg(codes, None) is codes
    with pytest.raises(ValueError):
        offset_by_latent_avg(codes, torch.randn(3, 4))


# ------------------------------------------------------------------------------------ pSp / e4e
@pytest.fixture(scope="module")
def small_psp_pair(st_ckpt, st_models):
    """pSp and e4e at the fixture's reduced widths with the fixture's trunk (input_layer, body, latlayers)
    and shared random heads. Heads are sized for the 64x64 input (c3/p2/p1 are 4/8/16 px)."""
    enc, _ = st_models
    cfg = PSPConfig(backbone=enc.config.backbone, n_styles=10, style_dim=enc.config.d_model,
                    head_spatials=(4, 8, 16))
    torch.manual_seed(0)
    psp = GradualStyleEncoder(cfg)
    trunk = {k: v for k, v in strip_prefix(st_ckpt["state_dict"], ("encoder.module.",)).items()
             if k.split(".")[0] in ("input_layer", "body", "latlayer1", "latlayer2")}
    sd = {**psp.state_dict(), **trunk}
    psp.load_state_dict(sd, strict=True)
    inferred = infer_psp_config(sd, opts={"encoder_type": "Encoder4Editing"})
    assert inferred.kind == "e4e" and inferred.head_spatials == (4, 8, 16)
    assert (inferred.coarse_ind, inferred.middle_ind, inferred.n_styles) == (3, 7, 10)
    e4e = Encoder4Editing(inferred)
    e4e.load_state_dict(sd, strict=True)
    return psp.to(TEST_DEVICE), e4e.to(TEST_DEVICE)


@torch.no_grad()
def test_psp_trunk_matches_official_features(small_psp_pair, st_io):
    psp, e4e = small_psp_pair
    for model in (psp, e4e):
        _, feats = model(st_io["in_x"], return_features=True)
        for mine, official in (("input_layer", "input_layer"), ("c1", "c1_body6"), ("c2", "c2_body20"),
                               ("c3", "c3_body23"), ("lat1", "latlayer1"), ("lat2", "latlayer2")):
            close(feats[mine], st_io[f"out_feat_enc_{official}"], IMAGE_TOL)


@torch.no_grad()
def test_e4e_is_w0_plus_psp_deltas(small_psp_pair, st_io):
    psp, e4e = small_psp_pair
    x = st_io["in_x"]
    heads = psp(x)  # row i = styles[i](its feature map)
    codes = e4e(x)
    close(codes[:, 0], heads[:, 0])
    close(codes[:, 1:], heads[:, :1] + heads[:, 1:])
    for stage in (0, 2, 3, 6, 7):
        staged = e4e(x, progressive_stage=stage)
        close(staged[:, :stage + 1], codes[:, :stage + 1])
        close(staged[:, stage + 1:], heads[:, :1].expand(-1, 9 - stage, -1))
    for model, ref in ((psp, heads), (e4e, codes)):
        close(torch.cat([model(x[i:i + 1]) for i in range(2)]), ref)


def test_psp_rejects_wrong_input_size(small_psp_pair):
    psp, _ = small_psp_pair
    with pytest.raises(ValueError, match="256x256"):
        psp(torch.zeros(1, 3, 128, 128, device=TEST_DEVICE))
