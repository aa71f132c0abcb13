"""pSp (`GradualStyleEncoder`, Richardson et al. 2021) and e4e (`Encoder4Editing`, Tov et al. 2021) encoders.

Reimplemented from the description of the official code (eladrich/pixel2style2pixel and
omertov/encoder4editing, models/encoders/psp_encoders.py) with its module and parameter names, so the
`encoder.*` part of an official checkpoint loads strictly after stripping that prefix. The two encoders
have the *same* keys (`input_layer`, `body`, `styles.N`, `latlayer1/2`); only the checkpoint's
`opts['encoder_type']` tells them apart.

Both share the IR-SE-50 trunk and FPN of models/encoders/irse.py. `styles` has one `GradualStyleBlock` per W+ row:
stride-2 3x3 convs each followed by LeakyReLU(0.01) down to 1x1, then an equalised linear layer. Rows
[0, coarse_ind) read c3, [coarse_ind, middle_ind) read p2, the rest read p1 (3 / 7 in the official code).

- pSp: row i = styles[i](its feature map).
- e4e: every row starts from w0 = styles[0](c3); rows 1..stage also get their own delta styles[i](...)
  (`progressive_stage`; the default, as at official inference, is all rows).

Codes are returned *before* latent_avg; the official forward adds the checkpoint's `latent_avg`
(stored [n_styles, 512], repeated at training start) when `opts.start_from_latent_avg`, which the
released pSp and e4e checkpoints set. `models.encoders.latent_encoder.LatentEncoder` wraps any encoder with its latent_avg.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Mapping, Optional

import torch
from torch import nn

from .latent_encoder import EncoderFamily
from .irse import IRSEConfig, IRSEFPNTrunk, offset_by_latent_avg, infer_irse_config, strip_prefix
from ..core.layers import EqualLinear

PSP_KINDS = ("psp", "e4e")


class GradualStyleBlock(nn.Module):
    """log2(spatial) stride-2 Conv3x3 + LeakyReLU(0.01) (an spatial x spatial map -> 1x1), then EqualLinear.

    Keys: `convs.{0,2,4,...}.weight/bias` (odd indices are the activations) and `linear.weight/bias`."""

    def __init__(self, in_c: int, out_c: int, spatial: int):
        super().__init__()
        n = int(math.log2(spatial))
        if n < 1 or 2 ** n != spatial:
            raise ValueError(f"GradualStyleBlock spatial must be a power of two >= 2, got {spatial}")
        layers = []
        for i in range(n):
            layers += [nn.Conv2d(in_c if i == 0 else out_c, out_c, 3, stride=2, padding=1), nn.LeakyReLU(0.01)]
        self.convs = nn.Sequential(*layers)
        self.linear = EqualLinear(out_c, out_c, lr_mul=1.0)
        self.out_c, self.spatial = out_c, spatial

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.convs(x)
        if x.shape[-2:] != (1, 1):
            # The official `view(-1, out_c)` would silently turn extra pixels into extra "images".
            raise ValueError(f"GradualStyleBlock(spatial={self.spatial}) got a {tuple(x.shape[-2:])} map after "
                             "its convs; the encoder input must be 256x256 (192x256 for cars; see preprocess_official)")
        return self.linear(x.flatten(1))


@dataclass(frozen=True)
class PSPConfig:
    backbone: IRSEConfig = field(default_factory=IRSEConfig)
    kind: str = "psp"  # "psp" (GradualStyleEncoder) or "e4e" (Encoder4Editing)
    n_styles: int = 18
    style_dim: int = 512  # head width == FPN width == c3 width in the official code
    coarse_ind: int = 3
    middle_ind: int = 7
    head_spatials: tuple[int, int, int] = (16, 32, 64)  # coarse/medium/fine head sizes (the 256-input maps)
    start_from_latent_avg: bool = True
    learn_in_w: bool = False

    def __post_init__(self):
        if self.kind not in PSP_KINDS:
            raise ValueError(f"kind must be one of {PSP_KINDS}, got {self.kind!r}")
        object.__setattr__(self, "head_spatials", tuple(int(s) for s in self.head_spatials))
        if not 0 < self.coarse_ind <= self.middle_ind <= self.n_styles:
            raise ValueError(f"need 0 < coarse_ind <= middle_ind <= n_styles, got {self.coarse_ind}, "
                             f"{self.middle_ind}, {self.n_styles}")

    def head_group(self, i: int) -> int:
        return 0 if i < self.coarse_ind else 1 if i < self.middle_ind else 2

    def to_dict(self) -> dict:
        d = asdict(self)
        d["backbone"] = self.backbone.to_dict()
        d["head_spatials"] = list(self.head_spatials)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "PSPConfig":
        d = dict(d)
        d["backbone"] = IRSEConfig(**d.get("backbone", {}))
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


class _StyleHeadsEncoder(IRSEFPNTrunk):
    kind = "psp"

    def __init__(self, config: PSPConfig):
        super().__init__()
        self.config = config
        self._build_trunk(config.backbone)
        c3_ch = config.backbone.tap_channels[2]
        self.styles = nn.ModuleList(
            GradualStyleBlock(c3_ch if config.head_group(i) == 0 else config.style_dim, config.style_dim,
                              config.head_spatials[config.head_group(i)])
            for i in range(config.n_styles))
        self._build_latlayers(config.style_dim)
        self.eval()

    @property
    def n_latent(self) -> int:
        return self.config.n_styles

    @property
    def style_dim(self) -> int:
        return self.config.style_dim

    def to_wplus(self, codes: torch.Tensor, latent_avg: Optional[torch.Tensor]) -> torch.Tensor:
        """codes -> W+: pSp/e4e add latent_avg only when their opts say start_from_latent_avg."""
        if not self.config.start_from_latent_avg:
            return codes
        return offset_by_latent_avg(codes, latent_avg)


class GradualStyleEncoder(_StyleHeadsEncoder):
    """pSp. forward(x [B,3,256,256] in [-1,1], return_features=False) -> codes [B, n_styles, style_dim]."""

    kind = "psp"

    def __init__(self, config: PSPConfig = PSPConfig()):
        if config.kind != "psp":
            config = PSPConfig(**{**config.__dict__, "kind": "psp"})
        super().__init__(config)

    def forward(self, x: torch.Tensor, return_features: bool = False):
        self._check_input(x)
        feats: Optional[dict] = {} if return_features else None
        c1, c2, c3 = self.backbone_features(x, feats)
        p2 = self.fpn_p2(c3, c2, feats)
        p1 = self.fpn_p1(p2, c1, feats)
        maps = (c3, p2, p1)
        codes = torch.stack([head(maps[self.config.head_group(i)]) for i, head in enumerate(self.styles)], 1)
        return (codes, feats) if return_features else codes


class Encoder4Editing(_StyleHeadsEncoder):
    """e4e. forward(x, return_features=False, progressive_stage=None) -> codes [B, n_styles, style_dim].

    progressive_stage k (default: `self.progressive_stage`, initially n_styles-1 = all deltas, the official
    `ProgressiveStage.Inference`) adds deltas to rows 1..k only; rows above k stay w0.
    """

    kind = "e4e"

    def __init__(self, config: PSPConfig = PSPConfig(kind="e4e")):
        if config.kind != "e4e":
            config = PSPConfig(**{**config.__dict__, "kind": "e4e"})
        super().__init__(config)
        self.progressive_stage = config.n_styles - 1

    def forward(self, x: torch.Tensor, return_features: bool = False, progressive_stage: Optional[int] = None):
        self._check_input(x)
        stage = self.progressive_stage if progressive_stage is None else int(progressive_stage)
        feats: Optional[dict] = {} if return_features else None
        c1, c2, c3 = self.backbone_features(x, feats)
        w0 = self.styles[0](c3)
        rows = [w0]
        p2 = p1 = None
        for i in range(1, self.config.n_styles):
            if i > stage:
                rows.append(w0)
                continue
            group = self.config.head_group(i)
            if group >= 1 and p2 is None:
                p2 = self.fpn_p2(c3, c2, feats)
            if group == 2 and p1 is None:
                p1 = self.fpn_p1(p2, c1, feats)
            rows.append(w0 + self.styles[i]((c3, p2, p1)[group]))
        codes = torch.stack(rows, 1)
        return (codes, feats) if return_features else codes


def _count_convs(sd: Mapping[str, torch.Tensor], i: int) -> int:
    n = 0
    while f"styles.{i}.convs.{2 * n}.weight" in sd:
        n += 1
    return n


def infer_psp_config(encoder_state_dict: Mapping[str, torch.Tensor], opts: Optional[Mapping] = None,
                     kind: Optional[str] = None) -> PSPConfig:
    """Sizes from shapes; pSp vs e4e from `kind`, else `opts['encoder_type']` ('Encoder4Editing' -> e4e),
    else pSp (the keys are identical). coarse_ind / middle_ind and head sizes come from each head's conv
    count (log2 of its input size)."""
    sd = strip_prefix(dict(encoder_state_dict))
    backbone = infer_irse_config(sd)
    n_styles = 0
    while f"styles.{n_styles}.linear.weight" in sd:
        n_styles += 1
    if n_styles == 0:
        raise KeyError("styles.0.linear.weight")
    style_dim = int(sd["styles.0.linear.weight"].shape[0])
    counts = [_count_convs(sd, i) for i in range(n_styles)]
    groups: list[int] = []  # distinct conv counts in order of appearance
    bounds: list[int] = []
    for i, c in enumerate(counts):
        if not groups or groups[-1] != c:
            groups.append(c)
            bounds.append(i)
    if len(groups) > 3 or groups != sorted(groups):
        raise ValueError(f"pSp style heads with conv counts {counts} do not form coarse/medium/fine groups")
    spatials = [2 ** c for c in groups]
    while len(spatials) < 3:  # fewer than 3 groups (n_styles <= 7): missing groups are unused
        spatials.append(spatials[-1] * 2)
        bounds.append(n_styles)
    opts = dict(opts or {})
    if kind is None:
        kind = "e4e" if str(opts.get("encoder_type", "")) == "Encoder4Editing" else "psp"
    return PSPConfig(backbone=backbone, kind=kind, n_styles=n_styles, style_dim=style_dim,
                     coarse_ind=bounds[1], middle_ind=bounds[2], head_spatials=tuple(spatials),
                     start_from_latent_avg=bool(opts.get("start_from_latent_avg", True)),
                     learn_in_w=bool(opts.get("learn_in_w", False)))


def build_psp_encoder(config: PSPConfig) -> _StyleHeadsEncoder:
    return Encoder4Editing(config) if config.kind == "e4e" else GradualStyleEncoder(config)


# ------------------------------------------------------------------------------------ uniform wrapper


# ------------------------------------------------------------------------------------------------ files
# eladrich/pixel2style2pixel and omertov/encoder4editing save {'state_dict': encoder.* + decoder.*, 'opts':
# vars(argparse options), 'latent_avg'} (+ e4e's 'discriminator_state_dict' and optimizer states).
def _is_psp_layout(sd: dict) -> bool:
    return "styles.0.convs.0.weight" in sd and "latlayer1.weight" in sd


def _is_e4e(sd: dict, opts: dict) -> bool:
    # pSp and e4e share every key name; only the training options tell them apart.
    return _is_psp_layout(sd) and str(opts.get("encoder_type", "")) == "Encoder4Editing"


def _builder(kind: str):
    def build(sd: dict, opts: dict):
        config = infer_psp_config(sd, opts, kind=kind)
        return config, build_psp_encoder(config)
    return build


E4E_ENCODER = EncoderFamily("e4e", _is_e4e, _builder("e4e"))
PSP_ENCODER = EncoderFamily("psp", lambda sd, opts: _is_psp_layout(sd) and not _is_e4e(sd, opts), _builder("psp"))
