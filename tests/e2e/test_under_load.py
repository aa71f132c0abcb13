"""50 mixed prompts against one real, headless ComfyUI (loopback only), queued all at once.

Good prompts are the example workflows (tiny weights, each with its own seed or setting so nothing is served
from ComfyUI's cache); bad ones are what users really send: a latent rendered with another generator, a
listed file that is not a checkpoint, a mask made for another picture, a Splice size below the minimum (all
fail while running), an unknown checkpoint and a wrongly typed link (both refused at /prompt). Checked:

- every good prompt finishes and its output nodes saved their images;
- every bad one ends in a clear error: HTTP 400 with node_errors, or an execution error on the TransEdit node
  at fault whose message names that node and the input;
- the server keeps answering, and after "free memory" its resident memory is back within MEMORY_MARGIN_MB
  of the baseline taken the same way after one warm-up run of every good prompt.

The server runs with glibc's malloc told to hand large blocks straight back to the system
(MALLOC_MMAP_THRESHOLD_), so resident memory measures what Python and torch still hold rather than what the
allocator keeps cached.
"""
from __future__ import annotations

import copy
import json
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for comfy_harness
import comfy_harness as h  # noqa: E402
import workflow_graph as wg  # noqa: E402

pytestmark = pytest.mark.e2e

N_PROMPTS = 50
MEMORY_MARGIN_MB = 64  # resident memory after the run, over the warm baseline (measured: +1 MB)
GOOD = ["stylegan_generate", "invert_reconstruct", "invert_edit", "styleprompter_smart_edit", "put_inpaint",
        "splice"]
BAD = ["other_generator", "not_a_checkpoint", "mask_for_another_picture", "splice_too_small",
       "unknown_checkpoint", "wrong_link"]
OTHER_GENERATOR = "load-other-32px.pt"
NOT_A_CHECKPOINT = "load-not-a-checkpoint.pt"
SEED_INPUTS = ("seed", "noise_seed")


@pytest.fixture(scope="module")
def server(comfy_root, tmp_path_factory):
    workflows = [wg.load_workflow(wg.WORKFLOWS_DIR / f"{name}.json") for name in GOOD]
    tiny = tmp_path_factory.mktemp("load_weights")
    models, _ = h.prepare_models(workflows, [], tiny)
    inputs, _ = h.prepare_inputs(workflows, [], tmp_path_factory.mktemp("load_inputs"))

    from transedit.random_weights import save_random_generator
    from transedit.models.stylegan.generator import StyleGAN2Config

    models["stylegan"][OTHER_GENERATOR] = save_random_generator(tiny / OTHER_GENERATOR, seed=1, config=StyleGAN2Config(
        size=32, style_dim=32, n_mlp=2, channels={4: 16, 8: 16, 16: 16, 32: 8}))
    junk = tiny / NOT_A_CHECKPOINT
    junk.write_bytes(b"<html>404 Not Found</html>" * 40)  # what a failed download often leaves behind
    models["stylegan"][NOT_A_CHECKPOINT] = junk
    env = {"MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}
    with h.ComfyServer(comfy_root, models=models, inputs=inputs, env=env) as srv:
        yield srv


def _nodes_of(prompt: dict, class_type: str) -> list[str]:
    return [k for k, v in prompt.items() if v["class_type"] == class_type]


def good_prompt(server, kind: str, i: int) -> dict:
    prompt = wg.ui_to_api(wg.load_workflow(wg.WORKFLOWS_DIR / f"{kind}.json"), server.object_info())
    h.shorten_for_tiny_weights(prompt)
    changed = False
    for node in prompt.values():  # a prompt of its own: ComfyUI re-runs what changed instead of reusing its cache
        for name in SEED_INPUTS:
            if name in node["inputs"] and not isinstance(node["inputs"][name], list):
                node["inputs"][name] = 1000 + i
                changed = True
    assert changed, f"{kind} has no seed to vary"
    return prompt


def bad_prompt(server, kind: str, i: int) -> tuple[dict, dict]:
    """(prompt, what the failure must look like)."""
    if kind in ("other_generator", "not_a_checkpoint", "unknown_checkpoint", "wrong_link"):
        prompt = good_prompt(server, "stylegan_generate", i)
        gen = _nodes_of(prompt, "TransEditGenerate")[0]
        loader = _nodes_of(prompt, "TransEditLoadStyleGAN")[0]
        if kind == "other_generator":
            other = str(max(int(k) for k in prompt) + 1)
            prompt[other] = {"class_type": "TransEditLoadStyleGAN", "inputs": {"ckpt_name": OTHER_GENERATOR}}
            prompt[gen]["inputs"]["generator"] = [other, 0]
            return prompt, {"node": gen, "type": "TransEditGenerate", "says": ["TransEdit Generate", "latent",
                                                                              OTHER_GENERATOR]}
        if kind == "not_a_checkpoint":
            prompt[loader]["inputs"]["ckpt_name"] = NOT_A_CHECKPOINT
            return prompt, {"node": loader, "type": "TransEditLoadStyleGAN", "says": [NOT_A_CHECKPOINT]}
        if kind == "unknown_checkpoint":
            prompt[loader]["inputs"]["ckpt_name"] = "not-there.pt"
            return prompt, {"rejected": loader, "error_type": "value_not_in_list"}
        sampler = _nodes_of(prompt, "TransEditSampleLatent")[0]
        prompt[gen]["inputs"]["generator"] = [sampler, 0]  # a TE_LATENT into a TE_STYLEGAN input
        return prompt, {"rejected": gen, "error_type": "return_type_mismatch"}
    if kind == "mask_for_another_picture":
        prompt = good_prompt(server, "put_inpaint", i)
        inpaint = _nodes_of(prompt, "TransEditPUTInpaint")[0]
        solid = str(max(int(k) for k in prompt) + 1)
        prompt[solid] = {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 17, "height": 13}}
        prompt[inpaint]["inputs"]["mask"] = [solid, 0]
        return prompt, {"node": inpaint, "type": "TransEditPUTInpaint", "says": ["TransEdit PUT Inpaint",
                                                                                "'mask'", "17x13"]}
    assert kind == "splice_too_small"
    prompt = good_prompt(server, "splice", i)
    splice = _nodes_of(prompt, "TransEditSplice")[0]
    prompt[splice]["inputs"]["output_size"] = 16
    return prompt, {"node": splice, "type": "TransEditSplice", "says": ["TransEdit Splice", "'output_size'"]}


def resident_mb(server) -> float:
    with open(f"/proc/{server.proc.pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    raise AssertionError("no VmRSS line")


def settled_memory(server) -> float:
    """POST /free (unload models, drop ComfyUI's node cache), give the worker time to collect, then measure."""
    server._request("POST", "/free", {"unload_models": True, "free_memory": True})
    readings = []
    for _ in range(6):
        time.sleep(0.5)
        readings.append(resident_mb(server))
    return min(readings[-3:])


def finished(server, prompt_id: str) -> dict:
    """The prompt's history entry, success or error, waiting as long as the server makes progress."""
    watch = h.ProgressWatch(lambda: server.progress_marker() + server.queue_state())
    while True:
        entry = server.history(prompt_id)
        if entry is not None:
            return entry
        assert server.proc.poll() is None, f"ComfyUI died:\n{server.log_tail()}"
        stuck = watch.check()
        assert stuck is None, f"{prompt_id}: {stuck}\n{server.log_tail()}"
        time.sleep(0.2)


def execution_error(entry: dict) -> dict:
    for kind, data in entry["status"].get("messages", []):
        if kind == "execution_error":
            return data
    raise AssertionError(f"no execution_error in {entry['status']}")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads resident memory from /proc")
def test_fifty_mixed_prompts(server):
    for i, kind in enumerate(GOOD):  # warm-up: every good prompt once, so imports and caches are paid for
        server.run(good_prompt(server, kind, -1 - i))
    baseline = settled_memory(server)

    plan = []  # every third prompt is a bad one, cycling through the kinds
    for i in range(N_PROMPTS):
        if i % 3 == 2:
            prompt, expect = bad_prompt(server, BAD[(i // 3) % len(BAD)], i)
            plan.append((BAD[(i // 3) % len(BAD)], prompt, expect))
        else:
            plan.append((GOOD[i % len(GOOD)], good_prompt(server, GOOD[i % len(GOOD)], i), None))
    queued = []
    t0 = time.monotonic()
    for kind, prompt, expect in plan:  # all at once: the queue holds them while the worker runs one by one
        try:
            queued.append((kind, server.queue_prompt(copy.deepcopy(prompt)), prompt, expect))
        except h.PromptRejected as e:
            assert expect is not None and "rejected" in expect, f"{kind} was refused: {e}"
            assert e.status == 400
            errors = e.node_errors[expect["rejected"]]["errors"]
            assert errors[0]["type"] == expect["error_type"], errors
            queued.append((kind, None, prompt, expect))
    peak = baseline
    counts = {"succeeded": 0, "failed_clearly": 0, "refused_at_queue": 0}
    for kind, prompt_id, prompt, expect in queued:
        if prompt_id is None:
            counts["refused_at_queue"] += 1
            continue
        assert expect is None or "rejected" not in expect, f"{kind} should have been refused at /prompt"
        entry = finished(server, prompt_id)
        peak = max(peak, resident_mb(server))
        status = entry["status"]
        if expect is None:
            assert status["status_str"] == "success" and status["completed"], (kind, status)
            images = server.output_images(entry)
            saved = {img.node_id for img in images}
            assert saved == set(wg.output_node_ids(prompt, server.object_info())), (kind, saved)
            assert all(img.path is not None and img.path.is_file() for img in images), kind
            counts["succeeded"] += 1
        else:
            assert status["status_str"] == "error", (kind, status)
            err = execution_error(entry)
            assert err["node_id"] == expect["node"] and err["node_type"] == expect["type"], (kind, err)
            for fragment in expect["says"]:
                assert fragment in err["exception_message"], (kind, fragment, err["exception_message"])
            counts["failed_clearly"] += 1
    elapsed = time.monotonic() - t0
    assert sum(counts.values()) == N_PROMPTS
    assert server.get_json("/system_stats")["system"]  # still answering
    after = settled_memory(server)
    figures = {"prompts": N_PROMPTS, **counts, "seconds": round(elapsed, 1), "baseline_mb": round(baseline),
               "peak_mb": round(peak), "after_free_mb": round(after), "margin_mb": MEMORY_MARGIN_MB}
    print("\nload test:", json.dumps(figures))
    assert after - baseline < MEMORY_MARGIN_MB, f"memory did not come back: {figures}"
