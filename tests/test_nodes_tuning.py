"""The tuning stage's nodes (nodes/tuning.py): Load LPIPS, Pivotal Tune, Save Tuned StyleGAN (and Load StyleGAN reading
its delta back), Load Face Parser, Face Region Mask, Stitching Tune; Edit Studio's live preview on a tuned generator.

Tiny generators (32 px) and random LPIPS / BiSeNet files in their released layouts keep every test in seconds. What
the tuning computes is the engine's to show (tests/test_tuning*.py, parity with the official code); here: what the
nodes hand on (shapes, dtypes, devices, the base left alone, ComfyUI's memory management), their errors (node, input,
fix), Cancel, out of memory, and the delta file (round trip, its base found and checked, nothing overwritten).

Over 600 lines because the six nodes share one set of tiny model files (module fixtures) and helpers."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

import comfy_harness as h
from conftest import model_folders
from transedit.models.stylegan.generator import StyleGAN2Config
from transedit.random_weights import save_random_encoder, save_random_generator
from transedit.models.core.directions import LatentDirection
from transedit.nodes import comfy_bridge as bridge
from transedit.nodes import edit_studio as studio
from transedit.nodes import inversion as inv_nodes
from transedit.nodes import stylegan as sg_nodes
from transedit.nodes import tuning as nodes
from transedit.nodes.inputs import NodeInputError

FOLDERS = ("stylegan", "gan_encoders", "lpips", "face_parsing")
CONFIG = StyleGAN2Config(size=32, style_dim=32, n_mlp=2, channels={4: 16, 8: 16, 16: 16, 32: 8})
ALEX, ALEX_HEADS = "alexnet-owt-7be5be79.pth", "alex.pth"
VGG, VGG_HEADS = "vgg16-397923af.pth", "vgg.pth"


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    with model_folders(tmp_path_factory.mktemp("tuning_models"), FOLDERS) as root:
        save_random_generator(root / "stylegan" / "g.pt", config=CONFIG, seed=3)
        save_random_generator(root / "stylegan" / "other.pt", config=CONFIG, seed=4)
        for name in (ALEX, ALEX_HEADS, VGG, VGG_HEADS):
            h.save_tiny_lpips(root / "lpips" / name)
        yield root


@pytest.fixture(scope="module")
def generator(root):
    return sg_nodes.TransEditLoadStyleGAN().load("g.pt")[0]


@pytest.fixture(scope="module")
def lpips(root):
    return nodes.TransEditLoadLPIPS().load("alex", ALEX, ALEX_HEADS)[0]


@pytest.fixture(scope="module")
def pivots(generator):
    return sg_nodes.TransEditSampleLatent().sample(generator, 5, 2, 0.7)[0]


def crops(n: int, size: int = 48, seed: int = 0) -> torch.Tensor:
    """Smooth pictures with some noise, IMAGE [n, size, size, 3]."""
    g = torch.Generator().manual_seed(seed)
    y = torch.linspace(0, 1, size).view(1, size, 1, 1).expand(n, size, size, 1)
    x = torch.linspace(0, 1, size).view(1, 1, size, 1).expand(n, size, size, 1)
    return (0.6 * torch.cat([y, x, x * y], -1) + 0.4 * torch.rand(n, size, size, 3, generator=g)).clamp(0, 1)


def tune(generator, latent, images, lpips, preset="PTI", steps=4, seed=0, **kw):
    kw.setdefault("learning_rate", 1e-2)
    return nodes.TransEditPivotalTune().tune(generator, latent, images, lpips, preset, steps, seed, "fp32", **kw)[0]


def render(generator, latent) -> torch.Tensor:
    return sg_nodes.TransEditGenerate().generate(generator, latent, "const", 0, "fp32")[0]


def state(module) -> dict:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def assert_names(err, node: str, input_name: str, *words) -> None:
    text = str(err.value)
    assert isinstance(err.value, NodeInputError) and err.value.node == node and err.value.input_name == input_name
    assert text.startswith(f"{node}: input '{input_name}'") and "Fix:" in text, text
    for word in words:
        assert word in text, (word, text)


# ------------------------------------------------------------------------------------------------ LPIPS
def test_load_lpips_alex_and_vgg(root):
    alex = nodes.TransEditLoadLPIPS().load("alex", ALEX, ALEX_HEADS)[0]
    vgg = nodes.TransEditLoadLPIPS().load("vgg", VGG, VGG_HEADS)[0]
    assert isinstance(alex, nodes.LPIPSHandle) and alex.load().net == "alex" and vgg.load().net == "vgg"
    x, y = torch.rand(2, 3, 32, 32) * 2 - 1, torch.rand(2, 3, 32, 32) * 2 - 1
    d = alex.load()(x, y)
    assert d.shape == (2,) and d.dtype == torch.float32 and bool((d > 0).all())
    assert not any(p.requires_grad for p in alex.load().parameters())


def test_load_lpips_errors_name_the_input_and_the_links(root):
    load = nodes.TransEditLoadLPIPS().load
    with pytest.raises(NodeInputError) as e:
        load("alex", "missing.pth", ALEX_HEADS)
    assert_names(e, "TransEdit Load LPIPS", "backbone", "ComfyUI/models/lpips", "download.pytorch.org/models/"
                 "alexnet-owt-7be5be79.pth", "PerceptualSimilarity")
    with pytest.raises(NodeInputError) as e:
        load("alex", ALEX, "missing.pth")
    assert_names(e, "TransEdit Load LPIPS", "heads", "alex.pth")
    with pytest.raises(NodeInputError) as e:  # the net chosen is not the files'
        load("alex", VGG, VGG_HEADS)
    assert_names(e, "TransEdit Load LPIPS", "backbone", "vgg", "set net to 'vgg'")
    with pytest.raises(NodeInputError) as e:  # heads of another net
        load("alex", ALEX, VGG_HEADS)
    assert_names(e, "TransEdit Load LPIPS", "backbone", "vgg.pth")
    with pytest.raises(NodeInputError) as e:  # the two files swapped
        load("alex", ALEX_HEADS, ALEX)
    assert_names(e, "TransEdit Load LPIPS", "backbone")
    assert set(h.workflow_model_files({"nodes": [{"type": "TransEditLoadLPIPS",
                                                  "widgets_values": ["alex", ALEX, ALEX_HEADS]}]})) == \
        {("lpips", ALEX), ("lpips", ALEX_HEADS)}


# ---------------------------------------------------------------------------------------- Pivotal Tune
def test_pivotal_tune_gives_a_tuned_generator_and_leaves_the_base_alone(generator, lpips, pivots):
    base_module = generator.load()
    before = state(base_module)
    images = crops(2)
    tuned = tune(generator, pivots, images, lpips, steps=4)
    assert isinstance(tuned, nodes.TunedStyleGANHandle) and isinstance(tuned, sg_nodes.StyleGANHandle)
    assert tuned.managed is not generator.managed and tuned.descriptor.model is not base_module
    # the base: same module, same weights; the tuned copy: on the offload device, frozen, different weights
    assert generator.load() is base_module and all(torch.equal(v, before[k]) for k, v in state(base_module).items())
    module = tuned.descriptor.model
    assert next(module.parameters()).device == bridge.offload_device()
    assert not any(p.requires_grad for p in module.parameters()) and not module.training
    assert any(not torch.equal(v, before[k]) for k, v in state(module).items())
    assert tuned.tuning.mode == "PTI" and tuned.tuning.frames == 2 and tuned.tuning.steps_run == 8
    assert tuned.tuning.base_source == generator.descriptor.source and "PTI" in tuned.name
    # its latents stay its own (no "made with another generator" mismatch), and it renders closer to the crops
    assert tuned.descriptor.fingerprint == generator.descriptor.fingerprint
    target = torch.nn.functional.interpolate(images.permute(0, 3, 1, 2), size=32, mode="bilinear",
                                             antialias=True).permute(0, 2, 3, 1)
    out = render(tuned, pivots)
    assert out.shape == (2, 32, 32, 3) and out.dtype == torch.float32 and out.device.type == "cpu"
    assert (out - target).square().mean() < 0.8 * (render(generator, pivots) - target).square().mean()


def test_every_node_takes_the_tuned_generator(generator, lpips, pivots):
    tuned = tune(generator, pivots, crops(2), lpips, steps=2)
    sample = sg_nodes.TransEditSampleLatent().sample(tuned, 1, 3, 0.7)[0]
    assert sample.batch_size == 3 and render(tuned, sample).shape == (3, 32, 32, 3)
    from transedit.nodes import editing

    sefa = editing.TransEditSeFa().factorize(tuned, 0, 0, -1)[0]
    edited = editing.TransEditApplyDirection().apply(pivots, sefa, 2.0, -1, -1)[0]
    assert render(tuned, edited).shape == (2, 32, 32, 3)
    again = tune(tuned, pivots, crops(2), lpips, steps=1)  # tuning a tuned generator: the delta base stays the file
    assert again.tuning.base_source == generator.descriptor.source and again.tuning.mode == "PTI+PTI"


def test_presets_and_overrides():
    cfg = nodes.tuning_config("n", "PTI", 0, 0.0, -1.0, "preset")
    assert (cfg.steps, cfg.lr, cfg.early_stop_lpips, cfg.locality_regularization) == (350, 3e-4, 0.06, False)
    cfg = nodes.tuning_config("n", "STIT", 0, 0.0, -1.0, "preset")
    assert (cfg.steps, cfg.lr, cfg.early_stop_lpips, cfg.locality_regularization) == (50, 3e-5, None, True)
    cfg = nodes.tuning_config("n", "PTI", 7, 1e-3, 0.0, "on")
    assert (cfg.steps, cfg.lr, cfg.early_stop_lpips, cfg.locality_regularization) == (7, 1e-3, None, True)
    cfg = nodes.tuning_config("n", "STIT", 0, 0.0, 0.2, "off")
    assert (cfg.steps, cfg.early_stop_lpips, cfg.locality_regularization) == (50, 0.2, False)


def test_stit_preset_tunes_one_generator_over_every_frame(generator, lpips, pivots, monkeypatch):
    seen = {}
    real = nodes.pivotal_tune

    def spy(module, wplus, targets, perceptual, config, **kw):
        seen.update(targets=targets, config=config, kw=kw)
        return real(module, wplus, targets, perceptual, config, **kw)

    monkeypatch.setattr(nodes, "pivotal_tune", spy)
    tuned = tune(generator, pivots, crops(2, size=64), lpips, preset="STIT", steps=2, seed=9)
    assert tuned.tuning.steps_run == 4 and tuned.tuning.mode == "STIT"  # 2 passes x 2 frames
    cfg = seen["config"]
    assert cfg.locality_regularization and cfg.early_stop_lpips is None and cfg.lr == 1e-2
    # the crops stay on the CPU at the generator's size in [-1, 1] (the engine streams them to the device)
    t = seen["targets"]
    assert t.shape == (2, 3, 32, 32) and t.device.type == "cpu" and -1 <= float(t.min()) and float(t.max()) <= 1
    assert seen["kw"]["seed"] == 9 and torch.equal(seen["kw"]["w_avg"], generator.descriptor.latent_avg)


def test_progress_shows_the_reconstruction(generator, lpips, pivots, monkeypatch):
    updates = []
    real_update = bridge.Progress.update

    def spy(self, steps=1, preview=None):
        updates.append((self.total, steps, preview))
        return real_update(self, steps, preview)

    monkeypatch.setattr(bridge.Progress, "update", spy)
    one = pivots.with_wplus(pivots.wplus[:1])
    tune(generator, one, crops(1), lpips, steps=10, early_stop_lpips=0.0)
    assert updates and all(total == 10 for total, _, _ in updates)
    assert sum(steps for _, steps, _ in updates) == 10
    pictures = [p for _, _, p in updates if p is not None]
    assert pictures and pictures[0].size == (32, 32)


def test_pivotal_tune_errors(generator, lpips, pivots, root):
    node = "TransEdit Pivotal Tune"
    with pytest.raises(NodeInputError) as e:
        tune(generator, pivots, crops(3), lpips)
    assert_names(e, node, "images", "3 images for 2", "same batch")
    with pytest.raises(NodeInputError) as e:
        tune(generator, pivots, crops(2)[:, :, :40], lpips)
    assert_names(e, node, "images", "40x48", "Align Face")
    with pytest.raises(NodeInputError) as e:
        tune(lpips, pivots, crops(2), lpips)
    assert_names(e, node, "generator", "TE_STYLEGAN")
    with pytest.raises(NodeInputError) as e:  # an encoder file without a generator gives None
        tune(None, pivots, crops(2), lpips)
    assert_names(e, node, "generator", "Load StyleGAN")
    with pytest.raises(NodeInputError) as e:
        tune(generator, pivots, crops(2), generator)
    assert_names(e, node, "lpips", "Load LPIPS")
    other = sg_nodes.TransEditLoadStyleGAN().load("other.pt")[0]
    small = save_random_generator(root / "stylegan" / "small.pt", config=StyleGAN2Config(
        size=16, style_dim=16, n_mlp=1, channels={4: 8, 8: 8, 16: 8}))
    wrong = sg_nodes.TransEditSampleLatent().sample(sg_nodes.TransEditLoadStyleGAN().load(small.name)[0], 0, 2, 1)[0]
    with pytest.raises(NodeInputError) as e:
        tune(other, wrong, crops(2), lpips)
    assert_names(e, node, "latent", "W+")
    with pytest.raises(NodeInputError) as e:
        tune(generator, pivots.with_wplus(pivots.wplus * float("nan")), crops(2), lpips)
    assert_names(e, node, "latent", "NaN")
    with pytest.raises(NodeInputError) as e:
        tune(generator, pivots, crops(2), lpips, preset="HyperStyle")
    assert "input 'preset'" in str(e.value)
    with pytest.raises(NodeInputError) as e:
        tune(generator, pivots, crops(2), lpips, steps=-1)
    assert "input 'steps'" in str(e.value)


class Interrupted(Exception):
    """Stands for ComfyUI's InterruptProcessingException."""


def test_cancel_stops_the_tuning_and_a_rerun_equals_a_fresh_one(generator, lpips, pivots, monkeypatch):
    images, pivots = crops(1), pivots.with_wplus(pivots.wplus[:1])
    fresh = state(tune(generator, pivots, images, lpips, steps=10).descriptor.model)
    base = state(generator.load())
    calls = {"n": 0}
    synth = {"n": 0}
    module = generator.load()

    def interrupt():
        calls["n"] += 1
        if calls["n"] >= 2:  # the chunk check passes; the engine's first poll (after 10 optimiser steps) stops it
            raise Interrupted()

    with monkeypatch.context() as m:
        m.setattr(bridge, "check_interrupt", interrupt)
        real = type(module).synthesis

        def counted(self, *a, **k):
            synth["n"] += 1
            return real(self, *a, **k)

        m.setattr(type(module), "synthesis", counted)
        with pytest.raises(Interrupted):
            tune(generator, pivots, images, lpips, steps=100)
    assert calls["n"] == 2 and synth["n"] == 10  # 100 steps asked; stopped at the first poll
    assert all(torch.equal(v, base[k]) for k, v in state(generator.load()).items())
    again = state(tune(generator, pivots, images, lpips, steps=10).descriptor.model)
    assert all(torch.equal(v, fresh[k]) for k, v in again.items())


def test_out_of_memory_unloads_other_models_once_then_names_what_to_do(generator, lpips, pivots, monkeypatch):
    calls = {"tune": 0, "unload": 0}
    real = nodes.pivotal_tune

    def no_room_once(*a, **k):
        calls["tune"] += 1
        if calls["tune"] == 1:
            raise bridge.oom_exception()("CUDA out of memory (injected)")
        return real(*a, **k)

    def unload(keep=()):
        calls["unload"] += 1
        assert generator.managed in keep and lpips.managed in keep  # the models this node runs stay
        return 1

    monkeypatch.setattr(bridge, "unload_other_models", unload)
    monkeypatch.setattr(nodes, "pivotal_tune", no_room_once)
    assert isinstance(tune(generator, pivots, crops(2), lpips, steps=1), nodes.TunedStyleGANHandle)
    assert calls == {"tune": 2, "unload": 1}

    def never(*a, **k):
        raise bridge.oom_exception()("CUDA out of memory (injected)")

    monkeypatch.setattr(nodes, "pivotal_tune", never)
    with pytest.raises(bridge.oom_exception()) as e:
        tune(generator, pivots, crops(2), lpips, steps=1)
    text = str(e.value)
    assert text.startswith("TransEdit Pivotal Tune: out of memory tuning a 32px generator") and "Fix:" in text


def test_cancel_is_not_taken_for_out_of_memory(generator, lpips, pivots, monkeypatch):
    def cancelled(*a, **k):
        raise Interrupted()

    monkeypatch.setattr(nodes, "pivotal_tune", cancelled)
    monkeypatch.setattr(bridge, "unload_other_models", lambda keep=(): pytest.fail("Cancel taken for OOM"))
    with pytest.raises(Interrupted):
        tune(generator, pivots, crops(2), lpips, steps=1)


# ------------------------------------------------------------------------------------ Edit Studio preview
def test_edit_studio_previews_a_tuned_generator(generator, lpips, pivots, monkeypatch):
    """The live preview route renders with the tuned weights (not the base's) at preview size, and equals the
    queued full render when the preview size is the generator's."""
    tuned = tune(generator, pivots, crops(2), lpips, steps=2)
    monkeypatch.setattr(bridge, "executing_ids", lambda unique_id: ("7", "p-1"))
    studio.SERVICE.forget()
    age = LatentDirection("age", torch.randn(CONFIG.style_dim, generator=torch.Generator().manual_seed(1)),
                          default_strength=1.5)
    try:
        images, _ = studio.TransEditEditStudio().edit(tuned, pivots, age, 2.0, 0.0, 0.0, 0.0, -1, -1, "256", "fp32",
                                                      unique_id="7")
        body = {"node_id": "7", "prompt_id": "p-1", "strengths": [2.0], "start_layer": -1, "end_layer": -1,
                "item": 1}
        status, answer = studio.SERVICE.handle(json.loads(json.dumps(body)))
    finally:
        studio.SERVICE.forget()
    assert status == 200, answer
    import base64
    import io

    from PIL import Image

    got = np.asarray(Image.open(io.BytesIO(base64.b64decode(answer["image"].split(",", 1)[1]))).convert("RGB"))
    want = (images[1].clamp(0, 1).numpy() * 255.0 + 0.5).astype(np.uint8)
    np.testing.assert_array_equal(got, want)
    edited = studio.TransEditEditStudio().edit(generator, pivots, age, 2.0, 0.0, 0.0, 0.0, -1, -1, "256", "fp32")[0]
    assert (edited[1] - images[1]).abs().max() > 0.02  # the base's render differs: the tuned weights were used


# ------------------------------------------------------------------------------------ save and load deltas
def test_delta_round_trip_and_nothing_is_overwritten(root, generator, lpips, pivots):
    tuned = tune(generator, pivots, crops(2), lpips, steps=4)
    user_file = root / "stylegan" / "tuned" / "pti_00001.safetensors"
    user_file.parent.mkdir(exist_ok=True)
    user_file.write_bytes(b"the user's own file")
    save = nodes.TransEditSaveTunedStyleGAN().save
    (first,) = save(tuned, "tuned/pti")
    (second,) = save(tuned, "tuned/pti")
    assert (first, second) == ("tuned/pti_00002.safetensors", "tuned/pti_00003.safetensors")
    assert user_file.read_bytes() == b"the user's own file"
    assert not [p for p in (root / "stylegan" / "tuned").iterdir() if "partial" in p.name]  # no temporary left
    assert first in bridge.list_models("stylegan")  # what Load StyleGAN lists
    delta_size = os.path.getsize(root / "stylegan" / first)
    assert delta_size < os.path.getsize(root / "stylegan" / "g.pt")  # only what tuning changed (no mapping net)

    loaded = sg_nodes.TransEditLoadStyleGAN().load(first)[0]
    assert isinstance(loaded, nodes.TunedStyleGANHandle) and loaded.name == "pti_00002.safetensors"
    assert loaded.tuning.mode == "PTI" and loaded.tuning.frames == 2
    assert loaded.descriptor.fingerprint == generator.descriptor.fingerprint
    for key, value in state(loaded.descriptor.model).items():
        torch.testing.assert_close(value, state(tuned.descriptor.model)[key], rtol=0, atol=1e-6)
    torch.testing.assert_close(render(loaded, pivots), render(tuned, pivots), rtol=0, atol=1e-4)
    # a loaded delta saves again against the same base
    (third,) = save(loaded, "tuned/pti")
    assert third == "tuned/pti_00004.safetensors"


@pytest.fixture
def own_stylegan_folder(root, tmp_path):
    """models/stylegan pointed at an empty folder of this test's own, then back at the module's."""
    with model_folders(tmp_path, ("stylegan",)) as other_root:
        yield other_root
    bridge.set_fallback_folder("stylegan", [str(root / "stylegan")])


def test_delta_with_a_missing_or_changed_base_is_refused_clearly(own_stylegan_folder, lpips):
    other_root = own_stylegan_folder
    if True:
        base = save_random_generator(other_root / "stylegan" / "base.pt", config=CONFIG, seed=3)
        handle = sg_nodes.TransEditLoadStyleGAN().load("base.pt")[0]
        latent = sg_nodes.TransEditSampleLatent().sample(handle, 1, 1, 0.7)[0]
        (name,) = nodes.TransEditSaveTunedStyleGAN().save(tune(handle, latent, crops(1), lpips, steps=2), "d")
        node = "TransEdit Load StyleGAN"
        os.replace(base, other_root / "stylegan" / "moved.pt")
        with pytest.raises(NodeInputError) as e:
            sg_nodes.TransEditLoadStyleGAN().load(name)
        assert_names(e, node, "ckpt_name", "'base.pt'", "not found", "put 'base.pt'")
        save_random_generator(base, config=CONFIG, seed=8)  # another file under the base's name
        with pytest.raises(NodeInputError) as e:
            sg_nodes.TransEditLoadStyleGAN().load(name)
        assert_names(e, node, "ckpt_name", "SHA-256", "put the original 'base.pt' back")
        os.replace(other_root / "stylegan" / "moved.pt", base)
        assert isinstance(sg_nodes.TransEditLoadStyleGAN().load(name)[0], nodes.TunedStyleGANHandle)
        # the base changed on disk after loading: saving says so instead of writing a delta against other weights
        tuned = tune(handle, latent, crops(1), lpips, steps=1)
        save_random_generator(base, config=CONFIG, seed=9, overwrite=True)
        with pytest.raises(NodeInputError) as e:
            nodes.TransEditSaveTunedStyleGAN().save(tuned, "d")
        assert_names(e, "TransEdit Save Tuned StyleGAN", "generator", "changed")


def test_a_generator_from_an_encoder_file_is_saved_against_it(root, lpips):
    save_random_encoder(root / "gan_encoders" / "e4e_tiny.pt", family="e4e")
    encoder, gen = inv_nodes.TransEditLoadEncoder().load("e4e_tiny.pt")
    latent = inv_nodes.TransEditInvert().invert(encoder, crops(1, 64), "fast (torch)", "fp32")[0]
    (name,) = nodes.TransEditSaveTunedStyleGAN().save(tune(gen, latent, crops(1, 64), lpips, steps=1), "enc/pti")
    loaded = sg_nodes.TransEditLoadStyleGAN().load(name)[0]  # found in models/gan_encoders, as the delta says
    assert loaded.tuning.base_source.endswith(os.path.join("gan_encoders", "e4e_tiny.pt"))


def test_save_errors(root, generator, lpips, pivots):
    node = "TransEdit Save Tuned StyleGAN"
    with pytest.raises(NodeInputError) as e:
        nodes.TransEditSaveTunedStyleGAN().save(generator, "tuned/x")
    assert_names(e, node, "generator", "not a tuned generator", "Pivotal Tune")
    tuned = tune(generator, pivots, crops(2), lpips, steps=1)
    for prefix in ("../escape", "/abs/../x", "", "a/./b", "bad:name"):
        with pytest.raises(NodeInputError) as e:
            nodes.TransEditSaveTunedStyleGAN().save(tuned, prefix)
        assert_names(e, node, "filename_prefix")
    assert not (root / "escape_00001.safetensors").exists()


# ------------------------------------------------------------------------------- face parsing, stitching
@pytest.fixture(scope="module")
def parser(root):
    h.save_tiny_face_parser(root / "face_parsing" / "79999_iter.pth")
    return nodes.TransEditLoadFaceParser().load("79999_iter.pth")[0]


def test_face_region_mask(parser):
    images = crops(2, size=40)
    (mask,) = nodes.TransEditFaceRegionMask().mask(parser, images)
    assert mask.shape == (2, 40, 40) and mask.dtype == torch.float32 and mask.device == bridge.intermediate_device()
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    from transedit.models.face.parsing import face_region_mask

    with torch.inference_mode():
        want = face_region_mask(parser.load(), images[:1].permute(0, 3, 1, 2) * 2 - 1)
    want = torch.nn.functional.interpolate(want, size=(40, 40), mode="nearest")[:, 0]
    assert torch.equal(mask[:1], want)


def test_face_parser_errors(root, generator):
    with pytest.raises(NodeInputError) as e:
        nodes.TransEditLoadFaceParser().load("missing.pth")
    assert_names(e, "TransEdit Load Face Parser", "parser_name", "ComfyUI/models/face_parsing", "drive.google.com")
    (root / "face_parsing" / "g.pt").write_bytes((root / "stylegan" / "g.pt").read_bytes())
    with pytest.raises(NodeInputError) as e:  # the registry names what the file is and the node that loads it
        nodes.TransEditLoadFaceParser().load("g.pt")
    assert str(e.value).startswith("TransEdit Load Face Parser: input 'parser_name' cannot be used: g.pt")
    assert "StyleGAN2" in str(e.value) and "'TransEdit Load StyleGAN'" in str(e.value)
    with pytest.raises(NodeInputError) as e:
        nodes.TransEditFaceRegionMask().mask(generator, crops(1))
    assert_names(e, "TransEdit Face Region Mask", "parser", "Load Face Parser")


def stitch(generator, latent, images, mask, steps=3, **kw):
    args = dict(learning_rate=1e-2, content_weight=0.01, border_pixels=50, inner_dilation=0, outer_dilation=50,
                whole_image_border=False)
    args.update(kw)
    return nodes.TransEditStitchingTune().stitch(generator, latent, images, mask, steps, **args)


def centre_mask(n: int, size: int) -> torch.Tensor:
    m = torch.zeros(n, size, size)
    m[:, size // 4: 3 * size // 4, size // 4: 3 * size // 4] = 1
    return m


def test_stitching_tune_outputs_and_brings_the_border_to_the_original(generator, lpips, pivots):
    tuned = tune(generator, pivots, crops(2), lpips, steps=2)
    images = crops(2, size=64, seed=3)
    out, full = stitch(tuned, pivots, images, centre_mask(1, 64), steps=8)
    assert out.shape == (2, 32, 32, 3) and out.dtype == torch.float32 and out.device.type == "cpu"
    assert full.shape == (2, 32, 32) and full.dtype == torch.float32 and 0 <= float(full.min()) <= float(full.max()) <= 1
    # full = the region grown by outer_dilation (50 of 1024 px): larger than the region, not the whole crop
    region = centre_mask(1, 32)[0]
    assert bool((full[0][region > 0] == 1).all()) and 0.25 < float(full[0].mean()) < 0.9
    # the band just outside the face region moved toward the original crop
    original = torch.nn.functional.interpolate(images.permute(0, 3, 1, 2), size=32, mode="bilinear",
                                               antialias=True).permute(0, 2, 3, 1)
    band = (full[0] > 0) & (region == 0)
    before = render(tuned, pivots)
    assert (out - original)[:, band].abs().mean() < (before - original)[:, band].abs().mean()
    # one frame at a time, each from the same tuned weights: a frame alone gives what it gives in the batch
    alone, _ = stitch(tuned, pivots.with_wplus(pivots.wplus[1:]), images[1:], centre_mask(1, 64), steps=8)
    torch.testing.assert_close(alone[0], out[1], rtol=0, atol=1e-5)
    assert next(tuned.load().parameters()).requires_grad is False  # the input generator is left as it was


def test_stitching_tune_errors_and_cancel(generator, pivots, monkeypatch):
    node = "TransEdit Stitching Tune"
    with pytest.raises(NodeInputError) as e:
        stitch(generator, pivots, crops(3), centre_mask(1, 48))
    assert_names(e, node, "images", "3 crops for 2")
    with pytest.raises(NodeInputError) as e:
        stitch(generator, pivots, crops(2), centre_mask(3, 48))
    assert_names(e, node, "mask", "3 masks for 2")
    with pytest.raises(NodeInputError) as e:
        stitch(generator, pivots, crops(2), torch.ones(2, 48, 40))
    assert_names(e, node, "mask", "48")
    with pytest.raises(NodeInputError) as e:
        stitch(generator, pivots, crops(2), crops(2))  # an IMAGE where the MASK goes
    assert_names(e, node, "mask", "MASK")
    with pytest.raises(NodeInputError) as e:
        stitch(None, pivots, crops(2), centre_mask(2, 48))
    assert_names(e, node, "generator")
    calls = {"n": 0}

    def interrupt():
        calls["n"] += 1
        if calls["n"] >= 3:  # frame 0's chunk check, its first poll, frame 1's chunk check
            raise Interrupted()

    monkeypatch.setattr(bridge, "check_interrupt", interrupt)
    monkeypatch.setattr(nodes.TransEditStitchingTune, "chunk_size", 1)
    with pytest.raises(Interrupted):
        stitch(generator, pivots, crops(2), centre_mask(2, 48), steps=10)
    assert calls["n"] == 3


def test_stitching_tune_out_of_memory_names_what_to_do(generator, pivots, monkeypatch):
    def never(*a, **k):
        raise bridge.oom_exception()("CUDA out of memory (injected)")

    monkeypatch.setattr(nodes, "stitch_tune", never)
    with pytest.raises(bridge.oom_exception()) as e:
        stitch(generator, pivots, crops(2), centre_mask(2, 48))
    assert str(e.value).startswith("TransEdit Stitching Tune: out of memory stitching one 32px frame")


def test_a_linked_base_file_is_named_by_its_place_in_the_folder(own_stylegan_folder, lpips, tmp_path):
    """Model files are often links into a shared store: the delta names the base as the folder lists it."""
    store = tmp_path / "store"
    store.mkdir()
    target = save_random_generator(store / "real_name.pt", config=CONFIG, seed=3)
    os.symlink(target, own_stylegan_folder / "stylegan" / "linked.pt")
    handle = sg_nodes.TransEditLoadStyleGAN().load("linked.pt")[0]
    latent = sg_nodes.TransEditSampleLatent().sample(handle, 1, 1, 0.7)[0]
    (name,) = nodes.TransEditSaveTunedStyleGAN().save(tune(handle, latent, crops(1), lpips, steps=1), "linked")
    from transedit.models.stylegan.tuning import read_tuning_delta

    assert read_tuning_delta(own_stylegan_folder / "stylegan" / name).metadata["base_name"] == "linked.pt"
    assert sg_nodes.TransEditLoadStyleGAN().load(name)[0].tuning.base_source.endswith("linked.pt")


def test_a_delta_chained_through_another_delta_or_out_of_the_folder_is_refused(own_stylegan_folder, tmp_path):
    """Planted (the reviewer's chain): delta A names delta B beside it (right SHA-256), B names a generator outside
    the model folders by an absolute path or '..'; A and B are refused, neither loads the outside weights."""
    from test_tuning import write_delta
    from transedit.models.stylegan.tuning import file_sha256

    folder = own_stylegan_folder / "stylegan"
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = save_random_generator(outside / "secret.pt", config=CONFIG, seed=11)
    base = save_random_generator(folder / "g.pt", config=CONFIG, seed=3)
    model = sg_nodes.TransEditLoadStyleGAN().load("g.pt")[0].descriptor.model
    key = next(k for k in model.state_dict() if k.startswith("convs"))
    zero = {key: torch.zeros_like(model.state_dict()[key])}
    node = "TransEdit Load StyleGAN"
    for i, name in enumerate((str(secret), f"../{outside.name}/secret.pt", "../../outside/secret.pt")):
        write_delta(folder / f"B{i}.safetensors", zero, name, file_sha256(secret), CONFIG)
        write_delta(folder / f"A{i}.safetensors", zero, f"B{i}.safetensors",
                    file_sha256(folder / f"B{i}.safetensors"), CONFIG)
        for delta in (f"A{i}.safetensors", f"B{i}.safetensors"):
            with pytest.raises(NodeInputError) as e:
                sg_nodes.TransEditLoadStyleGAN().load(delta)
            assert_names(e, node, "ckpt_name")
    with pytest.raises(NodeInputError) as e:
        sg_nodes.TransEditLoadStyleGAN().load("A0.safetensors")
    assert_names(e, node, "ckpt_name", "itself a tuning delta")
    write_delta(folder / "fine.safetensors", zero, "g.pt", file_sha256(base), CONFIG)
    assert isinstance(sg_nodes.TransEditLoadStyleGAN().load("fine.safetensors")[0], nodes.TunedStyleGANHandle)


@pytest.mark.parametrize("fill, dtype", [(float("nan"), torch.float32), (float("inf"), torch.float32),
                                         (1, torch.int64)])
def test_a_nan_or_integer_delta_is_refused_by_load_stylegan(own_stylegan_folder, fill, dtype):
    """Planted: the reviewer's NaN, Inf and int64 deltas with the right base and SHA-256; refused naming the file."""
    from test_tuning import write_delta
    from transedit.models.stylegan.tuning import file_sha256

    folder = own_stylegan_folder / "stylegan"
    base = save_random_generator(folder / "g.pt", config=CONFIG, seed=3)
    model = sg_nodes.TransEditLoadStyleGAN().load("g.pt")[0].descriptor.model
    key = next(k for k in model.state_dict() if k.startswith("convs"))
    value = torch.full(model.state_dict()[key].shape, fill, dtype=dtype)
    write_delta(folder / "hostile.safetensors", {key: value}, "g.pt", file_sha256(base), CONFIG)
    with pytest.raises(NodeInputError) as e:
        sg_nodes.TransEditLoadStyleGAN().load("hostile.safetensors")
    assert_names(e, "TransEdit Load StyleGAN", "ckpt_name", "hostile.safetensors", key,
                 "Save the tuned generator again")


def hostile_images(kind: str, n: int = 2, size: int = 32) -> torch.Tensor:
    images = crops(n, size)
    if kind == "nan":
        images[0, 3, 3, 0] = float("nan")
    elif kind == "inf":
        images[1, 5, 7, 2] = float("inf")
    elif kind == "0..255":
        images = images * 255
    elif kind == "negative":
        images = images - 0.5
    return images


@pytest.mark.parametrize("kind, words", [("nan", ("NaN or infinite",)), ("inf", ("NaN or infinite",)),
                                         ("0..255", ("0..1", "255")), ("negative", ("0..1",))])
def test_tuning_nodes_refuse_non_finite_or_out_of_range_images(generator, lpips, pivots, parser, kind, words):
    """Planted: one NaN pixel, one Inf pixel, a 0..255 picture, a -0.5..0.5 one (all were cleaned silently and
    tuned towards); a slight overshoot (resampling ringing) is still taken."""
    images = hostile_images(kind)
    with pytest.raises(NodeInputError) as e:
        tune(generator, pivots, images, lpips, steps=1)
    assert_names(e, "TransEdit Pivotal Tune", "images", *words)
    with pytest.raises(NodeInputError) as e:
        stitch(generator, pivots, images, centre_mask(2, 32), steps=1)
    assert_names(e, "TransEdit Stitching Tune", "images", *words)
    with pytest.raises(NodeInputError) as e:
        nodes.TransEditFaceRegionMask().mask(parser, images)
    assert_names(e, "TransEdit Face Region Mask", "images", *words)
    ringing = crops(2, 32)
    ringing[0, 0, 0, 0], ringing[1, 0, 0, 0] = 1.005, -0.005
    assert isinstance(tune(generator, pivots, ringing, lpips, steps=1), nodes.TunedStyleGANHandle)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_stitching_tune_refuses_a_nan_mask_as_paste_back_does(generator, pivots, bad):
    mask = centre_mask(2, 32)
    mask[1, 16, 16] = bad
    with pytest.raises(NodeInputError) as e:
        stitch(generator, pivots, crops(2, 32), mask, steps=1)
    assert_names(e, "TransEdit Stitching Tune", "mask", "NaN or infinite")


def test_save_prefix_through_a_file_or_too_long_is_refused(root, generator, lpips, pivots):
    """Planted (the reviewer's raw OSErrors): a folder part that is an existing file, a 300-character name, a path
    too long for the system; a 150-character name still saves."""
    node = "TransEdit Save Tuned StyleGAN"
    tuned = tune(generator, pivots, crops(2), lpips, steps=1)
    save = nodes.TransEditSaveTunedStyleGAN().save
    for prefix, words in (("g.pt/x", ("g.pt/x", "folder", "not an existing file")),
                          ("a" * 300, ("300 characters", "shorter")),
                          ("/".join(["b" * 150] * 40), ("6039 characters", "shorter"))):
        with pytest.raises(NodeInputError) as e:
            save(tuned, prefix)
        assert_names(e, node, "filename_prefix", *words)
    assert (root / "stylegan" / "g.pt").is_file() and not (root / "stylegan" / ("b" * 150)).exists()
    (name,) = save(tuned, "c" * 150)
    assert name == "c" * 150 + "_00001.safetensors" and (root / "stylegan" / name).is_file()
