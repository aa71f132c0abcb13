"""The frontend in a real browser: Debian's Chromium driven by playwright-core (tests/browser) against the
headless ComfyUI of the e2e tests, on tiny weights.

Checks: the page loads and the extension's script runs (once, even after a pack reload); every workflow in
workflows/ loads through the app's own graph loader with no missing-node report; one workflow queued from the
canvas runs and the before/after compare widget appears, draws and follows the mouse; workflows saved by another
version of the pack (surplus or missing widget values, an unknown choice) still load with defaults and a warning.
On the newest frontend, with its Vue node renderer on (before the workflow loads) and off, what Edit Studio and
the compare widgets show on screen after each answer: the picture on a page screenshot against the server's
image, and each widget's canvas pixels against a fresh draw of its state; a planted missing repaint shows the
check fails. Edit Studio's slots on every server (Vue nodes on and off on the newest frontend): only the connected
directions and one spare show, sliders named after their direction, connect / disconnect / a relabel (and a
planted missing relabel, caught), a queued run, and the saved workflow's names and values unchanged. A screenshot
per workflow and step is kept in test_artifacts/browser/ (or $TRANSEDIT_ARTIFACTS).

Needs `chromium` (apt) and `npm ci` in tests/browser; skipped with the reason when either is missing, unless
TRANSEDIT_REQUIRE_BROWSER is set (CI), where that is a failure.
Over 600 lines: one browser session per server (a module fixture) feeds every check here, and the screen and
slot checks' own no-browser tests sit next to them.
"""
from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import comfy_harness as h  # noqa: E402
import workflow_graph as wg  # noqa: E402

pytestmark = pytest.mark.e2e

BROWSER_DIR = Path(__file__).resolve().parents[1] / "browser"
QUEUED = "invert_reconstruct"
WORKFLOWS = sorted(wg.WORKFLOWS_DIR.glob("*.json"))
# what the pack's widgets show on screen is checked on the newest frontend, with its Vue node renderer ("Nodes
# 2.0") on and off; the other servers keep the cheaper checks
SCREEN_SERVER = "comfyui-0.33.0-newest-frontend"
# a picture on screen is the server's image when its mean error (0-255, the browser's and PIL's scaling differ) is
# under this: measured 0.2-1.8 when right, 7-210 when an older picture or no picture is shown
PICTURE_ERROR = 4.0
# a widget's pixels on its canvas against a fresh draw of its state: measured 0 when repainted, 0.03 and more for
# a stale picture, label or status
CANVAS_MISMATCH = 0.002
LABEL_ROW = 18  # the before/after labels over the picture's top edge


def _missing_tools() -> str | None:
    chromium = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
    if chromium is None:
        return "Chromium is not installed (apt-get install chromium)"
    if shutil.which("node") is None:
        return "Node.js is not installed"
    if not (BROWSER_DIR / "node_modules" / "playwright-core").is_dir():
        return "playwright-core is not installed (cd tests/browser && npm ci)"
    return None


@pytest.fixture(scope="module")
def tools():
    reason = _missing_tools()
    if reason:
        if os.environ.get("TRANSEDIT_REQUIRE_BROWSER"):
            pytest.fail(f"{reason}, and TRANSEDIT_REQUIRE_BROWSER is set")
        pytest.skip(reason)
    return shutil.which("chromium") or "/usr/bin/chromium"


def _variants() -> list[dict]:
    """stylegan_generate.json as another version of the pack might have saved it."""
    base = wg.load_workflow(wg.WORKFLOWS_DIR / "stylegan_generate.json")
    surplus = copy.deepcopy(base)
    for node in surplus["nodes"]:
        if node["type"] == "TransEditSampleLatent":
            node["widgets_values"] = list(node["widgets_values"]) + ["a value from a newer version"]
    short = copy.deepcopy(base)
    for node in short["nodes"]:
        if node["type"] == "TransEditGenerate":
            node["widgets_values"] = list(node["widgets_values"])[:1]  # an older version had fewer inputs
        if node["type"] == "TransEditSampleLatent":
            node["widgets_values"] = list(node["widgets_values"])
    bad_choice = copy.deepcopy(base)
    for node in bad_choice["nodes"]:
        if node["type"] == "TransEditGenerate":
            values = list(node["widgets_values"])
            values[0] = "a mode this version does not have"
            node["widgets_values"] = values
    return [{"name": "surplus_values", "graph": surplus}, {"name": "fewer_values", "graph": short},
            {"name": "unknown_choice", "graph": bad_choice}]


@pytest.fixture(scope="module")
def report(tools, comfy_root, tmp_path_factory):
    tiny_dir = tmp_path_factory.mktemp("tiny_weights")
    graphs = {p.stem: wg.load_workflow(p) for p in WORKFLOWS}
    models, _ = h.prepare_models(graphs.values(), [], tiny_dir)
    # the diffusion workflows' checkpoint is there, as for a user who has one: no missing-model report
    models["checkpoints"] = {name: h.stable_diffusion_stand_in(comfy_root)
                             for wf in graphs.values() for _, name in h.workflow_model_files(wf, h.USER_MODEL_INPUTS)}
    inputs, _ = h.prepare_inputs(graphs.values(), [], tmp_path_factory.mktemp("input_images"))
    out_dir = Path(os.environ.get("TRANSEDIT_ARTIFACTS", h.REPO / "test_artifacts")) / "browser" / comfy_root.kind
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    with h.ComfyServer(comfy_root, models=models, inputs=inputs) as srv:
        extensions = srv.get_json("/extensions")
        ext = next(e for e in extensions if e.endswith("/transedit.js"))
        config = {"help_phrases": help_phrases(),
                  "subgraph": {"workflow": "stylegan_generate", "nodes": [2, 3]},  # Sample Latent + Generate
                  "studio": {"workflow": "edit_studio"},
                  "screens": comfy_root.kind == SCREEN_SERVER,
                  "url": srv.url, "chromium": tools, "outDir": str(out_dir), "queue": QUEUED, "extension": ext,
                  "workflows": [{"name": n, "graph": g} for n, g in graphs.items()], "variants": _variants()}
        cfg_path = out_dir / "config.json"
        cfg_path.write_text(json.dumps(config))
        proc = subprocess.run(["node", str(BROWSER_DIR / "browser_check.mjs"), cfg_path.read_text()],
                              cwd=BROWSER_DIR, capture_output=True, text=True, timeout=3600)
        assert proc.returncode == 0, proc.stderr[-4000:] + srv.log_tail()
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        result["server_log"] = srv.log_text()
    assert "fatal" not in result, result.get("fatal")
    return result


def help_phrases() -> dict[str, str]:
    """Each node's help page's opening words (the doc's first paragraph up to its first markup), to find the
    page where the frontend renders it."""
    import re

    phrases = {}
    for doc in sorted(h.REPO.joinpath("js", "docs").glob("*.md")):
        paragraphs = [p for p in doc.read_text(encoding="utf-8").split("\n\n") if p.strip()]
        opening = paragraphs[2]  # title, "`Type` · category", then the description
        phrases[doc.stem] = re.split(r"[`*_\[(]", opening, maxsplit=1)[0].strip()[:60].strip()
    return phrases


def pack_tracebacks(log: str) -> list[str]:
    """Tracebacks in a server log other than ComfyUI's own optional nodes failing to import (comfy_extras, e.g.
    its audio nodes without torchaudio)."""
    found = []
    for block in log.split("Traceback (most recent call last):")[1:]:
        lines = block.splitlines()[1:]
        end = next((i for i, line in enumerate(lines) if line and not line.startswith(" ")), len(lines))
        trace = "\n".join(lines[:end + 1])
        if "comfy_extras" not in trace:
            found.append(trace[-2000:])
    return found


def pack_page_errors(errors: list[str]) -> list[str]:
    """Console errors from the pack's script, and uncaught page errors raised in it (its URL is in the stack);
    the frontend's own start-up errors, which appear without the pack too, are not the pack's. Neither is the
    404 of the help view's first probe, docs/<Node>/<locale>.md: the frontend asks for a translated page first
    and then reads docs/<Node>.md, the one page the pack ships for every language."""
    import re

    locale_probe = re.compile(r"status of 404 .*/extensions/ComfyUI-TransEdit/docs/TransEdit\w+/[\w-]+\.md\)$")
    errors = [e for e in errors if not locale_probe.search(e)]
    return [e for e in errors if "/extensions/ComfyUI-TransEdit/" in e or
            ("transedit" in e.lower() and not e.startswith("pageerror"))]


def test_page_loads_and_extension_runs_once(report, comfy_root):
    ext = dict(report["extension"])
    frontend = ext.pop("frontend")
    assert ext == {"registered": 1, "loads": 1}
    if comfy_root.frontend != "legacy":  # the frontend the server serves: its pinned one, or the newest
        assert frontend == comfy_root.frontend, frontend
    errors = pack_page_errors(report["console_errors"])
    assert not errors, errors


@pytest.mark.parametrize("name", [p.stem for p in WORKFLOWS])
def test_every_workflow_loads_without_missing_nodes(report, name):
    (wf,) = [w for w in report["workflows"] if w["name"] == name]
    assert wf["error"] is None, wf["error"]
    assert wf["missing"] == [] and not wf["missing_dialog"], wf["missing"]
    assert wf["nodes"] == wf["expected_nodes"]
    assert wf["changed_values"] == [], f"loading changed the pack's widget values: {wf['changed_values']}"
    assert Path(wf["screenshot"]).stat().st_size > 10_000  # a real screenshot of the canvas


def test_queued_workflow_runs_and_compare_widget_draws(report):
    queued = report["queued"]
    assert queued and queued["status"]["completed"], queued
    widgets = queued["widget"]
    assert isinstance(widgets, list) and widgets, widgets
    types = {w["type"] for w in widgets}
    assert {"TransEditGenerate", "TransEditPasteBack"} <= types, types
    assert all(w["loaded"] >= 1 and w["drawn"] for w in widgets), widgets
    # the divider, dragged to a quarter of the picture through the widget's own mouse handler
    assert queued["dragged"] is not None and abs(queued["dragged"] - 0.25) < 0.05, queued["dragged"]
    assert Path(queued["screenshot"]).is_file()
    assert not pack_tracebacks(report["server_log"]), pack_tracebacks(report["server_log"])
    # nodes that show pictures after the run (Align Face's preview, the compare widgets) keep the saved layout
    # readable: no node grows over another
    assert queued["overlaps"] == [], queued["overlaps"]


def test_compare_widget_draws_in_vue_node_mode(report, comfy_root):
    """The newest frontend's Vue node rendering (Comfy.VueNodes.Enabled, off by default): the canvas-drawn
    compare widgets of the executed workflow are still drawn (the frontend hosts such widgets in a canvas of
    their own)."""
    vue = report["vue_nodes"]
    if comfy_root.kind == "comfyui-2024":
        assert not vue["available"]
        pytest.skip("the 2024 legacy frontend has no Vue node mode")
    assert vue["available"], vue
    if comfy_root.kind == "comfyui-0.3.64":
        pytest.skip("1.27.10's Vue node mode is an early preview that draws no canvas widget of any node (core "
                    f"image previews included; see vue_nodes.png): {vue}")
    assert vue["widgets"] >= 2 and vue["drawn"] == vue["widgets"], vue


def picture_on_screen(screen: dict, after: str | None = None) -> dict[str, float | None]:
    """How far the compare widget's picture on a page screenshot is from the server's images: the mean error
    (0-255) of the part left of the divider against 'before' and of the part right of it against 'after' (each
    scaled to the picture's rectangle on screen; the label row and the divider's line left out). inf where the
    rectangle is not on the screenshot; None for a side the divider leaves empty. after: another 'after' image."""
    import numpy as np
    from PIL import Image

    pic = screen.get("picture")
    if not pic:
        return {"before": float("inf"), "after": float("inf")}
    shot = np.asarray(Image.open(screen["shot"]).convert("RGB")).astype(float)
    x, y, w, h = pic["rect"]
    x0, y0, x1, y1 = round(x), round(y), round(x + w), round(y + h)
    if x0 < 0 or y0 < 0 or x1 > shot.shape[1] or y1 > shot.shape[0] or x1 - x0 < 8 or y1 - y0 < LABEL_ROW + 8:
        return {"before": float("inf"), "after": float("inf")}
    crop = shot[y0:y1, x0:x1]
    cols = np.arange(x1 - x0) + 0.5
    rows = slice(LABEL_ROW, y1 - y0 - 2)
    divider = pic["split"] * (x1 - x0)
    sides = {"before": (cols > 2) & (cols < divider - 3), "after": (cols > divider + 3) & (cols < x1 - x0 - 2)}
    images = {"before": screen.get("before"), "after": after or screen.get("after")}
    out: dict[str, float | None] = {}
    for side, mask in sides.items():
        if not mask.any():
            out[side] = None
            continue
        if not images[side]:
            out[side] = float("inf")
            continue
        want = np.asarray(Image.open(images[side]).convert("RGB").resize((x1 - x0, y1 - y0), Image.BILINEAR))
        out[side] = float(np.abs(crop[rows][:, mask] - want.astype(float)[rows][:, mask]).mean())
    return out


def screen_faults(screen: dict) -> list[str]:
    """What is wrong with what a node's pack widgets show on screen (see picture_on_screen, and the canvas pixels
    against a fresh draw in browser_check.mjs): [] when the screen shows the widgets' current state."""
    faults = []
    for side, err in picture_on_screen(screen).items():
        if err is not None and not err < PICTURE_ERROR:
            faults.append(f"{screen['label']}: the picture's {side} side is {err:.1f} off the server's image")
    for name, seen in screen.get("widgets", {}).items():
        if seen.get("missing"):
            faults.append(f"{screen['label']}: {name} has no canvas on the node")
        elif seen["shown_rows"] < seen["drawn_rows"]:
            faults.append(f"{screen['label']}: {name} is {seen['shown_rows']} px high on screen, draws {seen['drawn_rows']}")
        elif not seen["mismatch"] <= CANVAS_MISMATCH:
            faults.append(f"{screen['label']}: {name} shows an older state ({seen['mismatch']:.1%} of its pixels differ)")
    return faults


def studio_report(report: dict, comfy_root, renderer: str) -> dict:
    if renderer == "vue":
        if comfy_root.kind != SCREEN_SERVER:
            pytest.skip(f"Vue nodes are checked on {SCREEN_SERVER} only (CI time)")
        return report["studio_vue"]
    return report["studio"]


@pytest.mark.parametrize("renderer", ["classic", "vue"])
def test_edit_studio_previews_live_while_a_slider_is_dragged(report, comfy_root, renderer):
    """edit_studio.json queued once from the canvas; then strength_1 dragged with the mouse: the picture on the
    node changes to the preview of the new value, nothing is queued, the saved workflow carries the new value,
    and queueing it saves the full-size image the preview showed (the tiny generator is smaller than the
    preview size, so the preview is full size; Save Image truncates to 8 bits where the preview rounds).
    Then the bar under the picture: reset (a real click) previews the unedited face and zeroes the saved
    strengths, and before/after toggles the divider. vue: the same with the newest frontend's Vue nodes on
    before the workflow loads (the slider is its number input, dragged with the mouse)."""
    import base64
    import io

    import numpy as np
    from PIL import Image

    st = studio_report(report, comfy_root, renderer)
    assert "error" not in st, st.get("error")
    assert st["vue_nodes"] == (renderer == "vue"), st["vue_nodes"]
    assert st["run_status"]["completed"], st["run_status"]
    start = st["initial"]["strength_1"]
    assert st["dragged"] != start, f"the mouse drag did not move strength_1 ({start})"
    live = st["after_drag"]
    assert live["previews"] > st["initial"]["previews"] and live["after_src"] != st["initial"]["after_src"], live
    assert live["last"]["strengths"][0] == st["dragged"] and live["status"].startswith("preview"), live
    q0, q1 = st["queue_before"], st["queue_after"]
    assert q1["running"] == q1["pending"] == 0 and q1["history"] == q0["history"], (q0, q1)
    assert st["saved_values"][0] == st["dragged"], st["saved_values"]

    assert st["queued_status"]["completed"], st["queued_status"]
    preview = np.asarray(Image.open(io.BytesIO(base64.b64decode(live["last"]["image"].split(",", 1)[1]))).convert("RGB"))
    queued = np.asarray(Image.open(io.BytesIO(base64.b64decode(st["queued_png"]))).convert("RGB"))
    assert preview.shape == queued.shape
    diff = np.abs(preview.astype(int) - queued.astype(int))
    assert diff.max() <= 1 and diff.mean() < 0.6, (diff.max(), diff.mean())

    reset = st["after_reset"]
    assert reset["last"]["strengths"] == [0, 0, 0, 0] and st["saved_after_reset"][:4] == [0, 0, 0, 0], reset
    assert st["toggled"] == [0, 0.5], st["toggled"]


@pytest.mark.parametrize("renderer", ["classic", "vue"])
def test_edit_studio_shows_each_answer_on_screen(report, comfy_root, renderer):
    """On the newest frontend, Vue nodes off and on (on before the workflow loads): after the first run, each
    preview answer, the re-queue, reset, before/after and a divider drag, the node shows on screen the server's
    picture (full height, the new value's, not the last one's) and its current label and status."""
    if comfy_root.kind != SCREEN_SERVER:
        pytest.skip(f"what the widgets show on screen is checked on {SCREEN_SERVER} only (CI time)")
    st = studio_report(report, comfy_root, renderer)
    assert "error" not in st, st.get("error")
    screens = {s["label"].rsplit(".", 1)[1]: s for s in st["screens"]}
    assert list(screens) == ["first_run", "live", "requeued", "reset", "edit_alone", "divider"], list(screens)
    host = "vue" if renderer == "vue" else "graph canvas"
    assert {w["host"] for s in screens.values() for w in s["widgets"].values()} == {host}, screens
    faults = [f for s in screens.values() for f in screen_faults(s)]
    assert not faults, faults
    # what each step should show, as the node's state says and the server answered
    for step in ("first_run", "requeued"):
        assert screens[step]["picture"]["labels"][1].startswith("after · queued"), screens[step]["picture"]
        assert screens[step]["status"].startswith("queued"), screens[step]["status"]
    for step in ("live", "reset"):
        assert screens[step]["picture"]["labels"][1].startswith("after · live"), screens[step]["picture"]
        assert screens[step]["status"].startswith("preview"), screens[step]["status"]
    assert screens["edit_alone"]["picture"]["split"] == 0 and 0.15 < st["divider"] < 0.45, st["divider"]
    # the steps where the picture changes change it enough for the check to tell the old one from the new
    for step, previous in (("live", "first_run"), ("reset", "requeued")):
        stale = picture_on_screen(screens[step], after=screens[previous]["after"])["after"]
        assert stale > 3 * PICTURE_ERROR, (step, stale)


@pytest.mark.parametrize("renderer", ["classic", "vue"])
def test_compare_widgets_show_their_pictures_on_screen(report, comfy_root, renderer):
    """invert_reconstruct.json run from the canvas on the newest frontend, Vue nodes off and on (on before the
    workflow loads): every compare widget (Generate, Paste Back) shows the server's before and after pictures on
    screen at full height, and a divider dragged with the mouse moves on screen."""
    if comfy_root.kind != SCREEN_SERVER:
        pytest.skip(f"what the widgets show on screen is checked on {SCREEN_SERVER} only (CI time)")
    screens = report["compare_screens"]
    assert "vue_error" not in screens, screens["vue_error"]
    shots = screens[renderer]
    assert sorted(s["node"] for s in shots if not s.get("divider")) == ["TransEditGenerate", "TransEditPasteBack"], shots
    host = "vue" if renderer == "vue" else "graph canvas"
    assert {w["host"] for s in shots for w in s["widgets"].values()} == {host}, shots
    faults = [f for s in shots for f in screen_faults(s)]
    assert not faults, faults
    (divider,) = [s for s in shots if s.get("divider")]
    assert 0.15 < divider["picture"]["split"] < 0.45, divider["picture"]


def test_screen_check_sees_a_widget_left_unpainted(report, comfy_root):
    """The fault the screen check is for, planted in the Vue node run: the pack's repaint of its widgets switched
    off (a flag only the test sets), one more slider drag. The answer arrives (the node's state has it), but the
    screen still shows an older picture and status, and the check says so."""
    st = studio_report(report, comfy_root, "vue")
    planted = st["planted"]
    assert planted and planted["to"] != planted["from"], planted
    assert planted["status"].startswith("preview"), planted  # the node's state has the answer...
    faults = screen_faults(planted["screen"])  # ...the screen does not show it
    assert any("picture's after side" in f for f in faults), faults
    assert any("transedit_compare shows an older state" in f for f in faults), faults
    assert any("transedit_studio_bar shows an older state" in f for f in faults), faults


def test_edit_studio_degrades_without_the_preview_route(report):
    """A server where the preview route is missing (its requests answered with aiohttp's plain 404): Edit Studio
    still runs from the canvas and shows its before/after picture; a drag asks once, the node then says to queue,
    and further drags send nothing until the next run."""
    st = report["studio_degraded"]
    assert "error" not in st, st.get("error")
    assert st["run_status"]["completed"] and st["pictures"] >= 1, st
    assert st["requests"] == 1 and "Queue the graph" in st["status"], st
    assert st["errors"] == [], st["errors"]


SLOTS = range(1, 5)
STUDIO_PROMPT_INPUTS = {"generator", "latent", "direction_1", "direction_2", "strength_1", "strength_2", "strength_3",
                        "strength_4", "start_layer", "end_layer", "preview_size", "precision", "preview_face"}


def slot_faults(view: dict, names: dict[int, str]) -> list[str]:
    """What is wrong with Edit Studio's slots as the node shows them (browser_check.mjs slotView), given the
    directions connected (slot number -> the name its slider should show): [] when exactly the connected direction
    slots and the first free one show, and exactly the connected directions' sliders, each labelled with its name
    (with Vue nodes: on the node's DOM too)."""
    faults = []
    if sorted(view["connected"]) != sorted(names):
        faults.append(f"connected {view['connected']}, the test connected {sorted(names)}")
    spare = min(set(SLOTS) - set(names), default=None)
    want_slots = [f"direction_{k}" for k in SLOTS if k in names or k == spare]
    if view["slots"] != want_slots:
        faults.append(f"direction slots {view['slots']}, want {want_slots} (the connected ones and one spare)")
    dom = view.get("dom")
    for k in SLOTS:
        slider, name = view["sliders"][f"strength_{k}"], names.get(k)
        if name is None:
            if not slider["hidden"]:
                faults.append(f"strength_{k} shows with no direction connected")
            if dom is not None and f"strength_{k}" in dom["widgets"]:
                faults.append(f"strength_{k} is on the node's DOM with no direction connected")
            continue
        if slider["hidden"] or slider["label"] != name:
            faults.append(f"strength_{k}: label {slider['label']!r} (hidden: {slider['hidden']}), want {name!r}")
        if dom is not None and dom["widgets"].get(f"strength_{k}") != name:
            faults.append(f"strength_{k} reads {dom['widgets'].get(f'strength_{k}')!r} on the node's DOM, want {name!r}")
    if dom is not None:
        shown = {t for t in dom["slots"] if t.startswith("direction_")}
        if shown != set(want_slots):
            faults.append(f"the node's DOM shows slots {sorted(shown)}, want {want_slots}")
    return faults


@pytest.mark.parametrize("renderer", ["classic", "vue"])
def test_edit_studio_shows_connected_direction_slots_plus_one_spare_named_sliders(report, comfy_root, renderer):
    """edit_studio.json (age and SeFa #0 connected): only direction_1..2 and the spare direction_3 show, the two
    sliders read 'age' and 'sefa #0' and the other two are hidden; a third direction connected (a new Load
    Direction, SeFa component 1) reveals direction_4 and its slider 'sefa #1'; its component changed relabels the
    slider; queued, the run still works and the labels are the names the run reports; disconnected, direction_4
    and the slider go again. What the workflow saves and queues keeps its input names and values. vue: the same
    with the newest frontend's Vue nodes on (the node's DOM checked too)."""
    if comfy_root.kind == "comfyui-2024":
        pytest.skip("the 2024 legacy frontend cannot hide a widget")
    if renderer == "vue" and comfy_root.kind != SCREEN_SERVER:
        pytest.skip(f"Vue nodes are checked on {SCREEN_SERVER} only (CI time)")
    st = report["studio_slots"][renderer]
    assert "error" not in st, st.get("error")
    assert st["vue_nodes"] == (renderer == "vue")
    assert st["load"]["error"] is None and st["load"]["changed_values"] == [], st["load"]
    two = {1: "age", 2: "sefa #0"}
    steps = st["steps"]
    expected = {"loaded": two, "connected": {**two, 3: "sefa #1"}, "relabelled": {**two, 3: "sefa #1"},
                "disconnected": two}
    if renderer == "classic":
        run = st["run"]
        assert run["status"]["completed"], run
        # the server's names: the file's stem, SeFa's component and the layers it edits
        assert run["names"][0] == "age" and run["names"][1].startswith("sefa #0 layers"), run["names"]
        assert run["names"][2].startswith("sefa #1 layers") and run["names"][3] is None, run["names"]
        expected["ran"] = {k: run["names"][k - 1] for k in (1, 2, 3)}
        # disconnected after the run: the remaining sliders keep the run's names (their sources are unchanged)
        expected["disconnected"] = {k: run["names"][k - 1] for k in (1, 2)}
    faults = {step: slot_faults(steps[step], want) for step, want in expected.items()}
    assert not any(faults.values()), faults
    # what the workflow saves and queues: the inputs' names and the slider values as loaded
    graph = wg.load_workflow(wg.WORKFLOWS_DIR / "edit_studio.json")
    (node,) = [n for n in graph["nodes"] if n["type"] == "TransEditEditStudio"]
    saved = st["saved"]
    assert saved["widgets_values"] == node["widgets_values"], saved
    assert set(saved["prompt"]) == STUDIO_PROMPT_INPUTS, sorted(saved["prompt"])
    values = dict(zip(["strength_1", "strength_2", "strength_3", "strength_4", "start_layer", "end_layer",
                       "preview_size", "precision"], node["widgets_values"]))
    assert {k: saved["prompt"][k] for k in values} == values, saved["prompt"]
    assert {n for n in saved["inputs"] if n.startswith("direction_")} == {"direction_1", "direction_2", "direction_3"}


@pytest.mark.parametrize("renderer", ["classic", "vue"])
def test_slot_check_sees_a_slider_left_unnamed(report, comfy_root, renderer):
    """The fault the slot check is for, planted: the relabel switched off (a flag only the test sets) when the
    third direction's SeFa component changes: its slider reads strength_3 instead of 'sefa #2', and the check says
    so (on the node's DOM too with Vue nodes)."""
    if comfy_root.kind == "comfyui-2024":
        pytest.skip("the 2024 legacy frontend cannot hide a widget")
    if renderer == "vue" and comfy_root.kind != SCREEN_SERVER:
        pytest.skip(f"Vue nodes are checked on {SCREEN_SERVER} only (CI time)")
    st = report["studio_slots"][renderer]
    assert "error" not in st, st.get("error")
    faults = slot_faults(st["steps"]["planted"], {1: "age", 2: "sefa #0", 3: "sefa #2"})
    assert any("strength_3: label 'strength_3'" in f for f in faults), faults
    if renderer == "vue":
        assert any("strength_3 reads 'strength_3' on the node's DOM" in f for f in faults), faults


def test_slot_check_on_made_up_views():
    """slot_faults itself, no browser: the right view passes; a hidden spare, a surplus slot, a slider shown for
    an empty slot, a wrong label, and a DOM that disagrees with the node each fail."""
    right = {"slots": ["direction_1", "direction_2", "direction_3"], "connected": [1, 2],
             "sliders": {"strength_1": {"hidden": False, "label": "age"}, "strength_2": {"hidden": False, "label": "b"},
                         "strength_3": {"hidden": True, "label": "strength_3"},
                         "strength_4": {"hidden": True, "label": "strength_4"}},
             "dom": {"widgets": {"strength_1": "age", "strength_2": "b", "start_layer": "start_layer"},
                     "slots": ["generator", "latent", "direction_1", "direction_2", "direction_3"]}}
    names = {1: "age", 2: "b"}
    assert slot_faults(right, names) == []
    assert slot_faults({**right, "dom": None}, names) == []

    def bad(**changes):
        view = copy.deepcopy(right)
        for key, value in changes.items():
            parts = key.split("__")
            target = view
            for part in parts[:-1]:
                target = target[part]
            target[parts[-1]] = value
        return view

    wrong = {
        "no spare": bad(slots=["direction_1", "direction_2"]),
        "two spares": bad(slots=["direction_1", "direction_2", "direction_3", "direction_4"]),
        "slider of an empty slot": bad(sliders__strength_3={"hidden": False, "label": "strength_3"}),
        "slider hidden": bad(sliders__strength_2={"hidden": True, "label": "b"}),
        "unnamed": bad(sliders__strength_1={"hidden": False, "label": "strength_1"}),
        "DOM label stale": bad(dom__widgets__strength_1="strength_1"),
        "DOM shows a hidden slider": bad(dom__widgets__strength_4="strength_4"),
        "DOM shows a removed slot": bad(dom__slots=["direction_1", "direction_2", "direction_3", "direction_4"]),
        "not what was connected": bad(connected=[1]),
    }
    missed = [name for name, view in wrong.items() if not slot_faults(view, names)]
    assert not missed, missed


def test_templates_are_listed(report, comfy_root):
    api = report["templates"]["api"]
    if comfy_root.kind == "comfyui-2024":
        pytest.skip("the 2024 server has no custom-node templates endpoint (/workflow_templates)")
    assert sorted(api["ComfyUI-TransEdit"]) == sorted(p.stem for p in WORKFLOWS), api
    browser = report["templates"]["browser"]
    if browser is not None:  # frontends with a templates browser (Comfy.BrowseTemplates) show them
        assert browser["pack_listed"], browser
        assert browser["templates_shown"], browser


def test_node_help_pages_are_served_where_the_frontend_looks(report):
    from transedit import NODE_CLASS_MAPPINGS

    assert set(report["help"]) == set(NODE_CLASS_MAPPINGS), sorted(report["help"])
    bad = {k: v for k, v in report["help"].items() if v != {"status": 200, "markdown": True}}
    assert not bad, bad


def test_node_help_pages_render_in_the_frontend(report, comfy_root):
    """Where the frontend has a node help view (the Info tab of the right side panel on current frontends, the
    node library's help page on 1.27), every pack node's page shows its doc rendered: the opening sentence as a
    paragraph, every section heading and every table of the doc."""
    from transedit import NODE_CLASS_MAPPINGS

    rendered = report["help_rendered"]
    if comfy_root.kind == "comfyui-2024":
        assert rendered["route"] is None
        pytest.skip("the 2024 legacy frontend has no node help view")
    # 1.27 shows node help in the node library; later frontends (1.49.6, 1.58.1) in the right side panel's Info tab
    expected = "node library" if comfy_root.frontend.startswith("1.27.") else "right side panel"
    assert rendered["route"] == expected, (comfy_root.frontend, rendered["route"])
    assert set(rendered["pages"]) == set(NODE_CLASS_MAPPINGS)
    bad = {}
    for t, page in rendered["pages"].items():
        doc = (h.REPO / "js" / "docs" / f"{t}.md").read_text(encoding="utf-8")
        headings = {line[3:].strip() for line in doc.splitlines() if line.startswith("## ")}
        tables = sum(1 for line in doc.splitlines() if line.startswith("|---") or line.startswith("| ---"))
        if not (page["shown"] and headings <= set(page["headings"]) and page["tables"] == tables):
            bad[t] = {**page, "expected_headings": sorted(headings), "expected_tables": tables}
    assert not bad, bad


def test_pack_nodes_run_inside_a_subgraph(report, comfy_root):
    """Frontends with subgraphs: Sample Latent + Generate folded into a subgraph (the frontend's own Convert to
    Subgraph command) still run, and the image reaches Save Image outside it."""
    sub = report["subgraph"]
    if comfy_root.kind == "comfyui-2024":
        assert not sub["available"]
        pytest.skip("the 2024 legacy frontend has no subgraphs")
    assert sub["available"], sub
    assert sorted(sub["inner"]) == ["TransEditGenerate", "TransEditSampleLatent"], sub
    assert "TransEditGenerate" not in sub["outer"] and "SaveImage" in sub["outer"], sub
    assert sub["status"] and sub["status"]["completed"], sub["status"]
    assert {"TransEditSampleLatent", "TransEditGenerate", "TransEditLoadStyleGAN"} <= set(sub["executed_types"])
    assert sub["output_images"] >= 1


def test_workflows_from_other_versions_load_with_defaults_and_a_warning(report):
    by_name = {v["name"]: v for v in report["variants"]}
    for name, variant in by_name.items():
        assert variant["error"] is None and variant["missing"] == [], (name, variant)
        assert variant["warnings"], f"{name}: no warning shown"
    gen = [n for n in by_name["unknown_choice"]["values"] if n["type"] == "TransEditGenerate"][0]
    assert gen["values"][0] == "const"  # the unknown choice fell back to the default
    fewer = [n for n in by_name["fewer_values"]["values"] if n["type"] == "TransEditGenerate"][0]
    assert None not in fewer["values"] and len(fewer["values"]) >= 3


def test_pack_reload_keeps_one_extension(report):
    reload = report["reload"]
    assert reload["error"] is None and reload["registered"] == 1 and reload["loads"] == 2, reload
    assert reload["graph_after"]["error"] is None and reload["graph_after"]["missing"] == []


def test_screen_check_on_made_up_screens(tmp_path):
    """The screen check itself, on screenshots made here (no browser): the right picture passes; an older picture,
    a strip only a few pixels high, a divider drawn elsewhere, a picture off the screenshot, a widget canvas shorter
    than its drawing, or one with stale pixels each fail."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    def picture(seed):  # smooth colour fields, like the tiny generator's pictures, 64 x 64
        g = np.random.default_rng(seed).random((8, 8, 3)) * 255
        return Image.fromarray(g.astype(np.uint8)).resize((64, 64), Image.BICUBIC)
    before, new, old = picture(1), picture(2), picture(3)
    for name, im in (("before", before), ("new", new), ("old", old)):
        im.save(tmp_path / f"{name}.png")
    rect = [100.0, 50.0, 236.0, 236.0]

    def screen(name, after_im, split=0.5, shown_split=None, rows=236, shift=(0, 0), widgets=None):
        shot = Image.fromarray((rng.random((400, 500, 3)) * 40 + 20).astype(np.uint8))  # the node around it
        x, y = int(rect[0]) + shift[0], int(rect[1]) + shift[1]
        cut = int(236 * (split if shown_split is None else shown_split))
        big_before, big_after = before.resize((236, 236), Image.BILINEAR), after_im.resize((236, 236), Image.BILINEAR)
        shot.paste(big_after.crop((cut, 0, 236, rows)), (x + cut, y))
        shot.paste(big_before.crop((0, 0, cut, rows)), (x, y))
        shot.save(tmp_path / f"{name}.png")
        return {"label": name, "shot": str(tmp_path / f"{name}.png"), "before": str(tmp_path / "before.png"),
                "after": str(tmp_path / "new.png"), "picture": {"rect": rect, "split": split, "labels": []},
                "widgets": widgets or {"transedit_compare": {"mismatch": 0, "shown_rows": 266, "drawn_rows": 262}}}

    right = screen("right", new)
    assert screen_faults(right) == [], picture_on_screen(right)
    assert picture_on_screen(right, after=str(tmp_path / "old.png"))["after"] > 3 * PICTURE_ERROR
    assert screen_faults(screen("right_edit_alone", new, split=0)) == []
    bad = {
        "older picture": screen("old", old),
        "a 6 px strip": screen("strip", new, rows=6),
        "divider elsewhere": screen("divider", new, split=0.25, shown_split=0.5),
        "picture moved": screen("moved", new, shift=(0, 40)),
        "off the screenshot": {**right, "picture": {**right["picture"], "rect": [400.0, 300.0, 236.0, 236.0]}},
        "no picture drawn": {**right, "picture": None},
        "short canvas": {**right, "widgets": {"transedit_compare": {"mismatch": 0, "shown_rows": 6, "drawn_rows": 262}}},
        "stale canvas": {**right, "widgets": {"transedit_studio_bar": {"mismatch": 0.03, "shown_rows": 32, "drawn_rows": 28}}},
        "no canvas": {**right, "widgets": {"transedit_compare": {"missing": True}}},
    }
    missed = [name for name, s in bad.items() if not screen_faults(s)]
    assert not missed, missed
