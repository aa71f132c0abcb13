"""End-to-end: a real headless ComfyUI (CPU) loads the pack and runs every workflows/*.json over HTTP.

The server gets tiny random weights under the file names the workflows ask for (generators, encoders,
InterFaceGAN-style directions), a real face photo (scikit-image's astronaut, 512x512) under the name each
LoadImage asks for, and, under the name of the workflows' Stable Diffusion checkpoint, a random-weight SD 1.5
stand-in built from ComfyUI's own classes (tests/sd15_stand_in.py): the `*_to_diffusion` workflows run through
Load Checkpoint, VAE Encode, KSampler and VAE Decode (on smaller copies of the pictures and two sampling steps,
to keep the CPU time down). Test-only probe nodes (probe_nodes/) record what crosses the links between the
pack's nodes and ComfyUI's. The tests skip only when ComfyUI cannot be installed (no package index); with
TRANSEDIT_REQUIRE_E2E=1 (CI) they fail instead.

Over 600 lines: every test here shares one module-scoped server (splitting the file would start another).
"""
from __future__ import annotations

import copy
import json
import sys
import urllib.parse
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for comfy_harness
import comfy_harness as h  # noqa: E402
import workflow_graph as wg  # noqa: E402
from example_clip import EXAMPLE_CLIP_NAME, read_video, true_landmarks  # noqa: E402

pytestmark = pytest.mark.e2e

WORKFLOWS = wg.workflow_files()
OTHER_GENERATOR = "tiny-other-32px.pt"  # a generator with another latent shape
INVERT_WORKFLOW = wg.WORKFLOWS_DIR / "invert_reconstruct.json"
EDIT_WORKFLOW = wg.WORKFLOWS_DIR / "invert_edit.json"
DIFFUSION_WORKFLOW = wg.WORKFLOWS_DIR / "edit_to_diffusion.json"
SPLICE_WORKFLOW = wg.WORKFLOWS_DIR / "splice.json"
# What each workflow's diffusion part is made of: dropped when there is no SD checkpoint.
DIFFUSION_PART = {"CheckpointLoaderSimple", "CLIPTextEncode", "VAEEncode", "SetLatentNoiseMask", "KSampler",
                  "VAEDecode", "ImageCompositeMasked", "SaveImage"}
DIFFUSION_PARTS = {
    DIFFUSION_WORKFLOW: DIFFUSION_PART,
    wg.WORKFLOWS_DIR / "splice_to_diffusion.json": DIFFUSION_PART - {"SetLatentNoiseMask", "ImageCompositeMasked"},
    wg.WORKFLOWS_DIR / "put_to_diffusion.json": DIFFUSION_PART,
}
SD_CHECKPOINT = "v1-5-pruned-emaonly.safetensors"  # what the diffusion workflows load
# e2e only: the diffusion half runs on copies of the pictures scaled to this long side (VAE Encode/Decode of a
# 512 px picture costs about 30 CPU-seconds with the stand-in's full-size VAE), and on two PUT fills
SMALL_SIDE = 256
E2E_DIFFUSION_OVERRIDES = {"TransEditPUTInpaint": {"num_samples": 2}}
NOT_A_CHECKPOINT = "e2e-not-a-checkpoint.safetensors"  # a file that is listed but cannot be loaded
NO_FACE_IMAGE = "e2e_no_face.png"  # put into the running server's input/ by the test that needs it
CORNER = 48  # side of the corner patches that paste-back must leave untouched (the face is mid-top)


@pytest.fixture(scope="module")
def server(comfy_root, tmp_path_factory):
    tiny_dir = tmp_path_factory.mktemp("tiny_weights")
    workflows = [wg.load_workflow(p) for p in WORKFLOWS]
    models, _ = h.prepare_models(workflows, [], tiny_dir)
    inputs, _ = h.prepare_inputs(workflows, [], tmp_path_factory.mktemp("input_images"))

    from transedit.random_weights import save_random_generator
    from transedit.models.stylegan.generator import StyleGAN2Config

    other = save_random_generator(tiny_dir / OTHER_GENERATOR, seed=1, config=StyleGAN2Config(
        size=32, style_dim=32, n_mlp=2, channels={4: 16, 8: 16, 16: 16, 32: 8}))
    models.setdefault("stylegan", {})[OTHER_GENERATOR] = other
    models["checkpoints"] = {SD_CHECKPOINT: h.stable_diffusion_stand_in(comfy_root)}
    small_dir = tmp_path_factory.mktemp("small_inputs")
    inputs.update({_small(name): _write_small(path, small_dir / _small(name)) for name, path in list(inputs.items())
                   if not name.lower().endswith(h.VIDEO_SUFFIXES)})
    with h.ComfyServer(comfy_root, models=models, inputs=inputs,
                       custom_nodes={h.PACK_FOLDER_NAME: h.REPO, "transedit_test_probe": PROBE_NODES}) as srv:
        print(f"\nComfyUI ready in {srv.startup_seconds:.1f} s at {srv.url}")
        yield srv


PROBE_NODES = Path(__file__).resolve().parent / "probe_nodes"


def _small(name: str) -> str:
    return f"small_{name}"


def _write_small(src: Path, dest: Path) -> Path:
    """A copy of a picture scaled to SMALL_SIDE on its long side (alpha, i.e. Load Image's MASK, included)."""
    from PIL import Image

    with Image.open(src) as im:
        im.load()
        scale = SMALL_SIDE / max(im.size)
        im.resize((round(im.width * scale), round(im.height * scale)), Image.LANCZOS).save(dest, format="PNG")
    return dest


def _pixels(images) -> list[np.ndarray]:
    """Every saved picture, and every frame of every saved clip, as int16 RGB."""
    found = []
    for img in images:
        if img.filename.lower().endswith(h.VIDEO_SUFFIXES):
            found.extend(frame.astype(np.int16) for frame in read_video(img.path)[0])
        else:
            found.append(np.asarray(img.open().convert("RGB"), dtype=np.int16))
    return found


def _nodes_of(prompt: dict, class_type: str) -> list[str]:
    return [k for k, v in prompt.items() if v["class_type"] == class_type]


def _stylegan_prompt(server) -> dict:
    return wg.ui_to_api(wg.load_workflow(wg.WORKFLOWS_DIR / "stylegan_generate.json"), server.object_info())


def _invert_prompt(server) -> dict:
    return wg.ui_to_api(wg.load_workflow(INVERT_WORKFLOW), server.object_info())


def _edit_prompt(server) -> dict:
    return wg.ui_to_api(wg.load_workflow(EDIT_WORKFLOW), server.object_info())


def _runnable_prompt(server, ui_workflow: dict) -> tuple[dict, list[str]]:
    """The workflow as an API prompt without the parts that need weights only the user has (the SD
    checkpoint and what depends on it); returns (prompt, dropped node ids)."""
    prompt = wg.ui_to_api(ui_workflow, server.object_info())
    h.shorten_for_tiny_weights(prompt)  # Splice: a few steps on the tiny DINO
    return h.without_unavailable_user_models(prompt, server.object_info())


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
        source_id, load = _upstream(prompt, paste_id, "original")
        while load["class_type"] == "TransEditPasteBack":  # a chain: some faces pasted into another paste's result
            source_id, load = _upstream(prompt, source_id, "original")
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
    wf = wg.load_workflow(path)
    for key in ("last_node_id", "last_link_id", "nodes", "links", "groups", "config", "extra", "version"):
        assert key in wf, f"{path.name}: missing '{key}'"
    ids = {n["id"] for n in wf["nodes"]}
    assert len(ids) == len(wf["nodes"]) and max(ids) <= wf["last_node_id"]
    by_id = {n["id"]: n for n in wf["nodes"]}
    for link_id, src, src_slot, dst, dst_slot, type_ in wf["links"]:
        assert link_id <= wf["last_link_id"]
        assert link_id in by_id[src]["outputs"][src_slot]["links"], f"link {link_id} not in its source's outputs"
        assert by_id[dst]["inputs"][dst_slot]["link"] == link_id, f"link {link_id} not on its target's input"
        assert by_id[src]["outputs"][src_slot]["type"] == type_
        assert by_id[dst]["inputs"][dst_slot]["type"] in (type_, "*")  # "*": an input that takes any type
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
    directions = info["TransEditLoadDirection"]["input"]["required"]["direction"][0]
    assert "age.pt" in directions and "smile.pt" in directions, directions
    assert any(d.startswith("preset: ") for d in directions) and any(d.startswith("sefa: ") for d in directions)
    detectors = info["TransEditAlignFace"]["input"]["required"]["detector"][0]
    assert detectors[0] == "retinaface: detection_Resnet50_Final.pth" and "mediapipe (bundled models)" in detectors


def test_workflow_input_images_are_in_the_input_folder(server):
    info = server.object_info()
    pictures = info["LoadImage"]["input"]["required"]["image"][0]
    clips = info.get("LoadVideo", {}).get("input", {}).get("required", {}).get("file")
    clips = [] if clips is None else clips[0] if isinstance(clips[0], list) else clips[1].get("options", [])
    for path in WORKFLOWS:
        for name in h.workflow_input_files(wg.load_workflow(path)):
            is_clip = name.lower().endswith(h.VIDEO_SUFFIXES)
            listed, loader = (clips, "LoadVideo") if is_clip else (pictures, "LoadImage")
            assert name in listed, f"{path.name} loads {name}, which {loader} does not list"


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_workflow_nodes_and_link_types_match_object_info(server, path):
    """Every node type is one this ComfyUI knows, and every link joins an output and an input of the same
    type (or "*"), as /object_info declares them: what the frontend checks when it loads the file."""
    problems = wg.check_workflow_types(wg.load_workflow(path), server.object_info())
    assert not problems, f"{path.name}:\n" + "\n".join(problems)


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_workflow_model_files_are_listed(server, path):
    """The file names the pack's loaders ask for are the ones their COMBOs list (models/<folder>/<name>)."""
    info = server.object_info()
    wf = wg.load_workflow(path)
    for (node_type, input_name), folder in h.MODEL_INPUTS.items():
        listed = info[node_type]["input"]["required"][input_name][0]
        for f, name in h.workflow_model_files(wf):
            if f == folder:
                shown = h.FILE_PREFIXES.get((node_type, input_name), "") + name
                assert shown in listed, f"{path.name}: {node_type}.{input_name} = {shown!r} is not listed"


@pytest.mark.parametrize("path", [p for p in WORKFLOWS if p not in DIFFUSION_PARTS], ids=lambda p: p.name)
def test_workflow_runs(server, path):
    """Every workflow without a diffusion half runs whole (those with one: test_diffusion_chain_runs_through)."""
    prompt, dropped = _runnable_prompt(server, wg.load_workflow(path))
    assert not dropped, f"{path.name}: needs {dropped}, which only the user can supply"
    assert wg.output_node_ids(prompt, server.object_info()), f"{path.name}: nothing left to run"
    history = server.run(prompt)
    assert history["status"]["status_str"] == "success" and history["status"]["completed"]
    images = server.output_images(history)
    assert images, f"{path.name} saved no image"
    for img in images:
        assert img.path is not None and img.path.is_file(), img
    pixels = _pixels(images)
    for arr in pixels:
        assert arr.std() > 1.0, "an output image is (nearly) constant"

    # Paste Back into a loaded photo: the photo's size, changed in a part of it. The tiny RetinaFace sees a
    # face in every anchor box, so *where* is checked with a real detector (test_paste_back_changes_only_the_face).
    for save, photo_name in _pasted_photos(prompt):
        photo = _input_pixels(server, photo_name)
        saved = _saved_by(server, history, save)
        assert saved, f"SaveImage {save} saved nothing"
        for arr in saved:
            assert arr.shape == photo.shape, (arr.shape, photo.shape)
            changed = np.abs(arr - photo).max(-1) > 0
            assert changed.mean() > 0.02, f"only {changed.mean():.2%} of the photo changed"
            assert (~changed.any(1)).any() or (~changed.any(0)).any(), "the paste covers the whole photo"

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


# ------------------------------------------------------------------------------------ face stage
MEDIAPIPE = "mediapipe (bundled models)"
# photo workflows (the clip's own test checks where its paste lands: test_face_video_runs_from_a_clip_to_a_clip)
FACE_WORKFLOWS = [p for p in WORKFLOWS if "TransEditAlignFace" in p.read_text() and "LoadVideo" not in p.read_text()]


def _with_real_detector(prompt: dict) -> dict:
    """Align Face with mediapipe (a real detector: the tiny RetinaFace finds a face everywhere), or skip."""
    pytest.importorskip("mediapipe", reason="where a face is found needs a real detector: mediapipe is not "
                        "installed in this environment (the tiny test RetinaFace sees a face in every box)")
    for node_id in _nodes_of(prompt, "TransEditAlignFace"):
        prompt[node_id]["inputs"]["detector"] = MEDIAPIPE
    return prompt


def _assert_only_the_face_changed(photo_name: str, photo: np.ndarray, arr: np.ndarray) -> None:
    assert arr.shape == photo.shape, (arr.shape, photo.shape)
    # LoadImage's uint8 -> /255 float32 and SaveImage's *255 -> truncating uint8 give back the same byte for all
    # 256 values, and paste-back leaves pixels outside the face square as they came, so the corners match exactly.
    for ys in (slice(0, CORNER), slice(-CORNER, None)):
        for xs in (slice(0, CORNER), slice(-CORNER, None)):
            assert np.array_equal(arr[ys, xs], photo[ys, xs]), "paste-back changed a photo corner"
    changed = np.abs(arr - photo).max(-1) > 0
    assert changed.mean() > 0.02, f"only {changed.mean():.2%} of the photo changed"
    rows, cols = np.nonzero(changed)
    centre = (rows.mean() / photo.shape[0], cols.mean() / photo.shape[1])
    if photo_name == "transedit_example_face.png":  # the astronaut: face in the upper middle
        assert 0.1 < centre[0] < 0.45 and 0.25 < centre[1] < 0.6, centre
        # every change lies in the head's neighbourhood (her face spans about rows 40-190, columns 150-300 of
        # 512; the pasted square is larger than the face)
        H, W = photo.shape[:2]
        assert rows.max() < 0.55 * H and 0.15 * W < cols.min() and cols.max() < 0.75 * W, \
            (rows.min(), rows.max(), cols.min(), cols.max())
        face = changed[int(0.12 * H):int(0.3 * H), int(0.35 * W):int(0.52 * W)]
        assert face.mean() > 0.9, f"only {face.mean():.0%} of the face centre changed"
    if photo_name == "transedit_group_photo.png":  # faces: all: every face changed, not only the largest
        for x, y, side, _ in h.GROUP_HEADS:
            cx, cy, r = int(x + 0.54 * side), int(y + 0.41 * side), int(0.05 * side)
            assert changed[cy - r:cy + r, cx - r:cx + r].mean() > 0.9, f"the face at x={cx}, y={cy} was not pasted"
    assert (~changed.any(1)).any(), "every row changed: the paste covers the whole photo"


def test_the_group_photo_check_sees_a_face_left_out():
    """Planted: a paste that changed two of the group photo's three faces fails the check (no server needed)."""
    photo = h.make_group_photo().astype(np.int16)
    pasted = photo.copy()
    for x, y, side, _ in h.GROUP_HEADS[:2]:
        pasted[y + side // 5:y + 3 * side // 4, x + side // 4:x + 3 * side // 4] += 9
    with pytest.raises(AssertionError, match="was not pasted"):
        _assert_only_the_face_changed("transedit_group_photo.png", photo, pasted)
    x, y, side, _ = h.GROUP_HEADS[2]
    pasted[y + side // 5:y + 3 * side // 4, x + side // 4:x + 3 * side // 4] += 9
    _assert_only_the_face_changed("transedit_group_photo.png", photo, pasted)


@pytest.mark.parametrize("path", FACE_WORKFLOWS, ids=lambda p: p.name)
def test_paste_back_changes_only_the_face(server, path):
    """The face workflows with a real detector on the real photo: the pasted result differs from the photo in
    and around the face only."""
    prompt, _ = _runnable_prompt(server, wg.load_workflow(path))
    prompt, _ = wg.drop_nodes(prompt, _nodes_of(prompt, "CheckpointLoaderSimple"))  # the paste is what is checked
    _with_real_detector(prompt)
    history = server.run(prompt)
    pasted = _pasted_photos(prompt)
    assert pasted, f"{path.name} pastes nothing back"
    for save, photo_name in pasted:
        photo = _input_pixels(server, photo_name)
        saved = _saved_by(server, history, save)
        assert saved, f"SaveImage {save} saved nothing"
        for arr in saved:
            _assert_only_the_face_changed(photo_name, photo, arr)


def test_photo_without_a_face_fails_in_align_face(server, tmp_path):
    server.add_input(NO_FACE_IMAGE, _write_no_face_photo(tmp_path / NO_FACE_IMAGE))
    prompt = _with_real_detector(_invert_prompt(server))
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
    prompt = _with_real_detector(_invert_prompt(server))
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


# ------------------------------------------------------------------------------------ face video
VIDEO_WORKFLOW = wg.WORKFLOWS_DIR / "face_video_edit.json"
VIDEO_NODES = ("LoadVideo", "GetVideoComponents", "CreateVideo", "SaveVideo")


def _face_boxes(count: int, frame_hw) -> np.ndarray:
    """[T, 4] (x0, y0, x1, y1) around the astronaut's eyes and mouth in each frame of the example clip."""
    pts = true_landmarks(count, frame_hw)
    return np.concatenate([pts.min(axis=1), pts.max(axis=1)], axis=1)


def test_face_video_runs_from_a_clip_to_a_clip(server):
    """face_video_edit.json over the API: ComfyUI's core video nodes read the example clip (the astronaut moving
    along a known path), Align Face in video mode follows her with a real detector, the edit and Smooth Latents
    run on every frame, Paste Back and Create Video / Save Video write a clip of the same length, size and frame
    rate, changed around her face and nowhere else; the report names the frames."""
    info = server.object_info()
    missing = [n for n in VIDEO_NODES if n not in info]
    if missing:
        pytest.skip(f"this ComfyUI has no core video nodes {missing}")
    prompt, dropped = _runnable_prompt(server, wg.load_workflow(VIDEO_WORKFLOW))
    assert not dropped
    _with_real_detector(prompt)
    (align,) = _nodes_of(prompt, "TransEditAlignFace")
    assert prompt[align]["inputs"]["temporal_mode"] == "video"
    (load,) = _nodes_of(prompt, "LoadVideo")
    assert prompt[load]["inputs"]["file"] == EXAMPLE_CLIP_NAME
    history = server.run(prompt)
    assert history["status"]["status_str"] == "success"
    clips = [img for img in server.output_images(history) if img.filename.lower().endswith(h.VIDEO_SUFFIXES)]
    assert len(clips) == 1, server.output_images(history)
    out, fps = read_video(clips[0].path)
    source, source_fps = read_video(server.input_dir / EXAMPLE_CLIP_NAME)
    assert out.shape == source.shape and fps == pytest.approx(source_fps)
    diff = np.abs(out.astype(np.int16) - source.astype(np.int16)).max(-1)
    boxes = _face_boxes(len(source), source.shape[1:3])
    for t, (x0, y0, x1, y1) in enumerate(boxes.astype(int)):
        face = diff[t, y0:y1, x0:x1]
        assert face.mean() > 12, f"frame {t}: the face did not change ({face.mean():.1f})"
        # far from the face only the two H.264 encodings differ
        w = x1 - x0
        far = np.ones(diff.shape[1:], dtype=bool)
        far[max(y0 - 2 * w, 0):y1 + 2 * w, max(x0 - 2 * w, 0):x1 + 2 * w] = False
        rest = diff[t][far]  # re-encoding alone: a median of 1-2 levels here, ~20 on the suit's sharp edges
        assert np.median(rest) <= 3 and rest.mean() < min(6.0, face.mean() / 5), \
            f"frame {t}: the paste reached beyond the face (median {np.median(rest)}, mean {rest.mean():.1f})"
    (report,) = _nodes_of(prompt, "PreviewAny")
    text = "".join(history["outputs"][report]["text"])
    assert f"video mode: {len(source)} frames" in text and "person followed from frame 0" in text, text


# ------------------------------------------------------------------------------------ editing
def _pasted(server, prompt: dict, prefix: str) -> np.ndarray:
    (save, _), = _pasted_photos(prompt)
    prompt[save]["inputs"]["filename_prefix"] = prefix
    saved = _saved_by(server, server.run(prompt), save)
    assert len(saved) == 1
    return saved[0]


def test_edits_change_the_face_and_strength_zero_reconstructs(server):
    """Invert + Apply Direction (age, smile) + Paste Back: with both strengths 0 the photo equals what
    invert_reconstruct.json gives (same encoder, same alignment); with the workflow's strengths the face
    changes, and only the face."""
    recon = _pasted(server, _with_real_detector(_invert_prompt(server)), "e2e/recon")
    prompt = _with_real_detector(_edit_prompt(server))
    appliers = _nodes_of(prompt, "TransEditApplyDirection")
    assert len(appliers) == 2
    files = sorted(_upstream(prompt, a, "direction")[1]["inputs"]["direction"] for a in appliers)
    assert files == ["age.pt", "smile.pt"]
    assert all(prompt[a]["inputs"]["strength"] != 0 for a in appliers)
    edited = _pasted(server, copy.deepcopy(prompt), "e2e/edited")
    for a in appliers:
        prompt[a]["inputs"]["strength"] = 0.0
    unedited = _pasted(server, prompt, "e2e/strength0")
    assert np.abs(unedited - recon).max() <= 1, "strength 0 should give the plain reconstruction"
    diff = np.abs(edited - recon).max(-1)
    assert diff.max() > 8 and (diff > 2).mean() > 0.01, "the edit changed (almost) nothing"
    assert np.array_equal(edited[:CORNER, :CORNER], recon[:CORNER, :CORNER])


def test_latent_sweep_strip(server):
    """invert_edit.json's sweep: `steps` different faces, from -3 to +3 along age; its middle step
    (strength 0) is the unedited inversion, as Generate draws it from Invert's latent."""
    prompt = _edit_prompt(server)
    sweep = _nodes_of(prompt, "TransEditLatentSweep")[0]
    inputs = prompt[sweep]["inputs"]
    steps = inputs["steps"]
    assert steps % 2 == 1 and inputs["from_strength"] == -inputs["to_strength"] != 0
    (gen,) = [g for g in _nodes_of(prompt, "TransEditGenerate") if prompt[g]["inputs"]["latent"][0] == sweep]
    (save,) = [k for k in _nodes_of(prompt, "SaveImage") if prompt[k]["inputs"]["images"][0] == gen]
    invert = inputs["latent"][0]
    assert prompt[invert]["class_type"] == "TransEditInvert"
    plain = str(max(int(k) for k in prompt) + 1)
    prompt[plain] = {"class_type": "TransEditGenerate",
                     "inputs": {**prompt[gen]["inputs"], "latent": [invert, 0]}}
    preview = str(int(plain) + 1)
    prompt[preview] = {"class_type": "PreviewImage", "inputs": {"images": [plain, 0]}}
    prompt, _ = wg.drop_nodes(prompt, _nodes_of(prompt, "TransEditPasteBack"))  # not needed here
    history = server.run(prompt)
    strip = _saved_by(server, history, save)
    (middle,) = _saved_by(server, history, preview)
    assert len(strip) == steps
    for arr in strip:
        assert arr.shape == (h.TINY_STYLEGAN_SIZE, h.TINY_STYLEGAN_SIZE, 3)
    for a, b in zip(strip, strip[1:]):
        assert np.abs(a - b).max() > 8, "two neighbouring sweep steps look the same"
    assert np.abs(strip[steps // 2] - middle).max() <= 2, "the sweep's strength-0 step is not the inversion"


# ---------------------------------------------------------------------------------- diffusion
def _diffusion_prompt(server, path: Path = DIFFUSION_WORKFLOW) -> dict:
    return wg.ui_to_api(wg.load_workflow(path), server.object_info())


def _add_probe(prompt: dict, node_id: str, input_name: str, kind: str, label: str) -> None:
    """Put a pass-through probe (probe_nodes/) on the link into node_id's input_name."""
    probe = str(max(int(k) for k in prompt) + 1)
    field = {"Image": "image", "Mask": "mask", "Latent": "samples"}[kind]
    prompt[probe] = {"class_type": f"TransEditTestProbe{kind}",
                     "inputs": {field: prompt[node_id]["inputs"][input_name], "label": label}}
    prompt[node_id]["inputs"][input_name] = [probe, 0]


def _probed(server, label: str) -> tuple[dict, dict]:
    """(tensors, their dtype/device/shape/range as the probe saw them) recorded under label."""
    from safetensors.numpy import load_file

    folder = server.output_dir / "transedit_probe"
    return load_file(str(folder / f"{label}.safetensors")), json.loads((folder / f"{label}.json").read_text())


def _latent_mask(noise_mask: np.ndarray, shape) -> np.ndarray:
    """The noise mask at the latent's size, as KSampler applies it (bilinear, ComfyUI's prepare_mask)."""
    import torch

    m = torch.from_numpy(noise_mask).reshape(-1, 1, *noise_mask.shape[-2:])
    m = torch.nn.functional.interpolate(m, size=tuple(shape[-2:]), mode="bilinear")
    return m.numpy()[:, 0]


@pytest.mark.parametrize("path", list(DIFFUSION_PARTS), ids=lambda p: p.name)
def test_diffusion_chain_runs_through(server, path):
    """A *_to_diffusion workflow runs through Load Checkpoint, VAE Encode, KSampler and VAE Decode on the SD 1.5
    stand-in. What crosses from the pack to ComfyUI's nodes is what they expect (VAE Encode gets an fp32
    [B, H, W, 3] IMAGE in 0..1, finite, of the size the pack saved); the result is finite. Where the workflow masks
    the diffusion (Set Latent Noise Mask with the pack's MASK), KSampler changes the latent inside the mask and
    leaves it bit for bit outside, and the saved picture (Image Composite Masked with the same mask) keeps every
    pixel outside the mask as the pack made it and changes the inside."""
    prompt = _diffusion_prompt(server, path)
    h.shorten_for_tiny_weights(prompt)
    h.shorten_for_tiny_weights(prompt, h.STAND_IN_DIFFUSION_OVERRIDES)
    h.shorten_for_tiny_weights(prompt, E2E_DIFFUSION_OVERRIDES)
    for node in prompt.values():
        if node["class_type"] == "LoadImage":
            node["inputs"]["image"] = _small(node["inputs"]["image"])
    assert {prompt[k]["class_type"] for k in prompt} >= DIFFUSION_PARTS[path]
    (encode,) = _nodes_of(prompt, "VAEEncode")
    (sampler,) = _nodes_of(prompt, "KSampler")
    (decode,) = _nodes_of(prompt, "VAEDecode")
    pack_id, pack = _upstream(prompt, encode, "pixels")
    assert pack["class_type"].startswith("TransEdit"), pack
    (before_save,) = [k for k in _nodes_of(prompt, "SaveImage") if _upstream(prompt, k, "images")[0] == pack_id]
    (final_save,) = [k for k in _nodes_of(prompt, "SaveImage") if k != before_save]
    masks = _nodes_of(prompt, "SetLatentNoiseMask")
    _add_probe(prompt, encode, "pixels", "Image", "to_vae_encode")
    _add_probe(prompt, sampler, "latent_image", "Latent", "into_ksampler")
    _add_probe(prompt, decode, "samples", "Latent", "out_of_ksampler")
    if masks:
        _add_probe(prompt, masks[0], "mask", "Mask", "pack_mask")
    history = server.run(prompt)
    assert history["status"]["status_str"] == "success" and history["status"]["completed"]

    before = _saved_by(server, history, before_save)
    final = _saved_by(server, history, final_save)
    pixels, meta = _probed(server, "to_vae_encode")
    image = meta["image"]
    assert image["dtype"] == "float32" and image["finite"] and 0.0 <= image["min"] and image["max"] <= 1.0, image
    assert image["device"] == "cpu" and len(image["shape"]) == 4 and image["shape"][-1] == 3, image
    assert image["shape"][0] == len(before) == len(final) and tuple(image["shape"][1:3]) == before[0].shape[:2]
    for sent, saved in zip(pixels["image"], before):  # the IMAGE VAE Encode got is the one saved (8 bits, truncated)
        assert np.abs(sent * 255 - saved).max() <= 1.0
    latents_in, _ = _probed(server, "into_ksampler")
    latents_out, out_meta = _probed(server, "out_of_ksampler")
    assert out_meta["samples"]["finite"], out_meta
    assert latents_out["samples"].shape == latents_in["samples"].shape
    assert latents_in["samples"].shape[-2:] == (image["shape"][1] // 8, image["shape"][2] // 8)
    for arr in final:
        assert arr.shape == before[0].shape and arr.std() > 1.0
    changed_latent = np.abs(latents_out["samples"] - latents_in["samples"]).max(1)  # over the 4 channels
    if not masks:  # img2img of the whole picture
        assert changed_latent.mean() > 0.01, "KSampler changed nothing"
        return

    mask, _ = _probed(server, "pack_mask")
    mask = mask["mask"]
    assert mask.shape[0] in (1, len(before)) and mask.shape[-2:] == before[0].shape[:2], mask.shape
    assert 0.01 < (mask > 0.5).mean() < 0.9, "the pack's MASK covers nothing or everything"
    assert np.array_equal(latents_in["noise_mask"].reshape(mask.shape), mask)  # Set Latent Noise Mask carries the MASK
    lat_mask = np.broadcast_to(_latent_mask(mask, changed_latent.shape), changed_latent.shape)
    # outside: the latent it was given, up to the SD latent scaling (x * 0.18215 / 0.18215) in float32
    assert changed_latent[lat_mask == 0].max() <= 1e-5 * np.abs(latents_in["samples"]).max(), \
        "KSampler changed the latent outside the mask"
    assert changed_latent[lat_mask == 1].mean() > 0.01, "KSampler did not change the latent inside the mask"
    for i, (pre, post) in enumerate(zip(before, final)):
        m = np.broadcast_to(mask, (len(before),) + mask.shape[-2:])[i]
        diff = np.abs(post - pre).max(-1)
        assert diff[m == 0].max() == 0, f"image {i}: the saved result differs from the pack's outside the mask"
        assert diff[m > 0.99].mean() > 1.0, f"image {i}: diffusion changed (almost) nothing inside the mask"


def test_diffusion_workflow_without_a_checkpoint_runs_its_transedit_part(server):
    """A user without the workflow's SD checkpoint: queued whole, ComfyUI's validation finds exactly one problem,
    the missing checkpoint. This ComfyUI then runs the outputs that do validate: the TransEdit edit is saved, the
    diffusion one not."""
    prompt = _diffusion_prompt(server)
    (loader,) = _nodes_of(prompt, "CheckpointLoaderSimple")
    prompt[loader]["inputs"]["ckpt_name"] = "a-checkpoint-this-user-lacks.safetensors"
    assert h.unavailable_user_models(prompt, server.object_info()) == {loader: prompt[loader]["inputs"]["ckpt_name"]}
    answer = server.submit(prompt)
    errors = {k: v["errors"] for k, v in answer["node_errors"].items() if v.get("errors")}
    assert list(errors) == [loader], errors
    assert [e["type"] for e in errors[loader]] == ["value_not_in_list"], errors
    assert "ckpt_name" in json.dumps(errors[loader])
    (final,) = [k for k in _nodes_of(prompt, "SaveImage") if _upstream(prompt, k, "images")[1]["class_type"]
                == "ImageCompositeMasked"]
    assert answer["node_errors"][loader]["dependent_outputs"] == [final], answer["node_errors"]  # left out
    history = server.wait_for(answer["prompt_id"])
    (save, _), = _pasted_photos(prompt)
    saved = {k for k, v in history["outputs"].items() if v.get("images")}
    assert saved == {save}, history["outputs"].keys()
    # the other reports are the compare widget's pairs (Generate, Paste Back), not saved images
    assert all(set(v) == {"transedit_compare"} for k, v in history["outputs"].items() if k != save)


def test_diffusion_workflow_with_a_file_that_is_no_checkpoint_fails_in_load_checkpoint(server, tmp_path):
    """A listed file that is not a checkpoint: the whole graph passes validation and runs until ComfyUI's own
    loader reads the file, where it fails (not in a TransEdit node)."""
    fake = tmp_path / NOT_A_CHECKPOINT
    fake.write_bytes(b"\x00" * 64)
    server.add_model("checkpoints", {NOT_A_CHECKPOINT: fake})
    prompt = _diffusion_prompt(server)
    (loader,) = _nodes_of(prompt, "CheckpointLoaderSimple")
    prompt[loader]["inputs"]["ckpt_name"] = NOT_A_CHECKPOINT
    (mask_node,) = _nodes_of(prompt, "SetLatentNoiseMask")
    paste_id, paste = _upstream(prompt, mask_node, "mask")
    assert paste["class_type"] == "TransEditPasteBack" and prompt[mask_node]["inputs"]["mask"][1] == 1
    (sampler,) = _nodes_of(prompt, "KSampler")
    assert 0.2 <= prompt[sampler]["inputs"]["denoise"] <= 0.6
    assert _upstream(prompt, sampler, "latent_image")[0] == mask_node
    with pytest.raises(h.PromptFailed) as exc:  # validation passed: it was queued and ran
        server.run(prompt)
    assert exc.value.error["node_id"] == loader and exc.value.error["node_type"] == "CheckpointLoaderSimple", \
        exc.value.error


# ------------------------------------------------------------------------------------ Splice
def _splice_prompt(server) -> dict:
    prompt = wg.ui_to_api(wg.load_workflow(SPLICE_WORKFLOW), server.object_info())
    h.shorten_for_tiny_weights(prompt)
    return prompt


def _splice_outputs(server, prompt, history) -> tuple[np.ndarray, np.ndarray]:
    """(Splice's saved image, Apply Splice's saved image) of a splice.json run."""
    saves = {_upstream(prompt, k, "images")[1]["class_type"]: k for k in _nodes_of(prompt, "SaveImage")}
    (spliced,) = _saved_by(server, history, saves["TransEditSplice"])
    (applied,) = _saved_by(server, history, saves["TransEditApplySplice"])
    return spliced, applied


def test_splice_workflow_outputs(server):
    """Splice gives the structure photo's aspect at output_size, and Apply Splice on the structure photo
    reproduces it (same trained generator, same input)."""
    prompt = _splice_prompt(server)
    (splice,) = _nodes_of(prompt, "TransEditSplice")
    history = server.run(prompt)
    spliced, applied = _splice_outputs(server, prompt, history)
    _, load = _upstream(prompt, splice, "structure")
    photo = _input_pixels(server, load["inputs"]["image"])
    side = h.TINY_RUN_OVERRIDES["TransEditSplice"]["output_size"]
    expected = (round(photo.shape[0] * side / max(photo.shape[:2])), round(photo.shape[1] * side / max(photo.shape[:2])))
    assert spliced.shape[:2] == expected, (spliced.shape, expected)
    assert applied.shape == photo.shape  # Apply Splice answers at its input's size
    from PIL import Image

    back = Image.fromarray(applied.astype(np.uint8)).resize(spliced.shape[1::-1], Image.BILINEAR)
    diff = np.abs(np.asarray(back, dtype=np.int16) - spliced)
    assert diff.mean() < 4.0, diff.mean()  # the same picture, up to resampling
    assert spliced.std() > 1.0


def test_splice_cancel_stops_quickly_and_leaves_nothing_behind(server):
    """Cancel (POST /interrupt) during a 100 000-step Splice ends the prompt after little more work; the next run
    with the earlier settings gives exactly the earlier result (no optimiser/generator state leaks). "Little
    work" is measured in the server's CPU time, which a busy machine does not inflate as it does wall time."""
    import time

    prompt = _splice_prompt(server)
    (splice,) = _nodes_of(prompt, "TransEditSplice")
    prompt[splice]["inputs"]["seed"] = 7
    before = _splice_outputs(server, prompt, server.run(prompt))[0]

    long_run = copy.deepcopy(prompt)
    long_run[splice]["inputs"].update(steps=100_000, preset="official")
    prompt_id = server.queue_prompt(long_run)
    cpu = lambda: h.process_cpu_seconds(server.proc.pid)  # noqa: E731
    watch, start = h.ProgressWatch(server.progress_marker), None
    while True:  # running, and some CPU-seconds into it (loading + a few training steps)
        if start is None and prompt_id in server.queue_state()[0]:
            start = cpu()
        if start is not None and cpu() - start > 3.0:
            break
        assert watch.check() is None, f"the long Splice never got going\n{server.log_tail()}"
        time.sleep(0.2)
    at_cancel = cpu()
    server.interrupt()
    with pytest.raises(h.PromptFailed) as exc:
        server.wait_for(prompt_id)
    spent = cpu() - at_cancel
    assert any(m[0] == "execution_interrupted" for m in exc.value.messages), exc.value.messages
    assert spent < 20, f"Cancel let the server work {spent:.1f} CPU-seconds more"

    after = _splice_outputs(server, prompt, server.run(prompt))[0]
    assert np.array_equal(before, after), "a cancelled run changed the next run's result"


def test_put_workflow_fills_only_the_holes(server):
    """put_inpaint.json on the transparent-holes photo: num_samples fills at the photo's size, different
    from each other inside the holes, and identical to the photo away from them (feather band excluded)."""
    prompt = wg.ui_to_api(wg.load_workflow(wg.WORKFLOWS_DIR / "put_inpaint.json"), server.object_info())
    (put,) = _nodes_of(prompt, "TransEditPUTInpaint")
    settings = prompt[put]["inputs"]
    _, load = _upstream(prompt, put, "images")
    photo = _input_pixels(server, load["inputs"]["image"])
    history = server.run(prompt)
    (save,) = [k for k in _nodes_of(prompt, "SaveImage") if _upstream(prompt, k, "images")[0] == put]
    fills = _saved_by(server, history, save)
    assert len(fills) == settings["num_samples"] and all(f.shape == photo.shape for f in fills)
    holes = np.zeros(photo.shape[:2], bool)
    y0, y1, x0, x1 = h.INPAINT_HOLES["rect"]
    holes[y0:y1, x0:x1] = True
    cy, cx, r = h.INPAINT_HOLES["disk"]
    yy, xx = np.mgrid[:photo.shape[0], :photo.shape[1]]
    holes |= (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    band = settings["feather"] + 1
    grown = np.zeros_like(holes)
    for dy in range(-band, band + 1):  # holes grown by the feather radius
        grown |= np.roll(np.roll(holes, dy, 0), 0, 1)
    grown = np.logical_or.reduce([np.roll(grown, dx, 1) for dx in range(-band, band + 1)])
    for fill in fills:
        assert np.array_equal(fill[~grown], photo[~grown])
        assert np.abs(fill[holes] - photo[holes]).mean() > 1.0
    assert any(np.abs(fills[0][holes] - f[holes]).mean() > 0.5 for f in fills[1:])


def test_compare_pairs_and_direction_catalog_reach_the_frontend(server):
    """What js/transedit.js consumes: Generate (of inverted latents) and Paste Back report before/after pairs
    whose images the server serves, and /transedit/directions describes Load Direction's entries."""
    prompt = _invert_prompt(server)
    history = server.run(prompt)
    outputs = history["outputs"]
    reporting = {prompt[k]["class_type"] for k, v in outputs.items() if v.get("transedit_compare")}
    assert {"TransEditGenerate", "TransEditPasteBack"} <= reporting, reporting
    for node_id, out in outputs.items():
        for payload in out.get("transedit_compare", []):
            assert payload["pairs"] and len(payload["labels"]) == 2
            for pair in payload["pairs"]:
                for side in ("before", "after"):
                    ref = pair[side]
                    query = urllib.parse.urlencode({"filename": ref["filename"], "subfolder": ref["subfolder"],
                                                    "type": ref["type"]})
                    assert server._request("GET", f"/view?{query}")[:8] == b"\x89PNG\r\n\x1a\n"
    catalog = server.get_json("/transedit/directions")
    assert "preset: ganspace ffhq smile" in catalog and catalog["preset: ganspace ffhq smile"]["layers"]


def test_current_server_reads_search_aliases_and_resends_cached_pictures(server):
    """On ComfyUI 0.33 (feature-detected: older servers ignore both attributes) the node search gets the pack's
    aliases, and a queued graph whose Generate and Paste Back come from the cache still reports their
    before/after pictures (HAS_INTERMEDIATE_OUTPUT), so the compare widgets do not go blank on a re-run."""
    info = server.object_info()
    if "search_aliases" not in info["TransEditGenerate"]:
        pytest.skip(f"{server.kind} has no search aliases or intermediate outputs (ComfyUI < 0.33)")
    from transedit import NODE_CLASS_MAPPINGS

    for name, cls in NODE_CLASS_MAPPINGS.items():
        assert info[name]["search_aliases"] == cls.SEARCH_ALIASES, name
    prompt = _invert_prompt(server)
    first = server.run(copy.deepcopy(prompt))["outputs"]
    again = server.run(prompt)["outputs"]  # everything cached: nothing executes
    for outputs in (first, again):
        reporting = {prompt[k]["class_type"] for k, v in outputs.items() if v.get("transedit_compare")}
        assert {"TransEditGenerate", "TransEditPasteBack"} <= reporting, reporting


# ------------------------------------------------------------------------------------ pivotal tuning
PTI_WORKFLOW = wg.WORKFLOWS_DIR / "invert_pti_edit.json"


def test_tuned_generator_is_saved_and_loaded_back(server):
    """invert_pti_edit.json with Save Tuned StyleGAN un-muted: the delta lands in the server's models/stylegan under
    a new name, Load StyleGAN lists it and loads it (its base, the e4e file, found in models/gan_encoders), and the
    loaded generator renders what the tuned one rendered."""
    ui = copy.deepcopy(wg.load_workflow(PTI_WORKFLOW))
    for node in ui["nodes"]:
        if node["type"] == "TransEditSaveTunedStyleGAN":
            assert node["mode"] == wg.MODE_NEVER  # shipped muted: a run does not write into the user's models
            node["mode"] = 0
    prompt, _ = _runnable_prompt(server, ui)
    (save_gan,) = _nodes_of(prompt, "TransEditSaveTunedStyleGAN")
    prompt[save_gan]["inputs"]["filename_prefix"] = "e2e/pti"
    (tune,) = _nodes_of(prompt, "TransEditPivotalTune")
    (tuned_gen,) = [k for k in _nodes_of(prompt, "TransEditGenerate") if prompt[k]["inputs"]["generator"][0] == tune]
    (save_rec,) = [k for k in _nodes_of(prompt, "SaveImage") if prompt[k]["inputs"]["images"][0] == tuned_gen]
    history = server.run(prompt)
    name = history["outputs"][save_gan]["text"][0]
    assert name.startswith("e2e/pti_") and name.endswith(".safetensors"), name
    listed = server.object_info(refresh=True)["TransEditLoadStyleGAN"]["input"]["required"]["ckpt_name"][0]
    assert name in listed
    before = _saved_by(server, history, save_rec)
    prompt, _ = wg.drop_nodes(prompt, [save_gan])
    prompt["900"] = {"class_type": "TransEditLoadStyleGAN", "inputs": {"ckpt_name": name}}
    prompt[tuned_gen]["inputs"]["generator"] = ["900", 0]
    prompt[save_rec]["inputs"]["filename_prefix"] = "e2e/pti_from_delta"
    after = _saved_by(server, server.run(prompt), save_rec)
    assert len(after) == len(before) == 1 and np.abs(after[0] - before[0]).max() <= 1
