"""Splice against the official code: ../shared/fixtures/splice (small DINO in official keys, the official
skip generator, losses, gradients). Tolerances are the fixture README's recommended ones."""
import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from conftest import TEST_DEVICE, fixture_dir
from transedit.models.splice.dino import (DinoConfig, DinoViT, infer_dino_config, keys_per_head, preprocess,
                                          resized_size, self_similarity)
from transedit.models.registry import load_dino
from transedit.models.splice.training import SkipConfig, SkipGenerator, SpliceLoss

TOL_DINO_IN = dict(atol=1e-4, rtol=0)
TOL_KEYS = dict(atol=1e-4, rtol=0)
TOL_SELFSIM = dict(atol=1e-5, rtol=0)
TOL_LOSS = dict(atol=0, rtol=1e-5)
TOL_UNET = dict(atol=1e-4, rtol=0)
TOL_GRAD = dict(atol=1e-5, rtol=1e-3)
NAMES = ("A_global", "B_global", "A_entire", "x_global", "x_entire", "y_global")


def close(actual, expected, tol):
    torch.testing.assert_close(actual.detach().cpu().float(), expected.float(), **tol)


@pytest.fixture(scope="module")
def fx():
    return fixture_dir("splice")


@pytest.fixture(scope="module")
def io(fx):
    return load_file(fx / "splice_io.safetensors")


@pytest.fixture(scope="module")
def values(fx):
    return json.loads((fx / "splice_values.json").read_text())


@pytest.fixture(scope="module")
def dino(fx):
    desc = load_dino(fx / "dino_small_vit8_random.safetensors")  # through the registry, as a user file
    assert desc.config == DinoConfig(patch_size=8, embed_dim=64, depth=12, num_heads=4, mlp_ratio=4.0,
                                     qkv_bias=True, img_size=224)
    return desc.model.to(TEST_DEVICE)


@pytest.fixture(scope="module")
def unet_sd(fx):
    return load_file(fx / "splice_skip_unet_random.safetensors")


def fresh_unet(sd):
    g = SkipGenerator()
    g.load_state_dict(sd, strict=True)
    return g.to(TEST_DEVICE).train()


# ---------------------------------------------------------------------------------------------- DINO
def test_dino_vitb8_manifest_loads_strictly(fx):
    """The official dino_vitbase8_pretrain.pth layout: every hyperparameter inferred, strict load, 85.8M params."""
    manifest = json.loads((fx / "dino_vitb8_manifest.json").read_text())
    shapes = {k: tuple(v["shape"]) for k, v in manifest["keys"].items()}
    assert len(shapes) == 150
    sd = {k: torch.empty(s, device="meta") for k, s in shapes.items()}  # shapes only: no 330 MB allocation
    cfg = infer_dino_config(sd)
    assert (cfg.patch_size, cfg.embed_dim, cfg.depth, cfg.num_heads, cfg.img_size) == (8, 768, 12, 12, 224)
    with torch.device("meta"):
        model = DinoViT(cfg)
    model.load_state_dict(sd, strict=True, assign=True)
    assert sum(p.numel() for p in model.parameters()) == manifest["num_params"] == 85_807_872


@pytest.mark.parametrize("name", ["A_global", "A_entire"])
def test_preprocessing_matches(io, name):
    close(preprocess(io[name].to(TEST_DEVICE))[0], io[f"dino_in_{name}"], TOL_DINO_IN)


def test_resize_only(io):
    x = io["A_entire"]
    h, w = resized_size(*x.shape[-2:])
    y = torch.nn.functional.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
    close(y[0], io["resize_only_A_entire"], TOL_DINO_IN)


@pytest.mark.parametrize("case", ["C", "D"])
@pytest.mark.parametrize("antialias", [True, False])
def test_resize_edge_cases(io, case, antialias):
    """Downscale (C) and the max_size clamp (D), both torchvision behaviours reproduced exactly."""
    x = io[f"{case}_uint8"][None].float() / 255
    expected = io[f"resize_{case}_antialias_{str(antialias).lower()}"]
    assert resized_size(*x.shape[-2:]) == tuple(expected.shape[-2:])
    normalised = preprocess(x, antialias=antialias)[0]
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    close(normalised * std + mean, expected, dict(atol=1e-5, rtol=0))


def test_position_embedding_interpolation(dino, io):
    close(dino.position_embedding(28, 35, torch.float32), io["pos_embed_interp_224x280"], dict(atol=1e-6, rtol=0))


@pytest.mark.parametrize("name", NAMES)
def test_keys_cls_selfsim(dino, io, name):
    with torch.no_grad():
        f = dino(io[f"dino_in_{name}"][None].to(TEST_DEVICE))
    close(keys_per_head(f.keys, dino.config.num_heads)[0], io[f"keys_{name}"], TOL_KEYS)
    close(f.cls[0], io[f"cls_lastblock_prenorm_{name}"], TOL_KEYS)
    if f"keys_selfsim_{name}" in io:
        close(self_similarity(f.keys), io[f"keys_selfsim_{name}"], TOL_SELFSIM)


def test_debug_intermediates(dino, io):
    x = io["dino_in_A_entire"][None].to(TEST_DEVICE)
    inter = {}
    with torch.no_grad():
        dino(x, intermediates=inter)
        qkv = dino.vit.blocks[11].attn.qkv(dino.vit.blocks[11].norm1(inter["block10"]))
        final = dino.final_cls(x)
    close(inter["block0"], io["blockout_block0_A_entire"], TOL_KEYS)
    close(torch.stack([inter[f"block{i}"][0, 0] for i in range(12)]), io["cls_per_block_prenorm_A_entire"], TOL_KEYS)
    close(qkv, io["qkv_block11_A_entire"], TOL_KEYS)
    close(final, io["dino_forward_cls_after_norm_A_entire"], TOL_KEYS)


def test_heads_from_metadata_or_table(fx):
    with safe_open(str(fx / "dino_small_vit8_random.safetensors"), "pt") as f:
        assert "heads=4" in f.metadata()["arch"]
    sd = {"patch_embed.proj.weight": torch.zeros(384, 3, 16, 16), "pos_embed": torch.zeros(1, 197, 384),
          "blocks.0.attn.qkv.weight": torch.zeros(1152, 384), "blocks.0.mlp.fc1.weight": torch.zeros(1536, 384)}
    cfg = infer_dino_config(sd)
    assert (cfg.num_heads, cfg.patch_size, cfg.depth, cfg.qkv_bias) == (6, 16, 1, False)


# ----------------------------------------------------------------------------------------- generator
def test_generator_key_layout_matches_official(values, unet_sd):
    manifest = values["unet_official_state_dict"]
    ours = SkipGenerator(SkipConfig()).state_dict()
    assert list(ours) == list(manifest)
    assert all(list(ours[k].shape) == manifest[k]["shape"] for k in manifest)
    assert sum(p.numel() for p in SkipGenerator().parameters()) == values["unet_num_params"] == 1_037_523


def test_generator_train_mode_outputs_and_running_stats(io, unet_sd):
    g = fresh_unet(unet_sd)
    for out, inp in (("x_global", "A_global"), ("x_entire", "A_entire"), ("y_global", "B_global")):
        close(g(io[inp].to(TEST_DEVICE)), io[f"unet_out_{out}"], TOL_UNET)
    bn = g.net.get_submodule("1.0.2")
    close(bn.running_mean, io["unet_after3fwd_1_0_2_running_mean"], dict(atol=1e-6, rtol=0))
    close(bn.running_var, io["unet_after3fwd_1_0_2_running_var"], dict(atol=1e-6, rtol=0))
    assert int(bn.num_batches_tracked) == 3


def test_generator_batch_of_two(io, unet_sd):
    close(fresh_unet(unet_sd)(io["unet_b2_in"].to(TEST_DEVICE)), io["unet_b2_out"], TOL_UNET)


def test_generator_official_init_statistics():
    g = SkipGenerator().reset_parameters(torch.Generator().manual_seed(0))
    conv = g.net.get_submodule("1.1.1.0")
    fan = conv.in_channels * 9 + conv.out_channels * 9
    assert abs(conv.weight.std().item() - 0.02 * (2 / fan) ** 0.5) < 0.3 * 0.02 * (2 / fan) ** 0.5
    assert conv.bias.abs().max() == 0
    bn = g.net.get_submodule("2")
    assert abs(bn.weight.mean().item() - 1) < 0.02 and bn.bias.abs().max() == 0


# ---------------------------------------------------------------------------------------------- losses
@pytest.fixture(scope="module")
def loss_inputs(dino, io):
    loss = SpliceLoss(dino)
    outs = {k: io[f"unet_out_{k}"].to(TEST_DEVICE).clone().requires_grad_(True)
            for k in ("x_global", "x_entire", "y_global")}
    with torch.no_grad():
        targets = {k: loss.features(io[k].to(TEST_DEVICE)) for k in ("A_global", "B_global", "A_entire")}
    return loss, outs, targets


@pytest.mark.parametrize("step", ["0", "1", "2", "75"])
def test_loss_schedule_and_values(loss_inputs, values, step):
    loss, outs, targets = loss_inputs
    feats = {k: loss.features(v) for k, v in outs.items()}
    lam = loss.active(int(step))
    expected = values["lossG_forward_by_step"][step]
    for ours, theirs in (("global_cls", "lambda_global_cls"), ("global_ssim", "lambda_global_ssim"),
                         ("entire_ssim", "lambda_entire_ssim"), ("entire_cls", "lambda_entire_cls"),
                         ("global_identity", "lambda_global_identity")):
        assert lam[ours] == expected["lambdas"][theirs]
    terms = loss.terms(feats, targets, lam)
    names = {"global_ssim": "loss_global_ssim", "global_cls": "loss_global_cls", "global_identity": "loss_global_id_B",
             "entire_ssim": "loss_entire_ssim", "entire_cls": "loss_entire_cls"}
    assert {names[k] for k in terms} == {k for k in expected if k.startswith("loss_")}
    for k, v in terms.items():
        close(v, torch.tensor(expected[names[k]]), TOL_LOSS)
    close(loss.total(terms, lam), torch.tensor(expected["loss"]), TOL_LOSS)


def test_loss_terms_direct(loss_inputs, values):
    loss, outs, targets = loss_inputs
    feats = {k: loss.features(v) for k, v in outs.items()}
    terms = loss.terms(feats, targets, {k: 1.0 for k in loss.active(75)})
    direct = values["loss_terms_direct"]
    close(terms["global_identity"], torch.tensor(direct["loss_global_id_B"]), TOL_LOSS)
    close(terms["entire_ssim"], torch.tensor(direct["loss_entire_ssim"]), TOL_LOSS)


def test_step75_gradients(loss_inputs, io):
    loss, outs, targets = loss_inputs
    feats = {k: loss.features(v) for k, v in outs.items()}
    lam = loss.active(75)
    total = loss.total(loss.terms(feats, targets, lam), lam)
    grads = torch.autograd.grad(total, [outs["x_global"], outs["y_global"], outs["x_entire"]])
    for name, g in zip(("x_global", "y_global", "x_entire"), grads):
        close(g, io[f"grad_step75_{name}"], TOL_GRAD)


def test_batched_features_equal_single_calls(dino, io):
    """The trainer batches same-size crops into one DINO call; that must not change any feature."""
    loss = SpliceLoss(dino)
    imgs = [io["A_global"].to(TEST_DEVICE), io["B_global"].to(TEST_DEVICE), io["A_entire"].to(TEST_DEVICE)]
    with torch.no_grad():
        batched = loss.features_of(imgs)
        single = [loss.features(x) for x in imgs]
    for b, s in zip(batched, single):
        close(b.keys, s.keys, dict(atol=2e-5, rtol=0))
        close(b.cls, s.cls, dict(atol=2e-5, rtol=0))
