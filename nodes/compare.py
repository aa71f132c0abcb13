"""Before/after comparison: the pairs the frontend's compare widget (js/transedit.js) shows on a node, and
a Compare node for any two images."""
from __future__ import annotations

from typing import Optional

import torch

from . import comfy_bridge as bridge
from .inputs import NodeInputError, check_images

UI_KEY = "transedit_compare"  # the key the js extension looks for in a node's "executed" message
MAX_PAIRS = 4  # previews written per execution: the widget shows one pair at a time


def pair_indices(n_before: int, n_after: int) -> Optional[list[int]]:
    """For each result, which input it came from: one to one, one input for all, or image-major groups
    (k results per input, e.g. PUT's samples or a latent sweep); None when the batches do not line up."""
    if n_before <= 0 or n_after <= 0:
        return None
    if n_before == n_after:
        return list(range(n_after))
    if n_before == 1:
        return [0] * n_after
    if n_after % n_before == 0:
        k = n_after // n_before
        return [i // k for i in range(n_after)]
    return None


def compare_ui(before: Optional[torch.Tensor], after: torch.Tensor, label_before: str = "before",
               label_after: str = "after", always: bool = False) -> Optional[dict]:
    """Frontend data for up to MAX_PAIRS (before, after) pairs (written as temp PNGs), or None when there is
    nothing to compare. Only inside ComfyUI unless `always` (nobody would look at them elsewhere)."""
    if before is None or not isinstance(before, torch.Tensor) or before.ndim != 4:
        return None
    if not (bridge.IN_COMFYUI or always):
        return None
    index = pair_indices(before.shape[0], after.shape[0])
    if index is None:
        return None
    n = min(MAX_PAIRS, after.shape[0])
    sources = sorted(set(index[:n]))
    before_refs = dict(zip(sources, bridge.save_temp_images(before[sources][..., :3], "compare_before")))
    after_refs = bridge.save_temp_images(after[:n][..., :3], "compare_after")
    pairs = [{"before": before_refs[index[i]], "after": after_refs[i]} for i in range(n)]
    return {UI_KEY: [{"labels": [label_before, label_after], "pairs": pairs, "total": int(after.shape[0])}]}


class TransEditCompare:
    DESCRIPTION = ("Shows two images with a divider you drag across them (e.g. the photo and its inversion or "
                   "edit). Batches: pairs, or one 'before' for all 'after' images.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "before": ("IMAGE", {"tooltip": "Left of the divider (e.g. the input photo)."}),
            "after": ("IMAGE", {"tooltip": "Right of the divider (e.g. the result)."}),
        }}

    RETURN_TYPES = ()
    RETURN_NAMES = ()
    OUTPUT_TOOLTIPS = ()
    FUNCTION = "compare"
    OUTPUT_NODE = True
    CATEGORY = "TransEdit/Utils"
    SEARCH_ALIASES = ["before after", "image compare", "split view", "slider compare"]

    def compare(self, before, after):
        node = "TransEdit Compare"
        before = check_images(node, "before", before, min_size=1)
        after = check_images(node, "after", after, min_size=1)
        if pair_indices(before.shape[0], after.shape[0]) is None:
            raise NodeInputError(node, "after", f"has {after.shape[0]} images for {before.shape[0]} 'before' "
                                 "images.", "give pairs, one 'before' image, or k results per 'before' image.")
        return {"ui": compare_ui(before, after, always=True), "result": ()}


NODE_CLASS_MAPPINGS = {"TransEditCompare": TransEditCompare}
NODE_DISPLAY_NAME_MAPPINGS = {"TransEditCompare": "TransEdit Compare (before/after)"}
