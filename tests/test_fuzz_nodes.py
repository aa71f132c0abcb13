"""Property-based tests (hypothesis) of every node that takes pictures, masks, latents or numbers: batch sizes
1..8, image sizes from 1x1 up, 1/3/4 channels, fp16/bf16/non-contiguous tensors, NaN/inf pixels, empty/full/
soft/mismatched masks, latents from another generator or with NaN, layer ranges and strengths at and past their
limits, free-text layer lists. Every case either works with a defined result (shape, fp32, values in range)
or raises a ValueError-style NodeInputError that names the node and the input; nothing else escapes.
(The loaders' only input is a file: tests/test_hostile_files.py covers those.)"""
from __future__ import annotations

import os

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from transedit.models.core.latent import StyleLatent
from transedit.random_weights import (save_random_dino, save_random_edit_transformer, save_random_encoder,
                                      save_random_generator, save_random_put)
from transedit.models.stylegan.generator import StyleGAN2Config
from transedit.nodes import comfy_bridge as bridge
from transedit.nodes import compare as compare_nodes
from transedit.nodes import editing as edit_nodes
from transedit.nodes import faces as face_nodes
from transedit.nodes import inversion as inv_nodes
from transedit.nodes import put as put_nodes
from transedit.nodes import splice as splice_nodes
from transedit.nodes import stylegan as sg_nodes
from transedit.nodes.inputs import MAX_SEED, NodeInputError
from conftest import model_folders

# CI runs the same 20 cases per property every time (derandomised). A deeper, random hunt:
#   TRANSEDIT_FUZZ_EXAMPLES=500 pytest tests/test_fuzz_nodes.py
_DEEP = int(os.environ.get("TRANSEDIT_FUZZ_EXAMPLES", "0"))
FUZZ = settings(max_examples=_DEEP or 20, deadline=None, suppress_health_check=list(HealthCheck),
                derandomize=not _DEEP)
SLOW_FUZZ = settings(FUZZ, max_examples=max(_DEEP // 4, 12))  # nodes that train or detect faces per case
FOLDERS = ("put", "gan_encoders", "stylegan", "vit", "latent_directions")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    with model_folders(tmp_path_factory.mktemp("fuzz_models"), FOLDERS) as root:
        save_random_put(root / "put" / "p.pth")
        save_random_encoder(root / "gan_encoders" / "e.pt", family="e4e")
        save_random_encoder(root / "gan_encoders" / "sp.pt", family="styleprompter")
        save_random_edit_transformer(root / "gan_encoders" / "ref_edit.pt")
        save_random_generator(root / "stylegan" / "other.pt", config=StyleGAN2Config(
            size=32, style_dim=32, n_mlp=2, channels={4: 16, 8: 16, 16: 16, 32: 8}))
        save_random_dino(root / "vit" / "d.safetensors")
        torch.save(torch.randn(1, 64, generator=torch.Generator().manual_seed(1)),
                   root / "latent_directions" / "age.pt")  # InterFaceGAN's layout, for the 64-wide tiny W
        torch.save(torch.randn(3, 32), root / "latent_directions" / "not_a_direction.pt")
        encoder, generator = inv_nodes.TransEditLoadEncoder().load("e.pt")
        sp_encoder, sp_generator = inv_nodes.TransEditLoadEncoder().load("sp.pt")
        vit = splice_nodes.TransEditLoadDINO().load("d.safetensors")[0]
        pic = torch.rand(1, 48, 40, 3, generator=torch.Generator().manual_seed(3))
        _, splice_gen = splice_nodes.TransEditSplice().splice(vit, pic, pic.flip(1), preset="fast", steps=1,
                                                              output_size=0, seed=0, early_stop=False,
                                                              precision="fp32", preview_every=0)
        yield dict(put=put_nodes.TransEditLoadPUT().load("p.pth")[0], encoder=encoder, generator=generator,
                   other=sg_nodes.TransEditLoadStyleGAN().load("other.pt")[0], sp_encoder=sp_encoder,
                   sp_generator=sp_generator, edit=edit_nodes.TransEditLoadEditTransformer().load("ref_edit.pt")[0],
                   vit=vit, splice_gen=splice_gen,
                   sp_latent=inv_nodes.TransEditInvert().invert(sp_encoder, pic.expand(2, -1, -1, -1),
                                                                "fast (torch)", "fp32")[0])


@st.composite
def images(draw, max_side=48, max_batch=3, usual_side=8, batch=None, odd_sides=True):
    """IMAGE batches; two thirds of the sides (all with odd_sides=False) are drawn from usual_side.. (what the
    node accepts) so that both the refusals and the real work get exercised."""
    b = batch if batch is not None else draw(st.integers(1, max_batch))
    usual = st.integers(min(usual_side, max_side), max_side)
    side = st.one_of(st.integers(1, max_side), usual, usual) if odd_sides else usual
    h, w = draw(side), draw(side)
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
        out = call()
    except NodeInputError as e:
        assert node_name in str(e), str(e)
        event(f"{node_name}: refused ({e.input_name})")  # --hypothesis-show-statistics lists what was hit
        return None
    event(f"{node_name}: ran")
    return out


@FUZZ
@given(imgs=images(max_batch=8), mask_kind=st.sampled_from(["empty", "full", "soft", "box", "mismatched", "one_for_all"]),
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
@given(imgs=images(max_side=80, max_batch=8))
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
@given(data=st.data(), b=st.integers(1, 8))
def test_compare(data, b):
    before = data.draw(images(batch=b))
    after = data.draw(images(batch=data.draw(st.sampled_from([b, 1, b + 1]))))
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


# ----------------------------------------------------------------------------------------- latents
@st.composite
def latents(draw, models):
    """A TE_LATENT as a graph may deliver it: from the generator, another generator, a StylePrompter inversion,
    with NaN, fp16 or non-contiguous codes; batch 1..8."""
    kind = draw(st.sampled_from(["sampled", "other_generator", "nan", "fp16", "non_contiguous", "inverted"]))
    if kind == "inverted":
        return models["sp_latent"]
    b = draw(st.integers(1, 8))
    gen = models["other"] if kind == "other_generator" else models["generator"]
    latent = sg_nodes.TransEditSampleLatent().sample(gen, draw(st.integers(0, 50)), b, 0.7)[0]
    w = latent.wplus
    if kind == "nan":
        w = w.clone()
        w[0, 0, 0] = float("nan")
    elif kind == "fp16":
        w = w.half()
    elif kind == "non_contiguous":
        w = w.transpose(1, 2).contiguous().transpose(1, 2)
    return latent.with_wplus(w)


def numbers(lo, hi):
    """Values a widget, a converted input or a hand-edited workflow can carry: mostly inside, also at and past
    the limits."""
    return st.one_of(st.floats(lo, hi), st.floats(lo, hi), st.floats(lo, hi),
                     st.sampled_from([lo, hi, lo - 1, hi + 1, float("nan"), float("inf")]))


def layer_numbers():
    return st.one_of(st.just(-1), st.integers(-1, 12), st.integers(-1, 12),
                     st.sampled_from([-2, edit_nodes.MAX_LAYER, edit_nodes.MAX_LAYER + 1]))


def check_latent_result(node_name, out, batch=None):
    if out is None:
        return
    (latent,) = out
    assert isinstance(latent, StyleLatent) and latent.wplus.dtype == torch.float32, node_name
    if batch is not None:
        assert latent.batch_size == batch, (node_name, latent.batch_size, batch)


@FUZZ
@given(seed=st.one_of(st.integers(0, MAX_SEED), st.sampled_from([-1, MAX_SEED + 1])),
       batch=st.integers(-1, 70), truncation=numbers(0.0, 1.0))
def test_sample_latent(models, seed, batch, truncation):
    out = _fine_or_clear("Sample Latent", lambda: sg_nodes.TransEditSampleLatent().sample(
        models["generator"], seed, batch, truncation))
    valid = 0 <= seed <= MAX_SEED and 1 <= batch <= sg_nodes.MAX_BATCH and 0.0 <= truncation <= 1.0
    assert (out is not None) == valid, (seed, batch, truncation)
    check_latent_result("Sample Latent", out, batch)
    if out is not None:
        assert torch.isfinite(out[0].wplus).all()


@FUZZ
@given(data=st.data(), component=st.integers(-1, 70), start=layer_numbers(), end=layer_numbers(),
       strength=numbers(-edit_nodes.MAX_STRENGTH, edit_nodes.MAX_STRENGTH))
def test_direction_edits(models, data, component, start, end, strength):
    latent = data.draw(latents(models))
    direction = _fine_or_clear("SeFa", lambda: edit_nodes.TransEditSeFa().factorize(
        models["generator"], component, max(start, 0), end))
    if direction is None:
        return
    (direction,) = direction
    finite_in = bool(torch.isfinite(latent.wplus).all())
    out = _fine_or_clear("Apply Direction", lambda: edit_nodes.TransEditApplyDirection().apply(
        latent, direction, strength, start, end))
    check_latent_result("Apply Direction", out, latent.batch_size)
    if out is not None and finite_in:
        assert torch.isfinite(out[0].wplus).all()
    steps = data.draw(st.integers(0, 9))
    out = _fine_or_clear("Latent Sweep", lambda: edit_nodes.TransEditLatentSweep().sweep(
        latent, direction, strength, -strength if strength == strength else 0.0, steps, start, end))
    check_latent_result("Latent Sweep", out, latent.batch_size * steps if out is not None else None)
    if out is not None and finite_in:
        assert torch.isfinite(out[0].wplus).all()


@FUZZ
@given(data=st.data(), layers=st.sampled_from(edit_nodes.LAYER_CHOICES),
       custom=st.text(alphabet="0123456789-, x", max_size=12), weight=numbers(0.0, 1.0))
def test_mix_latents(models, data, layers, custom, weight):
    a, b = data.draw(latents(models)), data.draw(latents(models))
    out = _fine_or_clear("Mix Latents", lambda: edit_nodes.TransEditMixLatents().mix(a, b, layers, custom, weight))
    if out is not None:
        check_latent_result("Mix Latents", out, max(a.batch_size, b.batch_size))
        assert a.batch_size == b.batch_size or 1 in (a.batch_size, b.batch_size)


@FUZZ
@given(data=st.data())
def test_reference_edit(models, data):
    a, b = data.draw(latents(models)), data.draw(latents(models))
    out = _fine_or_clear("Reference Edit", lambda: edit_nodes.TransEditReferenceEdit().edit(models["edit"], a, b))
    if out is not None:
        check_latent_result("Reference Edit", out, max(a.batch_size, b.batch_size))
        assert torch.isfinite(out[0].wplus).all()


@FUZZ
@given(data=st.data(), encoder=st.sampled_from(["sp_encoder", "encoder"]), beta1=numbers(0.0, 2.0),
       beta2=numbers(0.0, 2.0))
def test_smart_refine_then_generate(models, data, encoder, beta1, beta2):
    latent = data.draw(st.one_of(st.just(models["sp_latent"]), latents(models)))
    out = _fine_or_clear("SMART Refine", lambda: inv_nodes.TransEditSMARTRefine().refine(
        latent, models[encoder], beta1, beta2))
    if out is None:
        return
    assert encoder == "sp_encoder" and latent is models["sp_latent"]  # the only latent that carries features
    (rendered,) = sg_nodes.TransEditGenerate().generate(models["sp_generator"], out[0], "const", 0, "auto")
    assert rendered.shape[0] == latent.batch_size and rendered.dtype == torch.float32
    assert rendered.min() >= 0 and rendered.max() <= 1
    with pytest.raises(NodeInputError, match="Generate"):  # another generator cannot render it
        sg_nodes.TransEditGenerate().generate(models["other"], out[0], "const", 0, "auto")


# ----------------------------------------------------------------------------------------- faces
@SLOW_FUZZ
@given(imgs=images(max_side=96, max_batch=4, usual_side=64), data=st.data())
def test_align_face_then_paste_back(imgs, data):
    pytest.importorskip("mediapipe")
    if_no_face = data.draw(st.sampled_from(["pass through", "pass through", "error"]))  # random pictures: no face
    size = data.draw(st.sampled_from([64, 128, 63]))
    out = _fine_or_clear("Align Face", lambda: face_nodes.TransEditAlignFace().align(
        imgs, face_nodes.MEDIAPIPE, size, 0, if_no_face, data.draw(st.sampled_from(face_nodes.PADDING_CHOICES))))
    if out is None:
        return
    aligned, align, _ = out
    b = imgs.shape[0]
    assert aligned.shape == (b, size, size, 3) and aligned.dtype == torch.float32
    assert torch.isfinite(aligned).all() and aligned.min() >= 0 and aligned.max() <= 1
    edited_kind = data.draw(st.sampled_from(["same", "other_size", "same", "not_square", "wrong_batch"]))
    edited = {"same": aligned, "other_size": aligned[:, ::2, ::2],
              "not_square": aligned[:, :, : size // 2], "wrong_batch": aligned[:1].expand(b + 1, -1, -1, -1)}[edited_kind]
    res = _fine_or_clear("Paste Back", lambda: face_nodes.TransEditPasteBack().paste(
        imgs, edited, align, data.draw(st.sampled_from(face_nodes.MASK_SHAPES)),
        data.draw(st.one_of(st.floats(0.0, 0.5), st.floats(0.0, 0.5), numbers(0.0, 0.5))),
        data.draw(st.sampled_from(face_nodes.COLOR_MATCH))))
    if res is None:
        return
    assert edited_kind in ("same", "other_size") or min(edited.shape[1:3]) < 8
    pasted, mask = res
    assert pasted.shape == imgs.shape[:3] + (3,) and pasted.dtype == torch.float32
    assert mask.shape == imgs.shape[:3] and mask.dtype == torch.float32
    assert torch.isfinite(pasted).all() and pasted.min() >= 0 and pasted.max() <= 1


# ----------------------------------------------------------------------------------------- splice
@SLOW_FUZZ
@given(data=st.data(), odd=st.sampled_from([False, False, True]),
       output_size=st.sampled_from([0, 40, 64, 0, 16, -1]))
def test_splice(models, data, odd, output_size):
    structure = data.draw(images(max_side=72, max_batch=2, usual_side=40, odd_sides=odd))
    appearance = data.draw(images(max_side=72, max_batch=2, usual_side=40, odd_sides=odd))
    out = _fine_or_clear("Splice", lambda: splice_nodes.TransEditSplice().splice(
        models["vit"], structure, appearance, preset="fast", steps=1, output_size=output_size, seed=0,
        early_stop=False, precision="fp32", preview_every=0))
    if out is None:
        return
    spliced, gens = out
    pairs = max(structure.shape[0], appearance.shape[0])
    assert spliced.shape[0] == pairs == len(gens) and spliced.shape[-1] == 3 and spliced.dtype == torch.float32
    assert torch.isfinite(spliced).all() and spliced.min() >= 0 and spliced.max() <= 1


@FUZZ
@given(imgs=images(max_side=96, max_batch=8, usual_side=40), match=st.booleans())
def test_apply_splice(models, imgs, match):
    out = _fine_or_clear("Apply Splice", lambda: splice_nodes.TransEditApplySplice().apply(
        models["splice_gen"], imgs, match))
    if out is None:
        assert min(imgs.shape[1:3]) < splice_nodes.MIN_SIDE or max(imgs.shape[1:3]) / min(imgs.shape[1:3]) > 8
        return
    (repainted,) = out
    assert repainted.shape == imgs.shape[:3] + (3,) and repainted.dtype == torch.float32
    assert torch.isfinite(repainted).all() and repainted.min() >= 0 and repainted.max() <= 1


# ----------------------------------------------------------------------------------------- loaders
LOADER_CALLS = {  # node -> (model folder, call)
    "Load StyleGAN": ("stylegan", lambda name: sg_nodes.TransEditLoadStyleGAN().load(name)),
    "Load Encoder": ("gan_encoders", lambda name: inv_nodes.TransEditLoadEncoder().load(name)),
    "Load Edit Transformer": ("gan_encoders", lambda name: edit_nodes.TransEditLoadEditTransformer().load(name)),
    "Load DINO": ("vit", lambda name: splice_nodes.TransEditLoadDINO().load(name)),
    "Load PUT": ("put", lambda name: put_nodes.TransEditLoadPUT().load(name)),
    "Load Direction": ("latent_directions", lambda name: edit_nodes.TransEditLoadDirection().load(name, 0)),
}


@FUZZ
@given(loader=st.sampled_from(sorted(LOADER_CALLS)),
       name=st.one_of(st.text(max_size=24), st.sampled_from(["../../etc/passwd", "", ".", "/", "p.pth", "e.pt",
                                                             "../stylegan/other.pt", "/etc/hostname"])))
def test_loaders_with_names_that_are_not_their_files(models, loader, name):
    """A workflow from another machine names files this one lacks (or a hand-edited one names anything):
    a clear refusal, or — when the name is one of this folder's files — a load. A name never reaches out of
    the model folder."""
    folder, call = LOADER_CALLS[loader]
    out = _fine_or_clear(loader, lambda: call(name))
    if out is not None:
        root = os.path.normpath(bridge.folder_paths_for(folder)[0])
        assert os.path.commonpath([root, os.path.normpath(os.path.join(root, name))]) == root, name


@FUZZ
@given(data=st.data(), component=st.integers(-2, 5000),
       generator=st.sampled_from([None, "generator", "other", "not a generator"]))
def test_load_direction(models, data, component, generator):
    choices = edit_nodes.TransEditLoadDirection.INPUT_TYPES()["required"]["direction"][0]
    direction = data.draw(st.sampled_from(choices))
    gen = models.get(generator, generator)
    out = _fine_or_clear("Load Direction", lambda: edit_nodes.TransEditLoadDirection().load(direction, component,
                                                                                             gen))
    if out is None:
        return
    latent = sg_nodes.TransEditSampleLatent().sample(models["generator"], 0, 2, 0.7)[0]
    edited = _fine_or_clear("Apply Direction", lambda: edit_nodes.TransEditApplyDirection().apply(
        latent, out[0], 1.0, -1, -1))
    check_latent_result("Apply Direction", edited, 2)
