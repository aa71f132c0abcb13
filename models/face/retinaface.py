"""RetinaFace (Deng et al., CVPR 2020) face detector with 5-point landmarks, in pure PyTorch.

Loads, unchanged, the checkpoints that many ComfyUI installs already have in `models/facedetection`
(face-restoration and face-swap packs use them through facexlib): `detection_Resnet50_Final.pth` and
`detection_mobilenet0.25_Final.pth` (xinntao/facexlib releases; trained by biubug6/Pytorch_Retinaface),
plain state dicts with or without DataParallel's `module.` prefix. The key names are the originals:
`body.*` (a ResNet-50 or MobileNet-0.25 trunk), `fpn.*`, `ssh1..3.*`, `ClassHead/BboxHead/LandmarkHead.i`.

Detection follows the reference inference (facexlib `RetinaFace.detect_faces`): BGR 0..255 minus
(104, 117, 123) at the photo's own size (downscaled only past 2150 px, facexlib's max_size), anchors
16/32, 64/128, 256/512 px at strides 8/16/32, variances (0.1, 0.2), score > 0.8, NMS at IoU 0.4.
A whole batch runs in one forward. The five points are, in image coordinates: the eye on the image
left, the other eye, the nose tip, the image-left mouth corner, the other mouth corner — eye centres
and mouth corners are what FFHQ alignment needs.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..core.checkpoint_io import RawCheckpoint, check_weight_dtypes, strip_dataparallel
from ..core.descriptor import ModelDescriptor
from ..core.devices import device_constant, host_side

BACKBONES = ("resnet50", "mobilenet0.25")
MIN_SIZES = ((16, 32), (64, 128), (256, 512))
STEPS = (8, 16, 32)
VARIANCE = (0.1, 0.2)
BGR_MEAN = (104.0, 117.0, 123.0)
MAX_SIDE = 2150  # facexlib's max_size: larger photos are detected downscaled
RETINAFACE_FILES = {  # the released files and where they come from
    "detection_Resnet50_Final.pth": "https://github.com/xinntao/facexlib/releases/download/v0.1.0/detection_Resnet50_Final.pth",
    "detection_mobilenet0.25_Final.pth": "https://github.com/xinntao/facexlib/releases/download/v0.1.0/detection_mobilenet0.25_Final.pth",
}
RETINAFACE_HINT = ("Put a RetinaFace file in models/facedetection: detection_Resnet50_Final.pth (recommended) or "
                   "detection_mobilenet0.25_Final.pth from xinntao/facexlib's v0.1.0 release "
                   "(https://github.com/xinntao/facexlib/releases/tag/v0.1.0).")


@dataclass
class RetinaFaceConfig:
    backbone: str = "resnet50"
    in_channel: int = 256  # trunk width at stride 8 / 2 (the FPN takes 2x, 4x, 8x this)
    out_channel: int = 256  # FPN / SSH width
    num_anchors: int = 2

    def __post_init__(self):
        if self.backbone not in BACKBONES:
            raise ValueError(f"backbone must be one of {BACKBONES}, got {self.backbone!r}")

    @property
    def leaky(self) -> float:  # the reference uses LeakyReLU(0.1) in the FPN/SSH of narrow models only
        return 0.1 if self.out_channel <= 64 else 0.0

    def to_dict(self) -> dict:
        return asdict(self)


# ----------------------------------------------------------------------------------------- layers
def _conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1, leaky: Optional[float] = 0.0, groups: int = 1):
    layers = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    if leaky is not None:
        layers.append(nn.LeakyReLU(leaky, inplace=True))
    return layers


def _conv_dw(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(*_conv_bn(cin, cin, 3, stride, 0.1, groups=cin), *_conv_bn(cin, cout, 1, 1, 0.1))


class MobileNet025(nn.Module):
    """The reference MobileNetV1 x0.25 trunk (stage1..3; its classifier is never part of a checkpoint)."""

    def __init__(self):
        super().__init__()
        self.stage1 = nn.Sequential(nn.Sequential(*_conv_bn(3, 8, 3, 2, 0.1)), _conv_dw(8, 16, 1), _conv_dw(16, 32, 2),
                                    _conv_dw(32, 32, 1), _conv_dw(32, 64, 2), _conv_dw(64, 64, 1))
        self.stage2 = nn.Sequential(_conv_dw(64, 128, 2), *[_conv_dw(128, 128, 1) for _ in range(5)])
        self.stage3 = nn.Sequential(_conv_dw(128, 256, 2), _conv_dw(256, 256, 1))

    def forward(self, x):
        c1 = self.stage1(x)
        c2 = self.stage2(c1)
        return [c1, c2, self.stage3(c2)]


class ResNet50Trunk(nn.Module):
    """torchvision's ResNet-50 up to layer4 under its own attribute names (layer2..4 are returned)."""

    def __init__(self):
        super().__init__()
        from torchvision.models import resnet50

        net = resnet50(weights=None)
        for name in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"):
            setattr(self, name, getattr(net, name))

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        c2 = self.layer2(self.layer1(x))
        c3 = self.layer3(c2)
        return [c2, c3, self.layer4(c3)]


class FPN(nn.Module):
    def __init__(self, widths: list[int], out: int, leaky: float):
        super().__init__()
        self.output1 = nn.Sequential(*_conv_bn(widths[0], out, 1, 1, leaky))
        self.output2 = nn.Sequential(*_conv_bn(widths[1], out, 1, 1, leaky))
        self.output3 = nn.Sequential(*_conv_bn(widths[2], out, 1, 1, leaky))
        self.merge1 = nn.Sequential(*_conv_bn(out, out, 3, 1, leaky))
        self.merge2 = nn.Sequential(*_conv_bn(out, out, 3, 1, leaky))

    def forward(self, feats):
        o1, o2, o3 = self.output1(feats[0]), self.output2(feats[1]), self.output3(feats[2])
        o2 = self.merge2(o2 + F.interpolate(o3, size=o2.shape[-2:], mode="nearest"))
        o1 = self.merge1(o1 + F.interpolate(o2, size=o1.shape[-2:], mode="nearest"))
        return [o1, o2, o3]


class SSH(nn.Module):
    def __init__(self, cin: int, cout: int, leaky: float):
        super().__init__()
        self.conv3X3 = nn.Sequential(*_conv_bn(cin, cout // 2, leaky=None))
        self.conv5X5_1 = nn.Sequential(*_conv_bn(cin, cout // 4, leaky=leaky))
        self.conv5X5_2 = nn.Sequential(*_conv_bn(cout // 4, cout // 4, leaky=None))
        self.conv7X7_2 = nn.Sequential(*_conv_bn(cout // 4, cout // 4, leaky=leaky))
        self.conv7x7_3 = nn.Sequential(*_conv_bn(cout // 4, cout // 4, leaky=None))

    def forward(self, x):
        c5 = self.conv5X5_1(x)
        c7 = self.conv7X7_2(c5)
        return F.relu(torch.cat([self.conv3X3(x), self.conv5X5_2(c5), self.conv7x7_3(c7)], dim=1))


class _Head(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv1x1 = nn.Conv2d(cin, cout, 1)

    def forward(self, x, per_anchor: int):
        out = self.conv1x1(x).permute(0, 2, 3, 1)
        return out.reshape(out.shape[0], -1, per_anchor)


# ------------------------------------------------------------------------------------------ model
@dataclass
class DetectedFace:
    box: np.ndarray  # (4,) x1, y1, x2, y2 in pixels
    score: float
    points: np.ndarray  # (5, 2): image-left eye, other eye, nose, image-left mouth corner, other corner


class RetinaFace(nn.Module):
    def __init__(self, config: Optional[RetinaFaceConfig] = None):
        super().__init__()
        self.config = config = config or RetinaFaceConfig()
        self.body = ResNet50Trunk() if config.backbone == "resnet50" else MobileNet025()
        c, out, a = config.in_channel, config.out_channel, config.num_anchors
        self.fpn = FPN([2 * c, 4 * c, 8 * c], out, config.leaky)
        self.ssh1, self.ssh2, self.ssh3 = (SSH(out, out, config.leaky) for _ in range(3))
        self.ClassHead = nn.ModuleList(_Head(out, a * 2) for _ in range(3))
        self.BboxHead = nn.ModuleList(_Head(out, a * 4) for _ in range(3))
        self.LandmarkHead = nn.ModuleList(_Head(out, a * 10) for _ in range(3))
        self.eval().requires_grad_(False)

    def forward(self, x: torch.Tensor):
        """BGR minus the mean, [B, 3, H, W] -> (box offsets [B, N, 4], face probability [B, N], landmark
        offsets [B, N, 10]) for the N anchors of `priors`."""
        feats = self.fpn(self.body(x))
        feats = [self.ssh1(feats[0]), self.ssh2(feats[1]), self.ssh3(feats[2])]
        loc = torch.cat([h(f, 4) for h, f in zip(self.BboxHead, feats)], dim=1)
        conf = torch.cat([h(f, 2) for h, f in zip(self.ClassHead, feats)], dim=1)
        landmarks = torch.cat([h(f, 10) for h, f in zip(self.LandmarkHead, feats)], dim=1)
        return loc, conf.softmax(-1)[..., 1], landmarks

    @staticmethod
    def priors(height: int, width: int, device=None) -> torch.Tensor:
        """Anchors [N, 4] (cx, cy, w, h) in pixels, in the reference order: level, row, column, size."""
        out = []
        for sizes, step in zip(MIN_SIZES, STEPS):
            fh, fw = math.ceil(height / step), math.ceil(width / step)
            cy, cx = torch.meshgrid((torch.arange(fh, device=device) + 0.5) * step,
                                    (torch.arange(fw, device=device) + 0.5) * step, indexing="ij")
            for_sizes = [torch.stack([cx, cy, torch.full_like(cx, s), torch.full_like(cx, s)], dim=-1) for s in sizes]
            out.append(torch.stack(for_sizes, dim=2).reshape(-1, 4))
        return torch.cat(out).float()

    @torch.no_grad()
    def detect(self, images: torch.Tensor, threshold: float = 0.8, nms_iou: float = 0.4,
               max_side: int = MAX_SIDE) -> list[list[DetectedFace]]:
        """RGB images [B, 3, H, W] in [0, 1] (one size: a ComfyUI batch) -> the faces of each, best first."""
        device = next(self.parameters()).device
        x = images.to(device=device, dtype=torch.float32)
        h, w = x.shape[-2:]
        scale = min(1.0, max_side / max(h, w))
        if scale < 1.0:
            x = F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False)
        mean = device_constant(BGR_MEAN, device, torch.float32, (1, 3, 1, 1))
        x = x.flip(1) * 255.0 - mean
        loc, score, lm = self(x)
        pri = self.priors(*x.shape[-2:], device=device)
        centre, size = pri[:, :2], pri[:, 2:]
        box_c = centre + loc[..., :2] * VARIANCE[0] * size
        box_s = size * torch.exp(loc[..., 2:] * VARIANCE[1])
        boxes = torch.cat([box_c - box_s / 2, box_c + box_s / 2], dim=-1) / scale
        points = (centre[:, None] + lm.reshape(*lm.shape[:2], 5, 2) * VARIANCE[0] * size[:, None]) / scale
        # the reference keeps the best PRE_NMS_TOP_K boxes over the threshold: the best k of all, chosen on the
        # device, then one copy of the whole batch back; thresholding and NMS run on those few on the host
        k = min(PRE_NMS_TOP_K, score.shape[1])
        best, order = score.topk(k, dim=1)  # [B, k], best first
        picked = torch.cat([best[..., None], boxes.gather(1, order[..., None].expand(-1, -1, 4)),
                            points.reshape(*points.shape[:2], 10).gather(1, order[..., None].expand(-1, -1, 10))], -1)
        return _faces(picked.cpu().double(), threshold, nms_iou)  # the one read-back per batch


@host_side
def _faces(picked: torch.Tensor, threshold: float, nms_iou: float) -> list[list["DetectedFace"]]:
    """Host rows [B, k, 1 + 4 + 10] (score, box, landmarks; best first) -> each image's faces after the
    threshold and NMS."""
    results = []
    for rows in picked:
        rows = rows[rows[:, 0] > threshold]
        kept = nms(rows[:, 1:5], nms_iou)
        results.append([DetectedFace(rows[i, 1:5].numpy(), float(rows[i, 0]), rows[i, 5:].reshape(5, 2).numpy())
                        for i in kept])
    return results


PRE_NMS_TOP_K = 5000  # the reference detector keeps the 5000 best boxes before NMS


def nms(boxes: torch.Tensor, iou: float) -> list[int]:
    """Greedy non-maximum suppression of boxes sorted best first: drop a box whose IoU with a kept one is above
    `iou` (torchvision.ops.nms, which timm brings along; the same rule in plain torch without it)."""
    if boxes.shape[0] == 0:
        return []
    boxes = boxes[:PRE_NMS_TOP_K]
    try:
        from torchvision.ops import nms as tv_nms
    except ImportError:
        tv_nms = None
    if tv_nms is not None:
        scores = torch.arange(boxes.shape[0], 0, -1, dtype=torch.float32, device=boxes.device)  # keep our order
        return tv_nms(boxes.float(), scores, iou).tolist()
    area = (boxes[:, 2] - boxes[:, 0]).clamp(min=0) * (boxes[:, 3] - boxes[:, 1]).clamp(min=0)
    lt = torch.maximum(boxes[:, None, :2], boxes[None, :, :2])
    rb = torch.minimum(boxes[:, None, 2:], boxes[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    overlap = (inter / (area[:, None] + area[None, :] - inter).clamp(min=1e-12)).cpu()
    suppressed = torch.zeros(boxes.shape[0], dtype=torch.bool)
    kept = []
    for i in range(boxes.shape[0]):
        if suppressed[i]:
            continue
        kept.append(i)
        suppressed |= overlap[i] > iou
    return kept


# ------------------------------------------------------------------------------------------ files
@dataclass(kw_only=True)
class RetinaFaceDescriptor(ModelDescriptor):
    """A RetinaFace detector (ResNet-50 or MobileNet-0.25 trunk, from the keys)."""


def _candidate(raw: RawCheckpoint) -> Optional[dict]:
    for sd in raw.state_dicts.values():
        sd = strip_dataparallel(sd)
        if "ClassHead.0.conv1x1.weight" in sd and "LandmarkHead.0.conv1x1.weight" in sd and "fpn.output1.0.weight" in sd:
            return sd
    return None


def detect(raw: RawCheckpoint) -> bool:
    return _candidate(raw) is not None


def infer_config(sd: dict) -> RetinaFaceConfig:
    if "body.layer1.0.conv1.weight" in sd:
        backbone = "resnet50"
    elif "body.stage1.0.0.weight" in sd:
        backbone = "mobilenet0.25"
    else:
        raise ValueError("its trunk is neither RetinaFace's ResNet-50 nor its MobileNet-0.25")
    return RetinaFaceConfig(backbone=backbone, in_channel=int(sd["fpn.output1.0.weight"].shape[1]) // 2,
                            out_channel=int(sd["ClassHead.0.conv1x1.weight"].shape[1]),
                            num_anchors=int(sd["ClassHead.0.conv1x1.weight"].shape[0]) // 2)


def load(raw: RawCheckpoint) -> RetinaFaceDescriptor:
    from ..core.errors import CheckpointError

    sd = _candidate(raw)
    if sd is None:
        raise CheckpointError(raw.path, "is not a RetinaFace face detector (expected body.*, fpn.*, ClassHead.* "
                              "keys).", RETINAFACE_HINT)
    try:
        config = infer_config(sd)
    except (ValueError, KeyError, IndexError) as e:
        raise CheckpointError(raw.path, f"looks like RetinaFace but {e}.", RETINAFACE_HINT) from None
    model = RetinaFace(config)
    check_weight_dtypes(raw.path, model, sd)
    result = model.load_state_dict(sd, strict=False)
    missing = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]  # unused in eval
    unexpected = [k for k in result.unexpected_keys if not k.startswith(("body.fc.", "body.avgpool"))]
    if missing or unexpected:
        raise CheckpointError(raw.path, f"RetinaFace ({config.backbone}) weights do not match (missing "
                              f"{missing[:3]}, unexpected {unexpected[:3]}).", RETINAFACE_HINT)
    return RetinaFaceDescriptor(family="retinaface", model=model.eval().requires_grad_(False), config=config,
                                source=str(raw.path))


# Where the test detector puts its five points inside each anchor box, as fractions of the box side from its
# centre (an FFHQ-like face, eyes level and mouth below, small enough that its crop is about 0.6 of the box).
