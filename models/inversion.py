"""The encoder families behind one interface: images in [-1, 1] -> W+ (what the official forward decodes)."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .irse import add_latent_avg


class LatentEncoder(nn.Module):
    """Any TransEdit encoder plus its checkpoint's latent_avg.

    forward(x [B, 3, 256, 256] in [-1, 1], return_features=False) -> W+ [B, n_latent, style_dim]
    (codes + latent_avg when the encoder's config says start_from_latent_avg).

    Style Transformer's queries are the generator's mapping network applied to learnt z; they do not
    depend on the image, so they are computed once here (pass `mapping=`) and kept as a buffer: the
    encoder then needs no reference to the generator and moves between devices on its own.
    """

    def __init__(self, encoder: nn.Module, latent_avg: Optional[torch.Tensor] = None, mapping=None):
        super().__init__()
        self.encoder = encoder
        self.register_buffer("latent_avg", None if latent_avg is None else latent_avg.detach().clone().float())
        query = None
        if mapping is not None:
            if not hasattr(encoder, "compute_query"):
                raise ValueError(f"{type(encoder).__name__} takes no mapping network")
            with torch.no_grad():
                query = encoder.compute_query(mapping).detach().clone().float()
        elif hasattr(encoder, "compute_query"):
            raise ValueError(f"{type(encoder).__name__} needs the generator's mapping network (pass mapping=)")
        self.register_buffer("query", query)

    @property
    def n_latent(self) -> int:
        return self.encoder.n_latent

    @property
    def style_dim(self) -> int:
        return self.encoder.style_dim

    def _run(self, x: torch.Tensor, return_features: bool):
        if self.query is not None:
            return self.encoder(x, query=self.query, return_features=return_features)
        return self.encoder(x, return_features=return_features)

    def encode_codes(self, x: torch.Tensor, return_features: bool = False):
        return self._run(x, return_features)

    def forward(self, x: torch.Tensor, return_features: bool = False):
        out = self._run(x, return_features)
        codes, feats = out if return_features else (out, None)
        # Under autocast the heads return bf16/fp16; W+ itself is kept in fp32 (latent_avg is large).
        add = getattr(self.encoder, "add_latent_avg", None) or add_latent_avg
        with torch.autocast(codes.device.type, enabled=False):
            wplus = add(codes.float(), self.latent_avg)
        return (wplus, feats) if return_features else wplus
