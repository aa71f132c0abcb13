"""A test-only ComfyUI custom node pack (linked into the e2e servers' custom_nodes/ as transedit_test_probe):
pass-through probes that record what flows along a link, so the e2e tests can check what ComfyUI's own nodes
receive from the pack's and what they give back (the IMAGE reaching VAE Encode, KSampler's latents, a MASK).

Each probe writes <output>/transedit_probe/<label>.safetensors (the tensors) and <label>.json (dtype, device,
shape, contiguity, finiteness, range), and returns its input unchanged. Never shipped with the pack.
"""
import json
import os

import folder_paths
import torch
from safetensors.torch import save_file


def _record(label: str, tensors: dict) -> None:
    folder = os.path.join(folder_paths.get_output_directory(), "transedit_probe")
    os.makedirs(folder, exist_ok=True)
    meta = {}
    for name, t in tensors.items():
        meta[name] = {"dtype": str(t.dtype).removeprefix("torch."), "device": str(t.device), "shape": list(t.shape),
                      "contiguous": t.is_contiguous(), "finite": bool(torch.isfinite(t).all()),
                      "min": float(t.min()), "max": float(t.max())}
    save_file({k: v.detach().float().cpu().contiguous() for k, v in tensors.items()},
              os.path.join(folder, f"{label}.safetensors"))
    with open(os.path.join(folder, f"{label}.json"), "w") as f:
        json.dump(meta, f)


class _Probe:
    CATEGORY = "TransEdit tests"
    FUNCTION = "probe"


class ProbeImage(_Probe):
    RETURN_TYPES = ("IMAGE",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": ("IMAGE",), "label": ("STRING", {"default": "image"})}}

    def probe(self, image, label):
        _record(label, {"image": image})
        return (image,)


class ProbeMask(_Probe):
    RETURN_TYPES = ("MASK",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"mask": ("MASK",), "label": ("STRING", {"default": "mask"})}}

    def probe(self, mask, label):
        _record(label, {"mask": mask})
        return (mask,)


class ProbeLatent(_Probe):
    RETURN_TYPES = ("LATENT",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"samples": ("LATENT",), "label": ("STRING", {"default": "latent"})}}

    def probe(self, samples, label):
        tensors = {"samples": samples["samples"]}
        if samples.get("noise_mask") is not None:
            tensors["noise_mask"] = samples["noise_mask"]
        _record(label, tensors)
        return (samples,)


NODE_CLASS_MAPPINGS = {"TransEditTestProbeImage": ProbeImage, "TransEditTestProbeMask": ProbeMask,
                       "TransEditTestProbeLatent": ProbeLatent}
