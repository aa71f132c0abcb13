"""A random-weight Stable Diffusion 1.5 checkpoint that ComfyUI's Load Checkpoint detects as SD 1.5, built from
ComfyUI's own classes, so that the diffusion half of the `*_to_diffusion` workflows runs in the e2e tests and the
demo (nothing can be downloaded here, and no real checkpoint is ever made up: the pictures are noise).

ComfyUI recognises SD 1.5 by key names and a few shapes: the UNet's width (model_channels 320), its cross-
attention width (context_dim 768), convolutional proj_in, 4 input channels and no label_emb. The number of
levels, res blocks and transformer depths are read from the keys, so a one-level UNet (about 30 M parameters
instead of 860 M) is still an SD 1.5 UNet to it. The CLIP-L text model (12 layers x 768, ComfyUI's
sd1_clip_config) and the KL-f8 VAE (ch 128, mult 1,2,4,4) have their full, fixed size. ComfyUI's layers skip
initialisation (their weights would be uninitialised memory), so every tensor is set here: PyTorch's default
initialisation of each layer, seeded.

Run inside a ComfyUI tree (its root on sys.path, as `python sd15_stand_in.py OUT` with cwd = that root does);
the harness calls `build(comfy_root, out)` in a subprocess and caches the file (never committed).
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

BUILD_VERSION = 1  # part of the cached file's name: bump when the recipe changes
UNET = dict(image_size=32, in_channels=4, out_channels=4, model_channels=320, num_res_blocks=[1], channel_mult=[1],
            num_heads=8, use_spatial_transformer=True, transformer_depth=[1], transformer_depth_output=[1, 1],
            transformer_depth_middle=1, context_dim=768, use_linear_in_transformer=False, legacy=False)
VAE = dict(embed_dim=4, ddconfig=dict(double_z=True, z_channels=4, resolution=256, in_channels=3, out_ch=3, ch=128,
                                       ch_mult=[1, 2, 4, 4], num_res_blocks=2, attn_resolutions=[], dropout=0.0))


def _initialise(module, seed: int) -> None:
    """PyTorch's own default initialisation for every layer (ComfyUI's ops disable it), then a check that no
    tensor was left as uninitialised memory."""
    import torch

    torch.manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.fill_(float("nan"))
        for m in module.modules():
            for cls in type(m).__mro__:  # the torch class's reset, not ComfyUI's no-op override
                if cls.__module__.startswith("torch.nn") and "reset_parameters" in cls.__dict__:
                    cls.reset_parameters(m)
                    break
        for name, p in module.named_parameters():
            if torch.isnan(p).any():  # a bare Parameter no torch layer owns (e.g. a position table)
                p.normal_(0.0, 0.02)
            assert torch.isfinite(p).all(), name


def _state_dict(seed: int) -> dict:
    import torch

    import comfy.ldm.models.autoencoder as autoencoder
    import comfy.ldm.modules.diffusionmodules.openaimodel as openaimodel
    import comfy.ops
    import comfy.sd1_clip

    parts = {}
    unet = openaimodel.UNetModel(**UNET, dtype=torch.float32, operations=comfy.ops.disable_weight_init)
    _initialise(unet, seed)
    parts["model.diffusion_model."] = unet
    vae = autoencoder.AutoencoderKL(**VAE)
    _initialise(vae, seed + 1)
    parts["first_stage_model."] = vae
    clip = comfy.sd1_clip.SDClipModel(device="cpu", dtype=torch.float32)
    _initialise(clip, seed + 2)
    parts["cond_stage_model."] = clip
    sd = {}
    for prefix, module in parts.items():
        for key, tensor in module.state_dict().items():
            if tensor.is_floating_point():
                tensor = tensor.to(torch.float16)
            sd[prefix + key] = tensor.contiguous()
    return sd


def _check(path: Path) -> str:
    """Load it as ComfyUI's Load Checkpoint does; the model class it detects."""
    import comfy.sd

    model, clip, vae, *_ = comfy.sd.load_checkpoint_guess_config(str(path), output_vae=True, output_clip=True)
    detected = type(model.model.model_config).__name__
    if detected != "SD15" or clip is None or vae is None:
        raise RuntimeError(f"ComfyUI loads {path.name} as {detected} (clip: {clip is not None}, vae: {vae is not None})")
    return detected


def _main(out: str, seed: int = 0) -> None:
    from safetensors.torch import save_file

    path = Path(out)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}.safetensors")
    try:
        save_file(_state_dict(seed), str(tmp), metadata={"transedit": "random-weight SD 1.5 stand-in; pictures are "
                                                                       "noise", "build": str(BUILD_VERSION)})
        print(f"detected as {_check(tmp)}", flush=True)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def build(comfy_root: os.PathLike, out: os.PathLike, python: str = sys.executable, env: dict | None = None) -> Path:
    """Write the checkpoint to `out` (atomically) with the ComfyUI at comfy_root; raises RuntimeError with the
    builder's output when it fails."""
    out = Path(out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([python, str(Path(__file__).resolve()), str(out)], cwd=comfy_root, capture_output=True,
                          text=True, env=dict(env or os.environ, TQDM_DISABLE="1", HF_HUB_OFFLINE="1"))
    if proc.returncode != 0 or not out.is_file():
        raise RuntimeError(f"building the SD 1.5 stand-in failed (exit {proc.returncode}):\n"
                           f"{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return out


if __name__ == "__main__":
    out_arg, seed_arg = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 0
    sys.argv = ["main.py", "--cpu"]  # ComfyUI parses its flags from here: build on the CPU whatever the machine
    sys.path.insert(0, os.getcwd())  # the ComfyUI root
    import comfy.options

    comfy.options.enable_args_parsing()
    import torch

    with torch.no_grad():  # as ComfyUI's server loads models; the 2024 CLIP fills a weight in place at construction
        _main(out_arg, seed_arg)
