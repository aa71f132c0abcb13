"""Edit stage: latent directions (InterFaceGAN, GANSpace, StyleCLIP, SeFa), layer mixing, sweeps and
Style Transformer's reference-based EditTransformer. Every edit maps TE_LATENT -> TE_LATENT, so edits chain."""
from __future__ import annotations

import os
from typing import Optional

import torch

from ..models.core.directions import (GANSPACE_PCA_FILES, LAYER_GROUPS, DirectionError, LatentDirection,
                                      ganspace_preset, load_direction, load_ganspace_pca, mix_wplus, parse_layers,
                                      preset_names, sefa_direction)
from ..models.registry import load_edit_transformer
from ..models.face.temporal import smooth_series
from . import comfy_bridge as bridge
from .chunks import run_in_chunks
from .faces import FaceAlignment
from .handles import ModelHandle, load_handle
from .inputs import NodeInputError, check_choice, check_float, check_int, load_model_file
from .latents import MAX_LAYER, broadcast_index, check_direction, check_latent, fit_direction, with_edit
from .rendering import StyleGANHandle

CATEGORY = "TransEdit/Edit"
MAX_STRENGTH = 100.0
MAX_COMPONENT = 4095
MAX_SWEEP_STEPS = 64
MAX_OUTPUT_BATCH = 4096
SEFA_ENTRY = "sefa: from the generator input (all layers)"
PRESET_PREFIX = "preset: ganspace "
LAYER_CHOICES = LAYER_GROUPS + ("custom",)


def preset_label(domain: str, name: str) -> str:
    return f"{PRESET_PREFIX}{domain} {name}"


PRESET_LABELS = {preset_label(d, n): (d, n) for d, n in preset_names()}


# -------------------------------------------------------------------------------------------- loading
def _find_direction_file(filename: str) -> Optional[str]:
    """A file in latent_directions by its basename (any subfolder), for the GANSpace presets."""
    for rel in bridge.list_models("latent_directions"):
        if os.path.basename(rel) == filename:
            return bridge.model_path("latent_directions", rel)
    return None


class TransEditLoadDirection:
    DESCRIPTION = ("Loads a latent edit direction from models/latent_directions (InterFaceGAN .pt, GANSpace PCA "
                   ".pt, StyleCLIP/CLIP2StyleGAN .npy, TransEdit .safetensors), one of e4e's GANSpace presets "
                   "(needs e4e's ffhq_pca.pt / cars_pca.pt in that folder), or a SeFa direction computed from "
                   "the connected generator.")

    @classmethod
    def INPUT_TYPES(cls):
        choices = bridge.list_models("latent_directions") + list(PRESET_LABELS) + [SEFA_ENTRY]
        return {
            "required": {
                "direction": (choices, {
                    "tooltip": "A file in ComfyUI/models/latent_directions (subfolders allowed); "
                               "'preset: ganspace ...' = an edit e4e documents (component, layers, strength); "
                               "'sefa' = closed-form direction from the generator input."}),
                "component": ("INT", {"default": 0, "min": 0, "max": MAX_COMPONENT,
                                      "tooltip": "Which component: for a GANSpace PCA file (its PCA component, "
                                                 "applied to every layer) and for the SeFa entry (0 = the "
                                                 "strongest). Ignored by other files and the presets."}),
            },
            "optional": {
                "generator": ("TE_STYLEGAN", {"tooltip": "Only for the SeFa entry: the generator whose "
                                                         "modulation weights are factorised."}),
            },
        }

    RETURN_TYPES = ("TE_DIRECTION",)
    RETURN_NAMES = ("direction",)
    OUTPUT_TOOLTIPS = ("The direction with its layer range and default strength, for Apply Direction and "
                       "Latent Sweep.",)
    FUNCTION = "load"
    CATEGORY = CATEGORY
    SEARCH_ALIASES = ["interfacegan", "ganspace", "styleclip direction", "edit direction", "latent direction"]

    def load(self, direction, component=0, generator=None):
        node = "TransEdit Load Direction"
        component = check_int(node, "component", component, 0, MAX_COMPONENT)
        if direction == SEFA_ENTRY:
            if not isinstance(generator, StyleGANHandle):
                raise NodeInputError(node, "generator", "is needed for the SeFa entry but is not connected"
                                     + ("" if generator is None else f" (got {type(generator).__name__})") + ".",
                                     "connect a TE_STYLEGAN (TransEdit Load StyleGAN) to 'generator'.")
            return (_sefa(node, generator, component, 0, -1),)
        if direction in PRESET_LABELS:
            domain, name = PRESET_LABELS[direction]
            filename = GANSPACE_PCA_FILES[domain]
            path = _find_direction_file(filename)
            if path is None:
                raise NodeInputError(node, "direction", f"'{direction}' needs GANSpace's PCA file {filename}, "
                                     f"which is not in {bridge.folder_paths_for('latent_directions')}.",
                                     f"download {filename} from the e4e repository (editings/ganspace_pca/) into "
                                     "ComfyUI/models/latent_directions and press Refresh (R).")
            try:
                return (ganspace_preset(load_ganspace_pca(path), domain, name),)
            except DirectionError as e:
                raise NodeInputError(node, "direction", f"'{direction}' cannot be built from {path}: {e}",
                                     f"use the {filename} that e4e ships (80 components).") from None
        try:
            return (load_model_file(node, "direction", "latent_directions", direction,
                                    lambda path: load_direction(path, component)),)
        except DirectionError as e:
            raise NodeInputError(node, "component", f"{e}", "pick an existing component.") from None


_CATALOG_CACHE: dict[str, tuple[float, dict]] = {}  # path -> (mtime, entry)


def _layer_text(start: int, end: Optional[int]) -> str:
    return f"{start}..{'last' if end is None else end - 1}"


def direction_catalog() -> dict[str, dict]:
    """What the frontend shows under Load Direction's list: for every entry, its kind, layer range, default
    strength and a description (from the file's metadata; files are read once per modification time)."""
    from ..models.core.directions import GANSPACE_PRESETS, load_direction

    out: dict[str, dict] = {}
    for label, (domain, name) in PRESET_LABELS.items():
        component, start, end, strength = GANSPACE_PRESETS[domain][name]
        out[label] = {"kind": "GANSpace preset", "layers": _layer_text(start, end), "default_strength": strength,
                      "description": f"e4e's GANSpace {domain} '{name}': PCA component {component} "
                                     f"(needs {GANSPACE_PCA_FILES[domain]})"}
    out[SEFA_ENTRY] = {"kind": "SeFa", "layers": "all", "default_strength": 1.0,
                       "description": "closed-form direction from the connected generator's weights "
                                      "(component 0 = strongest)"}
    for filename in bridge.list_models("latent_directions"):
        path = bridge.model_path("latent_directions", filename)
        if path is None:
            continue
        try:
            mtime = os.path.getmtime(path)
            cached = _CATALOG_CACHE.get(path)
            if cached is None or cached[0] != mtime:
                d = load_direction(path)
                entry = {"kind": d.kind, "layers": _layer_text(d.start, d.end),
                         "default_strength": d.default_strength,
                         "description": str(d.extras.get("description") or d.extras.get("note") or d.name)}
                _CATALOG_CACHE[path] = (mtime, entry)
            out[filename] = _CATALOG_CACHE[path][1]
        except (OSError, ValueError, KeyError, RuntimeError) as e:  # shown, not raised: it is only a hint
            out[filename] = {"kind": "unreadable", "description": f"cannot be read: {e}"}
    return out


def _sefa(node: str, generator: StyleGANHandle, component: int, start: int, end: int) -> LatentDirection:
    cfg = generator.config
    n = cfg.n_latent
    if component >= cfg.style_dim:
        raise NodeInputError(node, "component", f"is {component} but the generator's style_dim is "
                             f"{cfg.style_dim}, so SeFa has components 0..{cfg.style_dim - 1}.",
                             "pick a smaller component (0 = the strongest).")
    e = n if end == -1 else end
    if start > e:
        raise NodeInputError(node, "start_layer", f"({start}) is after end_layer ({e}): the range is reversed.",
                             f"use 0 <= start_layer < end_layer <= {n} (end_layer is exclusive).")
    if start == e:
        raise NodeInputError(node, "end_layer", f"equals start_layer ({start}): the range is empty "
                             "(end_layer is exclusive).", f"use end_layer > start_layer, at most {n}.")
    if e > n:
        raise NodeInputError(node, "end_layer", f"is {e} but generator '{generator.name}' has only {n} W+ layers.",
                             f"use end_layer <= {n}, or -1 for the last layer.")
    return sefa_direction(generator.descriptor.model, component, start, e,
                          fingerprint=generator.descriptor.fingerprint, generator_name=generator.name)


class TransEditSeFa:
    DESCRIPTION = ("SeFa (closed-form factorisation): the unit eigenvectors of AᵀA, where A stacks the "
                   "generator's style-modulation weights of the chosen layers (rows normalised, as the official "
                   "genforce/sefa code). Works for any loaded generator, no files. Component 0 changes the image "
                   "most; the direction acts on the same layers it was computed from.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "generator": ("TE_STYLEGAN", {"tooltip": "The generator whose modulation weights are factorised."}),
            "component": ("INT", {"default": 0, "min": 0, "max": MAX_COMPONENT,
                                  "tooltip": "Eigenvector index, sorted by eigenvalue (0 = strongest)."}),
            "start_layer": ("INT", {"default": 0, "min": 0, "max": MAX_LAYER,
                                    "tooltip": "First W+ layer to factorise and edit (0 = 4x4; coarse 0-3 = "
                                               "pose/shape, middle 4-7, fine 8+ = colour/texture)."}),
            "end_layer": ("INT", {"default": -1, "min": -1, "max": MAX_LAYER,
                                  "tooltip": "Layer after the last one (exclusive); -1 = through the last layer."}),
        }}

    RETURN_TYPES = ("TE_DIRECTION",)
    RETURN_NAMES = ("direction",)
    OUTPUT_TOOLTIPS = ("A unit direction in W acting on the chosen layers; default strength 3 (the official "
                       "demo's sweep end).",)
    FUNCTION = "factorize"
    CATEGORY = CATEGORY
    SEARCH_ALIASES = ["closed-form factorization", "unsupervised directions", "stylegan directions"]

    def factorize(self, generator, component, start_layer, end_layer):
        node = "TransEdit SeFa"
        if not isinstance(generator, StyleGANHandle):
            raise NodeInputError(node, "generator", f"must be a TE_STYLEGAN, got {type(generator).__name__}.",
                                 "connect the output of TransEdit Load StyleGAN.")
        component = check_int(node, "component", component, 0, MAX_COMPONENT)
        start_layer = check_int(node, "start_layer", start_layer, 0, MAX_LAYER)
        end_layer = check_int(node, "end_layer", end_layer, -1, MAX_LAYER)
        return (_sefa(node, generator, component, start_layer, end_layer),)


# -------------------------------------------------------------------------------------------- editing
_LAYER_INPUTS = {
    "start_layer": ("INT", {"default": -1, "min": -1, "max": MAX_LAYER,
                            "tooltip": "First W+ layer to edit; -1 = the direction's own range."}),
    "end_layer": ("INT", {"default": -1, "min": -1, "max": MAX_LAYER,
                          "tooltip": "Layer after the last one edited (exclusive, as in e4e's GANSpace tuples); "
                                     "-1 = the direction's own range."}),
}
_STRENGTH_NOTE = ("multiplier of the direction's default strength (InterFaceGAN/StyleCLIP files: 1; e4e presets: "
                  "the preset's value; SeFa: 3). GANSpace directions set the coordinate along the component to "
                  "this value, so 0 moves to the average rather than leaving the latent unchanged.")


def _check_layers(node: str, start_layer, end_layer) -> tuple[int, int]:
    return (check_int(node, "start_layer", start_layer, -1, MAX_LAYER),
            check_int(node, "end_layer", end_layer, -1, MAX_LAYER))


class TransEditApplyDirection:
    DESCRIPTION = ("Moves W+ latents along a direction on a range of layers. Chainable: apply several "
                   "directions one after another. InterFaceGAN/StyleCLIP/SeFa add strength x direction; GANSpace "
                   "sets the component's coordinate (as e4e applies it).")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "latent": ("TE_LATENT", {"tooltip": "W+ latents to edit (from Sample Latent, Invert or another edit)."}),
            "direction": ("TE_DIRECTION", {"tooltip": "From TransEdit Load Direction or TransEdit SeFa."}),
            "strength": ("FLOAT", {"default": 1.0, "min": -MAX_STRENGTH, "max": MAX_STRENGTH, "step": 0.05,
                                   "tooltip": "Edit amount: " + _STRENGTH_NOTE}),
            **_LAYER_INPUTS,
        }}

    RETURN_TYPES = ("TE_LATENT",)
    RETURN_NAMES = ("latent",)
    OUTPUT_TOOLTIPS = ("The edited latents (same batch size), for Generate or further edits.",)
    FUNCTION = "apply"
    CATEGORY = CATEGORY
    SEARCH_ALIASES = ["latent edit", "age", "smile", "pose", "face attribute edit", "w+ edit"]

    def apply(self, latent, direction, strength, start_layer, end_layer):
        node = "TransEdit Apply Direction"
        latent = check_latent(node, "latent", latent)
        direction = check_direction(node, direction)
        strength = check_float(node, "strength", strength, -MAX_STRENGTH, MAX_STRENGTH)
        start_layer, end_layer = _check_layers(node, start_layer, end_layer)
        s, e = fit_direction(node, direction, latent, start_layer, end_layer)
        value = strength * direction.default_strength
        wplus = direction.apply(latent.wplus, value, s, e)
        return (with_edit(latent, wplus, {"direction": direction.name, "kind": direction.kind,
                                           "strength": value, "layers": [s, e]}),)


class TransEditLatentSweep:
    DESCRIPTION = ("A strip of variations along a direction: every input latent at `steps` strengths evenly "
                   "spaced from from_strength to to_strength. Output order is image-major: item i * steps + j is "
                   "input i at step j, so a batch of B gives B x steps latents (B strips of steps).")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "latent": ("TE_LATENT", {"tooltip": "W+ latents; each becomes one strip."}),
            "direction": ("TE_DIRECTION", {"tooltip": "From TransEdit Load Direction or TransEdit SeFa."}),
            "from_strength": ("FLOAT", {"default": -1.0, "min": -MAX_STRENGTH, "max": MAX_STRENGTH, "step": 0.05,
                                        "tooltip": "Strength of the first step: " + _STRENGTH_NOTE}),
            "to_strength": ("FLOAT", {"default": 1.0, "min": -MAX_STRENGTH, "max": MAX_STRENGTH, "step": 0.05,
                                      "tooltip": "Strength of the last step (same units as from_strength)."}),
            "steps": ("INT", {"default": 5, "min": 2, "max": MAX_SWEEP_STEPS,
                              "tooltip": "Variations per input latent (both ends included)."}),
            **_LAYER_INPUTS,
        }}

    RETURN_TYPES = ("TE_LATENT",)
    RETURN_NAMES = ("latents",)
    OUTPUT_TOOLTIPS = ("batch x steps latents, image-major (input 0's strip first), for Generate.",)
    FUNCTION = "sweep"
    CATEGORY = CATEGORY
    SEARCH_ALIASES = ["interpolation strip", "edit animation", "latent walk"]

    def sweep(self, latent, direction, from_strength, to_strength, steps, start_layer, end_layer):
        node = "TransEdit Latent Sweep"
        latent = check_latent(node, "latent", latent)
        direction = check_direction(node, direction)
        lo = check_float(node, "from_strength", from_strength, -MAX_STRENGTH, MAX_STRENGTH)
        hi = check_float(node, "to_strength", to_strength, -MAX_STRENGTH, MAX_STRENGTH)
        steps = check_int(node, "steps", steps, 2, MAX_SWEEP_STEPS)
        start_layer, end_layer = _check_layers(node, start_layer, end_layer)
        if latent.batch_size * steps > MAX_OUTPUT_BATCH:
            raise NodeInputError(node, "steps", f"x a batch of {latent.batch_size} gives "
                                 f"{latent.batch_size * steps} latents (at most {MAX_OUTPUT_BATCH}).",
                                 "use fewer steps or a smaller batch.")
        s, e = fit_direction(node, direction, latent, start_layer, end_layer)
        values = torch.linspace(lo, hi, steps, dtype=torch.float64).tolist()
        per_step = [direction.apply(latent.wplus, v * direction.default_strength, s, e) for v in values]
        wplus = torch.stack(per_step, 1).reshape(-1, latent.n_latent, latent.style_dim)  # [B*steps, n, C]
        index = torch.arange(latent.batch_size).repeat_interleave(steps)
        return (with_edit(latent, wplus, {"sweep": direction.name, "kind": direction.kind,
                                           "strengths": [v * direction.default_strength for v in values],
                                           "layers": [s, e], "order": "image-major"}, index),)


class TransEditMixLatents:
    DESCRIPTION = ("Layer-wise style mixing, the weight-free reference edit: the chosen W+ layers of A are "
                   "blended toward B. Coarse (layers 0-3, 4-8 px) carries pose and face shape, middle (4-7, "
                   "16-32 px) features, fine (8+) colours and texture. Batches pair item by item, or a batch of "
                   "1 is applied to every item of the other.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "latent_a": ("TE_LATENT", {"tooltip": "The latents to edit (their other layers are kept)."}),
            "latent_b": ("TE_LATENT", {"tooltip": "The reference latents whose layers are taken."}),
            "layers": (list(LAYER_CHOICES), {"default": "coarse",
                                             "tooltip": "Which W+ layers to take from B: StyleGAN's groups by "
                                                        "resolution (coarse 0-3, middle 4-7, fine 8+), or "
                                                        "'custom' to use custom_layers."}),
            "custom_layers": ("STRING", {"default": "0-3", "multiline": False,
                                         "tooltip": "Used when layers is 'custom': rows like '0-3, 8, 10-11' "
                                                    "(ranges inclusive)."}),
            "weight": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01,
                                 "tooltip": "1 = B's layers replace A's; 0.5 = halfway; 0 = A unchanged."}),
        }}

    RETURN_TYPES = ("TE_LATENT",)
    RETURN_NAMES = ("latent",)
    OUTPUT_TOOLTIPS = ("The mixed latents (A's generator and per-image extras; the larger batch size).",)
    FUNCTION = "mix"
    CATEGORY = CATEGORY
    SEARCH_ALIASES = ["style mixing", "layer mixing", "w+ mix"]

    def mix(self, latent_a, latent_b, layers, custom_layers, weight):
        node = "TransEdit Mix Latents"
        a = check_latent(node, "latent_a", latent_a)
        b = check_latent(node, "latent_b", latent_b)
        layers = check_choice(node, "layers", layers, LAYER_CHOICES)
        weight = check_float(node, "weight", weight, 0.0, 1.0)
        index, _ = broadcast_index(node, a, b, "latent_a", "latent_b")
        name, spec = ("custom_layers", str(custom_layers)) if layers == "custom" else ("layers", layers)
        try:
            rows = parse_layers(spec, a.n_latent)
        except DirectionError as e:
            raise NodeInputError(node, name, f"{e}", "choose layers that exist in this latent "
                                 f"(0..{a.n_latent - 1}).") from None
        wplus = mix_wplus(a.wplus, b.wplus, rows, weight)
        return (with_edit(a, wplus, {"mix": b.generator_name or "latent_b", "layers": rows, "weight": weight},
                           index),)


class TransEditSmoothLatents:
    DESCRIPTION = ("For video: smooths a clip's latents over time, so that frames inverted one by one do not "
                   "wobble. Put it after Invert (and after the edit, which is the same on every frame); with "
                   "Align Face's 'align' connected, frames whose face was lost are left out and filled from their "
                   "neighbours, and nothing is smoothed across the clip's cuts. StylePrompter's encoder features for "
                   "SMART are smoothed the same way.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "latent": ("TE_LATENT", {"tooltip": "One latent per frame, in frame order."}),
            "smoothing": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 30.0, "step": 0.25,
                                    "tooltip": "Gaussian sigma in frames. 1 removes frame-to-frame wobble and keeps "
                                               "expressions; larger values also smooth fast motion (blinks, "
                                               "speech) away. 0 leaves the latents as they are."}),
        }, "optional": {
            "align": ("TE_ALIGN", {"tooltip": "Align Face's output for the same frames: frames it could not find "
                                              "the face in do not count and are filled from their neighbours."}),
        }}

    RETURN_TYPES = ("TE_LATENT",)
    RETURN_NAMES = ("latent",)
    OUTPUT_TOOLTIPS = ("The smoothed latents (same frames, same extras).",)
    FUNCTION = "smooth"
    CATEGORY = CATEGORY
    SEARCH_ALIASES = ["video", "temporal smoothing", "deflicker", "stabilize latents"]

    def smooth(self, latent, smoothing, align=None):
        node = "TransEdit Smooth Latents"
        latent = check_latent(node, "latent", latent)
        smoothing = check_float(node, "smoothing", smoothing, 0.0, 30.0)
        present = segments = None
        if align is not None:
            if not isinstance(align, FaceAlignment):
                raise NodeInputError(node, "align", f"must be a TE_ALIGN, got {type(align).__name__}.",
                                     "connect the 'align' output of TransEdit Align Face, or leave it empty.")
            if len(align) != latent.batch_size:
                raise NodeInputError(node, "align", f"describes {len(align)} frames but the latent has "
                                     f"{latent.batch_size}.", "connect the Align Face that made these frames.")
            present = [ok and (not align.is_video or status == "found")
                       for ok, status in zip(align.found, align.status or align.found)]
            if not any(present):
                present = None  # no frame had the face: every latent counts alike
            segments = align.segments  # a clip's shots: nothing is smoothed across a cut
        if latent.batch_size == 1 or smoothing == 0 and present is None:
            return (latent,)
        wplus = smooth_series(latent.wplus, smoothing, present, segments)
        extras = dict(latent.extras)
        features = extras.get("smart_features")
        if features and len(features) == latent.batch_size:  # SMART injects these at render time: smooth alike
            levels = [smooth_series(torch.stack([frame[k] for frame in features]), smoothing, present, segments)
                      for k in range(len(features[0]))]
            extras["smart_features"] = [[level[t] for level in levels] for t in range(latent.batch_size)]
        extras["edits"] = list(latent.extras.get("edits", [])) + [{"smooth": smoothing}]
        return (latent.with_wplus(wplus.float().cpu().contiguous()).with_extras(extras),)


# ------------------------------------------------------------------------------------ reference editing
class EditTransformerHandle(ModelHandle):
    """What flows on a TE_EDIT_TRANSFORMER wire."""

    def __repr__(self) -> str:
        return f"EditTransformer({self.name}, d_model {self.config.d_model})"

class TransEditLoadEditTransformer:
    DESCRIPTION = ("Loads Style Transformer's reference-based EditTransformer (the official ref-edit checkpoint "
                   "from sapphire497/style-transformer) from models/gan_encoders.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "transformer_name": (bridge.list_models("gan_encoders"), {
                "tooltip": "The EditTransformer checkpoint in ComfyUI/models/gan_encoders ({'state_dict' with "
                           "encoder.module.transformerlayer.*, 'opts'})."}),
        }}

    RETURN_TYPES = ("TE_EDIT_TRANSFORMER",)
    RETURN_NAMES = ("edit_transformer",)
    OUTPUT_TOOLTIPS = ("The EditTransformer, for TransEdit Reference Edit.",)
    FUNCTION = "load"
    CATEGORY = CATEGORY
    SEARCH_ALIASES = ["reference edit model", "style transformer edit"]

    def load(self, transformer_name):
        node = "TransEdit Load Edit Transformer"
        return (load_handle(node, "transformer_name", "gan_encoders", transformer_name, load_edit_transformer,
                            EditTransformerHandle),)


class TransEditReferenceEdit:
    DESCRIPTION = ("Reference-based editing with Style Transformer's EditTransformer: the source latent's W+ rows "
                   "attend to the reference latent's and take on its attribute (as trained, e.g. smile or age). "
                   "Batches pair item by item, or a batch of 1 is applied to every item of the other.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "edit_transformer": ("TE_EDIT_TRANSFORMER", {"tooltip": "From TransEdit Load Edit Transformer."}),
            "latent": ("TE_LATENT", {"tooltip": "The source latents to edit (e.g. an inverted photo)."}),
            "reference": ("TE_LATENT", {"tooltip": "The reference latents that show the wanted attribute."}),
        }}

    RETURN_TYPES = ("TE_LATENT",)
    RETURN_NAMES = ("latent",)
    OUTPUT_TOOLTIPS = ("The edited W+ latents (used directly as the new codes, as the official code does).",)
    FUNCTION = "edit"
    CATEGORY = CATEGORY
    SEARCH_ALIASES = ["copy attribute", "reference face edit", "attribute transfer"]

    def edit(self, edit_transformer, latent, reference):
        node = "TransEdit Reference Edit"
        if not isinstance(edit_transformer, EditTransformerHandle):
            raise NodeInputError(node, "edit_transformer", f"must be a TE_EDIT_TRANSFORMER, got "
                                 f"{type(edit_transformer).__name__}.",
                                 "connect the output of TransEdit Load Edit Transformer.")
        src = check_latent(node, "latent", latent)
        ref = check_latent(node, "reference", reference)
        d_model = edit_transformer.config.d_model
        if src.style_dim != d_model:
            raise NodeInputError(node, "latent", f"has style_dim {src.style_dim} but EditTransformer "
                                 f"'{edit_transformer.name}' works on {d_model}-wide codes.",
                                 "use latents from the generator the EditTransformer was trained with.")
        index, _ = broadcast_index(node, src, ref, "latent", "reference")
        for name, lat in (("latent", src), ("reference", ref)):
            if not torch.isfinite(lat.wplus).all():
                raise NodeInputError(node, name, "contains NaN or infinite values.",
                                     "check the node that produced it (e.g. an edit strength that is too large).")
        a, b = src.wplus, ref.wplus
        if a.shape[0] != b.shape[0]:
            a, b = (a.expand(b.shape[0], -1, -1), b) if a.shape[0] == 1 else (a, b.expand(a.shape[0], -1, -1))
        module = edit_transformer.load()
        device = next(module.parameters()).device

        def edit_rows(start: int, stop: int) -> torch.Tensor:
            with torch.inference_mode():
                return module(a[start:stop].to(device, torch.float32),
                              b[start:stop].to(device, torch.float32)).float().cpu()

        out = torch.cat(run_in_chunks(node, a.shape[0], a.shape[0], edit_rows, what="editing one latent",
                                      advice="free GPU memory held by other programs.",
                                      keep=(edit_transformer.managed,)), 0)
        return (with_edit(src, out, {"reference_edit": edit_transformer.name}, index),)


NODE_CLASS_MAPPINGS = {
    "TransEditLoadDirection": TransEditLoadDirection,
    "TransEditApplyDirection": TransEditApplyDirection,
    "TransEditSeFa": TransEditSeFa,
    "TransEditMixLatents": TransEditMixLatents,
    "TransEditLoadEditTransformer": TransEditLoadEditTransformer,
    "TransEditReferenceEdit": TransEditReferenceEdit,
    "TransEditLatentSweep": TransEditLatentSweep,
    "TransEditSmoothLatents": TransEditSmoothLatents,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "TransEditLoadDirection": "TransEdit Load Direction",
    "TransEditApplyDirection": "TransEdit Apply Direction",
    "TransEditSeFa": "TransEdit SeFa",
    "TransEditMixLatents": "TransEdit Mix Latents",
    "TransEditLoadEditTransformer": "TransEdit Load Edit Transformer",
    "TransEditReferenceEdit": "TransEdit Reference Edit",
    "TransEditLatentSweep": "TransEdit Latent Sweep",
    "TransEditSmoothLatents": "TransEdit Smooth Latents",
}
