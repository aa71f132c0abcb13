"""W+ latents between the editing nodes: checking one, fitting a direction to it, and recording an edit (the
helpers every editing stage shares: Apply Direction, Latent Sweep, Mix Latents, Reference Edit, Edit Studio)."""
from __future__ import annotations

from typing import Optional

import torch

from ..models.core.directions import DirectionError, LatentDirection
from ..models.core.latent import StyleLatent
from . import comfy_bridge as bridge
from .inputs import NodeInputError

MAX_LAYER = 64  # W+ rows of the largest generator TransEdit builds (2048 px) are 20; room to spare


def check_latent(node: str, name: str, latent) -> StyleLatent:
    if not isinstance(latent, StyleLatent):
        raise NodeInputError(node, name, f"must be a TE_LATENT, got {type(latent).__name__}.",
                             "connect the output of Sample Latent, Invert or another edit node.")
    if latent.batch_size == 0:
        raise NodeInputError(node, name, "is an empty batch.", "connect a latent with at least one item.")
    return latent


def check_direction(node: str, direction) -> LatentDirection:
    if not isinstance(direction, LatentDirection):
        raise NodeInputError(node, "direction", f"must be a TE_DIRECTION, got {type(direction).__name__}.",
                             "connect the output of TransEdit Load Direction or TransEdit SeFa.")
    return direction


def fit_direction(node: str, direction: LatentDirection, latent: StyleLatent, start: int, end: int):
    """The direction's vector for this latent and the [start, end) rows, or a NodeInputError."""
    try:
        direction.resolve_vector(latent.n_latent, latent.style_dim)
    except DirectionError as e:
        raise NodeInputError(node, "direction", f"{e}.", "use a direction made for this generator "
                             f"(W+ [{latent.n_latent}, {latent.style_dim}]).") from None
    try:
        s, e = direction.layer_range(latent.n_latent, None if start == -1 else start, None if end == -1 else end)
    except DirectionError as err:
        name = "end_layer" if end != -1 else ("start_layer" if start != -1 else "direction")
        fix = (f"use 0 <= start_layer < end_layer <= {latent.n_latent} (end_layer is exclusive; -1 keeps the "
               "direction's own range).")
        if name == "direction":
            fix = (f"this direction was made for a generator with more W+ layers; set start_layer/end_layer "
                   f"within 0..{latent.n_latent} or use a direction for this generator.")
        raise NodeInputError(node, name, f"{err}", fix) from None
    if direction.generator and latent.generator and direction.generator != latent.generator:
        bridge.log.warning("%s: direction '%s' was made for generator '%s', the latent comes from '%s' "
                           "(same shape, allowed)", node, direction.name, direction.generator_name or
                           direction.generator, latent.generator_name or latent.generator)
    return s, e


def take_extras(extras: dict, old_batch: int, index: torch.Tensor) -> dict:
    """Carry per-item extras (tensors/lists with one entry per latent, e.g. source images for paste-back)
    along a re-indexed batch: output item k takes input item index[k]. Everything else is kept as is."""
    out = {}
    for key, value in extras.items():
        if isinstance(value, torch.Tensor) and value.ndim >= 1 and value.shape[0] == old_batch:
            out[key] = value.index_select(0, index.to(value.device))
        elif isinstance(value, (list, tuple)) and len(value) == old_batch and old_batch != 1:
            out[key] = type(value)(value[int(i)] for i in index)
        elif isinstance(value, (list, tuple)) and len(value) == 1 and old_batch == 1:
            out[key] = type(value)(value[0] for _ in index)
        else:
            out[key] = value
    return out


def with_edit(latent: StyleLatent, wplus: torch.Tensor, record: dict,
               index: Optional[torch.Tensor] = None) -> StyleLatent:
    extras = dict(latent.extras) if index is None else take_extras(latent.extras, latent.batch_size, index)
    extras["edits"] = list(latent.extras.get("edits", [])) + [record]
    return StyleLatent(wplus=wplus.float().cpu().contiguous(), generator=latent.generator,
                       generator_name=latent.generator_name, extras=extras)


def broadcast_index(node: str, a: StyleLatent, b: StyleLatent, a_name: str, b_name: str):
    if (a.n_latent, a.style_dim) != (b.n_latent, b.style_dim):
        raise NodeInputError(node, b_name, f"holds W+ [{b.n_latent}, {b.style_dim}] but '{a_name}' holds "
                             f"[{a.n_latent}, {a.style_dim}].", "use latents from the same generator.")
    na, nb = a.batch_size, b.batch_size
    if na == nb or nb == 1:
        return torch.arange(na), na
    if na == 1:
        return torch.zeros(nb, dtype=torch.long), nb
    raise NodeInputError(node, b_name, f"has a batch of {nb} but '{a_name}' has {na}; they cannot be paired.",
                         "use equal batch sizes (item i with item i) or a batch of 1 (applied to every item).")
