"""demo.py checks each workflow's needs on its own (issue 32): a missing Python module, a node type the server
lacks or a Stable Diffusion stand-in that cannot be built skips only the workflows that need it, with a reason that
names the right package or node and the fix; the others run, the summary lists both, and the exit status is 1 only
when a workflow that could run failed. No ComfyUI server is started here (a fake one stands in for main())."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("transedit_demo", REPO / "demo.py")
demo = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = demo  # demo.py is a script at the root, not a module of the pack
_spec.loader.exec_module(demo)
h, wg = demo.h, demo.wg

WORKFLOWS = {p: wg.load_workflow(p) for p in wg.workflow_files()}
ALL_TYPES = sorted({t for wf in WORKFLOWS.values() for t in demo.server_node_types(wf)})
OUTPUT_NODES = {"SaveImage", "PreviewImage", "SaveVideo", "PreviewAny"}
FACE_VIDEO = "face_video_edit.json"
CLIP_WORKFLOWS = [FACE_VIDEO, "face_video_tuned.json"]  # the workflows that load a clip (ComfyUI's video nodes)


def object_info(types=ALL_TYPES, without=()) -> dict:
    """A server's /object_info reduced to what the planner and ui_to_api read."""
    return {t: {"input": {"required": {}}, "output": [], "output_node": t in OUTPUT_NODES}
            for t in types if t not in without}


def skipped_of(plan: dict) -> dict:
    return {p.name: " ".join(reasons) for p, reasons in plan.items() if reasons}


def assert_names_module(reason: str, module: str) -> None:
    """The reason names this module, the package that provides it and its pip command, and no other package."""
    package, pip_name = demo.MODULE_PACKAGES[module]
    assert f"'{module}'" in reason and package in reason and f"pip install {pip_name}" in reason, reason
    for other, (other_package, _) in demo.MODULE_PACKAGES.items():
        if other != module:
            assert other_package not in reason and f"'{other}'" not in reason, reason


def test_every_shipped_workflow_runs_when_nothing_is_missing():
    plan = demo.plan_workflows(WORKFLOWS, input_found=lambda _: False, have_module=lambda _: True,
                               object_info=object_info())
    assert len(plan) == len(WORKFLOWS) >= 11 and not skipped_of(plan)


def test_missing_pyav_skips_only_the_face_video_workflow_and_names_pyav():
    """The issue: no `av` stopped all eleven workflows, and the message blamed scikit-image."""
    plan = demo.plan_workflows(WORKFLOWS, input_found=lambda _: False, have_module=lambda m: m != "av",
                               object_info=object_info())
    skipped = skipped_of(plan)
    assert sorted(skipped) == CLIP_WORKFLOWS
    for clip in CLIP_WORKFLOWS:
        assert_names_module(skipped[clip], "av")
        assert "LoadVideo" in skipped[clip] and "transedit_example_clip.mp4" in skipped[clip]
    # with the user's own clip there is no stand-in to write, but ComfyUI's video nodes still need PyAV
    own_clip = skipped_of(demo.plan_workflows(WORKFLOWS, input_found=lambda _: True, have_module=lambda m: m != "av"))
    assert sorted(own_clip) == CLIP_WORKFLOWS and "stand-in" not in own_clip[FACE_VIDEO]
    assert_names_module(own_clip[FACE_VIDEO], "av")


def test_the_module_check_catches_a_message_that_blames_the_wrong_package(monkeypatch):
    monkeypatch.setitem(demo.MODULE_PACKAGES, "av", ("scikit-image", "scikit-image"))  # the message
    reason = demo.missing_module_reason("av", ["writing the stand-in clip input/x.mp4"])
    monkeypatch.undo()
    with pytest.raises(AssertionError):
        assert_names_module(reason, "av")
    with pytest.raises(AssertionError):  # right module, but a second package blamed beside it
        assert_names_module(demo.missing_module_reason("av", ["x"]) + " (scikit-image)", "av")


def test_missing_scikit_image_skips_only_the_workflows_that_need_a_stand_in_picture():
    loads = {p.name for p, wf in WORKFLOWS.items() if h.workflow_input_files(wf)}
    assert FACE_VIDEO in loads and "stylegan_generate.json" not in loads
    skipped = skipped_of(demo.plan_workflows(WORKFLOWS, input_found=lambda _: False,
                                             have_module=lambda m: m != "skimage"))
    assert set(skipped) == loads
    for reason in skipped.values():
        assert_names_module(reason, "skimage")
        assert "--inputs DIR" in reason
    # the user's own pictures need no stand-in, so nothing is skipped
    assert not skipped_of(demo.plan_workflows(WORKFLOWS, input_found=lambda _: True,
                                              have_module=lambda m: m != "skimage"))


def test_a_server_without_a_node_type_skips_the_workflows_that_use_it_and_names_it():
    plan = demo.plan_workflows(WORKFLOWS, input_found=lambda _: True, have_module=lambda _: True,
                               object_info=object_info(without={"LoadVideo"}), server_label="ComfyUI a28a9dc8 (2024)",
                               fallback=True)
    skipped = skipped_of(plan)
    assert sorted(skipped) == CLIP_WORKFLOWS
    assert "LoadVideo" in skipped[FACE_VIDEO] and "SaveVideo" not in skipped[FACE_VIDEO]
    assert "ComfyUI a28a9dc8 (2024)" in skipped[FACE_VIDEO] and "--server comfyui-0.33.0" in skipped[FACE_VIDEO]

    users = {p.name for p, wf in WORKFLOWS.items() if "TransEditSplice" in demo.server_node_types(wf)}
    assert len(users) >= 2
    skipped = skipped_of(demo.plan_workflows(WORKFLOWS, input_found=lambda _: True, have_module=lambda _: True,
                                             object_info=object_info(without={"TransEditSplice"})))
    assert set(skipped) == users
    for reason in skipped.values():
        assert "TransEditSplice" in reason and "server log" in reason and "--server" not in reason


def test_muted_bypassed_and_frontend_only_nodes_need_nothing():
    nodes = [{"id": 1, "type": "LoadVideo", "mode": wg.MODE_NEVER, "widgets_values": ["clip.mp4", "image"]},
             {"id": 2, "type": "SaveVideo", "mode": wg.MODE_BYPASS},
             {"id": 3, "type": "MarkdownNote"}, {"id": 4, "type": "Reroute"},
             {"id": 5, "type": "LoadImage", "widgets_values": ["photo.png", "image"]}]
    wf = {"nodes": nodes, "links": []}
    assert demo.server_node_types(wf) == ["LoadImage"]
    plan = demo.plan_workflows({Path("w.json"): wf}, input_found=lambda _: False, have_module=lambda m: m != "av",
                               object_info={})
    (reasons,) = plan.values()
    assert len(reasons) == 1 and "LoadImage" in reasons[0] and "PyAV" not in reasons[0]
    nodes[0]["mode"] = 0  # the clip loader live again: PyAV for its stand-in and for the node
    (reasons,) = demo.plan_workflows({Path("w.json"): wf}, input_found=lambda _: False,
                                     have_module=lambda m: m != "av").values()
    assert len(reasons) == 1 and "input/clip.mp4" in reasons[0] and "LoadVideo" in reasons[0]
    assert_names_module(reasons[0], "av")


# ------------------------------------------------------------------------------------ main() on a fake server
class FakeServer:
    """What main() uses of h.ComfyServer: a server that knows every shipped node type except `without`."""

    started = 0
    without: set = set()
    broken: set = set()  # class types whose prompt fails

    def __init__(self, comfy_root, *, models, inputs, keep=False):
        self.models, self.inputs = models, inputs
        self.startup_seconds, self.url, self.base = 0.0, "http://127.0.0.1:0", Path("/nonexistent")

    def __enter__(self):
        type(self).started += 1
        return self

    def __exit__(self, *exc):
        return None

    def object_info(self):
        return object_info(without=self.without)

    def run(self, prompt, timeout=None):
        hit = self.broken & {n["class_type"] for n in prompt.values()}
        if hit:
            raise h.ComfyError(f"prompt failed: {sorted(hit)} raised boom")
        return {"outputs": {}}

    def output_images(self, history):
        return []


@pytest.fixture
def fake_demo(monkeypatch, tmp_path):
    install = SimpleNamespace(kind="comfyui-2024", label="ComfyUI a28a9dc8 (2024, legacy frontend)",
                              root=tmp_path / "comfy", source="test")
    monkeypatch.setattr(h, "ensure_server", lambda kind, log=None: install)
    monkeypatch.setattr(h, "ComfyServer", FakeServer)
    monkeypatch.setattr(FakeServer, "started", 0)

    def no_sd_stand_in(install, log=None):
        raise RuntimeError("building the SD 1.5 stand-in failed (exit 1):\n\nTraceback (most recent call last):\n"
                           "  File clip_model.py\nRuntimeError: a leaf Variable that requires grad is being used\n")

    monkeypatch.setattr(h, "stable_diffusion_stand_in", no_sd_stand_in)

    def run(*workflows, have_module=lambda _: True, without=(), broken=()):
        monkeypatch.setattr(demo, "module_available", have_module)
        monkeypatch.setattr(FakeServer, "without", set(without))
        monkeypatch.setattr(FakeServer, "broken", set(broken))
        out = tmp_path / "out"
        args = ["--server", "comfyui-2024", "--out", str(out), "--models", str(tmp_path / "none"),
                "--inputs", str(tmp_path / "none")]
        for w in workflows:
            args += ["--workflow", w]
        code = demo.main(args)
        return code, json.loads((out / "summary.json").read_text())["workflows"]

    return run


def test_main_runs_what_it_can_and_lists_the_skipped_with_their_reasons(fake_demo, capsys):
    code, results = fake_demo("stylegan_generate", "face_video_edit", "edit_to_diffusion",
                              have_module=lambda m: m != "av", without={"LoadVideo", "PreviewAny"})
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert results["stylegan_generate.json"]["ok"] is True
    video = results[FACE_VIDEO]["skipped"]
    assert "PyAV" in video and "LoadVideo" in video and "PreviewAny" in video and "scikit-image" not in video
    sd = results["edit_to_diffusion.json"]["skipped"]
    assert "Stable Diffusion checkpoint" in sd and "(exit 1)" in sd and sd.count("RuntimeError: a leaf Variable") == 1
    assert FakeServer.started == 1
    assert "ran (1): stylegan_generate.json" in printed
    assert f"skipped: {FACE_VIDEO}: needs PyAV" in printed and "skipped: edit_to_diffusion.json: needs a" in printed
    assert "done: 1/3 workflow(s) ran, 0 failed, 2 skipped" in printed


def test_main_fails_only_when_a_workflow_that_could_run_failed(fake_demo, capsys):
    code, results = fake_demo("stylegan_generate", "face_video_edit", have_module=lambda m: m != "av",
                              broken={"SaveImage"})
    printed = capsys.readouterr().out
    failed = results["stylegan_generate.json"]
    assert code == 1 and failed["ok"] is False and "boom" in failed["error"], printed
    assert "FAILED: stylegan_generate.json" in printed and "skipped: face_video_edit.json" in printed
    # nothing that can run: no server, no failure
    code, results = fake_demo("face_video_edit", have_module=lambda m: m != "av")
    assert code == 0 and FakeServer.started == 1 and "skipped" in results[FACE_VIDEO]
    assert "the server was not started" in capsys.readouterr().out


def test_an_import_the_plan_did_not_foresee_skips_only_its_workflow(fake_demo, monkeypatch, capsys):
    """A module that looks installed but fails to import (here PyAV) while a stand-in is written."""
    monkeypatch.setitem(sys.modules, "av", None)  # `import av` raises ImportError(name="av")
    code, results = fake_demo("stylegan_generate", "face_video_edit", have_module=lambda _: True)
    assert code == 0 and results["stylegan_generate.json"]["ok"] is True, capsys.readouterr().out
    assert_names_module(results[FACE_VIDEO]["skipped"], "av")
