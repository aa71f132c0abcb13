"""What every family's loader hands to the nodes: one descriptor base (spandrel's idea, TransEdit's fields).

A family's `load` returns its own subclass (StyleGAN2Descriptor, EncoderDescriptor, DinoDescriptor, ...), which
adds only what that family knows beyond this: the model, the family (architecture id) it belongs to, the
config inferred from its tensors, the file it came from, the loader's notes, and the precision it runs in (the
model class's PRECISION, read by the nodes' precision resolver).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch

from .precision import DEFAULT_POLICY, PrecisionPolicy


@dataclass(kw_only=True)
class ModelDescriptor:
    family: str  # architecture id: "stylegan2", "style_transformer", "psp", "e4e", "styleprompter", "dino", ...
    model: torch.nn.Module
    config: object  # the family's config, every field inferred from the weights (and official side files)
    source: str  # the file it was read from
    notes: list[str] = field(default_factory=list)  # what the loader inferred or assumed (logged by the nodes)

    @property
    def name(self) -> str:
        return os.path.basename(self.source)

    @property
    def precision(self) -> PrecisionPolicy:
        """What the model runs in: fp16/bf16 support and `auto` on a GPU (models/core/precision.py)."""
        return getattr(self.model, "PRECISION", DEFAULT_POLICY)

    @property
    def parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())
