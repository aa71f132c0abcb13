"""Run every example workflow (workflows/*.json) in a real headless ComfyUI and collect the images.

    python demo.py [--out demo_output] [--models DIR ...] [--inputs DIR ...] [--workflow NAME ...]

Sets up a pinned ComfyUI on first use (tests/comfy_harness.py), looks for the weight files each
workflow names in the model folders (laid out like ComfyUI's models/: DIR/stylegan/<file>,
DIR/gan_encoders/<file>, DIR/latent_directions/<file>), and runs on the CPU. A file that is not found
is replaced by tiny random weights under the same name (directions: random InterFaceGAN-style vectors),
and the demo says so loudly: those pictures show that the pipeline runs, not what a trained model draws.

A workflow with a Stable Diffusion part (the *_to_diffusion.json graphs) uses your SD checkpoint from
DIR/checkpoints/<file> when it is there. Without it the diffusion part runs on a random-weight SD 1.5 stand-in
built from ComfyUI's own classes (two sampling steps; the demo says so loudly): the chain runs through KSampler
and VAE Decode, and what diffusion paints is noise.

The demo runs on ComfyUI 0.33.0 (from ../shared or GitHub; --server picks another kind, see
tests/comfy_servers.py). With the stand-in photo and no real face detector weights, Align Face uses mediapipe
(installed with the test tools), so the face is found where it is rather than where a random detector points.

Pictures a workflow loads (Load Image) are looked for in the --inputs folders (like ComfyUI's input/);
one that is not found is replaced by a real face photo, scikit-image's astronaut (NASA, public domain),
under the same name, and the demo says so.

Each workflow's needs are checked on their own: the Python modules its stand-in inputs and nodes need (PyAV `av`
for a clip and ComfyUI's video nodes, scikit-image for a stand-in photo), the node types it uses (the 2024
fallback server has no core video nodes), and a Stable Diffusion checkpoint or its stand-in. A workflow whose
needs are missing is skipped with the reason and the fix; the others run. The summary lists what ran, what
failed and what was skipped, and the exit status is 1 only when a workflow that could run failed.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent
sys.path.insert(0, str(REPO / "tests"))
import comfy_harness as h  # noqa: E402
import comfy_servers  # noqa: E402
import workflow_graph as wg  # noqa: E402

DEFAULT_MODELS = REPO / "models_demo"
DEFAULT_INPUTS = REPO / "demo_inputs"


def banner(lines: list[str]) -> str:
    width = max(len(line) for line in lines) + 4
    bar = "!" * (width + 2)
    body = "\n".join(f"! {line.ljust(width - 2)} !" for line in lines)
    return f"\n{bar}\n{body}\n{bar}\n"


def node_label(ui_workflow: dict, node_id: str) -> str:
    """A node's type (its title if it has one) in the UI-format workflow, for messages."""
    node = next((n for n in ui_workflow["nodes"] if str(n["id"]) == str(node_id)), {})
    return node.get("title") or node.get("type", "?")


MEDIAPIPE = "mediapipe (bundled models)"  # Align Face's detector choice for it
TUNING_NODES = ("TransEditPivotalTune", "TransEditStitchingTune")  # shortened on tiny generators (as e2e does)


def _stand_in_face_detector(tiny: list, stand_ins: list) -> str | None:
    """A real detector for the stand-in photo when the RetinaFace weights are tiny random ones (their boxes land
    anywhere, e.g. on the rocket beside the astronaut): mediapipe when it is installed, else None."""
    if not stand_ins or not any(folder == "facedetection" for folder, _ in tiny):
        return None
    if importlib.util.find_spec("mediapipe") is None:
        print("[demo] NOTE: the face detector weights are tiny random ones and mediapipe is not installed, so "
              "Align Face places the 'face' at random (pip install mediapipe==0.10.14, or put "
              "detection_Resnet50_Final.pth in <models>/facedetection/)")
        return None
    return MEDIAPIPE


# ------------------------------------------------------------------------------ what each workflow needs
# Python modules a workflow can need in this interpreter (the server runs in it too): the package that provides
# each, and its name for pip.
MODULE_PACKAGES = {
    "av": ("PyAV", "av"),
    "skimage": ("scikit-image", "scikit-image"),
}
# ComfyUI's core video nodes decode and encode clips with PyAV inside the server's process.
NODE_MODULES = {node_type: ("av",) for node_type in ("LoadVideo", "SaveVideo", "CreateVideo", "GetVideoComponents")}
# Node types the frontend keeps to itself (never sent to the server), and the modes of nodes it leaves out.
FRONTEND_ONLY_NODES = frozenset({"Note", "MarkdownNote", "Reroute", "PrimitiveNode"})
LEFT_OUT_MODES = (wg.MODE_NEVER, wg.MODE_BYPASS)
CURRENT_SERVER = "comfyui-0.33.0"  # the server every shipped workflow is checked against (tests/e2e)


def module_available(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package that fails to import, or a module with no spec
        return False


def server_node_types(ui_workflow: dict) -> list[str]:
    """The node types a UI-format workflow sends to the server (muted and bypassed nodes left out)."""
    return sorted({n["type"] for n in ui_workflow.get("nodes", [])
                   if n["type"] not in FRONTEND_ONLY_NODES and n.get("mode", 0) not in LEFT_OUT_MODES})


def module_uses(ui_workflow: dict, input_found) -> dict[str, list[str]]:
    """{Python module: [what in this workflow needs it]}; input_found(name) says whether input/<name> is supplied
    (a missing one gets a stand-in, which needs scikit-image, and PyAV for a clip)."""
    uses: dict[str, list[str]] = {}
    for name in h.workflow_input_files(ui_workflow):
        if input_found(name):
            continue
        if name.lower().endswith(h.VIDEO_SUFFIXES):
            uses.setdefault("skimage", []).append(f"the frames of the stand-in clip input/{name}")
            uses.setdefault("av", []).append(f"writing the stand-in clip input/{name}")
        else:
            uses.setdefault("skimage", []).append(f"the stand-in photo input/{name}")
    video_nodes = {}
    for node_type in server_node_types(ui_workflow):
        for module in NODE_MODULES.get(node_type, ()):
            video_nodes.setdefault(module, []).append(node_type)
    for module, node_types in video_nodes.items():
        uses.setdefault(module, []).append(f"ComfyUI's {', '.join(node_types)} node(s)")
    return uses


def missing_module_reason(module: str, uses: list[str]) -> str:
    """Why a workflow is skipped when `module` cannot be imported: the module, its package and how to get it."""
    package, pip_name = MODULE_PACKAGES.get(module, (None, None))
    needs = f"{package} (Python module '{module}')" if package else f"the Python module '{module}'"
    fix = (f"install it with `{sys.executable} -m pip install {pip_name}`" if pip_name
           else f"it is not installed in this Python ({sys.executable})")
    reason = f"needs {needs} for {'; '.join(uses)}: {fix}"
    if any("stand-in" in use for use in uses):
        reason += ", or put your own file under that name in a folder and pass --inputs DIR"
    return reason


def missing_node_reason(missing: list[str], server_label: str, fallback: bool) -> list[str]:
    """Why a workflow is skipped when the server lacks some of its node types: ComfyUI's own nodes and the pack's."""
    core = [t for t in missing if not t.startswith("TransEdit")]
    pack = [t for t in missing if t.startswith("TransEdit")]
    reasons = []
    if core:
        hint = (f"ComfyUI 0.33.0 has them: run `python demo.py --server {CURRENT_SERVER}`, which needs its source "
                "in ../shared/comfyui or access to GitHub" if fallback else
                "a newer ComfyUI, or the node pack that provides them, is needed")
        reasons.append(f"this server ({server_label}) has no node type(s) {', '.join(core)}; {hint}")
    if pack:
        reasons.append(f"this server did not register TransEdit's node(s) {', '.join(pack)}; their import error is "
                       "in the server log (run with --keep-server-dir to keep it)")
    return reasons


def plan_workflows(workflows, *, input_found, have_module=None, object_info=None, server_label="this ComfyUI",
                   fallback=False) -> dict:
    """{workflow path: [reasons it cannot run here]} ([] = it can). Python modules are checked always (have_module,
    default: importable in this interpreter); node types only when the server's object_info is given."""
    have_module = have_module or module_available
    plan = {}
    for path, wf in workflows.items():
        reasons = [missing_module_reason(module, uses) for module, uses in module_uses(wf, input_found).items()
                   if not have_module(module)]
        if object_info is not None:
            missing = [t for t in server_node_types(wf) if t not in object_info]
            reasons += missing_node_reason(missing, server_label, fallback) if missing else []
        plan[path] = reasons
    return plan


def uses_user_models(ui_workflow: dict, missing: list) -> bool:
    """Whether the workflow loads one of the (folder, file) weights only the user can supply that are missing."""
    return any(need in missing for need in h.workflow_model_files(ui_workflow, h.USER_MODEL_INPUTS))


def summary_lines(results: dict) -> list[str]:
    """The closing summary: what ran, what failed and what was skipped, each with its reason."""
    ran = [name for name, r in results.items() if r.get("ok")]
    failed = [(name, r["error"]) for name, r in results.items() if "error" in r]
    skipped = [(name, r["skipped"]) for name, r in results.items() if "skipped" in r]
    lines = [f"ran ({len(ran)}): {', '.join(ran) if ran else 'none'}"]
    lines += [f"FAILED: {name}: {error}" for name, error in failed]
    lines += [f"skipped: {name}: {reason}" for name, reason in skipped]
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=REPO / "demo_output", help="where the images go (default: demo_output/)")
    ap.add_argument("--models", type=Path, action="append", default=None,
                    help="a models root (DIR/<folder>/<file>, like ComfyUI/models); repeatable. Default: "
                         f"{DEFAULT_MODELS.name}/ and, with ${h.COMFYUI_OVERRIDE_ENV}, that ComfyUI's models/")
    ap.add_argument("--inputs", type=Path, action="append", default=None,
                    help="a folder with the pictures the workflows load (like ComfyUI/input); repeatable. "
                         f"Default: {DEFAULT_INPUTS.name}/ and, with ${h.COMFYUI_OVERRIDE_ENV}, that ComfyUI's input/")
    ap.add_argument("--workflow", action="append", default=None,
                    help="run only these workflows (file name or stem); default: all in workflows/")
    ap.add_argument("--timeout", type=float, default=None,
                    help="most seconds per workflow (default: no limit of its own; a workflow fails when its server "
                         f"makes no progress for {h.STALL_SECONDS:.0f} s or runs past {h.OUTER_SECONDS:.0f} s)")
    ap.add_argument("--keep-server-dir", action="store_true", help="keep the server's folder and log")
    ap.add_argument("--server", choices=h.SERVER_KINDS, default=None,
                    help="the ComfyUI to run on (default: 0.33.0 when its source can be had, else the 2024 server)")
    args = ap.parse_args(argv)

    paths = wg.workflow_files()
    if args.workflow:
        wanted = {Path(w).stem for w in args.workflow}
        paths = [p for p in paths if p.stem in wanted]
        missing = wanted - {p.stem for p in paths}
        if missing:
            print(f"no such workflow(s) in {wg.WORKFLOWS_DIR}: {', '.join(sorted(missing))}", file=sys.stderr)
            return 2
    if not paths:
        print(f"no workflows found in {wg.WORKFLOWS_DIR}", file=sys.stderr)
        return 2
    workflows = {p: wg.load_workflow(p) for p in paths}

    server_kind = args.server or h.default_server_kinds().kinds[0]
    try:
        comfy_root = h.ensure_server(server_kind, log=lambda s: print(f"[demo] {s}", flush=True))
    except h.ComfyUIUnavailable as e:
        print(f"[demo] ComfyUI ({server_kind}) could not be installed: {e}", file=sys.stderr)
        return 2
    search = list(args.models) if args.models else [DEFAULT_MODELS]
    if not args.models and os.environ.get(h.COMFYUI_OVERRIDE_ENV):
        search.append(comfy_root / "models")
    print(f"[demo] ComfyUI: {comfy_root.label} ({comfy_root.root}, source: {comfy_root.source})")
    print(f"[demo] looking for weights in: {', '.join(str(s) for s in search)}")
    input_search = list(args.inputs) if args.inputs else [DEFAULT_INPUTS]
    if not args.inputs and os.environ.get(h.COMFYUI_OVERRIDE_ENV):
        input_search.append(comfy_root / "input")

    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    summary = {"server": comfy_root.label, "workflows": {}, "tiny_random_weights": [], "stand_in_input_images": [],
               "stand_in_checkpoints": []}
    results = {p.name: {} for p in workflows}  # filled in workflow order; summary["workflows"] at the end
    skipped: dict[Path, list[str]] = {}

    def skip(path: Path, reasons: list[str]) -> None:
        new_reasons = [r for r in reasons if r not in skipped.get(path, [])]
        skipped.setdefault(path, []).extend(new_reasons)
        results[path.name] = {"ok": False, "skipped": "; ".join(skipped[path])}
        for reason in new_reasons:
            print(f"[demo] {path.name}: SKIPPED: {reason}", flush=True)

    def input_found(name: str) -> bool:
        return any((Path(d) / name).is_file() for d in input_search)

    for path, reasons in plan_workflows(workflows, input_found=input_found).items():
        if reasons:
            skip(path, reasons)
    with tempfile.TemporaryDirectory(prefix="transedit-demo-weights-") as tiny_dir:
        inputs, stand_ins = {}, []
        for path, wf in workflows.items():
            if path in skipped:
                continue
            try:
                found, made = h.prepare_inputs([wf], input_search, Path(tiny_dir) / "input")
            except ImportError as e:  # a module the plan could not foresee (e.g. installed but broken)
                module = (e.name or "?").split(".")[0]
                skip(path, [missing_module_reason(module, [f"its input files ({e})"])])
                continue
            inputs.update(found)
            stand_ins += [n for n in made if n not in stand_ins]
        user_models, user_missing = h.find_user_models(
            [wf for p, wf in workflows.items() if p not in skipped], search)
        stand_in_sd = None
        if user_missing:
            try:
                stand_in_sd = h.stable_diffusion_stand_in(comfy_root, log=lambda s: print(f"[demo] {s}", flush=True))
            except (RuntimeError, OSError) as e:  # this server cannot build it: only the workflows that need it lose
                lines = [line.strip() for line in str(e).splitlines() if line.strip()] or [type(e).__name__]
                why = lines[0] if len(lines) == 1 else f"{lines[0]} ... {lines[-1]}"  # the last: the builder's error
                wanted = ", ".join(f"{f}/{n}" for f, n in user_missing)
                for path, wf in workflows.items():
                    if path not in skipped and uses_user_models(wf, user_missing):
                        skip(path, [f"needs a Stable Diffusion checkpoint ({wanted}), which is not in "
                                    f"{', '.join(str(s) for s in search)}, and the random SD 1.5 stand-in could not "
                                    f"be built on this server ({why}): put your SD 1.5 checkpoint in "
                                    "<models>/checkpoints/ and pass --models <models>"])
                user_missing = []
        runnable = [wf for p, wf in workflows.items() if p not in skipped]
        models, tiny = h.prepare_models(runnable, search, tiny_dir)
        for folder, files in user_models.items():
            models.setdefault(folder, {}).update(files)

        def stand_in(name: str) -> str:
            return h.EXAMPLE_CLIP_SOURCE if name.lower().endswith(h.VIDEO_SUFFIXES) else \
                f"{h.EXAMPLE_FACE_SOURCE} (a 512x512 face photo, NASA, public domain)"

        for name, path in inputs.items():
            if name in stand_ins:
                what = "clip" if name.lower().endswith(h.VIDEO_SUFFIXES) else "photo"
                print(f"[demo] input/{name}: not found in {', '.join(str(s) for s in input_search)}; "
                      f"NOTE: using {stand_in(name)} instead. Put your own {what} under that name in --inputs DIR "
                      "to use it.")
            else:
                print(f"[demo] input/{name}: found ({path})")
        summary["stand_in_input_images"] = [f"input/{n} = {stand_in(n)}" for n in stand_ins]
        for folder, files in models.items():
            for name, path in files.items():
                found_or_tiny = "TINY RANDOM" if (folder, name) in tiny else "found"
                print(f"[demo] {folder}/{name}: {found_or_tiny} ({path})")
        if stand_in_sd is not None:
            for folder, name in user_missing:
                models.setdefault(folder, {})[name] = stand_in_sd
                print(f"[demo] {folder}/{name}: NOT FOUND; RANDOM-WEIGHT SD 1.5 STAND-IN ({stand_in_sd})")
            summary["stand_in_checkpoints"] = [f"{f}/{n}" for f, n in user_missing]
            print(banner([
                "NO STABLE DIFFUSION CHECKPOINT: the diffusion part runs on a RANDOM-WEIGHT SD 1.5 STAND-IN.",
                "Missing: " + ", ".join(f"{f}/{n}" for f, n in user_missing),
                "The chain runs through VAE Encode, KSampler (2 steps) and VAE Decode, so you see every node",
                "work, but what diffusion paints is noise. For real pictures put your SD 1.5 checkpoint in",
                "<models>/checkpoints/ and pass --models <models>.",
            ]), flush=True)
        real_detector = _stand_in_face_detector(tiny, stand_ins)
        if real_detector:
            print(f"[demo] Align Face: the face detector weights are tiny random ones, which find a 'face' anywhere; "
                  f"on the stand-in photo the demo uses {real_detector} instead, so the face is found where it is")
        if tiny:
            summary["tiny_random_weights"] = [f"{f}/{n}" for f, n in tiny]
            print(banner([
                "THE IMAGES BELOW COME FROM TINY RANDOM WEIGHTS, NOT FROM A TRAINED MODEL.",
                "Missing: " + ", ".join(f"{f}/{n}" for f, n in tiny),
                "They prove the nodes and workflows run in ComfyUI; generated faces look like coloured noise.",
                "For real pictures put the official files in <models>/<folder>/ and pass --models <models>",
                "(see README: 'Where the weights go').",
            ]), flush=True)

        t0 = time.monotonic()
        if any(p not in skipped for p in workflows):
            run = RunSettings(out, args.timeout, stand_in_sd, tiny, real_detector)
            try:
                with h.ComfyServer(comfy_root, models=models, inputs=inputs, keep=args.keep_server_dir) as server:
                    run_on_server(server, comfy_root, workflows, input_found, skip, skipped, results, run)
                    if args.keep_server_dir:
                        print(f"[demo] server folder kept: {server.base}")
            except h.ComfyError as e:  # the server did not start: nothing that was to run on it ran
                print(f"[demo] the ComfyUI server failed: {e}", file=sys.stderr, flush=True)
                for path in workflows:
                    if path not in skipped and not results[path.name]:
                        results[path.name] = {"ok": False, "error": "the server failed: " + str(e).splitlines()[0]}
        else:
            print("[demo] no workflow can run here (see the reasons above); the server was not started")
        summary["total_seconds"] = round(time.monotonic() - t0, 1)

    summary["workflows"] = results
    failures = sum(1 for r in results.values() if "error" in r)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    if tiny:
        print(banner(["REMINDER: these images are from TINY RANDOM weights, not a trained model."]))
    if stand_in_sd is not None and user_missing:
        print(banner(["REMINDER: the diffusion part ran on a RANDOM-WEIGHT SD 1.5 stand-in (no checkpoint: "
                      + ", ".join(f"{f}/{n}" for f, n in user_missing) + ")."]))
    for line in summary_lines(results):
        print(f"[demo] {line}")
    ran = sum(1 for r in results.values() if r.get("ok"))
    print(f"[demo] done: {ran}/{len(workflows)} workflow(s) ran, {failures} failed, {len(skipped)} skipped; "
          f"images in {out}")
    return 1 if failures else 0


@dataclass(frozen=True)
class RunSettings:
    out: Path  # pictures go to out/<workflow stem>/
    timeout: float | None  # most seconds per workflow; None: the harness's progress watch alone
    stand_in_sd: Path | None  # the random SD 1.5 checkpoint, when a workflow runs on it
    tiny: list  # (folder, file) weights that are tiny random ones
    real_detector: str | None  # Align Face's detector on the stand-in photo instead of tiny random RetinaFace


def run_on_server(server, comfy_root, workflows: dict, input_found, skip, skipped: dict, results: dict,
                  run: RunSettings) -> None:
    """Skip the workflows whose node types the running server lacks; run the others into results."""
    print(f"[demo] ComfyUI ready in {server.startup_seconds:.1f} s ({server.url})")
    info = server.object_info()
    # every workflow, skipped ones too: a user who installs the missing module should not meet the
    # next reason only on the next run
    node_plan = plan_workflows(workflows, input_found=input_found, have_module=lambda _module: True,
                               object_info=info, server_label=comfy_root.label,
                               fallback=getattr(comfy_root, "kind", "") == comfy_servers.FALLBACK_KIND)
    for path, reasons in node_plan.items():
        if reasons:
            skip(path, reasons)
    for path, wf in workflows.items():
        if path in skipped:
            continue
        run_workflow(server, path, wf, info, results, run)


def run_workflow(server, path: Path, wf: dict, info: dict, results: dict, run: RunSettings) -> None:
    """Run one workflow, copy its pictures to out/<stem>/ and record it in results (ok, or its error)."""
    out, stand_in_sd, tiny, real_detector = run.out, run.stand_in_sd, run.tiny, run.real_detector
    t = time.monotonic()
    try:
        prompt = wg.ui_to_api(wf, info)
        if stand_in_sd is not None and h.shorten_for_tiny_weights(prompt, h.STAND_IN_DIFFUSION_OVERRIDES):
            print(f"[demo] {path.name}: the diffusion part runs on the random SD 1.5 stand-in "
                  f"({h.STAND_IN_DIFFUSION_OVERRIDES['KSampler']['steps']} sampling steps)", flush=True)
        if any(folder == "vit" for folder, _ in tiny):  # tiny DINO: a short Splice says as much
            if h.shorten_for_tiny_weights(prompt):
                print(f"[demo] {path.name}: tiny random DINO, so Splice trains for "
                      f"{h.TINY_RUN_OVERRIDES['TransEditSplice']['steps']} steps only", flush=True)
        generators = [need for need in h.workflow_model_files(wf) if need[0] in ("stylegan", "gan_encoders")]
        if any(need in tiny for need in generators):  # a tiny random generator: a few tuning steps say as much
            tuning = {k: v for k, v in h.TINY_RUN_OVERRIDES.items() if k in TUNING_NODES}
            if h.shorten_for_tiny_weights(prompt, tuning):
                print(f"[demo] {path.name}: tiny random generator, so Pivotal Tune / Stitching Tune run "
                      f"{', '.join(f'{k[9:]} {v}' for k, v in tuning.items())} only", flush=True)
        if real_detector:
            for node in prompt.values():
                if node["class_type"] == "TransEditAlignFace" and \
                        str(node["inputs"].get("detector", "")).startswith("retinaface: "):
                    node["inputs"]["detector"] = real_detector
        if not wg.output_node_ids(prompt, info):
            raise h.ComfyError("the workflow has no output node to run")
        history = server.run(prompt, timeout=run.timeout)
    except (h.ComfyError, ValueError) as e:
        print(f"[demo] {path.name}: FAILED\n{e}", file=sys.stderr, flush=True)
        results[path.name] = {"ok": False, "error": (str(e).splitlines() or [type(e).__name__])[0]}
        return
    seconds = time.monotonic() - t
    dest = out / path.stem
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    copied, previews = [], 0
    for img in server.output_images(history):
        if img.type == "temp":  # Preview Image: ComfyUI names these with a random part
            previews += 1
            target = dest / f"preview_node{img.node_id}_{previews:02d}{Path(img.filename).suffix}"
        else:
            target = dest / img.filename
        shutil.copyfile(img.path, target)
        copied.append(target)
    results[path.name] = {"ok": True, "seconds": round(seconds, 2),
                          "images": [str(c.relative_to(out)) for c in copied]}
    uses_sd = any(n["class_type"] == "CheckpointLoaderSimple" for n in prompt.values())
    if uses_sd and stand_in_sd is not None:
        results[path.name]["diffusion"] = "random-weight SD 1.5 stand-in (noise)"
    print(f"[demo] {path.name}: {len(copied)} file(s) in {seconds:.1f} s"
          + (" (diffusion on the RANDOM SD stand-in)" if uses_sd and stand_in_sd is not None else ""))
    for c in copied:
        print(f"         {c}")
    for node_id, shown in (history.get("outputs") or {}).items():  # Preview Any: e.g. Align Face's report
        for text in shown.get("text") or []:
            print(f"[demo] {path.name}: {node_label(wf, node_id)}:\n         " + str(text).replace("\n", "\n         "))


if __name__ == "__main__":
    sys.exit(main())
