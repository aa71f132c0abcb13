"""StyleGAN stage: load a generator, sample latents, synthesise images."""
from __future__ import annotations

import torch

from ..models.core.latent import StyleLatent
from ..models.registry import load_stylegan2
from ..models.stylegan.generator import PRECISION_BY_FILE
from . import comfy_bridge as bridge
from .compare import compare_ui
from .handles import load_handle
from .inputs import MAX_SEED, NodeInputError, check_choice, check_float, check_int, require_model_file
from .precision import PRECISIONS, auto_tooltip_by_file
from .rendering import StyleGANHandle, check_generator, render_latents
from ..models.stylegan.tuning import is_tuning_delta_file
from .tuning import load_tuned_delta

CATEGORY = "TransEdit/StyleGAN"
MAX_BATCH = 64
NOISE_MODES = ("const", "random", "none")


class TransEditLoadStyleGAN:
    DESCRIPTION = ("Loads a StyleGAN2 generator from models/stylegan: rosinality .pt (pSp/e4e/Style "
                   "Transformer/StylePrompter checkpoints included), NVlabs StyleGAN2-ADA .pkl, or TransEdit "
                   ".safetensors (a tuned generator's delta too: its base file must be in the same model folder). "
                   "Size, widths and latent shape are read from the weights.")

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
        path = require_model_file(node, "ckpt_name", "stylegan", ckpt_name)
        if is_tuning_delta_file(path):  # Save Tuned StyleGAN's delta: its base file plus the tuned differences
            return (load_tuned_delta(node, "ckpt_name", path, ckpt_name),)
        return (load_handle(node, "ckpt_name", "stylegan", ckpt_name, load_stylegan2, StyleGANHandle),)


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
        generator = check_generator(node, generator)
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
                                             "tooltip": auto_tooltip_by_file(PRECISION_BY_FILE)
                                             + " fp32 is bit-faithful to the official code."}),
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
        generator = check_generator(node, generator)
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
