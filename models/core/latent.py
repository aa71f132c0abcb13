"""The latent that flows between TransEdit nodes (ComfyUI type TE_LATENT), in plain PyTorch."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
import torch


def model_fingerprint(family: str, config: dict, state_dict: dict[str, torch.Tensor]) -> str:
    """Short id of a set of weights: config plus a sample of the values (cheap, stable across devices)."""
    h = hashlib.sha1(family.encode())
    h.update(json.dumps(config, sort_keys=True).encode())
    for key in sorted(state_dict)[:8]:
        h.update(key.encode())
        h.update(state_dict[key].detach().reshape(-1)[:64].float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class StyleLatent:
    """W+ codes [B, n_latent, style_dim] (fp32, CPU) plus where they came from.

    `generator` is the fingerprint of the generator they belong to; `extras` carries what later stages
    need (encoder features for SMART refine, the source images for paste-back, ...).
    """

    wplus: torch.Tensor
    generator: str = ""
    generator_name: str = ""
    extras: dict = field(default_factory=dict)

    def __post_init__(self):
        if not isinstance(self.wplus, torch.Tensor) or self.wplus.ndim != 3:
            raise ValueError(f"W+ latent must be a [B, n_latent, style_dim] tensor, got "
                             f"{getattr(self.wplus, 'shape', type(self.wplus))}")

    @property
    def batch_size(self) -> int:
        return self.wplus.shape[0]

    @property
    def n_latent(self) -> int:
        return self.wplus.shape[1]

    @property
    def style_dim(self) -> int:
        return self.wplus.shape[2]

    def with_wplus(self, wplus: torch.Tensor) -> "StyleLatent":
        return replace(self, wplus=wplus)

    def with_extras(self, extras: dict) -> "StyleLatent":
        return replace(self, extras=extras)

    def __len__(self) -> int:
        return self.batch_size

