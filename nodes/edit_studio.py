"""Edit Studio: latent editing with live previews.

The node applies up to four directions to a W+ latent and renders the result like Generate. After a run it
remembers what it rendered (the latent, a weak handle on the generator, the directions) under its node id and
the prompt id, and the frontend's sliders ask `POST /transedit/studio/preview` (registered through the bridge)
for a low-resolution render of new slider values: the generator stops at the preview resolution (its own
skip-branch RGB there), so no queue entry is made and a 256 px preview of a 1024 px generator costs about a
third of a full image. Both paths use
`studio_wplus` and `render_latents`, so the queued image is the full-resolution render of exactly the edit the
preview showed.

Nothing in a request reaches a loader: it names a node id and a prompt id that must match a remembered run,
and carries bounded numbers. Only the latest request of a node renders; older ones are answered "superseded".
"""
from __future__ import annotations

import base64
import io
import math
import re
import threading
import time
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from PIL import Image

from ..models.core.directions import LatentDirection
from ..models.core.latent import StyleLatent
from ..models.stylegan.generator import PRECISION_BY_FILE
from . import comfy_bridge as bridge
from .compare import MAX_PAIRS, UI_KEY as COMPARE_KEY, compare_ui
from .inputs import NodeInputError, check_choice, check_float, check_int
from .latents import MAX_LAYER, check_latent, fit_direction, with_edit
from .precision import PRECISIONS, auto_tooltip_by_file
from .preview_service import PreviewGate, PreviewStopped
from .rendering import StyleGANHandle, check_generator, render_latents

CATEGORY = "TransEdit/Edit"
NODE = "TransEdit Edit Studio"
UI_KEY = "transedit_studio"  # the key the js extension looks for in the node's "executed" message
ROUTE = "/transedit/studio/preview"
MAX_DIRECTIONS = 4
STUDIO_STRENGTH = 20.0  # slider range: multiples of a direction's default strength
PREVIEW_SIZES = ("256", "128", "512", "1024")
MAX_NAME_CHARS = 48  # a direction's name as a slider label: longer ones are cut (the node stays narrow)
MAX_ITEM = 4095  # the highest batch item a preview may ask for
MAX_REMEMBERED = 8  # runs kept for previews (LRU); each holds latents and a weak generator handle, no weights
_ID = re.compile(r"^[A-Za-z0-9:_.\-]{1,64}$")
REQUEST_KEYS = {"node_id", "prompt_id", "strengths", "start_layer", "end_layer", "item", "seq"}


class StudioRequestError(ValueError):
    def __init__(self, status: int, message: str, field: str = "", reason: str = ""):
        super().__init__(message)
        self.status, self.field, self.reason = status, field, reason

    def answer(self) -> tuple[int, dict]:
        body = {"error": str(self)}
        if self.field:
            body["field"] = self.field
        if self.reason:
            body["reason"] = self.reason
        return self.status, body


# ---------------------------------------------------------------------------------------- the edit
def studio_wplus(wplus: torch.Tensor, directions, strengths, ranges) -> torch.Tensor:
    """The studio's edit: each connected direction moved by its strength (x its default strength) on its
    [start, end) rows, one after another, as a chain of Apply Direction nodes would. A strength of 0 leaves
    the latent as it is (a GANSpace direction at 0 is skipped, not set to the average)."""
    out = wplus.float()
    for direction, strength, layers in zip(directions, strengths, ranges):
        if direction is None or strength == 0.0:
            continue
        out = direction.apply(out, strength * direction.default_strength, *layers)
    return out


def _layer_ranges(node: str, directions, latent: StyleLatent, start_layer: int, end_layer: int):
    """Each connected direction's [start, end) rows; a direction that does not fit is named by its slot."""
    ranges = []
    for i, d in enumerate(directions, start=1):
        try:
            ranges.append(None if d is None else fit_direction(node, d, latent, start_layer, end_layer))
        except NodeInputError as e:
            if e.input_name != "direction":
                raise
            raise NodeInputError(node, f"direction_{i}", str(e).split("'direction' ", 1)[-1]) from None
    return ranges


def _preview_resolution(preview_size: str, full_size: int) -> int:
    return min(int(preview_size), full_size)


def image_png_data_url(image: torch.Tensor) -> str:
    """One IMAGE [H, W, 3] in 0..1 as a PNG data URL (lossless: the frontend shows exactly what rendered)."""
    arr = (image.detach().float().clamp(0, 1).cpu().numpy() * 255.0 + 0.5).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", compress_level=1)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


# ---------------------------------------------------------------------------------- remembered runs
@dataclass
class StudioRun:
    """What one execution of the node leaves for previews. The generator (and a SMART block) are weak
    references: when ComfyUI drops them ("Free model and node cache", a new generator, --cache-none) the
    run can no longer preview, and no VRAM or RAM is held on its behalf."""

    node_id: str
    prompt_id: str
    generator: "weakref.ref[StyleGANHandle]"
    wplus: torch.Tensor  # the input latents, fp32 CPU
    latent_meta: dict  # generator fingerprint/name for StyleLatent
    directions: list  # LatentDirection or None, one per slot
    preview_size: str
    precision: str
    smart: Optional[tuple] = None  # (weakref to SmartHandle, beta, per-item features)

    def latent(self) -> StyleLatent:
        extras = {}
        if self.smart is not None:
            handle = self.smart[0]()
            if handle is None:
                raise StudioRequestError(410, "the SMART block of this run was freed by ComfyUI; queue the graph "
                                         "again to preview", reason="gone")
            extras = {"smart": {"handle": handle, "beta": self.smart[1]}, "smart_features": self.smart[2]}
        return StyleLatent(wplus=self.wplus, extras=extras, **self.latent_meta)


class StudioService:
    """Remembered runs and the preview renderer behind the route (no ComfyUI import: testable alone).

    Previews run beside ComfyUI's queue, never with it: `gate` (nodes/preview_service.py) holds them while a
    submitted prompt is on its way to the worker, refuses them while the queue is busy, and stops the render in
    flight between layers; the render reads ComfyUI's Cancel without consuming it, so the user's Cancel still
    reaches the queued job."""

    def __init__(self, max_runs: int = MAX_REMEMBERED, gate: Optional[PreviewGate] = None):
        self.max_runs = max_runs
        self._runs: "OrderedDict[str, StudioRun]" = OrderedDict()  # node id -> its latest run
        self._latest: dict[str, int] = {}  # node id -> ticket of the newest request
        self._tickets = 0
        self._book = threading.Lock()  # guards the two dicts
        # the bridge is looked up at each call (tests replace its functions)
        self.gate = gate or PreviewGate(queue_busy=lambda: bridge.queue_is_busy(),
                                        pending_ids=lambda: bridge.queue_pending_ids(),
                                        interrupted=lambda: bridge.interrupt_requested(),
                                        clear_interrupt=lambda: bridge.clear_interrupt())
        self.rendered = 0  # previews rendered (tests, benchmarks)

    # ------------------------------------------------------------------ bookkeeping
    def remember(self, run: StudioRun) -> None:
        """A node ran: its older run is forgotten, the least recently used runs beyond max_runs too."""
        with self._book:
            self._runs.pop(run.node_id, None)
            self._runs[run.node_id] = run
            while len(self._runs) > self.max_runs:
                self._runs.popitem(last=False)

    def forget(self, node_id: Optional[str] = None) -> None:
        with self._book:
            if node_id is None:
                self._runs.clear()
            else:
                self._runs.pop(node_id, None)

    def __len__(self) -> int:
        return len(self._runs)

    def _lookup(self, node_id: str, prompt_id: str) -> StudioRun:
        with self._book:
            run = self._runs.get(node_id)
            if run is not None and run.generator() is None:  # ComfyUI freed the generator: drop the run
                del self._runs[node_id]
                raise StudioRequestError(410, f"node {node_id}'s generator was freed by ComfyUI (models unloaded "
                                         "or the cache cleared); queue the graph again to preview", reason="gone")
            if run is None or run.prompt_id != prompt_id:
                raise StudioRequestError(404, f"no Edit Studio run of node {node_id!r} in prompt {prompt_id!r} "
                                         "is remembered; queue the graph (or re-run the node) to preview",
                                         reason="unknown")
            self._runs.move_to_end(node_id)
            return run

    # ------------------------------------------------------------------ requests
    def admit(self, payload: dict):
        """Validate a request and take a ticket (on the server's event loop: fast). Returns an answer
        (status, body) or the function that renders it (in a worker thread)."""
        try:
            request = parse_request(payload)
            run = self._lookup(request["node_id"], request["prompt_id"])
        except StudioRequestError as e:
            return e.answer()
        with self._book:
            self._tickets += 1
            ticket = self._latest[request["node_id"]] = self._tickets
        return lambda: self.render(run, request, ticket)

    def handle(self, payload: dict) -> tuple[int, dict]:
        """admit + render in the calling thread (tests, benchmarks, scripts)."""
        admitted = self.admit(payload)
        return admitted() if callable(admitted) else admitted

    def render(self, run: StudioRun, request: dict, ticket: int) -> tuple[int, dict]:
        with self.gate.render_slot():
            status, body = self._render_locked(run, request, ticket)
            body["ended_ms"] = int(time.time() * 1000)  # the models are let go now (a queued prompt starts after)
            return status, body

    def _render_locked(self, run: StudioRun, request: dict, ticket: int) -> tuple[int, dict]:
        refusal = self.gate.refusal()
        if refusal:
            return 503, {"error": refusal, "reason": "busy"}
        if self._runs.get(run.node_id) is not run:  # the node ran again since: its new ids apply
            return 404, {"error": f"node {run.node_id} has run again since; preview the new run",
                         "reason": "unknown"}
        if self._latest.get(run.node_id) != ticket:  # a newer request of this node came in: skip this one
            return 409, {"error": "superseded by a newer request", "reason": "superseded",
                         "seq": request.get("seq")}
        started_ms = int(time.time() * 1000)  # from here on the models are in use: every answer says since when
        status, body = self._render_admitted(run, request)
        return status, {**body, "started_ms": started_ms}

    def _render_admitted(self, run: StudioRun, request: dict) -> tuple[int, dict]:
        t0 = time.perf_counter()
        try:
            image, size = self._render_preview(run, request, self.gate.layer_check())
        except StudioRequestError as e:
            return e.answer()
        except NodeInputError as e:
            return 400, {"error": str(e), "field": e.input_name}
        except PreviewStopped as e:
            return e.status, {"error": str(e), "reason": e.reason, "seq": request.get("seq")}
        except bridge.oom_exception() as e:
            return 507, {"error": str(e), "reason": "out of memory"}
        self.rendered += 1
        return 200, {"image": image_png_data_url(image), "width": size, "height": size,
                     "seq": request.get("seq"), "item": request["item"], "strengths": request["strengths"],
                     "start_layer": request["start_layer"], "end_layer": request["end_layer"],
                     "ms": round(1000 * (time.perf_counter() - t0), 1)}

    @staticmethod
    def _render_preview(run: StudioRun, request: dict, cancel) -> tuple[torch.Tensor, int]:
        generator = run.generator()
        if generator is None:
            raise StudioRequestError(410, "the generator was freed by ComfyUI; queue the graph again to preview",
                                     reason="gone")
        latent = run.latent()
        item = request["item"]
        if item >= latent.batch_size:
            raise StudioRequestError(400, f"item {item} does not exist: the run has {latent.batch_size} "
                                     f"latent(s) (0..{latent.batch_size - 1})", field="item")
        strengths = request["strengths"] + [0.0] * (MAX_DIRECTIONS - len(request["strengths"]))
        ranges = _layer_ranges(NODE, run.directions, latent, request["start_layer"], request["end_layer"])
        wplus = studio_wplus(latent.wplus, run.directions, strengths, ranges)  # a few vector adds; one item renders
        res = _preview_resolution(run.preview_size, generator.config.size)
        images, _ = render_latents(NODE, generator, latent, wplus=wplus, items=[item], precision=run.precision,
                                   max_resolution=res, progress=False, cancel_each_layer=True, cancel=cancel)
        return images[0], res


def _number(name: str, value, lo: float, hi: float, integer: bool = False):
    kind = "an integer" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)):
        raise StudioRequestError(400, f"'{name}' must be {kind}, got {type(value).__name__}", field=name)
    # no float() of an int first: JSON integers can have hundreds of digits
    if (isinstance(value, float) and not math.isfinite(value)) or not lo <= value <= hi:
        raise StudioRequestError(400, f"'{name}' must be {kind} in {lo:g}..{hi:g}, got {repr(value)[:40]}",
                                 field=name)
    return int(value) if integer else float(value)


def parse_request(payload) -> dict:
    """A preview request, checked: ids of the right form, bounded finite numbers, nothing else."""
    if not isinstance(payload, dict):
        raise StudioRequestError(400, "the request must be a JSON object")
    unknown = sorted(set(map(str, payload)) - REQUEST_KEYS)
    if unknown:
        raise StudioRequestError(400, f"unknown field(s) {unknown[:4]}; expected {sorted(REQUEST_KEYS)}",
                                 field=unknown[0][:64])
    out = {}
    for name in ("node_id", "prompt_id"):
        value = payload.get(name)
        if not isinstance(value, str) or not _ID.match(value):
            raise StudioRequestError(400, f"'{name}' must be the id the node's last run reported (letters, digits, "
                                     "':', '_', '.', '-'; at most 64)", field=name)
        out[name] = value
    strengths = payload.get("strengths")
    if not isinstance(strengths, list) or not 1 <= len(strengths) <= MAX_DIRECTIONS:
        raise StudioRequestError(400, f"'strengths' must be a list of 1..{MAX_DIRECTIONS} numbers",
                                 field="strengths")
    out["strengths"] = [_number("strengths", s, -STUDIO_STRENGTH, STUDIO_STRENGTH) for s in strengths]
    out["start_layer"] = _number("start_layer", payload.get("start_layer", -1), -1, MAX_LAYER, integer=True)
    out["end_layer"] = _number("end_layer", payload.get("end_layer", -1), -1, MAX_LAYER, integer=True)
    out["item"] = _number("item", payload.get("item", 0), 0, MAX_ITEM, integer=True)
    seq = payload.get("seq")
    out["seq"] = None if seq is None else _number("seq", seq, 0, 2 ** 53, integer=True)
    return out


SERVICE = StudioService()


# ------------------------------------------------------------------------------------------ the node
def slot_names(directions) -> list:
    """Each slot's direction name as its slider's label (None: nothing connected), cut to MAX_NAME_CHARS."""
    out = []
    for d in directions:
        name = None if d is None else " ".join(str(d.name).split()) or "direction"  # no line breaks in a label
        out.append(name if name is None or len(name) <= MAX_NAME_CHARS else name[:MAX_NAME_CHARS - 1] + "…")
    return out


def _strength_input(i: int) -> tuple:
    return ("FLOAT", {"default": 0.0, "min": -STUDIO_STRENGTH, "max": STUDIO_STRENGTH, "step": 0.05,
                      "tooltip": f"Edit amount along direction_{i}, in multiples of its default strength (0 = "
                                 "unchanged; a GANSpace direction at 0 is skipped). Dragging re-renders the preview "
                                 "after the graph has run once; Queue renders the full image of the same edit."})


class TransEditEditStudio:
    DESCRIPTION = ("Latent editing with live previews: up to four directions, one strength slider each, on a layer "
                   "range. After one run the node shows the image; dragging a slider re-renders a low-resolution "
                   "preview (the generator stopped at preview_size) without queueing, and Queue renders the "
                   "full-resolution image of exactly the same edit. Reset and a before/after divider are on the "
                   "picture. On the canvas only the connected direction slots and one free slot show, and each "
                   "slider is labelled with its direction's name (saved workflows keep strength_1..4).")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "generator": ("TE_STYLEGAN", {"tooltip": "The generator the latents belong to."}),
                "latent": ("TE_LATENT", {"tooltip": "W+ latents to edit (Sample Latent, Invert or another edit)."}),
                "direction_1": ("TE_DIRECTION", {"tooltip": "From TransEdit Load Direction or TransEdit SeFa."}),
                **{f"strength_{i}": _strength_input(i) for i in range(1, MAX_DIRECTIONS + 1)},
                "start_layer": ("INT", {"default": -1, "min": -1, "max": MAX_LAYER,
                                        "tooltip": "First W+ layer every direction edits; -1 = each direction's "
                                                   "own range."}),
                "end_layer": ("INT", {"default": -1, "min": -1, "max": MAX_LAYER,
                                      "tooltip": "Layer after the last one edited (exclusive); -1 = each "
                                                 "direction's own range."}),
                "preview_size": (list(PREVIEW_SIZES), {"default": "256",
                                                       "tooltip": "Resolution of the live preview: the generator's "
                                                                  "own RGB at that layer (smaller = faster drags; "
                                                                  "capped at the generator's size)."}),
                "precision": (list(PRECISIONS), {"default": "auto",
                                                 "tooltip": auto_tooltip_by_file(PRECISION_BY_FILE)
                                                 + " Previews and the queued image use the same."}),
            },
            "optional": {
                **{f"direction_{i}": ("TE_DIRECTION", {"tooltip": f"Optional direction for strength_{i}."})
                   for i in range(2, MAX_DIRECTIONS + 1)},
                "preview_face": ("INT", {"default": 0, "min": 0, "max": MAX_ITEM,
                                         "tooltip": "Which face (latent of the batch) the before/after and the "
                                                    "live previews show first; the picture's pair switch steps "
                                                    f"through it and the next {MAX_PAIRS - 1}. With Align Face's "
                                                    "faces: all, faces count in its order (photo, then largest "
                                                    "first); Select Faces before Invert narrows the batch to the "
                                                    "faces you pick."}),
            },
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    RETURN_TYPES = ("IMAGE", "TE_LATENT")
    RETURN_NAMES = ("images", "latent")
    OUTPUT_TOOLTIPS = ("The edited images at full resolution [batch, size, size, 3].",
                       "The edited latents, for SMART Refine, Generate or further edits.")
    FUNCTION = "edit"
    OUTPUT_NODE = True  # runs (and shows its picture) even when nothing is connected to it
    CATEGORY = CATEGORY
    SEARCH_ALIASES = ["face editor", "live edit", "latent sliders", "age smile sliders", "stylegan edit"]

    def edit(self, generator, latent, direction_1, strength_1, strength_2, strength_3, strength_4, start_layer,
             end_layer, preview_size, precision, direction_2=None, direction_3=None, direction_4=None,
             preview_face=0, unique_id=None):
        generator = check_generator(NODE, generator)
        latent = generator.check_latent(check_latent(NODE, "latent", latent), NODE)
        directions = []
        for i, d in enumerate((direction_1, direction_2, direction_3, direction_4), start=1):
            if (i == 1 or d is not None) and not isinstance(d, LatentDirection):
                raise NodeInputError(NODE, f"direction_{i}", f"must be a TE_DIRECTION, got {type(d).__name__}.",
                                     "connect the output of TransEdit Load Direction or TransEdit SeFa.")
            directions.append(d)
        strengths = [check_float(NODE, f"strength_{i}", s, -STUDIO_STRENGTH, STUDIO_STRENGTH)
                     for i, s in enumerate((strength_1, strength_2, strength_3, strength_4), start=1)]
        start_layer = check_int(NODE, "start_layer", start_layer, -1, MAX_LAYER)
        end_layer = check_int(NODE, "end_layer", end_layer, -1, MAX_LAYER)
        preview_size = check_choice(NODE, "preview_size", preview_size, PREVIEW_SIZES)
        precision = check_choice(NODE, "precision", precision, PRECISIONS)
        first = check_int(NODE, "preview_face", preview_face, 0, MAX_ITEM)
        if first >= latent.batch_size:
            raise NodeInputError(NODE, "preview_face", f"is {first} but the latent holds {latent.batch_size} "
                                 f"face(s) (0..{latent.batch_size - 1}).",
                                 "lower preview_face, or connect the latents of all the faces you mean.")
        if not torch.isfinite(latent.wplus).all():
            raise NodeInputError(NODE, "latent", "contains NaN or infinite values.",
                                 "check the node that produced it (e.g. an edit strength that is too large).")

        ranges = _layer_ranges(NODE, directions, latent, start_layer, end_layer)
        wplus = studio_wplus(latent.wplus, directions, strengths, ranges)
        res = _preview_resolution(preview_size, generator.config.size)
        images, previews = render_latents(NODE, generator, latent, wplus=wplus, precision=precision,
                                          preview_resolution=res, progress_images=False)  # it draws its own
        values = {"strengths": strengths, "start_layer": start_layer, "end_layer": end_layer}
        edited = with_edit(latent, wplus, {"studio": [d.name if d is not None else None for d in directions],
                                            **values})

        node_id, prompt_id = bridge.executing_ids(unique_id)
        ui = None
        if node_id and prompt_id:
            smart = None
            if latent.extras.get("smart") is not None:
                smart = (weakref.ref(latent.extras["smart"]["handle"]), latent.extras["smart"]["beta"],
                         latent.extras["smart_features"])
            SERVICE.remember(StudioRun(node_id=node_id, prompt_id=prompt_id, generator=weakref.ref(generator),
                                       wplus=latent.wplus.float().cpu(),
                                       latent_meta={"generator": latent.generator,
                                                    "generator_name": latent.generator_name},
                                       directions=directions, preview_size=preview_size, precision=precision,
                                       smart=smart))
            if bridge.IN_COMFYUI:  # nobody looks at previews elsewhere
                ui = self._ui(node_id, prompt_id, generator, latent, wplus, previews, res, values, precision,
                              slot_names(directions), first)
        return bridge.with_ui((images, edited), ui)

    @staticmethod
    def _ui(node_id, prompt_id, generator, latent, wplus, previews, res, values, precision, names, first=0):
        """The frontend's data: the compare widget's (before, after) pairs at preview size — 'after' is the skip
        RGB of the queued render itself, what the route renders for these values —, the ids for the route, and
        each slot's direction name (the sliders' labels: js/transedit.js)."""
        shown = list(range(first, min(first + MAX_PAIRS, latent.batch_size)))  # from the face it is pointed at
        before = previews[shown]
        if not torch.equal(wplus, latent.wplus):  # an edit: render the unedited faces at preview size too
            before, _ = render_latents(NODE, generator, latent, items=shown, precision=precision,
                                       max_resolution=res, progress=False)
        (pairs,) = compare_ui(before, previews[shown])[COMPARE_KEY]
        return {UI_KEY: [{**pairs, "total": latent.batch_size, "node_id": node_id, "prompt_id": prompt_id,
                          "route": ROUTE, "preview_size": res, "full_size": generator.config.size,
                          "values": values, "directions": names, "items": shown}]}


NODE_CLASS_MAPPINGS = {"TransEditEditStudio": TransEditEditStudio}
NODE_DISPLAY_NAME_MAPPINGS = {"TransEditEditStudio": "TransEdit Edit Studio"}
