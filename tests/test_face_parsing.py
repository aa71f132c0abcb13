"""Face parsing (models/face/parsing.py) against the official code: face-parsing.PyTorch's BiSeNet and STIT's
calc_masks, on seeded random weights (tests/golden/face_parsing: regenerate.py, manifest.json, golden.safetensors).

Tolerances: logits within atol 2e-4 + rtol 1e-5 of the official fp32 ones (they reach |30|; ours fold each
BatchNorm into its convolution, measured max difference 4e-5). Labels: STIT's argmax at 512x512, where ours may
differ only at near-ties (the official label's logit within 1e-3 of our maximum), on at most 1e-4 of the pixels.
Half precision on the CPU against fp32 (TOL_HALF): fp16 logits within 0.5% of their range and labels equal on
>= 99.5% of pixels; bf16 2% and 98.5%.
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from conftest import TEST_DEVICE
from transedit.models.core.errors import CheckpointError
from transedit.models.face import parsing
from transedit.models.face.parsing import (CLASS_NAMES, FACE_PARSING_FILE, FACE_PARSING_HINT, FACE_PARSING_URL,
                                           NOT_FACE_CLASSES, BiSeNet, class_ids, face_region_mask, labels_to_mask,
                                           parse_faces, parser_input, resize_mask)
from transedit.models.registry import load_face_parser, load_retinaface

GOLDEN = Path(__file__).parent / "golden" / "face_parsing"
TOL_LOGITS = dict(atol=2e-4, rtol=1e-5)
NEAR_TIE = 1e-3
MAX_TIE_SHARE = 1e-4
HEADS = ("out", "out16", "out32")


def _regenerate_module():
    spec = importlib.util.spec_from_file_location("face_parsing_regenerate", GOLDEN / "regenerate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


REGEN = _regenerate_module()


@pytest.fixture(scope="module")
def manifest():
    return json.loads((GOLDEN / "manifest.json").read_text())


@pytest.fixture(scope="module")
def golden():
    return load_file(GOLDEN / "golden.safetensors")


@pytest.fixture(scope="module")
def official_sd(manifest):
    return REGEN.random_state(manifest, manifest["seed"])


@pytest.fixture(scope="module")
def weights_file(official_sd, tmp_path_factory):
    """The seeded weights as the official file is: a plain torch.save'd state dict named 79999_iter.pth."""
    path = tmp_path_factory.mktemp("face_parsing") / "79999_iter.pth"
    torch.save(official_sd, path)
    return path


@pytest.fixture(scope="module")
def parser(weights_file):
    return load_face_parser(weights_file).model.to(TEST_DEVICE)


def stit_foreground(golden):
    bits = np.unpackbits(golden["mask_foreground_bits"].numpy())[:2 * 512 * 512]
    return torch.from_numpy(bits.reshape(2, 1, 512, 512).astype(np.float32))


def logits_mismatch(model, golden, case):
    """The largest excess over TOL_LOGITS of any head on a golden case (0: all within it)."""
    with torch.no_grad():
        outs = model(golden[f"{case}_input"].to(TEST_DEVICE), aux_heads=True)
    worst = 0.0
    for head, out in zip(HEADS, outs):
        expected = golden[f"{case}_{head}"]
        excess = (out.float().cpu() - expected).abs() - (TOL_LOGITS["atol"] + TOL_LOGITS["rtol"] * expected.abs())
        worst = max(worst, float(excess.max()))
    return worst


def label_disagreement(labels, logits, expected):
    """(share of pixels whose label is not STIT's, whether every such pixel is a near-tie in our logits)."""
    differ = labels.cpu() != expected
    top = logits.max(dim=1).values
    theirs = logits.gather(1, expected.long().unsqueeze(1)).squeeze(1)
    return float(differ.float().mean()), bool(((top - theirs)[differ] <= NEAR_TIE).all())


def label_share_off(model, images, expected):
    return float((parse_faces(model, images.to(TEST_DEVICE)).cpu() != expected).float().mean())


@pytest.fixture(scope="module")
def logits512(parser, golden):
    """Our main head's logits at 512 for the golden STIT images (STIT's preprocessing)."""
    with torch.no_grad():
        return parser(parser_input(golden["mask_input"].to(TEST_DEVICE))).float().cpu()


# ------------------------------------------------------------------------------------------------ layout
def test_state_dict_is_the_official_layout(manifest):
    """Every key, shape and dtype of the official BiSeNet(19).state_dict(), in its order (the manifest was
    written from zllrunning's model.py by regenerate.py)."""
    ours = {k: {"shape": list(v.shape), "dtype": str(v.dtype).replace("torch.", "")}
            for k, v in BiSeNet().state_dict().items()}
    assert list(ours) == list(manifest["keys"])
    assert ours == manifest["keys"]
    assert len(ours) == 191 and sum(v.numel() for v in BiSeNet().parameters()) == 13_300_416


def test_seeded_weights_are_the_golden_ones(official_sd, manifest):
    """The weights the goldens were computed with (a different torch RNG would make every parity test fail
    for the wrong reason: this one says so first)."""
    assert REGEN.checksum(official_sd) == manifest["weights_sha256"], "RNG drift: rerun regenerate.py"


def test_building_the_network_downloads_nothing(monkeypatch):
    """The official ResNet-18 fetches torchvision weights while it is built; ours must not touch the network."""
    import torch.hub
    import torch.utils.model_zoo

    def refuse(*args, **kwargs):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    monkeypatch.setattr(torch.utils.model_zoo, "load_url", refuse)
    BiSeNet()


# ------------------------------------------------------------------------------------------------ parity
@pytest.mark.parametrize("case", ["net32", "netodd"])
def test_three_heads_match_the_official_network(parser, golden, case):
    """The official forward's (out, out16, out32), at 32x32 and at 42x54 (strides that do not halve evenly,
    so the nearest upsamplings inside the context path are not plain 2x)."""
    assert logits_mismatch(parser, golden, case) <= 0
    with torch.no_grad():
        x = golden[f"{case}_input"].to(TEST_DEVICE)
        torch.testing.assert_close(parser(x), parser(x, aux_heads=True)[0], atol=0, rtol=0)


def test_labels_and_mask_match_stit(parser, golden, logits512):
    """STIT's calc_masks (executed from its source) on [-1.3, 1.3] images at 96x80: the argmax labels at 512 and
    its foreground (every class but background, cloth, hat) before the dilation; the mask also at the input size
    (STIT's bilinear scaling), and as a constant a loss can multiply (not an inference-mode tensor)."""
    images = golden["mask_input"].to(TEST_DEVICE)
    labels = parse_faces(parser, images, batch_size=1)
    assert labels.shape == (2, 512, 512) and labels.dtype == torch.uint8 and labels.device == TEST_DEVICE
    share, only_ties = label_disagreement(labels, logits512, golden["mask_labels"])
    assert share <= MAX_TIE_SHARE and only_ties
    expected = stit_foreground(golden)
    assert 0.5 < float(expected.mean()) < 0.99  # both kinds of pixel are there to get wrong
    assert float((labels_to_mask(labels).cpu() != expected).float().mean()) <= MAX_TIE_SHARE

    mask = face_region_mask(parser, images[1:], output_size=tuple(images.shape[-2:]))
    assert mask.shape == (1, 1, 96, 80) and mask.dtype == torch.float32 and mask.device == TEST_DEVICE
    torch.testing.assert_close(mask, resize_mask(labels_to_mask(labels[1:]), (96, 80)), atol=0, rtol=0)
    x = torch.ones_like(mask, requires_grad=True)
    (x * mask).sum().backward()
    torch.testing.assert_close(x.grad, mask)
    assert face_region_mask(parser, images[:0]).shape == (0, 1, 512, 512)


# ------------------------------------------------------------------------------------------------ planted faults
def test_parity_catches_swapped_heads(official_sd, golden):
    """Plant: the two auxiliary heads swapped (same shapes, so the file still loads)."""
    sd = dict(official_sd)
    for key in [k for k in official_sd if k.startswith("conv_out16.")]:
        other = key.replace("conv_out16.", "conv_out32.")
        sd[key], sd[other] = official_sd[other], official_sd[key]
    model = BiSeNet().eval()
    model.load_state_dict(sd)
    assert logits_mismatch(model.to(TEST_DEVICE), golden, "net32") > 1.0


@pytest.mark.parametrize("plant", ["bn_ignores_running_mean", "no_context_broadcast", "no_fusion_residual"])
def test_parity_catches_code_faults(parser, golden, monkeypatch, plant):
    """Plants in the code: a BatchNorm fold without its running mean; the global context left out of the stride-32
    sum; the fusion module's attention without its residual (feat * atten)."""
    if plant == "bn_ignores_running_mean":
        real = parsing.conv_bn

        def conv_bn(x, conv, bn):
            if bn is parser.cp.resnet.layer3[0].bn2:  # one BatchNorm among 28
                scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
                return F.conv2d(x, conv.weight * scale.view(-1, 1, 1, 1), bn.bias, conv.stride, conv.padding)
            return real(x, conv, bn)

        monkeypatch.setattr(parsing, "conv_bn", conv_bn)
    elif plant == "no_context_broadcast":
        monkeypatch.setattr(parser.cp.conv_avg, "forward", lambda x: torch.zeros_like(x[:, :128]))
    else:
        real_mean = parsing.global_mean
        ffm = parser.ffm
        monkeypatch.setattr(ffm, "forward", lambda fsp, fcp: (lambda f: f * torch.sigmoid(
            ffm.conv2(F.relu(ffm.conv1(real_mean(f))))))(ffm.convblk(torch.cat([fsp, fcp], 1))))
    assert logits_mismatch(parser, golden, "netodd") > 1e-2


@pytest.mark.parametrize("plant", ["bgr_input", "no_clip", "bilinear_resize"])
def test_mask_parity_catches_preprocessing_faults(parser, golden, monkeypatch, plant):
    """Plants in STIT's preprocessing: channels reversed, no clip to [-1, 1], bilinear instead of nearest
    (checked on the first golden image)."""
    real = parsing.parser_input
    if plant == "bgr_input":
        monkeypatch.setattr(parsing, "parser_input", lambda images, size=512: real(images.flip(1), size))
    elif plant == "no_clip":  # halved inputs are never clipped; doubling about the zero image's value undoes it
        monkeypatch.setattr(parsing, "parser_input", lambda images, size=512: real(images * 0.5, size) * 2
                            - real(torch.zeros_like(images), size))
    else:
        monkeypatch.setattr(parsing, "parser_input", lambda images, size=512: real(F.interpolate(
            images, (size, size), mode="bilinear", align_corners=False), size))
    assert label_share_off(parser, golden["mask_input"][:1], golden["mask_labels"][:1]) > 100 * MAX_TIE_SHARE


def test_the_class_table_and_stits_excluded_classes():
    """STIT's background_classes [0, 18, 16]; hair (17) is part of the face region."""
    assert len(CLASS_NAMES) == 19 and CLASS_NAMES[0] == "background" and CLASS_NAMES[17] == "hair"
    assert class_ids(["background", "cloth", "hat"]) == NOT_FACE_CLASSES == (0, 16, 18)
    labels = torch.arange(19, dtype=torch.uint8).view(1, 1, 19)
    mask = labels_to_mask(labels)
    assert mask.shape == (1, 1, 1, 19)
    assert mask.flatten().tolist() == [0.0 if c in (0, 16, 18) else 1.0 for c in range(19)]
    assert labels_to_mask(labels, class_ids(["hair"])).flatten().tolist() == [float(c != 17) for c in range(19)]
    with pytest.raises(ValueError, match="unknown face-parsing classes.*'beard'"):
        class_ids(["beard"])


# ------------------------------------------------------------------------------------------------ API
def test_resize_mask_is_stits_scaling():
    mask = (torch.rand(2, 1, 16, 16) > 0.5).float()
    expected = F.interpolate(mask, (40, 40), mode="bilinear", align_corners=True)
    torch.testing.assert_close(resize_mask(mask, 40), expected, atol=0, rtol=0)
    torch.testing.assert_close(resize_mask(mask, (40, 40)), expected, atol=0, rtol=0)
    assert resize_mask(mask, 16) is mask
    assert resize_mask(mask, (24, 32)).shape == (2, 1, 24, 32)


def test_the_parser_runs_in_its_own_device_and_dtype_and_answers_on_the_images(parser, golden):
    """fp16 images into an fp32 parser work; the labels come back on the images' device."""
    images = golden["mask_input"][:1]
    labels = parse_faces(parser, images.half())
    assert labels.device.type == "cpu" and labels.dtype == torch.uint8


# dtype -> (largest logit difference as a share of the fp32 logits' range, least share of equal labels); measured
# on these weights: fp16 0.09% / 99.95%, bf16 0.6% / 99.4%
TOL_HALF = {torch.float16: (0.005, 0.995), torch.bfloat16: (0.02, 0.985)}


@pytest.mark.parametrize("dtype", list(TOL_HALF))
def test_half_precision_on_cpu_is_close_to_fp32(official_sd, golden, dtype):
    model = BiSeNet().eval()
    model.load_state_dict(official_sd)
    x = golden["net32_input"]
    with torch.no_grad():
        full = model(x)
        half = model.to(dtype)(x)  # fp32 images into a half model: cast on entry
    assert half.dtype == dtype
    spread = float(full.max() - full.min())
    assert float((half.float() - full).abs().max()) <= TOL_HALF[dtype][0] * spread
    assert float((half.argmax(1) == full.argmax(1)).float().mean()) >= TOL_HALF[dtype][1]
    # what the nodes' precision resolver may then choose: both halves when asked, fp16 for auto on a GPU
    name = {torch.float16: "fp16", torch.bfloat16: "bf16"}[dtype]
    gpu = torch.device("cuda")
    assert BiSeNet.PRECISION.resolve(name, gpu, device_has_bf16=True) == dtype
    assert BiSeNet.PRECISION.resolve("auto", gpu, device_has_bf16=dtype == torch.bfloat16) == torch.float16


@pytest.mark.parametrize("n, batch_size", [(5, 2), (3, 8), (7, 3)])
def test_chunks_cover_every_image_in_order(n, batch_size):
    """parse_faces' chunking with a cheap stand-in parser (a 1x1 convolution, 19 classes): every image, in order,
    whatever the chunk size, the same as one pass."""
    torch.manual_seed(n)
    stand_in = torch.nn.Conv2d(3, 19, 1).eval()
    images = torch.rand(n, 3, 20, 24) * 2 - 1
    with torch.no_grad():
        expected = stand_in(parser_input(images)).argmax(1).to(torch.uint8)
    assert torch.equal(parse_faces(stand_in, images, batch_size=batch_size), expected)


def test_preprocessing_is_stits_and_survives_nan():
    """[-1, 1] -> clip -> [0, 1] -> ImageNet normalisation, nearest to 512 (from smaller and larger images); a NaN
    pixel is read as 0 instead of spreading through the network's global pooling."""
    images = torch.rand(2, 3, 37, 29) * 3 - 1.5
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    for x in (images, F.interpolate(images, (700, 600), mode="nearest")):
        expected = (F.interpolate(x, (512, 512), mode="nearest").clip(-1, 1).add(1).div(2) - mean) / std
        torch.testing.assert_close(parser_input(x), expected, atol=1e-6, rtol=0)
    holed = images.clone()
    holed[0, 1, 3:9, 4:7] = float("nan")
    filled = holed.nan_to_num(0.0)
    assert torch.equal(parser_input(holed), parser_input(filled)) and parser_input(holed).isfinite().all()


def test_bad_inputs_say_what_is_wrong(parser):
    for wrong, shown in ((torch.zeros(1, 4, 8, 8), r"\(1, 4, 8, 8\)"), (torch.zeros(3, 8, 8), r"\(3, 8, 8\)"),
                         (torch.zeros(1, 3, 8), r"\(1, 3, 8\)"), ([[0.0]], "list")):
        with pytest.raises(ValueError, match=r"\[N, 3, H, W\].*" + shown):
            face_region_mask(parser, wrong)
    with pytest.raises(ValueError, match="floating-point"):
        face_region_mask(parser, torch.zeros(1, 3, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        parse_faces(parser, torch.zeros(1, 3, 8, 8), batch_size=0)
    with pytest.raises(ValueError, match="classes_excluded.*0..18.*19"):
        face_region_mask(parser, torch.zeros(1, 3, 8, 8), classes_excluded=(0, 19))


# ------------------------------------------------------------------------------------------------ files
def test_loads_the_file_unchanged_with_or_without_extras(official_sd, weights_file, tmp_path):
    desc = load_face_parser(weights_file)
    assert desc.family == "face_parsing" and desc.config.n_classes == 19 and not desc.notes
    assert not desc.model.training and not any(p.requires_grad for p in desc.model.parameters())
    for key, value in desc.model.state_dict().items():
        assert torch.equal(value, official_sd[key]), key
    # DataParallel's module. prefix, no num_batches_tracked (older torch), and a safetensors copy
    variant = {"module." + k: v for k, v in official_sd.items() if not k.endswith("num_batches_tracked")}
    torch.save(variant, tmp_path / "dp.pth")
    save_file({k: v.contiguous() for k, v in official_sd.items()}, tmp_path / "copy.safetensors")
    for name in ("dp.pth", "copy.safetensors"):
        model = load_face_parser(tmp_path / name).model
        assert torch.equal(model.conv_out.conv_out.weight, official_sd["conv_out.conv_out.weight"]), name


def test_other_files_are_refused_naming_what_they_are(weights_file, tmp_path):
    from transedit.random_weights import save_random_retinaface

    face = save_random_retinaface(tmp_path / "detection_Resnet50_Final.pth")
    with pytest.raises(CheckpointError, match="is a RetinaFace face detector, not a BiSeNet face parser.*"
                                              "Align Face"):
        load_face_parser(face)
    with pytest.raises(CheckpointError, match="is a BiSeNet face parser .*, not a RetinaFace.*Load Face Parser"):
        load_retinaface(weights_file)


def test_damaged_files_are_refused(official_sd, weights_file, tmp_path):
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(weights_file.read_bytes()[: weights_file.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_face_parser(truncated)

    missing = dict(official_sd)
    del missing["cp.arm16.bn_atten.running_var"]
    torch.save(missing, tmp_path / "missing.pth")
    with pytest.raises(CheckpointError, match=r"missing \['cp.arm16.bn_atten.running_var'\].*79999_iter.pth"):
        load_face_parser(tmp_path / "missing.pth")

    extra = dict(official_sd, **{"sp.conv1.conv.weight": torch.zeros(64, 3, 7, 7)})  # the unused spatial path
    torch.save(extra, tmp_path / "extra.pth")
    with pytest.raises(CheckpointError, match=r"unexpected \['sp.conv1.conv.weight'\]"):
        load_face_parser(tmp_path / "extra.pth")

    reshaped = dict(official_sd, **{"ffm.conv1.weight": torch.zeros(32, 256, 1, 1)})
    torch.save(reshaped, tmp_path / "reshaped.pth")
    with pytest.raises(CheckpointError, match="shapes do not fit.*ffm.conv1.weight"):
        load_face_parser(tmp_path / "reshaped.pth")

    heads = dict(official_sd, **{"conv_out.conv_out.weight": torch.zeros(5, 256, 1, 1)})
    torch.save(heads, tmp_path / "heads.pth")
    with pytest.raises(CheckpointError, match=r"heads disagree on the number of classes \(\[5, 19\]\)"):
        load_face_parser(tmp_path / "heads.pth")


def test_torchscript_is_refused_without_running_it(official_sd, tmp_path):
    """A TorchScript export of the parser is code: it must be refused, not executed."""
    model = BiSeNet().eval()
    model.load_state_dict(official_sd)
    scripted = tmp_path / "79999_iter_scripted.pt"
    torch.jit.trace(model.conv_out16, torch.zeros(1, 128, 4, 4)).save(str(scripted))
    with pytest.raises(CheckpointError, match=rf"{scripted.name}.*(Refusing|TorchScript)"):
        load_face_parser(scripted)


@pytest.mark.parametrize("classes", [1, 2, 11, 18])
def test_fewer_than_19_classes_are_refused_at_load(official_sd, tmp_path, classes):
    """Planted: the reviewer's 1- and 2-class parsers (they loaded, then Face Region Mask crashed on class 16)."""
    sd = {k: (v[:classes] if k.endswith("conv_out.weight") else v) for k, v in official_sd.items()}
    torch.save(sd, tmp_path / "few.pth")
    with pytest.raises(CheckpointError, match=rf"few.pth: is a BiSeNet with {classes} classes; STIT.*19-class "
                                              "CelebAMask-HQ.*79999_iter.pth"):
        load_face_parser(tmp_path / "few.pth")


def test_more_classes_load_with_a_note(official_sd, tmp_path):
    sd = {k: (torch.cat([v, v[:2]]) if k.endswith("conv_out.weight") else v) for k, v in official_sd.items()}
    torch.save(sd, tmp_path / "more.pth")
    desc = load_face_parser(tmp_path / "more.pth")
    assert desc.config.n_classes == 21 and "class names do not apply" in desc.notes[0]
    with pytest.raises(ValueError, match="0..20"):
        face_region_mask(desc.model, torch.zeros(1, 3, 8, 8), classes_excluded=(0, 21))


@pytest.mark.parametrize("damage", ["nan", "inf", "all_nan", "negative_var"])
def test_nan_weights_and_negative_variances_are_refused(official_sd, tmp_path, damage):
    """Planted: one NaN or Inf weight, every weight NaN, one negative BatchNorm running_var (all loaded silently
    and gave an empty face mask)."""
    sd = {k: v.clone() for k, v in official_sd.items()}
    if damage == "all_nan":
        sd = {k: (v * float("nan") if v.is_floating_point() else v) for k, v in sd.items()}
    elif damage == "negative_var":
        sd["cp.arm16.bn_atten.running_var"][5] = -1.0
    else:
        sd["ffm.convblk.conv.weight"].view(-1)[7] = float(damage)
    torch.save(sd, tmp_path / "damaged.pth")
    what = "negative BatchNorm variances" if damage == "negative_var" else "NaN or infinite weights"
    with pytest.raises(CheckpointError, match=rf"damaged.pth: holds {what}.*damaged.*79999_iter.pth"):
        load_face_parser(tmp_path / "damaged.pth")


def test_the_face_parsing_folder_and_download_link():
    """The ComfyUI folder the loader lists, and the official README's link for the file STIT names."""
    from transedit.nodes import comfy_bridge as bridge

    sub, exts = bridge.MODEL_FOLDERS["face_parsing"]
    assert sub == "face_parsing" and {".pth", ".pt", ".safetensors"} <= exts
    assert FACE_PARSING_FILE == "79999_iter.pth"
    assert FACE_PARSING_URL == "https://drive.google.com/open?id=154JgKpzCPW82qINcVieuPH3fZ2e0P812"
    assert FACE_PARSING_URL in FACE_PARSING_HINT and "models/face_parsing" in FACE_PARSING_HINT
