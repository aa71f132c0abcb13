"""Training losses for the inversion encoders (`transedit.train`): ArcFace identity, the latent
discriminator and the distribution alignment loss (LPIPS lives in models/perceptual). The pretrained networks
are read from files the user provides (nothing is downloaded); every loss is optional.

- :class:`IdentityLoss` — 1 - cosine similarity of ArcFace IR-SE-50 embeddings (pSp's ``model_ir_se50.pth``),
  on the face crop pSp uses at 256².
- :class:`LatentDiscriminator` — e4e's latent-code MLP discriminator (non-saturating loss, R1 on real codes).
- :func:`moment_alignment` — SwinStyleformer's distribution alignment, as moment matching (see its module).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .irse import IRSEConfig, make_body, make_input_layer
from ..core.checkpoint_io import load_plain_state_dict


class ArcFaceIRSE50(nn.Module):
    """ArcFace IR-SE-50 (the face-recognition network pSp's identity loss uses): 112² face -> 512-d."""

    def __init__(self):
        super().__init__()
        cfg = IRSEConfig()
        self.input_layer = make_input_layer(cfg)
        self.body = make_body(cfg)
        self.output_layer = nn.Sequential(nn.BatchNorm2d(512), nn.Dropout(0.6), nn.Flatten(),
                                          nn.Linear(512 * 7 * 7, 512), nn.BatchNorm1d(512, affine=True))

    def forward(self, x):
        return F.normalize(self.output_layer(self.body(self.input_layer(x))), dim=1)


class IdentityLoss(nn.Module):
    def __init__(self, net: ArcFaceIRSE50):
        super().__init__()
        self.net = net.eval().requires_grad_(False)

    @classmethod
    def from_file(cls, path) -> "IdentityLoss":
        net = ArcFaceIRSE50()
        net.load_state_dict(load_plain_state_dict(path))
        return cls(net)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != 256:
            x = F.interpolate(x, size=(256, 256), mode="bilinear", align_corners=False)
        x = x[:, :, 35:223, 32:220]  # the face region of an FFHQ-aligned 256² crop (pSp)
        return self.net(F.adaptive_avg_pool2d(x, 112))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """1 - cos(ArcFace(x), ArcFace(y)) per image [B]."""
        return 1 - (self.embed(x) * self.embed(y).detach()).sum(1)


class LatentDiscriminator(nn.Module):
    """e4e's W discriminator: 4 x (Linear, LeakyReLU 0.2), Linear -> 1 logit per code."""

    def __init__(self, style_dim: int = 512, width: int = 512, layers: int = 4):
        super().__init__()
        mods, c = [], style_dim
        for _ in range(layers):
            mods += [nn.Linear(c, width), nn.LeakyReLU(0.2)]
            c = width
        mods.append(nn.Linear(c, 1))
        self.mlp = nn.Sequential(*mods)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return self.mlp(w)


def discriminator_loss(disc: LatentDiscriminator, real_w: torch.Tensor, fake_w: torch.Tensor,
                       r1_gamma: float = 10.0) -> torch.Tensor:
    """Non-saturating loss on codes [N, C] plus R1 on the real ones (e4e)."""
    real_w = real_w.detach().requires_grad_(r1_gamma > 0)
    real = disc(real_w)
    loss = F.softplus(disc(fake_w.detach())).mean() + F.softplus(-real).mean()
    if r1_gamma > 0:
        (grad,) = torch.autograd.grad(real.sum(), real_w, create_graph=True)
        loss = loss + r1_gamma / 2 * grad.pow(2).sum(1).mean()
    return loss


def encoder_adversarial_loss(disc: LatentDiscriminator, fake_w: torch.Tensor) -> torch.Tensor:
    return F.softplus(-disc(fake_w)).mean()


def moment_alignment(pred_w: torch.Tensor, real_w: torch.Tensor) -> torch.Tensor:
    """Distribution alignment as moment matching: |mean_p - mean_w|² + |cov_p - cov_w|²_F / C, codes [N, C]."""
    mp, mr = pred_w.mean(0), real_w.mean(0)
    cp = (pred_w - mp).T @ (pred_w - mp) / max(pred_w.shape[0] - 1, 1)
    cr = (real_w - mr).T @ (real_w - mr) / max(real_w.shape[0] - 1, 1)
    return (mp - mr).pow(2).sum() / pred_w.shape[1] + (cp - cr).pow(2).sum() / pred_w.shape[1]
