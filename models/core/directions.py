"""Latent directions for W+ editing, in plain PyTorch (no ComfyUI imports).

A `LatentDirection` (ComfyUI type TE_DIRECTION) is a vector in W plus the W+ layers it acts on. Two kinds:

* ``"add"``: ``w[:, start:end] += strength * v``. `v` is one w-sized vector `[style_dim]` (broadcast over
  the layers) or one row per layer `[n_latent, style_dim]`, or such a per-layer table flattened to
  `[n_latent * style_dim]` (resolved against the latent when it is applied). InterFaceGAN, StyleCLIP /
  CLIP2StyleGAN, SeFa and TransEdit's own .safetensors directions are of this kind.
* ``"ganspace"``: GANSpace *sets* the coordinate along a PCA component instead of adding to it. As e4e's
  `editings/ganspace.py` applies it, per latent::

      coord = ((w[0] - mean) . comp) / std          # the coordinate of W+ row 0, in standard deviations
      delta = (strength - coord) * comp * std
      w[start:end] += delta                          # every row of the range gets the same delta

  so `strength` is the *target* coordinate (in standard deviations), and strength 0 moves to the mean's
  coordinate rather than doing nothing.

Files read from models/latent_directions (never executed: `torch.load(weights_only=True)`, `np.load
(allow_pickle=False)`, safetensors), all mapped to the CPU whatever device they were saved from:

* InterFaceGAN as e4e ships them: `.pt` tensors `(1, 512)` (one w direction) and `(1, 18, 512)` (per layer);
* GANSpace PCA (`ffhq_pca.pt`, `cars_pca.pt`): `{'mean': (1, 512), 'comp': (80, 1, 512), 'std': (80,)}`;
* StyleCLIP / CLIP2StyleGAN `.npy`: `(18, 512)` float64 and `(1, 9216)` float32, used unchanged (no
  normalisation);
* TransEdit `.safetensors` (`save_direction`): a `direction` tensor plus metadata (name, layer range,
  default strength, generator). GANSpace directions also store `mean`.

SeFa (Shen & Zhou, CVPR 2021) directions come from the generator itself: see `sefa_factorize`.

Layer ranges are half-open ``[start, end)`` like e4e's GANSpace tuples; `end=None` means "to the last
layer".
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from .errors import CheckpointError

DIRECTION_KINDS = ("add", "ganspace")
DIRECTION_FORMAT = "latent_direction"
DIRECTION_EXTENSIONS = (".pt", ".pth", ".npy", ".safetensors")

# GANSpace edits that e4e documents, as (component, start layer, end layer (exclusive), strength).
# Source: omertov/encoder4editing, notebooks/inference_playground.ipynb (the GANSpace editing cell: the
# cars edits shown in the e4e paper and face examples taken from the GANSpace repository); applied by
# editings/ganspace.py with the PCA files editings/ganspace_pca/{ffhq,cars}_pca.pt.
GANSPACE_PRESETS: dict[str, dict[str, tuple[int, int, int, float]]] = {
    "ffhq": {
        "eye_openness": (54, 7, 8, 20.0),
        "smile": (46, 4, 5, -20.0),
        "trimmed_beard": (58, 7, 9, 20.0),
        "white_hair": (57, 7, 10, -24.0),
        "lipstick": (34, 10, 11, 20.0),
    },
    "cars": {
        "viewpoint_i": (0, 0, 5, 2.0),
        "viewpoint_ii": (0, 0, 5, -2.0),
        "cube": (16, 3, 6, 25.0),
        "color": (22, 9, 11, -8.0),
        "grass": (41, 9, 11, -18.0),
    },
}
# The PCA file each preset domain needs, under the name e4e ships it with.
GANSPACE_PCA_FILES = {"ffhq": "ffhq_pca.pt", "cars": "cars_pca.pt"}

# SeFa: distance used by the official SeFa demo's sweep end points (+-3), our default strength.
SEFA_DEFAULT_STRENGTH = 3.0


class DirectionError(ValueError):
    """A direction that does not fit a latent (shape, layer range). Nodes turn it into a NodeInputError."""


# --------------------------------------------------------------------------------------- the direction
@dataclass(frozen=True)
class LatentDirection:
    """A W-space direction and the W+ layers it acts on (see the module docstring for the two kinds)."""

    name: str
    vector: torch.Tensor  # fp32 CPU: [C], [n, C] or flat [n * C]
    kind: str = "add"
    start: int = 0
    end: Optional[int] = None  # exclusive; None = the last layer
    default_strength: float = 1.0
    generator: str = ""  # fingerprint of the generator it was made for ("" = any of the right shape)
    generator_name: str = ""
    source: str = ""  # file it came from, or "sefa" / "preset"
    mean: Optional[torch.Tensor] = None  # GANSpace: [C]
    std: float = 1.0  # GANSpace: the component's standard deviation
    extras: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.kind not in DIRECTION_KINDS:
            raise ValueError(f"direction kind must be one of {DIRECTION_KINDS}, got {self.kind!r}")
        if not isinstance(self.vector, torch.Tensor) or self.vector.ndim not in (1, 2) or self.vector.numel() == 0:
            raise ValueError(f"direction vector must be a non-empty 1-D or 2-D tensor, got "
                             f"{getattr(self.vector, 'shape', type(self.vector))}")
        if self.kind == "ganspace" and (self.vector.ndim != 1 or self.mean is None
                                        or self.mean.shape != self.vector.shape):
            raise ValueError("a GANSpace direction needs a 1-D component and a mean of the same size")
        if self.start < 0 or (self.end is not None and self.end <= self.start):
            raise ValueError(f"direction layer range [{self.start}, {self.end}) is empty or reversed")

    @property
    def per_layer(self) -> bool:
        return self.vector.ndim == 2

    def describe(self) -> str:
        shape = "x".join(str(s) for s in self.vector.shape)
        rng = f"layers {self.start}..{'end' if self.end is None else self.end - 1}"
        return f"{self.kind} direction '{self.name}' [{shape}], {rng}, default strength {self.default_strength:g}"

    def __repr__(self) -> str:
        return f"LatentDirection({self.describe()})"

    # ---------------------------------------------------------------------------------- applying
    def resolve_vector(self, n_latent: int, style_dim: int) -> torch.Tensor:
        """The vector as [style_dim] or [n_latent, style_dim] for a W+ of that shape, or DirectionError."""
        v = self.vector
        if v.ndim == 1 and v.numel() == style_dim:
            return v
        if v.ndim == 1 and v.numel() == n_latent * style_dim and self.kind == "add":
            return v.reshape(n_latent, style_dim)
        if v.ndim == 2 and tuple(v.shape) == (n_latent, style_dim):
            return v
        want = f"{style_dim} values (one w) or [{n_latent}, {style_dim}] (one per W+ layer)"
        raise DirectionError(f"{self.describe()} does not fit W+ [{n_latent}, {style_dim}]: it needs {want}; "
                             "it was made for a generator with a different style_dim or number of layers")

    def layer_range(self, n_latent: int, start: Optional[int] = None, end: Optional[int] = None) -> tuple[int, int]:
        """[start, end) for a W+ with n_latent rows; None = the direction's own value."""
        s = self.start if start is None else int(start)
        e = (self.end if self.end is not None else n_latent) if end is None else int(end)
        return check_layer_range(s, e, n_latent)

    def apply(self, wplus: torch.Tensor, strength: float, start: Optional[int] = None,
              end: Optional[int] = None) -> torch.Tensor:
        """W+ [B, n, C] -> edited copy (fp32). `strength` is absolute (the factor for "add", the target
        coordinate for "ganspace"); nodes pass their multiplier times `default_strength`."""
        if wplus.ndim != 3:
            raise DirectionError(f"expected W+ [B, n_latent, style_dim], got {tuple(wplus.shape)}")
        n, c = wplus.shape[1:]
        v = self.resolve_vector(n, c).to(wplus.device, torch.float32)
        s, e = self.layer_range(n, start, end)
        out = wplus.float().clone()
        if self.kind == "ganspace":
            mean = self.mean.to(wplus.device, torch.float32)
            coord = ((out[:, 0] - mean) @ v) / self.std  # [B], from W+ row 0 as e4e does
            delta = (float(strength) - coord)[:, None] * v[None] * self.std  # [B, C]
            out[:, s:e] += delta[:, None, :]
        elif v.ndim == 1:
            out[:, s:e] += float(strength) * v
        else:
            out[:, s:e] += float(strength) * v[s:e]
        return out


def check_layer_range(start: int, end: int, n_latent: int) -> tuple[int, int]:
    if start > end:
        raise DirectionError(f"layer range {start}..{end} is reversed (start after end).")
    if start == end:
        raise DirectionError(f"layer range [{start}, {end}) is empty (end is exclusive).")
    if start < 0 or end > n_latent:
        raise DirectionError(f"layer range [{start}, {end}) is outside the latent's {n_latent} layers "
                             f"(valid: 0 <= start < end <= {n_latent}).")
    return start, end


def _check_finite(path, array: torch.Tensor, what: str = "values") -> None:
    if not torch.isfinite(array).all():
        bad = int((~torch.isfinite(array)).sum())
        raise CheckpointError(path, f"contains {bad} NaN or infinite {what}; the file is corrupt.",
                              "Download or export the direction again.")


# ------------------------------------------------------------------------------------------- GANSpace
@dataclass(frozen=True)
class GanSpacePCA:
    """GANSpace's PCA of W: mean [C], components [K, C] (unit rows), standard deviations [K]."""

    mean: torch.Tensor
    comp: torch.Tensor
    std: torch.Tensor
    source: str = ""

    @property
    def n_components(self) -> int:
        return self.comp.shape[0]

    def direction(self, component: int, start: int = 0, end: Optional[int] = None, strength: float = 1.0,
                  name: Optional[str] = None) -> LatentDirection:
        if not 0 <= int(component) < self.n_components:
            raise DirectionError(f"GANSpace component {component} does not exist (the PCA has "
                                 f"{self.n_components}: 0..{self.n_components - 1}).")
        component = int(component)
        label = name or f"ganspace {os.path.basename(self.source)} #{component}"
        return LatentDirection(name=label, vector=self.comp[component].clone(), kind="ganspace", start=start,
                               end=end, default_strength=float(strength), source=self.source,
                               mean=self.mean.clone(), std=float(self.std[component]),
                               extras={"component": component})


def _as_ganspace(path, obj) -> Optional[GanSpacePCA]:
    if not (isinstance(obj, dict) and {"mean", "comp", "std"} <= set(obj)):
        return None
    mean, comp, std = obj["mean"], obj["comp"], obj["std"]
    if not all(isinstance(t, torch.Tensor) for t in (mean, comp, std)):
        raise CheckpointError(path, "looks like a GANSpace PCA but 'mean', 'comp', 'std' are not all tensors.")
    mean = mean.detach().float().cpu().reshape(-1)
    c = mean.numel()
    if comp.numel() % c or comp.numel() == 0:
        raise CheckpointError(path, f"GANSpace 'comp' {tuple(comp.shape)} does not match 'mean' "
                              f"{tuple(obj['mean'].shape)}.", "Expected comp (K, 1, C) and mean (1, C).")
    comp = comp.detach().float().cpu().reshape(-1, c)
    std = std.detach().float().cpu().reshape(-1)
    if std.numel() != comp.shape[0]:
        raise CheckpointError(path, f"GANSpace 'std' has {std.numel()} values for {comp.shape[0]} components.")
    for name, t in (("mean", mean), ("comp", comp), ("std", std)):
        _check_finite(path, t, f"values in '{name}'")
    if (std <= 0).any():
        raise CheckpointError(path, "GANSpace 'std' has values <= 0; the file is corrupt.")
    return GanSpacePCA(mean, comp, std, str(path))


def load_ganspace_pca(path) -> GanSpacePCA:
    from .checkpoint_io import torch_load as _torch_load

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(path, "file not found.", "Put it in ComfyUI/models/latent_directions.")
    pca = _as_ganspace(path, _torch_load(path))
    if pca is None:
        raise CheckpointError(path, "is not a GANSpace PCA file (expected {'mean', 'comp', 'std'}).",
                              "Use e4e's editings/ganspace_pca/ffhq_pca.pt or cars_pca.pt.")
    return pca


def preset_names() -> list[tuple[str, str]]:
    """[(domain, name), ...] of every GANSpace preset, in table order."""
    return [(domain, name) for domain, table in GANSPACE_PRESETS.items() for name in table]


def ganspace_preset(pca: GanSpacePCA, domain: str, name: str) -> LatentDirection:
    if domain not in GANSPACE_PRESETS or name not in GANSPACE_PRESETS[domain]:
        raise KeyError(f"unknown GANSpace preset {domain}/{name}; known: {preset_names()}")
    component, start, end, strength = GANSPACE_PRESETS[domain][name]
    d = pca.direction(component, start, end, strength, name=f"ganspace {domain} {name}")
    return replace(d, extras={**d.extras, "preset": f"{domain}/{name}"})


# ---------------------------------------------------------------------------------------- file loading
def _direction_from_tensor(path, t: torch.Tensor, name: str) -> LatentDirection:
    t = t.detach().cpu()
    if not t.is_floating_point():
        raise CheckpointError(path, f"holds a {t.dtype} tensor, not a floating-point direction.")
    t = t.float()
    _check_finite(path, t)
    shape = tuple(t.shape)
    while t.ndim > 1 and t.shape[0] == 1:  # (1, C), (1, n, C), (1, n*C): drop leading batch dims
        t = t[0]
    if t.ndim > 2 or t.numel() == 0:
        raise CheckpointError(path, f"holds a tensor of shape {shape}; a direction is (C,), (1, C), (n, C), "
                              "(1, n, C) or (1, n*C).")
    return LatentDirection(name=name, vector=t.contiguous(), source=str(path),
                           extras={"file_shape": list(shape)})


def load_direction(path, component: int = 0) -> LatentDirection:
    """Any supported direction file -> LatentDirection (GANSpace PCA files: `component` over all layers,
    strength = target coordinate in standard deviations)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(path, "file not found.", "Put direction files in ComfyUI/models/latent_directions.")
    name = path.stem
    suffix = path.suffix.lower()
    if suffix == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            raise CheckpointError(path, f"could not be read as a NumPy array ({e}).",
                                  "Directions saved as pickled objects are refused; save a plain array.") from None
        if not np.issubdtype(arr.dtype, np.floating):
            raise CheckpointError(path, f"holds a {arr.dtype} array, not a floating-point direction.")
        return _direction_from_tensor(path, torch.from_numpy(np.ascontiguousarray(arr)).float(), name)
    if suffix == ".safetensors":
        return _load_direction_safetensors(path)
    from .checkpoint_io import torch_load as _torch_load

    obj = _torch_load(path)
    if isinstance(obj, torch.Tensor):
        return _direction_from_tensor(path, obj, name)
    pca = _as_ganspace(path, obj)
    if pca is not None:
        return pca.direction(component, 0, None, 1.0, name=f"ganspace {name} #{component}")
    if isinstance(obj, dict):
        nested = sorted(str(k) for k, v in obj.items() if isinstance(v, dict))
        if nested:  # a model checkpoint ({'g_ema': {...}, 'latent_avg': ...}), not a direction
            raise CheckpointError(path, f"is a model checkpoint (it holds {nested[:4]}), not a direction.",
                                  "Load generators with Load StyleGAN and encoders with Load Encoder; directions "
                                  "are single tensors or GANSpace PCA files.")
        tensors = [k for k, v in obj.items() if isinstance(v, torch.Tensor)]
        if len(tensors) == 1:  # e.g. {'direction': tensor} or {'boundary': tensor}
            return _direction_from_tensor(path, obj[tensors[0]], name)
        raise CheckpointError(path, f"is a dict with keys {sorted(map(str, obj))[:6]}, not a direction.",
                              "Expected a tensor (InterFaceGAN), a GANSpace PCA {'mean','comp','std'} or one "
                              "tensor in a dict.")
    raise CheckpointError(path, f"holds a {type(obj).__name__}, not a direction tensor.")


def _load_direction_safetensors(path: Path) -> LatentDirection:
    from .checkpoint_io import read_safetensors as _read_safetensors

    tensors, meta = _read_safetensors(path)
    if "direction" not in tensors:
        if len(tensors) == 1:
            return _direction_from_tensor(path, next(iter(tensors.values())), path.stem)
        raise CheckpointError(path, f"has no 'direction' tensor (found {sorted(tensors)[:6]}).",
                              "Write direction files with TransEdit (save_direction).")
    base = _direction_from_tensor(path, tensors["direction"], meta.get("name") or path.stem)
    try:
        kind = meta.get("kind", "add")
        start = int(meta.get("start", 0))
        end = None if meta.get("end") in (None, "", "none", "None") else int(meta["end"])
        strength = float(meta.get("default_strength", 1.0))
        std = float(meta.get("std", 1.0))
        extras = json.loads(meta["extras"]) if meta.get("extras") else {}
    except (ValueError, TypeError) as e:
        raise CheckpointError(path, f"has unreadable direction metadata ({e}).") from None
    mean = tensors.get("mean")
    if mean is not None:
        mean = mean.float().reshape(-1)
        _check_finite(path, mean, "values in 'mean'")
    try:
        return replace(base, kind=kind, start=start, end=end, default_strength=strength,
                       generator=meta.get("generator", ""), generator_name=meta.get("generator_name", ""),
                       mean=mean, std=std, extras={**base.extras, **extras})
    except ValueError as e:
        raise CheckpointError(path, f"has inconsistent direction metadata ({e}).") from None


def save_direction(direction: LatentDirection, path, overwrite: bool = False) -> Path:
    """Write a TransEdit direction .safetensors (atomic; refuses to replace a file unless overwrite)."""
    from safetensors.torch import save_file

    from .checkpoint_io import TRANSEDIT_FORMAT_KEY, atomic_write

    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        raise ValueError(f"direction files are written as .safetensors, got {path.name}")
    tensors = {"direction": direction.vector.detach().cpu().float().contiguous()}
    if direction.mean is not None:
        tensors["mean"] = direction.mean.detach().cpu().float().contiguous()
    extras = {k: v for k, v in direction.extras.items() if k != "file_shape"}
    metadata = {
        TRANSEDIT_FORMAT_KEY: DIRECTION_FORMAT,
        "name": direction.name,
        "kind": direction.kind,
        "start": str(direction.start),
        "end": "" if direction.end is None else str(direction.end),
        "default_strength": repr(float(direction.default_strength)),
        "std": repr(float(direction.std)),
        "generator": direction.generator,
        "generator_name": direction.generator_name,
        "extras": json.dumps(extras, default=str),
    }
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata), overwrite)


# ----------------------------------------------------------------------------------------------- SeFa
def sefa_modulation_layers(generator) -> list[torch.nn.Module]:
    """For each W+ row i, the modulation (style affine) layer SeFa factorises for it.

    As the official genforce/sefa `factorize_weight` does for StyleGAN2: the style weight of the
    synthesis conv layer that row i drives, and for the last row (which drives only the final ToRGB)
    that ToRGB's. In rosinality's layout row 0 -> conv1, row i -> convs[i - 1], row n-1 -> to_rgbs[-1].
    """
    convs = [generator.conv1.conv.modulation] + [c.conv.modulation for c in generator.convs]
    return convs + [generator.to_rgbs[-1].conv.modulation]


def sefa_factorize(generator, layers: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """SeFa's closed form: eigen-decomposition of AᵀA over the chosen W+ rows.

    A stacks the modulation weights [out_channels, style_dim] of every chosen layer, each output row
    normalised to unit length (the official code normalises the columns of the transposed weight);
    the directions are the eigenvectors of AᵀA [style_dim, style_dim]. Returns (eigenvalues [C]
    descending, eigenvectors [C, C] one unit direction per row). Computed in float64 on the CPU with a
    symmetric solver, sorted by eigenvalue (the official `np.linalg.eig` leaves the order to LAPACK), and
    each vector's sign fixed so that its largest-magnitude entry is positive (reproducible; an
    eigenvector's sign is otherwise arbitrary, so a component may point the opposite way to the
    official tool's: use a negative strength).
    """
    mods = sefa_modulation_layers(generator)
    layers = sorted(set(int(i) for i in layers))
    if not layers:
        raise DirectionError("SeFa needs at least one layer.")
    if layers[0] < 0 or layers[-1] >= len(mods):
        raise DirectionError(f"SeFa layers {layers} are outside the generator's W+ rows 0..{len(mods) - 1}.")
    rows = []
    for i in layers:
        w = mods[i].weight.detach().to("cpu", torch.float64)  # [out, style_dim]; EqualLinear scale cancels
        rows.append(w / w.norm(dim=1, keepdim=True).clamp_min(1e-12))
    a = torch.cat(rows, 0)
    values, vectors = torch.linalg.eigh(a.T @ a)
    order = torch.argsort(values, descending=True)
    values, vectors = values[order], vectors[:, order].T.contiguous()  # rows = directions
    idx = vectors.abs().argmax(dim=1)
    signs = torch.sign(vectors[torch.arange(vectors.shape[0]), idx])
    vectors = vectors * signs[:, None]
    return values, vectors


def sefa_direction(generator, component: int, start: int = 0, end: Optional[int] = None,
                   fingerprint: str = "", generator_name: str = "") -> LatentDirection:
    """SeFa component `component` of the layers [start, end), acting on those same layers."""
    n_latent = generator.n_latent
    s, e = check_layer_range(int(start), n_latent if end is None else int(end), n_latent)
    values, vectors = sefa_factorize(generator, range(s, e))
    if not 0 <= int(component) < vectors.shape[0]:
        raise DirectionError(f"SeFa component {component} does not exist (style_dim is {vectors.shape[0]}: "
                             f"0..{vectors.shape[0] - 1}).")
    component = int(component)
    return LatentDirection(
        name=f"sefa #{component} layers {s}-{e - 1}", vector=vectors[component].float(), kind="add",
        start=s, end=e, default_strength=SEFA_DEFAULT_STRENGTH, generator=fingerprint,
        generator_name=generator_name, source="sefa",
        extras={"component": component, "eigenvalue": float(values[component]),
                "eigenvalue_share": float(values[component] / values.sum())})


# --------------------------------------------------------------------------------------- layer mixing
LAYER_GROUPS = ("coarse", "middle", "fine", "coarse+middle", "middle+fine", "all")


def layer_group(name: str, n_latent: int) -> list[int]:
    """StyleGAN's style-mixing groups by resolution: coarse = 4²-8² (W+ rows 0-3), middle = 16²-32²
    (rows 4-7), fine = 64² up to the output (rows 8..n-1). For 18 rows: 0-3, 4-7, 8-17; a smaller
    generator keeps the same resolutions, so its fine group is shorter (empty below 64 px)."""
    groups = {"coarse": range(0, min(4, n_latent)), "middle": range(min(4, n_latent), min(8, n_latent)),
              "fine": range(min(8, n_latent), n_latent)}
    if name == "all":
        return list(range(n_latent))
    parts = name.split("+")
    if not parts or any(p not in groups for p in parts):
        raise DirectionError(f"unknown layer group {name!r}; known: {LAYER_GROUPS}")
    layers = sorted(set(i for p in parts for i in groups[p]))
    if not layers:
        raise DirectionError(f"the '{name}' layers (by resolution) do not exist in a generator with only "
                             f"{n_latent} W+ rows.")
    return layers


def parse_layers(spec: str, n_latent: int) -> list[int]:
    """'0-3, 8, 10-11' (inclusive ranges) or a group name -> sorted unique rows, checked against n_latent."""
    text = str(spec).strip().lower().replace(" ", "")
    if text in LAYER_GROUPS:
        return layer_group(text, n_latent)
    if not text:
        raise DirectionError("no layers given.")
    layers = set()
    for part in text.split(","):
        if not part:
            continue
        bounds = part.split("-")
        try:
            nums = [int(b) for b in bounds]
        except ValueError:
            raise DirectionError(f"cannot read {part!r} as a layer or range (write e.g. '0-3, 8').") from None
        if len(nums) == 1:
            layers.add(nums[0])
        elif len(nums) == 2:
            if nums[0] > nums[1]:
                raise DirectionError(f"layer range {part!r} is reversed (write low-high).")
            layers.update(range(nums[0], nums[1] + 1))
        else:
            raise DirectionError(f"cannot read {part!r} as a layer or range (write e.g. '0-3, 8').")
    bad = [i for i in layers if not 0 <= i < n_latent]
    if bad:
        raise DirectionError(f"layers {sorted(bad)} do not exist (the latent has rows 0..{n_latent - 1}).")
    if not layers:
        raise DirectionError("no layers given.")
    return sorted(layers)


def broadcast_pair(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Two W+ batches of equal size, or one of them of size 1 expanded to the other's."""
    if a.shape[1:] != b.shape[1:]:
        raise DirectionError(f"W+ shapes differ: [{a.shape[1]}, {a.shape[2]}] and [{b.shape[1]}, {b.shape[2]}].")
    na, nb = a.shape[0], b.shape[0]
    if na == nb:
        return a, b
    if nb == 1:
        return a, b.expand(na, -1, -1)
    if na == 1:
        return a.expand(nb, -1, -1), b
    raise DirectionError(f"batch sizes {na} and {nb} cannot be paired (equal sizes pair up; a batch of 1 "
                         "is applied to every item of the other).")


def mix_wplus(a: torch.Tensor, b: torch.Tensor, layers: Sequence[int], weight: float) -> torch.Tensor:
    """Rows `layers` of a blended toward b: (1 - weight) * a + weight * b; other rows stay a's."""
    a, b = broadcast_pair(a.float(), b.float())
    out = a.clone()
    idx = torch.as_tensor(list(layers), dtype=torch.long)
    out[:, idx] = torch.lerp(a[:, idx], b[:, idx], float(weight))
    return out
