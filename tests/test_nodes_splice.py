"""Splice through the registry and the nodes: DINO files, pairing, sizes, seeds, Cancel, Apply, bad input."""
import pytest
import torch

from transedit.models.splice.dino import DinoConfig
from transedit.models.registry import load_dino
from transedit.random_weights import save_random_dino, save_random_generator
from transedit.models.splice.training import SpliceAugment, SpliceSettings, SpliceTrainer
from transedit.nodes import comfy_bridge as bridge
from transedit.nodes import splice as nodes
from transedit.nodes.inputs import NodeInputError

STEPS = 4


@pytest.fixture(scope="module")
def vit_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("vit")
    st = save_random_dino(folder / "tiny_dino.safetensors", seed=0)
    from safetensors.torch import load_file

    sd = load_file(str(st))
    torch.save(sd, folder / "dino_plain.pth")  # the official release: a plain state dict
    teacher = {f"backbone.{k}": v for k, v in sd.items()}
    teacher["head.mlp.0.weight"] = torch.zeros(8, 128)
    torch.save({"teacher": teacher, "student": {f"module.{k}": v for k, v in teacher.items()}, "epoch": 3},
               folder / "dino_full_checkpoint.pth")  # DINO's training checkpoint layout
    save_random_generator(folder / "not_a_vit.pt")
    v2 = dict(sd, mask_token=torch.zeros(1, 128))
    torch.save(v2, folder / "dinov2_like.pth")
    sup = dict(sd, **{"head.weight": torch.zeros(1000, 128), "head.bias": torch.zeros(1000)})
    torch.save(sup, folder / "supervised_vit.pth")
    return folder


@pytest.fixture(autouse=True)
def folders(vit_dir):
    bridge.set_fallback_folder("vit", [str(vit_dir)])
    yield
    bridge._fallback_paths.pop("vit", None)


@pytest.fixture(scope="module")
def vit(vit_dir):
    bridge.set_fallback_folder("vit", [str(vit_dir)])
    return nodes.TransEditLoadDINO().load("tiny_dino.safetensors")[0]


def images(b, h, w, c=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.linspace(0, 1, h).view(1, h, 1, 1)
    x = torch.linspace(0, 1, w).view(1, 1, w, 1)
    base = torch.cat([y.expand(b, h, w, 1), x.expand(b, h, w, 1), (x * y).expand(b, h, w, 1)], -1)
    img = (0.7 * base + 0.3 * torch.rand(b, h, w, 3, generator=g)).clamp(0, 1)
    if c == 1:
        return img.mean(-1, keepdim=True)
    if c == 4:
        return torch.cat([img, torch.ones(b, h, w, 1)], -1)
    return img


def run_splice(vit, structure, appearance, **kw):
    args = dict(preset="fast", steps=STEPS, output_size=0, seed=0, early_stop=False, precision="fp32",
                preview_every=0)
    args.update(kw)
    return nodes.TransEditSplice().splice(vit, structure, appearance, **args)


# ------------------------------------------------------------------------------------------- loading
@pytest.mark.parametrize("name", ["tiny_dino.safetensors", "dino_plain.pth", "dino_full_checkpoint.pth"])
def test_dino_files_load_to_the_same_model(vit_dir, name):
    ref = load_dino(vit_dir / "tiny_dino.safetensors")
    desc = load_dino(vit_dir / name)
    assert desc.config == ref.config == DinoConfig(patch_size=8, embed_dim=128, depth=2, num_heads=2)
    for (k, a), (_, b) in zip(ref.model.state_dict().items(), desc.model.state_dict().items()):
        assert torch.equal(a, b), k
    assert not any(p.requires_grad for p in desc.model.parameters()) and not desc.model.training
    if "full" in name:
        assert any("teacher" in n for n in desc.notes)


@pytest.mark.parametrize("name,words", [("not_a_vit.pt", "not a DINO ViT"), ("dinov2_like.pth", "DINOv2"),
                                        ("supervised_vit.pth", "supervised")])
def test_other_files_are_refused_clearly(vit_dir, name, words):
    with pytest.raises(NodeInputError, match="TransEdit Load DINO: input 'vit_name'") as exc:
        nodes.TransEditLoadDINO().load(name)
    assert words in str(exc.value) and name in str(exc.value) and "models/vit" in str(exc.value)


def test_missing_file_names_the_folder():
    with pytest.raises(NodeInputError) as exc:
        nodes.TransEditLoadDINO().load("nope.pth")
    assert "vit_name" in str(exc.value) and "models/vit" in str(exc.value)


def test_input_types_list_the_folder(vit_dir):
    listed = nodes.TransEditLoadDINO.INPUT_TYPES()["required"]["vit_name"][0]
    assert "tiny_dino.safetensors" in listed and "dino_plain.pth" in listed


# -------------------------------------------------------------------------------------------- splice
def test_output_shape_dtype_device_and_generator(vit):
    out, gens = run_splice(vit, images(1, 48, 64), images(1, 40, 40, seed=1), output_size=96)
    assert out.shape == (1, 72, 96, 3) and out.dtype == torch.float32 and out.device.type == "cpu"
    assert 0 <= out.min() and out.max() <= 1 and out.std() > 0
    assert len(gens) == 1 and gens.output_sizes == [(72, 96)] and gens.info["steps"] == [STEPS]
    assert next(gens.generators[0].parameters()).device.type == "cpu"


@pytest.mark.parametrize("n_structure,n_appearance,expected", [(2, 2, 2), (3, 1, 3), (1, 2, 2)])
def test_batches_pair_or_broadcast(vit, n_structure, n_appearance, expected):
    out, gens = run_splice(vit, images(n_structure, 40, 48), images(n_appearance, 40, 44, seed=2))
    assert out.shape[0] == len(gens) == expected
    assert not torch.equal(out[0], out[1])  # each pair trains its own generator


def test_batches_that_do_not_pair(vit):
    with pytest.raises(NodeInputError) as exc:
        run_splice(vit, images(3, 40, 40), images(2, 40, 40))
    assert "appearance" in str(exc.value) and "3" in str(exc.value) and "Fix:" in str(exc.value)


def test_every_pair_equals_its_run_alone(vit):
    s, a = images(2, 40, 48), images(2, 44, 40, seed=3)
    batch, _ = run_splice(vit, s, a)
    alone, _ = run_splice(vit, s[1:], a[1:], seed=1)  # pair i uses seed + i
    torch.testing.assert_close(batch[1], alone[0], atol=1e-6, rtol=0)


def test_seed_reproducible_and_matters(vit):
    s, a = images(1, 40, 48), images(1, 40, 40, seed=4)
    first, _ = run_splice(vit, s, a, seed=5)
    again, _ = run_splice(vit, s, a, seed=5)
    other, _ = run_splice(vit, s, a, seed=6)
    assert torch.equal(first, again)
    assert (first - other).abs().max() > 1e-3


@pytest.mark.parametrize("channels", [1, 4])
def test_grey_and_rgba_inputs(vit, channels):
    out, _ = run_splice(vit, images(1, 40, 40, c=channels), images(1, 40, 40, c=channels, seed=1))
    assert out.shape == (1, 40, 40, 3)


@pytest.mark.parametrize("shape,name,words", [
    ((1, 6, 40, 3), "structure", "at least 40x40"),       # smaller than one ViT patch
    ((1, 39, 64, 3), "structure", "at least 40x40"),      # too small for the generator's five halvings
    ((1, 40, 400, 3), "structure", "aspect ratio"),       # 10:1
    ((0, 40, 40, 3), "structure", "empty batch"),
])
def test_bad_images(vit, shape, name, words):
    with pytest.raises(NodeInputError) as exc:
        run_splice(vit, torch.rand(*shape), images(1, 40, 40))
    assert f"'{name}'" in str(exc.value) and words in str(exc.value)


def test_very_different_aspect_ratios_work(vit):
    """Wide structure, tall appearance (both within 8:1): crops are squares, DINO sees <= 480 px long side."""
    out, _ = run_splice(vit, images(1, 40, 300), images(1, 300, 40, seed=1))
    assert out.shape == (1, 40, 300, 3)


def test_bad_settings(vit):
    with pytest.raises(NodeInputError, match="output_size"):
        run_splice(vit, images(1, 40, 40), images(1, 40, 40), output_size=16)
    with pytest.raises(NodeInputError, match="short side must be at least 40"):
        run_splice(vit, images(1, 40, 80), images(1, 40, 40), output_size=64)
    with pytest.raises(NodeInputError, match="preset"):
        run_splice(vit, images(1, 40, 40), images(1, 40, 40), preset="slow")
    with pytest.raises(NodeInputError, match="vit"):
        run_splice("dino", images(1, 40, 40), images(1, 40, 40))
    with pytest.raises(NodeInputError, match="lambda_appearance"):
        run_splice(vit, images(1, 40, 40), images(1, 40, 40), lambda_appearance=-1.0)


def test_progress_and_previews(vit, monkeypatch):
    updates = []

    class Recorder:
        def __init__(self, total):
            self.total = total

        def update(self, steps=1, preview=None):
            updates.append((steps, preview))

    monkeypatch.setattr(bridge, "Progress", Recorder)
    run_splice(vit, images(2, 40, 40), images(1, 40, 40), preview_every=2)
    assert sum(s for s, _ in updates) == 2 * STEPS
    previews = [p for _, p in updates if p is not None]
    assert len(previews) == 2 * (STEPS // 2) and previews[0].size == (40, 40)


def test_cancel_stops_within_a_step_and_leaks_nothing(vit, monkeypatch):
    s, a = images(1, 40, 48), images(1, 40, 40, seed=7)
    expected, _ = run_splice(vit, s, a, seed=9)

    class Interrupted(Exception):
        pass

    calls = {"n": 0}
    made = []
    real_step = SpliceTrainer.step

    def counting_step(self):
        made.append(self.step_index)
        return real_step(self)

    def interrupt():
        calls["n"] += 1
        if calls["n"] > 3:
            raise Interrupted()

    monkeypatch.setattr(bridge, "check_interrupt", interrupt)
    monkeypatch.setattr(SpliceTrainer, "step", counting_step)
    with pytest.raises(Interrupted):
        run_splice(vit, s, a, seed=9, steps=1000)
    assert made == [0, 1]  # checks: before the pair, before steps 0 and 1; the fourth stopped it before step 2
    monkeypatch.undo()
    dino = vit.load()
    assert not any(p.requires_grad or p.grad is not None for p in dino.parameters()) and not dino.training
    after, _ = run_splice(vit, s, a, seed=9)
    assert torch.equal(expected, after)


def test_bf16_autocast_runs(vit):
    out, _ = run_splice(vit, images(1, 40, 40), images(1, 40, 40, seed=1), precision="bf16")
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


# --------------------------------------------------------------------------------------------- apply
def test_apply_one_generator_to_many_frames(vit):
    s = images(1, 48, 64)
    out, gens = run_splice(vit, s, images(1, 40, 40, seed=1))
    frames = torch.cat([s, images(2, 48, 64, seed=5)], 0)
    (applied,) = nodes.TransEditApplySplice().apply(gens, frames, True)
    assert applied.shape == frames.shape
    torch.testing.assert_close(applied[0], out[0], atol=1e-5, rtol=0)  # the structure image: same result
    (other_size,) = nodes.TransEditApplySplice().apply(gens, images(1, 96, 128), False)
    assert other_size.shape == (1, 96, 128, 3)


def test_apply_pairs_generators_with_images(vit):
    _, gens = run_splice(vit, images(2, 40, 40), images(2, 40, 40, seed=1))
    (two,) = nodes.TransEditApplySplice().apply(gens, images(2, 40, 40), True)
    assert two.shape == (2, 40, 40, 3)
    with pytest.raises(NodeInputError) as exc:
        nodes.TransEditApplySplice().apply(gens, images(3, 40, 40), True)
    assert "3 images for 2 trained generators" in str(exc.value)
    with pytest.raises(NodeInputError, match="splice_generator"):
        nodes.TransEditApplySplice().apply(None, images(1, 40, 40), True)


# ------------------------------------------------------------------------------------------- trainer
def test_early_stop_on_a_plateau(vit):
    dino = vit.load()
    a = images(1, 40, 40).permute(0, 3, 1, 2)
    b = images(1, 40, 40, seed=1).permute(0, 3, 1, 2)
    flat = SpliceSettings(steps=500, lr=0.0, plateau_window=3, plateau_patience=2, min_steps=10, plateau_tol=0.5)
    trainer = SpliceTrainer(dino, a, b, flat)
    trainer.run()
    assert 10 <= trainer.step_index < 30  # lr 0: nothing improves, it stops soon after min_steps
    no_stop = SpliceTrainer(dino, a, b, SpliceSettings(steps=20, lr=0.0, plateau_window=3, early_stop=False))
    no_stop.run()
    assert no_stop.step_index == 20 and len(no_stop.history) == 6


def test_training_lowers_the_loss(vit):
    dino = vit.load()
    a = images(1, 40, 40).permute(0, 3, 1, 2)
    b = images(1, 40, 40, seed=1).permute(0, 3, 1, 2)
    trainer = SpliceTrainer(dino, a, b, SpliceSettings(steps=60, plateau_window=10, early_stop=False))
    trainer.run()
    losses = [loss for _, loss in trainer.history]
    assert losses[-1] < 0.8 * losses[0], losses


def test_augmentations_follow_the_official_ranges():
    aug = SpliceAugment(seed=0)
    draws = [aug.draw_crop(100, 160) for _ in range(200)]
    assert all(95 <= d.side <= 100 and 0 <= d.top <= 100 - d.side and 0 <= d.left <= 160 - d.side for d in draws)
    assert 60 < sum(d.flip for d in draws) < 140
    narrow = [aug.draw_crop(100, 60) for _ in range(20)]
    assert all(d.side == 60 for d in narrow)  # clipped to the width
    again = SpliceAugment(seed=0)
    assert [again.draw_crop(100, 160) for _ in range(5)] == draws[:5]
    x = torch.rand(1, 3, 50, 50)
    out = SpliceAugment(seed=1).structure(x)
    assert out.shape[-1] == out.shape[-2] and 47 <= out.shape[-1] <= 50 and 0 <= out.min() and out.max() <= 1
