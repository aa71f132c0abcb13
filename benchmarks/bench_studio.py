"""Edit Studio's live preview: latency of the preview route for a full-size config-f generator, written as JSON.

    python benchmarks/bench_studio.py --out benchmarks/results/cpu_2core_studio.json
    python benchmarks/bench_studio.py --device cuda --dtypes fp32,bf16 --out benchmarks/results/gpu_studio.json

A random-weight FFHQ config-f generator (1024 px, rosinality's container) is saved and loaded through the pack's
registry, an Edit Studio node runs once (as a queued run would), and then the route's own service answers
preview requests (`StudioService.handle`: validation, the edit, the generator stopped at the preview size, PNG,
base64 — everything but the HTTP hop) for several preview sizes. For comparison: the queue run of the node
(full 1024 image + its preview pair). `drag` replays a slider drag (30 moves a second for 2 s) the way the
frontend sends it — one request in flight, the newest slider value next — and reports how many previews rendered
and how long after the last move its preview arrived.

`--http` measures the real route instead: a headless ComfyUI 0.3.64 (the test harness's, installed on first
use) gets the same generator file, runs an Edit Studio graph once per case from its API, and the benchmark
POSTs `/transedit/studio/preview` as the frontend does — request to decoded answer, HTTP and JSON included.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_stylegan import RSSPeak  # noqa: E402

from transedit.models.core.directions import LatentDirection  # noqa: E402
from transedit.models.registry import load_stylegan2  # noqa: E402
from transedit.random_weights import save_random_generator
from transedit.models.stylegan.generator import StyleGAN2Config  # noqa: E402
from transedit.nodes import comfy_bridge as bridge  # noqa: E402
from transedit.nodes import edit_studio as studio  # noqa: E402
from transedit.nodes.rendering import StyleGANHandle
from transedit.nodes.stylegan import TransEditSampleLatent  # noqa: E402


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device, warmup: int, reps: int) -> dict:
    for _ in range(warmup):
        fn()
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    with RSSPeak() as rss:
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            sync(device)
            times.append(time.perf_counter() - t0)
    out = {"median_s": round(statistics.median(times), 4), "min_s": round(min(times), 4),
           "all_s": [round(t, 4) for t in times]}
    if device.type == "cuda":
        out["peak_mib"] = round(torch.cuda.max_memory_allocated() / 2 ** 20, 1)
    else:
        out["peak_rss_mib"] = round(rss.peak / 2 ** 20, 1)
    return out


def run_node(handle, latent, directions, strength, preview_size, precision):
    d = list(directions) + [None] * (4 - len(directions))
    return studio.TransEditEditStudio().edit(handle, latent, d[0], strength, 0.0, 0.0, 0.0, -1, -1, preview_size,
                                            precision, direction_2=d[1], direction_3=d[2], direction_4=d[3],
                                            unique_id="1")


def drag(service, seconds: float = 2.0, rate: float = 30.0) -> dict:
    """Slider moves at `rate` per second; a client that keeps one request in flight and sends the newest value
    when it returns (js/transedit.js). Reports previews rendered and the lag after the last move."""
    moves = int(seconds * rate)
    state = {"value": 0.0, "done": False}
    shown: list[tuple[float, float]] = []  # (strength shown, time)

    def slider():
        for k in range(1, moves + 1):
            state["value"] = 3.0 * k / moves
            time.sleep(1.0 / rate)
        state["released"] = time.perf_counter()
        state["done"] = True

    t = threading.Thread(target=slider)
    t.start()
    sent = None
    while True:
        value = state["value"]
        if value != sent:
            sent = value
            status, body = service.handle({"node_id": "1", "prompt_id": "bench", "strengths": [value]})
            assert status == 200, body
            shown.append((value, time.perf_counter()))
        elif state["done"]:
            break
        else:
            time.sleep(0.002)
    t.join()
    return {"slider_moves": moves, "previews_rendered": len(shown),
            "last_preview_after_release_s": round(shown[-1][1] - state["released"], 3),
            "last_preview_is_final_value": shown[-1][0] == state["value"]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtypes", default="fp32")
    ap.add_argument("--previews", default="128,256,512,1024")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--size", type=int, default=1024, help="generator size (config-f widths)")
    ap.add_argument("--drag-seconds", type=float, default=2.0)
    ap.add_argument("--no-drag", action="store_true")
    ap.add_argument("--http", action="store_true", help="through a real headless ComfyUI (CPU)")
    ap.add_argument("--http-server", default="comfyui-0.3.64")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    os.environ["TRANSEDIT_DEVICE"] = str(device)
    if args.http:
        return measure_http(args)

    with tempfile.TemporaryDirectory() as tmp:
        path = save_random_generator(Path(tmp) / "stylegan2-ffhq-config-f.pt", config=StyleGAN2Config(size=args.size))
        handle = StyleGANHandle(load_stylegan2(path))
    latent = TransEditSampleLatent().sample(handle, 0, 1, 0.7)[0]
    direction = torch.randn(512, generator=torch.Generator().manual_seed(1))
    age = LatentDirection("random InterFaceGAN-like", direction / direction.norm())
    ids, bridge.executing_ids = bridge.executing_ids, lambda unique_id: ("1", "bench")  # as in a ComfyUI run
    try:
        report = _measure(args, device, handle, latent, age)
    finally:
        bridge.executing_ids = ids
        studio.SERVICE.forget("1")
    return 0 if report["rows"] else 1


def _measure(args, device, handle, latent, age) -> dict:

    report = {"device": str(device), "device_name": torch.cuda.get_device_name() if device.type == "cuda"
              else platform.machine(), "torch": torch.__version__, "threads": torch.get_num_threads(),
              "generator": f"config-f {args.size} (random weights, rosinality container, loaded by the pack)",
              "reps": args.reps, "rows": []}
    for dtype in args.dtypes.split(","):
        for preview in args.previews.split(","):
            run_node(handle, latent, [age], 1.0, preview, dtype)  # the queued run the preview builds on
            k = [0]

            def ask():
                k[0] += 1  # a new slider value each time, as a drag sends
                status, body = studio.SERVICE.handle({"node_id": "1", "prompt_id": "bench",
                                                      "strengths": [1.0 + 0.01 * k[0]]})
                assert status == 200, body

            row = {"what": "preview route", "preview_size": int(preview), "dtype": dtype,
                   **timed(ask, device, args.warmup, args.reps)}
            print(json.dumps(row), flush=True)
            report["rows"].append(row)
        row = {"what": f"queue run of the node: the {args.size} image (in ComfyUI plus one preview-size render of "
                       "the unedited face)", "preview_size": 256, "dtype": dtype,
               **timed(lambda: run_node(handle, latent, [age], 1.5, "256", dtype), device, args.warmup,
                       max(2, args.reps // 2))}
        print(json.dumps(row), flush=True)
        report["rows"].append(row)
        if not args.no_drag:
            run_node(handle, latent, [age], 0.0, "256", dtype)
            row = {"what": f"slider drag, 30 moves/s for {args.drag_seconds:g} s, preview 256", "dtype": dtype,
                   **drag(studio.SERVICE, seconds=args.drag_seconds)}
            print(json.dumps(row), flush=True)
            report["rows"].append(row)
        if args.out:  # after every dtype, so an interrupted run keeps what it measured
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            tmp_out = Path(args.out + ".part")
            tmp_out.write_text(json.dumps(report, indent=1))
            os.replace(tmp_out, args.out)
    return report


def measure_http(args) -> int:
    """The route over HTTP on a real headless ComfyUI (see the module docstring)."""
    import urllib.request

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    import comfy_harness as h
    from transedit.nodes.editing import SEFA_ENTRY

    def post(server, body) -> tuple[float, dict]:
        req = urllib.request.Request(server.url + studio.ROUTE, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
        t0 = time.perf_counter()
        with urllib.request.urlopen(req, timeout=600) as resp:
            answer = json.loads(resp.read())
        return time.perf_counter() - t0, answer

    report = {"device": "cpu (ComfyUI --cpu)", "via": f"HTTP, {args.http_server}", "torch": torch.__version__,
              "generator": f"config-f {args.size} (random weights, rosinality container)", "reps": args.reps,
              "rows": []}
    with tempfile.TemporaryDirectory() as tmp:
        gen = save_random_generator(Path(tmp) / "g.pt", config=StyleGAN2Config(size=args.size))
        with h.ComfyServer(h.ensure_server(args.http_server), models={"stylegan": {"g.pt": gen}}) as server:
            for dtype in args.dtypes.split(","):
                for preview in args.previews.split(","):
                    prompt = {
                        "1": {"class_type": "TransEditLoadStyleGAN", "inputs": {"ckpt_name": "g.pt"}},
                        "2": {"class_type": "TransEditSampleLatent",
                              "inputs": {"generator": ["1", 0], "seed": 0, "batch_size": 1, "truncation": 0.7}},
                        "3": {"class_type": "TransEditLoadDirection",
                              "inputs": {"direction": SEFA_ENTRY, "component": 0, "generator": ["1", 0]}},
                        "4": {"class_type": "TransEditEditStudio", "inputs": {
                            "generator": ["1", 0], "latent": ["2", 0], "direction_1": ["3", 0], "strength_1": 1.0,
                            "strength_2": 0.0, "strength_3": 0.0, "strength_4": 0.0, "start_layer": -1,
                            "end_layer": -1, "preview_size": preview, "precision": dtype}}}
                    t0 = time.perf_counter()
                    history = server.run(prompt)
                    queue_s = time.perf_counter() - t0
                    (payload,) = history["outputs"]["4"]["transedit_studio"]
                    times, server_ms = [], []
                    for k in range(args.warmup + args.reps):
                        spent, answer = post(server, {"node_id": payload["node_id"], "prompt_id": payload["prompt_id"],
                                                      "strengths": [1.0 + 0.01 * (k + 1)], "seq": k})
                        assert answer.get("image"), answer
                        if k >= args.warmup:
                            times.append(spent)
                            server_ms.append(answer["ms"])
                    row = {"what": "preview route over HTTP", "preview_size": int(preview), "dtype": dtype,
                           "median_s": round(statistics.median(times), 4), "min_s": round(min(times), 4),
                           "server_render_median_ms": round(statistics.median(server_ms), 1),
                           "answer_kib": round(len(answer["image"]) / 1024, 1),
                           "queue_run_s (the whole graph, first run of this case)": round(queue_s, 2)}
                    print(json.dumps(row), flush=True)
                    report["rows"].append(row)
    if args.out:
        tmp_out = Path(args.out + ".part")
        tmp_out.write_text(json.dumps(report, indent=1))
        os.replace(tmp_out, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
