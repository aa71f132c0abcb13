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
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent
sys.path.insert(0, str(REPO / "tests"))
import comfy_harness as h  # noqa: E402
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


def _stand_in_face_detector(tiny: list, stand_ins: list) -> str | None:
    """A real detector for the stand-in photo when the RetinaFace weights are tiny random ones (their boxes land
    anywhere, e.g. on the rocket beside the astronaut): mediapipe when it is installed, else None."""
    import importlib.util

    if not stand_ins or not any(folder == "facedetection" for folder, _ in tiny):
        return None
    if importlib.util.find_spec("mediapipe") is None:
        print("[demo] NOTE: the face detector weights are tiny random ones and mediapipe is not installed, so "
              "Align Face places the 'face' at random (pip install mediapipe==0.10.14, or put "
              "detection_Resnet50_Final.pth in <models>/facedetection/)")
        return None
    return MEDIAPIPE


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
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds per workflow (default 900)")
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

    kind = args.server or h.default_server_kinds().kinds[0]
    try:
        comfy_root = h.ensure_server(kind, log=lambda s: print(f"[demo] {s}", flush=True))
    except h.ComfyUIUnavailable as e:
        print(f"[demo] ComfyUI ({kind}) could not be installed: {e}", file=sys.stderr)
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
    failures = 0
    with tempfile.TemporaryDirectory(prefix="transedit-demo-weights-") as tiny_dir:
        models, tiny = h.prepare_models(workflows.values(), search, tiny_dir)
        user_models, user_missing = h.find_user_models(workflows.values(), search)
        for folder, files in user_models.items():
            models.setdefault(folder, {}).update(files)
        try:
            inputs, stand_ins = h.prepare_inputs(workflows.values(), input_search, Path(tiny_dir) / "input")
        except ImportError as e:  # the stand-in photo comes from scikit-image
            print(f"[demo] a workflow loads a picture that is not in {', '.join(str(s) for s in input_search)}, "
                  f"and the stand-in photo needs scikit-image ({e}); pip install scikit-image, or pass "
                  "--inputs DIR with the picture", file=sys.stderr)
            return 2
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
                kind = "TINY RANDOM" if (folder, name) in tiny else "found"
                print(f"[demo] {folder}/{name}: {kind} ({path})")
        stand_in_sd = None
        if user_missing:
            stand_in_sd = h.stable_diffusion_stand_in(comfy_root, log=lambda s: print(f"[demo] {s}", flush=True))
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
        with h.ComfyServer(comfy_root, models=models, inputs=inputs, keep=args.keep_server_dir) as server:
            print(f"[demo] ComfyUI ready in {server.startup_seconds:.1f} s ({server.url})")
            for path, wf in workflows.items():
                t = time.monotonic()
                try:
                    info = server.object_info()
                    prompt = wg.ui_to_api(wf, info)
                    if stand_in_sd is not None and h.shorten_for_tiny_weights(prompt, h.STAND_IN_DIFFUSION_OVERRIDES):
                        print(f"[demo] {path.name}: the diffusion part runs on the random SD 1.5 stand-in "
                              f"({h.STAND_IN_DIFFUSION_OVERRIDES['KSampler']['steps']} sampling steps)", flush=True)
                    if any(folder == "vit" for folder, _ in tiny):  # tiny DINO: a short Splice says as much
                        shortened = h.shorten_for_tiny_weights(prompt)
                        if shortened:
                            print(f"[demo] {path.name}: tiny random DINO, so Splice trains for "
                                  f"{h.TINY_RUN_OVERRIDES['TransEditSplice']['steps']} steps only", flush=True)
                    if real_detector:
                        for node in prompt.values():
                            if node["class_type"] == "TransEditAlignFace" and \
                                    node["inputs"]["detector"].startswith("retinaface: "):
                                node["inputs"]["detector"] = real_detector
                    if not wg.output_node_ids(prompt, info):
                        raise h.ComfyError("the workflow has no output node to run")
                    history = server.run(prompt, timeout=args.timeout)
                except (h.ComfyError, ValueError) as e:
                    failures += 1
                    print(f"[demo] {path.name}: FAILED\n{e}", file=sys.stderr, flush=True)
                    summary["workflows"][path.name] = {"ok": False, "error": str(e).splitlines()[0]}
                    continue
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
                summary["workflows"][path.name] = {"ok": True, "seconds": round(seconds, 2),
                                                   "images": [str(c.relative_to(out)) for c in copied]}
                uses_sd = any(n["class_type"] == "CheckpointLoaderSimple" for n in prompt.values())
                if uses_sd and stand_in_sd is not None:
                    summary["workflows"][path.name]["diffusion"] = "random-weight SD 1.5 stand-in (noise)"
                print(f"[demo] {path.name}: {len(copied)} file(s) in {seconds:.1f} s"
                      + (" (diffusion on the RANDOM SD stand-in)" if uses_sd and stand_in_sd is not None else ""))
                for c in copied:
                    print(f"         {c}")
                for node_id, shown in (history.get("outputs") or {}).items():  # Preview Any: e.g. Align Face's report
                    for text in shown.get("text") or []:
                        print(f"[demo] {path.name}: {node_label(wf, node_id)}:\n         "
                              + str(text).replace("\n", "\n         "))
            if args.keep_server_dir:
                print(f"[demo] server folder kept: {server.base}")
        summary["total_seconds"] = round(time.monotonic() - t0, 1)

    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    if tiny:
        print(banner(["REMINDER: these images are from TINY RANDOM weights, not a trained model."]))
    if user_missing:
        print(banner(["REMINDER: the diffusion part ran on a RANDOM-WEIGHT SD 1.5 stand-in (no checkpoint: "
                      + ", ".join(f"{f}/{n}" for f, n in user_missing) + ")."]))
    print(f"[demo] done: {len(workflows) - failures}/{len(workflows)} workflow(s) ran; images in {out}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
