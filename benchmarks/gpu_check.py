"""The GPU check: one command that proves the pack on a bare NVIDIA machine, and that CI runs on the CPU so it
never rots.

    ./dev.sh gpu-check                          # on the GPU machine: --device cuda, full sizes
    ./dev.sh gpu-check --device cpu --quick     # CI: the same steps, small settings

Made for the machines this project may be lent: one H100/H200, Python 3.12 with torch (CUDA), timm, safetensors,
numpy, pillow, pyyaml, scikit-image, hypothesis and pytest installed, no network, 64 MiB of carried files (what
is missing, kornia, travels as wheels: `./dev.sh gpu-wheels` here), 10 minutes a command. The steps, each in its
own process under its own time limit (the limits add up to the --budget, 8 minutes by default):

1. tests on the device (TRANSEDIT_TEST_DEVICE): device mixing, half precision, sync-free loops (judged by the sync
   sentinel, which is shown to see the pack through this machine's symlinked import, and by PyTorch's own
   detector, torch.cuda.set_sync_debug_mode, with planted syncs that both must catch), seeding, faces on
   the device, Edit Studio, and the parity tests against ../shared/fixtures where they were carried
   (TRANSEDIT_SHARED; absent ones skip);
2. the precision sweep at full official sizes (benchmarks/precision_sweep.py): fp32 / bf16 / fp16 per stage
   against fp32, and the device's fp32 against the CPU's;
3. speed at fixed settings, with peak memory: inversion batch 1 and 32, Generate 1024, a Splice step and its loss
   curve, PUT 256 px at the official schedules, the Edit Studio preview; and the official code beside the pack
   (benchmarks/vs_official.py) when --official names the official checkouts;
4. ComfyUI 0.33.0 headless on the device, the models' memory management probed with DynamicVRAM on and off,
   when ComfyUI and its requirements are importable (they are over the carry limit; see docs/precision-and-gpu.md "GPU check");
5. one JSON (benchmarks/results/gpu_check_<device>.json) and a markdown summary beside it, which the docs'
   GPU rows are taken from.
Exit status 1 when a step fails (a skipped step is reported, not failed).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
DEVICE_TESTS = ["tests/test_devices.py", "tests/test_half_precision.py", "tests/test_sync_free.py",
                "tests/test_seeding.py", "tests/test_nodes_faces.py", "tests/test_edit_studio.py",
                "tests/test_nodes_stylegan.py", "tests/test_stylegan2_parity.py", "tests/test_encoders_parity.py",
                "tests/test_styleprompter_parity.py", "tests/test_splice_parity.py", "tests/test_put_parity.py",
                "tests/test_put_codec_parity.py", "tests/test_face_video.py"]


def benchmark_steps(device: str, quick: bool, out: Path) -> list[tuple[str, list[str], float]]:
    """(name, command, share of the budget) for step 3."""
    py = [sys.executable]
    d = ["--device", device]
    if quick:
        return [
            ("generate", py + ["benchmarks/bench_stylegan.py", *d, "--sizes", "64", "--batches", "1", "--dtypes",
                               "fp32,bf16", "--reps", "1", "--warmup", "0", "--out", str(out / "generate.json")], 0.08),
            ("inversion", py + ["benchmarks/bench_inversion.py", *d, "--families", "style_transformer", "--batches",
                                "1", "--dtypes", "fp32", "--reps", "1", "--warmup", "0",
                                "--out", str(out / "inversion.json")], 0.12),
            ("splice", py + ["benchmarks/bench_splice.py", *d, "--backbones", "small", "--patches", "16", "--sizes",
                             "64", "--dtypes", "fp32", "--reps", "1", "--warmup", "0", "--entire-reps", "1",
                             "--out", str(out / "splice.json")], 0.1),
            ("put", py + ["benchmarks/bench_put.py", *d, "--versions", "tpami2024", "--schedules", "20", "--samples",
                          "1", "--dtypes", "fp32", "--max-passes", "1", "--out", str(out / "put.json")], 0.12),
            ("studio", py + ["benchmarks/bench_studio.py", *d, "--size", "64", "--previews", "128", "--reps", "1",
                             "--warmup", "0", "--no-drag", "--out", str(out / "studio.json")], 0.06),
            ("face_video", py + ["benchmarks/bench_face_video.py", *d, "--frames", "16", "--memory-frames", "8",
                                 "--memory-height", "360", "--quick", "--footage-seeds", "1",
                                 "--out", str(out / "face_video.json"),
                                 "--strip", str(out / "face_video_strip.jpg")], 0.08),
            ("tuning", py + ["benchmarks/bench_tuning.py", "speed", *d, "--size", "32", "--max-channels", "32", "--steps",
                             "4", "--dtypes", "fp32", "--reps", "1", "--out", str(out / "tuning.json")], 0.04),
            ("tuning_memory", py + ["benchmarks/bench_tuning.py", "memory", *d, "--size", "32", "--max-channels", "16",
                                    "--frames", "4,12", "--out", str(out / "tuning_memory.json")], 0.04),
        ]
    return [
        ("generate", py + ["benchmarks/bench_stylegan.py", *d, "--sizes", "1024", "--batches", "1,8,32", "--dtypes",
                           "fp32,bf16,fp16", "--out", str(out / "generate.json")], 0.08),
        ("inversion", py + ["benchmarks/bench_inversion.py", *d, "--batches", "1,32", "--dtypes", "fp32,bf16,fp16",
                            "--official-style", "--out", str(out / "inversion.json")], 0.14),
        ("splice", py + ["benchmarks/bench_splice.py", *d, "--backbones", "base", "--patches", "8", "--sizes", "512",
                         "--dtypes", "fp32,bf16", "--curve", "--curve-steps", "300", "--out", str(out / "splice.json")],
         0.14),
        ("put", py + ["benchmarks/bench_put.py", *d, "--versions", "cvpr2022,tpami2024", "--schedules", "1,20,all",
                      "--samples", "1,4", "--dtypes", "fp32,bf16", "--max-passes", "16", "--out", str(out / "put.json")],
         0.12),
        ("studio", py + ["benchmarks/bench_studio.py", *d, "--dtypes", "fp32,bf16,fp16", "--previews", "256,1024",
                         "--reps", "20", "--out", str(out / "studio.json")], 0.06),
        ("face_video", py + ["benchmarks/bench_face_video.py", *d, "--memory-frames", "30,120",
                             "--out", str(out / "face_video.json"), "--strip", str(out / "face_video_strip.jpg")], 0.05),
        # PTI: 350 steps on a 1024² config-f generator, target 5 s on an H100 (fp32 = the official force_fp32)
        ("tuning", py + ["benchmarks/bench_tuning.py", "speed", *d, "--size", "1024", "--steps", "350", "--dtypes",
                         "fp32,auto", "--reps", "2", "--out", str(out / "tuning.json")], 0.1),
        ("tuning_memory", py + ["benchmarks/bench_tuning.py", "memory", *d, "--size", "256", "--max-channels", "512",
                                "--frames", "30,120,300", "--out", str(out / "tuning_memory.json")], 0.05),
    ]


def run_step(name: str, cmd: list[str], limit: float, env: dict) -> dict:
    print(f"== {name} (limit {limit:.0f} s): {' '.join(cmd[1:])}", flush=True)
    t0 = time.monotonic()
    try:
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=limit)
        rc, out = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as e:
        rc = 124
        out = (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        out += f"\n(stopped at its {limit:.0f} s limit)"
    seconds = round(time.monotonic() - t0, 1)
    tail = out[-3000:]
    print(tail[-1500:], flush=True)
    print(f"== {name}: exit {rc} in {seconds} s", flush=True)
    return {"step": name, "command": " ".join(cmd[1:]), "exit": rc, "seconds": seconds, "ok": rc == 0,
            "output_tail": tail}


def pytest_counts(output: str) -> dict:
    found = re.findall(r"(\d+) (passed|failed|skipped|errors?|xfailed)", output.splitlines()[-1] if output else "")
    return {k: int(n) for n, k in found}


def comfyui_available() -> str:
    """Why the ComfyUI step cannot run here, or "" when it can."""
    sys.path.insert(0, str(REPO / "tests"))
    import importlib.util

    import comfy_servers

    if comfy_servers.source_of(comfy_servers.RELEASES["0.33.0"]) is None:
        return "no ComfyUI 0.33.0 source (../shared/comfyui or the cache)"
    missing = [m for m in ("comfy_kitchen", "comfy_aimdo", "av", "alembic", "torchsde", "spandrel", "pydantic_settings")
               if importlib.util.find_spec(m) is None]
    return f"ComfyUI 0.33.0's requirements are missing: {', '.join(missing)}" if missing else ""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--quick", action="store_true", help="small settings (the CPU run in CI)")
    ap.add_argument("--budget", type=float, default=480.0, help="seconds for all steps together (default 480)")
    ap.add_argument("--official", default=None, help="folder with the official checkouts (vs_official.py)")
    ap.add_argument("--out-dir", default=str(RESULTS))
    args = ap.parse_args(argv)

    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu-check: --device cuda but torch sees no CUDA device", file=sys.stderr)
        return 2
    tag = "cpu_quick" if args.quick else args.device.split(":")[0]
    out_dir = Path(args.out_dir)
    raw = out_dir / f"gpu_check_{tag}"
    raw.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1", TRANSEDIT_TEST_DEVICE=args.device, HF_HUB_OFFLINE="1")
    budget = args.budget
    started = time.monotonic()
    steps = []

    # 1. tests on the device
    junit = raw / "tests.xml"
    tests = [t for t in DEVICE_TESTS if (REPO / t).is_file()]
    step = run_step("tests", [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={junit}",
                              *tests], budget * 0.22, env)
    step["counts"] = pytest_counts(step["output_tail"].strip())
    steps.append(step)

    # 2. precision at full size
    sweep = raw / "precision.json"
    steps.append(run_step("precision", [sys.executable, "benchmarks/precision_sweep.py", "--device", args.device,
                                        *(["--quick"] if args.quick else ["--cpu-reference"]), "--out", str(sweep)],
                          budget * 0.16, env))

    # 3. speed
    for name, cmd, share in benchmark_steps(args.device, args.quick, raw):
        steps.append(run_step(name, cmd, budget * share, env))
    if args.official:
        official = [f"--official={n}={Path(args.official) / d}" for n, d in
                    (("stylegan2", "stylegan2-pytorch"), ("style_transformer", "style-transformer"),
                     ("styleprompter", "StylePrompter"), ("splice", "Splice"), ("dino", "dino"), ("put", "PUT"),
                     ("pti", "PTI"), ("stit", "STIT"))
                    if (Path(args.official) / d).is_dir()]
        steps.append(run_step("vs_official", [sys.executable, "benchmarks/vs_official.py", "--device", args.device,
                                              *official, "--batches", "1,32", "--reps", "5", "--put-samples", "1",
                                              "--out", str(raw / "vs_official.json")], budget * 0.1, env))

    # 4. ComfyUI on the device, DynamicVRAM on and off
    why_not = comfyui_available()
    if why_not:
        steps.append({"step": "comfyui", "ok": True, "skipped": why_not})
        print(f"== comfyui: skipped ({why_not})", flush=True)
    else:
        steps.append(run_step("comfyui", [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                                          "tests/e2e/test_model_management.py"],
                              max(60.0, budget - (time.monotonic() - started)), dict(env, TRANSEDIT_E2E_SERVERS=
                                                                                       "comfyui-0.33.0")))

    # 5. the report
    def load(name):
        path = raw / name
        return json.loads(path.read_text()) if path.is_file() else None

    report = {"benchmark": "gpu_check", "device": args.device, "quick": args.quick,
              "machine": {"gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None,
                          "torch": torch.__version__, "python": sys.version.split()[0]},
              "seconds": round(time.monotonic() - started, 1), "steps": steps,
              "results": {name: load(f"{name}.json") for name in ("precision", "generate", "inversion", "splice", "put",
                                                                   "studio", "vs_official", "tuning",
                                                                   "tuning_memory")},
              "ok": all(s["ok"] for s in steps)}
    path = out_dir / f"gpu_check_{tag}.json"
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(report, indent=1) + "\n")
    os.replace(tmp, path)
    lines = [f"# GPU check ({args.device}{', quick' if args.quick else ''}): {'passed' if report['ok'] else 'FAILED'}",
             "", f"{report['machine']}, {report['seconds']} s", "", "| step | result | seconds |", "|---|---|---|"]
    for s in steps:
        result = s.get("skipped") and f"skipped: {s['skipped']}" or ("ok" if s["ok"] else f"exit {s['exit']}")
        if s.get("counts"):
            result += " (" + ", ".join(f"{n} {k}" for k, n in s["counts"].items()) + ")"
        lines.append(f"| {s['step']} | {result} | {s.get('seconds', '')} |")
    if report["results"]["precision"]:
        sys.path.insert(0, str(REPO / "benchmarks"))
        from precision_sweep import markdown

        lines += ["", markdown(report["results"]["precision"]["rows"])]
    (out_dir / f"gpu_check_{tag}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
