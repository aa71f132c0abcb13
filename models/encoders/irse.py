"""IR-SE backbone (ArcFace ResNet with squeeze-excitation) and the FPN taps shared by the pSp-family encoders.

pSp (`GradualStyleEncoder`), e4e (`Encoder4Editing`) and Style Transformer all start with the same trunk:

    input_layer = Conv3x3(input_nc -> w0, no bias) -> BatchNorm -> PReLU
    body        = 4 blocks of IR-SE units; the first unit of every block has stride 2

and read three feature maps from it (c1: end of block 2, c2: end of block 3, c3: end of block 4), which
an FPN merges top-down (bilinear, align_corners=True) through two 1x1 `latlayer` convolutions:

    p2 = up(c3 -> size of c2) + latlayer1(c2)
    p1 = up(p2 -> size of c1) + latlayer2(c1)

Module and parameter names follow the official code (`input_layer.0.weight`, `body.N.res_layer.K.*`,
`body.N.shortcut_layer.*`, `res_layer.5.fc1/fc2`), so an official state dict loads after only stripping its
`encoder.` / `encoder.module.` prefix. Widths and unit counts are settings so that reduced test models and
the IR-100/152 unit tables build too.

This file also holds what every image encoder here shares: the official image preprocessing
(`preprocess_official`, `preprocess_fast`) and `offset_by_latent_avg`.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:  # PIL is only named in a type hint; pillow stays an optional import here
    import PIL.Image

# Units per block of the official `get_blocks(num_layers)` tables.
IR_UNITS = {50: (3, 4, 14, 3), 100: (3, 13, 30, 3), 152: (3, 8, 36, 3)}
IR_WIDTHS = (64, 128, 256, 512)


@dataclass(frozen=True)
class IRSEConfig:
    """The trunk: input layer width, per-block widths and unit counts, SE on/off and its reduction."""

    input_nc: int = 3
    input_width: int = 64
    widths: tuple[int, ...] = IR_WIDTHS
    units: tuple[int, ...] = IR_UNITS[50]
    use_se: bool = True  # 'ir_se' (True) or plain 'ir' (False)
    se_reduction: int = 16

    def __post_init__(self):
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
        object.__setattr__(self, "units", tuple(int(u) for u in self.units))
        if len(self.widths) != len(self.units) or not self.units or min(self.units) < 1:
            raise ValueError(f"IR-SE widths {self.widths} and units {self.units} must be equally long and >= 1")

    @classmethod
    def ir50(cls, **kw) -> "IRSEConfig":
        return cls(units=IR_UNITS[50], **kw)

    @property
    def num_units(self) -> int:
        return sum(self.units)

    @property
    def block_ends(self) -> tuple[int, ...]:
        """Index in `body` of the last unit of every block (IR-50: 2, 6, 20, 23)."""
        ends, n = [], -1
        for u in self.units:
            n += u
            ends.append(n)
        return tuple(ends)

    @property
    def taps(self) -> tuple[int, int, int]:
        """Body indices read as c1, c2, c3: the ends of the last three blocks.

        The official encoders hard-code 6, 20 and 23, which are exactly these for IR-50 (the only depth
        they work with: with the IR-100/152 tables those indices would not be block ends)."""
        if len(self.units) < 3:
            raise ValueError("the FPN encoders need at least three blocks")
        return self.block_ends[-3], self.block_ends[-2], self.block_ends[-1]

    def unit_specs(self) -> list[tuple[int, int, int]]:
        """(in_channels, depth, stride) of every body unit, as the official `get_blocks` lists them."""
        specs, in_ch = [], self.input_width
        for depth, n in zip(self.widths, self.units):
            specs.append((in_ch, depth, 2))
            specs.extend((depth, depth, 1) for _ in range(n - 1))
            in_ch = depth
        return specs

    @property
    def tap_channels(self) -> tuple[int, int, int]:
        return self.widths[-3], self.widths[-2], self.widths[-1]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["widths"], d["units"] = list(self.widths), list(self.units)
        return d


# --------------------------------------------------------------------------------------------- layers
class SEModule(nn.Module):
    """Squeeze-excitation: x * sigmoid(fc2(relu(fc1(mean_hw(x))))) with bias-free 1x1 convs."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, channels // reduction, 1, bias=False)
        self.fc2 = nn.Conv2d(channels // reduction, channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = F.adaptive_avg_pool2d(x, 1)
        return x * torch.sigmoid(self.fc2(F.relu(self.fc1(s))))


class Subsample(nn.Module):
    """The official identity shortcut `MaxPool2d(1, stride)`: a 1x1 max pool is plain strided subsampling."""

    def __init__(self, stride: int):
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.stride == 1 else x[:, :, ::self.stride, ::self.stride]


class BottleneckIR(nn.Module):
    """One IR(-SE) unit: residual BN -> Conv3x3 -> PReLU -> Conv3x3(stride) -> BN [-> SE], plus shortcut.

    There is no activation after the addition. The shortcut is parameter-free subsampling when the width
    is unchanged, otherwise Conv1x1(stride) + BN.
    """

    def __init__(self, in_ch: int, depth: int, stride: int, use_se: bool = True, se_reduction: int = 16):
        super().__init__()
        if in_ch == depth:
            self.shortcut_layer = Subsample(stride)
        else:
            self.shortcut_layer = nn.Sequential(nn.Conv2d(in_ch, depth, 1, stride, bias=False),
                                                nn.BatchNorm2d(depth))
        layers = [nn.BatchNorm2d(in_ch), nn.Conv2d(in_ch, depth, 3, 1, 1, bias=False), nn.PReLU(depth),
                  nn.Conv2d(depth, depth, 3, stride, 1, bias=False), nn.BatchNorm2d(depth)]
        if use_se:
            layers.append(SEModule(depth, se_reduction))
        self.res_layer = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.res_layer(x) + self.shortcut_layer(x)


def make_input_layer(config: IRSEConfig) -> nn.Sequential:
    w = config.input_width
    return nn.Sequential(nn.Conv2d(config.input_nc, w, 3, 1, 1, bias=False), nn.BatchNorm2d(w), nn.PReLU(w))


def make_body(config: IRSEConfig) -> nn.Sequential:
    return nn.Sequential(*[BottleneckIR(i, d, s, config.use_se, config.se_reduction)
                           for i, d, s in config.unit_specs()])


def upsample_add(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The official FPN merge: bilinear resize of x to y's size (align_corners=True), plus y."""
    return F.interpolate(x, size=y.shape[-2:], mode="bilinear", align_corners=True) + y


class IRSEFPNTrunk(nn.Module):
    """Base class: `input_layer`, `body`, `latlayer1`, `latlayer2` (official names, registered by subclasses
    in the official order through `_build_trunk` / `_build_latlayers`) and the shared feature pass."""

    backbone: IRSEConfig

    def _build_trunk(self, backbone: IRSEConfig):
        self.backbone = backbone
        self.input_layer = make_input_layer(backbone)
        self.body = make_body(backbone)

    def _build_latlayers(self, fpn_width: int):
        c1, c2, _ = self.backbone.tap_channels
        self.latlayer1 = nn.Conv2d(c2, fpn_width, 1)
        self.latlayer2 = nn.Conv2d(c1, fpn_width, 1)

    def backbone_features(self, x: torch.Tensor, features: Optional[dict] = None):
        """x [B, input_nc, H, W] -> (c1, c2, c3); with `features` given, also records input_layer/c1/c2/c3."""
        i1, i2, i3 = self.backbone.taps
        x = self.input_layer(x)
        if features is not None:
            features["input_layer"] = x
        c1 = c2 = None
        for i, unit in enumerate(self.body):
            x = unit(x)
            if i == i1:
                c1 = x
            elif i == i2:
                c2 = x
            if i == i3:
                break
        if features is not None:
            features.update(c1=c1, c2=c2, c3=x)
        return c1, c2, x

    def fpn_p2(self, c3: torch.Tensor, c2: torch.Tensor, features: Optional[dict] = None) -> torch.Tensor:
        lat1 = self.latlayer1(c2)
        p2 = upsample_add(c3, lat1)
        if features is not None:
            features.update(lat1=lat1, p2=p2)
        return p2

    def fpn_p1(self, p2: torch.Tensor, c1: torch.Tensor, features: Optional[dict] = None) -> torch.Tensor:
        lat2 = self.latlayer2(c1)
        p1 = upsample_add(p2, lat2)
        if features is not None:
            features.update(lat2=lat2, p1=p1)
        return p1

    def _check_input(self, x: torch.Tensor):
        if x.ndim != 4 or x.shape[1] != self.backbone.input_nc:
            raise ValueError(f"expected images [B, {self.backbone.input_nc}, H, W] in [-1, 1], "
                             f"got {tuple(x.shape)}")


# ---------------------------------------------------------------------------------- config inference
def infer_irse_config(sd: dict[str, torch.Tensor]) -> IRSEConfig:
    """Trunk settings from an (unprefixed) encoder state dict's shapes.

    Blocks are found where the unit width changes (every official table has a new width per block).
    """
    w_in = sd["input_layer.0.weight"]
    n = 0
    while f"body.{n}.res_layer.1.weight" in sd:
        n += 1
    if n == 0:
        raise KeyError("body.0.res_layer.1.weight")
    widths, units = [], []
    for i in range(n):
        depth = int(sd[f"body.{i}.res_layer.1.weight"].shape[0])
        if widths and widths[-1] == depth:
            units[-1] += 1
        else:
            widths.append(depth)
            units.append(1)
    use_se = "body.0.res_layer.5.fc1.weight" in sd
    reduction = 16
    if use_se:
        squeezed = int(sd["body.0.res_layer.5.fc1.weight"].shape[0])
        reduction = max(1, widths[0] // max(1, squeezed))
        for i in range(n):
            depth = int(sd[f"body.{i}.res_layer.1.weight"].shape[0])
            if depth // reduction != sd[f"body.{i}.res_layer.5.fc1.weight"].shape[0]:
                reduction = 16  # fall back to the official constant; a strict load will report the mismatch
                break
    return IRSEConfig(input_nc=int(w_in.shape[1]), input_width=int(w_in.shape[0]), widths=tuple(widths),
                      units=tuple(units), use_se=use_se, se_reduction=reduction)


def strip_prefix(sd: dict[str, torch.Tensor], prefixes: Sequence[str] = ("encoder.module.", "encoder.",
                                                                         "module.")) -> dict[str, torch.Tensor]:
    """Keep the keys under the first prefix that any key has, with it removed (official `get_keys` +
    DataParallel). A dict with none of the prefixes is returned unchanged."""
    for p in prefixes:
        if any(k.startswith(p) for k in sd):
            return {k[len(p):]: v for k, v in sd.items() if k.startswith(p)}
    return dict(sd)


# ------------------------------------------------------------------------------------ shared helpers
def offset_by_latent_avg(codes: torch.Tensor, latent_avg: Optional[torch.Tensor]) -> torch.Tensor:
    """codes [B, n, C] (or [B, C] for learn_in_w) + the checkpoint's `latent_avg`.

    Accepts every stored layout: Style Transformer's [C], pSp/e4e's [n, C] (repeated at training start),
    [1, C] or [1, n, C]. This is the official `codes + latent_avg.repeat(B, 1, 1)`.
    """
    if latent_avg is None:
        return codes
    avg = latent_avg.to(device=codes.device, dtype=codes.dtype)
    if codes.ndim == 2:
        return codes + avg.reshape(-1, codes.shape[-1])[:1]
    if avg.ndim == 1:
        avg = avg[None]
    if avg.ndim == 2:
        avg = avg[None]
    if avg.shape[1] not in (1, codes.shape[1]) or avg.shape[-1] != codes.shape[-1]:
        raise ValueError(f"latent_avg of shape {tuple(latent_avg.shape)} does not fit codes {tuple(codes.shape)}")
    return codes + avg


ImagesLike = Union[torch.Tensor, np.ndarray, "PIL.Image.Image", Sequence]


def _to_uint8_list(images: ImagesLike) -> list[np.ndarray]:
    """Images -> list of HWC uint8 RGB arrays.

    Accepts a PIL image or a list of them, a uint8 tensor/array [B,H,W,3] or [H,W,3], or a float one in
    [0, 1] (ComfyUI's IMAGE); floats are rounded to the nearest 8-bit level (a ComfyUI image loaded from an
    8-bit file is exactly uint8/255, so this recovers the file's pixels).
    """
    from PIL import Image

    if isinstance(images, Image.Image):
        return [np.asarray(images.convert("RGB"))]
    if isinstance(images, (list, tuple)):
        out = []
        for im in images:
            out.extend(_to_uint8_list(im))
        return out
    arr = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[-1] not in (1, 3, 4):
        raise ValueError(f"expected images [B, H, W, C] (channels last), got shape {arr.shape}")
    if arr.dtype != np.uint8:
        arr = np.clip(np.rint(arr.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    return [a[..., :3] for a in arr]


def _hw(size) -> tuple[int, int]:
    """size: an int (square) or (height, width) — e.g. (192, 256) for the official cars transforms."""
    return (int(size), int(size)) if isinstance(size, (int, np.integer)) else (int(size[0]), int(size[1]))


def preprocess_official(images: ImagesLike, size=256) -> torch.Tensor:
    """The official inference transform, bit-exact: PIL RGB -> `Resize((h, w))` (PIL bilinear, which
    antialiases) -> ToTensor (uint8 / 255) -> Normalize(0.5, 0.5). Returns float32 [B, 3, h, w] in [-1, 1].
    `size` is an int (square, 256 for faces) or (h, w) ((192, 256) for cars).
    """
    from PIL import Image

    h, w = _hw(size)
    out = []
    for a in _to_uint8_list(images):
        im = Image.fromarray(np.ascontiguousarray(a), "RGB").resize((w, h), Image.BILINEAR)
        t = torch.from_numpy(np.array(im, dtype=np.uint8)).permute(2, 0, 1).float().div(255)
        out.append(t.sub(0.5).div(0.5))
    return torch.stack(out)


def preprocess_fast(images: torch.Tensor, size=256, channels_last_input: bool = True) -> torch.Tensor:
    """Torch-only approximation of `preprocess_official` that stays on the images' device.

    images: float [B, H, W, 3] in [0, 1] (ComfyUI IMAGE; `channels_last_input=False` for [B, 3, H, W]) or
    uint8. Antialiased bilinear `F.interpolate` (align_corners=False) then (x - 0.5) / 0.5. PIL rounds
    its resized pixels to 8 bits and uses fixed-point weights, so this differs from the official path by up
    to about one 8-bit level (2/255 ~ 0.008 in [-1, 1]; see tests/test_encoders_parity.py).
    """
    x = images
    if channels_last_input:
        x = x.permute(0, 3, 1, 2)
    x = x[:, :3]
    if x.dtype == torch.uint8:
        x = x.float() / 255
    x = x.float()
    hw = _hw(size)
    if tuple(x.shape[-2:]) != hw:
        x = F.interpolate(x, size=hw, mode="bilinear", antialias=True, align_corners=False)
    return (x - 0.5) / 0.5
