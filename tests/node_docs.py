"""Help pages for every node (js/docs/<NodeId>.md), generated from the nodes' own descriptions and tooltips so
they cannot drift; ComfyUI frontends with a node-docs panel show them, older ones ignore the folder.

    python tests/node_docs.py            # rewrite js/docs (tests/test_node_docs.py checks they are current)
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))  # node_schema, when run as a script
DOCS = REPO / "js" / "docs"

# Where each loader's files go and where the official weights come from.
WEIGHTS = {
    "TransEditLoadStyleGAN": ("models/stylegan", [
        ("rosinality stylegan2-pytorch (stylegan2-ffhq-config-f.pt)",
         "https://github.com/rosinality/stylegan2-pytorch#pretrained-checkpoints"),
        ("NVlabs stylegan2-ada-pytorch .pkl", "https://github.com/NVlabs/stylegan2-ada-pytorch#data-repository")]),
    "TransEditLoadEncoder": ("models/gan_encoders", [
        ("Style Transformer", "https://github.com/sapphire497/style-transformer#pretrained-models"),
        ("StylePrompter (baseline / full)", "https://github.com/I2-Multimedia-Lab/StylePrompter"),
        ("pSp", "https://github.com/eladrich/pixel2style2pixel#pretrained-models"),
        ("e4e", "https://github.com/omertov/encoder4editing#pretrained-models")]),
    "TransEditLoadEditTransformer": ("models/gan_encoders", [
        ("Style Transformer reference editing", "https://github.com/sapphire497/style-transformer")]),
    "TransEditLoadDirection": ("models/latent_directions", [
        ("InterFaceGAN / GANSpace files shipped by e4e", "https://github.com/omertov/encoder4editing/tree/main/editings")]),
    "TransEditAlignFace": ("models/face_landmarks (optional)", [
        ("dlib shape_predictor_68_face_landmarks.dat", "http://dlib.net/files/")]),
    "TransEditLoadDINO": ("models/vit", [
        ("DINO ViT backbones", "https://github.com/facebookresearch/dino#pretrained-models"),
        ("timm vit_small_patch8_224.dino (safetensors)", "https://huggingface.co/timm/vit_small_patch8_224.dino")]),
    "TransEditLoadPUT": ("models/put", [
        ("PUT transformer checkpoints (CVPR 2022 / TPAMI 2024)", "https://github.com/liuqk3/PUT")]),
    "TransEditLoadLPIPS": ("models/lpips", [
        ("torchvision AlexNet (alexnet-owt-7be5be79.pth)", "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth"),
        ("torchvision VGG16 (vgg16-397923af.pth)", "https://download.pytorch.org/models/vgg16-397923af.pth"),
        ("LPIPS v0.1 heads (alex.pth, vgg.pth)",
         "https://github.com/richzhang/PerceptualSimilarity/tree/master/lpips/weights/v0.1")]),
    "TransEditLoadFaceParser": ("models/face_parsing", [
        ("face-parsing.PyTorch 79999_iter.pth (BiSeNet, as STIT uses)",
         "https://github.com/zllrunning/face-parsing.PyTorch#demo")]),
}


def _cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _type_and_default(spec) -> tuple[str, str]:
    kind = spec[0]
    opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    if isinstance(kind, (list, tuple)):
        shown = ", ".join(f"`{c}`" for c in kind[:8]) + (" …" if len(kind) > 8 else "")
        return ("choice: " + shown if kind else "file list"), str(opts.get("default", kind[0] if kind else ""))
    rng = f" ({opts['min']}–{opts['max']})" if "min" in opts and "max" in opts else ""
    return f"{kind}{rng}", "" if "default" not in opts else str(opts["default"])


def render(node_id: str, cls, display: str) -> str:
    lines = [f"# {display}", "", f"`{node_id}` · {cls.CATEGORY}", "", cls.DESCRIPTION.strip(), ""]
    spec = cls.INPUT_TYPES()
    for section, title in (("required", "Inputs"), ("optional", "Optional inputs")):
        inputs = spec.get(section) or {}
        if not inputs:
            continue
        lines += [f"## {title}", "", "| input | type | default | what it does |", "|---|---|---|---|"]
        for name, entry in inputs.items():
            kind, default = _type_and_default(entry)
            tip = entry[1].get("tooltip", "") if len(entry) > 1 and isinstance(entry[1], dict) else ""
            lines.append(f"| `{name}` | {_cell(kind)} | {_cell(default)} | {_cell(tip)} |")
        lines.append("")
    if cls.RETURN_TYPES:
        lines += ["## Outputs", "", "| output | type | what it is |", "|---|---|---|"]
        for name, kind, tip in zip(cls.RETURN_NAMES, cls.RETURN_TYPES, cls.OUTPUT_TOOLTIPS):
            lines.append(f"| `{name}` | {kind} | {_cell(tip)} |")
        lines.append("")
    if node_id in WEIGHTS:
        folder, sources = WEIGHTS[node_id]
        lines += ["## Weights", "", f"Put the files in `ComfyUI/{folder}` and press Refresh (R). Official sources:", ""]
        lines += [f"- [{label}]({url})" for label, url in sources]
        lines.append("")
    lines += ["More: [TransEdit node reference](https://github.com/transedit/ComfyUI-TransEdit/blob/main/docs/node-reference.md)", ""]
    return "\n".join(lines)


def expected_docs() -> dict[str, str]:
    import transedit
    from node_schema import empty_model_folders

    with empty_model_folders():
        return {f"{node_id}.md": render(node_id, cls, transedit.NODE_DISPLAY_NAME_MAPPINGS[node_id])
                for node_id, cls in sorted(transedit.NODE_CLASS_MAPPINGS.items())}


def main() -> int:
    DOCS.mkdir(parents=True, exist_ok=True)
    docs = expected_docs()
    for name, text in docs.items():
        tmp = DOCS / (name + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, DOCS / name)
    for stale in DOCS.glob("*.md"):
        if stale.name not in docs:
            stale.unlink()
    print(f"wrote {len(docs)} pages to {DOCS.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
