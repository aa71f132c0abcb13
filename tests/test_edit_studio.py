"""Edit Studio: the queued edit equals a chain of Apply Direction + Generate, the live preview equals the queued
render at preview size, the preview service's bookkeeping (ids, re-runs, freed generators, latest request
wins) and its answers to hostile requests, and the gate that keeps previews away from ComfyUI's queue
(nodes/preview_service.py: holds of submitted prompts, the render lock, the checks between layers).
Over 600 lines: the node, its preview service and the gate share the generator and run fixtures, and these tests
are the gate's mutation-score judges."""
import asyncio
import gc
import json
import threading
import time

import numpy as np
import pytest
import torch

from transedit.models.core.directions import LatentDirection
from transedit.models.registry import load_stylegan2
from transedit.random_weights import save_random_generator
from transedit.models.stylegan.generator import StyleGAN2Config
from transedit.nodes import comfy_bridge as bridge
from transedit.nodes import edit_studio as studio
from transedit.nodes import preview_service, rendering
from transedit.nodes.inputs import NodeInputError
from transedit.nodes.editing import TransEditApplyDirection
from transedit.nodes.rendering import StyleGANHandle
from transedit.nodes.stylegan import TransEditGenerate, TransEditSampleLatent

# 256 px so that a 128 px preview stops the generator early; narrow, so it stays fast
CONFIG = StyleGAN2Config(size=256, style_dim=32, n_mlp=2,
                         channels={4: 16, 8: 16, 16: 16, 32: 16, 64: 8, 128: 8, 256: 8})
N, C = CONFIG.n_latent, CONFIG.style_dim


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def generator(tmp_path_factory):
    path = save_random_generator(tmp_path_factory.mktemp("studio") / "g.pt", config=CONFIG, seed=5)
    return StyleGANHandle(load_stylegan2(path))


@pytest.fixture(scope="module")
def directions():
    age = LatentDirection("age", rand(C, seed=1), default_strength=1.5)
    pose = LatentDirection("pose", rand(N, C, seed=2), start=0, end=4)
    mean = rand(C, seed=4)
    comp = rand(C, seed=3)
    ganspace = LatentDirection("gs", comp / comp.norm(), kind="ganspace", mean=mean, std=2.0, start=4, end=8)
    return age, pose, ganspace


@pytest.fixture(scope="module")
def latent(generator):
    return TransEditSampleLatent().sample(generator, 11, 2, 0.7)[0]


@pytest.fixture
def ids(monkeypatch):
    """The node runs as node 7 of prompt 'p-1' (what ComfyUI's execution context would say)."""
    current = {"ids": ("7", "p-1")}
    monkeypatch.setattr(bridge, "executing_ids", lambda unique_id: current["ids"])
    studio.SERVICE.forget()
    yield current
    studio.SERVICE.forget()


def run_studio(generator, latent, dirs, strengths, start=-1, end=-1, preview="128", precision="fp32"):
    d = list(dirs) + [None] * (4 - len(dirs))
    s = list(strengths) + [0.0] * (4 - len(strengths))
    return studio.TransEditEditStudio().edit(generator, latent, d[0], *s, start, end, preview, precision,
                                            direction_2=d[1], direction_3=d[2], direction_4=d[3], unique_id="7")


def generate(generator, latent):
    return TransEditGenerate().generate(generator, latent, "const", 0, "fp32")[0]


def preview(service=None, **fields):
    body = {"node_id": "7", "prompt_id": "p-1", "strengths": [0.0], "start_layer": -1, "end_layer": -1, "item": 0}
    body.update(fields)
    return (service or studio.SERVICE).handle(json.loads(json.dumps(body)))


def decode(data_url: str) -> np.ndarray:
    import base64
    import io

    from PIL import Image

    assert data_url.startswith("data:image/png;base64,")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1]))).convert("RGB"))


def to_u8(image: torch.Tensor) -> np.ndarray:
    return (image.float().clamp(0, 1).numpy() * 255.0 + 0.5).astype(np.uint8)


# ------------------------------------------------------------------------------------------ the edit
def test_queued_edit_equals_apply_direction_chain_and_generate(generator, latent, directions, ids):
    age, pose, gs = directions
    images, edited = run_studio(generator, latent, [age, pose, gs], [1.5, -2.0, 0.75], preview="256")
    chain = latent
    for d, s in ((age, 1.5), (pose, -2.0), (gs, 0.75)):
        chain = TransEditApplyDirection().apply(chain, d, s, -1, -1)[0]
    torch.testing.assert_close(edited.wplus, chain.wplus, rtol=0, atol=0)
    torch.testing.assert_close(images, generate(generator, chain), rtol=0, atol=0)
    assert images.shape == (2, 256, 256, 3) and images.dtype == torch.float32
    assert edited.extras["edits"][-1]["strengths"] == [1.5, -2.0, 0.75, 0.0]


def test_zero_strengths_leave_the_latent_unchanged(generator, latent, directions, ids):
    images, edited = run_studio(generator, latent, directions, [0.0, 0.0, 0.0])
    torch.testing.assert_close(edited.wplus, latent.wplus, rtol=0, atol=0)  # GANSpace at 0 is skipped
    torch.testing.assert_close(images, generate(generator, latent), rtol=0, atol=0)


def test_shared_layer_range_applies_to_every_direction(generator, latent, directions, ids):
    age, pose, _ = directions
    _, edited = run_studio(generator, latent, [age, pose], [1.0, 1.0], start=2, end=5)
    changed = (edited.wplus - latent.wplus).abs().sum((0, 2)) > 0
    assert changed.tolist() == [i in (2, 3, 4) for i in range(N)]


def test_preview_is_the_queued_render_at_preview_size(generator, latent, directions, ids):
    """The route's render for given slider values is the skip RGB at preview size of the queued full render
    of the same values (same math, same layers), and the generator stopped there."""
    age, pose, gs = directions
    images, edited = run_studio(generator, latent, [age, pose, gs], [1.0, 0.5, -1.0], start=1, end=9)
    status, body = preview(strengths=[1.0, 0.5, -1.0], start_layer=1, end_layer=9, item=1)
    assert status == 200, body
    assert (body["width"], body["height"]) == (128, 128)
    got = decode(body["image"])
    module = generator.load()
    with torch.inference_mode():
        feats = module.synthesis(edited.wplus[1:2], noise_mode="const", return_features=True)[1]
        stopped = module.synthesis(edited.wplus[1:2], noise_mode="const", max_resolution=128)
    torch.testing.assert_close(stopped, feats["rgb128"], rtol=0, atol=0)
    want = to_u8(((feats["rgb128"] + 1) * 0.5).permute(0, 2, 3, 1)[0])
    np.testing.assert_array_equal(got, want)
    # ...and a 128 px preview of a 256 px generator is not the full image
    assert images.shape[1] == 256


def test_preview_changes_with_the_sliders_and_matches_a_rerun(generator, latent, directions, ids):
    age = directions[0]
    run_studio(generator, latent, [age], [0.0], preview="256")
    s0, b0 = preview(strengths=[0.0])
    s1, b1 = preview(strengths=[3.0])
    assert s0 == s1 == 200
    assert not np.array_equal(decode(b0["image"]), decode(b1["image"]))
    images, _ = run_studio(generator, latent, [age], [3.0], preview="256")  # queue the new value
    np.testing.assert_array_equal(decode(b1["image"]), to_u8(images[0]))  # preview size == full size here


def test_precision_is_the_runs(generator, latent, directions, ids):
    run_studio(generator, latent, directions[:1], [1.0], preview="256", precision="bf16")
    status, body = preview(strengths=[1.0])
    images, _ = run_studio(generator, latent, directions[:1], [1.0], preview="256", precision="bf16")
    assert status == 200
    np.testing.assert_array_equal(decode(body["image"]), to_u8(images[0]))


# ------------------------------------------------------------------------------------ remembered runs
def test_unknown_ids_and_reruns(generator, latent, directions, ids):
    status, body = preview()
    assert status == 404 and body["reason"] == "unknown" and "queue the graph" in body["error"]
    run_studio(generator, latent, directions[:1], [1.0])
    assert preview()[0] == 200
    assert preview(prompt_id="p-0")[0] == 404
    assert preview(node_id="8")[0] == 404
    ids["ids"] = ("7", "p-2")  # the node runs again in a new prompt: the old ids are forgotten
    run_studio(generator, latent, directions[:1], [1.0])
    assert preview()[0] == 404
    assert preview(prompt_id="p-2")[0] == 200
    assert len(studio.SERVICE) == 1


def test_remembered_runs_are_bounded(generator, latent, directions, ids):
    service = studio.StudioService(max_runs=3)
    for k in range(5):
        service.remember(studio.StudioRun(node_id=str(k), prompt_id="p", generator=lambda: generator,
                                          wplus=latent.wplus, latent_meta={}, directions=[directions[0]],
                                          preview_size="128", precision="fp32"))
    assert len(service) == 3
    assert preview(service, node_id="0", prompt_id="p")[0] == 404  # the oldest went first
    assert preview(service, node_id="4", prompt_id="p")[0] == 200


def test_a_freed_generator_ends_the_run(tmp_path, latent, directions, ids):
    """The run holds the generator weakly: once ComfyUI drops it (Free model and node cache), the preview
    answers 410 and nothing keeps the weights alive."""
    handle = StyleGANHandle(load_stylegan2(save_random_generator(tmp_path / "g.pt", config=CONFIG, seed=5)))
    run_studio(handle, latent, directions[:1], [1.0])
    assert preview()[0] == 200
    ref = __import__("weakref").ref(handle.descriptor.model)
    del handle
    gc.collect()
    assert ref() is None
    status, body = preview()
    assert status == 410 and body["reason"] == "gone" and "queue the graph again" in body["error"]
    assert len(studio.SERVICE) == 0


# --------------------------------------------------------------------------------- latest request wins
def test_only_the_latest_request_renders(generator, latent, directions, ids):
    run_studio(generator, latent, directions[:1], [0.0])
    first = studio.SERVICE.admit({"node_id": "7", "prompt_id": "p-1", "strengths": [1.0], "seq": 1})
    second = studio.SERVICE.admit({"node_id": "7", "prompt_id": "p-1", "strengths": [2.0], "seq": 2})
    rendered = studio.SERVICE.rendered
    status, body = first()
    assert status == 409 and body["reason"] == "superseded" and body["seq"] == 1
    assert studio.SERVICE.rendered == rendered  # dropped without rendering
    status, body = second()
    assert status == 200 and body["seq"] == 2 and body["strengths"] == [2.0]


def test_many_requests_at_once(generator, latent, directions, ids):
    run_studio(generator, latent, directions[:1], [0.0])
    answers = []
    admitted = [studio.SERVICE.admit({"node_id": "7", "prompt_id": "p-1", "strengths": [k / 10], "seq": k})
                for k in range(24)]
    threads = [threading.Thread(target=lambda a=a: answers.append(a())) for a in admitted]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    statuses = sorted(s for s, _ in answers)
    assert statuses == [200] + [409] * 23, statuses
    (winner,) = [b for s, b in answers if s == 200]
    assert winner["seq"] == 23


# ----------------------------------------------------------------------------------- hostile requests
@pytest.mark.parametrize("fields, field", [
    ({"node_id": "../../etc/passwd"}, "node_id"),
    ({"node_id": 7}, "node_id"),
    ({"node_id": "x" * 65}, "node_id"),
    ({"prompt_id": None}, "prompt_id"),
    ({"prompt_id": "/tmp/model.pt"}, "prompt_id"),
    ({"strengths": "1.0"}, "strengths"),
    ({"strengths": []}, "strengths"),
    ({"strengths": [0.1] * 5}, "strengths"),
    ({"strengths": [float("nan")]}, "strengths"),
    ({"strengths": [float("inf")]}, "strengths"),
    ({"strengths": [1e308]}, "strengths"),
    ({"strengths": [10 ** 400]}, "strengths"),
    ({"strengths": [True]}, "strengths"),
    ({"strengths": ["1"]}, "strengths"),
    ({"strengths": [[1.0]]}, "strengths"),
    ({"start_layer": 1.5}, "start_layer"),
    ({"end_layer": 10 ** 9}, "end_layer"),
    ({"item": -1}, "item"),
    ({"item": "0"}, "item"),
    ({"seq": -3}, "seq"),
    ({"checkpoint": "evil.pkl"}, "checkpoint"),
])
def test_malformed_requests_get_a_clear_400(generator, latent, directions, ids, fields, field):
    run_studio(generator, latent, directions[:1], [0.0])
    body = {"node_id": "7", "prompt_id": "p-1", "strengths": [0.0]}
    body.update(fields)
    status, answer = studio.SERVICE.handle(body)
    assert status == 400 and answer["field"] == field and answer["error"], answer


def test_values_the_run_cannot_take_get_a_clear_400(generator, latent, directions, ids):
    run_studio(generator, latent, directions[:1], [0.0])
    status, body = preview(item=2)  # the batch has 2 latents
    assert status == 400 and body["field"] == "item" and "0..1" in body["error"]
    status, body = preview(start_layer=5, end_layer=3)
    assert status == 400 and body["field"] == "end_layer"
    status, body = preview(end_layer=N + 1)
    assert status == 400 and body["field"] == "end_layer"
    assert preview(strengths=[studio.STUDIO_STRENGTH + 1])[0] == 400
    assert studio.SERVICE.handle([1, 2])[0] == 400


def test_cancel_stops_a_preview(generator, latent, directions, ids, monkeypatch):
    """Cancel pressed while a preview renders stops it at the next layer, and the flag is only read: neither
    ComfyUI's own check nor a reset (both clear it) is called, so the same Cancel still reaches the queued job."""
    run_studio(generator, latent, directions[:1], [0.0])
    reads = []

    def pressed():  # read once when the render starts, then once per layer; pressed at the third layer
        reads.append(1)
        return len(reads) - 1 >= 3

    def consumed():
        raise AssertionError("a preview consumed ComfyUI's Cancel flag")

    monkeypatch.setattr(bridge, "interrupt_requested", pressed)
    monkeypatch.setattr(bridge, "check_interrupt", consumed)
    monkeypatch.setattr(bridge, "clear_interrupt", consumed)
    status, body = preview(strengths=[1.0], seq=4)
    assert status == 409 and body["reason"] == "cancelled" and body["seq"] == 4
    assert len(reads) - 1 == 3
    monkeypatch.undo()
    assert preview(strengths=[1.0])[0] == 200


def test_a_cancel_left_set_is_reset_and_a_new_press_still_stops_the_preview(generator, latent, directions, ids,
                                                                            monkeypatch):
    """A Cancel pressed with an idle queue stays set until the next prompt starts (ComfyUI clears it then): a
    preview starting with it set resets it (no prompt will read it) and renders; a press during the next preview
    stops that one, as the first press would have if nothing had been left set."""
    run_studio(generator, latent, directions[:1], [0.0])
    flag = {"set": True, "resets": 0}
    monkeypatch.setattr(bridge, "interrupt_requested", lambda: flag["set"])
    monkeypatch.setattr(bridge, "clear_interrupt", lambda: flag.update(set=False, resets=flag["resets"] + 1))
    assert preview(strengths=[1.0])[0] == 200 and flag == {"set": False, "resets": 1}
    assert preview(strengths=[0.5])[0] == 200 and flag["resets"] == 1  # nothing to reset
    flag["set"] = True  # pressed again, with the queue idle
    at_layer, release, layers = slowed_at_layer(monkeypatch, 1)
    answers = []
    worker = threading.Thread(target=lambda: answers.append(preview(strengths=[1.5])))
    worker.start()
    assert at_layer.wait(timeout=60)
    assert flag == {"set": False, "resets": 2}
    flag["set"] = True  # pressed during the render
    release.set()
    worker.join(timeout=60)
    (status, body), = answers
    assert status == 409 and body["reason"] == "cancelled" and max(layers) == 1, (body, layers)


class FakeQueue:
    """ComfyUI's queue as the gate reads it: pending prompt ids, a running count, the Cancel flag."""

    def __init__(self):
        self.pending, self.running, self.cancel = set(), 0, False
        self.pending_reads = 0

    def busy(self):
        return bool(self.pending) or self.running > 0

    def pending_ids(self):
        self.pending_reads += 1
        return set(self.pending)

    def clear(self):
        self.cancel = False

    def gate(self):
        return preview_service.PreviewGate(self.busy, self.pending_ids, lambda: self.cancel, self.clear)


def test_a_hold_lasts_until_the_worker_takes_its_prompt():
    queue = FakeQueue()
    gate = queue.gate()
    assert gate.holds() == 0 and gate.refusal() is None
    first, second = gate.prompt_arriving(), gate.prompt_arriving()
    assert first != second and gate.holds() == 2
    assert queue.pending_reads == 0  # nothing queued yet: the queue is not read
    assert gate.refusal() == preview_service.BUSY  # being validated: held although the queue is idle
    gate.prompt_routed(first, "p-a")
    queue.pending.add("p-a")
    assert gate.holds() == 2
    gate.prompt_routed(second, None)  # rejected: its hold ends at once
    assert gate.holds() == 1
    queue.pending.discard("p-a")  # taken by the worker: running, the busy queue covers it
    queue.running = 1
    assert gate.holds() == 0 and gate.refusal() == preview_service.BUSY
    queue.running = 0
    assert gate.refusal() is None
    gate.prompt_routed(first, "p-a")  # a late answer for a hold that ended adds nothing
    assert gate.holds() == 0


def test_a_hold_waits_for_its_own_prompt_not_any_other():
    """The bug of the on-prompt hook: any busy queue cleared the hold. Here another prompt runs and finishes while
    ours is validated: ours still holds previews until the worker takes it."""
    queue = FakeQueue()
    gate = queue.gate()
    queue.pending.add("other")
    ours = gate.prompt_arriving()
    queue.pending.discard("other")
    queue.running = 1
    assert gate.refusal() == preview_service.BUSY and gate.holds() == 1
    queue.running = 0  # the other prompt finished; ours is still being validated
    assert gate.refusal() == preview_service.BUSY and gate.holds() == 1
    gate.prompt_routed(ours, "ours")
    queue.pending.add("ours")
    assert gate.refusal() == preview_service.BUSY and gate.holds() == 1
    queue.pending.clear()
    assert gate.refusal() is None


def test_a_server_that_does_not_list_its_queue_lets_the_busy_check_cover_a_queued_prompt():
    gate = preview_service.PreviewGate(lambda: False, lambda: None, lambda: False, lambda: None)
    token = gate.prompt_arriving()
    assert gate.holds() == 1
    gate.prompt_routed(token, 42)
    assert gate.holds() == 0 and gate.refusal() is None


def test_the_layer_check_stops_on_a_hold_a_busy_queue_or_a_new_cancel():
    queue = FakeQueue()
    gate = queue.gate()
    check = gate.layer_check()
    check()  # idle: goes on
    token = gate.prompt_arriving()
    with pytest.raises(preview_service.PreviewStopped) as stopped:
        check()
    assert (stopped.value.status, stopped.value.reason) == (503, "busy") and "queued" in str(stopped.value)
    gate.prompt_routed(token, "p")
    queue.pending.add("p")
    with pytest.raises(preview_service.PreviewStopped):  # queued, not yet taken: still held
        check()
    queue.pending.clear()
    gate.holds()
    check()
    queue.running = 1  # a prompt that came by another route: the queue alone stops the render
    with pytest.raises(preview_service.PreviewStopped) as stopped:
        check()
    assert stopped.value.status == 503
    queue.running = 0
    queue.cancel = True
    with pytest.raises(preview_service.PreviewStopped) as stopped:
        check()
    assert (stopped.value.status, stopped.value.reason, str(stopped.value)) == (409, "cancelled", "cancelled")
    assert queue.cancel  # only read
    check_after = gate.layer_check()  # a render that starts with the flag set: an old press, reset
    assert not queue.cancel
    check_after()


def test_one_render_at_a_time_and_rendering_says_so():
    gate = FakeQueue().gate()
    inside, release, order = threading.Event(), threading.Event(), []

    def first():
        with gate.render_slot():
            order.append("first in")
            inside.set()
            release.wait(timeout=30)
            order.append("first out")

    def second():
        with gate.render_slot():
            order.append("second in")

    assert not gate.rendering()
    a = threading.Thread(target=first)
    a.start()
    assert inside.wait(timeout=30) and gate.rendering()
    b = threading.Thread(target=second)
    b.start()
    time.sleep(0.05)
    assert order == ["first in"]
    release.set()
    a.join(timeout=30)
    b.join(timeout=30)
    assert order == ["first in", "first out", "second in"] and not gate.rendering()


@pytest.mark.parametrize("status, body, expected", [
    (200, b'{"prompt_id": "abc", "number": 3}', "abc"),
    (200, '{"prompt_id": 17}', "17"),
    (400, b'{"prompt_id": "abc"}', None),
    (200, None, None),
    (200, b"not json", None),
    (200, b"\xff\xfe", None),
    (200, b"[1, 2]", None),
    (200, b'{"number": 3}', None),
    (200, 12, None),
])
def test_the_queued_prompt_is_read_from_the_routes_answer(status, body, expected, caplog):
    with caplog.at_level("WARNING", logger="TransEdit"):
        assert preview_service.queued_prompt_id(status, body) == expected
    # an answer that is not JSON is said, not passed over: previews then go on without waiting for that prompt
    unreadable = status == 200 and body in (b"not json", b"\xff\xfe", 12)
    assert ("not JSON" in caplog.text) == unreadable


class FakeResponse:
    def __init__(self, status, prompt_id=None):
        self.status = status
        self.body = json.dumps({"prompt_id": prompt_id} if prompt_id else {"error": "invalid"}).encode()


def answer_of(response):
    return response.status, response.body


def test_a_submitted_prompt_is_held_from_its_arrival_to_the_worker():
    queue = FakeQueue()
    gate = queue.gate()
    seen = []

    async def submit():
        seen.append(gate.holds())
        await asyncio.sleep(0)
        queue.pending.add("p-1")  # ComfyUI queues it before answering
        return FakeResponse(200, "p-1")

    response = asyncio.run(preview_service.submit_after_previews(gate, submit, answer_of))
    assert response.status == 200 and seen == [1]
    assert gate.holds() == 1  # queued, not taken
    queue.pending.clear()
    assert gate.holds() == 0


def test_a_rejected_or_failed_submission_ends_its_hold():
    gate = FakeQueue().gate()

    async def rejected():
        return FakeResponse(400)

    async def failing():
        raise RuntimeError("validation blew up")

    assert asyncio.run(preview_service.submit_after_previews(gate, rejected, answer_of)).status == 400
    assert gate.holds() == 0
    with pytest.raises(RuntimeError, match="blew up"):
        asyncio.run(preview_service.submit_after_previews(gate, failing, answer_of))
    assert gate.holds() == 0


def test_a_submitted_prompt_waits_for_the_preview_without_holding_the_event_loop():
    """The prompt route runs only once the render let go; meanwhile the event loop serves everyone else."""
    gate = FakeQueue().gate()
    inside, release = threading.Event(), threading.Event()
    events = []

    def preview():
        with gate.render_slot():
            inside.set()
            release.wait(timeout=30)
            events.append("preview let go")

    async def submit():
        events.append("route ran")
        return FakeResponse(400)

    async def main():
        ticks = 0
        task = asyncio.create_task(preview_service.submit_after_previews(gate, submit, answer_of, poll=0.005))
        while ticks < 20:  # the loop keeps turning while the prompt waits
            await asyncio.sleep(0.005)
            ticks += 1
        assert events == [] and gate.holds() == 1
        release.set()
        await task
        return ticks

    worker = threading.Thread(target=preview)
    worker.start()
    assert inside.wait(timeout=30)
    assert asyncio.run(main()) == 20
    worker.join(timeout=30)
    assert events == ["preview let go", "route ran"] and gate.holds() == 0


def test_a_submitted_prompt_goes_ahead_within_a_poll_of_the_preview_letting_go():
    """The prompt's wait follows the render lock closely (the default poll): five looks while the preview holds
    the models, then the route, all in a small fraction of a second."""
    gate = FakeQueue().gate()
    looks = []

    def rendering():
        looks.append(time.monotonic())
        return len(looks) <= 5

    gate.rendering = rendering

    async def submit():
        return FakeResponse(400)

    t0 = time.monotonic()
    asyncio.run(preview_service.submit_after_previews(gate, submit, answer_of))
    assert len(looks) == 6 and time.monotonic() - t0 < 1.0


def test_a_preview_that_cannot_stop_holds_the_prompt_back_only_so_long(caplog):
    gate = FakeQueue().gate()
    inside, release = threading.Event(), threading.Event()

    def stuck():
        with gate.render_slot():
            inside.set()
            release.wait(timeout=30)

    async def submit():
        return FakeResponse(400)

    worker = threading.Thread(target=stuck)
    worker.start()
    assert inside.wait(timeout=30)
    try:
        t0 = time.monotonic()
        asyncio.run(preview_service.submit_after_previews(gate, submit, answer_of, wait_seconds=0.1, poll=0.01))
        waited = time.monotonic() - t0
    finally:
        release.set()
        worker.join(timeout=30)
    assert 0.1 <= waited < 20
    assert "did not stop within" in caplog.text


def test_a_submission_cancelled_while_waiting_ends_its_hold():
    gate = FakeQueue().gate()
    inside, release = threading.Event(), threading.Event()

    def preview():
        with gate.render_slot():
            inside.set()
            release.wait(timeout=30)

    async def submit():
        raise AssertionError("the route ran while the preview held the models")

    async def main():
        task = asyncio.create_task(preview_service.submit_after_previews(gate, submit, answer_of))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    worker = threading.Thread(target=preview)
    worker.start()
    assert inside.wait(timeout=30)
    try:
        asyncio.run(main())
    finally:
        release.set()
        worker.join(timeout=30)
    assert gate.holds() == 0


def slowed_at_layer(monkeypatch, layer_to_wait: int):
    """The render waits at one layer until released (the models are in use there)."""
    at_layer, release, layers = threading.Event(), threading.Event(), []
    real = rendering._synthesise

    def slow(module, wplus, device, dtype, noise_mode, seeds, feature_hook=None, *args, **kwargs):
        def hook(layer, x):
            layers.append(layer)
            if layer == layer_to_wait:
                at_layer.set()
                release.wait(timeout=60)
            return feature_hook(layer, x) if feature_hook is not None else None

        return real(module, wplus, device, dtype, noise_mode, seeds, hook, *args, **kwargs)

    monkeypatch.setattr(rendering, "_synthesise", slow)
    return at_layer, release, layers


def test_a_submitted_prompt_stops_the_preview_at_its_next_layer(generator, latent, directions, ids, monkeypatch):
    """The hold is taken without waiting (on the event loop), the render stops after the layer it is in, and new
    previews are refused until the worker has taken the prompt and the queue is idle again."""
    queue = FakeQueue()
    service = studio.StudioService(gate=queue.gate())
    monkeypatch.setattr(studio, "SERVICE", service)  # the node remembers its run there
    run_studio(generator, latent, directions[:1], [0.0])
    at_layer, release, layers = slowed_at_layer(monkeypatch, 2)
    answers = []
    worker = threading.Thread(target=lambda: answers.append(preview(service, strengths=[1.0], seq=7)))
    worker.start()
    assert at_layer.wait(timeout=60)
    token = service.gate.prompt_arriving()  # returns at once, with the render still in its layer
    assert service.gate.rendering() and worker.is_alive()
    release.set()
    worker.join(timeout=60)
    (status, body), = answers
    assert status == 503 and body["reason"] == "busy" and body["seq"] == 7, body
    assert max(layers) == 2 and not service.gate.rendering()  # no layer after the one it was in
    assert body["started_ms"] <= body["ended_ms"]
    status, body = preview(service, strengths=[1.0])
    assert status == 503 and "started_ms" not in body  # refused before touching the models
    service.gate.prompt_routed(token, "p-9")
    queue.pending.add("p-9")
    assert preview(service, strengths=[1.0])[0] == 503
    queue.pending.clear()
    queue.running = 1
    assert preview(service, strengths=[1.0])[0] == 503
    queue.running = 0
    status, body = preview(service, strengths=[1.0])
    assert status == 200 and body["started_ms"] <= body["ended_ms"]
    assert service.rendered == 1


def test_a_prompt_queued_by_another_route_stops_the_preview(generator, latent, directions, ids, monkeypatch):
    """No hold (the prompt did not come through POST /prompt): the render reads the queue between layers."""
    queue = FakeQueue()
    service = studio.StudioService(gate=queue.gate())
    monkeypatch.setattr(studio, "SERVICE", service)  # the node remembers its run there
    run_studio(generator, latent, directions[:1], [0.0])
    at_layer, release, layers = slowed_at_layer(monkeypatch, 1)
    answers = []
    worker = threading.Thread(target=lambda: answers.append(preview(service, strengths=[1.0], seq=3)))
    worker.start()
    assert at_layer.wait(timeout=60)
    queue.pending.add("elsewhere")
    release.set()
    worker.join(timeout=60)
    (status, body), = answers
    assert status == 503 and max(layers) == 1, (body, layers)


def test_out_of_memory_is_answered_not_raised(generator, latent, directions, ids, monkeypatch):
    run_studio(generator, latent, directions[:1], [0.0])

    def full(*args, **kwargs):
        raise bridge.oom_exception()("CUDA out of memory (simulated)")

    monkeypatch.setattr(rendering, "_synthesise", full)
    status, body = preview(strengths=[1.0])
    assert status == 507 and "TransEdit Edit Studio: out of memory" in body["error"]


# ------------------------------------------------------------------------------------------ node errors
def test_node_errors_name_the_input(generator, latent, directions, ids):
    age = directions[0]
    with pytest.raises(NodeInputError, match="strength_2"):
        run_studio(generator, latent, [age], [0.0, 25.0])
    with pytest.raises(NodeInputError, match="direction_3"):
        studio.TransEditEditStudio().edit(generator, latent, age, 0, 0, 0, 0, -1, -1, "128", "fp32",
                                          direction_3="not a direction")
    with pytest.raises(NodeInputError, match="end_layer"):
        run_studio(generator, latent, [age], [1.0], start=3, end=3)
    with pytest.raises(NodeInputError, match="direction_1"):
        studio.TransEditEditStudio().edit(generator, latent, None, 0, 0, 0, 0, -1, -1, "128", "fp32")
    with pytest.raises(NodeInputError, match="preview_size"):
        run_studio(generator, latent, [age], [1.0], preview="300")


def test_no_ids_no_preview(generator, latent, directions, monkeypatch):
    """Called outside a ComfyUI run (scripts), the node renders and remembers nothing."""
    studio.SERVICE.forget()
    monkeypatch.setattr(bridge, "executing_ids", lambda unique_id: ("", ""))
    run_studio(generator, latent, directions[:1], [1.0])
    assert len(studio.SERVICE) == 0


def test_a_direction_for_another_generator_is_named_by_its_slot(generator, latent, directions, ids):
    wrong = LatentDirection("ffhq_age", rand(512, seed=9))
    with pytest.raises(NodeInputError, match=r"input 'direction_2' .*W\+ \[14, 32\]"):
        run_studio(generator, latent, [directions[0], wrong], [1.0, 1.0])


def test_the_run_reports_each_slots_direction_name_for_its_slider(generator, latent, directions, ids, monkeypatch):
    """The frontend labels each strength slider with its direction's name: the run's message carries one name per
    slot (None where nothing is connected), on one line and cut short, whatever the file called it."""
    real_render = studio.render_latents

    def render_then_in_comfyui(*args, **kwargs):  # the node renders here, then answers as inside ComfyUI
        monkeypatch.setattr(bridge, "IN_COMFYUI", False)
        out = real_render(*args, **kwargs)
        monkeypatch.setattr(bridge, "IN_COMFYUI", True)
        return out

    monkeypatch.setattr(studio, "render_latents", render_then_in_comfyui)
    monkeypatch.setattr(studio, "compare_ui", lambda before, after: {studio.COMPARE_KEY: [{"pairs": []}]})
    age, _, ganspace = directions
    long_name = LatentDirection("x" * 200, age.vector)
    odd = LatentDirection("smile\n  wide\t", age.vector)
    out = run_studio(generator, latent, [age, None, ganspace, long_name], [1.0, 0.0, 0.5, 0.0])
    (payload,) = out["ui"][studio.UI_KEY]
    names = payload["directions"]
    assert names[:3] == ["age", None, "gs"]
    assert len(names[3]) == studio.MAX_NAME_CHARS and names[3].startswith("xxx") and names[3].endswith("…")
    assert studio.slot_names([odd, None, None, None]) == ["smile wide", None, None, None]
    assert studio.slot_names([LatentDirection("  ", age.vector)])[0] == "direction"
    assert studio.slot_names([LatentDirection("y" * studio.MAX_NAME_CHARS, age.vector)])[0] == "y" * studio.MAX_NAME_CHARS
    assert payload["values"]["strengths"] == [1.0, 0.0, 0.5, 0.0] and out["result"][0].shape[0] == 2


def test_smart_refined_latents_preview_and_queue_with_smart(tmp_path, ids):
    """A latent that went through SMART Refine before the studio: the queued image is what Apply Direction +
    Generate give (SMART applied in the generator), and the preview renders with SMART too; the run holds the
    SMART block weakly."""
    from transedit.random_weights import save_random_encoder
    from transedit.nodes.inversion import RESIZE_MODES, TransEditInvert, TransEditLoadEncoder, TransEditSMARTRefine

    folder = tmp_path / "gan_encoders"
    folder.mkdir()
    save_random_encoder(folder / "sp.pt", "styleprompter")
    bridge.set_fallback_folder("gan_encoders", [str(folder)])
    try:
        encoder, gen = TransEditLoadEncoder().load("sp.pt")
    finally:
        bridge._fallback_paths.pop("gan_encoders", None)
    faces = rand(2, 64, 64, 3, seed=5).sigmoid()
    latent = TransEditInvert().invert(encoder, faces, RESIZE_MODES[0], "fp32")[0]
    refined = TransEditSMARTRefine().refine(latent, encoder, 1.0, 1.0)[0]
    age = LatentDirection("age", rand(latent.style_dim, seed=1))
    images, _ = run_studio(gen, refined, [age], [2.0], preview="256")
    chain = TransEditApplyDirection().apply(refined, age, 2.0, -1, -1)[0]
    torch.testing.assert_close(images, generate(gen, chain), rtol=0, atol=0)
    plain = generate(gen, TransEditApplyDirection().apply(latent, age, 2.0, -1, -1)[0])
    assert (images - plain).abs().max() > 1e-3  # SMART changed the picture
    status, body = preview(strengths=[2.0], item=1)
    assert status == 200, body
    np.testing.assert_array_equal(decode(body["image"]), to_u8(images[1]))  # 64 px: preview = full image


def test_the_studio_previews_the_face_it_is_pointed_at(generator, directions, ids, monkeypatch):
    """preview_face k (a group photo's faces in one batch): the before/after pairs and the payload's items start
    at face k, so the frontend's pair switch and live previews show faces k.. (items beyond the batch: an error
    naming the input)."""
    faces = TransEditSampleLatent().sample(generator, 3, 6, 0.7)[0]
    real_render = studio.render_latents

    def render_then_in_comfyui(*args, **kwargs):
        monkeypatch.setattr(bridge, "IN_COMFYUI", False)
        out = real_render(*args, **kwargs)
        monkeypatch.setattr(bridge, "IN_COMFYUI", True)
        return out

    seen = {}
    monkeypatch.setattr(studio, "render_latents", render_then_in_comfyui)
    monkeypatch.setattr(studio, "compare_ui", lambda before, after: seen.update(after=after) or
                        {studio.COMPARE_KEY: [{"pairs": []}]})
    age = directions[0]
    out = studio.TransEditEditStudio().edit(generator, faces, age, 1.0, 0.0, 0.0, 0.0, -1, -1, "128", "fp32",
                                            preview_face=4, unique_id="7")
    (payload,) = out["ui"][studio.UI_KEY]
    assert payload["items"] == [4, 5] and payload["total"] == 6
    images = out["result"][0]
    small = torch.nn.functional.interpolate(images[4:6].permute(0, 3, 1, 2), size=128, mode="area")
    assert seen["after"].shape[0] == 2
    # the pairs are faces 4 and 5 (the skip RGB at 128 is close to the full render shrunk, unlike other faces)
    err = lambda k: (seen["after"][0].permute(2, 0, 1) - small[k]).abs().mean()  # noqa: E731
    assert err(0) < err(1)
    monkeypatch.setattr(bridge, "IN_COMFYUI", False)
    status, body = preview(strengths=[1.0], item=5)  # the frontend asks for the item its pair shows
    assert status == 200 and body["item"] == 5
    with pytest.raises(NodeInputError, match="TransEdit Edit Studio: input 'preview_face' is 6 but the latent "
                                             "holds 6 face"):
        studio.TransEditEditStudio().edit(generator, faces, age, 1.0, 0.0, 0.0, 0.0, -1, -1, "128", "fp32",
                                          preview_face=6, unique_id="7")
