"""Random-weight models in the official file formats, for the tests, the demo and the benchmarks: never used by the
nodes. Each writer builds a small model of its family with the layout the official code saves (rosinality's
`{'g_ema', 'latent_avg'}`, the encoders' `{'state_dict', 'opts', 'latent_avg'}`, DINO's key names, PUT's training
container, RetinaFace's bare state dict, the ref-edit container) so that the registry reads it exactly as it reads
a downloaded checkpoint. The weights are drawn so that no part of a model is degenerate (a head left at zero would
make every input give the same output and hide bugs).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

from .models.core.checkpoint_io import atomic_write
from .models.splice.dino import DinoConfig, DinoViT
from .models.encoders.irse import IRSEConfig
from .models.core.latent import model_fingerprint
from .models.encoders.psp import PSPConfig, build_psp_encoder
from .models.put.transformer import PUTConfig, build_put
from .models.put.codec import PatchVQVAE
from .models.face.retinaface import VARIANCE, RetinaFace, RetinaFaceConfig
from .models.encoders.smart import SMART, SMARTConfig
from .models.encoders.style_transformer import (EditTransformer, EditTransformerConfig, StyleTransformerConfig,
                                                StyleTransformerEncoder)
from .models.encoders.styleprompter import StylePrompterConfig, StylePrompterEncoder
from .models.stylegan.generator import (StyleGAN2Config, StyleGAN2Descriptor, StyleGAN2Generator,
                                        save_stylegan2_safetensors)

# The five points RetinaFace's test detector finds in every anchor box, relative to the box (centre, size).
TEST_FACE = ((-0.08, -0.05), (0.08, -0.05), (0.0, 0.02), (-0.06, 0.09), (0.06, 0.09))


def save_random_generator(path, config: Optional[StyleGAN2Config] = None, seed: int = 0,
                          overwrite: bool = False) -> Path:
    """Random-weight generator in an official container (tests, demo, benchmarks).

    `.pt`/`.pth` writes rosinality's `{'g_ema', 'latent_avg'}`; `.safetensors` writes TransEdit's format.
    """
    config = config or StyleGAN2Config(size=64, style_dim=64, n_mlp=2, channels={4: 32, 8: 32, 16: 32, 32: 32, 64: 16})
    torch.manual_seed(seed)
    model = StyleGAN2Generator(config).eval()
    with torch.no_grad():  # official init leaves these at constants; perturb so every term matters
        for name, p in model.named_parameters():
            if name.endswith(("noise.weight", "activate.bias")) or (name.endswith(".bias") and "to_rgb" in name):
                p.add_(0.1 * torch.randn_like(p))
    latent_avg = model.mean_latent(1024, seed=seed).reshape(-1)
    path = Path(path)
    if path.suffix == ".safetensors":
        desc = StyleGAN2Descriptor(family="stylegan2", model=model, config=config, source=str(path),
                                   source_format="random", weights="g_ema", latent_avg=latent_avg,
                                   fingerprint=model_fingerprint("stylegan2", config.to_dict(), model.state_dict()))
        return save_stylegan2_safetensors(desc, path, overwrite)
    container = {"g_ema": model.state_dict(), "latent_avg": latent_avg}
    return atomic_write(path, lambda tmp: torch.save(container, tmp), overwrite)


def save_random_dino(path, config=None, seed: int = 0, overwrite: bool = False) -> Path:
    """A DINO ViT with random weights in the official key layout (timm-style safetensors, heads in metadata);
    for tests and demos. Weights are drawn large enough that features are not degenerate."""
    from safetensors.torch import save_file

    # 64 channels per head, DINO's convention, so heads are inferred right from a plain .pth as well
    config = config or DinoConfig(patch_size=8, embed_dim=128, depth=2, num_heads=2)
    gen = torch.Generator().manual_seed(seed)
    sd = {}
    for k, v in DinoViT(config).state_dict().items():
        if k.endswith("norm1.weight") or k.endswith("norm2.weight") or k == "norm.weight":
            t = 1 + 0.1 * torch.randn(v.shape, generator=gen)
        elif v.ndim >= 2 and k not in ("cls_token", "pos_embed"):
            fan_in = v[0].numel()
            t = torch.randn(v.shape, generator=gen) / fan_in ** 0.5
        else:
            t = 0.5 * torch.randn(v.shape, generator=gen) if k in ("cls_token", "pos_embed") else \
                0.1 * torch.randn(v.shape, generator=gen)
        sd[k] = t.contiguous()
    meta = {"arch": f"DINO ViT patch={config.patch_size} embed={config.embed_dim} depth={config.depth} "
                    f"heads={config.num_heads} (random weights, TransEdit test model)"}
    return atomic_write(path, lambda tmp: save_file(sd, tmp, metadata=meta), overwrite=overwrite)


def save_random_put(path, version: str = "cvpr2022", seed: int = 0, overwrite: bool = False) -> Path:
    """A tiny PUT transformer with its P-VQVAE (64 px images, 8x8 patches, 8x8 tokens, codebook 64 = 32 + 32,
    width 64, one head so `width // 64` infers it) and random weights, for tests and the demo. A `.pth`
    path gets the official training container ({'last_epoch', 'last_iter', 'spend_time', 'model',
    'optimizer_and_scheduler'}); a `.safetensors` path the bare state dict."""
    from .models.put.codec import PVQVAEConfig

    tpami = version == "tpami2024"
    codec_cfg = PVQVAEConfig(version=version, patch_size=8, n_e=64, e_dim=64, masked_embed_start=32,
                             enc_res_ch=64, enc_num_res_blocks=2, enc_out_ch=64, dec_in_ch=64, dec_res_ch=64,
                             dec_num_res_blocks=2, dec_res_after_up=2 if tpami else 0,
                             upsample="nearest" if tpami else "deconv",
                             ref_downsample="downsample" if tpami else "conv", ref_res_blocks=tpami)
    config = PUTConfig(version=version, dim=64, n_layer=2, n_head=1, token_shape=(8, 8), num_token=32,
                       mlp_hidden=256, qkv_bias=tpami, learn_mask_emb=tpami, combine_rec_and_gt=tpami)
    torch.manual_seed(seed)  # module init below; the weights themselves come from `gen`
    model = build_put(config, PatchVQVAE(codec_cfg))
    gen = torch.Generator().manual_seed(seed)
    norms = {f"{name}.{p}" for name, mod in model.named_modules() if isinstance(mod, torch.nn.LayerNorm)
             for p in ("weight", "bias")}
    sd = {}
    for k, v in model.state_dict().items():
        if not v.is_floating_point():
            t = v.clone()
        elif k.endswith("quantize.embedding"):  # codebook entries spread like the encoder's features
            t = torch.randn(v.shape, generator=gen)
        elif k.endswith(("cluster_size", "embedding_avg")):
            t = v.clone()
        elif k in norms:
            t = (1 if k.endswith("weight") else 0) + 0.1 * torch.randn(v.shape, generator=gen)
        elif k in ("pos_emb", "mask_emb"):
            t = 0.3 * torch.randn(v.shape, generator=gen)
        elif v.ndim >= 2:
            t = torch.randn(v.shape, generator=gen) / v[0].numel() ** 0.5
        else:
            t = 0.05 * torch.randn(v.shape, generator=gen)
        sd[k] = t.contiguous()
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        meta = {"arch": f"PUT {version} tiny (random weights, TransEdit test model)"}
        return atomic_write(path, lambda tmp: save_file(sd, tmp, metadata=meta), overwrite=overwrite)
    container = {"last_epoch": 0, "last_iter": 0, "spend_time": 0.0, "model": sd,
                 "optimizer_and_scheduler": {}}
    return atomic_write(path, lambda tmp: torch.save(container, tmp), overwrite=overwrite)


def save_random_retinaface(path, backbone: str = "mobilenet0.25", seed: int = 0, overwrite: bool = False) -> Path:
    """A RetinaFace at the official size and key layout (a bare state dict, as released) for tests and the demo.
    Its trunk is random, its heads see a face in every anchor box with the five points of TEST_FACE, so the
    face workflows run end to end on any picture (they find "the largest face": the biggest anchor)."""
    width = {"mobilenet0.25": (32, 64), "resnet50": (256, 256)}[backbone]
    torch.manual_seed(seed)
    model = RetinaFace(RetinaFaceConfig(backbone=backbone, in_channel=width[0], out_channel=width[1]))
    with torch.no_grad():
        for heads, bias in ((model.ClassHead, [-4.0, 4.0]), (model.BboxHead, [0.0] * 4),
                            (model.LandmarkHead, [c / VARIANCE[0] for p in TEST_FACE for c in p])):
            for head in heads:
                head.conv1x1.weight.zero_()
                head.conv1x1.bias.copy_(torch.tensor(bias * model.config.num_anchors))
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    return atomic_write(Path(path), lambda tmp: torch.save(sd, tmp), overwrite)


def save_random_edit_transformer(path, style_dim: int = 64, seed: int = 0, overwrite: bool = False) -> Path:
    """A random EditTransformer for W+ codes `style_dim` wide, in the official ref-edit container
    ({'state_dict': encoder.module.*, 'opts'}) that Load Edit Transformer reads (tests, demo)."""
    torch.manual_seed(seed)
    model = EditTransformer(EditTransformerConfig(d_model=style_dim, nhead=4, dim_feedforward=2 * style_dim)).eval()
    container = {"state_dict": {f"encoder.module.{k}": v for k, v in model.state_dict().items()}, "opts": {}}
    return atomic_write(Path(path), lambda tmp: torch.save(container, tmp), overwrite)


ENCODER_FAMILIES = ("style_transformer", "psp", "e4e", "styleprompter", "swinstyleformer")


def save_random_encoder(path, family: str = "style_transformer", generator_config: Optional[StyleGAN2Config] = None,
                        seed: int = 0, overwrite: bool = False) -> Path:
    """A tiny random encoder + its decoder in the official training-checkpoint container (tests, demo).

    {'state_dict': encoder.module.* + decoder.module.*, 'opts': {...}, 'latent_avg'} — the layout
    Style Transformer, pSp and e4e release their checkpoints in.
    """
    if family not in ENCODER_FAMILIES:
        raise ValueError(f"family must be one of {ENCODER_FAMILIES}, got {family!r}")
    gcfg = generator_config or StyleGAN2Config(size=64, style_dim=64, n_mlp=2,
                                               channels={4: 32, 8: 32, 16: 32, 32: 32, 64: 16})
    torch.manual_seed(seed)
    generator = StyleGAN2Generator(gcfg).eval()
    sd = gcfg.style_dim
    backbone = IRSEConfig(input_width=16, widths=(16, 32, 48, sd), units=(1, 1, 1, 1))
    smart = None
    if family == "styleprompter":  # the reduced geometry of the official parity fixture
        spc = StylePrompterConfig(embed_dim=16, depths=(1, 2, 2, 1), num_heads=(2, 4, 8, 16),
                                  n_latent=gcfg.n_latent, head_hidden=128, style_dim=sd, cpb_hidden=64)
        encoder = StylePrompterEncoder(spc)
        shapes = spc.feature_shapes()
        q = gcfg.channels[16]
        smart = SMART(SMARTConfig(q_channel=q, embed_dim=q, kv_channels=[c for _, c in shapes],
                                  kv_shapes=[side for side, _ in shapes], ffn_dim=2 * q)).eval()
        opts = {"encoder_type": "StylePrompter", "output_size": gcfg.size}
    elif family == "swinstyleformer":
        from .models.encoders.swinstyleformer import SwinStyleformerConfig, SwinStyleformerEncoder

        swin = SwinStyleformerConfig.preset("tiny", n_latent=gcfg.n_latent, style_dim=sd)
        encoder = SwinStyleformerEncoder(swin)
        with torch.no_grad():  # untrained, its head is zero (W+ = latent_avg whatever the image): give it weights
            torch.nn.init.normal_(encoder.to_style.weight, std=0.02)
        opts = {"encoder_type": "SwinStyleformer", "output_size": gcfg.size, "swinstyleformer_config": swin.to_dict()}
    elif family == "style_transformer":
        encoder = StyleTransformerEncoder(StyleTransformerConfig(backbone=backbone, d_model=sd, nhead=4,
                                                                 dim_feedforward=2 * sd, n_latent=gcfg.n_latent))
        opts = {"encoder_type": "StyleTransformer", "output_size": gcfg.size}
    else:
        n = gcfg.n_latent
        encoder = build_psp_encoder(PSPConfig(backbone=backbone, kind=family, n_styles=n, style_dim=sd,
                                              coarse_ind=min(3, n), middle_ind=min(7, n)))
        opts = {"encoder_type": "Encoder4Editing" if family == "e4e" else "GradualStyleEncoder",
                "output_size": gcfg.size, "start_from_latent_avg": True}
    encoder.eval()
    with torch.no_grad():  # BN running stats away from identity so eval-mode BN matters
        for name, buf in encoder.named_buffers():
            if name.endswith("running_var"):
                buf.uniform_(0.5, 1.5)
            elif name.endswith("running_mean"):
                buf.normal_(0, 0.1)
    latent_avg = generator.mean_latent(512, seed=seed).reshape(-1)
    state = {f"encoder.module.{k}": v for k, v in encoder.state_dict().items()}
    if smart is None:
        state.update({f"decoder.module.{k}": v for k, v in generator.state_dict().items()})
    else:  # StylePrompter's full layout: the generator and SMART side by side under the decoder
        state.update({f"decoder.module.generator.{k}": v for k, v in generator.state_dict().items()})
        state.update({f"decoder.module.smart_block.{k}": v for k, v in smart.state_dict().items()})
    container = {"state_dict": state, "opts": opts, "latent_avg": latent_avg}
    return atomic_write(Path(path), lambda tmp: torch.save(container, tmp), overwrite)
