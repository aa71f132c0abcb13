"""Run inside a real ComfyUI process (started by test_model_management.py with ComfyUI's own command-line
flags): load every TransEdit model through its loader node, run its node, and report as JSON what ComfyUI's
model management sees — the size each model reports, where outputs land — and whether "free memory" and
"unload models" really give the memory back.

    python managed_memory_probe.py COMFY_ROOT WORK_DIR OUT_JSON [ComfyUI flags...]

TRANSEDIT_PROBE_DYNAMIC_VRAM=1 turns on what ComfyUI >= 0.24's main.py does on NVIDIA GPUs before any node
loads: comfy-aimdo initialised and comfy.model_patcher.CoreModelPatcher swapped for ModelPatcherDynamic (on a
CPU only the swap, which ComfyUI itself never makes there: it still shows which patcher the pack picks).
"""
from __future__ import annotations

import copy
import gc
import json
import os
import sys
import weakref


def _tensors_off_meta(module) -> int:
    """How many of a module's tensors are still off the stand-in device."""
    return sum(t.device.type != "meta" for t in list(module.parameters()) + list(module.buffers()))


def main() -> None:
    comfy_root, work, out_path = sys.argv[1:4]
    sys.argv = ["main.py", *sys.argv[4:]]  # ComfyUI parses its flags from here
    sys.path.insert(0, comfy_root)
    import comfy.options

    comfy.options.enable_args_parsing()
    import comfy.model_management as mm
    import comfy.model_patcher
    import folder_paths
    import torch

    dynamic = _enable_dynamic_vram(mm, comfy.model_patcher) if os.environ.get("TRANSEDIT_PROBE_DYNAMIC_VRAM") else None

    import transedit  # noqa: F401  (registers the model folders, as ComfyUI's loader would)
    from transedit import random_weights
    from transedit.nodes import NODE_CLASS_MAPPINGS as N
    from transedit.nodes import comfy_bridge as bridge

    assert bridge.IN_COMFYUI, "the bridge did not find ComfyUI"
    folders = {name: os.path.join(work, name) for name in ("stylegan", "gan_encoders", "put", "vit")}
    for name, path in folders.items():
        os.makedirs(path, exist_ok=True)
        folder_paths.folder_names_and_paths[name] = ([path], set(bridge.MODEL_FOLDERS[name][1]))
    random_weights.save_random_generator(os.path.join(folders["stylegan"], "g.pt"), overwrite=True)
    random_weights.save_random_encoder(os.path.join(folders["gan_encoders"], "sp.pt"), family="styleprompter",
                                 overwrite=True)
    random_weights.save_random_put(os.path.join(folders["put"], "p.pth"), overwrite=True)
    random_weights.save_random_dino(os.path.join(folders["vit"], "d.safetensors"), overwrite=True)
    random_weights.save_random_edit_transformer(os.path.join(folders["gan_encoders"], "ref_edit.pt"), overwrite=True)

    inter = mm.intermediate_device()
    compute = mm.get_torch_device()
    report = {"flags": sys.argv[1:], "compute_device": str(compute), "intermediate_device": str(inter),
              "offload_device": str(mm.unet_offload_device()), "outputs": {}, "models": {}, "dynamic_vram": dynamic,
              "core_patcher": getattr(comfy.model_patcher, "CoreModelPatcher", comfy.model_patcher.ModelPatcher).__name__}

    def output(name, tensor):
        report["outputs"][name] = {"dtype": str(tensor.dtype), "device": str(tensor.device),
                                   "on_intermediate": tensor.device == torch.device(inter),
                                   "finite": bool(torch.isfinite(tensor).all()),
                                   "in_range": bool(tensor.min() >= 0 and tensor.max() <= 1)}

    # inputs as a user's graph may deliver them: fp16 on the compute device, non-contiguous
    g = torch.Generator().manual_seed(0)
    photos = torch.rand(2, 48, 40, 3, generator=g).to(compute, torch.float16).transpose(1, 2).contiguous().transpose(1, 2)
    holes = torch.zeros(2, 48, 40, device=compute)
    holes[:, 10:30, 8:28] = 1

    def result(returned):  # nodes return {"ui", "result"} when they have something to show
        return returned["result"] if isinstance(returned, dict) else returned

    def run_graph():
        generator = N["TransEditLoadStyleGAN"]().load("g.pt")[0]
        encoder, sp_generator = N["TransEditLoadEncoder"]().load("sp.pt")
        put = N["TransEditLoadPUT"]().load("p.pth")[0]
        vit = N["TransEditLoadDINO"]().load("d.safetensors")[0]
        edit_tf = N["TransEditLoadEditTransformer"]().load("ref_edit.pt")[0]
        latent = N["TransEditSampleLatent"]().sample(generator, 1, 2, 0.7)[0]
        output("Generate", result(N["TransEditGenerate"]().generate(generator, latent, "random", 0, "auto"))[0])
        # Edit Studio's queue run and a live preview of it (the ids a prompt's execution context would give)
        from transedit.nodes import edit_studio

        bridge.executing_ids = lambda unique_id: (str(unique_id), "probe")
        sefa = N["TransEditSeFa"]().factorize(generator, 0, 0, -1)[0]
        output("Edit Studio", result(N["TransEditEditStudio"]().edit(generator, latent, sefa, 1.0, 0.0, 0.0, 0.0, -1,
                                                                     -1, "256", "auto", unique_id="studio"))[0])
        mm.unload_all_models()  # the preview loads the generator again, through its own ModelPatcher
        status, answer = edit_studio.SERVICE.handle({"node_id": "studio", "prompt_id": "probe", "strengths": [2.0]})
        report["studio_preview"] = {
            "status": status, "error": answer.get("error"),
            "generator_loaded": sum(lm.model is generator.managed.patcher for lm in mm.current_loaded_models),
            "loaded_models": len(mm.current_loaded_models)}
        inverted = N["TransEditInvert"]().invert(encoder, photos, "fast (torch)", "auto")[0]
        refined = N["TransEditSMARTRefine"]().refine(inverted, encoder, 1.0, 1.0)[0]
        output("Generate (SMART)", result(N["TransEditGenerate"]().generate(sp_generator, refined, "const", 0,
                                                                     "auto"))[0])
        edited = N["TransEditReferenceEdit"]().edit(edit_tf, latent, latent)[0]
        output("Generate (reference edit)", result(N["TransEditGenerate"]().generate(generator, edited, "const", 0,
                                                                              "auto"))[0])
        filled, mask = result(N["TransEditPUTInpaint"]().inpaint(
            put, photos, holes, num_samples=2, seed=0, schedule="tokens per iteration", tokens_per_iter=0,
            iterations=1, top_k=4, temperature=1.0, order="most confident first (official)",
            output_mode="crop around mask", context=0.5, feather=2, precision="auto"))
        output("PUT Inpaint", filled)
        output("PUT Inpaint mask", mask)
        spliced, gens = result(N["TransEditSplice"]().splice(vit, photos[:1], photos[1:], preset="fast", steps=2,
                                                     output_size=0, seed=0, early_stop=False, precision="auto",
                                                     preview_every=0))
        output("Splice", spliced)
        output("Apply Splice", N["TransEditApplySplice"]().apply(gens, photos, True)[0])
        output("Invert (W+)", inverted.wplus)
        return {"stylegan": generator, "encoder": encoder, "smart": encoder.smart_handle(), "put": put,
                "dino": vit, "edit_transformer": edit_tf, "bundled_generator": sp_generator}

    def ours_loaded(handles):
        patchers = {id(h.managed.patcher): name for name, h in handles.items()}
        return {patchers[id(lm.model)]: lm for lm in mm.current_loaded_models if id(lm.model) in patchers}

    def sizes(handles):  # a function of its own: no loop variable may keep a model alive afterwards
        loaded = ours_loaded(handles)
        for name, handle in handles.items():
            module = handle.managed.module
            tensors = list(module.parameters()) + list(module.buffers())
            lm = loaded.get(name)
            report["models"][name] = {
                "loaded": lm is not None,
                "reported_bytes": lm.model_memory() if lm is not None else None,
                "expected_bytes": sum(t.numel() * t.element_size() for t in tensors),
                "state_dict_bytes": mm.module_size(module),
                "device": str(tensors[0].device),
                "patcher": type(handle.managed.patcher).__name__,
            }

    handles = run_graph()
    sizes(handles)
    report["cuda_allocated_loaded"] = torch.cuda.memory_allocated() if torch.cuda.is_available() else None

    # out-of-memory recovery inside a node: every other model goes (here a stand-in for a diffusion model
    # and the other TransEdit models), the ones the node runs stay
    core = getattr(comfy.model_patcher, "CoreModelPatcher", comfy.model_patcher.ModelPatcher)  # dynamic when on
    other = core(torch.nn.Linear(256, 256), load_device=compute, offload_device=mm.unet_offload_device())
    mm.load_models_gpu([other])
    unloaded = bridge.unload_other_models((handles["stylegan"].managed,))
    report["unload_others"] = {"unloaded": unloaded, "kept": sorted(ours_loaded(handles)),
                               "other_still_loaded": any(lm.model is other for lm in mm.current_loaded_models)}
    del other
    list(map(lambda handle: handle.load(), handles.values()))

    # "free memory" (what ComfyUI does before loading something big / on OOM) unloads ours like any model
    mm.free_memory(1e30, compute)
    report["after_free_memory"] = sorted(ours_loaded(handles))
    report["devices_after_free_memory"] = {name: str(next(h.managed.module.parameters()).device)
                                           for name, h in handles.items()}
    # load again, then "Unload models" (the menu button / POST /free)
    list(map(lambda handle: handle.load(), handles.values()))
    report["reloaded"] = sorted(ours_loaded(handles))
    mm.unload_all_models()
    report["after_unload_all"] = sorted(ours_loaded(handles))

    # ComfyUI's own low-VRAM loader on copies of every model ('meta' stands in for a GPU): it leaves tensors
    # behind in RAM, and the bridge must complete the move
    report["low_vram"] = {}
    for name, handle in handles.items():
        clone = copy.deepcopy(handle.managed.module)
        patcher = comfy.model_patcher.ModelPatcher(clone, load_device=torch.device("meta"),
                                                   offload_device=torch.device("cpu"))
        if hasattr(patcher, "patch_model_lowvram"):  # the 2024 server
            patcher.patch_model_lowvram(device_to=torch.device("meta"), lowvram_model_memory=1)
        else:  # current servers: load() with a memory budget is the low-VRAM path
            patcher.load(device_to=torch.device("meta"), lowvram_model_memory=1)
        before = _tensors_off_meta(clone)
        bridge.complete_partial_load(clone, torch.device("meta"))
        report["low_vram"][name] = {"left_in_ram_by_comfyui": before, "left_after_bridge": _tensors_off_meta(clone)}
    del clone, patcher, handle

    # the graph's outputs gone (ComfyUI's cache dropped): nothing of TransEdit may keep the weights alive
    probes = {name: weakref.ref(next(h.managed.module.parameters())) for name, h in handles.items()}
    del handles
    gc.collect()
    mm.cleanup_models()
    gc.collect()
    report["weights_still_alive"] = sorted(name for name, ref in probes.items() if ref() is not None)
    if torch.cuda.is_available():
        mm.soft_empty_cache()
        report["cuda_allocated_after"] = torch.cuda.memory_allocated()
    with open(out_path, "w") as f:
        json.dump(report, f, indent=1)


def _enable_dynamic_vram(mm, model_patcher) -> str:
    """What ComfyUI 0.33's main.py does when DynamicVRAM is on (see the module docstring); says what was done."""
    if not hasattr(model_patcher, "ModelPatcherDynamic"):
        return "unavailable: this ComfyUI has no ModelPatcherDynamic (< 0.24)"
    import torch

    if torch.cuda.is_available():
        import comfy.memory_management
        import comfy_aimdo.control
        from comfy.cli_args import args

        try:
            ok = comfy_aimdo.control.init_devices((d.index, int(args.vram_headroom * 1024 ** 3))
                                                  for d in mm.get_all_torch_devices())
        except TypeError:  # comfy-aimdo 0.4.9's protocol, as main.py handles it
            ok = comfy_aimdo.control.init_devices(d.index for d in mm.get_all_torch_devices())
        if not ok:
            return "comfy-aimdo did not initialise: legacy patchers only"
        model_patcher.CoreModelPatcher = model_patcher.ModelPatcherDynamic
        comfy.memory_management.aimdo_enabled = True
        return "enabled (comfy-aimdo on CUDA)"
    model_patcher.CoreModelPatcher = model_patcher.ModelPatcherDynamic
    return "CoreModelPatcher swapped (CPU: ModelPatcherDynamic reroutes CPU load devices to ModelPatcher)"


if __name__ == "__main__":
    main()
