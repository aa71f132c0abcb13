"""Edit Studio's live-preview route on a real headless ComfyUI (tiny weights): a queued run makes the node
previewable, slider values render without queueing, the queued image of those values is the preview, and
hostile requests (unknown ids, huge numbers, NaN, strings, oversized bodies, many at once, a busy queue, freed
models) get clear JSON answers while the server keeps serving."""
from __future__ import annotations

import base64
import io
import json
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import comfy_harness as h  # noqa: E402
import workflow_graph as wg  # noqa: E402

pytestmark = pytest.mark.e2e

WORKFLOW = wg.WORKFLOWS_DIR / "edit_studio.json"
ROUTE = "/transedit/studio/preview"


@pytest.fixture(scope="module")
def server(comfy_root, tmp_path_factory):
    tiny_dir = tmp_path_factory.mktemp("tiny_weights")
    graphs = [wg.load_workflow(WORKFLOW), wg.load_workflow(wg.WORKFLOWS_DIR / "splice.json")]
    models, _ = h.prepare_models(graphs, [], tiny_dir)
    inputs, _ = h.prepare_inputs(graphs, [], tmp_path_factory.mktemp("inputs"))
    with h.ComfyServer(comfy_root, models=models, inputs=inputs) as srv:
        yield srv


def post(server, body, raw: bytes | None = None, timeout: float = 600.0) -> tuple[int, dict]:
    """POST the route; (status, JSON answer) for every status. The limit only catches a hang."""
    data = raw if raw is not None else json.dumps(body).encode()
    req = urllib.request.Request(server.url + ROUTE, data=data, method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def studio_prompt(server, strength_1=2.0) -> tuple[dict, str]:
    prompt = wg.ui_to_api(wg.load_workflow(WORKFLOW), server.object_info())
    (studio,) = [k for k, v in prompt.items() if v["class_type"] == "TransEditEditStudio"]
    prompt[studio]["inputs"]["strength_1"] = strength_1
    return prompt, studio


def run_studio(server, strength_1=2.0) -> tuple[dict, dict, str]:
    prompt, studio = studio_prompt(server, strength_1)
    history = server.run(prompt)
    (payload,) = history["outputs"][studio]["transedit_studio"]
    return history, payload, studio


def body_for(payload, **fields) -> dict:
    body = {"node_id": payload["node_id"], "prompt_id": payload["prompt_id"], "strengths": [2.0, 0.0, 0.0, 0.0],
            "start_layer": -1, "end_layer": -1, "item": 0, "seq": 1}
    body.update(fields)
    return body


def pixels(data_url: str) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1]))).convert("RGB"))


def saved_image(server, history, node_id) -> np.ndarray:
    (img,) = [i for i in server.output_images(history) if i.node_id == node_id]
    return np.asarray(img.open().convert("RGB"))


def test_preview_renders_without_queueing_and_matches_the_queued_image(server):
    history, payload, studio = run_studio(server)
    assert payload["node_id"] == studio and payload["prompt_id"]
    assert payload["values"]["strengths"] == [2.0, 0.0, 0.0, 0.0]
    assert payload["pairs"] and payload["preview_size"] == payload["full_size"]  # tiny generator < 256 px
    n_history = len(server.get_json("/history"))

    status, same = post(server, body_for(payload))
    assert status == 200, same
    status, moved = post(server, body_for(payload, strengths=[-3.0, 1.0, 0.0, 0.0], seq=2))
    assert status == 200, moved
    assert moved["seq"] == 2 and moved["strengths"] == [-3.0, 1.0, 0.0, 0.0]
    assert not np.array_equal(pixels(same["image"]), pixels(moved["image"]))
    assert server.queue_state() == ((), 0) and len(server.get_json("/history")) == n_history  # nothing queued

    # the preview of the run's own values is what the run showed ("after" of the first pair)
    ref = payload["pairs"][0]["after"]
    shown = server._request("GET", "/view?" + "&".join(f"{k}={ref[k]}" for k in ("filename", "subfolder", "type")))
    from PIL import Image

    np.testing.assert_array_equal(pixels(same["image"]), np.asarray(Image.open(io.BytesIO(shown)).convert("RGB")))

    # queueing the moved values gives the full-size image of exactly that preview
    prompt, studio = studio_prompt(server, strength_1=-3.0)
    prompt[studio]["inputs"]["strength_2"] = 1.0
    queued = server.run(prompt)
    # Save Image truncates to 8 bits where the preview rounds: the same floats give at most 1 level apart
    diff = np.abs(saved_image(server, queued, _save_node(prompt)).astype(int) - pixels(moved["image"]).astype(int))
    assert diff.max() <= 1 and diff.mean() < 0.6, (diff.max(), diff.mean())
    differs = np.abs(pixels(same["image"]).astype(int) - pixels(moved["image"]).astype(int))
    assert differs.mean() > 5 * diff.mean() + 1  # ...while another slider value is far from it


def _save_node(prompt: dict) -> str:
    (save,) = [k for k, v in prompt.items() if v["class_type"] == "SaveImage"]
    return save


@pytest.mark.parametrize("raw, status, words", [
    (b"not json", 400, "JSON object"),
    (b"[1, 2, 3]", 400, "JSON object"),
    (b'{"node_id": "1", "prompt_id": "x", "strengths": [NaN]}', 400, "strengths"),
    (b'{"node_id": "1", "prompt_id": "x", "strengths": [Infinity]}', 400, "strengths"),
    (b'{"node_id": "1", "prompt_id": "x", "strengths": [1e999]}', 400, "strengths"),
    (b'{"node_id": "1", "prompt_id": "x", "strengths": [' + b"9" * 5000 + b"]}", 400, "JSON object"),
    (b'{"node_id": "1", "prompt_id": "x", "strengths": ["big"]}', 400, "strengths"),
    (b'{"node_id": "../../models/x.pkl", "prompt_id": "x", "strengths": [1]}', 400, "node_id"),
    (b'{"node_id": "1", "prompt_id": "x", "strengths": [1], "path": "/etc/passwd"}', 400, "unknown field"),
    (b'{"node_id": "1", "prompt_id": "x", "strengths": [1], "item": 99999999999}', 400, "item"),
    (b"\xff\xfe\x00garbage", 400, "JSON object"),
])
def test_hostile_bodies_get_clear_errors(server, raw, status, words):
    got, answer = post(server, None, raw=raw)
    assert got == status and words in answer["error"], (got, answer)


def test_unknown_ids_and_oversized_bodies(server):
    _, payload, _ = run_studio(server)
    status, answer = post(server, body_for(payload, node_id="999"))
    assert status == 404 and answer["reason"] == "unknown" and "queue the graph" in answer["error"], answer
    status, answer = post(server, body_for(payload, prompt_id="00000000-0000-0000-0000-000000000000"))
    assert status == 404
    status, answer = post(server, None, raw=json.dumps(body_for(payload, pad="x" * 100_000)).encode())
    assert status == 413, answer
    assert server.get_json("/system_stats")  # still serving


def test_many_requests_at_once_leave_the_latest(server):
    _, payload, _ = run_studio(server)
    answers: list = []

    def ask(k):
        answers.append((k, *post(server, body_for(payload, strengths=[k / 10, 0, 0, 0], seq=k))))

    threads = [threading.Thread(target=ask, args=(k,)) for k in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    statuses = {s for _, s, _ in answers}
    assert statuses <= {200, 409, 429}, answers
    assert sum(s == 200 for _, s, _ in answers) >= 1
    assert all(a["reason"] in ("superseded", "busy") for _, s, a in answers if s != 200)
    status, answer = post(server, body_for(payload, seq=99))  # and the server answers normally afterwards
    assert status == 200 and answer["seq"] == 99
    assert not _pack_traceback(server.log_text()), server.log_tail()


def _pack_traceback(log: str) -> bool:
    return any("edit_studio" in block for block in log.split("Traceback (most recent call last):")[1:])


def test_a_busy_queue_is_answered_503(server):
    """While a prompt runs the preview waits (503, reason busy): ComfyUI's model management is not made for a
    second thread loading models beside the prompt worker."""
    _, payload, _ = run_studio(server)
    splice = wg.ui_to_api(wg.load_workflow(wg.WORKFLOWS_DIR / "splice.json"), server.object_info())
    h.shorten_for_tiny_weights(splice)
    splice = h.without_unavailable_user_models(splice, server.object_info())[0]
    for node in splice.values():
        if node["class_type"] == "TransEditSplice":
            node["inputs"].update(steps=100_000, preset="official")
    prompt_id = server.queue_prompt(splice)
    try:
        status, answer = post(server, body_for(payload))
        assert status == 503 and answer["reason"] == "busy", answer
    finally:
        # Cancel once the Splice is under way (a Cancel before a prompt starts is reset by its start)
        cpu = lambda: h.process_cpu_seconds(server.proc.pid)  # noqa: E731
        watch, start = h.ProgressWatch(server.progress_marker), None
        while start is None or cpu() - start < 1.0:
            if start is None and prompt_id in server.queue_state()[0]:
                start = cpu()
            assert watch.check() is None, f"the Splice never got going\n{server.log_tail()}"
            time.sleep(0.2)
        server.interrupt()
        with pytest.raises(h.PromptFailed):
            server.wait_for(prompt_id)
    # ComfyUI's cache keeps the nodes of the prompt it ran last: the other workflow dropped the studio's
    # generator, so its run ends (the frontend then asks for a Queue); queueing the studio again previews again
    status, answer = post(server, body_for(payload))
    assert status == 410 and answer["reason"] == "gone", answer
    _, payload, _ = run_studio(server)
    assert post(server, body_for(payload))[0] == 200


def test_freeing_models_ends_the_preview(server):
    """'Unload models' + 'Free model and node cache' (POST /free): the run's generator is dropped with
    ComfyUI's cache, so the preview answers 410 and asks for a new Queue; a new run previews again."""
    _, payload, _ = run_studio(server)
    assert post(server, body_for(payload))[0] == 200
    server._request("POST", "/free", {"unload_models": True, "free_memory": True})
    watch = h.ProgressWatch(server.progress_marker)  # the worker frees as soon as it is idle
    while True:
        status, answer = post(server, body_for(payload))
        if status != 200:
            break
        assert watch.check() is None, "POST /free never freed the generator"
        time.sleep(0.2)
    assert status in (404, 410) and "queue" in answer["error"].lower(), (status, answer)
    _, payload, _ = run_studio(server)
    assert post(server, body_for(payload))[0] == 200


def test_http_benchmark_runs(comfy_root, tmp_path):
    """benchmarks/bench_studio.py --http on a small generator: it starts its own server of this kind, runs the
    studio graph and times the route; every row has a rendered answer."""
    sys.path.insert(0, str(h.REPO / "benchmarks"))
    import bench_studio

    out = tmp_path / "http.json"
    assert bench_studio.main(["--http", "--http-server", comfy_root.kind, "--size", "64", "--previews", "128",
                              "--reps", "1", "--warmup", "0", "--out", str(out)]) == 0
    (row,) = json.loads(out.read_text())["rows"]
    assert row["preview_size"] == 128 and row["answer_kib"] > 0 and row["server_render_median_ms"] > 0
