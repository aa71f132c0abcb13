"""Files as the official code writes them — its containers, its folder layouts, its config files written by
its own save calls (yaml.dump, torch.save of the official dicts) — load, and what they set is used.

Each official save call is listed in docs/faithfulness.md with the test here that covers it.
The PUT and DINO cases run on the official reduced fixtures (../shared/fixtures)."""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from conftest import fixture_dir, model_folders
from transedit.models.core.checkpoint_io import read_official_yaml
from transedit.models.core.errors import CheckpointError
from transedit.models.registry import load_dino, load_encoder, load_put, load_stylegan2
from transedit.random_weights import save_random_dino, save_random_encoder, save_random_generator
from transedit.models.splice.training import CropDraw, SpliceAugment, StructureDraw, color_jitter, gaussian_blur3
from transedit.models.stylegan.generator import StyleGAN2Config, StyleGAN2Generator

yaml = pytest.importorskip("yaml")
FIXTURE_HEADS = 4  # the reduced PUT models' n_head: only their config.yaml records it (width // 64 gives 1)
IMAGENET = {"scale": [255.0, 255.0, 255.0], "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


# ------------------------------------------------------------------------------------------------ PUT
def official_put_config(version: str, **codec_params) -> dict:
    """The experiment config as liuqk3/PUT's Logger.save_config receives it: yaml.full_load of a configs/*.yaml
    (so `betas: !!python/tuple [...]` is a tuple), the model section replaced by the reduced fixture's."""
    values = json.loads((fixture_dir("put") / f"put_{version}_small_values.json").read_text())
    model = values["reduced_transformer_config"]
    model["params"]["content_codec_config"]["params"].update(codec_params)
    return {
        "model": model,
        "solver": {"base_lr": 0.0, "max_epochs": 300, "save_epochs": 20, "optimizers_and_schedulers": [{
            "name": "transformer",
            "optimizer": {"target": "torch.optim.AdamW", "params": {"betas": (0.9, 0.999)}},
            "scheduler": {"step_iteration": 1, "target": "image_synthesis.engine.lr_scheduler.CosineAnnealingLRWithWarmup",
                          "params": {"min_lr": 1.0e-5, "warmup_lr": 1.5e-3, "warmup": 16681}}}]},
        "dataloader": {"data_root": "data", "batch_size": 8, "num_workers": 2},
    }


def write_experiment(root: Path, version: str, config: dict, exp: str = "put_exp") -> Path:
    """OUTPUT/<exp>/checkpoint/last.pth (+ an epoch snapshot) and OUTPUT/<exp>/configs/config.yaml written with
    yaml.dump, as save_config_to_yaml does (image_synthesis/utils/io.py)."""
    fx = fixture_dir("put")
    ckpt_dir = root / exp / "checkpoint"
    ckpt_dir.mkdir(parents=True)
    if version == "cvpr2022":
        shutil.copy(fx / "put_cvpr2022_small_transformer_last.pth", ckpt_dir / "last.pth")
    else:  # the fixture ships TPAMI as a state dict only: write the official Solver.save container around it
        sd = load_file(str(fx / "put_tpami2024_small_transformer_model.safetensors"))
        torch.save({"last_epoch": 0, "last_iter": 0, "spend_time": 0.0, "model": sd,
                    "optimizer_and_scheduler": {}}, ckpt_dir / "last.pth")
    shutil.copy(ckpt_dir / "last.pth", ckpt_dir / "000019e_1000iter.pth")
    (root / exp / "configs").mkdir()
    text = yaml.dump(config)
    assert "!!python/tuple" in text  # what the official dump writes for the optimizer's betas
    (root / exp / "configs" / "config.yaml").write_text(text)
    return ckpt_dir / "last.pth"


def put_logits(desc, version):
    io = load_file(str(fixture_dir("put") / f"put_{version}_small_io.safetensors"))
    data = desc.model.content_codec.get_features(io["image"], io["mask"].float())
    return desc.model.logits(desc.model.embed(data["feature"], data["unmask_ratio"])), io


@pytest.mark.parametrize("version", ["cvpr2022", "tpami2024"])
def test_put_experiment_folder_as_official_training_writes_it(tmp_path, version):
    ckpt = write_experiment(tmp_path / "OUTPUT", version, official_put_config(version))
    desc = load_put(ckpt)
    assert desc.config.n_head == FIXTURE_HEADS and desc.config.activation == "GELU2"
    config_file = str(ckpt.parent.parent / "configs" / "config.yaml")
    assert any(config_file in n and "n_head 4" in n for n in desc.notes), desc.notes
    logits, io = put_logits(desc, version)
    expected = io["forward_logits_rq0"]
    torch.testing.assert_close(logits.detach().reshape(expected.shape), expected, atol=1e-4, rtol=0)  # heads matter
    # the epoch snapshot in the same folder finds the same config
    assert load_put(ckpt.parent / "000019e_1000iter.pth").config.n_head == FIXTURE_HEADS


def test_load_put_node_reports_the_config_it_read(tmp_path):
    from transedit.nodes.put import TransEditLoadPUT

    with model_folders(tmp_path, ["put"]):
        write_experiment(tmp_path / "put", "cvpr2022", official_put_config("cvpr2022"))
        put, info = TransEditLoadPUT().load(os.path.join("put_exp", "checkpoint", "last.pth"))
    assert put.descriptor.config.n_head == FIXTURE_HEADS
    assert "4 heads" in info and "configs/config.yaml" in info and "n_head 4" in info, info


def test_tpami_imagenet_normalisation_from_im_process_info(tmp_path):
    """The official ImageNet TPAMI configs normalise by {scale 255, ImageNet mean/std}: PatchVQGAN.pre_process
    is (x / scale - mean) / std, holes become (0 - mean) / std."""
    ckpt = write_experiment(tmp_path, "tpami2024", official_put_config("tpami2024", im_process_info=IMAGENET))
    desc = load_put(ckpt)
    codec = desc.model.content_codec
    assert codec.config.im_scale == (255.0,) * 3 and codec.config.im_mean == tuple(IMAGENET["mean"])
    image = torch.rand(1, 3, 64, 64) * 255
    mean, std = torch.tensor(IMAGENET["mean"]).view(1, 3, 1, 1), torch.tensor(IMAGENET["std"]).view(1, 3, 1, 1)
    torch.testing.assert_close(codec.pre_process(image), (image / 255 - mean) / std)
    mask = torch.ones(1, 1, 64, 64)
    mask[..., 8:40, 8:40] = 0
    holes = codec.masked_input(image, mask)[..., 16, 16]
    torch.testing.assert_close(holes, ((0 - mean) / std).view(1, 3))
    torch.testing.assert_close(codec.post_process(codec.pre_process(image)), image, atol=1e-3, rtol=0)
    ffhq = load_put(fixture_dir("put") / "put_tpami2024_small_transformer_model.safetensors", n_head=4)
    assert ffhq.model.content_codec.config.im_scale == (127.5,) * 3  # no config: the FFHQ models' x / 127.5 - 1
    assert any("im_scale [255.0, 255.0, 255.0]" in n for n in desc.notes), desc.notes


def test_decoder_upsample_type_comes_from_the_config(tmp_path):
    """nearest and bilinear decoders have the same weights; only the config tells them apart."""
    config = official_put_config("tpami2024")
    config["model"]["params"]["content_codec_config"]["params"]["decoder_config"]["params"]["upsample_type"] = "bilinear"
    desc = load_put(write_experiment(tmp_path, "tpami2024", config))
    assert desc.model.content_codec.config.upsample == "bilinear"
    nearest = load_put(write_experiment(tmp_path, "tpami2024", official_put_config("tpami2024"), exp="other"))
    assert nearest.model.content_codec.config.upsample == "nearest"


def test_config_defaults_are_the_official_ones_when_a_key_is_absent(tmp_path):
    """A config without an activation gets the official signature's GELU, without combine_rec_and_gt False."""
    config = official_put_config("tpami2024")
    params = config["model"]["params"]
    del params["act_layer"]
    del params["content_codec_config"]["params"]["combine_rec_and_gt"]
    desc = load_put(write_experiment(tmp_path, "tpami2024", config))
    assert desc.config.activation == "GELU" and desc.config.combine_rec_and_gt is False


@pytest.mark.parametrize("tag", [
    "!!python/object/apply:os.system ['touch {canary}']",
    "!!python/object/new:os.system ['touch {canary}']",
    "!!python/name:os.system",
    "!!python/module:os",
    "!!python/object:argparse.Namespace {{}}",
])
def test_config_with_an_object_constructing_tag_is_refused(tmp_path, tag):
    canary = tmp_path / "canary"
    ckpt = write_experiment(tmp_path, "cvpr2022", official_put_config("cvpr2022"))
    config = ckpt.parent.parent / "configs" / "config.yaml"
    config.write_text(config.read_text() + "hook: " + tag.format(canary=canary) + "\n")
    with pytest.raises(CheckpointError) as err:
        load_put(ckpt)
    text = str(err.value)
    assert "config.yaml" in text and "!!python/" in text and "Nothing in it was executed" in text, text
    assert not canary.exists()
    with pytest.raises(CheckpointError):
        read_official_yaml(config)


def test_broken_or_unsupported_configs_are_errors_not_silence(tmp_path):
    ckpt = write_experiment(tmp_path, "cvpr2022", official_put_config("cvpr2022"))
    config = ckpt.parent.parent / "configs" / "config.yaml"
    config.write_text("model: {params: [unclosed\n")
    with pytest.raises(CheckpointError, match="config.yaml: is not valid YAML"):
        load_put(ckpt)
    cosine = official_put_config("cvpr2022")
    cosine["model"]["params"]["content_codec_config"]["params"]["quantizer_config"]["params"]["distance_type"] = "cosine"
    config.write_text(yaml.dump(cosine))
    with pytest.raises(CheckpointError, match="distance_type: 'cosine'"):
        load_put(ckpt)


def test_a_yaml_that_is_not_a_transformer_config_is_passed_over_with_the_reason(tmp_path):
    ckpt = write_experiment(tmp_path, "cvpr2022", official_put_config("cvpr2022"))
    p_vqvae = {"model": {"target": "image_synthesis.modeling.codecs.image_codec.patch_vqgan.PatchVQGAN",
                         "params": {"encoder_config": {}, "decoder_config": {}}}}
    (ckpt.parent.parent / "configs" / "config.yaml").write_text(yaml.dump(p_vqvae))
    desc = load_put(ckpt)
    assert desc.config.n_head == 1  # width // 64: no usable config
    assert any("not used: it is a P-VQVAE config" in n for n in desc.notes), desc.notes
    (ckpt.parent.parent / "configs" / "config.yaml").unlink()
    assert any("no config.yaml beside the checkpoint" in n for n in load_put(ckpt).notes)


# ---------------------------------------------------------------------------------------------- DINO
def dino_keys_reference(sd: dict, x: torch.Tensor, heads: int, patch: int, square_grid_rule: bool = False) -> torch.Tensor:
    """facebookresearch/dino vision_transformer.py's forward up to the last block's keys, written plainly:
    `interpolate_pos_encoding` keeps pos_embed only if npatch == N *and* the input's pixel h == w."""
    tokens = F.conv2d(x, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=patch)
    tokens = tokens.flatten(2).transpose(1, 2)
    pos = sd["pos_embed"]
    n, npatch, dim = pos.shape[1] - 1, tokens.shape[1], pos.shape[-1]
    keep = npatch == n and (square_grid_rule or x.shape[-2] == x.shape[-1])  # square_grid_rule: the pack's old test
    if not keep:
        side = math.sqrt(n)
        h0, w0 = x.shape[-2] // patch + 0.1, x.shape[-1] // patch + 0.1
        grid = F.interpolate(pos[:, 1:].reshape(1, int(side), int(side), dim).permute(0, 3, 1, 2),
                             scale_factor=(h0 / side, w0 / side), mode="bicubic")
        pos = torch.cat([pos[:, :1], grid.permute(0, 2, 3, 1).reshape(1, -1, dim)], dim=1)
    h = torch.cat([sd["cls_token"].expand(x.shape[0], -1, -1), tokens], dim=1) + pos
    depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    for i in range(depth):
        p = lambda name: sd[f"blocks.{i}.{name}"]  # noqa: E731
        qkv = F.linear(F.layer_norm(h, (dim,), p("norm1.weight"), p("norm1.bias"), 1e-6), p("attn.qkv.weight"),
                       p("attn.qkv.bias"))
        if i == depth - 1:
            return qkv[..., dim:2 * dim]
        q, k, v = qkv.view(*h.shape[:2], 3, heads, dim // heads).permute(2, 0, 3, 1, 4)
        att = ((q @ k.transpose(-2, -1)) * (dim // heads) ** -0.5).softmax(-1)
        h = h + F.linear((att @ v).transpose(1, 2).reshape(h.shape), p("attn.proj.weight"), p("attn.proj.bias"))
        m = F.layer_norm(h, (dim,), p("norm2.weight"), p("norm2.bias"), 1e-6)
        h = h + F.linear(F.gelu(F.linear(m, p("mlp.fc1.weight"), p("mlp.fc1.bias"))), p("mlp.fc2.weight"),
                         p("mlp.fc2.bias"))


@pytest.mark.parametrize("size", [(224, 224), (224, 228), (228, 224), (224, 280), (232, 232), (112, 448)])
def test_dino_keys_follow_dinos_position_embedding_rule(size):
    path = fixture_dir("splice") / "dino_small_vit8_random.safetensors"
    desc = load_dino(path)
    sd = load_file(str(path))
    x = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(sum(size)))
    with torch.no_grad():
        ours = desc.model(x).keys
        ref = dino_keys_reference(sd, x, desc.config.num_heads, desc.config.patch_size)
    assert ((ours - ref).abs().max() / ref.abs().max()) <= 1e-4
    if size in ((224, 228), (228, 224)):  # a square 28x28 grid from a non-square picture: DINO resamples
        with torch.no_grad():
            old_rule = dino_keys_reference(sd, x, desc.config.num_heads, 8, square_grid_rule=True)
        assert ((old_rule - ref).abs().max() / ref.abs().max()) > 1e-2, "the sizes do not tell the rules apart"


def test_dino_full_training_checkpoint_uses_the_teacher(tmp_path):
    """main_dino.py's save_on_master: {'student' (DDP: module.backbone.*, module.head.*), 'teacher' (backbone.*,
    head.*), 'optimizer', 'epoch', 'args', 'dino_loss', 'fp16_scaler'}; DINO releases the teacher."""
    save_random_dino(tmp_path / "vit.safetensors")
    teacher = load_file(str(tmp_path / "vit.safetensors"))
    student = {k: v + 1 for k, v in teacher.items()}
    head = {"head.mlp.0.weight": torch.randn(32, 128), "head.last_layer.weight_g": torch.ones(64, 1)}
    ckpt = {
        "student": {**{f"module.backbone.{k}": v for k, v in student.items()}, **{f"module.{k}": v for k, v in head.items()}},
        "teacher": {**{f"backbone.{k}": v for k, v in teacher.items()}, **head},
        "optimizer": torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))]).state_dict(),
        "epoch": 101, "args": argparse.Namespace(arch="vit_small", patch_size=8, out_dim=65536),
        "dino_loss": {"center": torch.zeros(1, 64)}, "fp16_scaler": {"scale": 65536.0, "growth_factor": 2.0},
    }
    torch.save(ckpt, tmp_path / "checkpoint.pth")
    desc = load_dino(tmp_path / "checkpoint.pth")
    for k, v in desc.model.state_dict().items():
        assert torch.equal(v, teacher[k]), k
    torch.save(teacher, tmp_path / "dino_deitsmall8_pretrain.pth")  # the released backbone file: a plain state dict
    assert torch.equal(load_dino(tmp_path / "dino_deitsmall8_pretrain.pth").model.vit.pos_embed, teacher["pos_embed"])


# -------------------------------------------------------------------------------------------- Splice
def test_splice_structure_augmentation_in_the_official_order():
    """omerbt/Splice data/Dataset.py: Compose([dino_structure_transforms (flip, ColorJitter p=0.5, GaussianBlur
    p=0.2), Global_crops]) — jitter and blur see the whole image, the crop comes last."""
    tvf = pytest.importorskip("torchvision.transforms.functional")
    image = torch.rand(1, 3, 48, 72, generator=torch.Generator().manual_seed(0))
    image[..., :, :36] *= 0.2  # a dark half: the whole image's mean grey differs from a crop's
    factors = {"brightness": 1.2, "contrast": 0.6, "saturation": 1.1, "hue": 0.05}
    order = ("contrast", "brightness", "hue", "saturation")
    draw = StructureDraw(flip=True, jitter=factors, jitter_order=order, blur_sigma=1.3,
                         crop=CropDraw(top=2, left=20, side=46, flip=False))
    ours = SpliceAugment.apply_structure(image, draw)
    ref = tvf.hflip(image)
    for op in order:
        ref = {"brightness": tvf.adjust_brightness, "contrast": tvf.adjust_contrast,
               "saturation": tvf.adjust_saturation, "hue": tvf.adjust_hue}[op](ref, factors[op])
    ref = tvf.gaussian_blur(ref, kernel_size=[3, 3], sigma=[1.3, 1.3])
    ref = tvf.crop(ref, 2, 20, 46, 46)
    torch.testing.assert_close(ours, ref, atol=2e-5, rtol=0)
    crop_first = gaussian_blur3(color_jitter(tvf.hflip(image)[..., 2:48, 20:66], factors, order), 1.3)
    assert (crop_first - ref).abs().max() > 0.01  # the order the pack used before changes what the losses see
    # draws: the flip is drawn once, on the whole image, and the crop carries none
    aug = SpliceAugment(seed=3)
    draws = [aug.draw_structure(48, 72) for _ in range(200)]
    assert all(not d.crop.flip and 45 <= d.crop.side <= 48 for d in draws)
    assert 60 < sum(d.flip for d in draws) < 140 and 60 < sum(d.jitter is not None for d in draws) < 140
    assert 15 < sum(d.blur_sigma is not None for d in draws) < 70


# ----------------------------------------------------------------------------------- unsafe torch files
class _Payload:
    def __init__(self, canary):
        self.canary = str(canary)

    def __reduce__(self):
        return (os.system, (f"touch {self.canary}",))


@pytest.mark.parametrize("zip_format", [True, False])
def test_unsafe_torch_file_gets_the_packs_own_refusal(tmp_path, zip_format):
    canary = tmp_path / "canary"
    path = tmp_path / "shared_on_a_forum.pt"
    torch.save({"state_dict": {"w": torch.ones(2)}, "hook": _Payload(canary)}, path,
               _use_new_zipfile_serialization=zip_format)
    for loader in (load_stylegan2, load_encoder, load_put, load_dino):
        with pytest.raises(CheckpointError) as err:
            loader(path)
        text = str(err.value)
        assert text.startswith("shared_on_a_forum.pt: refusing to load"), text
        assert "system'" in text and "Nothing in it was executed" in text and "Fix:" in text, text
        assert "transedit convert" in text and "Weights only load failed" not in text and "\n" not in text, text
    assert not canary.exists()


# --------------------------------------------------------------------------- StyleGAN2 and the encoders
SMALL = StyleGAN2Config(size=32, style_dim=32, n_mlp=2, channels={4: 16, 8: 16, 16: 16, 32: 8})


def test_rosinality_train_checkpoint(tmp_path):
    """rosinality/stylegan2-pytorch train.py: torch.save({'g', 'd', 'g_ema', 'g_optim', 'd_optim', 'args',
    'ada_aug_p'}, f'checkpoint/{i:06d}.pt') — the EMA generator is the one to use."""
    torch.manual_seed(0)
    g, g_ema = StyleGAN2Generator(SMALL), StyleGAN2Generator(SMALL)
    d = {"convs.0.0.weight": torch.randn(16, 3, 1, 1), "final_linear.1.weight": torch.randn(1, 16)}
    g_optim = torch.optim.Adam(g.parameters(), lr=0.002, betas=(0.0, 0.99))
    for p in g.parameters():  # the state of an optimizer that has stepped
        p.grad = torch.zeros_like(p)
    g_optim.step()
    args = argparse.Namespace(size=32, iter=800000, batch=16, r1=10, path_regularize=2, channel_multiplier=2,
                              wandb=False, local_rank=0, augment=False, augment_p=0, ada_target=0.6)
    path = tmp_path / "checkpoint" / "010000.pt"
    path.parent.mkdir()
    torch.save({"g": g.state_dict(), "d": d, "g_ema": g_ema.state_dict(), "g_optim": g_optim.state_dict(),
                "d_optim": g_optim.state_dict(), "args": args, "ada_aug_p": 0.0}, path)
    desc = load_stylegan2(path)
    assert desc.weights == "g_ema" and desc.latent_avg_source == "estimated"
    for k, v in g_ema.state_dict().items():
        assert torch.equal(desc.model.state_dict()[k], v), k


def test_rosinality_convert_weight_checkpoint_with_g_and_d(tmp_path):
    """convert_weight.py: {'g_ema', 'latent_avg'} (+ 'g' with --gen, 'd' with --disc)."""
    path = save_random_generator(tmp_path / "conv.pt", SMALL)
    ckpt = torch.load(path, weights_only=True)
    ckpt["g"] = {k: v + 1 if v.is_floating_point() else v for k, v in ckpt["g_ema"].items()}
    ckpt["d"] = {"convs.0.0.weight": torch.randn(16, 3, 1, 1)}
    torch.save(ckpt, tmp_path / "stylegan2-ffhq-config-f.pt")
    desc = load_stylegan2(tmp_path / "stylegan2-ffhq-config-f.pt")
    assert desc.weights == "g_ema" and desc.latent_avg_source == "checkpoint"
    assert torch.equal(desc.latent_avg, ckpt["latent_avg"])


@pytest.mark.parametrize("family,opts,expect", [
    # pixel2style2pixel training/coach.py: {'state_dict', 'opts': vars(opts), 'latent_avg' if start_from_latent_avg}
    ("psp", dict(encoder_type="GradualStyleEncoder", dataset_type="cars_encode", start_from_latent_avg=True,
                 learn_in_w=False, output_size=64, input_nc=3, label_nc=0), dict(family="psp", input_size=(192, 256))),
    # encoder4editing training/coach.py: + 'global_step', 'optimizer', 'best_val_loss', discriminator states
    ("e4e", dict(encoder_type="Encoder4Editing", dataset_type="ffhq_encode", start_from_latent_avg=True,
                 output_size=64, save_training_data=True, w_discriminator_lambda=0.1),
     dict(family="e4e", input_size=(256, 256))),
    # sapphire497/style-transformer training/coach_invert.py and StylePrompter training/coach.py: same container
    ("style_transformer", dict(encoder_type="StyleTransformer", dataset_type="ffhq_encode", start_from_latent_avg=True,
                               output_size=64), dict(family="style_transformer", input_size=(256, 256))),
    ("styleprompter", dict(encoder_type="StylePrompter", dataset_type="ffhq_encode", start_from_latent_avg=True,
                           output_size=64), dict(family="styleprompter")),
])
def test_encoder_coach_checkpoints(tmp_path, family, opts, expect):
    """The coaches' __get_save_dict, with the experiment folder scripts/train.py makes (exp_dir/opt.json beside
    checkpoints/): the opts inside the checkpoint are what the official inference reads, and so do we."""
    path = save_random_encoder(tmp_path / "tmp.pt", family=family)
    ckpt = torch.load(path, weights_only=True)
    ckpt["opts"] = {**vars(argparse.Namespace(exp_dir=str(tmp_path), batch_size=8, learning_rate=1e-4,
                                              optim_name="ranger", max_steps=500000)), **opts}
    if family == "e4e":
        ckpt.update(global_step=20000, best_val_loss=None,
                    optimizer=torch.optim.Adam([torch.nn.Parameter(torch.zeros(3))]).state_dict(),
                    discriminator_state_dict={"debug.0.weight": torch.randn(4, 4)},
                    discriminator_optimizer_state_dict=torch.optim.Adam([torch.nn.Parameter(torch.zeros(3))]).state_dict())
    (tmp_path / "exp" / "checkpoints").mkdir(parents=True)
    (tmp_path / "exp" / "opt.json").write_text(json.dumps({**ckpt["opts"], "dataset_type": "celebs_sketch_to_face"}))
    torch.save(ckpt, tmp_path / "exp" / "checkpoints" / "best_model.pt")
    desc = load_encoder(tmp_path / "exp" / "checkpoints" / "best_model.pt")
    assert desc.family == expect["family"] and desc.opts["dataset_type"] == opts["dataset_type"]
    if "input_size" in expect:
        assert desc.input_size == expect["input_size"]
    assert torch.allclose(desc.model.latent_avg.reshape(-1)[:4], ckpt["latent_avg"].reshape(-1)[:4])
