"""Pluralistic inpaint stage: PUT fills the masked region of any image, several different ways."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..models.put.transformer import PUTTransformer
from ..models.put.sampling import SamplerRNG, SamplingState, sample_tokens, step_counts
from ..models.registry import PUTDescriptor, load_put
from . import comfy_bridge as bridge
from .chunks import run_in_chunks
from .compare import compare_ui
from .handles import ModelHandle, load_handle
from .images import comfy_image_to_pil
from .inputs import MAX_SEED, NodeInputError, check_choice, check_float, check_images, check_int
from .precision import PRECISIONS, auto_tooltip, resolve_precision

CATEGORY = "TransEdit/Inpaint"
SCHEDULES = ("tokens per iteration", "cosine", "linear", "average")
ORDERS = ("most confident first (official)", "raster")
OUTPUT_MODES = ("crop around mask", "whole image")
MASK_THRESHOLD = 0.5  # soft masks: > 0.5 is a hole
MAX_SAMPLES = 32


class PUTHandle(ModelHandle):
    """What flows on a TE_PUT wire: the transformer with its P-VQVAE (a PUTDescriptor)."""

    @property
    def image_size(self) -> tuple[int, int]:
        return self.descriptor.model.image_size

    @property
    def patch_size(self) -> int:
        return self.descriptor.model.patch_size

    def __repr__(self) -> str:
        return f"PUT({self.name}, {self.config.version}, {self.image_size[0]}px)"


# --------------------------------------------------------------------------------------- mask helpers
def comfy_mask_to_holes(node: str, mask, images: torch.Tensor) -> torch.Tensor:
    """ComfyUI MASK (1 = inpaint) -> bool holes [B, H, W]; the one place the convention is converted
    (PUT itself uses 1 = known). Soft values are thresholded at 0.5; a [B, H, W, C] mask uses channel 0."""
    if not isinstance(mask, torch.Tensor):
        raise NodeInputError(node, "mask", f"must be a MASK, got {type(mask).__name__}.",
                             "connect a mask (e.g. Load Image's MASK output).")
    m = mask.detach().to("cpu", torch.float32)  # like check_images: any device in, CPU out
    if m.ndim == 4 and m.shape[1] == 1 and m.shape[-1] > 4:
        m = m[:, 0]  # [B, 1, H, W]
    elif m.ndim == 4 and m.shape[-1] <= 4:
        m = m[..., 0]  # an image-like mask [B, H, W, C]: its first channel
    if m.ndim == 2:
        m = m.unsqueeze(0)
    if m.ndim != 3:
        raise NodeInputError(node, "mask", f"must be [B, H, W], got {tuple(mask.shape)}.")
    b, h, w = images.shape[:3]
    if tuple(m.shape[1:]) != (h, w):
        raise NodeInputError(node, "mask", f"is {m.shape[2]}x{m.shape[1]} but the image is {w}x{h}.",
                             "use a mask made for this image (or resize it with core 'Upscale/Resize' nodes).")
    if m.shape[0] not in (1, b):
        raise NodeInputError(node, "mask", f"has {m.shape[0]} masks for {b} images.",
                             "give one mask for all images or one per image.")
    return torch.nan_to_num(m, nan=0.0).expand(b, h, w) > MASK_THRESHOLD


def _context_window(hole: torch.Tensor, context: float, min_side: int) -> tuple[int, int, int]:
    """Square window (top, left, side) around the holes' bounding box, `context` x its size on each side,
    at least `min_side` (the model's resolution) so small holes are not upscaled."""
    ys, xs = torch.nonzero(hole, as_tuple=True)
    y0, y1, x0, x1 = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
    side = max(y1 - y0, x1 - x0)
    side = max(int(math.ceil(side * (1 + 2 * context))), min_side)
    cy, cx = (y0 + y1) / 2, (x0 + x1) / 2
    return int(round(cy - side / 2)), int(round(cx - side / 2)), side


def _crop_padded(x: torch.Tensor, top: int, left: int, side: int) -> torch.Tensor:
    """x [C, H, W] -> [C, side, side] window, replicate-padded where it leaves the image."""
    _, h, w = x.shape
    pad = (max(0, -left), max(0, left + side - w), max(0, -top), max(0, top + side - h))
    if any(pad):
        x = F.pad(x.unsqueeze(0), pad, mode="replicate")[0]
        top, left = top + pad[2], left + pad[0]
    return x[:, top:top + side, left:left + side]


def _feather(hole: torch.Tensor, radius: int) -> torch.Tensor:
    """Binary hole [H, W] -> compositing alpha: 1 on every hole pixel, falling linearly to 0 over `radius`
    pixels outside it (chessboard distance), 0 beyond. Only the holes' neighbourhood is computed."""
    alpha = hole.float()
    if radius <= 0 or not bool(hole.any()):
        return alpha
    ys, xs = torch.nonzero(hole, as_tuple=True)
    h, w = hole.shape
    y0, y1 = max(int(ys.min()) - radius, 0), min(int(ys.max()) + radius + 1, h)
    x0, x1 = max(int(xs.min()) - radius, 0), min(int(xs.max()) + radius + 1, w)
    grown = alpha[y0:y1, x0:x1][None, None]
    total = grown.clone()
    for _ in range(radius):  # after j dilations a pixel is covered iff it is within distance j
        grown = F.max_pool2d(grown, 3, stride=1, padding=1)
        total += grown
    alpha[y0:y1, x0:x1] = (total / (radius + 1))[0, 0]
    return alpha


def _holes_at(hole: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize a hole mask so that holes never shrink: a target pixel is a hole if any source pixel is."""
    h = hole.float()[None, None]
    if tuple(h.shape[-2:]) == tuple(size):
        return hole
    if size[0] <= h.shape[-2]:  # downscale: any hole in the footprint
        return F.adaptive_max_pool2d(h, size)[0, 0] > 0
    return F.interpolate(h, size=size, mode="nearest")[0, 0] > 0


def _iterations(version: str, plan, n_unknown: int, raster: bool, seq: int) -> int:
    """How many transformer passes sampling will make (all samples share the mask)."""
    if n_unknown == 0:
        return 1
    if version == "tpami2024":
        return max(1, len(step_counts(n_unknown, plan, seq)))
    if raster:
        return n_unknown
    if plan == -1 or plan >= seq:
        return 1
    return math.ceil(n_unknown / plan)


class TransEditLoadPUT:
    DESCRIPTION = ("Loads a PUT inpainting transformer (CVPR 2022 or TPAMI 2024) from models/put: the official "
                   "training checkpoint (last.pth; it contains the P-VQVAE) or a safetensors of its state dict. "
                   "EMA weights are used when present.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "put_name": (bridge.list_models("put"), {
                "tooltip": "Transformer checkpoint in ComfyUI/models/put. Heads etc. come from a config.yaml "
                           "beside it (<name>.yaml or the official configs/config.yaml) when present."}),
        }}

    RETURN_TYPES = ("TE_PUT", "STRING")
    RETURN_NAMES = ("put", "info")
    OUTPUT_TOOLTIPS = ("The PUT model, for PUT Inpaint.",
                       "What was loaded: version, sizes, the weights used, and which config.yaml set which values "
                       "(or why none was used). Wire it to a text display node to read it.")
    FUNCTION = "load"
    CATEGORY = CATEGORY
    SEARCH_ALIASES = ["inpainting model", "put transformer"]

    def load(self, put_name):
        node = "TransEdit Load PUT"
        put = load_handle(node, "put_name", "put", put_name, load_put, PUTHandle)
        return (put, put_info(put.descriptor))


def put_info(descriptor: PUTDescriptor) -> str:
    c = descriptor.config
    codec = descriptor.model.content_codec.config
    lines = [f"{descriptor.name}: PUT {c.version}, {c.n_layer} layers, width {c.dim}, {c.n_head} heads, "
             f"{c.activation}, tokens {c.token_shape[0]}x{c.token_shape[1]} of {codec.patch_size}px patches, "
             f"codebook {codec.n_e} (split at {codec.masked_embed_start}), weights '{descriptor.weights}'",
             f"image normalisation: (x / {list(codec.im_scale)} - {list(codec.im_mean)}) / {list(codec.im_std)}; "
             f"decoder up-sampling {codec.upsample}; known pixels pasted back: {c.combine_rec_and_gt}"]
    return "\n".join(lines + list(descriptor.notes))


class TransEditPUTInpaint:
    DESCRIPTION = ("PUT pluralistic inpainting: fills the masked region num_samples different ways. The area "
                   "around the mask is cut out, filled at the model's resolution and pasted back (only the "
                   "masked pixels change, with a feathered edge), so any image size works.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "put": ("TE_PUT", {"tooltip": "From TransEdit Load PUT."}),
            "images": ("IMAGE", {"tooltip": "Images to fill (any size)."}),
            "mask": ("MASK", {"tooltip": "1 = fill (ComfyUI's convention; e.g. painted in the mask editor). Soft "
                                         "masks are thresholded at 0.5. One mask for all images or one each."}),
            "num_samples": ("INT", {"default": 4, "min": 1, "max": MAX_SAMPLES,
                                    "tooltip": "Different fills per image (run together as one batch)."}),
            "seed": ("INT", {"default": 0, "min": 0, "max": MAX_SEED,
                             "tooltip": "Fill i of image b uses seed + b*num_samples + i: reproducible, "
                                        "independent of how many samples are asked for, and drawn on the CPU, so "
                                        "the same fill on every device (up to near-ties between two codes)."}),
            "schedule": (list(SCHEDULES), {"default": SCHEDULES[0],
                                           "tooltip": "tokens per iteration: a fixed count each iteration (the "
                                                      "official CVPR sampling); cosine / linear / average: the "
                                                      "TPAMI 2024 schedules over `iterations` steps."}),
            "tokens_per_iter": ("INT", {"default": 1, "min": 0, "max": 4096,
                                        "tooltip": "Tokens filled per transformer pass (1 = the paper's quality, "
                                                   "slowest; 0 = all at once)."}),
            "iterations": ("INT", {"default": 20, "min": 1, "max": 4096,
                                   "tooltip": "Number of passes for the cosine / linear / average schedules "
                                              "(TPAMI models only)."}),
            "top_k": ("INT", {"default": 50, "min": 1, "max": 16384,
                              "tooltip": "Sample each token among its k most likely codes (1 = deterministic, "
                                         "every sample the same; larger = more variety)."}),
            "temperature": ("FLOAT", {"default": 1.0, "min": 0.05, "max": 10.0, "step": 0.05,
                                      "tooltip": "Higher = more random within the top k."}),
            "order": (list(ORDERS), {"default": ORDERS[0],
                                     "tooltip": "Which unknown tokens to fill first."}),
            "output_mode": (list(OUTPUT_MODES), {"default": OUTPUT_MODES[0],
                                                 "tooltip": "crop around mask: fill a square window around the "
                                                            "holes at the model's resolution (keeps detail); "
                                                            "whole image: resize the whole image to the model."}),
            "context": ("FLOAT", {"default": 0.5, "min": 0.0, "max": 4.0, "step": 0.05,
                                  "tooltip": "Extra context around the holes' bounding box, as a fraction of its "
                                             "size on each side (crop mode)."}),
            "feather": ("INT", {"default": 8, "min": 0, "max": 256,
                                "tooltip": "Pixels over which the fill blends into the original outside the "
                                           "mask (holes themselves are always fully replaced)."}),
            "precision": (list(PRECISIONS), {"default": "auto",
                                             "tooltip": auto_tooltip(PUTTransformer.PRECISION)
                                             + " (For the transformer; sampling is fp32.)"}),
        }}

    RETURN_TYPES = ("IMAGE", "MASK")
    RETURN_NAMES = ("images", "mask")
    OUTPUT_TOOLTIPS = ("num_samples fills per image, image-major [B*num_samples, H, W, 3].",
                       "The filled region (1 = filled) per output image, for a diffusion inpaint pass.")
    FUNCTION = "inpaint"
    CATEGORY = CATEGORY
    SEARCH_ALIASES = ["inpaint", "fill holes", "remove object", "pluralistic inpainting", "object removal"]
    HAS_INTERMEDIATE_OUTPUT = True  # 0.33: a cached run still shows its before/after pictures

    def inpaint(self, put, images, mask, num_samples, seed, schedule, tokens_per_iter, iterations, top_k,
                temperature, order, output_mode, context, feather, precision):
        node = "TransEdit PUT Inpaint"
        if not isinstance(put, PUTHandle):
            raise NodeInputError(node, "put", f"must be a TE_PUT, got {type(put).__name__}.",
                                 "connect TransEdit Load PUT.")
        patch = put.patch_size
        images = check_images(node, "images", images, min_size=1)
        holes = comfy_mask_to_holes(node, mask, images)
        num_samples = check_int(node, "num_samples", num_samples, 1, MAX_SAMPLES)
        seed = check_int(node, "seed", seed, 0, MAX_SEED)
        schedule = check_choice(node, "schedule", schedule, SCHEDULES)
        tokens_per_iter = check_int(node, "tokens_per_iter", tokens_per_iter, 0, 4096)
        iterations = check_int(node, "iterations", iterations, 1, 4096)
        top_k = check_int(node, "top_k", top_k, 1, 16384)
        temperature = check_float(node, "temperature", temperature, 0.05, 10.0)
        order = check_choice(node, "order", order, ORDERS)
        output_mode = check_choice(node, "output_mode", output_mode, OUTPUT_MODES)
        context = check_float(node, "context", context, 0.0, 4.0)
        feather = check_int(node, "feather", feather, 0, 256)
        precision = check_choice(node, "precision", precision, PRECISIONS)
        version = put.config.version
        if schedule != SCHEDULES[0]:
            if version != "tpami2024":
                raise NodeInputError(node, "schedule", f"'{schedule}' is a TPAMI 2024 schedule; '{put.name}' is a "
                                     "CVPR 2022 model.", "use 'tokens per iteration' with this model.")
            plan = f"{schedule}_{iterations}"
        else:
            plan = -1 if tokens_per_iter == 0 else tokens_per_iter
        raster = order == ORDERS[1]
        if raster and version == "cvpr2022" and plan != 1:
            raise NodeInputError(node, "order", "raster order fills one token per iteration with a CVPR 2022 model.",
                                 "set tokens_per_iter to 1, or use the official order.")

        model = put.load()
        device = next(model.parameters()).device
        dtype = resolve_precision(precision, device, put.precision)
        size = model.image_size
        b = images.shape[0]
        # windows first (cheap), so one progress bar can cover every sampling pass of the whole batch
        jobs = []  # per image: one window per group of nearby holes
        for i in range(b):
            if not bool(holes[i].any()):
                bridge.log.warning("%s: image %d has an empty mask; it is returned unchanged", node, i)
                jobs.append([])
                continue
            groups = _hole_groups(holes[i], context, min(size)) if output_mode == OUTPUT_MODES[0] else [holes[i]]
            image_jobs = []
            for group in groups:
                job = _prepare_window(images[i], group, size, output_mode, context)
                unknown = int(F.max_pool2d(1 - job["known"], patch).sum())  # patches with any hole pixel
                job["passes"] = _iterations(version, plan, unknown, raster,
                                            (size[0] // patch) * (size[1] // patch))
                job["hole"] = group
                image_jobs.append(job)
            jobs.append(image_jobs)
        progress = bridge.Progress(sum(j["passes"] for image_jobs in jobs for j in image_jobs))
        out_images, out_masks = [], []
        for i, image_jobs in enumerate(jobs):
            bridge.check_interrupt()
            out = images[i].permute(2, 0, 1).unsqueeze(0).expand(num_samples, -1, -1, -1).clone()
            for job in image_jobs:
                first_seed = seed + i * num_samples

                def fill(s0: int, s1: int, job=job, first_seed=first_seed) -> torch.Tensor:
                    # sample k always uses seed first_seed + k, so a retry in smaller chunks draws the same
                    # fills; the progress bar follows the first chunk only (every chunk makes the same passes)
                    return self._fill(model, job, s1 - s0, first_seed + s0, plan, top_k, temperature, raster,
                                      dtype, device, progress if s0 == 0 else None)

                fills = torch.cat(run_in_chunks(node, num_samples, num_samples, fill, what="filling one sample",
                                                advice="use precision bf16/fp16, or free GPU memory held by "
                                                       "other programs.", keep=(put.managed,)), 0)
                _paste_into(out, job, fills, feather)
            out_images.append(out.permute(0, 2, 3, 1).contiguous())
            out_masks.append(holes[i].float().expand(num_samples, -1, -1))
        inter = bridge.intermediate_device()
        filled = torch.cat(out_images, 0)
        return bridge.with_ui((filled.to(inter), torch.cat(out_masks, 0).to(inter)),
                              compare_ui(images, filled, "input", "PUT fill"))

    @staticmethod
    def _fill(model, job, n, seed, plan, top_k, temperature, raster, dtype, device, progress):
        """n fills of one prepared window -> [n, 3, S, S] in 0..1 at the model's resolution (CPU)."""
        # CPU generators: a seed picks the same fill on every device (docs/precision-and-gpu.md: Seeds); the noise is moved in one copy
        gens = [torch.Generator().manual_seed((seed + k) % (MAX_SEED + 1)) for k in range(n)]
        codec = model.content_codec
        combine = model.config.combine_rec_and_gt
        xs = job["pixels"].to(device).expand(n, -1, -1, -1)
        ms = job["known"].to(device).expand(n, -1, -1, -1)
        preview_every = max(1, job["passes"] // 8)
        with torch.inference_mode():
            data = codec.get_features(xs, ms)

            def on_iteration(state: SamplingState):
                bridge.check_interrupt()  # Cancel: stops within one iteration
                if progress is None:
                    return
                preview = None
                if state.iteration % preview_every == 0:  # the current fill of sample 0
                    current = codec.decode(state.tokens[:1], xs[:1], ms[:1], combine_rec_and_gt=combine)
                    preview = comfy_image_to_pil((current[0].float() / 255.0).clamp(0, 1).permute(1, 2, 0))
                progress.update(1, preview=preview)

            tokens = sample_tokens(model, data["feature"], data["token"], data["token_type"], data["unmask_ratio"],
                                   schedule=plan, top_k=top_k, logit_scale=1.0 / temperature, raster=raster,
                                   rng=SamplerRNG(gens),
                                   on_iteration=on_iteration,
                                   autocast_dtype=None if dtype == torch.float32 else dtype)
            filled = codec.decode(tokens, xs, ms, combine_rec_and_gt=combine)
        return (filled.float() / 255.0).clamp(0, 1).cpu()


def _prepare_window(image: torch.Tensor, hole: torch.Tensor, size: tuple[int, int], output_mode: str,
                    context: float) -> dict:
    """The square window PUT sees: image [H, W, 3] 0..1 and hole [H, W] -> pixels [1, 3, S, S] 0..255 and
    known [1, 1, S, S] (PUT's 1 = known) at the model's resolution S, plus where the window sits."""
    h, w = hole.shape
    chw = image.permute(2, 0, 1)
    if output_mode == OUTPUT_MODES[0]:
        top, left, side = _context_window(hole, context, min(size))
    else:
        side = max(h, w)
        top, left = (h - side) // 2, (w - side) // 2
    win = _crop_padded(chw, top, left, side)
    win_hole = _crop_padded(hole[None].float(), top, left, side)[0] > 0.5
    pixels = F.interpolate(win[None], size=size, mode="bilinear", align_corners=False,
                           antialias=side > size[0]).clamp(0, 1) * 255.0
    known = (~_holes_at(win_hole, size)).float()[None, None]
    return dict(pixels=pixels, known=known, top=top, left=left, side=side)


def _paste_into(out: torch.Tensor, job: dict, fills: torch.Tensor, feather: int) -> None:
    """Resize a window's fills back and composite them into out [n, 3, H, W] where the window's (feathered)
    hole is. Pixels outside the hole and its feather band keep exactly the input's values."""
    hole = job["hole"]
    h, w = hole.shape
    top, left, side = job["top"], job["left"], job["side"]
    back = F.interpolate(fills, size=(side, side), mode="bilinear", align_corners=False,
                         antialias=side < fills.shape[-1])
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + side, h), min(left + side, w)
    alpha = _feather(hole, feather)[y0:y1, x0:x1]
    region = out[:, :, y0:y1, x0:x1]
    out[:, :, y0:y1, x0:x1] = region * (1 - alpha) + back[:, :, y0 - top:y1 - top, x0 - left:x1 - left] * alpha


def _hole_groups(hole: torch.Tensor, context: float, min_side: int) -> list[torch.Tensor]:
    """Split the holes [H, W] into groups that are filled in separate windows: connected holes (8-neighbour,
    found on a <= 256 px grid) whose context windows overlap are merged, so far-apart holes on a large photo
    each get a window at full detail, while nearby holes are filled together and see each other."""
    h, w = hole.shape
    f = max(1, math.ceil(max(h, w) / 256))
    low = F.max_pool2d(hole.float()[None, None], f, f, ceil_mode=True)[0, 0] > 0
    labels = torch.where(low, torch.arange(1, low.numel() + 1, dtype=torch.float32).view(low.shape), 0.0)
    while True:  # label propagation: every pixel of a component ends with the component's largest index
        grown = F.max_pool2d(labels[None, None], 3, stride=1, padding=1)[0, 0] * low
        if torch.equal(grown, labels):
            break
        labels = grown
    full = labels.repeat_interleave(f, 0).repeat_interleave(f, 1)[:h, :w]
    groups = [hole & (full == v) for v in labels.unique() if v > 0]

    def overlap(a, b):
        (ta, la, sa), (tb, lb, sb) = a, b
        return ta < tb + sb and tb < ta + sa and la < lb + sb and lb < la + sa

    merged = True
    while merged and len(groups) > 1:
        merged = False
        windows = [_context_window(g, context, min_side) for g in groups]
        for i in range(len(groups)):
            j = next((j for j in range(i + 1, len(groups)) if overlap(windows[i], windows[j])), None)
            if j is not None:
                groups[i] = groups[i] | groups.pop(j)
                merged = True
                break
    return groups


NODE_CLASS_MAPPINGS = {
    "TransEditLoadPUT": TransEditLoadPUT,
    "TransEditPUTInpaint": TransEditPUTInpaint,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "TransEditLoadPUT": "TransEdit Load PUT",
    "TransEditPUTInpaint": "TransEdit PUT Inpaint (pluralistic)",
}
