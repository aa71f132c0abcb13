"""Regenerate tests/golden/tuning/golden.safetensors by running the official PTI and STIT code on CPU.

    .venv/bin/python tests/golden/tuning/regenerate.py [--pti /work/.mirror/danielroich+PTI/repo]
                                                       [--stit /work/.mirror/rotemtzaban+STIT/repo]

The official repositories are bare git mirrors: their .py files are extracted to a temporary folder and imported
from there (nothing official is copied into the project). What is run, unchanged:
- NVlabs' stylegan2-ada networks.py (STIT's copy) builds a tiny 32 px generator with random weights; it is pickled
  as NVlabs' persistence does and read by TransEdit's converter (models/stylegan/nvlabs_pickle.py).
- PTI's SingleIDCoach.train (training/coaches/single_id_coach.py, base_coach.py, criteria/): pivot, 12 steps,
  the LPIPS early stop at a threshold that fires mid-run.
- STIT's Coach.train (training/coaches/coach.py, criteria/localitly_regularizer.py): 2 frames x 3 steps with
  locality regularisation, numpy seeded as np.random.seed(SEED).
- STIT's create_masks, calc_masks and optimize_border (edit_video_stitching_tuning.py; the functions are read from
  the file and run as written; create_masks' `.cuda()` is a no-op on this CPU run, the segmentation network a
  stand-in returning fixed face labels).
Shims (the official code's unrelated imports): wandb, the e4e encoder, log/plot utilities and the `lpips`
module are stand-ins; the perceptual loss on both sides is TransEdit's LPIPS AlexNet (models/perceptual) with
seeded random weights (tests/test_tuning_parity.py `seeded_lpips`): the same callable on both sides, so the
comparison is about the tuning loops. LPIPS itself is checked against the reference package in tests/test_lpips.py.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import pickle
import subprocess
import sys
import tempfile
import types
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
TESTS = HERE.parents[1]
sys.path.insert(0, str(TESTS))  # tests/: the shared recipe and official_functions (never tests/golden: its
# folders are named like the reference packages, and `import lpips` would find tests/golden/lpips instead)
from official_functions import functions_from_source  # noqa: E402
import test_tuning_parity as P  # noqa: E402  (the shared recipe: sizes, seeds, inputs, the perceptual loss)

SHARED_NAMES = ("configs", "criteria", "training", "utils", "models", "torch_utils", "dnnlib", "editings", "lpips",
                "wandb")


def extract(mirror: Path, dest: Path) -> Path:
    files = subprocess.run(["git", "-C", str(mirror), "ls-tree", "-r", "--name-only", "HEAD"], check=True,
                           capture_output=True, text=True).stdout.split()
    for name in files:
        if name.endswith((".py", ".cpp", ".cu", ".h")):
            out = dest / name
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(subprocess.run(["git", "-C", str(mirror), "show", f"HEAD:{name}"], check=True,
                                           capture_output=True).stdout)
    return dest


def purge():
    for name in list(sys.modules):
        if name.split(".")[0] in SHARED_NAMES:
            del sys.modules[name]


@contextlib.contextmanager
def official(root: Path, perceptual):
    """Import from an official checkout with stand-ins for what the tuning loops do not use."""
    purge()
    sys.path.insert(0, str(root))
    fakes = {
        "wandb": types.SimpleNamespace(log=lambda *a, **k: None),
        "lpips": types.SimpleNamespace(LPIPS=lambda *a, **k: perceptual),
        "models.e4e.psp": types.SimpleNamespace(pSp=None),
        "utils.log_utils": types.SimpleNamespace(log_image_from_w=None, log_images_from_w=None),
    }
    for name, value in fakes.items():
        module = types.ModuleType(name)
        module.__dict__.update(vars(value))
        sys.modules[name] = module
    try:
        yield
    finally:
        sys.path.remove(str(root))
        purge()


def build_nvlabs_generator(stit: Path, pkl: Path):
    """NVlabs' Generator at P.SIZE px with P.CHANNELS everywhere, random weights (noise strengths and w_avg
    non-zero so that they matter), pickled with NVlabs' persistence."""
    with official(stit, None):
        from training.networks import Generator  # noqa: PLC0415

        torch.manual_seed(P.SEED)
        G = Generator(z_dim=P.W_DIM, c_dim=0, w_dim=P.W_DIM, img_resolution=P.SIZE, img_channels=3,
                      mapping_kwargs=dict(num_layers=2),
                      synthesis_kwargs=dict(channel_base=P.CHANNELS * P.SIZE, channel_max=P.CHANNELS, num_fp16_res=0,
                                            conv_clamp=256)).eval()
        with torch.no_grad():
            for name, p in G.named_parameters():
                if name.endswith("noise_strength"):
                    p.fill_(0.2)
                elif name.endswith(".bias") and "mapping" not in name:
                    p.copy_(torch.randn_like(p) * 0.1)
            G.mapping.w_avg.copy_(torch.randn(P.W_DIM) * 0.3)
        with open(pkl, "wb") as f:
            pickle.dump({"G_ema": G}, f)


def ours_from(pkl_obj, path: Path) -> dict:
    """An official (tuned) NVlabs generator -> TransEdit's state dict, through the pack's own converter."""
    from transedit.models.stylegan.nvlabs_pickle import read_nvlabs_checkpoint

    with open(path, "wb") as f:
        pickle.dump({"G_ema": pkl_obj}, f)
    raw = read_nvlabs_checkpoint(path)
    return raw.state_dicts["g_ema"], raw.extras


def recorder(coach, rows):
    original = coach.calc_loss

    def calc_loss(*args, **kwargs):
        loss, l2, lp = original(*args, **kwargs)
        rows.append([float(l2), float(lp), float(loss)])
        return loss, l2, lp
    coach.calc_loss = calc_loss


def run_pti(pti: Path, pkl: Path, work: Path, inputs: dict, perceptual, threshold: float, steps: int,
            convert: bool = True, keep: dict | None = None):
    """PTI's single-id coach on the first pivot/target: (TransEdit state dict of the tuned G or None, loss rows);
    keep["render"]: the tuned G's render of the pivot (for the speed races)."""
    with official(pti, perceptual):
        from configs import global_config, hyperparameters, paths_config  # noqa: PLC0415
        from training.coaches.single_id_coach import SingleIDCoach  # noqa: PLC0415

        global_config.device, global_config.training_step = "cpu", 1
        hyperparameters.max_pti_steps, hyperparameters.LPIPS_value_threshold = steps, threshold
        hyperparameters.use_last_w_pivots, hyperparameters.first_inv_type = True, "w"
        paths_config.stylegan2_ada_ffhq = str(pkl)
        paths_config.checkpoints_dir = str(work / "ckpt")
        paths_config.embedding_base_dir = str(work / "emb")
        paths_config.input_data_id = "golden"
        pivot_dir = work / "emb" / "golden" / paths_config.pti_results_keyword / "img0"
        pivot_dir.mkdir(parents=True, exist_ok=True)
        torch.save(inputs["pivots"][:1].clone(), pivot_dir / "0.pt")
        coach = object.__new__(SingleIDCoach)
        coach.use_wandb, coach.image_counter, coach.w_pivots = False, 0, {}
        coach.data_loader = [(["img0"], inputs["targets"][:1].clone())]
        coach.lpips_loss = perceptual
        coach.checkpoint_dir = paths_config.checkpoints_dir
        (work / "ckpt").mkdir(exist_ok=True)
        rows = []
        recorder(coach, rows)
        coach.train()
        return finish(coach, inputs["pivots"][:1], work / "tuned.pkl", convert, keep), rows


def finish(coach, pivot, path, convert, keep):
    if keep is not None:
        with torch.no_grad():
            keep["render"] = coach.G.synthesis(pivot.to(next(coach.G.parameters()).device), noise_mode="const",
                                               force_fp32=True).detach()
    return ours_from(coach.G, path)[0] if convert else None


def run_stit(stit: Path, pkl: Path, work: Path, inputs: dict, perceptual, steps: int, frames: int = P.STIT_FRAMES,
             seed: int = P.SEED, convert: bool = True, keep: dict | None = None):
    """STIT's coach over `frames` frames with numpy seeded as np.random.seed(seed): (state dict or None, rows)."""
    with official(stit, perceptual):
        from configs import global_config, hyperparameters, paths_config  # noqa: PLC0415
        from training.coaches.coach import Coach  # noqa: PLC0415

        global_config.device, global_config.training_step = "cpu", 1
        hyperparameters.max_pti_steps = steps
        paths_config.stylegan2_ada_ffhq = str(pkl)
        coach = object.__new__(Coach)
        coach.use_wandb = False
        coach.lpips_loss = perceptual
        coach.restart_training()
        n = frames
        pivots = {f"f{i}": inputs["pivots"][i:i + 1].clone() for i in range(n)}
        coach.get_inversion = lambda name, image: pivots[name]
        coach.dataset = [(f"f{i}", inputs["targets"][i].clone()) for i in range(n)]
        rows = []
        recorder(coach, rows)
        np.random.seed(seed)
        coach.train()
        return finish(coach, inputs["pivots"][:1], work / "stit_tuned.pkl", convert, keep), rows


def stit_functions(stit: Path) -> dict:
    """create_masks, calc_masks, optimize_border and their helpers, read from edit_video_stitching_tuning.py and
    run as written (the module's other imports — video I/O, dlib alignment, the editors — are not needed)."""
    wanted = {"create_masks", "calc_masks", "optimize_border", "masked_l2", "logical_or_reduce",
              "logical_and_reduce"}
    from tqdm import trange
    from torchvision import transforms
    from configs import hyperparameters  # noqa: PLC0415  (inside official())
    from utils.morphology import dilation  # noqa: PLC0415

    namespace = {"torch": torch, "F": F, "copy": copy, "trange": trange, "transforms": transforms,
                 "hyperparameters": hyperparameters, "dilation": dilation}
    module, _ = functions_from_source(stit / "edit_video_stitching_tuning.py", wanted, namespace)
    return vars(module)


@contextlib.contextmanager
def cuda_is_cpu():
    saved = torch.Tensor.cuda
    torch.Tensor.cuda = lambda self, *a, **k: self
    try:
        yield
    finally:
        torch.Tensor.cuda = saved


class FixedParser(torch.nn.Module):
    """Stands for BiSeNet: returns one-hot logits of fixed face labels [1, 512, 512] (calc_masks reads [0])."""

    def __init__(self, labels):
        super().__init__()
        self.labels = labels

    def forward(self, x):
        return (F.one_hot(self.labels, 19).permute(0, 3, 1, 2).float() * 10,)


def run_stitching(stit: Path, pkl: Path, inputs: dict):
    out = {}
    with official(stit, None), cuda_is_cpu():
        fns = stit_functions(stit)
        from configs import global_config  # noqa: PLC0415
        from utils.models_utils import load_g  # noqa: PLC0415

        global_config.device = "cpu"

        labels = P.face_labels(512)
        crop = torch.zeros(1, 3, 1024, 1024)
        for name, (inner, outer, whole) in P.MASK_CASES.items():
            content, border, full = fns["calc_masks"](crop, FixedParser(labels), outer, inner, outer, whole)
            idx = P.mask_sample_index(1024)
            for key, m in (("content", content), ("border", border), ("full", full)):
                out[f"mask_{name}_{key}"] = m.reshape(-1)[idx].clone()
                out[f"mask_{name}_{key}_sum"] = m.sum().reshape(1)
        G = load_g(str(pkl))
        bmask, cmask = P.stitch_masks_small(fns["create_masks"])
        out["stitch_border_mask"], out["stitch_content_mask"] = bmask, cmask
        images = []
        for i in range(P.STITCH_FRAMES):
            w = inputs["edited"][i:i + 1].clone()
            crop = inputs["targets"][i:i + 1].clone()
            content_image = G.synthesis(w, noise_mode="const", force_fp32=True).detach()
            images.append(fns["optimize_border"](G, crop, content_image, w, border_mask=bmask, content_mask=cmask,
                                                 optimize_generator=True, num_steps=P.STITCH_STEPS, loss_l2=True,
                                                 content_loss_lambda=0.01, border_loss_threshold=0.0))
        out["stitch_images"] = torch.cat(images)
    return out


def delta(state: dict, base: dict) -> dict:
    return {k: (state[k].float() - base[k].float()) for k in base if not torch.equal(state[k], base[k])}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pti", default="/work/.mirror/danielroich+PTI/repo")
    ap.add_argument("--stit", default="/work/.mirror/rotemtzaban+STIT/repo")
    ap.add_argument("--out", default=str(HERE / "golden.safetensors"))
    args = ap.parse_args()
    from safetensors.torch import save_file

    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        pti = extract(Path(args.pti), tmp / "pti")
        stit = extract(Path(args.stit), tmp / "stit")
        pkl = tmp / "tiny_ffhq.pkl"
        build_nvlabs_generator(stit, pkl)
        from transedit.models.stylegan.nvlabs_pickle import read_nvlabs_checkpoint

        raw = read_nvlabs_checkpoint(pkl)
        base, config = raw.state_dicts["g_ema"], raw.extras["config"]
        inputs = P.make_inputs(base, config, raw.extras["latent_avg"])
        perceptual = P.seeded_lpips()

        # the threshold: PTI's rule fires at step P.PTI_STOP_AT (probe run without a stop)
        _, probe = run_pti(pti, pkl, tmp / "probe", inputs, perceptual, threshold=-1.0, steps=P.PTI_STEPS)
        lp = [r[1] for r in probe]
        threshold = 0.5 * (lp[P.PTI_STOP_AT - 1] + lp[P.PTI_STOP_AT])
        assert all(v > threshold for v in lp[:P.PTI_STOP_AT]) and lp[P.PTI_STOP_AT] <= threshold, lp
        pti_state, pti_rows = run_pti(pti, pkl, tmp / "pti_run", inputs, perceptual, threshold, P.PTI_STEPS)
        stit_state, stit_rows = run_stit(stit, pkl, tmp, inputs, perceptual, P.STIT_STEPS)
        stitching = run_stitching(stit, pkl, inputs)

    tensors = {f"base.{k}": v.contiguous() for k, v in base.items()}
    tensors["latent_avg"] = raw.extras["latent_avg"].contiguous()
    tensors.update({k: v.contiguous() for k, v in inputs.items()})
    tensors.update({f"pti_delta.{k}": v.contiguous() for k, v in delta(pti_state, base).items()})
    tensors.update({f"stit_delta.{k}": v.contiguous() for k, v in delta(stit_state, base).items()})
    tensors["pti_losses"] = torch.tensor(pti_rows, dtype=torch.float32)
    tensors["stit_losses"] = torch.tensor(stit_rows, dtype=torch.float32)
    tensors.update({k: v.detach().float().contiguous() for k, v in stitching.items()})
    metadata = {"config": json.dumps({k: (v if not isinstance(v, dict) else {str(a): b for a, b in v.items()})
                                      for k, v in config.items()}),
                "pti_threshold": repr(threshold), "pti_steps_run": str(len(pti_rows) - 1),
                "torch": torch.__version__}
    save_file(tensors, args.out, metadata=metadata)
    print(f"wrote {args.out}: {Path(args.out).stat().st_size / 1e6:.2f} MB; PTI stopped after "
          f"{len(pti_rows) - 1} steps at LPIPS {threshold:.6f}; STIT {len(stit_rows)} iterations")


if __name__ == "__main__":
    main()
