"""Face parsing: BiSeNet as zllrunning/face-parsing.PyTorch trained it on CelebAMask-HQ (19 classes).

Loads `79999_iter.pth` (the file STIT's `segmentation_model_path` names) unchanged: a plain state dict whose key
names are the official ones (`cp.resnet.*` ResNet-18 trunk, `cp.arm16/arm32` attention refinement, `cp.conv_head*`,
`cp.conv_avg`, `ffm.*` feature fusion, heads `conv_out`, `conv_out16`, `conv_out32`). As in the official network,
there is no separate spatial path: the trunk's stride-8 features stand in for it. STIT's `models/seg_model_2.py`
is the same network with the trunk inlined (and the same construction-time download, which this module never does).

Inference only: every BatchNorm uses its running statistics, folded into the convolution before it (one pass
over the activations instead of two; the fold is recomputed each call in fp32, so loading other weights or
moving the model needs nothing else). The two auxiliary heads exist for the official training loss; they are
computed only when asked (`aux_heads=True`).

`face_region_mask` is STIT's foreground (edit_video_stitching_tuning.calc_masks before its dilation): images in
[-1, 1] resized to 512 (nearest), clipped, mapped to [0, 1], ImageNet-normalised, argmax of the main head, and
every class except background (0), cloth (16) and hat (18) is the face region. STIT dilates that 512 mask and then
scales it to the crop with `resize_mask` (bilinear, align_corners=True).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from ..core.checkpoint_io import RawCheckpoint, check_weight_dtypes, strip_dataparallel
from ..core.descriptor import ModelDescriptor
from ..core.devices import device_constant
from ..core.precision import PrecisionPolicy

# CelebAMask-HQ's parts in the order face-parsing.PyTorch numbers them (its prepropess_data.py, 0 = none)
CLASS_NAMES = ("background", "skin", "l_brow", "r_brow", "l_eye", "r_eye", "eye_g", "l_ear", "r_ear", "ear_r",
               "nose", "mouth", "u_lip", "l_lip", "neck", "neck_l", "cloth", "hair", "hat")
NOT_FACE_CLASSES = (0, 16, 18)  # STIT's background_classes: background, cloth, hat (hair counts as face)
PARSING_SIZE = 512  # STIT (and the official test.py) parse at 512x512
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
FACE_PARSING_FILE = "79999_iter.pth"
FACE_PARSING_URL = "https://drive.google.com/open?id=154JgKpzCPW82qINcVieuPH3fZ2e0P812"  # the official README's
FACE_PARSING_HINT = (f"Put face-parsing.PyTorch's {FACE_PARSING_FILE} (the BiSeNet face parser STIT uses, "
                     f"zllrunning/face-parsing.PyTorch) in models/face_parsing: {FACE_PARSING_URL}")
# keys only this family has (the heads and the fusion module, beside the ResNet-18 trunk)
SIGNATURE_KEYS = ("cp.resnet.conv1.weight", "cp.arm32.conv_atten.weight", "ffm.convblk.conv.weight",
                  "conv_out.conv_out.weight", "conv_out16.conv_out.weight", "conv_out32.conv_out.weight")


# ------------------------------------------------------------------------------------------------ layers
def conv_bn(x: torch.Tensor, conv: nn.Conv2d, bn: nn.BatchNorm2d) -> torch.Tensor:
    """conv (no bias) then BatchNorm with running statistics, as one convolution (the fold is done in fp32)."""
    scale = bn.weight.float() * torch.rsqrt(bn.running_var.float() + bn.eps)
    shift = bn.bias.float() - bn.running_mean.float() * scale
    weight = conv.weight.float() * scale.view(-1, 1, 1, 1)
    return F.conv2d(x, weight.to(x.dtype), shift.to(x.dtype), conv.stride, conv.padding)


def global_mean(x: torch.Tensor) -> torch.Tensor:
    return x.mean(dim=(2, 3), keepdim=True)  # the official avg_pool2d over the whole map


class ConvBNReLU(nn.Module):
    def __init__(self, cin: int, cout: int, kernel: int = 3, stride: int = 1, padding: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, padding, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x):
        return F.relu_(conv_bn(x, self.conv, self.bn))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if cin != cout or stride != 1:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        residual = conv_bn(F.relu_(conv_bn(x, self.conv1, self.bn1)), self.conv2, self.bn2)
        shortcut = x if self.downsample is None else conv_bn(x, self.downsample[0], self.downsample[1])
        return F.relu_(residual.add_(shortcut))


class ResNet18Trunk(nn.Module):
    """torchvision's ResNet-18 layout without its classifier; features at strides 8, 16 and 32."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        widths = ((64, 64, 1), (64, 128, 2), (128, 256, 2), (256, 512, 2))
        for i, (cin, cout, stride) in enumerate(widths, 1):
            setattr(self, f"layer{i}", nn.Sequential(BasicBlock(cin, cout, stride), BasicBlock(cout, cout)))

    def forward(self, x):
        x = F.max_pool2d(F.relu_(conv_bn(x, self.conv1, self.bn1)), 3, 2, 1)
        feat8 = self.layer2(self.layer1(x))
        feat16 = self.layer3(feat8)
        return feat8, feat16, self.layer4(feat16)


class AttentionRefinement(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = ConvBNReLU(cin, cout)
        self.conv_atten = nn.Conv2d(cout, cout, 1, bias=False)
        self.bn_atten = nn.BatchNorm2d(cout)

    def forward(self, x):
        feat = self.conv(x)
        return feat * torch.sigmoid(conv_bn(global_mean(feat), self.conv_atten, self.bn_atten))


class ContextPath(nn.Module):
    def __init__(self):
        super().__init__()
        self.resnet = ResNet18Trunk()
        self.arm16 = AttentionRefinement(256, 128)
        self.arm32 = AttentionRefinement(512, 128)
        self.conv_head32 = ConvBNReLU(128, 128)
        self.conv_head16 = ConvBNReLU(128, 128)
        self.conv_avg = ConvBNReLU(512, 128, 1, 1, 0)

    def forward(self, x):
        feat8, feat16, feat32 = self.resnet(x)
        # the global context (1x1) is broadcast where the official code upsamples it to the map first
        feat32_sum = self.arm32(feat32) + self.conv_avg(global_mean(feat32))
        feat32_up = self.conv_head32(F.interpolate(feat32_sum, feat16.shape[2:], mode="nearest"))
        feat16_sum = self.arm16(feat16) + feat32_up
        feat16_up = self.conv_head16(F.interpolate(feat16_sum, feat8.shape[2:], mode="nearest"))
        return feat8, feat16_up, feat32_up  # strides 8, 8, 16


class FeatureFusion(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.convblk = ConvBNReLU(cin, cout, 1, 1, 0)
        self.conv1 = nn.Conv2d(cout, cout // 4, 1, bias=False)
        self.conv2 = nn.Conv2d(cout // 4, cout, 1, bias=False)

    def forward(self, fsp, fcp):
        feat = self.convblk(torch.cat([fsp, fcp], dim=1))
        atten = torch.sigmoid(self.conv2(F.relu(self.conv1(global_mean(feat)))))
        return feat * (atten + 1)  # feat * atten + feat in one pass over the map


class OutputHead(nn.Module):
    def __init__(self, cin: int, mid: int, n_classes: int):
        super().__init__()
        self.conv = ConvBNReLU(cin, mid)
        self.conv_out = nn.Conv2d(mid, n_classes, 1, bias=False)

    def forward(self, x):
        return self.conv_out(self.conv(x))


class BiSeNet(nn.Module):
    """face-parsing.PyTorch's BiSeNet (inference only). `forward(x)` -> the main head's logits at x's size;
    `forward(x, aux_heads=True)` -> (main, out16, out32) as the official forward returns them."""

    PRECISION = PrecisionPolicy(fp16=True, bf16=True, auto_gpu="fp16", auto_without_bf16="fp16",
                                evidence="BatchNorm-normalised activations stay far inside fp16's range; fp16 "
                                "keeps more mantissa than bf16 for the argmax (tests/test_face_parsing.py)")

    def __init__(self, n_classes: int = len(CLASS_NAMES)):
        super().__init__()
        self.n_classes = n_classes
        self.cp = ContextPath()
        self.ffm = FeatureFusion(256, 256)
        self.conv_out = OutputHead(256, 256, n_classes)
        self.conv_out16 = OutputHead(128, 64, n_classes)
        self.conv_out32 = OutputHead(128, 64, n_classes)

    def forward(self, x: torch.Tensor, *, aux_heads: bool = False):
        size = x.shape[2:]
        x = x.to(self.conv_out.conv_out.weight.dtype)
        feat8, feat_cp8, feat_cp16 = self.cp(x)
        heads = [self.conv_out(self.ffm(feat8, feat_cp8))]
        if aux_heads:
            heads += [self.conv_out16(feat_cp8), self.conv_out32(feat_cp16)]
        up = [F.interpolate(h, size, mode="bilinear", align_corners=True) for h in heads]
        return tuple(up) if aux_heads else up[0]


# ------------------------------------------------------------------------------------------------ masks
def parser_input(images: torch.Tensor, size: int = PARSING_SIZE) -> torch.Tensor:
    """STIT's preprocessing: [-1, 1] images resized to size x size (nearest), clipped, to [0, 1], ImageNet-
    normalised (NaN read as 0, mid-grey). The pointwise part runs at whichever of the two sizes is smaller
    (nearest resizing commutes with it exactly)."""
    scale = device_constant([0.5 / s for s in IMAGENET_STD], images.device, images.dtype, (1, 3, 1, 1))
    shift = device_constant([(0.5 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)], images.device,
                            images.dtype, (1, 3, 1, 1))
    if images.shape[-2] * images.shape[-1] > size * size:
        images = F.interpolate(images, (size, size), mode="nearest")
    x = torch.addcmul(shift, images.nan_to_num(0.0).clamp(-1, 1), scale)  # a NaN pixel would spread everywhere
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, (size, size), mode="nearest")
    return x


def model_device_dtype(parser: nn.Module) -> tuple[torch.device, torch.dtype]:
    weight = next(parser.parameters())
    return weight.device, weight.dtype


def check_images(images: torch.Tensor, what: str = "images") -> None:
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"face parsing needs {what} as [N, 3, H, W] in [-1, 1], got {shape}")
    if not images.is_floating_point():
        raise ValueError(f"face parsing needs floating-point {what} in [-1, 1], got {images.dtype}")


@torch.no_grad()
def parse_faces(parser: BiSeNet, images: torch.Tensor, *, batch_size: int = 8) -> torch.Tensor:
    """Per-pixel classes (indices into CLASS_NAMES) of [N, 3, H, W] images in [-1, 1] as STIT computes them:
    [N, 512, 512] uint8 on the images' device. The parser runs on its own device and dtype, `batch_size` images
    at a time (the labels of a whole clip are small; the 512x512 logits of a chunk are not)."""
    check_images(images)
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    device, dtype = model_device_dtype(parser)
    chunks = []
    for start in range(0, images.shape[0], batch_size):
        x = parser_input(images[start:start + batch_size].to(device, non_blocking=True).to(dtype))
        chunks.append(parser(x).argmax(dim=1).to(torch.uint8))
    if not chunks:
        return torch.zeros(0, PARSING_SIZE, PARSING_SIZE, dtype=torch.uint8, device=images.device)
    return torch.cat(chunks).to(images.device)


def labels_to_mask(labels: torch.Tensor, classes_excluded: Sequence[int] = NOT_FACE_CLASSES) -> torch.Tensor:
    """[N, H, W] class labels -> [N, 1, H, W] float32 mask: 1 where the class is not one of `classes_excluded`."""
    excluded = torch.zeros(256, dtype=torch.bool, device=labels.device)
    excluded[list(classes_excluded)] = True  # a lookup table: one gather for any number of classes
    return (~excluded[labels.long()]).unsqueeze(1).float()


def resize_mask(mask: torch.Tensor, size: Union[int, Sequence[int]]) -> torch.Tensor:
    """A [N, 1, h, w] mask at another size as STIT scales its 512 masks to the crop: bilinear, align_corners."""
    size = (size, size) if isinstance(size, int) else tuple(size)
    if tuple(mask.shape[-2:]) == size:
        return mask
    return F.interpolate(mask, size, mode="bilinear", align_corners=True)


def class_ids(names: Sequence[str]) -> tuple[int, ...]:
    """Class indices from names in CLASS_NAMES (e.g. ("background", "hair")), with a clear error."""
    unknown = [n for n in names if n not in CLASS_NAMES]
    if unknown:
        raise ValueError(f"unknown face-parsing classes {unknown}; the classes are {', '.join(CLASS_NAMES)}")
    return tuple(CLASS_NAMES.index(n) for n in names)


def face_region_mask(parser: BiSeNet, images: torch.Tensor, *, classes_excluded: Sequence[int] = NOT_FACE_CLASSES,
                     output_size: Optional[Union[int, Sequence[int]]] = None, batch_size: int = 8) -> torch.Tensor:
    """STIT's foreground mask of [N, 3, H, W] images in [-1, 1]: [N, 1, 512, 512] float32 (1 = face region: any
    class but `classes_excluded`), on the images' device. `output_size` (an int or (h, w)) scales it with
    `resize_mask` as STIT does after dilating; STIT's stitching dilates at 512 first, so it keeps the default."""
    bad = [c for c in classes_excluded if not 0 <= int(c) < parser.n_classes]
    if bad:
        raise ValueError(f"classes_excluded must be class indices 0..{parser.n_classes - 1}, got {bad}")
    mask = labels_to_mask(parse_faces(parser, images, batch_size=batch_size), classes_excluded)
    return mask if output_size is None else resize_mask(mask, output_size)


# ------------------------------------------------------------------------------------------------ files
@dataclass
class FaceParsingConfig:
    n_classes: int = len(CLASS_NAMES)


@dataclass(kw_only=True)
class FaceParserDescriptor(ModelDescriptor):
    """A BiSeNet face parser (face-parsing.PyTorch layout)."""


def candidate(raw: RawCheckpoint) -> Optional[dict]:
    for sd in raw.state_dicts.values():
        sd = strip_dataparallel(sd)
        if all(k in sd for k in SIGNATURE_KEYS):
            return sd
    return None


def detect(raw: RawCheckpoint) -> bool:
    return candidate(raw) is not None


def load(raw: RawCheckpoint) -> FaceParserDescriptor:
    from ..core.errors import CheckpointError

    sd = candidate(raw)
    if sd is None:
        raise CheckpointError(raw.path, "is not a BiSeNet face parser (expected the cp.resnet.*, ffm.* and "
                              "conv_out* keys of face-parsing.PyTorch).", FACE_PARSING_HINT)
    heads = {int(sd[k].shape[0]) for k in SIGNATURE_KEYS[3:]}
    if len(heads) != 1:
        raise CheckpointError(raw.path, f"its three output heads disagree on the number of classes ({sorted(heads)})"
                              "; the file is damaged or edited.", FACE_PARSING_HINT)
    config = FaceParsingConfig(n_classes=heads.pop())
    if config.n_classes < len(CLASS_NAMES):  # STIT's face region excludes classes 0, 16 and 18 by index
        raise CheckpointError(raw.path, f"is a BiSeNet with {config.n_classes} classes; STIT's face region needs "
                              f"the {len(CLASS_NAMES)}-class CelebAMask-HQ parser (its classes "
                              f"{', '.join(map(str, NOT_FACE_CLASSES))} are background, cloth and hat).",
                              FACE_PARSING_HINT)
    model = BiSeNet(config.n_classes)
    own = model.state_dict()
    missing = [k for k in own if k not in sd and not k.endswith("num_batches_tracked")]  # unused in eval
    unexpected = [k for k in sd if k not in own]
    if missing or unexpected:
        raise CheckpointError(raw.path, f"does not match face-parsing.PyTorch's BiSeNet (missing {missing[:3]}, "
                              f"unexpected {unexpected[:3]}).", FACE_PARSING_HINT)
    check_weight_dtypes(raw.path, model, sd)
    # damaged weights would parse every pixel as background without a word: a mask of nothing
    bad = [k for k, v in sd.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise CheckpointError(raw.path, f"holds NaN or infinite weights ({', '.join(bad[:3])}); the file is damaged.",
                              FACE_PARSING_HINT)
    bad = [k for k, v in sd.items() if k.endswith("running_var") and bool((v < 0).any())]
    if bad:
        raise CheckpointError(raw.path, f"holds negative BatchNorm variances ({', '.join(bad[:3])}); the file is "
                              "damaged.", FACE_PARSING_HINT)
    model.load_state_dict(sd, strict=True)  # a BatchNorm without num_batches_tracked still loads
    notes = [] if config.n_classes == len(CLASS_NAMES) else [
        f"{config.n_classes} classes, not CelebAMask-HQ's {len(CLASS_NAMES)}: class names do not apply"]
    return FaceParserDescriptor(family="face_parsing", model=model.eval().requires_grad_(False), config=config,
                                source=str(raw.path), notes=notes)
