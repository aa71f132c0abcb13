"""LPIPS (models/perceptual) against the reference `lpips` package: distances and input gradients equal to its golden
tensors (tests/golden/lpips: seeded AlexNet / VGG16 trunks, the real v0.1 heads; regenerate.py writes them), and to
the package itself when it is installed; planted faults fail the same check; half precision; the registry's
detection and errors for the backbone and heads files."""
import dataclasses
import functools
import importlib.util
import sys
import types
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from conftest import TEST_DEVICE
from transedit.models.core.checkpoint_io import load_plain_state_dict
from transedit.models.core.errors import CheckpointError
from transedit.models.perceptual import LPIPS, LPIPS_DOWNLOADS, NETS
from transedit.models.perceptual import lpips as lpips_module
from transedit.models.registry import identify, load_lpips, read_checkpoint
from transedit.nodes import comfy_bridge as bridge

GOLDEN = Path(__file__).resolve().parent / "golden" / "lpips"
# fp32 against the reference: measured ~1e-7 (distances) and ~5e-7 (gradients) relative to the largest value
TOL_DIST = 1e-5
TOL_GRAD = 2e-5
# fp16 / bf16 autocast against fp32 on the CPU: measured <= 1e-4 (VGG) and 3e-4 (AlexNet, activations 300x)
TOL_HALF = 2e-3


def import_file(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


regen = import_file("lpips_golden_regenerate", GOLDEN / "regenerate.py")


@pytest.fixture(scope="module")
def golden():
    return load_file(GOLDEN / "golden.safetensors")


@functools.lru_cache(maxsize=None)
def seeded_backbone(net: str) -> dict:
    return regen.seeded_backbone(net)


def build(net: str) -> LPIPS:
    heads = load_plain_state_dict(GOLDEN / f"{net}.pth")
    return LPIPS.from_state_dicts(seeded_backbone(net), heads, f"seeded {net}", f"{net}.pth").to(TEST_DEVICE)


@pytest.fixture(scope="module")
def models():
    return {net: build(net) for net in NETS}


def run(model, x, y):
    x = x.to(TEST_DEVICE).requires_grad_(True)
    y = y.to(TEST_DEVICE).requires_grad_(True)
    dist = model(x, y)
    gx, gy = torch.autograd.grad(dist.sum(), (x, y))
    return dist.detach().cpu(), gx.cpu(), gy.cpu()


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """Largest absolute difference over the largest reference magnitude; a NaN anywhere counts as infinite."""
    diff = (actual.float() - expected.float()).abs().max()
    return float("inf") if not torch.isfinite(diff) else (diff / expected.abs().max()).item()


def parity_errors(model, golden, case: str) -> tuple[float, float, float]:
    dist, gx, gy = run(model, golden[f"{case}_x"], golden[f"{case}_y"])
    return (rel_err(dist, golden[f"{case}_dist"]), rel_err(gx, golden[f"{case}_gx"]),
            rel_err(gy, golden[f"{case}_gy"]))


def assert_parity(errors):
    d, gx, gy = errors
    assert d < TOL_DIST and gx < TOL_GRAD and gy < TOL_GRAD, f"distance {d:.2e}, grad x {gx:.2e}, grad y {gy:.2e}"


# --------------------------------------------------------------------------------------------- parity
@pytest.mark.parametrize("case, net", [("alex_small", "alex"), ("vgg_small", "vgg")])
def test_distances_and_gradients_match_the_reference(models, golden, case, net):
    # batch > 1, non-square, a flat region whose features are all zero (the eps case), noise, saturated inputs
    assert_parity(parity_errors(models[net], golden, case))
    dist = golden[f"{case}_dist"]
    assert dist.min() > 0 and dist.unique().numel() == dist.numel()  # the pairs really differ, each its own way


@pytest.mark.parametrize("live", ["x", "y", "neither"])
def test_a_fixed_target_gives_the_same_distances_and_gradients(models, golden, live):
    # one side without gradients goes through the trunk on its own, under no_grad: same numbers as the batched pass
    x, y = golden["alex_small_x"].to(TEST_DEVICE), golden["alex_small_y"].to(TEST_DEVICE)
    if live == "neither":
        with torch.no_grad():
            assert rel_err(models["alex"](x, y).cpu(), golden["alex_small_dist"]) < TOL_DIST
        assert rel_err(models["alex"](x, y).cpu(), golden["alex_small_dist"]) < TOL_DIST
        return
    live_input = (x if live == "x" else y).requires_grad_(True)
    dist = models["alex"](x, y)
    (grad,) = torch.autograd.grad(dist.sum(), live_input)
    assert rel_err(dist.detach().cpu(), golden["alex_small_dist"]) < TOL_DIST
    assert rel_err(grad.cpu(), golden[f"alex_small_g{live}"]) < TOL_GRAD


def test_a_target_prepared_once_gives_the_same_distances_and_gradients(models, golden):
    x, y = golden["alex_small_x"].to(TEST_DEVICE), golden["alex_small_y"].clone().to(TEST_DEVICE)
    distance_to_y = models["alex"].against(y)
    y.fill_(0.0)  # its features were computed when prepared: later changes to the tensor do not matter
    x = x.requires_grad_(True)
    dist = distance_to_y(x)
    (gx,) = torch.autograd.grad(dist.sum(), x)
    assert rel_err(dist.detach().cpu(), golden["alex_small_dist"]) < TOL_DIST
    assert rel_err(gx.cpu(), golden["alex_small_gx"]) < TOL_GRAD
    assert all(not f.requires_grad for f in distance_to_y.features)
    with pytest.raises(ValueError, match="target's shape"):
        distance_to_y(x[:1])
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        models["alex"].against(y[0])


def test_alex_at_1024_matches_the_reference(models, golden):
    x, y = regen.seeded_pair(1024)
    dist, gx, gy = run(models["alex"], x, y)
    assert rel_err(dist, golden["alex_1024_dist"]) < TOL_DIST
    crop = (slice(None), slice(None)) + regen.CROP
    for name, g in (("gx", gx), ("gy", gy)):
        assert rel_err(F.avg_pool2d(g, 16), golden[f"alex_1024_{name}_pooled"]) < TOL_GRAD, name
        assert rel_err(g[crop], golden[f"alex_1024_{name}_crop"]) < TOL_GRAD, name


def plant(model: LPIPS, fault: str, monkeypatch) -> None:
    if fault == "no eps in the normalisation":
        monkeypatch.setattr(lpips_module, "NORM_EPS", 0.0)
    elif fault == "two heads swapped":
        with torch.no_grad():
            a, b = model.heads[3].clone(), model.heads[4].clone()
            model.heads[3].copy_(b)
            model.heads[4].copy_(a)
    elif fault == "a tap before its ReLU":
        taps = model.spec.taps[:-1] + (model.spec.taps[-1] - 1,)
        for layer in model.features:  # the conv output a tap now keeps must survive its ReLU
            if isinstance(layer, torch.nn.ReLU):
                layer.inplace = False
        model.spec = dataclasses.replace(model.spec, taps=taps)
    elif fault == "no input scaling":
        model.shift.zero_()
        model.scale.fill_(1.0)
    elif fault == "last tap missing":
        model.spec = dataclasses.replace(model.spec, taps=model.spec.taps[:-1])
    elif fault == "heads ignored":  # the reference's lpips=False baseline: channels summed unweighted
        with torch.no_grad():
            for w in model.heads:
                w.fill_(1.0)
    else:
        raise AssertionError(fault)


FAULTS = ("no eps in the normalisation", "two heads swapped", "a tap before its ReLU", "no input scaling",
          "last tap missing", "heads ignored")


@pytest.mark.parametrize("case, net, fault", [("alex_small", "alex", f) for f in FAULTS] +
                         [("vgg_small", "vgg", f) for f in ("two heads swapped", "a tap before its ReLU")])
def test_a_planted_fault_fails_the_parity_check(golden, case, net, fault, monkeypatch):
    model = build(net)
    plant(model, fault, monkeypatch)
    d, gx, gy = parity_errors(model, golden, case)
    assert max(d, gx, gy) > 100 * TOL_GRAD, f"{fault} went unnoticed: {d:.2e} {gx:.2e} {gy:.2e}"


def test_the_fixture_exercises_dead_features(models, golden):
    # the eps fault is only visible where a tap's features are all zero at a pixel: the fixture must have some
    for net, case in (("alex", "alex_small"), ("vgg", "vgg_small")):
        model = models[net]
        h = (golden[f"{case}_x"].to(TEST_DEVICE) - model.shift) / model.scale
        dead = []
        with torch.no_grad():
            for i, layer in enumerate(model.features):
                h = layer(h)
                if i in model.spec.taps:
                    dead.append(int((h.abs().sum(1) == 0).sum()))
        assert dead[0] > 0, (net, dead)


def reference_package():
    """The installed `lpips` package, or a skip. A folder named lpips on sys.path (tests/golden/lpips, if some
    script put tests/golden there) imports as an empty namespace package: that is not the reference."""
    ref = pytest.importorskip("lpips")
    if not hasattr(ref, "LPIPS"):
        pytest.skip(f"`import lpips` found {list(getattr(ref, '__path__', []))}, not the lpips package (pip install lpips)")
    return ref


def test_golden_scripts_do_not_shadow_the_reference_package(monkeypatch):
    # Importing the other golden scripts (the parity tests do) must not put tests/golden on sys.path, where
    # tests/golden/lpips would shadow the reference: CI, without the lpips package, imported that folder instead
    import_file("golden_tuning_regenerate", GOLDEN.parent / "tuning" / "regenerate.py")
    import_file("golden_face_parsing_regenerate", GOLDEN.parent / "face_parsing" / "regenerate.py")
    on_path = {Path(p).resolve() for p in sys.path if p}
    assert GOLDEN.parent not in on_path and GOLDEN not in on_path
    spec = importlib.util.find_spec("lpips")
    assert spec is None or spec.origin not in (None, "namespace"), spec  # the package, or nothing
    # the planted fault: with tests/golden on sys.path and no installed package, the skip names the folder
    before = sys.modules.pop("lpips", None)
    monkeypatch.syspath_prepend(str(GOLDEN.parent))
    try:
        real = importlib.util.find_spec("lpips")
        if real is not None and real.origin not in (None, "namespace"):
            pytest.skip("the lpips package is installed here; it wins over the namespace folder")
        with pytest.raises(pytest.skip.Exception, match="golden/lpips"):
            reference_package()
    finally:  # leave no namespace module behind for the live test
        sys.modules.pop("lpips", None)
        if before is not None:
            sys.modules["lpips"] = before


@pytest.mark.filterwarnings("ignore::UserWarning")  # torchvision on the reference's `pretrained=` argument
def test_live_against_the_installed_reference(models):
    # AlexNet only: torchvision builds VGG16's 100M-weight classifier too (seconds); the golden tensors cover VGG
    ref = reference_package()
    pytest.importorskip("torchvision")
    gen = torch.Generator().manual_seed(7)
    for net in ("alex",):
        reference = regen.reference_model(net, ref).to(TEST_DEVICE)
        x = torch.rand(2, 3, 56, 72, generator=gen) * 2 - 1
        y = (x + 0.2 * torch.randn(2, 3, 56, 72, generator=gen)).clamp(-1, 1)
        expected = regen.reference_run(reference, x.to(TEST_DEVICE), y.to(TEST_DEVICE))
        actual = run(models[net], x, y)
        for a, e in zip(actual, expected):
            assert rel_err(a, e.cpu()) < TOL_GRAD, net


# ------------------------------------------------------------------------------------- model behaviour
def test_frozen_eval_gradients_reach_only_the_inputs(models):
    model = models["alex"]
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    model.train()
    assert not model.training  # a metric: no dropout, no training mode
    x = torch.rand(2, 3, 64, 64, device=TEST_DEVICE) * 2 - 1
    y = x.flip(-1).requires_grad_(True)
    d = model(x, y)
    assert d.shape == (2,) and d.dtype == torch.float32 and d.requires_grad
    d.sum().backward()
    assert y.grad is not None and y.grad.abs().sum() > 0 and all(p.grad is None for p in model.parameters())
    assert torch.allclose(model(x, x), torch.zeros(2, device=TEST_DEVICE), atol=1e-7)


def test_inputs_move_to_the_models_device_and_bad_shapes_are_refused(models):
    model = models["alex"]
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    assert model(x, x.flip(-1)).device.type == TEST_DEVICE.type
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        model(x, x[:, :, :32])
    with pytest.raises(ValueError, match="one shape"):
        model(x[:, :1], x[:, :1])
    with pytest.raises(ValueError, match="net must be one of"):
        LPIPS("squeeze")


def test_channels_last_gives_the_same_distances(models):
    model = build("alex").to(memory_format=torch.channels_last)
    x, y = (torch.rand(2, 3, 80, 64, device=TEST_DEVICE) * 2 - 1 for _ in range(2))
    expected = models["alex"](x, y)
    actual = model(x.contiguous(memory_format=torch.channels_last), y.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-7)


def overflowing(model: LPIPS) -> LPIPS:
    """Every activation 300x (the first conv's weights and every bias scaled; ReLU is positively homogeneous):
    squared-norm sums overflow fp16 (65504); LPIPS normalises each tap, so the distance must not change."""
    with torch.no_grad():
        model.features[0].weight.mul_(300.0)
        for layer in model.features:
            if isinstance(layer, torch.nn.Conv2d):
                layer.bias.mul_(300.0)
    return model


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_half_matches_fp32(golden, dtype):
    model = overflowing(build("alex"))
    x, y = golden["alex_small_x"].to(TEST_DEVICE), golden["alex_small_y"].to(TEST_DEVICE)
    expected = model(x, y)
    with torch.autocast(device_type=TEST_DEVICE.type, dtype=dtype):
        actual = model(x, y)
    assert actual.dtype == torch.float32 and torch.isfinite(actual).all()
    assert rel_err(actual.cpu(), expected.cpu()) < TOL_HALF
    assert rel_err(expected.cpu(), golden["alex_small_dist"]) < 1e-4  # scale invariance: the same distances


def test_a_head_in_fp16_would_overflow(golden, monkeypatch):
    # planted: the normalisation computed in the autocast dtype, as a naive port would: the check above catches it
    def half_normalized(f):
        f = f.half()
        return (f / (f.square().sum(1, keepdim=True).sqrt() + lpips_module.NORM_EPS)).float()

    model = overflowing(build("alex"))
    x, y = golden["alex_small_x"].to(TEST_DEVICE), golden["alex_small_y"].to(TEST_DEVICE)
    expected = model(x, y)
    monkeypatch.setattr(lpips_module, "normalized", half_normalized)
    assert rel_err(model(x, y).cpu(), expected.cpu()) > 10 * TOL_HALF


# ------------------------------------------------------------------------------------------- files
def torchvision_file(tmp_path, net: str, name: str, fmt: str = "pth", **changes) -> Path:
    sd = dict(seeded_backbone(net))
    sd["classifier.1.weight" if net == "alex" else "classifier.0.weight"] = torch.zeros(4, 4)  # as torchvision's
    sd.update(changes)
    path = tmp_path / f"{name}.{fmt}"
    save_file(sd, str(path)) if fmt == "safetensors" else torch.save(sd, path)
    return path


def test_files_are_detected_by_their_keys_and_load(tmp_path, golden):
    alexnet = torchvision_file(tmp_path, "alex", "alexnet-owt-7be5be79")
    vgg16 = torchvision_file(tmp_path, "vgg", "vgg16-397923af", fmt="safetensors")
    heads = {net: GOLDEN / f"{net}.pth" for net in NETS}
    save_file(load_plain_state_dict(heads["vgg"]), str(tmp_path / "vgg.safetensors"))  # heads converted: same
    heads["vgg"] = tmp_path / "vgg.safetensors"
    for path, family in ((alexnet, "lpips_backbone"), (vgg16, "lpips_backbone"), (heads["alex"], "lpips_heads"),
                         (heads["vgg"], "lpips_heads")):
        assert identify(read_checkpoint(path)).id == family, path
    for net, backbone in (("alex", alexnet), ("vgg", vgg16)):
        for model in (load_lpips(backbone, heads[net]), LPIPS.from_files(backbone, heads[net])):
            assert model.net == net
            dist = model(golden[f"{net}_small_x"], golden[f"{net}_small_y"])
            assert rel_err(dist, golden[f"{net}_small_dist"]) < TOL_DIST


def test_file_mistakes_are_named_with_the_fix(tmp_path):
    alexnet = torchvision_file(tmp_path, "alex", "alexnet-owt-7be5be79")
    vgg16 = torchvision_file(tmp_path, "vgg", "vgg16-397923af")
    alex_heads, vgg_heads = GOLDEN / "alex.pth", GOLDEN / "vgg.pth"
    # a mismatched pair names both files and the two right pairings
    for load in (load_lpips, LPIPS.from_files):
        with pytest.raises(CheckpointError) as e:
            load(alexnet, vgg_heads)
        msg = str(e.value)
        assert msg.startswith("vgg.pth:") and "alexnet-owt-7be5be79.pth" in msg and "AlexNet" in msg
        assert "use alex.pth with alexnet-owt-7be5be79.pth" in msg and "vgg16-397923af.pth with vgg.pth" in msg
    with pytest.raises(CheckpointError, match=r"^alex\.pth: holds the AlexNet LPIPS heads, but the backbone vgg16"):
        load_lpips(vgg16, alex_heads)
    # the two files swapped: each is named for what it is
    with pytest.raises(CheckpointError, match=r"^alex\.pth: is an LPIPS v0\.1 heads file .*not an LPIPS backbone"):
        load_lpips(alex_heads, alexnet)
    with pytest.raises(CheckpointError, match=r"^alexnet-owt-7be5be79\.pth: is an LPIPS backbone .*not an LPIPS v0"):
        load_lpips(alexnet, alexnet)
    with pytest.raises(CheckpointError, match=r"^alex\.pth: is an LPIPS heads file, not a backbone"):
        LPIPS.from_files(alex_heads, alex_heads)
    with pytest.raises(CheckpointError, match=r"is a torchvision backbone, not an LPIPS heads file"):
        LPIPS.from_files(alexnet, alexnet)
    # a VGG16 with an extra conv (VGG19's 4th conv in block 3) or a VGG without one of its convs
    vgg19ish = torchvision_file(tmp_path, "vgg", "vgg19", **{"features.16.weight": torch.zeros(256, 256, 3, 3),
                                                             "features.16.bias": torch.zeros(256)})
    with pytest.raises(CheckpointError, match=r"^vgg19\.pth: has torchvision features\.\* keys but not AlexNet's"):
        load_lpips(vgg19ish, vgg_heads)
    sd = dict(seeded_backbone("vgg"))
    del sd["features.28.weight"]
    torch.save(sd, tmp_path / "short.pth")
    with pytest.raises(CheckpointError, match=r"^short\.pth: has torchvision features"):
        load_lpips(tmp_path / "short.pth", vgg_heads)
    # heads of the wrong width, and damaged (integer) weights
    bad = load_plain_state_dict(alex_heads)
    bad["lin2.model.1.weight"] = torch.zeros(1, 100, 1, 1)
    torch.save(bad, tmp_path / "bad_heads.pth")
    with pytest.raises(CheckpointError, match=r"^bad_heads\.pth: is not an LPIPS v0\.1 heads file"):
        load_lpips(alexnet, tmp_path / "bad_heads.pth")
    ints = torchvision_file(tmp_path, "alex", "ints", **{"features.3.bias": torch.zeros(192, dtype=torch.int64)})
    with pytest.raises(CheckpointError, match=r"^ints\.pth: holds non-floating-point"):
        load_lpips(ints, alex_heads)
    squeeze = {f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1)
               for i, c in enumerate((64, 128, 256, 384, 384, 512, 512))}
    torch.save(squeeze, tmp_path / "squeeze.pth")
    with pytest.raises(CheckpointError, match=r"^squeeze\.pth: holds LPIPS's SqueezeNet heads"):
        load_lpips(alexnet, tmp_path / "squeeze.pth")
    save_file({"foo.weight": torch.zeros(3, 3)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(CheckpointError, match=r"^other\.safetensors: is not a torchvision AlexNet / VGG16 file"):
        load_lpips(tmp_path / "other.safetensors", alex_heads)
    with pytest.raises(CheckpointError, match=r"^other\.safetensors: is not an LPIPS heads file"):
        load_lpips(alexnet, tmp_path / "other.safetensors")
    with pytest.raises(CheckpointError, match="file not found"):
        load_lpips(tmp_path / "missing.pth", alex_heads)


def test_the_lpips_folder_and_download_links():
    sub, exts = bridge.MODEL_FOLDERS["lpips"]
    assert sub == "lpips" and {".pth", ".safetensors"} <= exts
    assert set(LPIPS_DOWNLOADS) == set(NETS)
    for net, files in LPIPS_DOWNLOADS.items():
        for role, (name, url) in files.items():
            assert url.startswith("https://") and url.endswith("/" + name), (net, role)
    assert LPIPS_DOWNLOADS["alex"]["backbone"][0] == "alexnet-owt-7be5be79.pth"
    assert LPIPS_DOWNLOADS["vgg"]["heads"][1].endswith("lpips/weights/v0.1/vgg.pth")


def guarded_normalized(f):
    """A planted host-side check, run as the pack's code (below): `if` on a tensor reads it back."""
    if f.amax() <= 0:
        raise ValueError("dead features")
    return REAL_NORMALIZED(f)


REAL_NORMALIZED = lpips_module.normalized


def test_forward_and_backward_do_not_sync(models, monkeypatch):
    from sync_sentinel import SyncCounter

    model = models["alex"]
    x = (torch.rand(2, 3, 64, 80, device=TEST_DEVICE) * 2 - 1).requires_grad_(True)
    y = torch.rand(2, 3, 64, 80, device=TEST_DEVICE) * 2 - 1
    for pair in ((x, y), (x, y.requires_grad_(True))):  # a fixed target (two passes), both live (one)
        with SyncCounter() as syncs:
            model(*pair).sum().backward()
        assert syncs.total() == 0, syncs.counts
    as_pack_code = types.FunctionType(guarded_normalized.__code__, {**vars(lpips_module),
                                                                    "REAL_NORMALIZED": REAL_NORMALIZED})
    monkeypatch.setattr(lpips_module, "normalized", as_pack_code)
    with SyncCounter() as planted:
        model(x, y).sum().backward()
    assert planted.total() == len(model.spec.taps), planted.counts
