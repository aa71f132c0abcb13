"""Run TransEdit inside a real, headless ComfyUI (used by tests/e2e and demo.py).

- Which servers exist and how they are installed lives in comfy_servers.py (`ensure_server(kind)`,
  `default_server_kinds()`): ComfyUI 0.33.0 with its pinned and with the newest frontend, 0.3.64, and the 2024
  server as a plain clone's fallback.
- `ComfyServer` starts `python main.py --cpu` on a free loopback port in a fresh throw-away copy of
  that folder (own models/, output/, input/, temp/, custom_nodes/ with the pack linked in), waits until
  it answers, and kills its process group on exit.
- `prepare_models` / `prepare_inputs` find the weight files and input pictures the workflows name, making
  tiny random official-format weights and writing a real face photo (scikit-image's astronaut) for what
  is missing; `stable_diffusion_stand_in` makes the random-weight SD 1.5 checkpoint the diffusion half of
  the `*_to_diffusion` workflows runs on (sd15_stand_in.py).
- `ComfyServer.queue_prompt / wait_for / run` drive the HTTP API; workflow_graph.py turns a workflow saved
  by the frontend (UI format) into the API format, as the frontend's "Queue Prompt" does, and checks its links.

Over 600 lines because one class, ComfyServer, is the whole lifecycle of a real server (copy, start, wait,
queue, watch progress, collect outputs, stop) and reads best in one place.

Only the standard library is used for HTTP; nothing listens on anything but 127.0.0.1.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping, Optional

REPO = Path(__file__).resolve().parents[1]
PACK_FOLDER_NAME = "ComfyUI-TransEdit"

from workflow_graph import MODE_NEVER, drop_nodes, ui_to_api
from comfy_servers import (COMFYUI_OVERRIDE_ENV, DEFAULT_CACHE, NEWEST_FRONTEND, SERVER_KINDS,  # noqa: F401
                           COPY_IGNORE, ComfyInstall, ComfyUIUnavailable, default_server_kinds,
                           describe_sources, ensure_server)

LOOPBACK = "127.0.0.1"

class ComfyError(RuntimeError):
    """A server, prompt or workflow failure; carries the server log tail in its message."""


class PromptRejected(ComfyError):
    """POST /prompt answered 400 (validation failed before anything ran)."""

    def __init__(self, status: int, body, log_tail: str = ""):
        self.status = status
        self.body = body
        self.node_errors = body.get("node_errors", {}) if isinstance(body, dict) else {}
        msg = f"ComfyUI rejected the prompt (HTTP {status}): {json.dumps(body, indent=1)[:4000]}"
        if log_tail:
            msg += f"\n--- server log tail ---\n{log_tail}"
        super().__init__(msg)


class PromptFailed(ComfyError):
    """The prompt was accepted but a node raised while executing."""

    def __init__(self, prompt_id: str, history: dict, log_tail: str = ""):
        self.prompt_id = prompt_id
        self.history = history
        self.messages = (history.get("status") or {}).get("messages", [])
        self.error = next((m[1] for m in self.messages if m[0] == "execution_error"), {})
        msg = (f"prompt {prompt_id} failed in node {self.error.get('node_id')} "
               f"({self.error.get('node_type')}): {self.error.get('exception_type')}: "
               f"{self.error.get('exception_message')}")
        tb = self.error.get("traceback")
        if tb:
            msg += "\n" + "".join(tb)[-4000:]
        if log_tail:
            msg += f"\n--- server log tail ---\n{log_tail}"
        super().__init__(msg)


# --------------------------------------------------------------------------------- tiny weights
# Which input of which node names a file, and in which ComfyUI model folder that file lives.
MODEL_INPUTS: dict[tuple[str, str], str] = {
    ("TransEditLoadStyleGAN", "ckpt_name"): "stylegan",
    ("TransEditLoadEncoder", "encoder_name"): "gan_encoders",
    ("TransEditLoadDirection", "direction"): "latent_directions",
    ("TransEditLoadDINO", "vit_name"): "vit",
    ("TransEditLoadPUT", "put_name"): "put",
    ("TransEditAlignFace", "detector"): "facedetection",
    ("TransEditLoadLPIPS", "backbone"): "lpips",
    ("TransEditLoadLPIPS", "heads"): "lpips",
    ("TransEditLoadFaceParser", "parser_name"): "face_parsing",
}
# Where a loader's file name sits among its widget values when it is not the first widget.
MODEL_WIDGET_INDEX: dict[tuple[str, str], int] = {
    ("TransEditLoadLPIPS", "backbone"): 1,  # after `net`
    ("TransEditLoadLPIPS", "heads"): 2,
}
# Values of those inputs that name no file (Load Direction's GANSpace presets and SeFa entry; Align Face's
# mediapipe, which bundles its models, and dlib predictors, which only the user can supply).
NO_FILE_PREFIXES: dict[tuple[str, str], tuple[str, ...]] = {
    ("TransEditLoadDirection", "direction"): ("preset: ", "sefa: "),
    ("TransEditAlignFace", "detector"): ("mediapipe", "dlib: "),
}
# Values that name a file after a prefix (Align Face's "retinaface: <file in models/facedetection>").
FILE_PREFIXES: dict[tuple[str, str], str] = {
    ("TransEditAlignFace", "detector"): "retinaface: ",
}
# Weights that only the user can supply (no tiny stand-in exists): the graph's diffusion part.
USER_MODEL_INPUTS: dict[tuple[str, str], str] = {
    ("CheckpointLoaderSimple", "ckpt_name"): "checkpoints",
}


def _save_tiny_stylegan(path: Path, seed: int = 0) -> Path:
    from transedit.random_weights import save_random_generator

    return save_random_generator(path, seed=seed, overwrite=True)


def _save_tiny_encoder(path: Path, seed: int = 0) -> Path:
    """A tiny encoder + 64px decoder in the official container; the family follows the file name
    (styleprompter* -> full StylePrompter with SMART, *e4e* / *psp*, else Style Transformer)."""
    from transedit.random_weights import save_random_encoder

    name = Path(path).name.lower()
    family = next((f for f in ("styleprompter", "e4e", "psp") if f in name), "style_transformer")
    return save_random_encoder(path, family=family, seed=seed, overwrite=True)


def _save_tiny_direction(path: Path, seed: Optional[int] = None) -> Path:
    """An InterFaceGAN-style direction as e4e ships them (a (1, style_dim) tensor in a .pt file), for the
    tiny generators' 64-wide W. Seeded by the file name, so age.pt and smile.pt differ."""
    import zlib

    import torch

    if path.suffix.lower() not in (".pt", ".pth"):
        raise ValueError(f"tiny directions are written as .pt tensors, not '{path.suffix}' ({path.name})")
    gen = torch.Generator().manual_seed(zlib.crc32(path.name.encode()) if seed is None else seed)
    torch.save(torch.randn(1, TINY_STYLE_DIM, generator=gen), path)
    return path


def _save_tiny_dino(path: Path, seed: int = 0) -> Path:
    """A 2-block, 64-wide DINO ViT (patch 8) in DINO's key layout; .pth names get a plain torch state dict
    (like the official release), others safetensors (like timm's)."""
    import torch

    from transedit.random_weights import save_random_dino

    if Path(path).suffix.lower() in (".pth", ".pt", ".bin"):
        with tempfile.TemporaryDirectory() as tmp:
            st = save_random_dino(Path(tmp) / "dino.safetensors", seed=seed)
            from safetensors.torch import load_file

            torch.save(load_file(str(st)), path)
        return Path(path)
    return save_random_dino(path, seed=seed, overwrite=True)


def _save_tiny_put(path: Path, seed: int = 0) -> Path:
    """A tiny PUT transformer + P-VQVAE (64 px, 8x8 tokens) in the official training-checkpoint container;
    TPAMI 2024 when the file name says "tpami", CVPR 2022 otherwise."""
    from transedit.random_weights import save_random_put

    version = "tpami2024" if "tpami" in Path(path).name.lower() else "cvpr2022"
    return save_random_put(path, version=version, seed=seed, overwrite=True)


def _save_tiny_retinaface(path: Path, seed: int = 0) -> Path:
    """RetinaFace in the released layout (a bare state dict). Whatever the file name says, the small MobileNet
    trunk is written (the loader reads the trunk from the keys): its heads see a face in every anchor box, so
    the face workflows run end to end on any photo, and it costs CPU tests little."""
    from transedit.random_weights import save_random_retinaface

    return save_random_retinaface(path, backbone="mobilenet0.25", seed=seed, overwrite=True)


def save_tiny_lpips(path: Path, seed: int = 0) -> Path:
    """An LPIPS file in its released layout with random values, by file name: alex.pth / vgg.pth are v0.1 heads
    (lin{i}.model.1.weight, non-negative as trained), other names torchvision's trunk (alexnet-owt-*.pth, vgg16-*.pth;
    features.* only, which is all LPIPS reads). 'vgg' in the name picks VGG16, else AlexNet."""
    import math

    import torch

    from transedit.models.perceptual.lpips import NETS

    path = Path(path)
    net = "vgg" if "vgg" in path.name.lower() else "alex"
    gen = torch.Generator().manual_seed(seed)
    if path.stem.lower() in ("alex", "vgg"):
        sd = {f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1, generator=gen) for i, c in enumerate(NETS[net].channels)}
    else:  # He-scaled weights, so features keep their size through the trunk
        sd = {k: torch.randn(*shape, generator=gen) * ((2.0 / math.prod(shape[1:])) ** 0.5 if len(shape) > 1 else 0.01)
              for k, shape in NETS[net].conv_shapes().items()}
    torch.save(sd, path)
    return path


def save_tiny_face_parser(path: Path, seed: int = 0) -> Path:
    """BiSeNet (face-parsing.PyTorch's layout, as 79999_iter.pth) with random weights: the real architecture (the
    loader reads it unchanged), about 50 MB."""
    import torch

    from transedit.models.face.parsing import BiSeNet

    torch.manual_seed(seed)
    torch.save(BiSeNet().state_dict(), path)
    return Path(path)


# Workflow settings that are shortened when a run uses tiny random weights (e2e tests, the demo without
# real weights): Splice's presets train for minutes to hours, which says nothing more about tiny models.
TINY_RUN_OVERRIDES: dict[str, dict] = {
    "TransEditSplice": {"steps": 4, "output_size": 96, "preview_every": 2},
    # PTI's 350 steps / STIT's 50 passes over the clip and 100 stitching steps per frame: a few show the same
    "TransEditPivotalTune": {"steps": 2},
    "TransEditStitchingTune": {"steps": 1},
}


# With the random-weight SD 1.5 stand-in (no user checkpoint), the diffusion part only has to run, not draw:
# two sampling steps say as much as twenty about pipes and shapes.
STAND_IN_DIFFUSION_OVERRIDES: dict[str, dict] = {
    "KSampler": {"steps": 2},
}


def shorten_for_tiny_weights(prompt: dict, overrides: Mapping[str, dict] = TINY_RUN_OVERRIDES) -> list[str]:
    """Apply `overrides` ({node type: {input: value}}, default TINY_RUN_OVERRIDES) to an API prompt in place;
    returns the ids of the nodes changed."""
    changed = []
    for node_id, node in prompt.items():
        values = overrides.get(node["class_type"])
        if values:
            node["inputs"].update(values)
            changed.append(node_id)
    return changed


# ------------------------------------------------------------------------- Stable Diffusion stand-in
SD_STAND_IN_NOTE = ("a random-weight SD 1.5 checkpoint built from ComfyUI's own classes (tests/sd15_stand_in.py): "
                    "ComfyUI loads it like any SD 1.5 model, and what it draws is noise")


def stable_diffusion_stand_in(install: "ComfyInstall", cache_dir: Optional[os.PathLike] = None,
                              log: Callable[[str], None] = lambda s: None) -> Path:
    """The random-weight SD 1.5 checkpoint (built once with this server's ComfyUI, then cached; never committed)."""
    import fcntl

    import sd15_stand_in

    cache = Path(cache_dir or DEFAULT_CACHE).resolve()
    path = cache / f"sd15-random-stand-in-v{sd15_stand_in.BUILD_VERSION}.safetensors"
    if path.is_file():
        return path
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".lock-sd15", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not path.is_file():
            log(f"building {path.name}: {SD_STAND_IN_NOTE} (about 470 MB, under a minute)")
            env = install.process_env() if isinstance(install, ComfyInstall) else None
            sd15_stand_in.build(Path(install), path, env=env)
    return path


# folder -> writer(path) of a small random-weight file in an official container format
TINY_WEIGHT_MAKERS: dict[str, Callable[[Path], Path]] = {
    "stylegan": _save_tiny_stylegan,
    "gan_encoders": _save_tiny_encoder,
    "latent_directions": _save_tiny_direction,
    "vit": _save_tiny_dino,
    "put": _save_tiny_put,
    "facedetection": _save_tiny_retinaface,
    "lpips": save_tiny_lpips,
    "face_parsing": save_tiny_face_parser,
}
# Folders whose tiny files are each made afresh (cheap, and must differ per name); for the others one
# random model is copied under every name of the same format.
TINY_PER_NAME = {"latent_directions", "gan_encoders", "put", "lpips"}  # encoders / PUT / LPIPS: the file name decides
TINY_STYLEGAN_SIZE = 64  # what save_random_generator's / save_random_encoder's default configs generate
TINY_STYLE_DIM = 64  # their W width (W+ is 10 x 64)


def make_tiny_weights(folder: str, filename: str, dest_dir: os.PathLike) -> Path:
    """Write random tiny weights for model folder `folder` as dest_dir/filename."""
    maker = TINY_WEIGHT_MAKERS.get(folder)
    if maker is None:
        raise ValueError(f"no tiny-weight maker for model folder '{folder}'")
    path = Path(dest_dir) / filename
    path.parent.mkdir(parents=True, exist_ok=True)
    return Path(maker(path))


def workflow_model_files(ui_workflow: dict, model_inputs: Optional[Mapping[tuple[str, str], str]] = None,
                         ) -> list[tuple[str, str]]:
    """(model folder, file name) for every weights file a UI-format workflow asks for (default: the pack's
    loaders, MODEL_INPUTS; pass USER_MODEL_INPUTS for the diffusion checkpoints)."""
    found = []
    for node in ui_workflow.get("nodes", []):
        if node.get("mode", 0) == MODE_NEVER:
            continue
        for (node_type, input_name), folder in (MODEL_INPUTS if model_inputs is None else model_inputs).items():
            if node.get("type") != node_type:
                continue
            values = node.get("widgets_values")
            if isinstance(values, dict):
                name = values.get(input_name)
            else:  # these loaders have the file name as their first widget, unless MODEL_WIDGET_INDEX says
                index = MODEL_WIDGET_INDEX.get((node_type, input_name), 0)
                name = values[index] if values and len(values) > index else None
            if not isinstance(name, str) or not name:
                continue
            if name.startswith(NO_FILE_PREFIXES.get((node_type, input_name), ())):
                continue
            name = name.removeprefix(FILE_PREFIXES.get((node_type, input_name), ""))
            if (folder, name) not in found:
                found.append((folder, name))
    return found


# ------------------------------------------------------------------------------------ input images
# Which input of which node names a picture or a clip in ComfyUI's input/ folder.
IMAGE_INPUTS: tuple[tuple[str, str], ...] = (("LoadImage", "image"), ("LoadVideo", "file"))
VIDEO_SUFFIXES = (".mp4", ".webm", ".mov", ".mkv")
EXAMPLE_FACE_SOURCE = "skimage.data.astronaut()"  # what stands in for a missing input picture
EXAMPLE_CLIP_SOURCE = ("a 12-frame clip of skimage.data.astronaut() gliding, turning and growing along a known path "
                       "(tests/example_clip.py)")  # ... and for a missing input clip


def _annotated_name(name: str) -> str:
    """'photo.png [input]' -> 'photo.png' (the frontend may store ComfyUI's annotated file names)."""
    for tag in (" [input]", " [output]", " [temp]"):
        if name.endswith(tag):
            return name[: -len(tag)]
    return name


def workflow_input_files(ui_workflow: dict) -> list[str]:
    """File names (relative to ComfyUI's input/) of every picture and clip a UI-format workflow loads."""
    found = []
    for node in ui_workflow.get("nodes", []):
        if node.get("mode", 0) == MODE_NEVER:
            continue
        for node_type, input_name in IMAGE_INPUTS:
            if node.get("type") != node_type:
                continue
            values = node.get("widgets_values")
            if isinstance(values, dict):
                name = values.get(input_name)
            else:  # LoadImage, LoadVideo: [file name, "image" (the upload button)]
                name = values[0] if values else None
            if isinstance(name, str) and name:
                name = _annotated_name(name)
                if name not in found:
                    found.append(name)
    return found


def write_example_face(path: os.PathLike) -> Path:
    """A real 512x512 photo with one face (scikit-image's astronaut, public domain, NASA) as PNG."""
    return write_example_picture(path, "astronaut")


# Stand-in pictures by file name: Splice's examples get a structure and a different appearance photo.
EXAMPLE_PICTURES = {"appearance": "coffee", "structure": "chelsea"}


# The group photo's heads, cut from the astronaut photo: (left x, top y, side, tint) on a 768x512 canvas, drawn
# in this order (each in front of the ones before; neighbours overlap). mediapipe finds all three faces.
GROUP_HEADS = ((500, 140, 250, (1.1, 0.95, 0.85)), (280, 60, 280, (0.85, 0.95, 1.1)), (10, 100, 300, (1.0, 1.0, 1.0)))
GROUP_SIZE = (512, 768)  # height, width


def make_group_photo():
    """A picture with three faces from the astronaut photo (a group photo stand-in): uint8 [512, 768, 3]."""
    import numpy as np
    from PIL import Image
    from skimage import data

    head = Image.fromarray(data.astronaut()).crop((90, 0, 360, 270))
    side = head.size[0]
    yy, xx = np.mgrid[:side, :side]
    alpha = Image.fromarray((np.clip(1.0 - np.hypot(xx - side / 2, yy - side / 2) / (side / 2), 0, 0.12) / 0.12
                             * 255).astype(np.uint8))
    h, w = GROUP_SIZE
    ys = np.linspace(0.0, 1.0, h)[:, None, None]
    canvas = Image.fromarray((np.array([110, 128, 120]) * (0.8 + 0.4 * ys) * np.ones((h, w, 3))).astype(np.uint8))
    for x, y, size, tint in GROUP_HEADS:  # in order: the last one is in front
        tinted = Image.fromarray((np.asarray(head, dtype=np.float64) * np.array(tint)).clip(0, 255).astype(np.uint8))
        canvas.paste(tinted.resize((size, size), Image.Resampling.LANCZOS), (x, y),
                     alpha.resize((size, size), Image.Resampling.BILINEAR))
    return np.asarray(canvas)


# Holes of the inpainting example (transparent pixels = Load Image's MASK): a rectangle and a disk.
INPAINT_HOLES = {"rect": (300, 360, 60, 200), "disk": (130, 400, 28)}  # (y0, y1, x0, x1), (cy, cx, r)


def write_example_picture(path: os.PathLike, picture: Optional[str] = None) -> Path:
    """A real photo from scikit-image as PNG: `picture` names it (astronaut, chelsea, coffee); by default
    chosen from the file name (EXAMPLE_PICTURES), the astronaut's face otherwise. Names containing "group"
    get a group photo of three faces (make_group_photo); names containing
    "inpaint" get the astronaut with two transparent holes (INPAINT_HOLES), which ComfyUI's Load Image
    turns into its MASK."""
    import numpy as np
    from PIL import Image
    from skimage import data

    path = Path(path)
    if picture is None:
        picture = next((p for key, p in EXAMPLE_PICTURES.items() if key in path.name.lower()), "astronaut")
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = np.asarray(Image.fromarray(getattr(data, picture)()).convert("RGB"))
    if "group" in path.name.lower():  # Align Face's faces: all example: several faces
        rgb = make_group_photo()
    if "inpaint" in path.name.lower():
        alpha = np.full(rgb.shape[:2], 255, np.uint8)
        y0, y1, x0, x1 = INPAINT_HOLES["rect"]
        alpha[y0:y1, x0:x1] = 0
        cy, cx, r = INPAINT_HOLES["disk"]
        yy, xx = np.mgrid[:rgb.shape[0], :rgb.shape[1]]
        alpha[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = 0
        Image.fromarray(np.dstack([rgb, alpha])).save(path, format="PNG")
    else:
        Image.fromarray(rgb).save(path, format="PNG")
    return path


def prepare_inputs(ui_workflows: Iterable[dict], search_dirs: Iterable[os.PathLike], stand_in_dir: os.PathLike,
                   ) -> tuple[dict[str, Path], list[str]]:
    """Find each workflow's input pictures and clips; write the example face photo (example_clip.py's moving
    astronaut for a clip) for what is missing.

    search_dirs are folders laid out like ComfyUI's input/ (<dir>/<name>). Returns
    ({name: path}, [names that got a stand-in]).
    """
    inputs: dict[str, Path] = {}
    stand_ins: list[str] = []
    search_dirs = list(search_dirs)
    for wf in ui_workflows:
        for name in workflow_input_files(wf):
            if name in inputs:
                continue
            hit = next((Path(d) / name for d in search_dirs if (Path(d) / name).is_file()), None)
            if hit is None:
                if name.lower().endswith(VIDEO_SUFFIXES):
                    from example_clip import write_example_clip

                    hit = write_example_clip(Path(stand_in_dir) / name)
                else:
                    hit = write_example_picture(Path(stand_in_dir) / name)
                stand_ins.append(name)
            inputs[name] = hit
    return inputs, stand_ins


# ------------------------------------------------------------------------------- UI -> API format
# ---------------------------------------------------------------------------------------- server
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


@dataclass
class OutputImage:
    node_id: str
    filename: str
    subfolder: str
    type: str  # "output" | "temp"
    path: Optional[Path]  # on this machine, when the server's folders are local

    def open(self):
        from PIL import Image

        with Image.open(self.path) as im:
            im.load()
            return im.copy()


# Waiting on a busy machine: a server counts as making progress while its process burns CPU time, its log
# grows or its queue moves; a wait fails only after STALL_SECONDS without any of these (a hang), or after the
# generous OUTER_SECONDS in all (a busy loop that never ends). Never because the machine is slow.
STALL_SECONDS = float(os.environ.get("TRANSEDIT_E2E_STALL_SECONDS", "240"))
OUTER_SECONDS = float(os.environ.get("TRANSEDIT_E2E_OUTER_SECONDS", "3600"))
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its reaped children (all threads), from /proc; 0 elsewhere."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return sum(int(v) for v in fields[11:15]) / _CLOCK_TICKS
    except (OSError, IndexError, ValueError):
        return 0.0


class ProgressWatch:
    """Tells a stall (nothing moved for `stall` s) from slowness; `outer` caps the whole wait."""

    def __init__(self, marker: Callable[[], tuple], stall: float = STALL_SECONDS, outer: float = OUTER_SECONDS):
        self.marker, self.stall, self.outer = marker, stall, outer
        self.t0 = self.last_move = time.monotonic()
        self.last = marker()

    def check(self) -> Optional[str]:
        """None while the wait may go on, else why it must stop."""
        now, mark = time.monotonic(), self.marker()
        if mark != self.last:
            self.last, self.last_move = mark, now
        if now - self.last_move > self.stall:
            return f"no progress for {self.stall:.0f} s (no CPU time used, no log output, no queue change)"
        if now - self.t0 > self.outer:
            return f"still running after {self.outer:.0f} s"
        return None


class ComfyServer:
    """A headless ComfyUI on a free loopback port, in its own throw-away folder.

    models: {folder: {file name: source path}} — linked (or copied) into models/<folder>/.
    inputs: {file name: source path} — copied into input/ (what LoadImage lists).
    custom_nodes: {folder name: path} — linked into custom_nodes/ (default: this repo as
    ComfyUI-TransEdit).
    """

    def __init__(self, comfy_root: Optional[os.PathLike] = None, *,
                 models: Optional[Mapping[str, Mapping[str, os.PathLike]]] = None,
                 inputs: Optional[Mapping[str, os.PathLike]] = None,
                 custom_nodes: Optional[Mapping[str, os.PathLike]] = None,
                 base_dir: Optional[os.PathLike] = None, extra_args: Iterable[str] = (),
                 startup_timeout: Optional[float] = None, python: str = sys.executable, keep: bool = False,
                 env: Optional[Mapping[str, str]] = None):
        if comfy_root is None:
            comfy_root = ensure_server(default_server_kinds().kinds[0])
        install = comfy_root if isinstance(comfy_root, ComfyInstall) else None
        self.comfy_root = Path(comfy_root)
        self.kind = install.kind if install else "custom"
        self.install = install
        self.models = {k: dict(v) for k, v in (models or {}).items()}
        self.inputs = dict(inputs or {})
        self.custom_nodes = dict(custom_nodes if custom_nodes is not None else {PACK_FOLDER_NAME: REPO})
        self._base_arg = base_dir
        self.extra_args = list(install.extra_args if install else ()) + list(extra_args)
        self.startup_timeout = startup_timeout
        self.python = python
        self.keep = keep
        self.env = dict(env or {})
        self.proc: Optional[subprocess.Popen] = None
        self.port: Optional[int] = None
        self.startup_seconds: Optional[float] = None
        self._object_info = None
        self._own_base = False
        self._log_handle = None

    # ------------------------------------------------------------------ layout and process
    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def _layout(self) -> None:
        if self._base_arg is None:
            self.base = Path(tempfile.mkdtemp(prefix="transedit-comfy-"))
            self._own_base = True
        else:
            self.base = Path(self._base_arg)
            self.base.mkdir(parents=True, exist_ok=True)
        self.root = self.base / "ComfyUI"
        if self.root.exists():
            shutil.rmtree(self.root)
        # A fresh copy (5 MB) per server: folder_paths.py derives every default folder from its own
        # location, so nothing of one run leaks into the next or into the cache.
        shutil.copytree(self.comfy_root, self.root, ignore=COPY_IGNORE, symlinks=True)
        (self.root / "extra_model_paths.yaml").unlink(missing_ok=True)
        self.output_dir = self.base / "output"
        self.input_dir = self.base / "input"
        self.temp_dir = self.base / "temp"
        for d in (self.output_dir, self.input_dir, self.temp_dir):
            d.mkdir(exist_ok=True)
        for name, path in self.custom_nodes.items():
            os.symlink(Path(path).resolve(), self.root / "custom_nodes" / name, target_is_directory=True)
        for folder, files in self.models.items():
            self.add_model(folder, files)
        for name, src in self.inputs.items():
            self.add_input(name, src)
        self.log_path = self.base / "comfyui.log"

    def add_model(self, folder: str, files: Mapping[str, os.PathLike]) -> None:
        """Put files into models/<folder>/ (visible to the server after its folder cache refreshes)."""
        dest_dir = self.root / "models" / folder
        dest_dir.mkdir(parents=True, exist_ok=True)
        for name, src in files.items():
            dest = dest_dir / name
            dest.parent.mkdir(parents=True, exist_ok=True)
            if dest.exists() or dest.is_symlink():
                dest.unlink()
            try:
                os.symlink(Path(src).resolve(), dest)
            except OSError:
                shutil.copy2(src, dest)

    def add_input(self, name: str, src: os.PathLike) -> Path:
        """Copy a file into input/ as `name`. LoadImage lists input/ on every /prompt, so this works
        while the server runs too (a copy, not a link: ComfyUI treats input/ as its own)."""
        dest = self.input_dir / name
        if not dest.resolve().is_relative_to(self.input_dir.resolve()):
            raise ValueError(f"input name {name!r} leaves the input folder")
        dest.parent.mkdir(parents=True, exist_ok=True)
        if dest.exists() or dest.is_symlink():
            dest.unlink()
        shutil.copyfile(src, dest)
        return dest

    def start(self) -> "ComfyServer":
        self._layout()
        self.port = free_port()
        cmd = [self.python, "-u", "main.py", "--cpu", "--listen", LOOPBACK, "--port", str(self.port),
               "--disable-auto-launch", "--output-directory", str(self.output_dir),
               "--input-directory", str(self.input_dir), "--temp-directory", str(self.temp_dir),
               *self.extra_args]
        env = self.install.process_env() if self.install is not None else dict(os.environ)
        env.update({"PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "DO_NOT_TRACK": "1",
                    "TRANSFORMERS_OFFLINE": "1", "TQDM_DISABLE": "1"})
        env.pop(COMFYUI_OVERRIDE_ENV, None)
        env.update(self.env)
        self._log_handle = open(self.log_path, "wb")
        t0 = time.monotonic()
        self.proc = subprocess.Popen(cmd, cwd=self.root, env=env, stdout=self._log_handle,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True)  # own process group, killed as one
        try:
            self._wait_ready(t0)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - t0
        return self

    def progress_marker(self) -> tuple:
        """What changes while the server works: its CPU time (0.1 s steps), its log's size."""
        cpu = round(process_cpu_seconds(self.proc.pid), 1) if self.proc is not None else 0.0
        try:
            size = self.log_path.stat().st_size
        except OSError:
            size = 0
        return cpu, size

    def _wait_ready(self, t0: float) -> None:
        watch = ProgressWatch(self.progress_marker, **({"outer": self.startup_timeout} if self.startup_timeout else {}))
        while True:
            if self.proc.poll() is not None:
                raise ComfyError(f"ComfyUI exited with code {self.proc.returncode} during start-up\n"
                                 f"--- server log ---\n{self.log_tail()}")
            try:
                self._request("GET", "/system_stats", timeout=2)
                break
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            stuck = watch.check()
            if stuck:
                raise ComfyError(f"ComfyUI did not answer on {self.url}: {stuck}\n"
                                 f"--- server log ---\n{self.log_tail()}")
            time.sleep(0.2)
        failed = self.import_failures()
        if failed:
            raise ComfyError(f"custom node pack(s) failed to import: {failed}\n"
                             f"--- server log ---\n{self.log_tail(200)}")

    def import_failures(self) -> list[str]:
        """Folder names in custom_nodes that ComfyUI reported as failing to import."""
        failed = []
        for name in self.custom_nodes:
            path = f"{os.sep}custom_nodes{os.sep}{name}"
            for line in self.log_text().splitlines():
                if (("(IMPORT FAILED)" in line and line.rstrip().endswith(path))
                        or (line.startswith(("Cannot import", "Skip")) and f"{path} module" in line)):
                    failed.append(name)
                    break
        return failed

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        if self._log_handle is not None:
            self._log_handle.close()
            self._log_handle = None
        if self._own_base and not self.keep and getattr(self, "base", None) is not None:
            shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self) -> "ComfyServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def log_text(self) -> str:
        try:
            return Path(self.log_path).read_text(errors="replace")
        except (OSError, AttributeError):
            return ""

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    # ------------------------------------------------------------------------------ HTTP
    def _request(self, method: str, path: str, body=None, timeout: float = 300.0):  # a hang limit, not a speed test
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"} if data else {})
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
            ctype = resp.headers.get("Content-Type", "")
        return json.loads(raw) if "json" in ctype else raw

    def get_json(self, path: str, timeout: float = 300.0):
        return self._request("GET", path, timeout=timeout)

    def object_info(self, refresh: bool = False) -> dict:
        if self._object_info is None or refresh:
            self._object_info = self.get_json("/object_info")
        return self._object_info

    def submit(self, api_prompt: dict, client_id: str = "transedit-harness") -> dict:
        """POST /prompt; returns the server's answer: {"prompt_id", "number", "node_errors"}. This ComfyUI
        queues a prompt when at least one output node validates; node_errors then names the nodes
        whose outputs were left out. Raises PromptRejected (with node_errors) on HTTP 400 (no output
        validates)."""
        try:
            return self._request("POST", "/prompt", {"prompt": api_prompt, "client_id": client_id})
        except urllib.error.HTTPError as e:
            raw = e.read()
            try:
                body = json.loads(raw)
            except ValueError:
                body = {"error": raw.decode(errors="replace")}
            raise PromptRejected(e.code, body, self.log_tail(30)) from None

    def queue_prompt(self, api_prompt: dict, client_id: str = "transedit-harness") -> str:
        """POST /prompt; returns the prompt id. Raises PromptRejected (with node_errors) on HTTP 400."""
        return self.submit(api_prompt, client_id)["prompt_id"]

    def history(self, prompt_id: str) -> Optional[dict]:
        return self.get_json(f"/history/{urllib.parse.quote(prompt_id)}").get(prompt_id)

    def queue_state(self) -> tuple:
        """(running prompt ids, number pending) from GET /queue."""
        q = self.get_json("/queue")
        return tuple(sorted(str(item[1]) for item in q.get("queue_running", []))), len(q.get("queue_pending", []))

    def wait_for(self, prompt_id: str, timeout: Optional[float] = None, poll: float = 0.2) -> dict:
        """Poll /history until the prompt finished; raise PromptFailed if a node raised. Waits as long as the
        server makes progress (ProgressWatch); `timeout`, if given, only lowers the outer limit."""
        watch = ProgressWatch(lambda: self.progress_marker() + self.queue_state(),
                              **({"outer": timeout} if timeout else {}))
        while True:
            if self.proc is not None and self.proc.poll() is not None:
                raise ComfyError(f"ComfyUI died (exit {self.proc.returncode}) while running {prompt_id}\n"
                                 f"--- server log ---\n{self.log_tail()}")
            entry = self.history(prompt_id)
            if entry is not None:
                status = entry.get("status") or {}
                if status.get("status_str") == "error" or status.get("completed") is False:
                    raise PromptFailed(prompt_id, entry, self.log_tail())
                return entry
            stuck = watch.check()
            if stuck:
                with contextlib.suppress(Exception):
                    self._request("POST", "/interrupt", {})
                raise ComfyError(f"prompt {prompt_id} did not finish: {stuck}\n"
                                 f"--- server log ---\n{self.log_tail()}")
            time.sleep(poll)

    def interrupt(self) -> None:
        """POST /interrupt: what the frontend's Cancel button does."""
        self._request("POST", "/interrupt", {})

    def run(self, api_prompt: dict, timeout: Optional[float] = None) -> dict:
        return self.wait_for(self.queue_prompt(api_prompt), timeout)

    def run_workflow(self, ui_workflow: dict, timeout: Optional[float] = None) -> tuple[dict, dict]:
        """Convert and run a UI-format workflow; returns (api prompt, history entry)."""
        prompt = ui_to_api(ui_workflow, self.object_info())
        return prompt, self.run(prompt, timeout)

    def output_images(self, history: dict) -> list[OutputImage]:
        """Every image the prompt's output nodes reported, in node then batch order."""
        found = []
        for node_id, out in sorted((history.get("outputs") or {}).items(), key=lambda kv: int(kv[0])
                                   if str(kv[0]).isdigit() else kv[0]):
            for img in out.get("images", []) or []:
                kind = img.get("type", "output")
                root = {"output": self.output_dir, "temp": self.temp_dir / "temp",
                        "input": self.input_dir}.get(kind)
                path = root / img.get("subfolder", "") / img["filename"] if root is not None else None
                if path is not None and not path.is_file():
                    path = self._fetch_view(img)
                found.append(OutputImage(node_id, img["filename"], img.get("subfolder", ""), kind, path))
        return found

    def _fetch_view(self, img: dict) -> Path:
        query = urllib.parse.urlencode({"filename": img["filename"], "subfolder": img.get("subfolder", ""),
                                        "type": img.get("type", "output")})
        data = self._request("GET", f"/view?{query}")
        dest = self.base / "fetched" / img.get("subfolder", "") / img["filename"]
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(data)
        return dest


def _find_model(folder: str, name: str, search_dirs: Iterable[os.PathLike]) -> Optional[Path]:
    for root in search_dirs:
        for cand in (Path(root) / folder / name, Path(root) / name):
            if cand.is_file():
                return cand
    return None


def prepare_models(ui_workflows: Iterable[dict], search_dirs: Iterable[os.PathLike], tiny_dir: os.PathLike,
                   ) -> tuple[dict[str, dict[str, Path]], list[tuple[str, str]]]:
    """Find each workflow's weight files; make tiny random ones for what is missing.

    search_dirs are model roots laid out like ComfyUI's models/ (<root>/<folder>/<file>); a file
    directly in a root is accepted too. Returns ({folder: {name: path}}, [(folder, name) made tiny]).
    Only the pack's own files (MODEL_INPUTS) are handled; see find_user_models for the diffusion part.
    """
    models: dict[str, dict[str, Path]] = {}
    tiny: list[tuple[str, str]] = []
    cache: dict[str, Path] = {}
    search_dirs = list(search_dirs)
    for wf in ui_workflows:
        for folder, name in workflow_model_files(wf):
            if name in models.get(folder, {}):
                continue
            hit = _find_model(folder, name, search_dirs)
            if hit is None:
                if folder in TINY_PER_NAME or folder not in cache or Path(name).suffix != cache[folder].suffix:
                    hit = make_tiny_weights(folder, name, Path(tiny_dir) / folder)
                    cache[folder] = hit
                else:  # same random weights under another name of the same format
                    hit = Path(tiny_dir) / folder / name
                    hit.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(cache[folder], hit)
                tiny.append((folder, name))
            models.setdefault(folder, {})[name] = hit
    return models, tiny


def find_user_models(ui_workflows: Iterable[dict], search_dirs: Iterable[os.PathLike],
                     ) -> tuple[dict[str, dict[str, Path]], list[tuple[str, str]]]:
    """The weights only the user can supply (USER_MODEL_INPUTS, e.g. a Stable Diffusion checkpoint):
    ({folder: {name: path}} found in search_dirs, [(folder, name) missing]). Nothing is made up."""
    found: dict[str, dict[str, Path]] = {}
    missing: list[tuple[str, str]] = []
    search_dirs = list(search_dirs)
    for wf in ui_workflows:
        for folder, name in workflow_model_files(wf, USER_MODEL_INPUTS):
            if name in found.get(folder, {}) or (folder, name) in missing:
                continue
            hit = _find_model(folder, name, search_dirs)
            if hit is None:
                missing.append((folder, name))
            else:
                found.setdefault(folder, {})[name] = hit
    return found, missing


# ------------------------------------------------------------------- running part of a graph
def unavailable_user_models(api_prompt: dict, object_info: Mapping[str, dict]) -> dict[str, str]:
    """{node id: file name} of the prompt's USER_MODEL_INPUTS loaders whose file this server does not
    list (e.g. Load Checkpoint with no Stable Diffusion checkpoint in models/checkpoints)."""
    missing = {}
    for node_id, node in api_prompt.items():
        for (node_type, input_name), _folder in USER_MODEL_INPUTS.items():
            if node["class_type"] != node_type:
                continue
            value = node["inputs"].get(input_name)
            spec = ((object_info.get(node_type) or {}).get("input", {}).get("required") or {}).get(input_name)
            listed = spec[0] if spec and isinstance(spec[0], list) else []
            if isinstance(value, str) and value not in listed:
                missing[node_id] = value
    return missing


def without_unavailable_user_models(api_prompt: dict, object_info: Mapping[str, dict]) -> tuple[dict, list[str]]:
    """The part of the prompt that runs without the user-only weights this server lacks: their loaders
    and everything downstream of them are dropped (for edit_to_diffusion.json: the whole Stable Diffusion
    part, leaving the TransEdit edit and its Save Image). Returns (prompt, dropped ids)."""
    return drop_nodes(api_prompt, unavailable_user_models(api_prompt, object_info))
