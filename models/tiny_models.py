"""Tiny random-weight encoders in the official training-checkpoint containers, for tests, the demo and
benchmarks (the generators, DINO ViTs, PUT models and EditTransformers have theirs beside their models)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

from .checkpoint_io import atomic_write
from .irse import IRSEConfig
from .psp import PSPConfig, build_psp_encoder
from .smart import SMART, SMARTConfig
from .style_transformer import StyleTransformerConfig, StyleTransformerEncoder
from .styleprompter import StylePrompterConfig, StylePrompterEncoder
from .stylegan2 import StyleGAN2Config, StyleGAN2Generator

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
        from .swinstyleformer import SwinStyleformerConfig, SwinStyleformerEncoder

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


