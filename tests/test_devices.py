"""Inputs on any device: IMAGE/MASK tensors from other nodes may live on the GPU (a VAE Decode under
--gpu-only) or the CPU (Load Image), mixed within one node. Every node must accept them and return fp32
outputs on the intermediate device. Needs a CUDA device; skipped (with this reason) where there is none."""
from __future__ import annotations

import pytest
import torch

from conftest import model_folders
from transedit.random_weights import save_random_dino, save_random_encoder, save_random_put
from transedit.nodes import compare as compare_nodes
from transedit.nodes import faces as face_nodes
from transedit.nodes import inversion as inv_nodes
from transedit.nodes import put as put_nodes
from transedit.nodes import splice as splice_nodes
from transedit.nodes import stylegan as sg_nodes

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device to mix devices")


@pytest.fixture(scope="module")
def handles(tmp_path_factory):
    with model_folders(tmp_path_factory.mktemp("device_models"), ("gan_encoders", "put", "vit")) as root:
        save_random_encoder(root / "gan_encoders" / "e.pt")
        save_random_put(root / "put" / "p.pth")
        save_random_dino(root / "vit" / "d.safetensors")
        encoder, generator = inv_nodes.TransEditLoadEncoder().load("e.pt")
        yield dict(encoder=encoder, generator=generator, put=put_nodes.TransEditLoadPUT().load("p.pth")[0],
                   vit=splice_nodes.TransEditLoadDINO().load("d.safetensors")[0])


def photos(b, device, h=64, w=56):
    return torch.rand(b, h, w, 3, generator=torch.Generator().manual_seed(b)).to(device)


def check(out: torch.Tensor) -> None:
    assert out.dtype == torch.float32 and out.device.type == "cpu"  # the intermediate device outside ComfyUI


@pytest.mark.parametrize("image_device,mask_device", [("cuda", "cpu"), ("cpu", "cuda"), ("cuda", "cuda")])
def test_put_inpaint_mixed_devices(handles, image_device, mask_device):
    mask = torch.zeros(2, 64, 56, device=mask_device)
    mask[:, 20:40, 10:30] = 1
    filled, holes = put_nodes.TransEditPUTInpaint().inpaint(
        handles["put"], photos(2, image_device), mask, num_samples=2, seed=0, schedule="tokens per iteration",
        tokens_per_iter=0, iterations=1, top_k=4, temperature=1.0, order="most confident first (official)",
        output_mode="crop around mask", context=0.5, feather=2, precision="auto")
    check(filled)
    check(holes)


@pytest.mark.parametrize("device", ["cuda", "cpu"])
def test_invert_generate_paste_back_compare(handles, device):
    imgs = photos(2, device)
    aligned, align, _ = face_nodes.TransEditAlignFace().align(imgs, face_nodes.MEDIAPIPE, 64, 0, "pass through", "blur")
    latent = inv_nodes.TransEditInvert().invert(handles["encoder"], aligned.to(device), "fast (torch)", "auto")[0]
    (rendered,) = sg_nodes.TransEditGenerate().generate(handles["generator"], latent, "const", 0, "auto")
    check(rendered)
    pasted, mask = face_nodes.TransEditPasteBack().paste(imgs, rendered.cuda(), align, "ellipse", 0.04, "lab")
    check(pasted)
    check(mask)
    compare_nodes.TransEditCompare().compare(imgs, pasted.cuda())


def test_splice_and_apply_mixed_devices(handles):
    spliced, gens = splice_nodes.TransEditSplice().splice(
        handles["vit"], photos(1, "cuda"), photos(1, "cpu"), preset="fast", steps=2, output_size=0, seed=0,
        early_stop=False, precision="auto", preview_every=0)
    check(spliced)
    check(splice_nodes.TransEditApplySplice().apply(gens, photos(2, "cuda"), True)[0])
