"""Property-based tests (hypothesis) of the nodes users feed most directly: odd batch sizes, image sizes from 1x1
up, 1/3/4 channels, fp16/bf16/non-contiguous tensors, NaN/inf pixels, empty/full/soft/mismatched masks,
latents from another generator. Every case either works with a defined result (shape, fp32, values in range)
or raises a ValueError-style NodeInputError that names the node and the input; nothing else escapes."""
from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from transedit.models.latent import StyleLatent
from transedit.models.registry import save_random_encoder, save_random_generator, save_random_put
from transedit.models.stylegan2 import StyleGAN2Config
from transedit.nodes import comfy_bridge as bridge
from transedit.nodes import compare as compare_nodes
from transedit.nodes import inversion as inv_nodes
from transedit.nodes import put as put_nodes
from transedit.nodes import stylegan as sg_nodes
from transedit.nodes.common import NodeInputError

FUZZ = settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz_models")
    for folder in ("put", "gan_encoders", "stylegan"):
        (root / folder).mkdir()
        bridge.set_fallback_folder(folder, [str(root / folder)])
    save_random_put(root / "put" / "p.pth")
    save_random_encoder(root / "gan_encoders" / "e.pt", family="e4e")
    save_random_generator(root / "stylegan" / "other.pt", config=StyleGAN2Config(
        size=32, style_dim=32, n_mlp=2, channels={4: 16, 8: 16, 16: 16, 32: 8}))
    put = put_nodes.TransEditLoadPUT().load("p.pth")[0]
    encoder, generator = inv_nodes.TransEditLoadEncoder().load("e.pt")
    other = sg_nodes.TransEditLoadStyleGAN().load("other.pt")[0]
    yield dict(put=put, encoder=encoder, generator=generator, other=other)
    for folder in ("put", "gan_encoders", "stylegan"):
        bridge._fallback_paths.pop(folder, None)


@st.composite
def images(draw, max_side=48):
    b = draw(st.integers(1, 3))
    h, w = draw(st.integers(1, max_side)), draw(st.integers(1, max_side))
    c = draw(st.sampled_from([1, 3, 4]))
    dtype = draw(st.sampled_from([torch.float32, torch.float16, torch.bfloat16]))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2 ** 16)))
    x = torch.rand(b, h, w, c, generator=g)
    special = draw(st.sampled_from(["none", "nan", "inf", "out_of_range"]))
    if special == "nan":
        x[0, 0, 0, 0] = float("nan")
    elif special == "inf":
        x[..., -1, :] = float("inf")
    elif special == "out_of_range":
        x = x * 3 - 1
    x = x.to(dtype)
    if draw(st.booleans()):  # non-contiguous: same values, transposed storage
        x = x.transpose(1, 2).contiguous().transpose(1, 2)
    return x


def _fine_or_clear(node_name: str, call):
    try:
        return call()
    except NodeInputError as e:
        assert node_name in str(e), str(e)
        return None


@FUZZ
@given(imgs=images(), mask_kind=st.sampled_from(["empty", "full", "soft", "box", "mismatched", "one_for_all"]),
       data=st.data())
def test_put_inpaint(models, imgs, mask_kind, data):
    b, h, w = imgs.shape[:3]
    if mask_kind == "empty":
        mask = torch.zeros(b, h, w)
    elif mask_kind == "full":
        mask = torch.ones(b, h, w)
    elif mask_kind == "soft":
        mask = torch.rand(b, h, w, generator=torch.Generator().manual_seed(1))
    elif mask_kind == "mismatched":
        mask = torch.ones(b, h + 1, w)
    elif mask_kind == "one_for_all":
        mask = torch.zeros(1, h, w)
        mask[:, : max(1, h // 2)] = 1
    else:
        mask = torch.zeros(b, h, w)
        mask[:, h // 4: max(h // 4 + 1, h // 2), w // 4: max(w // 4 + 1, w // 2)] = 1
    n = data.draw(st.integers(1, 2))
    out = _fine_or_clear("PUT Inpaint", lambda: put_nodes.TransEditPUTInpaint().inpaint(
        models["put"], imgs, mask, num_samples=n, seed=0, schedule="tokens per iteration", tokens_per_iter=0,
        iterations=2, top_k=4, temperature=1.0, order="most confident first (official)",
        output_mode=data.draw(st.sampled_from(put_nodes.OUTPUT_MODES)), context=0.5, feather=2, precision="auto"))
    if mask_kind == "mismatched":
        assert out is None
        return
    assert out is not None
    filled, filled_mask = out
    assert filled.shape == (b * n, h, w, 3) and filled.dtype == torch.float32
    assert torch.isfinite(filled).all() and filled.min() >= 0 and filled.max() <= 1
    assert filled_mask.shape == (b * n, h, w) and filled_mask.dtype == torch.float32


@FUZZ
@given(imgs=images(max_side=80))
def test_invert_then_generate(models, imgs):
    out = _fine_or_clear("Invert", lambda: inv_nodes.TransEditInvert().invert(
        models["encoder"], imgs, "fast (torch)", "auto"))
    if out is None:
        assert min(imgs.shape[1:3]) < 8  # the only refusal: images too small to encode
        return
    (latent,) = out
    assert latent.wplus.shape[0] == imgs.shape[0] and latent.wplus.dtype == torch.float32
    assert torch.isfinite(latent.wplus).all()
    (rendered,) = sg_nodes.TransEditGenerate().generate(models["generator"], latent, "const", 0, "auto")
    assert rendered.shape[0] == imgs.shape[0] and rendered.dtype == torch.float32
    assert rendered.min() >= 0 and rendered.max() <= 1
    # the same latent on a generator of another shape: a clear refusal, not a crash
    with pytest.raises(NodeInputError, match="Generate.*latent"):
        sg_nodes.TransEditGenerate().generate(models["other"], latent, "const", 0, "auto")


@FUZZ
@given(before=images(), after=images())
def test_compare(before, after):
    res = _fine_or_clear("Compare", lambda: compare_nodes.TransEditCompare().compare(before, after))
    if res is None:
        assert compare_nodes.pair_indices(before.shape[0], after.shape[0]) is None
    else:
        pairs = res["ui"][compare_nodes.UI_KEY][0]["pairs"]
        assert len(pairs) == min(after.shape[0], compare_nodes.MAX_PAIRS)


@FUZZ
@given(bad=st.sampled_from(["nan", "wrong_width", "wrong_layers"]))
def test_generate_refuses_bad_latents(models, bad):
    g = models["generator"]
    n, c = g.config.n_latent, g.config.style_dim
    w = {"nan": torch.full((1, n, c), float("nan")), "wrong_width": torch.zeros(1, n, c + 1),
         "wrong_layers": torch.zeros(1, n + 2, c)}[bad]
    with pytest.raises(NodeInputError, match="Generate.*latent"):
        sg_nodes.TransEditGenerate().generate(g, StyleLatent(w), "const", 0, "auto")
