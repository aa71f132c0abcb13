"""TransEdit's models inside ComfyUI's real model management, under ComfyUI's device and precision settings.

Each case starts a fresh Python process that imports the pinned ComfyUI with the given command-line flags
and runs `managed_memory_probe.py`: every loader and every model-running node once (inputs fp16, non-
contiguous, on the compute device; Edit Studio's live preview too), then ComfyUI's "free memory" and "unload
models". Checked here:

- each TransEdit model is in ComfyUI's list of loaded models with exactly its parameter + buffer bytes;
- ComfyUI's low-VRAM loader (run on copies, with the 'meta' device standing in for a GPU) leaves some of
  every model's tensors in RAM, and the bridge's completion puts them all on the load device;
- out-of-memory recovery inside a node unloads every other model (a stand-in for a diffusion model and the
  other TransEdit models) and keeps the ones the node runs;
- free_memory / unload_all_models take every one of them out, and once the graph's outputs are dropped
  nothing in TransEdit keeps the weights alive (they are garbage-collected; on a GPU, allocated VRAM falls);
- every IMAGE/MASK output is fp32, finite, in [0, 1], on ComfyUI's intermediate device.

`--gpu-only`, `--lowvram`, `--highvram`, `--novram` and the default GPU mode need a CUDA device (ComfyUI
refuses them together with `--cpu`); those cases skip with that reason on a CPU-only machine.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for comfy_harness
import comfy_harness as h  # noqa: E402

PROBE = Path(__file__).with_name("managed_memory_probe.py")
CPU_FLAGS = [["--cpu"], ["--cpu", "--force-fp16"], ["--cpu", "--bf16-unet", "--bf16-vae"],
             ["--cpu", "--disable-smart-memory"]]
GPU_FLAGS = [[], ["--gpu-only"], ["--lowvram"], ["--highvram"], ["--novram"], ["--force-fp16"]]


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.fixture(scope="module")
def comfy_copy(comfy_root, tmp_path_factory) -> Path:
    dest = tmp_path_factory.mktemp("comfy_probe") / "ComfyUI"
    shutil.copytree(comfy_root, dest, ignore=h.COPY_IGNORE, symlinks=True)  # the pack may create model folders
    return dest


def run_probe(comfy_copy: Path, work: Path, flags: list[str], dynamic_vram: bool = False,
              install: h.ComfyInstall | None = None) -> dict:
    out = work / "report.json"
    env = install.process_env() if install is not None else dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", DO_NOT_TRACK="1", TQDM_DISABLE="1")
    env.pop("TRANSEDIT_PROBE_DYNAMIC_VRAM", None)
    if dynamic_vram:
        env["TRANSEDIT_PROBE_DYNAMIC_VRAM"] = "1"
    proc = subprocess.run([sys.executable, str(PROBE), str(comfy_copy), str(work / "models"), str(out), *flags],
                          capture_output=True, text=True, timeout=3600, env=env, cwd=work)
    assert proc.returncode == 0, f"probe failed under {flags}:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return json.loads(out.read_text())


def check_report(report: dict) -> None:
    models = report["models"]
    assert set(models) == {"stylegan", "encoder", "smart", "put", "dino", "edit_transformer",
                           "bundled_generator"}
    for name, m in models.items():
        assert m["loaded"], f"{name} never reached ComfyUI's loaded-model list"
        assert m["patcher"] == "ModelPatcher", (name, m["patcher"])  # the legacy patcher, DynamicVRAM or not
        assert m["reported_bytes"] == m["expected_bytes"] > 0, (name, m)
        # the state dict omits non-persistent buffers (e.g. precomputed tables); never more than the module
        assert 0 < m["state_dict_bytes"] <= m["expected_bytes"], (name, m)
    assert report["unload_others"] == {"unloaded": len(models), "kept": ["stylegan"], "other_still_loaded": False}
    assert report["after_free_memory"] == [], "free_memory left TransEdit models loaded"
    assert sorted(report["reloaded"]) == sorted(models)
    assert report["after_unload_all"] == [], "unload_all_models left TransEdit models loaded"
    assert report["weights_still_alive"] == [], "weights outlived the graph: a reference leaks"
    # a live preview reloads the generator through its one ModelPatcher, beside nothing else of its own; the
    # studio's remembered run holds it weakly (so the check above also covers it)
    assert report["studio_preview"] == {"status": 200, "error": None, "generator_loaded": 1,
                                        "loaded_models": 1}, report["studio_preview"]
    offload = report["offload_device"]
    for name, device in report["devices_after_free_memory"].items():
        assert device == offload, f"{name} stayed on {device} after free_memory (offload device {offload})"
    for name, o in report["outputs"].items():
        assert o["dtype"] == "torch.float32" and o["finite"], (name, o)
        if name == "Invert (W+)":  # TE_LATENT codes are small and always live on the CPU
            assert o["device"] == "cpu", (name, o)
        else:
            assert o["on_intermediate"] and o["in_range"], (name, o)
    # ComfyUI's low-VRAM loader really leaves tensors of these models in RAM; the bridge completes the move
    assert set(report["low_vram"]) == set(models)
    assert all(v["left_in_ram_by_comfyui"] > 0 for v in report["low_vram"].values()), report["low_vram"]
    assert all(v["left_after_bridge"] == 0 for v in report["low_vram"].values()), report["low_vram"]
    if report["cuda_allocated_loaded"] is not None:
        assert report["cuda_allocated_after"] < report["cuda_allocated_loaded"], "VRAM was not given back"


@pytest.mark.parametrize("flags", CPU_FLAGS, ids=lambda f: " ".join(f))
def test_models_are_managed_under_cpu_settings(comfy_copy, tmp_path, flags):
    check_report(run_probe(comfy_copy, tmp_path, flags))


@pytest.mark.parametrize("flags", GPU_FLAGS, ids=lambda f: " ".join(f) or "default")
def test_models_are_managed_under_gpu_settings(comfy_copy, tmp_path, flags):
    if not _cuda():
        pytest.skip("needs a CUDA GPU: ComfyUI accepts these memory modes only with one (not with --cpu)")
    check_report(run_probe(comfy_copy, tmp_path, flags))


@pytest.mark.parametrize("flags", [["--cpu"], []], ids=["cpu", "gpu"])
def test_models_stay_managed_beside_dynamic_vram(comfy_root, comfy_copy, tmp_path, flags):
    """ComfyUI >= 0.24 swaps CoreModelPatcher for ModelPatcherDynamic (comfy-aimdo) on NVIDIA GPUs. The pack's
    models keep the legacy ModelPatcher (docs/precision-and-gpu.md: DynamicVRAM), and everything above still holds beside dynamic
    models: loads, the OOM recovery unloading a dynamic stand-in for a diffusion model, free_memory, unload_all,
    the Edit Studio preview's reload, no leaked weights. On a CPU only the swap can be simulated (ComfyUI never
    enables DynamicVRAM there); on CUDA the probe initialises comfy-aimdo as ComfyUI's main.py does."""
    if not flags and not _cuda():
        pytest.skip("needs a CUDA GPU: DynamicVRAM itself (comfy-aimdo) runs only on NVIDIA and ROCm GPUs")
    report = run_probe(comfy_copy, tmp_path, flags, dynamic_vram=True, install=comfy_root)
    if report["dynamic_vram"].startswith("unavailable"):
        pytest.skip(f"{comfy_root.label}: {report['dynamic_vram']}")
    assert report["core_patcher"] == "ModelPatcherDynamic", report["core_patcher"]
    if not flags:
        assert report["dynamic_vram"].startswith("enabled"), report["dynamic_vram"]
    check_report(report)
