"""From W+ to pictures, the one way: the generator's handle (what flows on a TE_STYLEGAN wire) and
`render_latents`, which Generate, Edit Studio's queued run and its live preview all use (SMART refinement through
the generator's feature hook, chunks with out-of-memory retries, Cancel, progress previews)."""
from __future__ import annotations

import torch

from ..models.core.latent import StyleLatent
from . import comfy_bridge as bridge
from .chunks import run_in_chunks
from .handles import ModelHandle
from .images import comfy_image_to_pil, gan_to_comfy_image
from .inputs import MAX_SEED, NodeInputError
from .precision import resolve_precision


class StyleGANHandle(ModelHandle):
    """What flows on a TE_STYLEGAN wire: the loaded generator (a StyleGAN2Descriptor), managed by ComfyUI."""

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


def check_generator(node: str, generator) -> StyleGANHandle:
    if generator is None:
        raise NodeInputError(node, "generator", "is empty: the encoder file it came from holds no StyleGAN2 "
                             "generator.", "load the generator with 'TransEdit Load StyleGAN'.")
    if not isinstance(generator, StyleGANHandle):
        raise NodeInputError(node, "generator", f"must be a TE_STYLEGAN, got {type(generator).__name__}.",
                             "connect the output of 'TransEdit Load StyleGAN'.")
    return generator


def smart_for(node, generator, latent):
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
    smart = smart_for(node, generator, latent)
    smart_module = smart[0].load() if smart is not None else None
    module = generator.load()
    device = next(module.parameters()).device
    dtype = resolve_precision(precision, device, generator.precision)
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
