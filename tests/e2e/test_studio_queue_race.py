"""Edit Studio's live preview and ComfyUI's queue on a real server, in repeated trials over real HTTP.

What must hold in every trial: no preview uses the models while a prompt executes (each rendering preview's
[started_ms, ended_ms] is disjoint from each prompt's [execution_start, end] in ComfyUI's history), no preview starts
while a submitted prompt is on its way to the worker, two previews never render at once, the event loop keeps
answering while a preview cannot stop, and Cancel reaches the prompt it was meant for. The states:

- a prompt from another client lands in the middle of a preview;
- a prompt is submitted while another one is finishing: it is still being validated when the queue goes idle (the
  hole the on-prompt hook left: the hold was cleared by the other prompt's busy queue);
- two previews race (two Edit Studio nodes), with and without a prompt landing;
- Cancel in each of these states;
- a preview stuck in an uninterruptible load while a prompt is submitted (GET /queue latency meanwhile).

A test-only pack (PROBE_PACK below, written into the server's custom_nodes) makes the states reproducible: a work node
whose validation waits until the test releases it (or rejects it) and whose execution sleeps in Cancel-checked
steps, and a route that slows the preview's layers (sleeps: the two CI cores stay free) or its load and can plant
faults, each of which a trial here is shown to catch: the old on-prompt hook that waited on the event loop, the old
hold dropped while the queue is busy with another prompt, no render lock, and a render deaf to Cancel. The trials run on each server version once (the
newest-frontend kind serves the same server code).
"""
from __future__ import annotations

import contextlib
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
GEN = "race-tiny.pt"
SEFA = "sefa: from the generator input (all layers)"
TRIALS = 20
LAYER_SECONDS = 0.03  # each preview layer sleeps this long (a tiny generator otherwise renders in a blink)
STUCK_SECONDS = 2.0  # the planted uninterruptible load
STALL_LATENCY = STUCK_SECONDS / 2  # a GET /queue slower than this while a preview is stuck means a blocked loop
PROMPT_PATHS = ("/prompt", "/api/prompt")  # the trials alternate: scripts use the first, the frontend the second

PROBE_PACK = r'''
"""Test-only pack for tests/e2e/test_studio_queue_race.py (written there; never shipped)."""
import asyncio
import contextlib
import sys
import time

import comfy.model_management as mm
from aiohttp import web
from server import PromptServer

RELEASE = {}  # tag -> asyncio.Event: the work node's validation waits for it
VALIDATING = set()
STATE = {"layers": 0, "layer_seconds": 0.0, "load_seconds": 0.0, "fault": "none"}
ORIGINAL = {}


def studio():
    found = [m for name, m in list(sys.modules.items())
             if name.endswith("nodes.edit_studio") and hasattr(m, "SERVICE") and not name.startswith("transedit.")]
    if len(found) != 1:
        raise RuntimeError(f"expected the TransEdit pack's Edit Studio module once, found {len(found)}")
    return found[0]


class RaceWork:
    CATEGORY = "TransEdit tests"
    FUNCTION = "work"
    RETURN_TYPES = ()
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"seconds": ("FLOAT", {"default": 0.1, "min": 0, "max": 60}),
                             "tag": ("STRING", {"default": ""}),
                             "hold": ("BOOLEAN", {"default": False}),
                             "reject": ("BOOLEAN", {"default": False})},
                "optional": {"generator": ("TE_STYLEGAN",)}}

    @classmethod
    async def VALIDATE_INPUTS(cls, tag, hold, reject):
        if hold:
            VALIDATING.add(tag)
            try:
                await asyncio.wait_for(RELEASE.setdefault(tag, asyncio.Event()).wait(), 120)
            except asyncio.TimeoutError:
                return "never released by the test"
            finally:
                VALIDATING.discard(tag)
        return "rejected on purpose" if reject else True

    def work(self, seconds, tag, hold, reject, generator=None):
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            mm.throw_exception_if_processing_interrupted()
            time.sleep(0.01)
        return {}


def plant(layer_seconds=0.0, load_seconds=0.0, fault="none"):
    module = studio()
    gate = module.SERVICE.gate
    ORIGINAL.setdefault("render_latents", module.render_latents)
    render = ORIGINAL["render_latents"]
    STATE.update(layer_seconds=layer_seconds, load_seconds=load_seconds, fault=fault)

    def slowed(*args, cancel=None, cancel_each_layer=False, **kwargs):
        if not cancel_each_layer:  # the queued node: untouched
            return render(*args, cancel=cancel, cancel_each_layer=cancel_each_layer, **kwargs)
        time.sleep(STATE["load_seconds"])  # inside the render lock, before any layer: cannot stop

        def check():
            time.sleep(STATE["layer_seconds"])
            STATE["layers"] += 1
            cancel()

        return render(*args, cancel=check, cancel_each_layer=True, **kwargs)

    module.render_latents = slowed
    for name in ("prompt_arriving", "render_slot", "layer_check"):
        gate.__dict__.pop(name, None)
    arriving = gate.prompt_arriving
    if fault == "blocking_hook":  # the old hook: wait on the event loop until the preview lets go
        def blocking():
            token = arriving()
            t0 = time.monotonic()
            while gate.rendering() and time.monotonic() - t0 < 120:
                time.sleep(0.005)
            return token
        gate.prompt_arriving = blocking
    elif fault == "no_hold_while_busy":  # the old clearing: a busy queue (any prompt) was taken to cover ours
        def clearing():
            token = arriving()
            if PromptServer.instance.prompt_queue.get_tasks_remaining() > 0:
                gate.prompt_routed(token, None)
            return token
        gate.prompt_arriving = clearing
    elif fault == "no_render_lock":  # two previews may render at once
        gate.render_slot = contextlib.nullcontext
    elif fault == "no_layer_checks":  # the render never looks at holds, the queue or Cancel between layers
        gate.layer_check = lambda: (lambda: None)


routes = PromptServer.instance.routes


@routes.post("/transedit_race/plant")
async def plant_route(request):
    plant(**(await request.json()))
    return web.json_response(STATE)


@routes.post("/transedit_race/release")
async def release_route(request):
    RELEASE.setdefault((await request.json())["tag"], asyncio.Event()).set()
    return web.json_response({})


@routes.get("/transedit_race/state")
async def state_route(request):
    gate = studio().SERVICE.gate
    return web.json_response({**STATE, "validating": sorted(VALIDATING), "rendering": gate.rendering(),
                              "holds": gate.holds()})


NODE_CLASS_MAPPINGS = {"TransEditRaceWork": RaceWork}
'''


# ------------------------------------------------------------------------------------------ the server
@pytest.fixture(scope="module")
def server(comfy_root, tmp_path_factory):
    if getattr(comfy_root, "kind", "").endswith("-newest-frontend"):
        pytest.skip("the same server code as its release's pinned-frontend kind, where these trials run")
    weights = h.make_tiny_weights("stylegan", GEN, tmp_path_factory.mktemp("race_weights"))
    probe = tmp_path_factory.mktemp("race_probe") / "transedit_race_probe"
    probe.mkdir()
    (probe / "__init__.py").write_text(PROBE_PACK)
    with h.ComfyServer(comfy_root, models={"stylegan": {GEN: weights}},
                       custom_nodes={h.PACK_FOLDER_NAME: h.REPO, "transedit_race_probe": probe}) as srv:
        race = Race(srv)
        race.plant(layer_seconds=LAYER_SECONDS)
        yield race


def call(server, method: str, path: str, body=None, timeout: float = 600.0) -> tuple[int, dict]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(server.url + path, data=data, method=method,
                                 headers={"Content-Type": "application/json"} if data else {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


class Race:
    """The server, its two remembered Edit Studio runs and the probe's controls."""

    def __init__(self, srv: h.ComfyServer):
        self.srv = srv
        self.seq = 0
        history = srv.run(studio_prompt())
        self.runs = {node: history["outputs"][node]["transedit_studio"][0] for node in ("4", "5")}
        for node in self.runs:  # loads and warms the generator
            status, answer = self.preview(node)
            assert status == 200, answer

    def plant(self, **fields) -> None:
        status, answer = call(self.srv, "POST", "/transedit_race/plant", fields)
        assert status == 200, answer

    def state(self) -> dict:
        return call(self.srv, "GET", "/transedit_race/state")[1]

    def release(self, tag: str) -> None:
        assert call(self.srv, "POST", "/transedit_race/release", {"tag": tag})[0] == 200

    def preview(self, node: str = "4") -> tuple[int, dict]:
        self.seq += 1
        run = self.runs[node]
        return call(self.srv, "POST", ROUTE, {"node_id": run["node_id"], "prompt_id": run["prompt_id"],
                                              "strengths": [1.0 + self.seq % 7 / 10, 0, 0, 0], "seq": self.seq})

    def preview_in_thread(self, node: str = "4") -> tuple[threading.Thread, list]:
        answers: list = []
        thread = threading.Thread(target=lambda: answers.append(self.preview(node)))
        thread.start()
        return thread, answers

    def until(self, condition, what: str) -> None:
        """Wait while the server makes progress (no wall-clock limit of its own)."""
        watch = h.ProgressWatch(self.srv.progress_marker)
        while not condition():
            stuck = watch.check()
            assert stuck is None, f"waiting for {what}: {stuck}\n{self.srv.log_tail()}"
            time.sleep(0.005)

    def layers_rendered(self, since: int, count: int, thread: threading.Thread) -> None:
        """Until the preview in `thread` has rendered `count` layers (or finished)."""
        self.until(lambda: self.state()["layers"] >= since + count or not thread.is_alive(), "preview layers")

    def submit(self, seconds: float, tag: str, client: str = "other-client", hold: bool = False,
               reject: bool = False, path: str = "/prompt") -> tuple[int, dict]:
        """POST a work prompt to `path` (/api/prompt is what the frontend calls)."""
        prompt = {"1": {"class_type": "TransEditLoadStyleGAN", "inputs": {"ckpt_name": GEN}},  # keeps it cached
                  "9": {"class_type": "TransEditRaceWork", "inputs": {"seconds": seconds, "tag": tag, "hold": hold,
                                                                       "reject": reject, "generator": ["1", 0]}}}
        return call(self.srv, "POST", path, {"prompt": prompt, "client_id": client})

    def submit_in_thread(self, *args, **kwargs) -> tuple[threading.Thread, list]:
        answers: list = []
        thread = threading.Thread(target=lambda: answers.append(self.submit(*args, **kwargs)))
        thread.start()
        return thread, answers

    def finished(self, prompt_id: str) -> dict:
        """The prompt's history entry once it ended (success, error or interrupted)."""
        entry: dict = {}

        def done():
            entry.update(self.srv.history(prompt_id) or {})
            return bool(entry)

        self.until(done, f"prompt {prompt_id} to end")
        return entry


def studio_prompt() -> dict:
    studio = {"generator": ["1", 0], "latent": ["2", 0], "direction_1": ["3", 0], "strength_2": 0.0,
              "strength_3": 0.0, "strength_4": 0.0, "start_layer": -1, "end_layer": -1, "preview_size": "128",
              "precision": "fp32"}
    return {
        "1": {"class_type": "TransEditLoadStyleGAN", "inputs": {"ckpt_name": GEN}},
        "2": {"class_type": "TransEditSampleLatent", "inputs": {"generator": ["1", 0], "seed": 42, "batch_size": 1,
                                                                 "truncation": 0.7}},
        "3": {"class_type": "TransEditLoadDirection", "inputs": {"direction": SEFA, "component": 0,
                                                                  "generator": ["1", 0]}},
        "4": {"class_type": "TransEditEditStudio", "inputs": {**studio, "strength_1": 1.0}},
        "5": {"class_type": "TransEditEditStudio", "inputs": {**studio, "strength_1": -1.0}},
    }


# ------------------------------------------------------------------------------------- what must hold
def execution_window(history: dict) -> tuple[int, int, str]:
    """(start ms, end ms, how it ended) of a prompt from its history messages."""
    messages = history["status"]["messages"]
    (start,) = [m[1]["timestamp"] for m in messages if m[0] == "execution_start"]
    ends = [(m[1]["timestamp"], m[0]) for m in messages
            if m[0] in ("execution_success", "execution_interrupted", "execution_error")]
    assert len(ends) == 1, messages
    return start, ends[0][0], ends[0][1]


def rendered_window(answer: dict):
    """[started_ms, ended_ms] of a preview that used the models, or None (refused before touching them)."""
    return (answer["started_ms"], answer["ended_ms"]) if "started_ms" in answer else None


def overlaps(a, b) -> bool:
    return a is not None and b is not None and a[0] < b[1] and b[0] < a[1]


def overlap_violations(previews: list, prompts: list) -> list[str]:
    """Every rendering preview against every executing prompt, and previews against each other."""
    found = []
    windows = [rendered_window(answer) for _, answer in previews]
    for i, window in enumerate(windows):
        for prompt in prompts:
            if overlaps(window, prompt[:2]):
                found.append(f"preview {window} rendered while a prompt executed {prompt[:2]}")
        for other in windows[i + 1:]:
            if overlaps(window, other):
                found.append(f"two previews rendered at once: {window} and {other}")
    return found


def run_trials(trial, count: int = TRIALS) -> list[dict]:
    """Run `trial(i)` `count` times; each returns a record with its 'violations'. All must be clean."""
    records = [trial(i) for i in range(count)]
    bad = [(i, r["violations"]) for i, r in enumerate(records) if r["violations"]]
    assert not bad, f"{len(bad)}/{count} trials broke the rules: {bad[:3]}"
    return records


# ------------------------------------------------------------------------------------------- the trials
def prompt_from_another_client(race: Race, i: int, cancel: bool = False) -> dict:
    """A preview renders; another client submits a prompt after 1-3 of its layers (Cancel: pressed once the prompt
    runs, it must interrupt that prompt)."""
    layers0 = race.state()["layers"]
    preview, previews = race.preview_in_thread()
    race.layers_rendered(layers0, 1 + i % 3, preview)
    t0 = time.monotonic()
    status, queued = race.submit(5.0 if cancel else 0.05, f"other-{cancel}-{i}", client=f"client-{i}",
                                 path=PROMPT_PATHS[i % 2])
    post_seconds = time.monotonic() - t0
    assert status == 200, queued
    if cancel:
        race.until(lambda: queued["prompt_id"] in race.srv.queue_state()[0], "the prompt to run")
        race.srv.interrupt()
    preview.join()
    window = execution_window(race.finished(queued["prompt_id"]))
    (status, answer), = previews
    violations = overlap_violations(previews, [window])
    if status not in (200, 503):
        violations.append(f"preview answered {status}: {answer}")
    if cancel and window[2] != "execution_interrupted":
        violations.append(f"Cancel did not interrupt the running prompt: it ended with {window[2]}")
    if not cancel and window[2] != "execution_success":
        violations.append(f"the prompt ended with {window[2]}")
    return {"violations": violations, "stopped": status == 503 and "started_ms" in answer,
            "post_seconds": post_seconds}


def prompt_while_another_finishes(race: Race, i: int, cancel: bool = False) -> dict:
    """Prompt A runs; prompt B is submitted and held in validation until A has finished and a preview has been
    asked for: the preview must not start (B is on its way). Every fifth B is rejected: its hold must end, and a
    preview renders at once. Cancel: pressed while A runs and B validates; it must stop A, not B."""
    tag_b, reject = f"b-{cancel}-{i}", i % 5 == 4
    status, queued_a = race.submit(5.0 if cancel else 0.15, f"a-{cancel}-{i}", client="client-a")
    assert status == 200, queued_a
    thread_b, answers_b = race.submit_in_thread(0.05, tag_b, client="client-b", hold=True, reject=reject,
                                                path=PROMPT_PATHS[i % 2])
    race.until(lambda: tag_b in race.state()["validating"], "B to be validated")
    if cancel:
        race.until(lambda: queued_a["prompt_id"] in race.srv.queue_state()[0], "A to run")
        race.srv.interrupt()
    window_a = execution_window(race.finished(queued_a["prompt_id"]))
    previews = [race.preview()]  # the queue is idle now, B is not in it yet
    race.release(tag_b)
    thread_b.join()
    (status_b, answer_b), = answers_b
    violations = []
    windows = [window_a]
    if reject:
        if status_b != 400 or "rejected on purpose" not in json.dumps(answer_b):  # ComfyUI's answer, untouched
            violations.append(f"B should have been rejected: {status_b} {answer_b}")
        previews.append(race.preview())
        if previews[-1][0] != 200:
            violations.append(f"a rejected prompt still holds previews: {previews[-1]}")
    else:
        window_b = execution_window(race.finished(answer_b["prompt_id"]))
        windows.append(window_b)
        if window_b[2] != "execution_success":
            violations.append(f"B ended with {window_b[2]}")
    holds = race.state()["holds"]
    if holds:
        violations.append(f"{holds} hold(s) left after B was {'rejected' if reject else 'taken and done'}")
    status, answer = previews[0]
    if status != 503 or rendered_window(answer) is not None:
        violations.append(f"a preview started while B was on its way to the queue: {status} {answer}")
    if window_a[2] != ("execution_interrupted" if cancel else "execution_success"):
        violations.append(f"A ended with {window_a[2]}")
    violations += overlap_violations(previews, windows)
    return {"violations": violations}


def two_previews_race(race: Race, i: int, cancel: bool = False) -> dict:
    """Two Edit Studio nodes preview at once; in every other trial a prompt lands after two layers (Cancel instead:
    the preview in flight answers 'cancelled', and a preview afterwards renders)."""
    with_prompt = not cancel and i % 2 == 1
    layers0 = race.state()["layers"]
    first, answers = race.preview_in_thread("4")
    second, answers_second = race.preview_in_thread("5")
    race.layers_rendered(layers0, 2, first)
    windows = []
    if with_prompt:
        status, queued = race.submit(0.05, f"race-{i}", client=f"client-{i}")
        assert status == 200, queued
    if cancel:
        race.srv.interrupt()
    first.join()
    second.join()
    if with_prompt:
        windows.append(execution_window(race.finished(queued["prompt_id"])))
    previews = answers + answers_second
    statuses = sorted(s for s, _ in previews)
    violations = overlap_violations(previews, windows)
    if cancel:
        if 409 not in statuses or any(a.get("reason") == "cancelled" and s != 409 for s, a in previews):
            violations.append(f"Cancel did not stop the preview in flight: {previews}")
        after = race.preview("4")
        if after[0] != 200:
            violations.append(f"a preview after Cancel did not render: {after}")
    elif not with_prompt and statuses != [200, 200]:
        violations.append(f"two previews without a prompt should both render: {previews}")
    elif with_prompt and not set(statuses) <= {200, 503}:
        violations.append(f"unexpected answers with a prompt landing: {previews}")
    return {"violations": violations}


def prompt_while_a_preview_is_stuck(race: Race, i: int) -> dict:
    """The preview sleeps STUCK_SECONDS before its first layer (an uninterruptible load) when another client submits
    a prompt: GET /queue keeps answering meanwhile, and the prompt runs only after the preview let go."""
    preview, previews = race.preview_in_thread()
    race.until(lambda: race.state()["rendering"] or not preview.is_alive(), "the preview to start")
    submitted, answers = race.submit_in_thread(0.05, f"stuck-{i}", client=f"client-{i}")
    latencies = []
    while submitted.is_alive() or not latencies:
        t0 = time.monotonic()
        race.srv.queue_state()
        latencies.append(time.monotonic() - t0)
        time.sleep(0.02)
    submitted.join()
    preview.join()
    (status, queued), = answers
    assert status == 200, queued
    window = execution_window(race.finished(queued["prompt_id"]))
    violations = overlap_violations(previews, [window])
    if max(latencies) > STALL_LATENCY:
        violations.append(f"GET /queue took {max(latencies):.2f} s while a preview was stuck: the event loop was held")
    return {"violations": violations, "latency": max(latencies)}


# --------------------------------------------------------------------------------------------- tests
def test_a_prompt_from_another_client_never_runs_beside_a_preview(server):
    records = run_trials(lambda i: prompt_from_another_client(server, i))
    stopped = sum(r["stopped"] for r in records)
    print(f"\n{server.srv.kind}: {stopped}/{TRIALS} previews stopped mid-render by a prompt; POST /prompt answered "
          f"in at most {max(r['post_seconds'] for r in records) * 1000:.0f} ms")
    assert stopped >= TRIALS // 2, "too few prompts landed in the middle of a preview"


def test_cancel_reaches_a_prompt_that_stopped_a_preview(server):
    run_trials(lambda i: prompt_from_another_client(server, i, cancel=True))


def test_a_prompt_submitted_while_another_finishes_holds_previews_until_taken(server):
    run_trials(lambda i: prompt_while_another_finishes(server, i))


def test_cancel_while_another_prompt_finishes_stops_only_that_prompt(server):
    run_trials(lambda i: prompt_while_another_finishes(server, i, cancel=True))


def test_two_previews_racing_take_turns_and_yield_to_a_prompt(server):
    run_trials(lambda i: two_previews_race(server, i))


def test_cancel_stops_racing_previews(server):
    run_trials(lambda i: two_previews_race(server, i, cancel=True))


def test_the_event_loop_answers_while_a_preview_is_stuck(server):
    server.plant(layer_seconds=LAYER_SECONDS, load_seconds=STUCK_SECONDS)
    try:
        records = run_trials(lambda i: prompt_while_a_preview_is_stuck(server, i), count=3)
    finally:
        server.plant(layer_seconds=LAYER_SECONDS)
    print(f"\n{server.srv.kind}: GET /queue at most {max(r['latency'] for r in records) * 1000:.0f} ms while a "
          f"preview was stuck for {STUCK_SECONDS:.0f} s")
    assert max(r["latency"] for r in records) < STALL_LATENCY


# ----------------------------------------------------------------------------- the trials catch the old faults
@contextlib.contextmanager
def planted(server, fault: str, **slow):
    """The probe pack's `fault` planted for the trial inside, the plain slow layers restored afterwards."""
    server.plant(layer_seconds=LAYER_SECONDS, fault=fault, **slow)
    try:
        yield
    finally:
        server.plant(layer_seconds=LAYER_SECONDS)


def test_the_stuck_preview_trial_catches_a_hook_that_holds_the_event_loop(server):
    with planted(server, "blocking_hook", load_seconds=STUCK_SECONDS):
        record = prompt_while_a_preview_is_stuck(server, 99)
    print(f"\n{server.srv.kind}: with the old blocking hook GET /queue took {record['latency'] * 1000:.0f} ms")
    assert any("event loop was held" in v for v in record["violations"]), record


def test_the_finishing_trial_catches_a_hold_cleared_by_another_prompt(server):
    with planted(server, "no_hold_while_busy"):
        record = prompt_while_another_finishes(server, 98)
    assert any("on its way" in v for v in record["violations"]), record


def test_the_racing_trial_catches_two_previews_rendering_at_once(server):
    with planted(server, "no_render_lock"):
        record = two_previews_race(server, 0)
    assert any("two previews rendered at once" in v for v in record["violations"]), record


def test_the_racing_cancel_trial_catches_a_preview_deaf_to_cancel(server):
    with planted(server, "no_layer_checks"):
        record = two_previews_race(server, 0, cancel=True)
    assert any("Cancel did not stop" in v for v in record["violations"]), record
