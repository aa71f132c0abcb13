"""Cancel and out-of-memory for every node that works through a batch or a loop.

Cancel: ComfyUI's interrupt is raised at the n-th check; the node must stop there (no further model call)
and a second run must give exactly what a fresh one gives (nothing left behind). PUT's per-pass and Splice's
per-step Cancel are tested the same way in test_nodes_put.py / test_nodes_splice.py.

Out of memory:
a model method is replaced by one that raises the device's out-of-memory exception whenever it is given more
than `limit` items at once (what a full GPU does). Every node must then finish with exactly the result of a
run that had enough memory (smaller chunks, same seeds), or — when not even one item fits — raise an
out-of-memory error (still ComfyUI's OOM class, so ComfyUI unloads models) that names the node and says what
to lower. Cancel is never mistaken for out-of-memory.
"""
from __future__ import annotations

import pytest
import torch

from transedit.random_weights import (save_random_dino, save_random_edit_transformer, save_random_encoder,
                                      save_random_generator, save_random_put)
from transedit.models.splice.training import SpliceTrainer
from transedit.nodes import comfy_bridge as bridge
from transedit.nodes import editing as edit_nodes
from transedit.nodes import inversion as inv_nodes
from transedit.nodes import put as put_nodes
from transedit.nodes import splice as splice_nodes
from transedit.nodes import stylegan as sg_nodes
from conftest import model_folders

FOLDERS = ("stylegan", "gan_encoders", "put", "vit")


@pytest.fixture(scope="module")
def handles(tmp_path_factory):
    with model_folders(tmp_path_factory.mktemp("oom_models"), FOLDERS) as root:
        save_random_generator(root / "stylegan" / "g.pt")
        save_random_encoder(root / "gan_encoders" / "e.pt", family="style_transformer")
        save_random_edit_transformer(root / "gan_encoders" / "ref_edit.pt")
        save_random_put(root / "put" / "p.pth")
        save_random_dino(root / "vit" / "d.safetensors")
        yield dict(
            generator=sg_nodes.TransEditLoadStyleGAN().load("g.pt")[0],
            encoder=inv_nodes.TransEditLoadEncoder().load("e.pt")[0],
            put=put_nodes.TransEditLoadPUT().load("p.pth")[0],
            vit=splice_nodes.TransEditLoadDINO().load("d.safetensors")[0],
            edit=edit_nodes.TransEditLoadEditTransformer().load("ref_edit.pt")[0],
        )


def oom_above(monkeypatch, owner, name: str, limit: int) -> list[int]:
    """Make owner.name raise out-of-memory when its first tensor argument holds more than `limit` items;
    returns the batch sizes it was called with."""
    real = getattr(owner, name)
    sizes: list[int] = []

    def flaky(*args, **kwargs):
        n = next(a.shape[0] for a in list(args) + list(kwargs.values()) if isinstance(a, torch.Tensor))
        sizes.append(n)
        if n > limit:
            raise bridge.oom_exception()("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, flaky)
    return sizes


def picture(b: int, h: int = 40, w: int = 40, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    y = torch.linspace(0, 1, h).view(1, h, 1, 1).expand(b, h, w, 1)
    x = torch.linspace(0, 1, w).view(1, 1, w, 1).expand(b, h, w, 1)
    return (0.6 * torch.cat([y, x, x * y], -1) + 0.4 * torch.rand(b, h, w, 3, generator=g)).clamp(0, 1)


def assert_clear_oom(excinfo, node: str, advice: str) -> None:
    assert isinstance(excinfo.value, bridge.oom_exception())  # ComfyUI still sees an OOM and unloads models
    text = str(excinfo.value)
    assert text.startswith(f"{node}: out of memory") and "Fix:" in text and advice in text, text


# ------------------------------------------------------------------------------------------ the nodes
def generate(handles, latent):
    return sg_nodes.TransEditGenerate().generate(handles["generator"], latent, "random", 3, "fp32")[0]


def test_generate(handles, monkeypatch):
    latent = sg_nodes.TransEditSampleLatent().sample(handles["generator"], 1, 5, 1.0)[0]
    monkeypatch.setattr(sg_nodes.TransEditGenerate, "chunk_size", 5)
    whole = generate(handles, latent)
    module = handles["generator"].load()
    sizes = oom_above(monkeypatch, module, "synthesis", 2)
    torch.testing.assert_close(generate(handles, latent), whole)  # random noise too: seeds follow the image
    assert sizes[:3] == [5, 2, 2] and sum(n for n in sizes if n <= 2) == 5
    oom_above(monkeypatch, module, "synthesis", 0)
    with pytest.raises(torch.OutOfMemoryError) as e:
        generate(handles, latent)
    assert_clear_oom(e, "TransEdit Generate", "precision bf16/fp16")


def test_invert(handles, monkeypatch):
    node = inv_nodes.TransEditInvert()
    monkeypatch.setattr(inv_nodes.TransEditInvert, "chunk_size", 6)
    imgs = picture(6)
    whole = node.invert(handles["encoder"], imgs, "fast (torch)", "fp32")[0].wplus
    module = handles["encoder"].load()
    sizes = oom_above(monkeypatch, module, "forward", 1)
    torch.testing.assert_close(node.invert(handles["encoder"], imgs, "fast (torch)", "fp32")[0].wplus, whole)
    assert sizes[:4] == [6, 3, 1, 1]
    oom_above(monkeypatch, module, "forward", 0)
    with pytest.raises(torch.OutOfMemoryError) as e:
        node.invert(handles["encoder"], imgs, "fast (torch)", "fp32")
    assert_clear_oom(e, "TransEdit Invert", "precision bf16/fp16")


def test_reference_edit(handles, monkeypatch):
    sample = sg_nodes.TransEditSampleLatent().sample
    latent, reference = sample(handles["generator"], 1, 4, 1.0)[0], sample(handles["generator"], 2, 4, 1.0)[0]
    node = edit_nodes.TransEditReferenceEdit()
    whole = node.edit(handles["edit"], latent, reference)[0].wplus
    module = handles["edit"].load()
    sizes = oom_above(monkeypatch, module, "forward", 1)
    torch.testing.assert_close(node.edit(handles["edit"], latent, reference)[0].wplus, whole)
    assert sizes == [4, 2, 1, 1, 1, 1]
    oom_above(monkeypatch, module, "forward", 0)
    with pytest.raises(torch.OutOfMemoryError) as e:
        node.edit(handles["edit"], latent, reference)
    assert_clear_oom(e, "TransEdit Reference Edit", "free GPU memory")


def test_one_item_that_does_not_fit_unloads_other_models_once(handles, monkeypatch):
    """At one item per pass, the node asks ComfyUI to unload every other model (keeping its own) and tries
    once more; the result is the one an unconstrained run gives."""
    latent = sg_nodes.TransEditSampleLatent().sample(handles["generator"], 7, 3, 1.0)[0]
    whole = generate(handles, latent)
    module = handles["generator"].load()
    room = {"free": False}
    kept = []

    def unload_other_models(keep=()):
        kept.append(keep)
        room["free"] = True
        return 2

    real = module.synthesis

    def needs_room(*args, **kwargs):
        if not room["free"]:
            raise bridge.oom_exception()("CUDA out of memory (injected)")
        return real(*args, **kwargs)

    monkeypatch.setattr(bridge, "unload_other_models", unload_other_models)
    monkeypatch.setattr(module, "synthesis", needs_room)
    torch.testing.assert_close(generate(handles, latent), whole)
    assert kept == [(handles["generator"].managed,)]  # once, keeping the generator
    room["free"] = False
    monkeypatch.setattr(bridge, "unload_other_models", lambda keep=(): kept.append(keep) or 0)  # nothing to unload
    oom_above(monkeypatch, module, "synthesis", 0)
    with pytest.raises(torch.OutOfMemoryError):
        generate(handles, latent)
    assert len(kept) == 2


def put_inpaint(handles, imgs, mask, n):
    return put_nodes.TransEditPUTInpaint().inpaint(
        handles["put"], imgs, mask, num_samples=n, seed=11, schedule="tokens per iteration", tokens_per_iter=8,
        iterations=1, top_k=4, temperature=1.0, order="most confident first (official)",
        output_mode="crop around mask", context=0.5, feather=0, precision="fp32")[0]


def test_put_inpaint_splits_the_samples(handles, monkeypatch):
    imgs = picture(2, 48, 48)
    mask = torch.zeros(2, 48, 48)
    mask[:, 12:30, 10:34] = 1
    whole = put_inpaint(handles, imgs, mask, 4)
    model = handles["put"].load()
    sizes = oom_above(monkeypatch, model, "embed", 1)
    torch.testing.assert_close(put_inpaint(handles, imgs, mask, 4), whole)  # sample k keeps seed + k
    assert sizes[:3] == [4, 2, 1]
    oom_above(monkeypatch, model, "embed", 0)
    with pytest.raises(torch.OutOfMemoryError) as e:
        put_inpaint(handles, imgs, mask, 2)
    assert_clear_oom(e, "TransEdit PUT Inpaint", "precision bf16/fp16")


def test_splice_names_what_to_lower(handles, monkeypatch):
    def no_room(self):
        raise bridge.oom_exception()("CUDA out of memory (injected)")

    monkeypatch.setattr(SpliceTrainer, "step", no_room)
    with pytest.raises(torch.OutOfMemoryError) as e:
        splice_nodes.TransEditSplice().splice(handles["vit"], picture(1), picture(1, seed=1), preset="fast", steps=2,
                                              output_size=0, seed=0, early_stop=False, precision="fp32",
                                              preview_every=0)
    assert_clear_oom(e, "TransEdit Splice", "lower output_size")


def test_apply_splice_names_what_to_lower(handles, monkeypatch):
    spliced, gens = splice_nodes.TransEditSplice().splice(
        handles["vit"], picture(1), picture(1, seed=1), preset="fast", steps=1, output_size=0, seed=0,
        early_stop=False, precision="fp32", preview_every=0)
    frames = picture(3, seed=4)
    whole = splice_nodes.TransEditApplySplice().apply(gens, frames, True)[0]
    assert whole.shape == frames.shape
    oom_above(monkeypatch, splice_nodes, "apply_generator", 0)
    with pytest.raises(torch.OutOfMemoryError) as e:
        splice_nodes.TransEditApplySplice().apply(gens, frames, True)
    assert_clear_oom(e, "TransEdit Apply Splice", "smaller images")


def test_cancel_is_not_taken_for_out_of_memory(handles, monkeypatch):
    """ComfyUI's interrupt is an ordinary Exception subclass: it must pass the OOM handler untouched."""
    class InterruptProcessingException(Exception):
        pass

    module = handles["generator"].load()

    def cancelled(*args, **kwargs):
        raise InterruptProcessingException()

    monkeypatch.setattr(module, "synthesis", cancelled)
    latent = sg_nodes.TransEditSampleLatent().sample(handles["generator"], 1, 3, 1.0)[0]
    with pytest.raises(InterruptProcessingException):
        generate(handles, latent)
    assert bridge.oom_exception() is not Exception and not issubclass(InterruptProcessingException,
                                                                      bridge.oom_exception())


# ------------------------------------------------------------------------------------------------ Cancel
class Interrupted(Exception):
    """Stands for ComfyUI's InterruptProcessingException (a plain Exception subclass too)."""


def cancel_at_check(monkeypatch, n: int) -> None:
    calls = {"n": 0}

    def interrupt():
        calls["n"] += 1
        if calls["n"] >= n:
            raise Interrupted()

    monkeypatch.setattr(bridge, "check_interrupt", interrupt)


def counted(monkeypatch, owner, name: str) -> list:
    real = getattr(owner, name)
    calls = []

    def wrapper(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, wrapper)
    return calls


def assert_cancel_stops(monkeypatch, run, owner, name: str, at_check: int, calls_before: int) -> None:
    """run() cancelled at the at_check-th Cancel check has called owner.name exactly calls_before times, and
    a run afterwards equals a fresh one."""
    fresh = run()
    with monkeypatch.context() as m:
        cancel_at_check(m, at_check)
        calls = counted(m, owner, name)
        with pytest.raises(Interrupted):
            run()
    assert len(calls) == calls_before
    assert torch.equal(run(), fresh)


def test_cancel_invert(handles, monkeypatch):
    monkeypatch.setattr(inv_nodes.TransEditInvert, "chunk_size", 1)
    imgs = picture(5)
    # images 0 and 1 encoded; the third check stopped it
    assert_cancel_stops(monkeypatch, lambda: inv_nodes.TransEditInvert().invert(
        handles["encoder"], imgs, "fast (torch)", "fp32")[0].wplus, handles["encoder"].load(), "forward", 3, 2)


def test_cancel_generate(handles, monkeypatch):
    monkeypatch.setattr(sg_nodes.TransEditGenerate, "chunk_size", 1)
    latent = sg_nodes.TransEditSampleLatent().sample(handles["generator"], 4, 5, 1.0)[0]
    assert_cancel_stops(monkeypatch, lambda: generate(handles, latent), handles["generator"].load(), "synthesis",
                        3, 2)


def test_cancel_reference_edit(handles, monkeypatch):
    sample = sg_nodes.TransEditSampleLatent().sample
    latent, reference = sample(handles["generator"], 1, 3, 1.0)[0], sample(handles["generator"], 2, 3, 1.0)[0]
    assert_cancel_stops(monkeypatch, lambda: edit_nodes.TransEditReferenceEdit().edit(
        handles["edit"], latent, reference)[0].wplus, handles["edit"].load(), "forward", 1, 0)


def test_cancel_apply_splice(handles, monkeypatch):
    _, gens = splice_nodes.TransEditSplice().splice(
        handles["vit"], picture(1), picture(1, seed=1), preset="fast", steps=1, output_size=0, seed=0,
        early_stop=False, precision="fp32", preview_every=0)
    frames = picture(4, seed=5)
    assert_cancel_stops(monkeypatch, lambda: splice_nodes.TransEditApplySplice().apply(gens, frames, True)[0],
                        splice_nodes, "apply_generator", 3, 2)


def test_cancel_align_face(monkeypatch):
    pytest.importorskip("mediapipe")
    from transedit.models.face import landmarks as face_landmarks
    from transedit.nodes import faces as face_nodes

    photos = picture(4, 96, 80, seed=2)
    assert_cancel_stops(monkeypatch, lambda: face_nodes.TransEditAlignFace().align(
        photos, face_nodes.MEDIAPIPE, 64, 0, "pass through", "blur")[0],
        face_landmarks.MediaPipeLandmarks, "detect_landmarks", 3, 2)
