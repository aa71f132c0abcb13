"""Train an inversion encoder against a frozen StyleGAN2 generator:

    python -m transedit.train --family swinstyleformer --generator models/stylegan/ffhq.pt \\
        --data /data/ffhq256 --out runs/swin --steps 500000 --batch 8 --lambda-lpips 0.8 --lambda-id 0.1 \\
        --lpips-backbone vgg16-397923af.pth --lpips-linear vgg.pth --id-weights model_ir_se50.pth
    torchrun --nproc_per_node=4 -m transedit.train ...          # multi-GPU / multi-node (DDP)
    python -m transedit.train --family style_transformer --generator g.pt --synthetic --out runs/st   # no dataset

Families: style_transformer, psp, e4e, styleprompter (baseline), styleprompter_smart (SMART only, on a frozen
baseline encoder given with --init-encoder), swinstyleformer. `--size full` builds the official sizes, `tiny`
a few-hundred-thousand-parameter model (tests, smoke runs).

Data: `--data DIR` (every image below it, centre-cropped and resized to 256², as the encoders see them at
inference; unreadable files are skipped and counted) or `--synthetic` (images drawn from the generator itself
with their true W+ known, which also enables the latent loss `--lambda-latent`).

Losses (all optional; weight 0 = off): pixel L2, LPIPS (VGG16 + LPIPS linear layers from local files), identity
(ArcFace IR-SE-50 from pSp's model_ir_se50.pth), W-norm regulariser (distance to latent_avg), latent-code
discriminator (e4e), distribution alignment (moment matching to W). A loss whose weight file is missing is
switched off with a note, never silently.

Output folder: `checkpoint.pt` (encoder, optimiser, discriminator, step, RNG states; written atomically every
--save-every steps and at the end; `--resume` continues from it), `encoder.safetensors` (what TransEdit Load
Encoder reads: encoder + the generator it was trained for + latent_avg), `train_log.jsonl`, `samples/`.
An existing output folder is refused unless --resume or --overwrite.

Over 600 lines: one trainer (config, data, DDP, checkpoints, resume) shared by every encoder family; the
losses live in models/encoders/losses.py and models/perceptual (LPIPS).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .models.encoders import losses as L
from .models.perceptual import LPIPS
from .models.encoders.latent_encoder import LatentEncoder
from .models.encoders.irse import offset_by_latent_avg, preprocess_official
from .models.registry import atomic_write, load_encoder, load_stylegan2

FAMILIES = ("style_transformer", "psp", "e4e", "styleprompter", "styleprompter_smart", "swinstyleformer")
IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}


@dataclass
class TrainConfig:
    family: str
    generator: str
    out: str
    data: Optional[str] = None
    synthetic: bool = False
    size: str = "full"  # full | tiny
    input_size: int = 256  # the encoder's input side (the official encoders: 256)
    steps: int = 1000
    batch: int = 8
    lr: float = 1e-4
    optimizer: str = "adam"  # adam | radam
    grad_accum: int = 1
    bf16: bool = False
    lambda_l2: float = 1.0
    lambda_lpips: float = 0.0
    lambda_id: float = 0.0
    lambda_latent: float = 0.0  # synthetic mode: |E(G(w)) - w|²
    lambda_wnorm: float = 0.0
    lambda_adv: float = 0.0
    lambda_align: float = 0.0
    lpips_backbone: Optional[str] = None
    lpips_linear: Optional[str] = None
    id_weights: Optional[str] = None
    init_encoder: Optional[str] = None
    init_backbone: Optional[str] = None  # SwinStyleformer: a local timm/official Swin checkpoint
    truncation: float = 0.7
    save_every: int = 1000
    sample_every: int = 0
    log_every: int = 10
    seed: int = 0
    resume: bool = False
    overwrite: bool = False
    max_images: int = 0
    align: bool = False  # FFHQ-align faces in --data images (mediapipe), as Align Face does
    notes: list = field(default_factory=list)


# ------------------------------------------------------------------------------------------------ data
class ImageFolder(torch.utils.data.Dataset):
    """Every image below `root`, centre-cropped to a square and resized to `size`, in [-1, 1]. Files that
    cannot be decoded are skipped (and counted in `skipped`)."""

    def __init__(self, root, size: int = 256, max_images: int = 0, align: bool = False):
        from PIL import Image

        self.size = size
        self.detector = None
        if align:  # the same FFHQ alignment as the Align Face node; photos without a face are skipped
            from .models.face.landmarks import MediaPipeLandmarks

            self.detector = MediaPipeLandmarks()
        self.files, self.skipped, self.no_face = [], [], set()
        for path in sorted(Path(root).rglob("*")):
            if path.suffix.lower() not in IMAGE_EXTS or not path.is_file():
                continue
            try:
                with Image.open(path) as im:
                    im.verify()
                self.files.append(path)
            except Exception as e:  # PIL raises many types for broken files; this only decides skip or keep
                self.skipped.append(f"{path.name}: {type(e).__name__}")
            if max_images and len(self.files) >= max_images:
                break
        if not self.files:
            raise ValueError(f"--data {root}: no readable images (.png/.jpg/.webp/.bmp) found"
                             + (f"; {len(self.skipped)} unreadable" if self.skipped else ""))

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        from PIL import Image

        if self.detector is not None:
            from .models.face.align import align_faces
            from .models.face.landmarks import FaceAlignError

            for k in range(len(self.files)):  # the next photo with a face
                j = (i + k) % len(self.files)
                with Image.open(self.files[j]) as im:
                    arr = np.array(im.convert("RGB"))  # a writable copy for torch
                try:
                    aligned, _ = align_faces([arr], detector=self.detector, output_size=self.size)
                except FaceAlignError:
                    self.no_face.add(self.files[j].name)
                    continue
                return preprocess_official(aligned.clamp(0, 1), self.size)[0]
            raise ValueError("--align: no image in --data has a detectable face")
        with Image.open(self.files[i]) as im:  # centre square, then exactly the inference transform
            w, h = im.size
            s = min(w, h)
            square = np.asarray(im.convert("RGB").crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)))
        return preprocess_official([square], self.size)[0]


# ------------------------------------------------------------------------------------------------ models
def build_encoder(family: str, size: str, n_latent: int, style_dim: int, input_size: int = 256):
    """(module, opts) with the official layout of `family` (full) or a tiny version of it."""
    from .models.encoders.irse import IRSEConfig
    from .models.encoders.psp import PSPConfig, build_psp_encoder
    from .models.encoders.style_transformer import StyleTransformerConfig, StyleTransformerEncoder
    from .models.encoders.styleprompter import StylePrompterConfig, StylePrompterEncoder
    from .models.encoders.swinstyleformer import SwinStyleformerConfig, SwinStyleformerEncoder

    tiny = size == "tiny"
    backbone = IRSEConfig(input_width=16, widths=(16, 32, 48, style_dim), units=(1, 1, 1, 1)) if tiny \
        else IRSEConfig(widths=(64, 128, 256, style_dim))
    if family == "style_transformer":
        cfg = StyleTransformerConfig(backbone=backbone, d_model=style_dim, nhead=4,
                                     dim_feedforward=2 * style_dim if tiny else 1024, n_latent=n_latent)
        return StyleTransformerEncoder(cfg), {"encoder_type": "StyleTransformer"}
    if family in ("psp", "e4e"):
        cfg = PSPConfig(backbone=backbone, kind=family, n_styles=n_latent, style_dim=style_dim,
                        coarse_ind=min(3, n_latent), middle_ind=min(7, n_latent))
        return build_psp_encoder(cfg), {"encoder_type": "Encoder4Editing" if family == "e4e" else
                                        "GradualStyleEncoder", "start_from_latent_avg": True}
    if family == "styleprompter":
        cfg = StylePrompterConfig(embed_dim=16, depths=(1, 2, 2, 1), num_heads=(2, 4, 8, 16), n_latent=n_latent,
                                  head_hidden=128, style_dim=style_dim, cpb_hidden=64, img_size=input_size) if tiny \
            else StylePrompterConfig(n_latent=n_latent, style_dim=style_dim, img_size=input_size)
        return StylePrompterEncoder(cfg), {"encoder_type": "StylePrompter"}
    if family == "swinstyleformer":
        cfg = SwinStyleformerConfig.preset("tiny" if tiny else "swin_t", n_latent=n_latent, style_dim=style_dim)
        cfg = dataclasses.replace(cfg, img_size=input_size)
        return SwinStyleformerEncoder(cfg), {"encoder_type": "SwinStyleformer",
                                             "swinstyleformer_config": cfg.to_dict()}
    raise ValueError(f"--family must be one of {FAMILIES}, got {family!r}")


class Inverter(nn.Module):
    """What is trained: images [-1, 1] -> W+ (codes + latent_avg) and, for SMART, the refined image path."""

    def __init__(self, family: str, encoder: nn.Module, latent_avg: torch.Tensor, generator: nn.Module,
                 smart: Optional[nn.Module] = None, input_size: int = 256):
        super().__init__()
        self.family = family
        self.input_size = input_size
        self.wrapped = LatentEncoder(encoder, latent_avg if family != "styleprompter" else None,
                                     mapping=generator if family == "style_transformer" else None)
        if family == "styleprompter":
            encoder.set_latent_avg(latent_avg)
        self.smart = smart
        self._generator = [generator]  # not a submodule: frozen, never in the optimiser or the export

    @property
    def encoder(self) -> nn.Module:
        return self.wrapped.encoder

    def forward(self, x: torch.Tensor):
        enc = self.wrapped.encoder
        size = self.input_size
        if x.shape[-1] != size:
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        if self.family == "style_transformer":  # queries through the frozen mapping, so z trains too
            codes = enc(x, query=enc.compute_query(self._generator[0]))
            return offset_by_latent_avg(codes.float(), self.wrapped.latent_avg), None
        if self.smart is not None:
            with torch.no_grad():
                wplus, feats = self.wrapped(x, return_features=True)
            return wplus, feats
        return self.wrapped(x), None


# ------------------------------------------------------------------------------------------------ trainer
class Trainer:
    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self.distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
        if self.distributed and not torch.distributed.is_initialized():
            backend = "nccl" if torch.cuda.is_available() else "gloo"
            torch.distributed.init_process_group(backend)
        self.rank = torch.distributed.get_rank() if self.distributed else 0
        self.world = torch.distributed.get_world_size() if self.distributed else 1
        local = int(os.environ.get("LOCAL_RANK", "0"))
        self.device = torch.device(f"cuda:{local}" if torch.cuda.is_available() else "cpu")
        self.out = Path(cfg.out)
        self._check_output()
        torch.manual_seed(cfg.seed + self.rank)
        self.data_gen = torch.Generator().manual_seed(cfg.seed * 1000 + self.rank)

        gen_desc = load_stylegan2(cfg.generator)
        self.gen_desc = gen_desc
        self.generator = gen_desc.model.to(self.device).eval().requires_grad_(False)
        gcfg = gen_desc.config
        self.latent_avg = gen_desc.latent_avg.float().to(self.device)
        self.n_latent, self.style_dim = gcfg.n_latent, gcfg.style_dim

        smart = None
        if cfg.family == "styleprompter_smart":
            if not cfg.init_encoder:
                raise ValueError("--family styleprompter_smart trains SMART on a frozen StylePrompter baseline: "
                                 "give the baseline with --init-encoder")
            base = load_encoder(cfg.init_encoder)
            if base.family != "styleprompter":
                raise ValueError(f"--init-encoder {cfg.init_encoder} is a {base.family} encoder, not StylePrompter")
            encoder = base.model.encoder
            cfg.input_size = base.input_size[0]
            self.opts = dict(base.opts, encoder_type="StylePrompter")
            from .models.encoders.smart import SMART, SMARTConfig

            shapes = encoder.config.feature_shapes()
            q = gcfg.channels[16]
            smart = SMART(SMARTConfig(q_channel=q, embed_dim=q, kv_channels=[c for _, c in shapes],
                                      kv_shapes=[side for side, _ in shapes], ffn_dim=2 * q))
            encoder.requires_grad_(False).eval()
            self.family = "styleprompter"
        else:
            encoder, self.opts = build_encoder(cfg.family, cfg.size, self.n_latent, self.style_dim, cfg.input_size)
            if cfg.init_encoder:
                init = load_encoder(cfg.init_encoder)
                encoder.load_state_dict(init.model.encoder.state_dict())
            if cfg.init_backbone:
                if cfg.family != "swinstyleformer":
                    raise ValueError("--init-backbone initialises SwinStyleformer's Swin backbone only")
                from .models.encoders.swinstyleformer import load_backbone_weights

                self._note(f"backbone from {cfg.init_backbone}: {load_backbone_weights(encoder, cfg.init_backbone)}")
            self.family = cfg.family
        self.opts.update(output_size=gcfg.size, trained_with="transedit.train", train_family=cfg.family,
                         input_size=cfg.input_size)
        self.model = Inverter(self.family, encoder, self.latent_avg, self.generator, smart,
                              cfg.input_size).to(self.device)
        self.trainable = smart if smart is not None else encoder
        self.trainable.train()
        params = [p for p in self.trainable.parameters() if p.requires_grad]
        opt_cls = {"adam": torch.optim.Adam, "radam": torch.optim.RAdam}[cfg.optimizer]
        self.optimizer = opt_cls(params, lr=cfg.lr)
        # DDP (torch.distributed) wraps the whole encode step; the frozen generator is not part of it
        self.ddp = None
        if self.distributed:
            self.ddp = nn.parallel.DistributedDataParallel(self.model, device_ids=[local]
                                                           if self.device.type == "cuda" else None)
        self.net = self.ddp if self.ddp is not None else self.model
        self._build_losses()
        self.step = 0
        self.history: list[dict] = []
        if cfg.resume:
            self._load_checkpoint()
        self._build_data()

    # ----------------------------------------------------------------------- setup
    def _note(self, text: str):
        self.cfg.notes.append(text)
        if self.rank == 0:
            print(f"[transedit.train] {text}", flush=True)

    def _check_output(self):
        ckpt = self.out / "checkpoint.pt"
        if self.out.exists() and any(self.out.iterdir()):
            if self.cfg.resume:
                if not ckpt.is_file():
                    raise ValueError(f"--resume: {self.out} has no checkpoint.pt to resume from")
            elif not self.cfg.overwrite:
                raise FileExistsError(f"--out {self.out} exists and is not empty; use --resume to continue the run "
                                      "in it or --overwrite to start over (its files are replaced)")
        elif self.cfg.resume:
            raise ValueError(f"--resume: {self.out} does not exist")
        if self.distributed:  # every rank has looked before rank 0 creates anything
            torch.distributed.barrier()
        if self.rank == 0:
            (self.out / "samples").mkdir(parents=True, exist_ok=True)

    def _build_losses(self):
        c = self.cfg
        self.lpips = self.id_loss = self.disc = None
        if c.lambda_lpips > 0:
            if c.lpips_backbone and c.lpips_linear and Path(c.lpips_backbone).is_file() and Path(c.lpips_linear).is_file():
                self.lpips = LPIPS.from_files(c.lpips_backbone, c.lpips_linear).to(self.device)
            else:
                self._note("LPIPS is off: --lambda-lpips > 0 needs --lpips-backbone (torchvision vgg16-*.pth) and "
                           "--lpips-linear (LPIPS weights/v0.1/vgg.pth) files")
                c.lambda_lpips = 0.0
        if c.lambda_id > 0:
            if c.id_weights and Path(c.id_weights).is_file():
                self.id_loss = L.IdentityLoss.from_file(c.id_weights).to(self.device)
            else:
                self._note("identity loss is off: --lambda-id > 0 needs --id-weights (pSp's model_ir_se50.pth)")
                c.lambda_id = 0.0
        if c.lambda_latent > 0 and not c.synthetic:
            self._note("latent loss is off: it needs the true latents of --synthetic mode")
            c.lambda_latent = 0.0
        if c.lambda_adv > 0:
            self.disc = L.LatentDiscriminator(self.style_dim).to(self.device)
            self.disc_opt = torch.optim.Adam(self.disc.parameters(), lr=2e-5)

    def _build_data(self):
        self.loader = None
        if self.cfg.synthetic:
            return
        if not self.cfg.data:
            raise ValueError("give --data DIR (an image folder) or --synthetic")
        ds = ImageFolder(self.cfg.data, 256, self.cfg.max_images, align=self.cfg.align)
        if ds.skipped:
            self._note(f"{len(ds.skipped)} unreadable file(s) skipped, e.g. {ds.skipped[:3]}")
        self.dataset = ds
        sampler = torch.utils.data.DistributedSampler(ds, seed=self.cfg.seed) if self.distributed else None
        self.loader = torch.utils.data.DataLoader(ds, batch_size=self.cfg.batch, shuffle=sampler is None,
                                                  sampler=sampler, drop_last=len(ds) >= self.cfg.batch,
                                                  generator=self.data_gen if sampler is None else None)
        self._epoch, self._iter = 0, None

    # ----------------------------------------------------------------------- batches
    def _sample_w(self, n: int) -> torch.Tensor:
        z = torch.randn(n, self.style_dim, generator=self.data_gen).to(self.device)
        mean = self.latent_avg.reshape(-1, self.style_dim).mean(0, keepdim=True)
        return mean + self.cfg.truncation * (self.generator.mapping(z) - mean)

    def _synthesise(self, wplus: torch.Tensor, hook=None) -> torch.Tensor:
        img = self.generator.synthesis(wplus, feature_hook=hook)
        img = img[0] if isinstance(img, tuple) else img
        if img.shape[-1] > 256:  # losses at 256², as the official trainers (face_pool)
            img = F.adaptive_avg_pool2d(img, 256)
        return img

    def _batch(self) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        if self.cfg.synthetic:
            with torch.no_grad():
                w = self._sample_w(self.cfg.batch)
                wplus = w.unsqueeze(1).repeat(1, self.n_latent, 1)
                return self._synthesise(wplus).clamp(-1, 1), wplus
        if self._iter is None:
            if isinstance(self.loader.sampler, torch.utils.data.DistributedSampler):
                self.loader.sampler.set_epoch(self._epoch)
            self._iter = iter(self.loader)
        try:
            x = next(self._iter)
        except StopIteration:
            self._epoch += 1
            self._iter = None
            return self._batch()
        return x.to(self.device), None

    # ----------------------------------------------------------------------- step
    def _losses(self, x: torch.Tensor, w_true: Optional[torch.Tensor]) -> tuple[torch.Tensor, dict]:
        c = self.cfg
        amp = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=c.bf16)
        with amp:
            wplus, feats = self.net(x)
            hook = self.model.smart.hook([f.float() for f in feats]) if self.model.smart is not None else None
            recon = self._synthesise(wplus, hook)
        recon = recon.float()
        if recon.shape[-1] != x.shape[-1]:
            x = F.interpolate(x, size=recon.shape[-2:], mode="bilinear", align_corners=False, antialias=True)
        parts = {"l2": F.mse_loss(recon, x)}
        if self.lpips is not None:
            parts["lpips"] = self.lpips(recon, x).mean()
        if self.id_loss is not None:
            parts["id"] = self.id_loss(recon, x).mean()
        if w_true is not None and c.lambda_latent > 0:
            parts["latent"] = F.mse_loss(wplus.float(), w_true)
        if c.lambda_wnorm > 0:
            parts["wnorm"] = (wplus.float() - self.latent_avg.view(1, -1, self.style_dim)).norm(dim=-1).mean()
        codes = wplus.float().reshape(-1, self.style_dim)
        real = None
        if self.disc is not None or c.lambda_align > 0:
            with torch.no_grad():
                real = self._sample_w(codes.shape[0])
        if self.disc is not None:
            parts["adv"] = L.encoder_adversarial_loss(self.disc, codes)
        if c.lambda_align > 0:
            parts["align"] = L.moment_alignment(codes, real)
        weights = {"l2": c.lambda_l2, "lpips": c.lambda_lpips, "id": c.lambda_id, "latent": c.lambda_latent,
                   "wnorm": c.lambda_wnorm, "adv": c.lambda_adv, "align": c.lambda_align}
        total = sum(weights[k] * v for k, v in parts.items())
        self._last_codes, self._last_real = codes.detach(), real
        return total, {k: float(v.detach()) for k, v in parts.items()}

    def train_step(self) -> dict:
        c = self.cfg
        self.optimizer.zero_grad(set_to_none=True)
        logs: dict = {}
        for micro in range(c.grad_accum):
            x, w_true = self._batch()
            total, parts = self._losses(x, w_true)
            sync = self.ddp.no_sync() if self.ddp is not None and micro < c.grad_accum - 1 else nullcontext()
            with sync:
                (total / c.grad_accum).backward()
            for k, v in parts.items():
                logs[k] = logs.get(k, 0.0) + v / c.grad_accum
        self.optimizer.step()
        if self.disc is not None:
            self.disc_opt.zero_grad(set_to_none=True)
            d_loss = L.discriminator_loss(self.disc, self._last_real, self._last_codes)
            d_loss.backward()
            if self.distributed:  # the discriminator is small: average its gradients by hand
                for p in self.disc.parameters():
                    torch.distributed.all_reduce(p.grad)
                    p.grad /= self.world
            self.disc_opt.step()
            logs["disc"] = float(d_loss.detach())
        self.step += 1
        logs["step"] = self.step
        return logs

    # ----------------------------------------------------------------------- run
    def run(self) -> dict:
        c = self.cfg
        t0 = time.monotonic()
        log_path = self.out / "train_log.jsonl"
        while self.step < c.steps:
            logs = self.train_step()
            self.history.append(logs)
            if self.rank == 0:
                if self.step % c.log_every == 0 or self.step == c.steps:
                    rate = self.step / max(time.monotonic() - t0, 1e-6)
                    shown = " ".join(f"{k} {v:.4f}" for k, v in logs.items() if k != "step")
                    print(f"\r[transedit.train] step {self.step}/{c.steps} {shown} ({rate:.2f} it/s)",
                          end="\n" if self.step == c.steps else "", flush=True)
                with open(log_path, "a") as f:
                    f.write(json.dumps(logs) + "\n")
                if c.sample_every and self.step % c.sample_every == 0:
                    self._save_samples()
            if self.step % c.save_every == 0 or self.step == c.steps:
                self._save_checkpoint()
        report = {"step": self.step, "notes": c.notes, "history_tail": self.history[-5:]}
        if self.loader is not None:
            report["images"] = len(self.dataset)
            report["unreadable_skipped"] = len(self.dataset.skipped)
            report["no_face_skipped"] = sorted(self.dataset.no_face)
        if self.distributed:
            report["rank_checksums"] = self._gather_checksums()
        if self.rank == 0:
            self.export(self.out / "encoder.safetensors")
            (self.out / "train_report.json").write_text(json.dumps(report, indent=1))
        if self.distributed:
            torch.distributed.barrier()
        return report

    def _gather_checksums(self) -> list[float]:
        local = torch.tensor([sum(float(p.detach().double().sum()) for p in self.trainable.parameters())],
                             dtype=torch.float64)
        gathered = [torch.zeros_like(local) for _ in range(self.world)]
        torch.distributed.all_gather(gathered, local)
        return [float(g) for g in gathered]

    # ----------------------------------------------------------------------- files
    def _save_checkpoint(self):
        if self.rank != 0:
            return
        state = {
            "step": self.step, "family": self.cfg.family, "config": dataclasses.asdict(self.cfg),
            "trainable": {k: v.detach().cpu() for k, v in self.trainable.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "rng": {"torch": torch.get_rng_state(), "data": self.data_gen.get_state()},
        }
        if self.disc is not None:
            state["disc"] = self.disc.state_dict()
            state["disc_optimizer"] = self.disc_opt.state_dict()
        atomic_write(self.out / "checkpoint.pt", lambda tmp: torch.save(state, tmp), overwrite=True)

    def _load_checkpoint(self):
        state = torch.load(self.out / "checkpoint.pt", map_location="cpu", weights_only=True)
        if state["family"] != self.cfg.family:
            raise ValueError(f"--resume: {self.out} holds a {state['family']} run, not {self.cfg.family}")
        self.trainable.load_state_dict(state["trainable"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.disc is not None and "disc" in state:
            self.disc.load_state_dict(state["disc"])
            self.disc_opt.load_state_dict(state["disc_optimizer"])
        self.step = int(state["step"])
        torch.set_rng_state(state["rng"]["torch"])
        self.data_gen.set_state(state["rng"]["data"])
        self._note(f"resumed from step {self.step}")

    def _save_samples(self):
        from PIL import Image

        with torch.no_grad():
            x, _ = self._batch()
            wplus, feats = self.model(x[:4])
            hook = self.model.smart.hook(feats) if self.model.smart is not None else None
            recon = self._synthesise(wplus, hook).float()
        x = F.interpolate(x[:4], size=recon.shape[-2:], mode="bilinear", align_corners=False)
        grid = torch.cat([torch.cat(list(x), 2), torch.cat(list(recon), 2)], 1)
        arr = ((grid.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
        Image.fromarray(arr).save(self.out / "samples" / f"step_{self.step:07d}.png")

    def export(self, path: Path) -> Path:
        """encoder.* (+ smart.*) + decoder.* (the generator) + latent_avg, as TransEdit Load Encoder reads it."""
        from safetensors.torch import save_file

        enc = self.model.encoder
        sd = {f"encoder.{k}": v.detach().cpu().contiguous() for k, v in enc.state_dict().items()}
        sd.update({f"decoder.{k}": v.detach().cpu().contiguous() for k, v in self.generator.state_dict().items()})
        if self.model.smart is not None:
            sd.update({f"smart.{k}": v.detach().cpu().contiguous() for k, v in self.model.smart.state_dict().items()})
        sd["latent_avg"] = self.latent_avg.detach().cpu().contiguous()
        meta = {"format": "transedit-encoder", "opts": json.dumps(self.opts),
                "config": json.dumps(self.gen_desc.config.to_dict() if hasattr(self.gen_desc.config, "to_dict")
                                     else {}), "step": str(self.step)}
        return atomic_write(path, lambda tmp: save_file(sd, tmp, metadata=meta), overwrite=True)


# ------------------------------------------------------------------------------------------------ CLI
def parse_args(argv=None) -> TrainConfig:
    ap = argparse.ArgumentParser(prog="python -m transedit.train", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = TrainConfig(family="", generator="", out="")
    ap.add_argument("--family", required=True, choices=FAMILIES)
    ap.add_argument("--generator", required=True, help="StyleGAN2 file (any format Load StyleGAN reads)")
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--data", help="image folder")
    ap.add_argument("--synthetic", action="store_true", help="train on the generator's own samples")
    for f in dataclasses.fields(TrainConfig):
        if f.name in ("family", "generator", "out", "data", "synthetic", "notes"):
            continue
        flag = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        if isinstance(default, bool):
            ap.add_argument(flag, action="store_true")
        elif f.name == "size":
            ap.add_argument(flag, choices=("full", "tiny"), default=default)
        elif f.name == "optimizer":
            ap.add_argument(flag, choices=("adam", "radam"), default=default)
        else:
            kind = {int: int, float: float}.get(type(default), str)
            ap.add_argument(flag, type=kind, default=default)
    ns = ap.parse_args(argv)
    cfg = TrainConfig(**{k: v for k, v in vars(ns).items()})
    if cfg.synthetic == bool(cfg.data):
        ap.error("give exactly one of --data DIR and --synthetic")
    if cfg.resume and cfg.overwrite:
        ap.error("--resume and --overwrite exclude each other")
    if cfg.steps < 1 or cfg.batch < 1 or cfg.grad_accum < 1:
        ap.error("--steps, --batch and --grad-accum must be at least 1")
    return cfg


def main(argv=None) -> int:
    cfg = parse_args(argv)
    if cfg.overwrite and Path(cfg.out).exists():
        for name in ("checkpoint.pt", "train_log.jsonl", "encoder.safetensors", "train_report.json"):
            (Path(cfg.out) / name).unlink(missing_ok=True)
    try:
        Trainer(cfg).run()
    except (ValueError, FileExistsError) as e:
        print(f"transedit.train: {e}", file=sys.stderr)
        return 2
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
