"""Edit Studio's live preview and ComfyUI's queue on a real server, in repeated trials: a prompt submitted while a
preview renders is queued only after the preview has stopped and let go of the models (its execution starts after
the preview's `ended_ms`), and Cancel pressed while that prompt runs cancels it. Found on 0.33.0 before the fix: a
prompt queued 0.2-0.5 s into a 1024 px preview ran beside it in 14/14 trials, and the preview swallowed the Cancel
in 15/15. A 256 px config-f generator makes each preview last long enough (about a second on two CPU cores) for
the prompt to land in the middle of it."""
from __future__ import annotations

import json
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import comfy_harness as h  # noqa: E402

pytestmark = pytest.mark.e2e

ROUTE = "/transedit/studio/preview"
BIG = "studio-race-config-f-256.pt"
TRIALS = 5
SEFA = "sefa: from the generator input (all layers)"


@pytest.fixture(scope="module")
def server(comfy_root, tmp_path_factory):
    from transedit.random_weights import save_random_generator
    from transedit.models.stylegan2 import StyleGAN2Config

    big = save_random_generator(tmp_path_factory.mktemp("race_weights") / BIG, config=StyleGAN2Config(size=256))
    with h.ComfyServer(comfy_root, models={"stylegan": {BIG: big}}) as srv:
        yield srv


def studio_prompt() -> dict:
    return {
        "1": {"class_type": "TransEditLoadStyleGAN", "inputs": {"ckpt_name": BIG}},
        "2": {"class_type": "TransEditSampleLatent", "inputs": {"generator": ["1", 0], "seed": 42, "batch_size": 1,
                                                                 "truncation": 0.7}},
        "3": {"class_type": "TransEditLoadDirection", "inputs": {"direction": SEFA, "component": 0,
                                                                  "generator": ["1", 0]}},
        "4": {"class_type": "TransEditEditStudio", "inputs": {
            "generator": ["1", 0], "latent": ["2", 0], "direction_1": ["3", 0], "strength_1": 1.0, "strength_2": 0.0,
            "strength_3": 0.0, "strength_4": 0.0, "start_layer": -1, "end_layer": -1, "preview_size": "256",
            "precision": "fp32"}},
    }


def generate_prompt(batch: int, prefix: str) -> dict:
    return {
        "1": {"class_type": "TransEditLoadStyleGAN", "inputs": {"ckpt_name": BIG}},
        "2": {"class_type": "TransEditSampleLatent", "inputs": {"generator": ["1", 0], "seed": 7, "batch_size": batch,
                                                                 "truncation": 0.7}},
        "3": {"class_type": "TransEditGenerate", "inputs": {"generator": ["1", 0], "latent": ["2", 0],
                                                             "noise_mode": "const", "noise_seed": 0,
                                                             "precision": "fp32"}},
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": prefix}},
    }


def post_preview(server, payload: dict, strength: float, seq: int) -> tuple[int, dict]:
    body = {"node_id": payload["node_id"], "prompt_id": payload["prompt_id"], "strengths": [strength, 0, 0, 0],
            "start_layer": -1, "end_layer": -1, "item": 0, "seq": seq}
    req = urllib.request.Request(server.url + ROUTE, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=600) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def execution_start_ms(history: dict) -> int:
    (start,) = [m[1]["timestamp"] for m in history["status"]["messages"] if m[0] == "execution_start"]
    return start


def previewable(server) -> dict:
    history = server.run(studio_prompt())
    (payload,) = history["outputs"]["4"]["transedit_studio"]
    status, answer = post_preview(server, payload, 0.5, 1)  # loads and warms the generator
    assert status == 200, answer
    return payload


def preview_in_flight(server, payload, strength, seq) -> tuple[threading.Thread, list]:
    """A preview request in a thread, and the moment its render is under way (the server's CPU time moving)."""
    answers: list = []
    thread = threading.Thread(target=lambda: answers.append(post_preview(server, payload, strength, seq)))
    cpu0 = h.process_cpu_seconds(server.proc.pid)
    thread.start()
    watch = h.ProgressWatch(server.progress_marker)
    while h.process_cpu_seconds(server.proc.pid) - cpu0 < 0.25 and thread.is_alive():
        assert watch.check() is None, server.log_tail()
        time.sleep(0.02)
    return thread, answers


def test_a_prompt_submitted_during_a_preview_runs_after_it(server):
    payload = previewable(server)
    stopped_mid_render = 0
    for trial in range(TRIALS):
        thread, answers = preview_in_flight(server, payload, 1.0 + trial, 10 + trial)
        prompt_id = server.queue_prompt(generate_prompt(2, f"race/trial{trial}"))
        thread.join()
        (status, answer), = answers
        assert status in (200, 503) and "ended_ms" in answer, (status, answer)
        if status == 503:
            assert answer["reason"] == "busy", answer
            stopped_mid_render += "was queued" in answer["error"]
        history = server.wait_for(prompt_id)
        assert history["status"]["completed"], history["status"]
        assert execution_start_ms(history) >= answer["ended_ms"], (trial, answer, history["status"])
    assert stopped_mid_render >= 1, "no trial landed a prompt in the middle of a preview"
    assert post_preview(server, payload, 0.5, 99)[0] == 200  # idle again: previews render


def test_cancel_during_a_preview_still_cancels_the_queued_job(server):
    payload = previewable(server)
    for trial in range(3):
        thread, answers = preview_in_flight(server, payload, 2.0 + trial, 20 + trial)
        prompt_id = server.queue_prompt(generate_prompt(12, f"race/cancel{trial}"))
        cpu = lambda: h.process_cpu_seconds(server.proc.pid)  # noqa: E731
        watch, start = h.ProgressWatch(server.progress_marker), None
        while start is None or cpu() - start < 0.5:  # the job is running (a Cancel before its start is reset)
            if start is None and prompt_id in server.queue_state()[0]:
                start = cpu()
            assert watch.check() is None, f"the job never got going\n{server.log_tail()}"
            time.sleep(0.05)
        server.interrupt()
        with pytest.raises(h.PromptFailed) as exc:
            server.wait_for(prompt_id)
        assert any(m[0] == "execution_interrupted" for m in exc.value.messages), (trial, exc.value.messages)
        thread.join()
        (status, answer), = answers
        assert status in (200, 503), (status, answer)
    assert post_preview(server, payload, 0.5, 99)[0] == 200
