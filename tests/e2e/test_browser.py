"""The frontend in a real browser: Debian's Chromium driven by playwright-core (tests/browser) against the
headless ComfyUI of the e2e tests, on tiny weights.

Checks: the page loads and the extension's script runs (once, even after a pack reload); every workflow in
workflows/ loads through the app's own graph loader with no missing-node report; one workflow queued from the
canvas runs and the before/after compare widget appears, draws and follows the mouse; workflows saved by another
version of the pack (surplus or missing widget values, an unknown choice) still load with defaults and a warning.
A screenshot per workflow is kept in test_artifacts/browser/ (or $TRANSEDIT_ARTIFACTS).

Needs `chromium` (apt) and `npm ci` in tests/browser; skipped with the reason when either is missing, unless
TRANSEDIT_REQUIRE_BROWSER is set (CI), where that is a failure.
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


def test_edit_studio_previews_live_while_a_slider_is_dragged(report):
    """edit_studio.json queued once from the canvas; then strength_1 dragged with the mouse: the picture on the
    node changes to the preview of the new value, nothing is queued, the saved workflow carries the new value,
    and queueing it saves the full-size image the preview showed (the tiny generator is smaller than the
    preview size, so the preview is full size; Save Image truncates to 8 bits where the preview rounds).
    Then the bar under the picture: reset (a real click) previews the unedited face and zeroes the saved
    strengths, and before/after toggles the divider."""
    import base64
    import io

    import numpy as np
    from PIL import Image

    st = report["studio"]
    assert "error" not in st, st.get("error")
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


def test_edit_studio_degrades_without_the_preview_route(report):
    """A server where the preview route is missing (its requests answered with aiohttp's plain 404): Edit Studio
    still runs from the canvas and shows its before/after picture; a drag asks once, the node then says to queue,
    and further drags send nothing until the next run."""
    st = report["studio_degraded"]
    assert "error" not in st, st.get("error")
    assert st["run_status"]["completed"] and st["pictures"] >= 1, st
    assert st["requests"] == 1 and "Queue the graph" in st["status"], st
    assert st["errors"] == [], st["errors"]


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
