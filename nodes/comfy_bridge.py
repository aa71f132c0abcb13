"""The only module that touches ComfyUI (`comfy.*`, `folder_paths`).

Everything ComfyUI provides — model folders, devices, memory management, progress bars, Cancel — is
reached through here. Without ComfyUI (unit tests, the CLI, benchmarks) every function falls back to
plain PyTorch, so nodes run anywhere.
"""
from __future__ import annotations

import logging
import os
import sys
from typing import Optional

import torch

log = logging.getLogger("TransEdit")

try:  # inside ComfyUI
    import comfy.model_management as _mm
    import comfy.model_patcher as _model_patcher
    import comfy.utils as _comfy_utils
    import folder_paths as _folder_paths

    IN_COMFYUI = True
except ImportError:  # plain PyTorch
    _mm = _model_patcher = _comfy_utils = _folder_paths = None
    IN_COMFYUI = False

try:  # ComfyUI 0.3.4x and later: the prompt and node a node runs in
    from comfy_execution.utils import get_executing_context as _executing_context
except ImportError:  # older servers (and plain PyTorch): executing_ids asks the server instead
    _executing_context = None

# ComfyUI folder name -> (subfolder of models/, file extensions)
MODEL_FOLDERS: dict[str, tuple[str, set[str]]] = {
    "stylegan": ("stylegan", {".pt", ".pth", ".pkl", ".safetensors"}),
    "gan_encoders": ("gan_encoders", {".pt", ".pth", ".safetensors"}),
    "latent_directions": ("latent_directions", {".pt", ".pth", ".npy", ".safetensors"}),
    "vit": ("vit", {".pth", ".pt", ".safetensors", ".bin"}),
    "put": ("put", {".pth", ".pt", ".safetensors"}),
    "face_landmarks": ("face_landmarks", {".dat"}),  # optional dlib shape predictor for Align Face
    # RetinaFace for Align Face: the folder face-restore / face-swap packs keep facexlib's detectors in
    "facedetection": ("facedetection", {".pth", ".pt", ".safetensors"}),
    # LPIPS for pivotal tuning: torchvision's AlexNet / VGG16 backbone and the LPIPS v0.1 heads file beside it
    "lpips": ("lpips", {".pth", ".pt", ".safetensors"}),
    # BiSeNet face parsing for stitching tuning's face region (face-parsing.PyTorch's 79999_iter.pth, as STIT)
    "face_parsing": ("face_parsing", {".pth", ".pt", ".safetensors"}),
}

# Used when ComfyUI is absent: $TRANSEDIT_MODELS_DIR/<folder>, default ./models/<folder>.
_fallback_paths: dict[str, list[str]] = {}


# ------------------------------------------------------------------------------------ model folders
def register_model_folders() -> None:
    """Add TransEdit's folders to folder_paths without clobbering what the user configured.

    extra_model_paths.yaml may already have created an entry (possibly with an empty extension set,
    which ComfyUI reads as "any file"): keep its paths first, append the default folder, and only
    widen a non-empty extension set. Never raises because a folder is missing.
    """
    if not IN_COMFYUI:
        return
    for name, (sub, exts) in MODEL_FOLDERS.items():
        default = os.path.join(_folder_paths.models_dir, sub)
        try:
            os.makedirs(default, exist_ok=True)
        except OSError as e:  # read-only installs: the folder simply won't exist
            log.warning("TransEdit: could not create %s (%s)", default, e)
        entry = _folder_paths.folder_names_and_paths.get(name)
        if entry is None:
            _folder_paths.folder_names_and_paths[name] = ([default], set(exts))
            continue
        paths, known_exts = entry[0], entry[1]
        if default not in paths:
            paths.append(default)
        if known_exts:
            known_exts.update(exts)


def _fallback_folder(name: str) -> list[str]:
    if name not in _fallback_paths:
        root = os.environ.get("TRANSEDIT_MODELS_DIR", os.path.join(os.getcwd(), "models"))
        _fallback_paths[name] = [os.path.join(root, MODEL_FOLDERS[name][0])]
    return _fallback_paths[name]


def set_fallback_folder(name: str, paths: list[str]) -> None:
    """Point a folder somewhere when running without ComfyUI (tests, CLI)."""
    _fallback_paths[name] = list(paths)


def list_models(name: str) -> list[str]:
    if IN_COMFYUI:
        return _folder_paths.get_filename_list(name)
    exts = MODEL_FOLDERS[name][1]
    found = []
    for root in _fallback_folder(name):
        for dirpath, _, files in os.walk(root, followlinks=True):
            for f in files:
                if os.path.splitext(f)[1].lower() in exts:
                    found.append(os.path.relpath(os.path.join(dirpath, f), root).replace(os.sep, "/"))
    return sorted(found)


def model_path(name: str, filename: str) -> Optional[str]:
    if IN_COMFYUI:
        return _folder_paths.get_full_path(name, filename)
    for root in _fallback_folder(name):
        base = os.path.normpath(root)
        candidate = os.path.normpath(os.path.join(base, filename))
        # like ComfyUI's get_full_path: a name may reach into subfolders, never out of the model folder
        if os.path.commonpath([base, candidate]) == base and candidate != base and os.path.isfile(candidate):
            return candidate
    return None


def folder_paths_for(name: str) -> list[str]:
    if IN_COMFYUI:
        return list(_folder_paths.get_folder_paths(name))
    return list(_fallback_folder(name))


# ------------------------------------------------------------------------------------------ devices
def compute_device() -> torch.device:
    if IN_COMFYUI:
        return _mm.get_torch_device()
    override = os.environ.get("TRANSEDIT_DEVICE")
    if override:
        return torch.device(override)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def offload_device() -> torch.device:
    return _mm.unet_offload_device() if IN_COMFYUI else torch.device("cpu")


def intermediate_device() -> torch.device:
    if IN_COMFYUI and hasattr(_mm, "intermediate_device"):
        return _mm.intermediate_device()
    return torch.device("cpu")


def oom_exception() -> type[BaseException]:
    """The exception a device raises when it runs out of memory.

    torch's own class, not ComfyUI's OOM_EXCEPTION: ComfyUI falls back to plain `Exception` when torch
    lacks the class, and catching that would swallow Cancel. Current ComfyUI versions test a failed node's
    exception with isinstance(…, OOM_EXCEPTION) and then unload all models; torch's class keeps that working."""
    return getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)


def soft_empty_cache() -> None:
    if IN_COMFYUI:
        _mm.soft_empty_cache()
    elif torch.cuda.is_available():
        torch.cuda.empty_cache()


# ------------------------------------------------------------------------------------ managed models
class ManagedModel:
    """A torch module that ComfyUI's memory manager can load, offload and count.

    Inside ComfyUI it is a ModelPatcher, so "Free model and node cache", other models' loads and OOM
    recovery can unload it. Outside it just moves the module.
    """

    def __init__(self, module: torch.nn.Module):
        self.module = module
        self.size = sum(t.numel() * t.element_size() for t in list(module.parameters()) + list(module.buffers()))
        self.patcher = None
        if IN_COMFYUI:
            self.patcher = _model_patcher.ModelPatcher(module, load_device=compute_device(),
                                                       offload_device=offload_device(), size=self.size)

    def load(self) -> torch.nn.Module:
        """Put the module on the compute device (ComfyUI frees room for it first) and return it."""
        if self.patcher is not None:
            _mm.load_models_gpu([self.patcher])
            module = self.patcher.model
            complete_partial_load(module, self.patcher.load_device)
            return module
        device = compute_device()
        return self.module.to(device)

    @property
    def device(self) -> torch.device:
        return next(self.module.parameters()).device


def unload_other_models(keep: tuple = ()) -> int:
    """Out-of-memory recovery: unload every model ComfyUI holds on the compute device except `keep`
    (ManagedModels the failing node is using), e.g. a diffusion checkpoint from earlier in the graph.
    Returns how many were unloaded (0 outside ComfyUI)."""
    if not IN_COMFYUI:
        return 0
    patchers = [m.patcher for m in keep if getattr(m, "patcher", None) is not None]
    keep_loaded = [lm for lm in _mm.current_loaded_models if any(lm.model is p for p in patchers)]
    before = len(_mm.current_loaded_models)
    _mm.free_memory(float("inf"), compute_device(), keep_loaded=keep_loaded)  # empties the cache if it unloaded
    unloaded = before - len(_mm.current_loaded_models)
    if unloaded:
        log.warning("TransEdit: out of memory; unloaded %d other model(s) to make room", unloaded)
    return unloaded


def _same_device(a: torch.device, b: torch.device) -> bool:
    """cuda and cuda:0 are the same place when the current device is 0 (ComfyUI names devices by index)."""
    if a.type != b.type:
        return False
    if a.index is None or b.index is None:
        return a.type != "cuda" or (a.index or b.index or 0) == torch.cuda.current_device()
    return a.index == b.index


def complete_partial_load(module: torch.nn.Module, device: torch.device) -> None:
    """Finish a partial load: in low-VRAM mode (--lowvram/--novram, or a model that does not fit) ComfyUI
    moves only layers that have a `weight` or that its own ops can stream, and leaves the rest (a StyleGAN's
    constant input, a ViT's class token and position table...) in RAM. TransEdit's models compute with all
    their tensors on one device, so move what was left behind; unloading moves everything back."""
    stray = [t for t in list(module.parameters()) + list(module.buffers()) if not _same_device(t.device, device)]
    if stray:
        log.info("TransEdit: %s was partly loaded (low-VRAM mode); moving the remaining %.1f MB to %s",
                 type(module).__name__, sum(t.numel() * t.element_size() for t in stray) / 2 ** 20, device)
        module.to(device)


# ------------------------------------------------------------------------------ progress and cancel
class Progress:
    """ComfyUI's ProgressBar (with optional preview images) or nothing."""

    def __init__(self, total: int):
        self.total = max(int(total), 1)
        self.done = 0
        self._bar = _comfy_utils.ProgressBar(self.total) if IN_COMFYUI else None

    def update(self, steps: int = 1, preview=None) -> None:
        """preview: a PIL image shown on the node while it runs."""
        self.done = min(self.done + steps, self.total)
        if self._bar is not None:
            if preview is not None:
                self._bar.update_absolute(self.done, self.total, ("JPEG", preview, 512))
            else:
                self._bar.update_absolute(self.done, self.total)


def check_interrupt() -> None:
    """Raise ComfyUI's interrupt exception if the user pressed Cancel (never catch it)."""
    if IN_COMFYUI:
        _mm.throw_exception_if_processing_interrupted()


_preview_counter = 0


def save_temp_images(images: torch.Tensor, prefix: str = "transedit") -> list[dict]:
    """Write IMAGE [B, H, W, 3] 0..1 as PNGs into ComfyUI's temp folder (wiped on restart) and return the
    frontend's image references ({filename, subfolder, type}); outside ComfyUI, a process temp folder."""
    import tempfile

    import numpy as np
    from PIL import Image

    global _preview_counter
    if IN_COMFYUI:
        root = _folder_paths.get_temp_directory()
    else:
        root = os.path.join(tempfile.gettempdir(), "transedit_previews")
    sub = "transedit"
    folder = os.path.join(root, sub)
    os.makedirs(folder, exist_ok=True)
    refs = []
    arrays = (images.detach().float().clamp(0, 1).cpu().numpy() * 255.0 + 0.5).astype(np.uint8)
    for arr in arrays:
        _preview_counter += 1
        name = f"{prefix}_{os.getpid()}_{_preview_counter:06d}.png"
        tmp = os.path.join(folder, name + ".part")
        Image.fromarray(arr[..., :3]).save(tmp, format="PNG", compress_level=1)
        os.replace(tmp, os.path.join(folder, name))  # a half-written preview is never served
        refs.append({"filename": name, "subfolder": sub, "type": "temp"})
    return refs


def with_ui(result: tuple, ui: Optional[dict]):
    """A node's return value with frontend data (previews, compare pairs) attached when ComfyUI will show
    it; called directly (tests, scripts) a node keeps returning its plain output tuple."""
    if IN_COMFYUI and ui:
        return {"ui": ui, "result": result}
    return result


def _prompt_server():
    """ComfyUI's running server (PromptServer.instance), or None: outside ComfyUI, or ComfyUI used as a library
    (its `server` module was never imported; importing it here would start loading the web application)."""
    if not IN_COMFYUI:
        return None
    module = sys.modules.get("server")
    return getattr(getattr(module, "PromptServer", None), "instance", None)


def claim_route(path: str):
    """ComfyUI's route table for registering `path` (nodes/http_routes.py does, at once), or None when there is
    no server (tests, scripts) or `path` was claimed already (a pack reload)."""
    if not IN_COMFYUI or path in _claimed_routes:
        return None
    try:
        import aiohttp  # noqa: F401  (the server's own dependency)
    except ImportError as e:
        log.warning("TransEdit: %s is not served (the frontend loses that feature): %s", path, e)
        return None
    routes = getattr(_prompt_server(), "routes", None)
    if routes is None:
        log.warning("TransEdit: %s is not served: ComfyUI's server has no route table yet", path)
        return None
    _claimed_routes.add(path)
    return routes


_claimed_routes: set = set()


# ------------------------------------------------------------------------------------ live previews
def executing_ids(unique_id) -> tuple[str, str]:
    """(node id, prompt id) of the node running now: the hidden UNIQUE_ID input and the prompt's id (0.3.6x:
    the execution context; older servers: the id the prompt worker records). Outside ComfyUI: ("", "")."""
    node_id = "" if unique_id is None else str(unique_id)
    if not IN_COMFYUI:
        return node_id, ""
    ctx = _executing_context() if _executing_context is not None else None
    if ctx is not None:
        return str(ctx.node_id or node_id), str(ctx.prompt_id)
    server = _prompt_server()  # older servers: the prompt worker records the prompt's id on the server
    if server is None:  # ComfyUI used as a library, without its server
        log.warning("TransEdit: no ComfyUI server; node %s's live preview is off", node_id)
        return node_id, ""
    prompt_id = str(getattr(server, "last_prompt_id", "") or "")
    if not prompt_id:
        log.warning("TransEdit: ComfyUI did not say which prompt node %s runs in; its live preview is off", node_id)
    return node_id, prompt_id


def queue_is_busy() -> Optional[bool]:
    """True while ComfyUI runs or holds a prompt: a preview must not load or use models beside the prompt
    worker (ComfyUI's model management is not made for two threads). None when this server does not say;
    False where there is no server (no queue)."""
    server = _prompt_server()
    if server is None:
        return False
    remaining = getattr(getattr(server, "prompt_queue", None), "get_tasks_remaining", None)
    return None if remaining is None else remaining() > 0


def interrupt_requested() -> bool:
    """Whether the user pressed Cancel, read without consuming it (ComfyUI's own check clears the flag, which
    belongs to the prompt worker): for work that runs beside the queue, such as a live preview."""
    return bool(IN_COMFYUI and _mm.processing_interrupted())


def clear_interrupt() -> None:
    """Reset the Cancel flag, as ComfyUI does when a prompt starts: for a live preview starting with an idle queue,
    where a flag left set by an earlier press belongs to nobody (so each press during a preview stops it)."""
    if IN_COMFYUI:
        _mm.interrupt_current_processing(False)


def queue_pending_ids() -> Optional[set]:
    """Ids of the prompts waiting in ComfyUI's queue, not yet taken by the prompt worker. None when this server
    does not say; empty where there is no server."""
    server = _prompt_server()
    if server is None:
        return set()
    queue = getattr(server, "prompt_queue", None)
    current = getattr(queue, "get_current_queue_volatile", None) or getattr(queue, "get_current_queue", None)
    if current is None:
        return None
    _running, pending = current()
    return {str(item[1]) for item in pending}  # queue items are (number, prompt id, prompt, ...)


def claim_middlewares(name: str):
    """ComfyUI's web application's middleware list, for wrapping its own routes (nodes/http_routes.py does, at
    once: a submitted prompt waits there until a live preview has let go of the models). None when there is no
    server, `name` was claimed already, or the application serves already (its list is frozen then)."""
    if not IN_COMFYUI or name in _claimed_routes:
        return None
    middlewares = getattr(getattr(_prompt_server(), "app", None), "middlewares", None)
    if middlewares is None or getattr(middlewares, "frozen", True):
        log.warning("TransEdit: %s is not installed: ComfyUI's web application takes no more middleware", name)
        return None
    _claimed_routes.add(name)
    return middlewares


def interrupt_exception() -> type[BaseException]:
    """The exception check_interrupt raises (ComfyUI's InterruptProcessingException)."""
    return getattr(_mm, "InterruptProcessingException", _NeverRaised) if IN_COMFYUI else _NeverRaised


class _NeverRaised(Exception):
    """Stands for ComfyUI's interrupt exception outside ComfyUI, where nothing raises it."""
