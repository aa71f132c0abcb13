"""StyleGAN stage: load a generator, sample latents, synthesise images."""
from __future__ import annotations

import torch

from ..models.latent import StyleLatent
from ..models.registry import StyleGAN2Descriptor, load_stylegan2
from . import comfy_bridge as bridge
from .compare import compare_ui
from .common import (MAX_SEED, PRECISIONS, NodeInputError, check_choice, check_float, check_int,
                     comfy_image_to_pil, gan_to_comfy_image, load_model_file, precision_policy, resolve_precision,
                     run_in_chunks)

CATEGORY = "TransEdit/StyleGAN"
MAX_BATCH = 64
NOISE_MODES = ("const", "random", "none")


class StyleGANHandle:
    """What flows on a TE_STYLEGAN wire: the loaded generator, managed by ComfyUI's memory manager."""

    def __init__(self, descriptor: StyleGAN2Descriptor):
        self.descriptor = descriptor
        self.managed = bridge.ManagedModel(descriptor.model)

    @property
    def config(self):
        return self.descriptor.config

    @property
    def name(self) -> str:
        return self.descriptor.name

    def load(self):
        return self.managed.load()

    def check_latent(self, latent, node: str, input_name: str = "latent") -> StyleLatent:
        if not isinstance(latent, StyleLatent):
            raise NodeInputError(node, input_name, f"must be a TE_LATENT, got {type(latent).__name__}.",
                                 "connect the output of a TransEdit latent node.")
        cfg = self.config
        if latent.n_latent != cfg.n_latent or latent.style_dim != cfg.style_dim:
            raise NodeInputError(
                node, input_name,
                f"holds W+ of shape [{latent.n_latent}, {latent.style_dim}] from '{latent.generator_name or '?'}', "
                f"but generator '{self.name}' needs [{cfg.n_latent}, {cfg.style_dim}].",
                "connect a latent made with this generator, or load the generator the latent came from.")
        if latent.generator and latent.generator != self.descriptor.fingerprint:
            bridge.log.warning("%s: latent was made with '%s', generating with '%s' (same shape, allowed)",
                               node, latent.generator_name, self.name)
        return latent

    def __repr__(self) -> str:
        c = self.config
        return f"StyleGAN2({self.name}, {c.size}px, W+ {c.n_latent}x{c.style_dim})"


def _check_generator(node: str, generator) -> StyleGANHandle:
    if generator is None:
        raise NodeInputError(node, "generator", "is empty: the encoder file it came from holds no StyleGAN2 "
                             "generator.", "load the generator with 'TransEdit Load StyleGAN'.")
    if not isinstance(generator, StyleGANHandle):
        raise NodeInputError(node, "generator", f"must be a TE_STYLEGAN, got {type(generator).__name__}.",
                             "connect the output of 'TransEdit Load StyleGAN'.")
    return generator


class TransEditLoadStyleGAN:
    DESCRIPTION = ("Loads a StyleGAN2 generator from models/stylegan: rosinality .pt (pSp/e4e/Style "
                   "Transformer/StylePrompter checkpoints included), NVlabs StyleGAN2-ADA .pkl, or TransEdit "
                   ".safetensors. Size, widths and latent shape are read from the weights.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "ckpt_name": (bridge.list_models("stylegan"), {
                "tooltip": "Generator weights in ComfyUI/models/stylegan (e.g. stylegan2-ffhq-config-f.pt). "
                           "Pickles are read without running any code from them."}),
        }}

    RETURN_TYPES = ("TE_STYLEGAN",)
    RETURN_NAMES = ("generator",)
    OUTPUT_TOOLTIPS = ("The generator, for Sample Latent / Generate and the inversion and edit nodes.",)
    FUNCTION = "load"
    CATEGORY = CATEGORY
    SEARCH_ALIASES = ["stylegan2", "gan loader", "load gan"]

    def load(self, ckpt_name):
        node = "TransEdit Load StyleGAN"
        descriptor = load_model_file(node, "ckpt_name", "stylegan", ckpt_name, load_stylegan2)
        for note in descriptor.notes:
            bridge.log.info("TransEdit: %s: %s", descriptor.name, note)
        return (StyleGANHandle(descriptor),)


class TransEditSampleLatent:
    DESCRIPTION = ("Draws random W+ latents: z ~ N(0, I) per image (seed + index, so image i is the same "
                   "whatever the batch size), mapped to W and pulled toward the mean by truncation.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "generator": ("TE_STYLEGAN", {"tooltip": "The generator whose mapping network and W mean are used."}),
            "seed": ("INT", {"default": 0, "min": 0, "max": MAX_SEED,
                             "tooltip": "Image i of the batch uses seed + i (drawn on the CPU: the same latents "
                                        "on every device)."}),
            "batch_size": ("INT", {"default": 1, "min": 1, "max": MAX_BATCH,
                                   "tooltip": "How many latents to draw."}),
            "truncation": ("FLOAT", {"default": 0.7, "min": 0.0, "max": 1.0, "step": 0.01,
                                     "tooltip": "1 = full variety, lower = closer to the average image "
                                                "(more typical, fewer artefacts), 0 = the average image."}),
        }}

    RETURN_TYPES = ("TE_LATENT",)
    RETURN_NAMES = ("latent",)
    OUTPUT_TOOLTIPS = ("W+ latents [batch, n_latent, style_dim] for Generate and the edit nodes.",)
    FUNCTION = "sample"
    CATEGORY = CATEGORY
    SEARCH_ALIASES = ["random face", "random latent", "stylegan seed"]

    def sample(self, generator, seed, batch_size, truncation):
        node = "TransEdit Sample Latent"
        generator = _check_generator(node, generator)
        seed = check_int(node, "seed", seed, 0, MAX_SEED)
        batch_size = check_int(node, "batch_size", batch_size, 1, MAX_BATCH)
        truncation = check_float(node, "truncation", truncation, 0.0, 1.0)
        cfg = generator.config
        z = torch.stack([torch.randn(cfg.input_dim, generator=torch.Generator().manual_seed((seed + i) % (MAX_SEED + 1)))
                         for i in range(batch_size)])
        module = generator.load()
        device = next(module.parameters()).device
        with torch.inference_mode():
            w = module.mapping(z.to(device)).float().cpu()
        w_avg = generator.descriptor.latent_avg.reshape(1, -1).float()
        w = w_avg + truncation * (w - w_avg)
        wplus = w.unsqueeze(1).repeat(1, cfg.n_latent, 1)
        return (StyleLatent(wplus=wplus, generator=generator.descriptor.fingerprint,
                            generator_name=generator.name,
                            extras={"seed": seed, "truncation": truncation}),)


class TransEditGenerate:
    DESCRIPTION = "Synthesises images from W+ latents with a StyleGAN2 generator."

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "generator": ("TE_STYLEGAN", {"tooltip": "The generator the latents belong to."}),
            "latent": ("TE_LATENT", {"tooltip": "W+ latents from Sample Latent, an inversion or an edit node."}),
            "noise_mode": (list(NOISE_MODES), {"default": "const",
                                               "tooltip": "const: the checkpoint's fixed noise (reproducible, "
                                                          "what the papers use); random: fresh per-pixel noise "
                                                          "(seeded); none: no noise (smoother texture)."}),
            "noise_seed": ("INT", {"default": 0, "min": 0, "max": MAX_SEED,
                                   "tooltip": "Seed for noise_mode=random; image i uses noise_seed + i (drawn on "
                                              "the CPU: the same noise on every device)."}),
            "precision": (list(PRECISIONS), {"default": "auto",
                                             "tooltip": "auto: fp16 on a GPU (measured closest to fp32 for the "
                                                        "generator, overflow-guarded), fp32 on a CPU. fp32 is "
                                                        "bit-faithful to the official code."}),
        }}

    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("images",)
    OUTPUT_TOOLTIPS = ("RGB images [batch, size, size, 3] in 0..1.",)
    FUNCTION = "generate"
    CATEGORY = CATEGORY
    SEARCH_ALIASES = ["stylegan render", "latent to image", "gan synthesis"]
    HAS_INTERMEDIATE_OUTPUT = True  # 0.33: a cached run still shows its before/after pictures

    # Images per forward pass to start with (halved on out-of-memory). None = by device: measured on
    # 2 CPU cores, batch 1 is ~1.3x faster per image than batch 8 (cache locality); GPUs want batches.
    chunk_size = None

    def generate(self, generator, latent, noise_mode, noise_seed, precision):
        node = "TransEdit Generate"
        generator = _check_generator(node, generator)
        latent = generator.check_latent(latent, node)
        noise_mode = check_choice(node, "noise_mode", noise_mode, NOISE_MODES)
        noise_seed = check_int(node, "noise_seed", noise_seed, 0, MAX_SEED)
        precision = check_choice(node, "precision", precision, PRECISIONS)
        if not torch.isfinite(latent.wplus).all():
            raise NodeInputError(node, "latent", "contains NaN or infinite values.",
                                 "check the node that produced it (e.g. an edit strength that is too large).")

        out, _ = render_latents(node, generator, latent, noise_mode=noise_mode, noise_seed=noise_seed,
                                precision=precision, chunk=self.chunk_size)
        # inverted latents remember their photos: the frontend shows photo | result with a divider
        return bridge.with_ui((out,), compare_ui(latent.extras.get("source_images"), out, "photo", "generated"))


def _smart_for(node, generator, latent):
    """(SMART module on the device, betas) when the latent went through SMART Refine, else None."""
    smart = latent.extras.get("smart")
    if smart is None:
        return None
    feats = latent.extras.get("smart_features")
    if not feats or len(feats) != latent.batch_size:
        raise NodeInputError(node, "latent", "is marked for SMART refinement but lost its encoder features.",
                             "connect SMART Refine after the edit nodes, or re-run Invert.")
    handle = smart["handle"]
    need, have = handle.config.q_channel, generator.config.channels.get(16)
    if have != need:
        raise NodeInputError(node, "generator", f"'{generator.name}' has a {have}-channel 16x16 feature but the "
                             f"SMART block from '{handle.name}' refines a {need}-channel one.",
                             "render the refined latent with the generator from the same StylePrompter checkpoint.")
    return handle, smart["beta"]


def render_latents(node: str, generator: StyleGANHandle, latent: StyleLatent, *, wplus=None, items=None,
                   noise_mode: str = "const", noise_seed: int = 0, precision: str = "auto", chunk=None,
                   max_resolution=None, preview_resolution=None, progress: bool = True,
                   progress_images: bool = True, cancel_each_layer: bool = False, cancel=None):
    """The one way the pack turns W+ into pictures (Generate, Edit Studio's queue run and its live preview).

    wplus: the codes to render (default latent.wplus), one per latent item (SMART features, noise seeds and
    source images follow the item); items: which items (default all). max_resolution stops the generator at
    that resolution (a cheap preview); preview_resolution also returns the skip RGB at that resolution of the
    same run. Out of memory and Cancel as run_in_chunks; cancel_each_layer also checks Cancel after every
    layer (a live preview answers Cancel at once); `cancel` replaces ComfyUI's Cancel check (a preview, which runs
    beside the queue, must never consume the prompt worker's flag). progress_images: show each chunk's first image on the node
    while it runs (off where the node draws its own picture). Returns (IMAGE [n, H, W, 3], previews IMAGE or None)."""
    wplus = latent.wplus if wplus is None else wplus
    items = list(range(wplus.shape[0])) if items is None else list(items)
    smart = _smart_for(node, generator, latent)
    smart_module = smart[0].load() if smart is not None else None
    module = generator.load()
    device = next(module.parameters()).device
    dtype = resolve_precision(precision, device, precision_policy(module))
    bar = bridge.Progress(len(items)) if progress else None
    check = cancel or bridge.check_interrupt

    def render(start: int, stop: int):
        chosen = items[start:stop]
        hooks = []
        if smart is not None:  # StylePrompter's SMART refines layer 4 with these items' encoder features
            feats = [latent.extras["smart_features"][i] for i in chosen]
            levels = [torch.stack([f[level] for f in feats]).to(device) for level in range(len(feats[0]))]
            hooks.append(smart_module.hook(levels, beta=smart[1]))
        if cancel_each_layer:
            hooks.append(lambda layer, x: check())
        captured = {}

        def capture(res, rgb):
            if res == preview_resolution:
                captured["rgb"] = rgb.float()

        images = _synthesise(module, wplus[chosen], device, dtype, noise_mode, [noise_seed + i for i in chosen],
                             _chain(hooks), max_resolution, capture if preview_resolution else None)
        if bar is not None:
            bar.update(stop - start, preview=comfy_image_to_pil(images[0]) if progress_images else None)
        return images, (gan_to_comfy_image(captured["rgb"]) if captured else None)

    keep = (generator.managed,) + ((smart[0].managed,) if smart is not None else ())
    size = max_resolution or generator.config.size
    results = run_in_chunks(node, len(items), chunk or (1 if device.type == "cpu" else 8), render,
                            what=f"generating one {size}px image",
                            advice="use precision bf16/fp16, or free GPU memory held by other programs.",
                            keep=keep, cancel=check)
    images = torch.cat([r[0] for r in results], 0)
    previews = torch.cat([r[1] for r in results], 0) if preview_resolution else None
    return images, previews


def _chain(hooks):
    """Several feature hooks as one (each sees what the one before returned); None when there are none."""
    if not hooks:
        return None
    if len(hooks) == 1:
        return hooks[0]

    def chained(layer, x):
        for hook in hooks:
            replaced = hook(layer, x)
            if replaced is not None:
                x = replaced
        return x

    return chained


def _synthesise(module, wplus, device, dtype, noise_mode, seeds, feature_hook=None, max_resolution=None,
                rgb_hook=None):
    """seeds: one noise seed per image (used by noise_mode "random")."""
    noise = None
    if noise_mode == "random":  # per image, drawn on the CPU: same picture on every device
        per_image = [module.make_noise(1, "random", seed=seed % (MAX_SEED + 1), device=torch.device("cpu"))
                     for seed in seeds]
        noise = [torch.cat(layer, 0).to(device) for layer in zip(*per_image)]
    with torch.inference_mode():
        images = module.synthesis(wplus.to(device), noise=noise, noise_mode=noise_mode, dtype=dtype,
                                  feature_hook=feature_hook, max_resolution=max_resolution, rgb_hook=rgb_hook)
    return gan_to_comfy_image(images)


NODE_CLASS_MAPPINGS = {
    "TransEditLoadStyleGAN": TransEditLoadStyleGAN,
    "TransEditSampleLatent": TransEditSampleLatent,
    "TransEditGenerate": TransEditGenerate,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "TransEditLoadStyleGAN": "TransEdit Load StyleGAN",
    "TransEditSampleLatent": "TransEdit Sample Latent",
    "TransEditGenerate": "TransEdit Generate",
}
