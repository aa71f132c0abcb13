"""What `auto` means, and the evidence that it holds where random weights cannot show it.

StyleGAN2's auto depends on the file: NVlabs' recipe (fp16 in the 4 highest-resolution blocks at the model's own
conv_clamp, the rest fp32) for a generator trained with conv_clamp; bf16 (fp32 on GPUs without native bf16) for one
trained without, whose activations nothing bounds (NVlabs' legacy loader runs such TF-era files in fp32). Without
trained weights here, the candidates are checked against fp32 on proxies (benchmarks/precision_sweep.py): the same
generator with every activation scaled by a power of two (bit-identical fp32 image) up to the magnitudes a trained
generator's activations reach, the official-format fixture, and a generator with one large activation in a wide
low-resolution block. Planted faults: the old auto (fp16 in every block, only the +-32768 overflow guard) at a
scale that overflows, and on the low-resolution spike; the previous auto (the recipe at +-256 for every file) on an
unclamped generator whose top-block activations pass 256; each must fail the accuracy check, not just stay finite.

bf16 for the other families: only where the device the node runs on has it natively (Ampere or newer), read for
that device, with the capability of each CUDA device faked on the CPU.
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

from transedit.models.core.devices import has_native_bf16
from transedit.models.core.precision import (DEFAULT_POLICY, FP16_ACTIVATION_LIMIT, NVLABS_FP16, NVLABS_FP16_OWN_CLAMP,
                                             WHOLE_NETWORK, Agreement, HalfBlocks, PrecisionPolicy, agreement)
from transedit.models.stylegan.generator import (PRECISION_BY_FILE, PRECISION_WITH_CLAMP, PRECISION_WITHOUT_CLAMP,
                                                 StyleGAN2Config, StyleGAN2Generator)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from precision_sweep import (CANDIDATES, CLAIMS, RECIPE, activation_scaled, auto_on_gpu,  # noqa: E402
                             claim_holds, compare_candidates, half_block_peak, low_res_spike, recipe_evidence,
                             verdict, with_conv_clamp)

AUTO_CLAIM = CLAIMS[RECIPE]

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


# ----------------------------------------------------------------------------------------- which blocks
@pytest.mark.parametrize("size,first", [(1024, 128), (256, 32), (64, 8), (16, 8), (8, 8), (4, 8)])
def test_nvlabs_blocks_are_the_four_highest_and_never_4x4(size, first):
    """stylegan2-ada-pytorch networks.py: fp16 from max(2^(log2(size) + 1 - 4), 8) up."""
    resolutions = [2 ** i for i in range(2, int(math.log2(size)) + 1)]
    assert NVLABS_FP16.first_half_resolution(resolutions) == first
    assert (NVLABS_FP16.count, NVLABS_FP16.clamp) == (4, 256.0)


def test_half_blocks_variants():
    resolutions = [4, 8, 16, 32, 64, 128]
    assert WHOLE_NETWORK.first_half_resolution(resolutions) == 4
    assert HalfBlocks(min_resolution=16).first_half_resolution(resolutions) == 16
    assert HalfBlocks(count=0).first_half_resolution(resolutions) == 256  # none
    assert HalfBlocks(count=1).first_half_resolution(resolutions) == 128
    assert HalfBlocks(count=2).first_half_resolution(resolutions) == 64
    assert HalfBlocks(count=9).first_half_resolution(resolutions) == 4


def test_clamp_is_the_tighter_of_recipe_and_model():
    assert NVLABS_FP16.clamp_with(None) == 256.0  # rosinality checkpoints: no conv_clamp of their own
    assert NVLABS_FP16_OWN_CLAMP.clamp_with(512.0) == 512.0  # a generator trained with a clamp: its own
    assert NVLABS_FP16_OWN_CLAMP.first_half_resolution([4, 8, 16, 32, 64, 128]) == 16
    assert NVLABS_FP16.clamp_with(100.0) == 100.0
    assert NVLABS_FP16.clamp_with(512.0) == 256.0
    assert WHOLE_NETWORK.clamp_with(None) is None
    assert WHOLE_NETWORK.clamp_with(64.0) == 64.0


def test_policies_are_shared_and_immutable():
    """Class-level policies are shared by every model of a family: none can be changed in place."""
    import dataclasses

    shared = ((NVLABS_FP16, "count"), (DEFAULT_POLICY, "auto_gpu"), (Agreement(0.0, 0.0, True), "finite"))
    for value, attribute in shared:
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(value, attribute, None)


def test_policy_picks_blocks_per_half_type():
    policy = StyleGAN2Generator.PRECISION
    assert policy.blocks_for(torch.float16) is NVLABS_FP16
    assert policy.blocks_for(torch.bfloat16) is WHOLE_NETWORK  # bf16 has fp32's range: every block
    assert PRECISION_WITH_CLAMP.blocks_for(torch.float16) is NVLABS_FP16_OWN_CLAMP
    assert PrecisionPolicy().blocks_for(torch.float16) is WHOLE_NETWORK


def test_each_generator_reads_its_files_policy():
    """PRECISION per instance (what the descriptor, and so the nodes, read): with conv_clamp the recipe, without it
    bf16; on the class the case without a clamp (the node tooltips say both, PRECISION_BY_FILE)."""
    from transedit.models.core.descriptor import ModelDescriptor

    clamped, unclamped = generator(conv_clamp=256.0), generator()
    assert clamped.PRECISION is PRECISION_WITH_CLAMP and unclamped.PRECISION is PRECISION_WITHOUT_CLAMP
    assert StyleGAN2Generator.PRECISION is PRECISION_WITHOUT_CLAMP
    assert ModelDescriptor(family="stylegan2", model=clamped, config=None, source="-").precision is PRECISION_WITH_CLAMP
    assert ModelDescriptor(family="stylegan2", model=unclamped, config=None, source="-").precision \
        is PRECISION_WITHOUT_CLAMP
    assert list(PRECISION_BY_FILE.values()) == [PRECISION_WITH_CLAMP, PRECISION_WITHOUT_CLAMP]
    assert (PRECISION_WITH_CLAMP.auto_gpu, PRECISION_WITHOUT_CLAMP.auto_gpu) == ("fp16", "bf16")
    assert PRECISION_WITHOUT_CLAMP.auto_without_bf16 == "fp32"


def generator(seed=0, size=32, width=16, conv_clamp=None) -> StyleGAN2Generator:
    torch.manual_seed(seed)
    cfg = StyleGAN2Config(size=size, style_dim=32, n_mlp=2, conv_clamp=conv_clamp,
                          channels={r: width for r in (4, 8, 16, 32, 64) if r <= size})
    return StyleGAN2Generator(cfg).eval()


def wplus_for(g, batch=2, seed=1):
    z = torch.randn(batch, g.config.input_dim, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return g.mapping(z).unsqueeze(1).expand(-1, g.n_latent, -1).contiguous()


def test_synthesis_runs_fp16_only_in_the_recipes_blocks():
    """Each layer's output dtype: fp32 below the first fp16 block, fp16 from it, also inside a caller's bf16
    autocast (an fp32 block of a half-precision run stays fp32); bf16 runs every block."""
    g = generator()
    w = wplus_for(g, batch=1)
    with torch.no_grad():
        _, feats = g.synthesis(w, dtype=torch.float16, return_features=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            _, inside = g.synthesis(w, dtype=torch.float16, return_features=True)
        _, bf16 = g.synthesis(w, dtype=torch.bfloat16, return_features=True)
        _, whole = g.synthesis(w, dtype=torch.float16, half_blocks=WHOLE_NETWORK, return_features=True)
    convs = [k for k in feats if k.startswith("conv")]
    for name in convs:
        expected = torch.float16 if feats[name].shape[-1] >= 8 else torch.float32
        assert feats[name].dtype == expected == inside[name].dtype, name
        assert bf16[name].dtype == torch.bfloat16 and whole[name].dtype == torch.float16, name
    assert feats["conv0"].dtype == torch.float32  # 4x4: fp32 in NVlabs' recipe
    assert all(feats[k].dtype == torch.float32 for k in feats if k.startswith("rgb"))  # the RGB sum


def test_fp32_and_no_dtype_are_untouched_by_the_recipe():
    """The official (fp32) path: no clamp, no autocast; a caller's autocast still applies when no dtype is given."""
    g = activation_scaled(generator(), 1024.0)  # activations far beyond the recipe's clamp
    w = wplus_for(g)
    with torch.no_grad():
        ref, feats = g.synthesis(w, return_features=True)
        assert max(float(v.abs().max()) for v in feats.values()) > 256
        assert torch.equal(g.synthesis(w, dtype=torch.float32), ref)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            outer = g.synthesis(w, return_features=True)[1]
    assert outer["conv1"].dtype == torch.bfloat16


def test_half_block_clamp_uses_the_models_own_conv_clamp():
    """An NVlabs generator with conv_clamp 8 clamps at 8 in fp32 and in its fp16 blocks (the tighter clamp)."""
    g = generator(conv_clamp=8.0)
    w = wplus_for(g)
    with torch.no_grad():
        ref, f32 = g.synthesis(w, return_features=True)
        half, f16 = g.synthesis(w, dtype=torch.float16, return_features=True)
    assert max(float(v.abs().max()) for k, v in f32.items() if k.startswith("conv")) <= 8.0
    assert max(float(v.abs().max()) for k, v in f16.items() if k.startswith("conv")) <= 8.0
    assert agreement(half, ref).within(**AUTO_CLAIM)


def test_recipe_clamps_a_clamped_generator_at_its_own_clamp_not_256():
    """Trained with conv_clamp 1024 and activations up to ~500: fp32 never clamps them, nor does its auto (the
    recipe at its own clamp); the recipe at 256 would cut them and move the image."""
    g = with_conv_clamp(activation_scaled(generator(seed=2), 128.0), 1024.0)
    w = wplus_for(g)
    result = compare_candidates(g, w)
    assert 256 < result["peak_in_auto_fp16_blocks"] < 1024
    assert result["auto"] == RECIPE and verdict(result)[0], verdict(result)[1]
    with torch.no_grad():
        at_256 = g.synthesis(w, dtype=torch.float16, half_blocks=NVLABS_FP16)
        ref = g.synthesis(w)
    assert not agreement(at_256, ref).within(**AUTO_CLAIM)


# ------------------------------------------------------------------------------------ the accuracy check
def test_agreement_numbers():
    ref = torch.tensor([3.0, 4.0])
    a = agreement(torch.tensor([3.0, 4.5], dtype=torch.float16), ref)
    assert a == Agreement(rel_l2=pytest.approx(0.1), max_abs=pytest.approx(0.5), finite=True)
    assert agreement(ref.clone(), ref) == Agreement(0.0, 0.0, True)
    assert agreement(torch.zeros(2), torch.zeros(2)).rel_l2 == 0.0  # a zero reference divides by a floor
    small = agreement(torch.tensor([0.003, 0.0045]), torch.tensor([0.003, 0.004]))  # |ref| < 1: no floor at 1
    assert small.rel_l2 == pytest.approx(0.1, rel=1e-4)
    for bad in (float("inf"), float("nan")):
        out = agreement(torch.tensor([3.0, bad]), ref)
        assert not out.finite and out.rel_l2 == out.max_abs == float("inf")


def test_agreement_within():
    assert Agreement(0.01, 0.5, True).within(0.01)
    assert Agreement(0.01, 0.5, True).within(0.01, 0.5)
    assert not Agreement(0.011, 0.5, True).within(0.01)
    assert not Agreement(0.01, 0.51, True).within(0.01, 0.5)
    assert not Agreement(0.0, 0.0, False).within(1.0, 1.0)  # inf/NaN never agrees
    assert not Agreement(float("nan"), 0.0, True).within(1.0)


def test_verdict_needs_tolerance_and_bf16_and_finite():
    def result(auto_rel, auto_abs=0.01, finite=True, bf16_rel=6e-3, auto=RECIPE):
        rows = {name: {"rel_l2": 1e-3, "max_abs": 0.01, "finite": True} for name in CANDIDATES}
        rows[RECIPE] = {"rel_l2": auto_rel, "max_abs": auto_abs, "finite": finite}
        rows["bf16"]["rel_l2"] = bf16_rel
        return {"auto": auto, "candidates": rows, "peak_in_auto_fp16_blocks": 3.0}

    ok, text = verdict(result(1e-3))
    assert ok and text.startswith("confirmed") and "1.00e-03" in text
    assert verdict(result(AUTO_CLAIM["rel_l2"], bf16_rel=1.0))[0]
    assert not verdict(result(AUTO_CLAIM["rel_l2"] * 1.01, bf16_rel=1.0))[0]
    assert not verdict(result(1e-3, auto_abs=AUTO_CLAIM["max_abs"] * 1.01))[0]
    assert not verdict(result(1e-3, finite=False))[0]
    ok, text = verdict(result(2e-3, bf16_rel=1e-3))  # within tolerance but bf16 would be closer
    assert not ok and text.startswith("refuted")
    # a file whose auto is bf16 is judged by bf16's claim, whatever the recipe does there
    bf16_claim = CLAIMS["bf16"]
    assert verdict(result(1.0, finite=False, auto="bf16", bf16_rel=bf16_claim["rel_l2"]))[0]
    assert not verdict(result(1e-3, auto="bf16", bf16_rel=bf16_claim["rel_l2"] * 1.01))[0]
    over = result(1e-3, auto="bf16")
    over["candidates"]["bf16"]["max_abs"] = bf16_claim["max_abs"] * 1.01
    assert not verdict(over)[0]
    over["candidates"]["bf16"].update(max_abs=0.0, finite=False)
    assert not verdict(over)[0]
    assert verdict(result(1.0, finite=False, auto="fp32", bf16_rel=1.0)) == (
        True, "confirmed (fp32 here: the reference itself)")
    assert claim_holds(result(1.0, auto="bf16"), RECIPE)[0] is False


# ----------------------------------------------------------------------------- evidence on proxy weights
def test_activation_scaled_proxy_is_the_same_function():
    g = generator()
    w = wplus_for(g)
    scaled = activation_scaled(g, 64.0)
    with torch.no_grad():
        ref, feats = g.synthesis(w, return_features=True)
        out, scaled_feats = scaled.synthesis(w, return_features=True)
    assert torch.equal(out, ref)  # a power of two: bit-identical in fp32
    assert torch.equal(scaled_feats["conv3"], feats["conv3"] * 64)
    with pytest.raises(ValueError):
        activation_scaled(generator(conv_clamp=256.0), 2.0)


@pytest.fixture(scope="module")
def fixture_generator():
    from conftest import fixture_dir
    from transedit.models.registry import load_stylegan2

    return load_stylegan2(fixture_dir("stylegan2_style_transformer") / "stylegan2_small_rosinality.pt").model.eval()


@pytest.mark.parametrize("which,scale", [("random", 1.0), ("random", 16.0), ("official fixture", 16.0)])
def test_auto_holds_on_trained_like_activations(request, which, scale):
    """Auto within AUTO_CLAIM of fp32 and at least 3x closer than bf16, with activation peaks from a few units up
    to ~100 (below the recipe's clamp, which then changes nothing: auto without it gives the same bits)."""
    base = generator(seed=2) if which == "random" else request.getfixturevalue("fixture_generator")
    g = activation_scaled(base, scale)
    w = wplus_for(g)
    result = compare_candidates(g, w)
    auto, bf16 = result["candidates"][RECIPE], result["candidates"]["bf16"]
    assert 2 * scale < result["peak_in_auto_fp16_blocks"] < 256
    assert result["auto"] == "bf16" and verdict(result)[0], verdict(result)[1]  # no conv_clamp: bf16
    assert claim_holds(result, RECIPE)[0] and recipe_evidence(result)[0], claim_holds(result, RECIPE)[1]
    assert auto["rel_l2"] * 3 < bf16["rel_l2"], result
    clamped = compare_candidates(with_conv_clamp(g), w)  # the same weights trained with conv_clamp 256
    assert clamped["auto"] == RECIPE and verdict(clamped)[0], verdict(clamped)[1]
    if scale == 16.0:
        no_clamp = HalfBlocks(count=NVLABS_FP16.count, min_resolution=NVLABS_FP16.min_resolution)
        with torch.no_grad():
            unclamped = g.synthesis(w, dtype=torch.float16, half_blocks=no_clamp)
            clamped = g.synthesis(w, dtype=torch.float16)
        assert torch.equal(clamped, unclamped)


def test_planted_fault_recipe_for_every_file_on_an_unclamped_generator():
    """A generator trained without conv_clamp whose fp16-block activations pass 256 (random weights x128: peaks
    ~500). The previous auto (the recipe at +-256 for every file) is changed by the clamp and the check says so;
    this file's auto (bf16) holds, and the sweep's evidence line says the recipe would not have."""
    g = activation_scaled(generator(seed=2), 128.0)
    result = compare_candidates(g, wplus_for(g))
    assert result["peak_in_auto_fp16_blocks"] > 256
    previous = dict(result, auto=RECIPE)
    assert not verdict(previous)[0] and verdict(previous)[1].startswith("refuted")
    assert result["auto"] == "bf16" and verdict(result)[0], verdict(result)[1]
    assert result["candidates"]["bf16"]["rel_l2"] < AUTO_CLAIM["rel_l2"] * 2  # bf16's range has no clamp
    held, evidence = recipe_evidence(result)
    assert not held and "NOT have held" in evidence and "ABOVE its clamp 256" in evidence
    below = compare_candidates(activation_scaled(generator(seed=2), 16.0), wplus_for(g))
    assert "have held" in recipe_evidence(below)[1] and "below its clamp 256" in recipe_evidence(below)[1]


def test_planted_fault_old_auto_overflows_and_the_check_fails():
    """The old auto (fp16 in every block, only the +-32768 guard) at activations past fp16's range: finite, as the
    old test checked, and wrong, which the accuracy check catches; bf16 holds there."""
    g = activation_scaled(generator(), 2.0 ** 13)  # the constant input still fits fp16, its convolutions do not
    w = wplus_for(g)
    with torch.no_grad():
        ref, feats = g.synthesis(w, return_features=True)
        old = g.synthesis(w, dtype=torch.float16, half_blocks=WHOLE_NETWORK)
        bf16 = g.synthesis(w, dtype=torch.bfloat16)
    assert max(float(v.abs().max()) for v in feats.values()) > 65504
    old_agreement = agreement(old, ref)
    assert old_agreement.finite  # what the old test saw
    assert not old_agreement.within(**AUTO_CLAIM), old_agreement
    assert agreement(bf16, ref).within(rel_l2=0.02)


def test_planted_fault_low_resolution_spike():
    """A large activation in the wide 4x4 block (which NVlabs keeps in fp32): the old auto clamps it at 32768 and
    the image moves; auto keeps that block in fp32 and stays within the claim."""
    g = low_res_spike(generator(seed=2), 5e4)
    w = wplus_for(g)
    with torch.no_grad():
        ref, feats = g.synthesis(w, return_features=True)
        old = g.synthesis(w, dtype=torch.float16, half_blocks=WHOLE_NETWORK)
        auto = g.synthesis(w, dtype=torch.float16)
    assert float(feats["conv0"].abs().max()) > 65504
    assert agreement(old, ref).finite and not agreement(old, ref).within(**AUTO_CLAIM)
    assert agreement(auto, ref).within(**AUTO_CLAIM), agreement(auto, ref)


def test_half_block_peak_reads_only_the_fp16_blocks():
    g = low_res_spike(generator(seed=2), 5e4)
    with torch.no_grad():
        _, feats = g.synthesis(wplus_for(g), return_features=True)
    peak = half_block_peak(g, feats)
    assert peak < 100 < float(feats["conv0"].abs().max())
    assert half_block_peak(g, feats, half_blocks=WHOLE_NETWORK) > 65504
    assert half_block_peak(g, feats, dtype=torch.bfloat16) > 65504  # bf16: every block


# --------------------------------------------------------------------------------- auto and the device
def test_policy_resolution_on_gpus_with_and_without_native_bf16():
    warnings = []
    gan, dino = PRECISION_WITH_CLAMP, PrecisionPolicy(auto_without_bf16="fp32")
    assert gan.resolve("auto", CUDA, False, warnings.append) == torch.float16
    assert gan.resolve("auto", CUDA, True, warnings.append) == torch.float16
    assert gan.resolve("auto", CPU, True, warnings.append) == torch.float32
    assert PRECISION_WITHOUT_CLAMP.resolve("auto", CUDA, True, warnings.append) == torch.bfloat16
    assert PRECISION_WITHOUT_CLAMP.resolve("auto", CUDA, False, warnings.append) == torch.float32
    assert PRECISION_WITHOUT_CLAMP.resolve("auto", CPU, True, warnings.append) == torch.float32
    assert DEFAULT_POLICY.resolve("auto", CUDA, True, warnings.append) == torch.bfloat16
    assert DEFAULT_POLICY.resolve("auto", CUDA, False, warnings.append) == torch.float16
    assert dino.resolve("auto", CUDA, False, warnings.append) == torch.float32
    assert dino.resolve("auto", CUDA, True, warnings.append) == torch.bfloat16
    assert PrecisionPolicy(auto_gpu="fp32").resolve("auto", CUDA, True, warnings.append) == torch.float32
    assert warnings == []  # auto asked for nothing: its fallback is its meaning, not a warning
    assert DEFAULT_POLICY.resolve("bf16", CUDA, False, warnings.append) == torch.float16
    assert DEFAULT_POLICY.resolve("bf16", CPU, False, warnings.append) == torch.float32
    assert PrecisionPolicy(bf16=False).resolve("bf16", CUDA, True, warnings.append) == torch.float16
    assert PrecisionPolicy(fp16=False).resolve("fp16", CUDA, True, warnings.append) == torch.bfloat16
    assert PrecisionPolicy(fp16=False, bf16=False).resolve("fp16", CUDA, True, warnings.append) == torch.float32
    assert warnings == ["bf16 requested but the device has no native bf16; running in fp16",
                        "bf16 requested but the device has no native bf16; running in fp32",
                        "bf16 requested but this model does not support bf16; running in fp16",
                        "fp16 requested but this model's fp16 path is not safe; running in bf16",
                        "fp16 requested but this model's fp16 path is not safe; running in fp32"]
    assert DEFAULT_POLICY.resolve("fp16", CUDA, False) == torch.float16
    assert DEFAULT_POLICY.resolve("fp32", CUDA, True) == torch.float32
    with pytest.raises(ValueError, match="fp8"):
        DEFAULT_POLICY.resolve("fp8", CUDA, True)


def test_fp16_on_a_generator_without_conv_clamp_says_it_clamps_at_256():
    """fp16 asked for on a file trained without conv_clamp runs the recipe and warns that its +-256 clamp may cut
    that file's activations; bf16 asked for on an old GPU does not fall back into that fp16 but into fp32, as its
    auto does there; a clamped file runs fp16 silently, and neither bf16 nor fp32 warns."""
    caution = PRECISION_WITHOUT_CLAMP.fp16_caution
    assert "256" in caution and "without conv_clamp" in caution and not PRECISION_WITH_CLAMP.fp16_caution
    warnings = []
    assert PRECISION_WITHOUT_CLAMP.resolve("fp16", CUDA, True, warnings.append) == torch.float16
    assert warnings == [caution]
    assert PRECISION_WITHOUT_CLAMP.resolve("bf16", CUDA, False, warnings.append) == torch.float32
    assert warnings[1:] == ["bf16 requested but the device has no native bf16; running in fp32"]
    warnings.clear()
    assert PRECISION_WITHOUT_CLAMP.resolve("bf16", CUDA, True, warnings.append) == torch.bfloat16
    assert PRECISION_WITHOUT_CLAMP.resolve("fp32", CUDA, True, warnings.append) == torch.float32
    assert PRECISION_WITH_CLAMP.resolve("fp16", CUDA, True, warnings.append) == torch.float16
    assert PRECISION_WITH_CLAMP.resolve("bf16", CUDA, False, warnings.append) == torch.float16
    assert warnings == ["bf16 requested but the device has no native bf16; running in fp16"]
    assert PrecisionPolicy(fp16_caution="x").resolve("fp16", CPU, True, warnings.append) == torch.float16
    assert warnings[-1] == "x"


@pytest.fixture
def two_gpus(monkeypatch):
    """cuda:0 a T4 (7.5: bf16 only emulated), cuda:1 an H100 (9.0); torch's current device is set per test."""
    capability = {0: (7, 5), 1: (9, 0)}
    current = {"index": 1}

    def index_of(device=None):
        if device is None:
            return current["index"]
        device = torch.device(device) if not isinstance(device, int) else torch.device("cuda", device)
        return current["index"] if device.index is None else device.index

    class Properties:
        def __init__(self, device=None):
            self.major, self.minor = capability[index_of(device)]

    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: current["index"])
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability[index_of(device)])
    monkeypatch.setattr(torch.cuda, "get_device_properties", Properties)
    return current


@pytest.mark.parametrize("current", [0, 1])
def test_native_bf16_is_read_for_the_device_used(two_gpus, current):
    two_gpus["index"] = current
    assert has_native_bf16(torch.device("cuda:0")) is False
    assert has_native_bf16(torch.device("cuda:1")) is True
    assert has_native_bf16(torch.device("cuda")) is (current == 1)  # no index: the current device
    assert has_native_bf16(CPU) is True
    assert has_native_bf16(torch.device("meta")) is False


def test_rocm_has_bf16(two_gpus, monkeypatch):
    monkeypatch.setattr(torch.version, "hip", "6.0")
    assert has_native_bf16(torch.device("cuda:0")) is True


@pytest.mark.parametrize("current", [0, 1])
def test_nodes_resolve_auto_for_their_own_device(two_gpus, current):
    """An encoder/PUT node on the T4 gets fp16 (not emulated bf16), on the H100 bf16, whichever device torch
    currently points at; Splice's DINO on the T4 gets fp32 (fp16 would need loss scaling)."""
    from transedit.models.splice.dino import DinoViT
    from transedit.nodes.precision import resolve_precision

    two_gpus["index"] = current
    t4, h100 = torch.device("cuda:0"), torch.device("cuda:1")
    assert resolve_precision("auto", t4) == torch.float16
    assert resolve_precision("auto", h100) == torch.bfloat16
    assert resolve_precision("auto", t4, DinoViT.PRECISION) == torch.float32
    assert resolve_precision("auto", h100, DinoViT.PRECISION) == torch.bfloat16
    clamped, unclamped = generator(conv_clamp=256.0), generator()
    assert resolve_precision("auto", t4, clamped.PRECISION) == torch.float16
    assert resolve_precision("auto", h100, clamped.PRECISION) == torch.float16
    assert resolve_precision("auto", t4, unclamped.PRECISION) == torch.float32
    assert resolve_precision("auto", h100, unclamped.PRECISION) == torch.bfloat16
    assert (auto_on_gpu(clamped, t4), auto_on_gpu(clamped, h100)) == (RECIPE, RECIPE)
    assert (auto_on_gpu(unclamped, t4), auto_on_gpu(unclamped, h100)) == ("fp32", "bf16")
    assert (auto_on_gpu(clamped, CPU), auto_on_gpu(unclamped, CPU)) == (RECIPE, "bf16")  # the CPU stands for Ampere


def test_tooltips_say_what_auto_means_for_each_family():
    from transedit.models.splice.dino import DinoViT
    from transedit.models.put.transformer import PUTTransformer
    from transedit.nodes import NODE_CLASS_MAPPINGS
    from transedit.nodes.precision import auto_tooltip, auto_tooltip_by_file

    gan = auto_tooltip_by_file(PRECISION_BY_FILE)
    expected = {"TransEditGenerate": gan, "TransEditEditStudio": gan, "TransEditInvert": auto_tooltip(DEFAULT_POLICY),
                "TransEditPUTInpaint": auto_tooltip(PUTTransformer.PRECISION),
                "TransEditSplice": auto_tooltip(DinoViT.PRECISION)}
    for node, text in expected.items():
        inputs = NODE_CLASS_MAPPINGS[node].INPUT_TYPES()
        spec = {**inputs["required"], **inputs.get("optional", {})}["precision"]
        assert spec[1]["tooltip"].startswith(text), node
    assert gan == ("auto, generator with conv_clamp (NVlabs ADA-era .pkl): on a GPU fp16 in the 4 highest-resolution "
                   "blocks at the model's own clamp, the rest fp32 (NVlabs' recipe). auto, generator without "
                   "conv_clamp (rosinality .pt, TF-era StyleGAN2): on a GPU with native bf16 (Ampere or newer) bf16; "
                   "on older GPUs (T4, V100, RTX 20xx) fp32. On a CPU fp32. fp16, generator without conv_clamp "
                   "(rosinality .pt, TF-era StyleGAN2): fp16 in the 4 highest-resolution blocks, activations clamped "
                   "to ±256 there, the rest fp32 (NVlabs' recipe); trained without it, it may exceed ±256.")
    assert "fp16 means the same" in auto_tooltip(PRECISION_WITH_CLAMP)
    unbounded = PrecisionPolicy(fp16_blocks=NVLABS_FP16_OWN_CLAMP)
    assert auto_tooltip_by_file({"x": unbounded}).endswith("at the model's own clamp, the rest fp32 (NVlabs' recipe).")
    assert "fp16," not in auto_tooltip_by_file({"x": PrecisionPolicy()})  # every block: nothing more to say
    assert "older GPUs (T4, V100, RTX 20xx) fp16" in auto_tooltip(DEFAULT_POLICY)
    assert "older GPUs (T4, V100, RTX 20xx) fp32" in auto_tooltip(DinoViT.PRECISION)
    mixed_bf16_auto = PrecisionPolicy(fp16_blocks=NVLABS_FP16)
    assert auto_tooltip(mixed_bf16_auto).endswith("fp16: fp16 in the 4 highest-resolution blocks, activations "
                                                  "clamped to ±256 there, the rest fp32 (NVlabs' recipe).")
    assert FP16_ACTIVATION_LIMIT == 32768.0
