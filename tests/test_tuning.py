"""The tuning engine's own contract (models/stylegan/tuning.py); parity with the official PTI/STIT code is
tests/test_tuning_parity.py. Each check here ships with its planted fault."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch.overrides import TorchFunctionMode

from transedit.models.stylegan import tuning as T
from transedit.models.stylegan.generator import StyleGAN2Config, StyleGAN2Generator

TINY = StyleGAN2Config(size=16, style_dim=32, n_mlp=2, channels={4: 16, 8: 16, 16: 8})


def l1_distance(x, y):
    """A small differentiable stand-in for LPIPS: [B] distances."""
    return (x - y).abs().mean((1, 2, 3))


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    g = StyleGAN2Generator(TINY).eval().requires_grad_(False)
    with torch.no_grad():
        for p in g.parameters():
            if p.ndim == 1 and p.numel() == 1:
                p.fill_(0.1)  # noise strengths: let the constant noise matter
    pivots = g.mapping(torch.randn(4, 32))[:, None].expand(-1, g.n_latent, -1).clone()
    targets = torch.rand(4, 3, 16, 16) * 2 - 1
    return g, pivots, targets


def reference_pti(g, pivot, target, config, stop_after_step=False):
    """PTI's single-id loop written plainly (the official order: loss, check, then step)."""
    tuned = T.tunable_copy(g, "cpu")
    opt = torch.optim.Adam(T.synthesis_parameters(tuned), lr=config.lr, betas=config.betas)
    steps = 0
    for _ in range(config.steps):
        image = tuned.synthesis(pivot, noise_mode="const")
        lp = l1_distance(image, target)[0]
        loss = torch.nn.functional.mse_loss(image, target) + lp
        opt.zero_grad()
        if lp <= config.early_stop_lpips and not stop_after_step:
            break
        loss.backward()
        opt.step()
        steps += 1
        if stop_after_step and lp <= config.early_stop_lpips:
            break
    return tuned, steps


def max_weight_diff(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return max(float((sa[k] - sb[k]).abs().max()) for k in sa)


@pytest.mark.parametrize("poll_every", [1, 4])
def test_early_stop_leaves_the_weights_of_the_official_break(tiny, poll_every):
    """The stop is decided on the device (lr tensor -> 0) and read every `poll_every` steps: the weights must be
    those of PTI's break before the step, whichever step the poll falls on. Planted: stepping once more (stop
    after the step) is caught."""
    g, pivots, targets = tiny
    probe = T.pivotal_tune(g, pivots[:1], targets[:1], l1_distance, replace(T.PTI_PRESET, steps=8,
                           early_stop_lpips=None), device="cpu")
    threshold = float(probe.losses[6, 1])  # reached at step 6 (of up to 14: the poll falls after it)
    config = replace(T.PTI_PRESET, steps=14, early_stop_lpips=threshold, poll_every=poll_every)
    result = T.pivotal_tune(g, pivots[:1], targets[:1], l1_distance, config, device="cpu")
    ref, ref_steps = reference_pti(g, pivots[:1], targets[:1], config)
    assert result.stopped_early and result.steps_run == ref_steps == 6
    assert result.losses.shape == (6, 3)
    assert max_weight_diff(result.generator, ref) < 1e-6
    late, _ = reference_pti(g, pivots[:1], targets[:1], config, stop_after_step=True)
    assert max_weight_diff(result.generator, late) > 1e-5


def test_input_generator_is_untouched_and_the_copy_is_frozen(tiny):
    g, pivots, targets = tiny
    before = {k: v.clone() for k, v in g.state_dict().items()}
    result = T.pivotal_tune(g, pivots[:2], targets[:2], l1_distance, replace(T.STIT_PRESET, steps=2), device="cpu",
                            w_avg=g.mean_latent(64))
    assert all(torch.equal(before[k], v) for k, v in g.state_dict().items())
    assert not any(p.requires_grad for p in result.generator.parameters())
    assert result.steps_run == 4 and not result.stopped_early
    # the mapping network is never trained (it has no gradient in the official loss either)
    tuned = result.generator.state_dict()
    assert all(torch.equal(tuned[k], before[k]) for k in before if k.startswith("style."))
    assert any(not torch.equal(tuned[k], before[k]) for k in before if k.startswith("convs."))


def assert_independent_fp32_copy(copy, source):
    """Every tensor of `copy`: materialised (not meta, not an inference tensor), fp32 where floating, equal to the
    source's value and in storage of its own."""
    state, original = copy.state_dict(), source.state_dict()
    assert state.keys() == original.keys()
    for k, v in state.items():
        assert not v.is_meta and not v.is_inference(), k
        assert v.dtype == (torch.float32 if v.is_floating_point() else original[k].dtype), k
        assert torch.equal(v, original[k].to(v.dtype)), k
        assert v.untyped_storage().data_ptr() != original[k].untyped_storage().data_ptr(), k
    assert not any(t.is_meta for t in vars(copy).values() if isinstance(t, torch.Tensor))


@pytest.mark.parametrize("source_dtype", [torch.float32, torch.bfloat16])
def test_tuning_copies_are_independent_fp32_and_render_the_same(tiny, source_dtype):
    g, pivots, _ = tiny
    with torch.inference_mode():  # as ComfyUI loads a generator
        source = StyleGAN2Generator(TINY)
        source.load_state_dict(g.state_dict())
        source = source.to(source_dtype)
    copy = T.tunable_copy(source, "cpu")
    assert_independent_fp32_copy(copy, source)
    with torch.no_grad():
        reference = T.tunable_copy(g, "cpu").synthesis(pivots[:1], noise_mode="const")
        assert torch.equal(reference, g.synthesis(pivots[:1], noise_mode="const"))
    # planted faults: the source itself (shared storage) and a copy with one weight off are both caught
    with pytest.raises(AssertionError):
        assert_independent_fp32_copy(g, g)
    with torch.no_grad():
        next(p for n, p in copy.named_parameters() if n.startswith("convs.")).add_(1e-3)
    with pytest.raises(AssertionError):
        assert_independent_fp32_copy(copy, source)


def test_works_under_inference_mode(tiny):
    """ComfyUI runs nodes under inference_mode; a generator loaded there still tunes."""
    g, pivots, targets = tiny
    with torch.inference_mode():
        g2 = T.tunable_copy(g, "cpu").requires_grad_(False)
        result = T.pivotal_tune(g2, pivots[:1], targets[:1], l1_distance, replace(T.PTI_PRESET, steps=2),
                                device="cpu")
    assert result.steps_run == 2


def test_progress_cancel_and_bad_inputs(tiny):
    g, pivots, targets = tiny
    calls = []
    config = replace(T.STIT_PRESET, steps=3, poll_every=2)
    T.pivotal_tune(g, pivots[:3], targets[:3], l1_distance, config, device="cpu", w_avg=g.mean_latent(64),
                   on_step=lambda step, total, preview: calls.append((step, total, tuple(preview.shape))))
    assert [c[0] for c in calls] == [2, 4, 6, 8, 9] and all(c[1] == 9 and c[2] == (1, 3, 16, 16) for c in calls)
    polls = []

    def cancel():
        polls.append(1)
        return len(polls) >= 2

    with pytest.raises(T.TuningCancelled):
        T.pivotal_tune(g, pivots[:3], targets[:3], l1_distance, config, device="cpu", w_avg=g.mean_latent(64),
                       should_cancel=cancel)
    assert len(polls) == 2
    with pytest.raises(ValueError, match="pivots must be W\\+ latents"):
        T.pivotal_tune(g, pivots[:1, :3], targets[:1], l1_distance, device="cpu")
    with pytest.raises(ValueError, match="targets must be RGB images"):
        T.pivotal_tune(g, pivots[:1], targets[:1, :, :8], l1_distance, device="cpu")
    with pytest.raises(ValueError, match="one latent per image"):
        T.pivotal_tune(g, pivots[:2], targets[:1], l1_distance, device="cpu")
    with pytest.raises(ValueError, match="needs w_avg"):
        T.pivotal_tune(g, pivots[:1], targets[:1], l1_distance, T.STIT_PRESET, device="cpu")


class TargetMoves(TorchFunctionMode):
    """Records how many frames of `targets` each device move/copy touches (any tensor viewing its storage)."""

    def __init__(self, targets):
        super().__init__()
        self.ptr, self.frame_bytes = targets.untyped_storage().data_ptr(), targets[0].nbytes
        self.frames = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name in ("to", "cuda", "clone", "contiguous", "copy_") and args and isinstance(args[0], torch.Tensor):
            t = args[0]
            if t.untyped_storage().data_ptr() == self.ptr:
                self.frames.append(t.nbytes // self.frame_bytes)
        return func(*args, **kwargs)


def test_targets_stream_in_chunks(tiny):
    """A clip's frames reach the device `chunk_frames` at a time, never all at once (memory flat in N; measured
    in benchmarks/bench_tuning.py). Planted: a chunk as long as the clip is seen."""
    g, _, _ = tiny
    n = 12
    pivots = g.mapping(torch.randn(n, 32))[:, None].expand(-1, g.n_latent, -1).clone()
    targets = torch.rand(n, 3, 16, 16) * 2 - 1
    for chunk, expect_ok in ((4, True), (n, False)):
        with TargetMoves(targets) as moves:
            T.pivotal_tune(g, pivots, targets, l1_distance, replace(T.PTI_PRESET, steps=1, chunk_frames=chunk),
                           device="cpu")
        assert moves.frames, "no move of the targets was seen"
        assert (max(moves.frames) <= 4) == expect_ok, moves.frames


def test_regularizer_seed_is_numpys_global_stream(tiny):
    """seed s draws what the official code draws after np.random.seed(s): one z per regularised step."""
    import numpy as np

    g, pivots, _ = tiny
    config = replace(T.STIT_PRESET, regularizer_samples=2)
    reg = T.LocalityRegularizer(g, g.mean_latent(64), config, seed=5, device=torch.device("cpu"), draws=4)
    drawn = torch.cat([reg.draw(1), reg.draw(3)]).reshape(-1, 32)
    with pytest.raises(RuntimeError, match="more draws"):
        reg.draw(1)
    np.random.seed(5)
    z = torch.cat([torch.from_numpy(np.random.randn(2, 32)) for _ in range(4)]).float()
    w_avg = g.mean_latent(64)
    expected = w_avg + 0.5 * (g.mapping(z) - w_avg)
    assert torch.allclose(drawn, expected, atol=1e-6)
    morphed = reg.morph(drawn[:2], pivots[:1])
    assert torch.allclose((morphed - pivots[:1]).flatten(1).norm(dim=1), torch.full((2,), 30.0), atol=1e-4)


def test_tuning_delta_round_trip_and_registry(tiny, tmp_path):
    """Save Tuned StyleGAN's delta: only the changed tensors, tuned - base; Load StyleGAN on the delta finds the
    base beside it, checks its hash and gives back the tuned weights. Planted: a different base file, a missing
    one, a delta applied to another layout."""
    from transedit.models.registry import load_stylegan2
    from transedit.models.stylegan.generator import StyleGAN2Descriptor, save_stylegan2_safetensors

    g, pivots, targets = tiny
    base_desc = StyleGAN2Descriptor(family="stylegan2", model=g, config=g.config, source="base.pt",
                                    source_format="torch", weights="g_ema", fingerprint="f" * 16,
                                    latent_avg=g.mean_latent(64).reshape(-1))
    base_file = save_stylegan2_safetensors(base_desc, tmp_path / "base.safetensors")
    loaded_base = load_stylegan2(base_file)
    result = T.pivotal_tune(loaded_base.model, pivots[:1], targets[:1], l1_distance,
                            replace(T.PTI_PRESET, steps=3), device="cpu")
    delta_file = T.save_tuning_delta(result.generator, loaded_base.model, tmp_path / "tuned.safetensors",
                                     T.file_sha256(base_file), base_file.name)
    delta = T.read_tuning_delta(delta_file)
    assert delta.base_file == "base.safetensors" and not any(k.startswith(("style.", "noises.")) for k in
                                                              delta.tensors)
    assert delta.tensors and all(k.startswith(("conv", "to_rgb", "input")) for k in delta.tensors)
    assert T.is_tuning_delta_file(delta_file) and not T.is_tuning_delta_file(base_file)
    tuned = load_stylegan2(delta_file)
    ref = result.generator.state_dict()
    assert max(float((v - ref[k]).abs().max()) for k, v in tuned.model.state_dict().items()) < 1e-6
    assert tuned.fingerprint != loaded_base.fingerprint and tuned.source == str(delta_file)
    assert torch.equal(tuned.latent_avg, loaded_base.latent_avg)

    # planted: the base beside the delta is another file
    other = StyleGAN2Generator(TINY)
    save_stylegan2_safetensors(replace(base_desc, model=other), tmp_path / "base.safetensors", overwrite=True)
    with pytest.raises(ValueError, match="made from a different base.safetensors"):
        load_stylegan2(delta_file)
    (tmp_path / "base.safetensors").unlink()
    with pytest.raises(ValueError, match="not in the same folder"):
        load_stylegan2(delta_file)
    small = StyleGAN2Generator(StyleGAN2Config(size=8, style_dim=32, n_mlp=2, channels={4: 16, 8: 8}))
    with pytest.raises(ValueError, match="are not in this generator"):
        T.apply_tuning_delta(small, delta)
    narrow = StyleGAN2Generator(StyleGAN2Config(size=16, style_dim=32, n_mlp=2, channels={4: 16, 8: 16, 16: 4}))
    with pytest.raises(ValueError, match="has shape"):
        T.apply_tuning_delta(narrow, delta)


@pytest.mark.parametrize("preset", ["pti", "stit"])
def test_no_host_sync_per_step(tiny, preset, monkeypatch):
    """The per-step loop waits for nothing (counted by the sync sentinel, as tests/test_sync_free.py does): the
    early stop is decided on the device (Adam's lr a tensor), losses stay there until the end. Planted: without
    the tensor lr (an optimiser without a fused kernel) the stop is read every step, and that is counted."""
    from sync_sentinel import per_step

    g, pivots, targets = tiny
    w_avg = g.mean_latent(64)
    config = T.PTI_PRESET if preset == "pti" else T.STIT_PRESET
    frames = 1 if preset == "pti" else 2

    def run(n):
        T.pivotal_tune(g, pivots[:frames], targets[:frames], l1_distance, replace(config, steps=n, poll_every=1000,
                       early_stop_lpips=0.0 if preset == "pti" else None), device="cpu", w_avg=w_avg)

    assert per_step(run, 1, 3) == {}
    if preset == "pti":
        real = T.make_adam
        monkeypatch.setattr(T, "make_adam", lambda params, lr, betas, device, tensor_lr: (real(
            params, lr, betas, torch.device("meta"), False)[0], None))
        assert per_step(run, 1, 3) != {}


def write_delta(path, tensors, base_file, base_sha256, config):
    """A delta file as Save Tuned StyleGAN writes it, with any base name and tensors (hostile files)."""
    import json

    from safetensors.torch import save_file

    from transedit.models.core.checkpoint_io import TRANSEDIT_FORMAT_KEY

    save_file(tensors, str(path), metadata={TRANSEDIT_FORMAT_KEY: T.DELTA_FORMAT, "format_version": T.DELTA_VERSION,
                                            "base_file": base_file, "base_sha256": base_sha256,
                                            "config": json.dumps(config.to_dict())})
    return path


def test_a_delta_base_outside_its_folder_or_a_delta_base_is_refused(tiny, tmp_path):
    """Planted: a delta naming its base by an absolute path or '..' (with the right sha256), and a chain A -> B
    where B is a delta naming a file outside the folder; the same base named plainly loads."""
    from transedit.models.registry import load_stylegan2
    from transedit.models.stylegan.generator import StyleGAN2Descriptor, save_stylegan2_safetensors

    g = tiny[0]
    desc = StyleGAN2Descriptor(family="stylegan2", model=g, config=g.config, source="x", source_format="torch",
                               weights="g_ema", fingerprint="f" * 16, latent_avg=g.mean_latent(64).reshape(-1))
    folder, outside = tmp_path / "models", tmp_path / "outside"
    folder.mkdir(), outside.mkdir()
    secret = save_stylegan2_safetensors(desc, outside / "secret.safetensors")
    inside = save_stylegan2_safetensors(desc, folder / "g.safetensors")
    key = next(k for k in g.state_dict() if k.startswith("convs"))
    zero = {key: torch.zeros_like(g.state_dict()[key])}
    assert load_stylegan2(write_delta(folder / "ok.safetensors", zero, "g.safetensors", T.file_sha256(inside),
                                      g.config)).source.endswith("ok.safetensors")
    for name in (str(secret), "../outside/secret.safetensors", "./../outside/secret.safetensors"):
        bad = write_delta(folder / "bad.safetensors", zero, name, T.file_sha256(secret), g.config)
        with pytest.raises(ValueError, match="leaves the delta's folder"):
            load_stylegan2(bad)
    chained = write_delta(folder / "B.safetensors", zero, str(secret), T.file_sha256(secret), g.config)
    top = write_delta(folder / "A.safetensors", zero, "B.safetensors", T.file_sha256(chained), g.config)
    with pytest.raises(ValueError, match="itself a tuning delta"):
        T.delta_base_path(top, T.read_tuning_delta(top))
    with pytest.raises(ValueError, match="itself a tuning delta"):
        load_stylegan2(top)


@pytest.mark.parametrize("fill, dtype", [(float("nan"), torch.float32), (float("inf"), torch.float32),
                                         (float("-inf"), torch.float16), (1, torch.int64), (1, torch.bool)])
def test_a_non_finite_or_integer_delta_is_refused(tiny, tmp_path, fill, dtype):
    """Planted: one element NaN/Inf, or a whole delta of integers; read_tuning_delta names the file and the key,
    apply_tuning_delta refuses the same tensors handed to it in memory, and a finite overflowing sum."""
    g = tiny[0]
    key = next(k for k in g.state_dict() if k.startswith("convs"))
    value = torch.zeros_like(g.state_dict()[key])
    if dtype.is_floating_point:
        value = value.to(dtype)
        value.view(-1)[3] = fill
    else:
        value = torch.full(value.shape, fill, dtype=dtype)
    path = write_delta(tmp_path / "hostile.safetensors", {key: value}, "g.pt", "0" * 64, g.config)
    with pytest.raises(ValueError, match=rf"hostile.safetensors: holds .*{key}") as e:
        T.read_tuning_delta(path)
    assert "Save the tuned generator again" in str(e.value)
    with pytest.raises(ValueError, match="not finite floating point"):
        T.apply_tuning_delta(g, T.TuningDelta(tensors={key: value}, base_file="g.pt", base_sha256="0" * 64))
    huge = T.TuningDelta(tensors={key: torch.full_like(g.state_dict()[key], 3.4e38)}, base_file="g.pt",
                         base_sha256="0" * 64)
    T.apply_tuning_delta(g, huge, strength=0.5)  # large but finite: allowed
    with pytest.raises(ValueError, match="overflows"):
        T.apply_tuning_delta(g, huge, strength=2.0)
