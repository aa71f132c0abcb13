"""transedit.train: every encoder family learns to invert a tiny random generator (synthetic mode, CPU), the
exported file loads in the nodes and inverts, DDP ranks agree, resume continues exactly, bad input is refused
clearly. Plus the loss networks load from local files in their official layouts, and the latent-recovery
benchmark runs."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from transedit.models.encoders import losses as L
from transedit.models import perceptual
from transedit.models.registry import load_encoder
from transedit.random_weights import save_random_generator
from transedit.models.stylegan.generator import StyleGAN2Config
from transedit.nodes import comfy_bridge as bridge
from transedit.nodes import inversion as inv_nodes
from transedit.train import TrainConfig, Trainer, main, parse_args

REPO = Path(__file__).resolve().parents[1]
STEPS = 40
FACTOR = 0.6  # training reconstruction loss: last 5 steps below 0.6 x the first 5
HELD_OUT_FACTOR = 0.7  # on images never seen: below 0.7 x the error of always answering latent_avg
FAMILIES = ("swinstyleformer", "style_transformer", "psp", "e4e", "styleprompter")


@pytest.fixture(scope="module")
def generator(tmp_path_factory):
    path = tmp_path_factory.mktemp("gen") / "tiny_g.pt"
    return save_random_generator(path, seed=0, config=StyleGAN2Config(
        size=32, style_dim=32, n_mlp=2, channels={4: 16, 8: 16, 16: 16, 32: 8}))


def tiny_config(generator, out, family, **kw) -> TrainConfig:
    base = dict(family=family, generator=str(generator), out=str(out), synthetic=True, size="tiny", input_size=64,
                steps=STEPS, batch=4, lr=1e-3, lambda_latent=1.0, log_every=1000, save_every=1000, seed=0)
    return TrainConfig(**(base | kw))


@torch.no_grad()
def held_out_errors(trainer: Trainer, n: int = 8, seed: int = 99) -> tuple[float, float]:
    """(trained, mean-latent baseline) pixel MSE on fresh synthetic images the trainer never saw."""
    trainer.data_gen.manual_seed(seed)
    x, _ = trainer._batch() if trainer.cfg.batch >= n else (None, None)
    if x is None:
        xs = [trainer._batch()[0] for _ in range((n + trainer.cfg.batch - 1) // trainer.cfg.batch)]
        x = torch.cat(xs)[:n]
    trainer.model.eval()
    wplus, feats = trainer.model(x)
    hook = trainer.model.smart.hook(feats) if trainer.model.smart is not None else None
    trained = F.mse_loss(trainer._synthesise(wplus, hook), x).item()
    mean = trainer.latent_avg.reshape(-1, trainer.style_dim).mean(0).view(1, 1, -1).expand_as(wplus).contiguous()
    baseline = F.mse_loss(trainer._synthesise(mean), x).item()
    trainer.model.train()
    return trained, baseline


@pytest.fixture(scope="module")
def trained(generator, tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    runs = {}
    for family in FAMILIES:
        trainer = Trainer(tiny_config(generator, root / family, family))
        trainer.run()
        runs[family] = (trainer, root / family)
    return runs


@pytest.mark.parametrize("family", FAMILIES)
def test_family_learns_to_invert_and_exports_for_the_nodes(trained, family, monkeypatch):
    trainer, out = trained[family]
    err, baseline = held_out_errors(trainer)
    assert err < HELD_OUT_FACTOR * baseline, (family, err, baseline)
    first = sum(h["l2"] for h in trainer.history[:5]) / 5
    last = sum(h["l2"] for h in trainer.history[-5:]) / 5
    assert last < FACTOR * first, (family, first, last)
    # the export loads through the node and inverts to exactly the trainer's W+
    export = out / "encoder.safetensors"
    bridge.set_fallback_folder("gan_encoders", [str(out)])
    try:
        encoder, gen = inv_nodes.TransEditLoadEncoder().load("encoder.safetensors")
    finally:
        bridge._fallback_paths.pop("gan_encoders", None)
    assert encoder.descriptor.family == family and gen is not None
    img = (torch.rand(1, 64, 64, 3) * 0.8 + 0.1)
    (latent,) = inv_nodes.TransEditInvert().invert(encoder, img, "fast (torch)", "fp32")
    assert latent.wplus.shape == (1, trainer.n_latent, trainer.style_dim)
    trainer.model.eval()
    with torch.no_grad():
        expected, _ = trainer.model(img.permute(0, 3, 1, 2) * 2 - 1)
    torch.testing.assert_close(latent.wplus, expected.float(), atol=1e-4, rtol=1e-4)
    report = json.loads((out / "train_report.json").read_text())
    assert report["step"] == STEPS
    assert load_encoder(export).input_size == (64, 64)


def test_smart_stage_trains_on_the_frozen_baseline(trained, generator, tmp_path):
    base_trainer, base_out = trained["styleprompter"]
    before = {k: v.clone() for k, v in base_trainer.model.encoder.state_dict().items()}
    cfg = tiny_config(generator, tmp_path / "smart", "styleprompter_smart", init_encoder=str(base_out / "encoder.safetensors"),
                      steps=20, lambda_latent=0.0)
    trainer = Trainer(cfg)
    frozen = {k: v.clone() for k, v in trainer.model.encoder.state_dict().items()}
    trainer.run()
    for k, v in trainer.model.encoder.state_dict().items():
        assert torch.equal(v, frozen[k]), f"encoder weight {k} changed in the SMART stage"
    assert all(torch.equal(before[k], frozen[k]) for k in before)  # it started from the baseline
    first = sum(h["l2"] for h in trainer.history[:4]) / 4
    last = sum(h["l2"] for h in trainer.history[-4:]) / 4
    assert last < first, (first, last)
    desc = load_encoder(tmp_path / "smart" / "encoder.safetensors")
    assert desc.family == "styleprompter" and desc.smart is not None


def test_resume_continues_from_the_saved_step_exactly(generator, tmp_path):
    full = Trainer(tiny_config(generator, tmp_path / "full", "swinstyleformer", steps=6, save_every=3))
    full.run()
    part = Trainer(tiny_config(generator, tmp_path / "part", "swinstyleformer", steps=3, save_every=3))
    part.run()
    ckpt = torch.load(tmp_path / "part" / "checkpoint.pt", weights_only=True)
    assert ckpt["step"] == 3 and ckpt["optimizer"]["state"]
    resumed = Trainer(tiny_config(generator, tmp_path / "part", "swinstyleformer", steps=6, save_every=3, resume=True))
    assert resumed.step == 3
    opt_state = resumed.optimizer.state_dict()["state"]
    saved = ckpt["optimizer"]["state"]
    assert all(torch.equal(opt_state[i]["exp_avg"], saved[i]["exp_avg"]) for i in saved)
    resumed.run()
    a, b = full.trainable.state_dict(), resumed.trainable.state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=1e-5, msg=k)
    assert torch.load(tmp_path / "part" / "checkpoint.pt", weights_only=True)["step"] == 6


def test_bf16_gradient_accumulation_and_sample_grids(generator, tmp_path):
    cfg = tiny_config(generator, tmp_path / "r", "psp", steps=2, batch=2, grad_accum=2, bf16=True, sample_every=1,
                      lambda_wnorm=0.01, lambda_adv=0.1, lambda_align=0.1)
    trainer = Trainer(cfg)
    report = trainer.run()
    assert report["step"] == 2 and all(torch.isfinite(torch.tensor(h["l2"])) for h in trainer.history)
    assert {"l2", "latent", "wnorm", "adv", "align", "disc"} <= set(trainer.history[-1])
    grids = sorted((tmp_path / "r" / "samples").glob("step_*.png"))
    assert [g.name for g in grids] == ["step_0000001.png", "step_0000002.png"]
    from PIL import Image

    with Image.open(grids[0]) as im:  # targets above reconstructions, 2 images side by side at 32 px
        assert im.size == (64, 64)
    log = [json.loads(line) for line in (tmp_path / "r" / "train_log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log] == [1, 2]


def test_torchrun_two_ranks_agree(generator, tmp_path):
    out = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    import socket

    with socket.socket() as sock:  # a free loopback port for the rendezvous
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={port}",
           "-m", "transedit.train", "--family", "swinstyleformer", "--generator", str(generator), "--synthetic",
           "--size", "tiny", "--input-size", "64", "--steps", "3", "--batch", "2", "--out", str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "train_report.json").read_text())
    sums = report["rank_checksums"]
    assert len(sums) == 2 and sums[0] == sums[1], sums
    assert report["step"] == 3 and (out / "encoder.safetensors").is_file()


# ------------------------------------------------------------------------------------------ bad input
def test_existing_output_is_refused_unless_resume_or_overwrite(generator, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "mine.txt").write_text("the user's file")
    with pytest.raises(FileExistsError, match="--resume.*--overwrite"):
        Trainer(tiny_config(generator, out, "swinstyleformer", steps=1))
    with pytest.raises(ValueError, match="no checkpoint.pt"):
        Trainer(tiny_config(generator, out, "swinstyleformer", steps=1, resume=True))
    assert main(["--family", "swinstyleformer", "--generator", str(generator), "--synthetic", "--size", "tiny",
                 "--input-size", "64", "--steps", "1", "--batch", "2", "--out", str(out), "--overwrite"]) == 0
    assert (out / "mine.txt").read_text() == "the user's file"  # only the trainer's own files are replaced


def test_missing_loss_weights_switch_the_loss_off_with_a_note(generator, tmp_path, capsys):
    cfg = tiny_config(generator, tmp_path / "r", "swinstyleformer", steps=1, lambda_lpips=0.8, lambda_id=0.1,
                      id_weights=str(tmp_path / "nope.pth"))
    trainer = Trainer(cfg)
    assert trainer.lpips is None and trainer.id_loss is None and cfg.lambda_lpips == 0 and cfg.lambda_id == 0
    text = capsys.readouterr().out
    assert "LPIPS is off" in text and "identity loss is off" in text and "model_ir_se50.pth" in text
    data_cfg = tiny_config(generator, tmp_path / "d", "swinstyleformer", steps=1, synthetic=False,
                           data=str(tmp_path), lambda_latent=1.0)
    (tmp_path / "a.png").write_bytes(b"")
    with pytest.raises(ValueError, match="no readable images"):
        Trainer(data_cfg)


def test_image_folder_skips_and_counts_unreadable_files(generator, tmp_path, capsys):
    from PIL import Image

    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    for i in range(3):
        Image.fromarray((torch.rand(40, 50, 3) * 255).byte().numpy()).save(data / f"img{i}.png")
    Image.fromarray((torch.rand(30, 30, 3) * 255).byte().numpy()).save(data / "sub" / "deep.jpg")
    (data / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (data / "empty.jpg").write_bytes(b"")
    (data / "notes.txt").write_text("not an image")
    trainer = Trainer(tiny_config(generator, tmp_path / "out", "swinstyleformer", steps=3, batch=2, synthetic=False,
                                  data=str(data)))
    assert len(trainer.dataset) == 4 and len(trainer.dataset.skipped) == 2
    assert "2 unreadable file(s) skipped" in capsys.readouterr().out
    assert "latent loss is off" in " ".join(trainer.cfg.notes)
    trainer.run()
    assert trainer.step == 3


def test_face_alignment_of_folder_images(generator, tmp_path):
    pytest.importorskip("mediapipe")
    from PIL import Image
    from skimage import data as skdata

    folder = tmp_path / "faces"
    folder.mkdir()
    Image.fromarray(skdata.astronaut()).save(folder / "face.png")
    Image.fromarray((torch.linspace(0, 1, 96 * 96 * 3).view(96, 96, 3) * 255).byte().numpy()).save(folder / "ramp.png")
    trainer = Trainer(tiny_config(generator, tmp_path / "out", "swinstyleformer", steps=2, batch=2, synthetic=False,
                                  data=str(folder), align=True))
    images = [trainer.dataset[i] for i in range(len(trainer.dataset))]
    assert all(x.shape == (3, 256, 256) and x.min() >= -1 and x.max() <= 1 for x in images)
    assert trainer.dataset.no_face == {"ramp.png"}  # skipped: the face photo is used in its place
    torch.testing.assert_close(images[0], images[1])
    report = trainer.run()
    assert report["no_face_skipped"] == ["ramp.png"] and report["images"] == 2


def test_swin_backbone_initialises_from_a_window7_checkpoint(tmp_path):
    from timm.models.swin_transformer import SwinTransformer

    from transedit.models.encoders.swinstyleformer import (SwinStyleformerConfig, SwinStyleformerEncoder,
                                                           load_backbone_weights)

    cfg = SwinStyleformerConfig(img_size=64, embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 2, 2, 4),
                                window_size=2, n_latent=8, style_dim=32, decoder_depth=1, decoder_heads=2)
    source = SwinTransformer(img_size=224, patch_size=4, embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 2, 2, 4),
                             window_size=7, num_classes=10)
    torch.save({"model": source.state_dict()}, tmp_path / "swin_w7.pth")
    enc = SwinStyleformerEncoder(cfg)
    counts = load_backbone_weights(enc, tmp_path / "swin_w7.pth")
    assert counts["resized"] == 4 and counts["copied"] > 10
    assert torch.equal(enc.backbone.patch_embed.proj.weight, source.patch_embed.proj.weight)
    table = enc.backbone.layers[0].blocks[0].attn.relative_position_bias_table
    assert table.shape == (9, 1) and torch.isfinite(table).all()
    (tmp_path / "junk.pth").write_bytes(b"")
    with pytest.raises(Exception):
        load_backbone_weights(enc, tmp_path / "junk.pth")


def test_cli_argument_errors(generator):
    with pytest.raises(SystemExit):
        parse_args(["--family", "psp", "--generator", str(generator), "--out", "x"])  # neither data nor synthetic
    with pytest.raises(SystemExit):
        parse_args(["--family", "psp", "--generator", str(generator), "--out", "x", "--synthetic", "--resume",
                    "--overwrite"])
    with pytest.raises(SystemExit):
        parse_args(["--family", "stylegan", "--generator", str(generator), "--out", "x", "--synthetic"])


# ------------------------------------------------------------------------------------------ loss networks
def test_lpips_and_arcface_load_from_local_files_in_official_layouts(tmp_path):
    vgg = {}
    c_in = 3
    i = 0
    for v in perceptual.VGG16_LAYOUT:
        if v == "M":
            i += 1
            continue
        vgg[f"features.{i}.weight"] = torch.randn(v, c_in, 3, 3) * 0.05
        vgg[f"features.{i}.bias"] = torch.zeros(v)
        c_in = v
        i += 2
    vgg["classifier.0.weight"] = torch.zeros(2, 2)  # torchvision files carry the classifier too
    torch.save(vgg, tmp_path / "vgg16.pth")
    torch.save({f"lin{k}.model.1.weight": torch.rand(1, c, 1, 1) for k, c in enumerate(perceptual.VGG16_CHANNELS)},
               tmp_path / "lpips_vgg.pth")
    lpips = perceptual.LPIPS.from_files(tmp_path / "vgg16.pth", tmp_path / "lpips_vgg.pth")
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    d_same, d_other = lpips(x, x), lpips(x, torch.rand(2, 3, 64, 64) * 2 - 1)
    assert torch.allclose(d_same, torch.zeros(2), atol=1e-6) and (d_other > 0).all()

    arc = L.ArcFaceIRSE50()
    torch.save({f"module.{k}": v for k, v in arc.state_dict().items()}, tmp_path / "model_ir_se50.pth")  # DataParallel
    idl = L.IdentityLoss.from_file(tmp_path / "model_ir_se50.pth")
    faces = torch.rand(2, 3, 256, 256) * 2 - 1
    assert torch.allclose(idl(faces, faces), torch.zeros(2), atol=1e-5)
    assert {k.split(".")[0] for k in arc.state_dict()} == {"input_layer", "body", "output_layer"}  # official names


def test_discriminator_and_alignment_losses():
    torch.manual_seed(0)
    disc = L.LatentDiscriminator(8, width=16)
    real, fake = torch.randn(32, 8), torch.randn(32, 8) + 3
    d = L.discriminator_loss(disc, real, fake)
    assert d.requires_grad and torch.isfinite(d)
    assert float(L.moment_alignment(real, real)) == pytest.approx(0.0, abs=1e-6)
    assert float(L.moment_alignment(fake, real)) > 1.0


def test_latent_recovery_benchmark(trained, tmp_path):
    sys.path.insert(0, str(REPO / "benchmarks"))
    import bench_latent_recovery as bench

    _, out = trained["psp"]
    report = bench.run(out / "encoder.safetensors", n=8, batch=4)
    enc, base = report["results"]["encoder"], report["results"]["mean_latent"]
    assert enc["mse"] < base["mse"] and enc["psnr_db"] > base["psnr_db"]
    assert 0 < enc["latent_l2"] < float("inf")  # 40 tiny steps fit pixels; the W+ distance is reported, not judged
    assert bench.main(["--encoder", str(out / "encoder.safetensors"), "--n", "4", "--out", str(tmp_path / "r.json")]) == 0
    assert json.loads((tmp_path / "r.json").read_text())["n"] == 4
