"""LPIPS (Zhang et al. 2018, v0.1): the learned perceptual distance, AlexNet and VGG16 variants, computing what
the reference `lpips` package computes (`lpips.LPIPS(net=..., version='0.1')`, spatially averaged).

distance(x, y) = sum over five ReLU taps of mean over pixels of  w_l . (f_l(x)/(|f_l(x)|+eps) - same for y)^2
where f_l are torchvision's ImageNet AlexNet / VGG16 ``features`` activations of the scaled input and w_l the
v0.1 linear heads (their dropout is a no-op in eval mode, the only mode here).

Weights come from files the user provides (nothing is downloaded): the torchvision backbone
(``alexnet-owt-7be5be79.pth`` / ``vgg16-397923af.pth``) and the LPIPS heads (``alex.pth`` / ``vgg.pth``);
`LPIPS_DOWNLOADS` lists where each is published. The registry (`load_lpips`) detects the files by key names.

Speed: x and y go through the trunk as one batch, except when only one of them needs gradients (a loss against a
fixed target): the target then runs alone under no_grad (no backward through it, no saved activations), and
`against(target)` computes a fixed target's features once for many calls (PTI compares every step with the same
image). The per-tap head reduces to a [B, C] channel mean and a dot product (no 1x1 conv over the full map); the
normalisation and head run in fp32 even under fp16/bf16 autocast (sums of squared activations overflow fp16);
nothing reads a value back to the host.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from ..core.checkpoint_io import RawCheckpoint, load_plain_state_dict
from ..core.errors import CheckpointError

# ReLU taps relu1..relu5 as indices into torchvision's `features` (the reference slices its trunk after these)
ALEX_TAPS = (1, 4, 7, 9, 11)
ALEX_CHANNELS = (64, 192, 384, 256, 256)
VGG16_LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")
VGG16_TAPS = (3, 8, 15, 22, 29)  # relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
VGG16_CHANNELS = (64, 128, 256, 512, 512)
# v0.1's input scaling: images in [-1, 1] shifted and scaled towards ImageNet statistics
SCALING_SHIFT = (-0.030, -0.088, -0.188)
SCALING_SCALE = (0.458, 0.448, 0.450)
NORM_EPS = 1e-10  # added to the per-pixel feature norm before dividing, as the reference does

TORCHVISION_URL = "https://download.pytorch.org/models/"
LPIPS_HEADS_URL = "https://github.com/richzhang/PerceptualSimilarity/raw/master/lpips/weights/v0.1/"
# net -> {"backbone"|"heads": (file name, official download link)}
LPIPS_DOWNLOADS = {
    "alex": {"backbone": ("alexnet-owt-7be5be79.pth", TORCHVISION_URL + "alexnet-owt-7be5be79.pth"),
             "heads": ("alex.pth", LPIPS_HEADS_URL + "alex.pth")},
    "vgg": {"backbone": ("vgg16-397923af.pth", TORCHVISION_URL + "vgg16-397923af.pth"),
            "heads": ("vgg.pth", LPIPS_HEADS_URL + "vgg.pth")},
}
PAIRING_HINT = ("LPIPS needs a matching pair in the 'lpips' models folder: alexnet-owt-7be5be79.pth with alex.pth "
                "(the default LPIPS), or vgg16-397923af.pth with vgg.pth (the variant PTI trains with).")


@dataclass(frozen=True)
class Conv:
    c_in: int
    c_out: int
    kernel: int
    stride: int = 1
    padding: int = 0


def alexnet_layers() -> list:
    """torchvision's AlexNet `features` up to relu5 (its last max-pool is past the last tap)."""
    return [Conv(3, 64, 11, 4, 2), "R", ("P", 3, 2), Conv(64, 192, 5, 1, 2), "R", ("P", 3, 2),
            Conv(192, 384, 3, 1, 1), "R", Conv(384, 256, 3, 1, 1), "R", Conv(256, 256, 3, 1, 1), "R"]


def vgg16_layers() -> list:
    """torchvision's VGG16 `features` up to relu5_3."""
    layers, c_in = [], 3
    for v in VGG16_LAYOUT:
        if v == "M":
            layers.append(("P", 2, 2))
        else:
            layers += [Conv(c_in, v, 3, 1, 1), "R"]
            c_in = v
    return layers[:VGG16_TAPS[-1] + 1]


@dataclass(frozen=True)
class NetSpec:
    name: str
    title: str
    layers: tuple
    taps: tuple
    channels: tuple

    def conv_shapes(self) -> dict[str, tuple]:
        """The backbone's weight/bias shapes under torchvision's key names ("features.0.weight")."""
        shapes = {}
        for i, layer in enumerate(self.layers):
            if isinstance(layer, Conv):
                shapes[f"features.{i}.weight"] = (layer.c_out, layer.c_in, layer.kernel, layer.kernel)
                shapes[f"features.{i}.bias"] = (layer.c_out,)
        return shapes


NETS = {
    "alex": NetSpec("alex", "AlexNet", tuple(alexnet_layers()), ALEX_TAPS, ALEX_CHANNELS),
    "vgg": NetSpec("vgg", "VGG16", tuple(vgg16_layers()), VGG16_TAPS, VGG16_CHANNELS),
}


def build_features(spec: NetSpec) -> nn.Sequential:
    mods = []
    for layer in spec.layers:
        if isinstance(layer, Conv):
            mods.append(nn.Conv2d(layer.c_in, layer.c_out, layer.kernel, layer.stride, layer.padding))
        elif layer == "R":
            mods.append(nn.ReLU(inplace=True))  # conv backward needs its input, not its output: safe in place
        else:
            mods.append(nn.MaxPool2d(layer[1], layer[2]))
    return nn.Sequential(*mods)


# ----------------------------------------------------------------------------------------- detection
def backbone_net(sd: dict) -> Optional[str]:
    """"alex" / "vgg" when `sd` holds torchvision's AlexNet / VGG16 trunk (every conv of it, right shapes)."""
    for name, spec in NETS.items():
        shapes = spec.conv_shapes()
        if all(isinstance(sd.get(k), torch.Tensor) and tuple(sd[k].shape) == s for k, s in shapes.items()):
            # VGG19 / vgg16_bn share VGG16's first convs but have more layers or other indices
            extra = {k for k in sd if k.startswith("features.") and k not in shapes
                     and int(k.split(".")[1]) <= spec.taps[-1]}
            if not extra:
                return name
    return None


def heads_net(sd: dict) -> Optional[str]:
    """"alex" / "vgg" when `sd` holds LPIPS's five linear heads (lin{i}.model.1.weight, [1, C, 1, 1])."""
    for name, spec in NETS.items():
        if all(isinstance(sd.get(f"lin{i}.model.1.weight"), torch.Tensor)
               and tuple(sd[f"lin{i}.model.1.weight"].shape) == (1, c, 1, 1) for i, c in enumerate(spec.channels)):
            return name
    return None


def looks_like_backbone(sd: dict) -> bool:
    """A torchvision-style trunk: its first conv, `features.0`, reads RGB."""
    first = sd.get("features.0.weight")
    return isinstance(first, torch.Tensor) and first.dim() == 4 and first.shape[1] == 3


def looks_like_heads(sd: dict) -> bool:
    return any(k.startswith("lin0.model.") for k in sd)


def detect_backbone(raw: RawCheckpoint) -> bool:
    return any(looks_like_backbone(sd) for sd in raw.state_dicts.values())


def detect_heads(raw: RawCheckpoint) -> bool:
    return any(looks_like_heads(sd) for sd in raw.state_dicts.values())


def load_backbone(raw: RawCheckpoint) -> dict:
    """The file's torchvision trunk state dict (checked in `LPIPS.from_state_dicts`)."""
    sd = next((sd for sd in raw.state_dicts.values() if looks_like_backbone(sd)), None)
    if sd is None:
        raise CheckpointError(raw.path, "is not a torchvision AlexNet / VGG16 file (expected features.* keys).",
                              PAIRING_HINT)
    return sd


def load_heads(raw: RawCheckpoint) -> dict:
    sd = next((sd for sd in raw.state_dicts.values() if looks_like_heads(sd)), None)
    if sd is None:
        raise CheckpointError(raw.path, "is not an LPIPS heads file (expected lin0.model.1.weight ... "
                              "lin4.model.1.weight).", PAIRING_HINT)
    return sd


# --------------------------------------------------------------------------------------------- model
class LPIPS(nn.Module):
    """`LPIPS(net)` has zero weights: load them with `from_files` / `from_state_dicts` (or the registry's
    `load_lpips`). Always in eval mode with frozen parameters; gradients flow to the inputs."""

    def __init__(self, net: str = "alex"):
        super().__init__()
        if net not in NETS:
            raise ValueError(f"LPIPS net must be one of {sorted(NETS)}, got {net!r}")
        self.net = net
        self.spec = NETS[net]
        self.features = build_features(self.spec)
        self.heads = nn.ParameterList([nn.Parameter(torch.zeros(c)) for c in self.spec.channels])
        self.register_buffer("shift", torch.tensor(SCALING_SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(SCALING_SCALE).view(1, 3, 1, 1))
        self.eval().requires_grad_(False)

    def train(self, mode: bool = True) -> "LPIPS":
        return super().train(False)  # a fixed metric: no dropout, ever

    @classmethod
    def from_files(cls, backbone_path, heads_path) -> "LPIPS":
        """torchvision backbone file + LPIPS v0.1 heads file; the net is read from the backbone's keys."""
        return cls.from_state_dicts(load_plain_state_dict(backbone_path), load_plain_state_dict(heads_path),
                                    backbone_path, heads_path)

    @classmethod
    def from_state_dicts(cls, backbone: dict, heads: dict, backbone_path="backbone", heads_path="heads") -> "LPIPS":
        net = backbone_net(backbone)
        if net is None:
            what = ("has torchvision features.* keys but not AlexNet's or VGG16's layout (VGG19, a batch-norm "
                    "VGG, or another network?)" if any(k.startswith("features.") for k in backbone)
                    else "is not a torchvision AlexNet / VGG16 file")
            if heads_net(backbone) is not None:
                what = "is an LPIPS heads file, not a backbone"
            raise CheckpointError(backbone_path, what + ".", PAIRING_HINT)
        head = heads_net(heads)
        if head is None:
            what = ("is a torchvision backbone, not an LPIPS heads file" if backbone_net(heads) is not None
                    else "holds LPIPS's SqueezeNet heads (seven layers); TransEdit's LPIPS is the AlexNet or VGG16 "
                    "variant" if "lin6.model.1.weight" in heads
                    else "is not an LPIPS v0.1 heads file (expected lin0..lin4.model.1.weight of shape [1, C, 1, 1])")
            raise CheckpointError(heads_path, what + ".", PAIRING_HINT)
        if head != net:
            raise CheckpointError(heads_path, f"holds the {NETS[head].title} LPIPS heads, but the backbone "
                                  f"{_name(backbone_path)} is {NETS[net].title}.",
                                  f"Fix: use {LPIPS_DOWNLOADS[net]['heads'][0]} with {_name(backbone_path)}, or "
                                  f"{LPIPS_DOWNLOADS[head]['backbone'][0]} with {_name(heads_path)}.")
        model = cls(net)
        trunk = {k[len("features."):]: v for k, v in backbone.items() if k in model.spec.conv_shapes()}
        for name, tensors in ((backbone_path, trunk.values()), (heads_path, heads.values())):
            if any(not t.is_floating_point() for t in tensors):
                raise CheckpointError(name, "holds non-floating-point tensors where weights belong; it is damaged.",
                                      "Download it again.")
        model.features.load_state_dict(trunk)
        with torch.no_grad():
            for i, w in enumerate(model.heads):
                w.copy_(heads[f"lin{i}.model.1.weight"].reshape(-1))
        return model

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """x, y [B, 3, H, W] in [-1, 1] -> distances [B] (fp32), differentiable w.r.t. both."""
        if x.dim() != 4 or x.shape[1] != 3 or x.shape != y.shape:
            raise ValueError(f"LPIPS compares two image batches of one shape [B, 3, H, W]; got "
                             f"{tuple(x.shape)} and {tuple(y.shape)}")
        x = x.to(device=self.shift.device, dtype=self.shift.dtype)
        y = y.to(device=self.shift.device, dtype=self.shift.dtype)
        if torch.is_grad_enabled() and x.requires_grad != y.requires_grad:
            # a loss against a fixed target: the target's features need no graph (no backward through them,
            # no saved activations), so it goes through the trunk on its own, first
            live, fixed = (x, y) if x.requires_grad else (y, x)
            with torch.no_grad():
                fixed_taps = [normalized(f) for f in self.taps(fixed)]
            pairs = zip((normalized(f) for f in self.taps(live)), fixed_taps)
        else:  # both or neither need gradients: one batched pass
            batch = x.shape[0]
            pairs = ((f[:batch], f[batch:]) for f in map(normalized, self.taps(torch.cat([x, y]))))
        total = None
        for (fx, fy), w in zip(pairs, self.heads):
            term = tap_distance(fx, fy, w)
            total = term if total is None else total + term
        return total

    def against(self, target: torch.Tensor) -> "FixedTarget":
        """`d = lpips.against(y)`, then `d(x)` == `lpips(x, y)` with y's features computed once, now (they are
        kept: ~30 MB per 1024² image for AlexNet, ~5x that for VGG16)."""
        if target.dim() != 4 or target.shape[1] != 3:
            raise ValueError(f"LPIPS target must be an image batch [B, 3, H, W]; got {tuple(target.shape)}")
        target = target.to(device=self.shift.device, dtype=self.shift.dtype)
        with torch.no_grad():
            return FixedTarget(self, tuple(normalized(f) for f in self.taps(target)), tuple(target.shape))

    def taps(self, images: torch.Tensor):
        """The trunk's activations at the five taps, one at a time (each is used before the next is made)."""
        h = (images - self.shift) / self.scale
        taps = iter(self.spec.taps)
        tap = next(taps)
        for i, layer in enumerate(self.features):
            h = layer(h)
            if i == tap:
                yield h
                tap = next(taps, None)
                if tap is None:
                    return


class FixedTarget:
    """LPIPS to one fixed target batch (see `LPIPS.against`): callable on images of the target's shape -> [B]."""

    def __init__(self, model: LPIPS, features: tuple, shape: tuple):
        self.model, self.features, self.shape = model, features, shape

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape) != self.shape:
            raise ValueError(f"LPIPS compares images of the target's shape {list(self.shape)}; got {list(x.shape)}")
        x = x.to(device=self.model.shift.device, dtype=self.model.shift.dtype)
        total = None
        for fx, fy, w in zip(map(normalized, self.model.taps(x)), self.features, self.model.heads):
            term = tap_distance(fx, fy, w)
            total = term if total is None else total + term
        return total


def normalized(f: torch.Tensor) -> torch.Tensor:
    """Features unit-normalised over channels per pixel, in fp32 even under fp16/bf16 autocast (the channel sum of
    squared activations overflows fp16)."""
    with torch.autocast(device_type=f.device.type, enabled=False):
        f = f.float()
        return f / (f.square().sum(1, keepdim=True).sqrt() + NORM_EPS)


def tap_distance(fx: torch.Tensor, fy: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """One tap's contribution [B] from normalised features: squared difference, spatial mean per channel, weighted
    by the head (mean over pixels of w . d = w . mean over pixels of d: no 1x1 conv over the whole map)."""
    with torch.autocast(device_type=fx.device.type, enabled=False):
        return (fx - fy).square().mean((2, 3)) @ w.float()


def _name(path) -> str:
    return os.path.basename(str(path))
