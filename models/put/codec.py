"""PUT's P-VQVAE ("content_codec") in pure PyTorch, for both official versions (CVPR 2022 and TPAMI 2024).

The module tree reproduces the official state-dict key names (a transformer checkpoint's ``content_codec.*``
with the prefix stripped, or a P-VQVAE checkpoint's ``model`` minus its training-only ``loss.*``), so the
official weights load unchanged. Everything structural is read back from the weights' shapes
(:func:`infer_pvqvae_config`).

The pieces:

- Patch encoder: each non-overlapping p x p patch (p = 8, or 16 for TPAMI's 512 models) is flattened
  channel-major (index c*p*p + ky*p + kx) and mapped by an MLP with residual blocks to one feature; a 1x1
  ``quant_conv`` follows.
- Quantizer: euclidean nearest codebook entry, **token-type aware**: a fully known patch (type 1) takes the
  nearest of the first S codes ("unmasked" codes), any other patch the nearest of codes [S, n_e).
- Decoder: codebook lookup -> 1x1 ``post_quant_conv`` -> conv3x3 -> residual blocks -> log2(p) x2 up-sampling
  stages (transposed conv for CVPR; nearest x2 + conv3x3 followed by residual blocks for TPAMI) -> ReLU ->
  conv3x3. Before every up-sampling stage and before the output conv, the known pixels' positions are
  replaced by a reference encoder's map of the masked image at that resolution (mask sampled nearest, i.e.
  the top-left pixel of each block).

Two quirks of the official code that matter numerically and are reproduced on purpose:

- Every residual block begins with an in-place ReLU, which overwrites the block's input, so a block
  computes ``relu(x) + f(relu(x))`` rather than ``x + f(x)``.
- In the TPAMI reference encoder that in-place ReLU also rewrites the map the previous layer had stored for
  the decoder, so the maps followed by a residual block are used after a ReLU; the lowest-resolution map is
  used before activation. (CVPR's reference encoder applies its ReLUs out of place: all maps are
  pre-activation.)

Images are float [B, 3, H, W] in 0..255 and masks [B, 1, H, W] with 1/True = known pixel (PUT's convention).
"""
from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, fields
from typing import Mapping, Optional

import torch
import torch.nn.functional as F
from torch import nn

VERSIONS = ("cvpr2022", "tpami2024")
UPSAMPLE_TYPES = ("deconv", "nearest", "bilinear")
REF_DOWNSAMPLE_TYPES = ("conv", "downsample")
CODEC_PREFIX = "content_codec."
TRAINING_ONLY_PREFIXES = ("loss.",)
# Above this many distance entries (rows x codes) the quantizer works through the rows in chunks.
_DISTANCE_CHUNK = 1 << 24


@dataclass
class PVQVAEConfig:
    """Hyper-parameters of a P-VQVAE; all but the masked-code split and the image normalisation are read
    from the weights' shapes."""

    version: str = "cvpr2022"  # "cvpr2022" | "tpami2024" (from the decoder's up-sampling layout)
    patch_size: int = 8  # 8, or 16 for the TPAMI 512 models
    n_e: int = 1024  # codebook size
    e_dim: int = 256  # codebook entry width
    masked_embed_start: int = 512  # S: codes [0, S) for fully known patches, [S, n_e) for the others
    in_ch: int = 3
    # patch encoder (an MLP over flattened patches)
    enc_res_ch: int = 256
    enc_num_res_blocks: int = 8
    enc_bottleneck: int = 2  # residual-block hidden width = enc_res_ch // enc_bottleneck
    enc_post_layer: bool = True  # ReLU -> Linear -> ReLU after the residual blocks
    enc_out_ch: int = 256
    quant_conv: bool = True  # 1x1 conv between encoder and quantizer
    ema_codebook: bool = True  # codebook stored as buffers (embedding, cluster_size, embedding_avg)
    # decoder
    dec_in_ch: int = 256  # post_quant_conv output = what the transformer's emb_proj takes
    dec_res_ch: int = 256
    dec_num_res_blocks: int = 8
    dec_bottleneck: int = 2
    dec_res_after_up: int = 0  # residual blocks after every up-sampling (TPAMI: 2)
    dec_base_ch: int = 64  # width at full resolution; doubles at every halving
    out_ch: int = 3
    upsample: str = "deconv"  # "deconv" (CVPR) | "nearest" (TPAMI) | "bilinear"
    # reference encoder of the masked image inside the decoder
    image_reference: bool = True
    ref_downsample: str = "conv"  # "conv": bare strided convs (CVPR); "downsample": ReLU + strided conv (TPAMI)
    ref_res_blocks: bool = False  # residual blocks mirroring the decoder's (TPAMI)
    ref_bottleneck: int = 2
    # image normalisation x -> (x / scale - mean) / std (not in the weights; the official ImageNet TPAMI
    # models use scale 255 with the ImageNet mean/std)
    im_scale: tuple = (127.5, 127.5, 127.5)
    im_mean: tuple = (1.0, 1.0, 1.0)
    im_std: tuple = (1.0, 1.0, 1.0)

    def __post_init__(self):
        if self.version not in VERSIONS:
            raise ValueError(f"P-VQVAE version must be one of {VERSIONS}, got {self.version!r}")
        if self.upsample not in UPSAMPLE_TYPES:
            raise ValueError(f"upsample must be one of {UPSAMPLE_TYPES}, got {self.upsample!r}")
        if self.ref_downsample not in REF_DOWNSAMPLE_TYPES:
            raise ValueError(f"ref_downsample must be one of {REF_DOWNSAMPLE_TYPES}, got {self.ref_downsample!r}")
        if self.patch_size < 2 or self.patch_size & (self.patch_size - 1):
            raise ValueError(f"patch_size must be a power of two >= 2, got {self.patch_size}")
        if not 0 < self.masked_embed_start <= self.n_e:
            raise ValueError(f"masked_embed_start must be in (0, n_e={self.n_e}], got {self.masked_embed_start}")
        for name in ("im_scale", "im_mean", "im_std"):
            value = getattr(self, name)
            value = (float(value),) * 3 if isinstance(value, (int, float)) else tuple(float(v) for v in value)
            if len(value) == 1:
                value = value * 3
            if len(value) != 3:
                raise ValueError(f"{name} needs 1 or 3 values, got {value}")
            object.__setattr__(self, name, value)

    @property
    def levels(self) -> int:
        """Number of x2 resolution changes between the token grid and the image."""
        return int(math.log2(self.patch_size))

    def stage_channels(self) -> list[tuple[int, int]]:
        """(in, out) channels of the decoder's up-sampling stages, lowest resolution first."""
        outs = [self.dec_base_ch * 2 ** (self.levels - 1 - k) for k in range(self.levels)]
        ins = [self.dec_res_ch] + outs[:-1]
        return list(zip(ins, outs))

    def to_dict(self) -> dict:
        d = asdict(self)
        for name in ("im_scale", "im_mean", "im_std"):
            d[name] = list(d[name])
        return d


def default_masked_embed_start(n_e: int, version: str) -> int:
    """The official split of the codebook into unmasked / masked codes, which the shapes do not record.

    CVPR 2022 halves it (1024 = 512 + 512). TPAMI 2024 uses 8192 + 1024 = 9216, i.e. 8/9 unmasked; a TPAMI
    codebook whose size is not a multiple of 9 (e.g. a reduced test model) falls back to halving."""
    if version == "tpami2024" and n_e % 9 == 0:
        return n_e - n_e // 9
    return n_e // 2


def _strip_codec_keys(sd: Mapping[str, torch.Tensor]) -> dict:
    """Inference keys of a P-VQVAE state dict, accepting a whole transformer state dict too."""
    if any(k.startswith(CODEC_PREFIX) for k in sd):
        sd = {k[len(CODEC_PREFIX):]: v for k, v in sd.items() if k.startswith(CODEC_PREFIX)}
    return {k: v for k, v in sd.items() if not k.startswith(TRAINING_ONLY_PREFIXES)}


def _indices(sd: Mapping[str, torch.Tensor], pattern: str) -> list[int]:
    rx = re.compile(pattern)
    return sorted({int(m.group(1)) for k in sd for m in [rx.fullmatch(k)] if m})


def infer_pvqvae_config(sd: Mapping[str, torch.Tensor], **overrides) -> PVQVAEConfig:
    """Config of the P-VQVAE whose weights are ``sd`` (keys without ``content_codec.``; ``loss.*`` and a
    ``content_codec.`` prefix are tolerated). Keyword arguments override any field, e.g.
    ``masked_embed_start`` (not recorded in the weights) or ``im_mean`` / ``im_std`` / ``im_scale``."""
    sd = _strip_codec_keys(sd)
    unknown = set(overrides) - {f.name for f in fields(PVQVAEConfig)}
    if unknown:
        raise TypeError(f"unknown P-VQVAE config field(s): {sorted(unknown)}")

    def shape(key):
        if key not in sd:
            raise KeyError(f"P-VQVAE state dict has no {key!r}: not a PUT P-VQVAE (keys e.g. {list(sd)[:3]})")
        return tuple(sd[key].shape)

    c = {}
    enc_res, patch_dim = shape("encoder.pre_layers.0.weight")
    in_ch = overrides.get("in_ch", 3)
    patch = math.isqrt(patch_dim // in_ch)
    if in_ch * patch * patch != patch_dim:
        raise ValueError(f"encoder input width {patch_dim} is not {in_ch} x p x p")
    c.update(in_ch=in_ch, patch_size=patch, enc_res_ch=enc_res)
    blocks = _indices(sd, r"encoder\.res_layers\.(\d+)\.layers\.1\.weight")
    c["enc_num_res_blocks"] = len(blocks)
    if blocks:
        c["enc_bottleneck"] = enc_res // shape("encoder.res_layers.0.layers.1.weight")[0]
    c["enc_post_layer"] = "encoder.post_layers.1.weight" in sd
    c["enc_out_ch"] = shape("encoder.post_layers.1.weight")[0] if c["enc_post_layer"] else enc_res

    if "quantize.embedding" in sd:
        c["ema_codebook"] = True
        c["n_e"], c["e_dim"] = shape("quantize.embedding")
    else:
        c["ema_codebook"] = False
        c["n_e"], c["e_dim"] = shape("quantize.embedding.weight")
    c["quant_conv"] = "quant_conv.weight" in sd
    c["dec_in_ch"] = shape("post_quant_conv.weight")[0]

    c["dec_res_ch"] = shape("decoder.pre_layers.0.weight")[0]
    blocks = _indices(sd, r"decoder\.res_layers\.(\d+)\.conv\.1\.weight")
    c["dec_num_res_blocks"] = len(blocks)
    if blocks:
        c["dec_bottleneck"] = c["dec_res_ch"] // shape("decoder.res_layers.0.conv.1.weight")[0]
    ups = _indices(sd, r"decoder\.up_layers\.(\d+)\.(?:deconv|conv)\.weight")
    n_up = len(_indices(sd, r"decoder\.up_layers\.(\d+)\..*"))
    levels = int(math.log2(patch))
    if len(ups) != levels or (n_up - levels) % max(levels, 1):
        raise ValueError(f"decoder has {len(ups)} up-sampling layers of {n_up}; a patch of {patch} needs {levels}")
    c["dec_res_after_up"] = (n_up - levels) // levels
    c["upsample"] = "deconv" if "decoder.up_layers.0.deconv.weight" in sd else "nearest"
    c["out_ch"], c["dec_base_ch"] = shape("decoder.post_layers.1.weight")[:2]

    c["image_reference"] = any(k.startswith("decoder.encoder.") for k in sd)
    if c["image_reference"]:
        bare = _indices(sd, r"decoder\.encoder\.layers\.(\d+)\.weight")
        c["ref_downsample"] = "conv" if any(i > 0 for i in bare) else "downsample"
        ref_blocks = _indices(sd, r"decoder\.encoder\.layers\.(\d+)\.conv\.1\.weight")
        c["ref_res_blocks"] = bool(ref_blocks)
        if ref_blocks:
            w = shape(f"decoder.encoder.layers.{ref_blocks[0]}.conv.1.weight")
            c["ref_bottleneck"] = w[1] // w[0]
    else:
        c["ref_downsample"] = "downsample" if c["upsample"] != "deconv" else "conv"
        c["ref_res_blocks"] = False

    c["version"] = overrides.get("version") or ("cvpr2022" if c["upsample"] == "deconv" else "tpami2024")
    c["masked_embed_start"] = default_masked_embed_start(c["n_e"], c["version"])
    c.update({k: v for k, v in overrides.items() if v is not None})
    return PVQVAEConfig(**c)


# ---------------------------------------------------------------------------------------------- blocks
class _LinearResidual(nn.Module):
    """relu(x) + W2 relu(W1 relu(x)) (the official block's in-place leading ReLU included)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.layers = nn.Sequential(nn.ReLU(), nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(x)
        out = self.layers[3](F.relu(self.layers[1](h)))
        return out.add_(h)


class _ConvResidual(nn.Module):
    """relu(x) + conv1x1(relu(conv3x3(relu(x)))); `forward_activated` takes relu(x) directly."""

    def __init__(self, ch: int, hidden: int):
        super().__init__()
        self.conv = nn.Sequential(nn.ReLU(), nn.Conv2d(ch, hidden, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(hidden, ch, 1))

    def forward_activated(self, h: torch.Tensor) -> torch.Tensor:
        out = self.conv[3](F.relu(self.conv[1](h)))
        return out.add_(h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_activated(F.relu(x))


class _Upsample(nn.Module):
    """ReLU, then x2: a 4x4 stride-2 transposed conv (``deconv``) or interpolation + conv3x3 (``conv``)."""

    def __init__(self, cin: int, cout: int, mode: str):
        super().__init__()
        self.mode = mode
        if mode == "deconv":
            self.deconv = nn.ConvTranspose2d(cin, cout, 4, stride=2, padding=1)
        else:
            self.conv = nn.Conv2d(cin, cout, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(x)
        if self.mode == "deconv":
            return self.deconv(x)
        return self.conv(F.interpolate(x, scale_factor=2.0, mode=self.mode))


class _Downsample(nn.Module):
    """ReLU, then a 4x4 stride-2 conv (the TPAMI reference encoder's resolution change)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 4, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.relu(x))


# --------------------------------------------------------------------------------------------- encoder
class PatchEncoder(nn.Module):
    """[B, C, H, W] (normalised) -> [B, enc_out_ch, H/p, W/p]: an MLP applied to every flattened patch."""

    def __init__(self, cfg: PVQVAEConfig):
        super().__init__()
        self.patch = cfg.patch_size
        self.pre_layers = nn.Sequential(nn.Linear(cfg.in_ch * cfg.patch_size ** 2, cfg.enc_res_ch))
        blocks = [_LinearResidual(cfg.enc_res_ch, cfg.enc_res_ch // cfg.enc_bottleneck)
                  for _ in range(cfg.enc_num_res_blocks)]
        self.res_layers = nn.Sequential(*blocks) if blocks else nn.Identity()
        if cfg.enc_post_layer:
            self.post_layers = nn.Sequential(nn.ReLU(), nn.Linear(cfg.enc_res_ch, cfg.enc_out_ch), nn.ReLU())
        else:
            self.post_layers = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, hh, ww = x.shape
        p = self.patch
        h, w = hh // p, ww // p
        # channel-major patch vectors, patches in raster order (what F.unfold with stride p gives)
        x = x.reshape(b, c, h, p, w, p).permute(0, 2, 4, 1, 3, 5).reshape(b, h * w, c * p * p)
        x = self.res_layers(self.pre_layers(x))
        x = self.post_layers(x)
        return x.transpose(1, 2).reshape(b, -1, h, w)


# ------------------------------------------------------------------------------------------- quantizer
class CodebookQuantizer(nn.Module):
    """The codebook (buffers ``embedding`` / ``cluster_size`` / ``embedding_avg`` as in the EMA-trained official
    models, or an ``nn.Embedding``) and the type-aware nearest-code search."""

    def __init__(self, cfg: PVQVAEConfig):
        super().__init__()
        self.n_e, self.e_dim, self.split = cfg.n_e, cfg.e_dim, cfg.masked_embed_start
        if cfg.ema_codebook:
            self.register_buffer("embedding", torch.zeros(cfg.n_e, cfg.e_dim))
            # EMA statistics of training: unused at inference, kept so the official keys load strictly
            self.register_buffer("cluster_size", torch.zeros(cfg.n_e))
            self.register_buffer("embedding_avg", torch.zeros(cfg.n_e, cfg.e_dim))
        else:
            self.embedding = nn.Embedding(cfg.n_e, cfg.e_dim)

    @property
    def codebook(self) -> torch.Tensor:
        e = self.embedding
        return e.weight if isinstance(e, nn.Embedding) else e

    def distances(self, z: torch.Tensor) -> torch.Tensor:
        """Squared euclidean distances [N, n_e] of rows z [N, e_dim], as ||z||^2 + ||e||^2 - 2 z.e."""
        e = self.codebook.to(z.dtype)
        return torch.sum(z ** 2, dim=1, keepdim=True) + torch.sum(e ** 2, dim=1) - 2 * torch.matmul(z, e.t())

    def nearest(self, z: torch.Tensor, known: Optional[torch.Tensor]) -> torch.Tensor:
        """Indices [N] of the nearest codes; with ``known`` [N] bool, rows that are known search [0, S) and
        the others [S, n_e)."""
        n = z.shape[0]
        step = max(1, _DISTANCE_CHUNK // self.n_e)
        out = torch.empty(n, dtype=torch.long, device=z.device)
        split = self.split
        for start in range(0, n, step):
            d = self.distances(z[start:start + step])
            if known is None or split >= self.n_e:
                out[start:start + step] = d.argmin(dim=1)
            else:
                near_unmasked = d[:, :split].argmin(dim=1)
                near_masked = d[:, split:].argmin(dim=1) + split
                out[start:start + step] = torch.where(known[start:start + step], near_unmasked, near_masked)
        return out


# --------------------------------------------------------------------------------------------- decoder
class ReferenceEncoder(nn.Module):
    """Encodes the masked image into one map per decoder resolution (keyed by (H, W))."""

    def __init__(self, cfg: PVQVAEConfig):
        super().__init__()
        self.mode = cfg.ref_downsample
        stages = cfg.stage_channels()
        layers: list[nn.Module] = [nn.Conv2d(cfg.out_ch, cfg.dec_base_ch, 3, padding=1)]
        for cin, cout in reversed(stages):  # from full resolution down: the decoder's stages mirrored
            if cfg.ref_res_blocks:
                layers += [_ConvResidual(cout, cout // cfg.ref_bottleneck) for _ in range(cfg.dec_res_after_up)]
            layers.append(nn.Conv2d(cout, cin, 4, stride=2, padding=1) if self.mode == "conv"
                          else _Downsample(cout, cin))
        self.layers = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> dict:
        maps: dict = {}
        last_stored = None
        for layer in self.layers:
            if isinstance(layer, _ConvResidual):
                h = F.relu(x)
                if last_stored is not None:
                    # the official block's in-place ReLU also rewrites the map stored for the decoder
                    maps[last_stored] = h
                    last_stored = None
                x = layer.forward_activated(h)
            else:
                x = layer(x)
                last_stored = tuple(x.shape[-2:])
                maps[last_stored] = x
            if self.mode == "conv":
                x = F.relu(x)
                last_stored = None
        return maps


class PatchDecoder(nn.Module):
    """Quantized features [B, dec_in_ch, h, w] (+ masked image, mask) -> normalised image [B, 3, H, W]."""

    def __init__(self, cfg: PVQVAEConfig):
        super().__init__()
        self.image_reference = cfg.image_reference
        self.pre_layers = nn.Sequential(nn.Conv2d(cfg.dec_in_ch, cfg.dec_res_ch, 3, padding=1))
        blocks = [_ConvResidual(cfg.dec_res_ch, cfg.dec_res_ch // cfg.dec_bottleneck)
                  for _ in range(cfg.dec_num_res_blocks)]
        self.res_layers = nn.Sequential(*blocks) if blocks else nn.Identity()
        ups: list[nn.Module] = []
        for cin, cout in cfg.stage_channels():
            ups.append(_Upsample(cin, cout, cfg.upsample))
            ups += [_ConvResidual(cout, cout // cfg.dec_bottleneck) for _ in range(cfg.dec_res_after_up)]
        self.up_layers = nn.ModuleList(ups)
        self.post_layers = nn.Sequential(nn.ReLU(), nn.Conv2d(cfg.dec_base_ch, cfg.out_ch, 3, padding=1))
        if cfg.image_reference:
            self.encoder = ReferenceEncoder(cfg)

    @staticmethod
    def _blend(x: torch.Tensor, ref: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        m = mask if mask.shape[-2:] == x.shape[-2:] else F.interpolate(mask, size=x.shape[-2:], mode="nearest")
        return x * (1 - m) + ref * m

    def forward(self, x: torch.Tensor, masked_image: Optional[torch.Tensor] = None,
                mask: Optional[torch.Tensor] = None, intermediates: Optional[dict] = None) -> torch.Tensor:
        x = self.res_layers(self.pre_layers(x))
        if intermediates is not None:
            intermediates["decoder_after_res_layers"] = x
        refs = None
        if self.image_reference:
            if masked_image is None or mask is None:
                raise ValueError("this P-VQVAE decoder needs the masked image and the mask")
            mask = mask.to(x.dtype)
            refs = self.encoder(masked_image.to(x.dtype))
            if intermediates is not None:
                intermediates["ref_encoder"] = refs
        for layer in self.up_layers:
            if refs is not None and isinstance(layer, _Upsample):
                x = self._blend(x, refs[tuple(x.shape[-2:])], mask)
            x = layer(x)
        if refs is not None:
            x = self._blend(x, refs[tuple(x.shape[-2:])], mask)
        return self.post_layers[1](F.relu(x))


# ----------------------------------------------------------------------------------------------- codec
class PatchVQVAE(nn.Module):
    """The P-VQVAE: encode masked images into token features and type-aware tokens, decode tokens back."""

    def __init__(self, config: PVQVAEConfig):
        super().__init__()
        self.config = config
        self.encoder = PatchEncoder(config)
        self.decoder = PatchDecoder(config)
        self.quantize = CodebookQuantizer(config)
        self.quant_conv = nn.Conv2d(config.enc_out_ch, config.e_dim, 1) if config.quant_conv else nn.Identity()
        self.post_quant_conv = nn.Conv2d(config.e_dim, config.dec_in_ch, 1)

    # ------------------------------------------------------------------ basics
    @property
    def embed_dim(self) -> int:
        """Width of the decoder's input (post_quant_conv output), which the PUT transformers project from."""
        return self.post_quant_conv.out_channels

    @property
    def device(self) -> torch.device:
        return self.post_quant_conv.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.post_quant_conv.weight.dtype

    def token_shape(self, h: int, w: int) -> tuple[int, int]:
        p = self.config.patch_size
        return h // p, w // p

    def _norm(self, like: torch.Tensor):
        cfg = self.config
        make = lambda v: torch.tensor(v, dtype=torch.float32, device=like.device).view(1, -1, 1, 1)  # noqa: E731
        return make(cfg.im_scale), make(cfg.im_mean), make(cfg.im_std)

    def pre_process(self, image: torch.Tensor) -> torch.Tensor:
        """0..255 -> the codec's input range ((x / 127.5 - 1) for the FFHQ models), float32."""
        scale, mean, std = self._norm(image)
        return (image.float() / scale - mean) / std

    def post_process(self, x: torch.Tensor) -> torch.Tensor:
        """Codec output -> 0..255 float32, clamped."""
        scale, mean, std = self._norm(x)
        return ((x.float() * std + mean) * scale).clamp(0.0, 255.0)

    def _inputs(self, image: torch.Tensor, mask: torch.Tensor):
        if image.dim() != 4 or image.shape[1] != self.config.in_ch:
            raise ValueError(f"image must be [B, {self.config.in_ch}, H, W], got {tuple(image.shape)}")
        if mask.dim() == 3:
            mask = mask.unsqueeze(1)
        if mask.dim() != 4 or mask.shape[1] != 1 or mask.shape[-2:] != image.shape[-2:]:
            raise ValueError(f"mask must be [B, 1, H, W] matching the image, got {tuple(mask.shape)}")
        p = self.config.patch_size
        if image.shape[-2] % p or image.shape[-1] % p:
            raise ValueError(f"image size {tuple(image.shape[-2:])} must be a multiple of the patch size {p}")
        image = image.to(self.device)
        mask = mask.to(self.device)
        known = mask if mask.dtype == torch.bool else mask >= 0.5
        return image, known

    def masked_input(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """pre_process(image * mask): the encoder's (and the reference encoder's) input; holes become the
        value of a black pixel (-1 for the FFHQ models)."""
        image, known = self._inputs(image, mask)
        return self.pre_process(image * known)

    def token_types(self, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(token_type long [B,1,h,w]: 0 fully masked, 1 fully known, 2 partial; unmask_ratio float [B,1,h,w])."""
        if mask.dim() == 3:
            mask = mask.unsqueeze(1)
        known = mask if mask.dtype == torch.bool else mask >= 0.5
        b, _, hh, ww = known.shape
        p = self.config.patch_size
        count = known.float().reshape(b, 1, hh // p, p, ww // p, p).sum(dim=(3, 5))
        token_type = torch.full(count.shape, 2, dtype=torch.long, device=count.device)
        token_type[count == 0] = 0
        token_type[count == p * p] = 1
        return token_type, count / (p * p)

    # ------------------------------------------------------------------ encoding
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised image [B, 3, H, W] -> quant_conv features [B, e_dim, H/p, W/p]."""
        return self.quant_conv(self.encoder(x.to(self.dtype)))

    def distances(self, feature: torch.Tensor) -> torch.Tensor:
        """[B, C, h, w] features -> [B, h, w, n_e] squared distances to every code (float32)."""
        b, c, h, w = feature.shape
        z = feature.permute(0, 2, 3, 1).reshape(-1, c).float()
        return self.quantize.distances(z).view(b, h, w, -1)

    def quantize_indices(self, feature: torch.Tensor, token_type: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Type-aware nearest codes [B, h*w] of features [B, C, h, w]: type-1 (fully known) tokens from
        [0, S), the others from [S, n_e). With ``token_type=None`` the whole codebook is searched (the
        official quantizer without token types)."""
        b, c, h, w = feature.shape
        z = feature.permute(0, 2, 3, 1).reshape(-1, c).float()
        known = None if token_type is None else (token_type.reshape(-1) == 1).to(z.device)
        return self.quantize.nearest(z, known).view(b, h * w)

    @torch.no_grad()
    def get_features(self, image: torch.Tensor, mask: torch.Tensor) -> dict:
        """Features and tokens of the masked image.

        image float [B,3,H,W] in 0..255; mask bool/float [B,1,H,W], 1 = known (a float mask is binarised at
        0.5). Returns ``feature`` [B,C,h,w] (quant_conv output, not quantized), ``token_type`` long
        [B,1,h,w], ``unmask_ratio`` float [B,1,h,w] and ``token`` long [B,h*w] (type-aware indices)."""
        image, known = self._inputs(image, mask)
        feature = self.encode(self.pre_process(image * known))
        token_type, unmask_ratio = self.token_types(known)
        return {"feature": feature, "token_type": token_type, "unmask_ratio": unmask_ratio,
                "token": self.quantize_indices(feature, token_type)}

    # ------------------------------------------------------------------ decoding
    def codebook_lookup(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token indices [B, L] -> codebook entries [B, L, e_dim]."""
        return F.embedding(tokens.to(self.device), self.quantize.codebook)

    @torch.no_grad()
    def decode(self, tokens: torch.Tensor, image: torch.Tensor, mask: torch.Tensor,
               combine_rec_and_gt: bool = False, intermediates: Optional[dict] = None) -> torch.Tensor:
        """Tokens [B, h*w] -> image [B, 3, H, W] float32 0..255 (clamped), as the official decode +
        post_process. ``image`` is the original (0..255), of which ``image * mask`` is the decoder's
        reference; with ``combine_rec_and_gt`` the known pixels are then pasted back (TPAMI configs).
        ``intermediates``, when a dict, receives post_quant_conv, decoder_after_res_layers, ref_encoder
        ({(H, W): map}) and decoder_out (normalised, before the paste)."""
        image, known = self._inputs(image, mask)
        b = image.shape[0]
        h, w = self.token_shape(*image.shape[-2:])
        if tokens.shape != (b, h * w):
            raise ValueError(f"tokens must be [{b}, {h * w}] for a {tuple(image.shape[-2:])} image, "
                             f"got {tuple(tokens.shape)}")
        quant = self.codebook_lookup(tokens).view(b, h, w, -1).permute(0, 3, 1, 2)
        quant = self.post_quant_conv(quant)
        maskf = known.to(self.dtype)
        reference = self.pre_process(image * known)
        if intermediates is not None:
            intermediates["post_quant_conv"] = quant
        rec = self.decoder(quant, reference, maskf, intermediates)
        if intermediates is not None:
            intermediates["decoder_out"] = rec
        if combine_rec_and_gt:
            m = maskf.float()
            rec = rec.float() * (1 - m) + reference * m
        return self.post_process(rec)

    def extra_repr(self) -> str:
        cfg = self.config
        return (f"version={cfg.version}, patch={cfg.patch_size}, n_e={cfg.n_e}, e_dim={cfg.e_dim}, "
                f"masked_embed_start={cfg.masked_embed_start}")


def load_pvqvae(sd: Mapping[str, torch.Tensor], strict: bool = True, **overrides) -> PatchVQVAE:
    """Build and load a P-VQVAE from a state dict (P-VQVAE keys, or a transformer's ``content_codec.*``);
    training-only ``loss.*`` keys are ignored. Returns the model in eval mode."""
    sd = _strip_codec_keys(sd)
    codec = PatchVQVAE(infer_pvqvae_config(sd, **overrides))
    codec.load_state_dict(sd, strict=strict)
    return codec.eval().requires_grad_(False)
