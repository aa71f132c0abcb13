"""RetinaFace: the released files' layouts (facexlib / biubug6 key names, `module.` prefixes, both trunks),
the reference detector's anchors and decoding, batches, the Align Face node with it (missing file, cache,
batch = per image), and how far 5-point alignment is from FFHQ's 68-point recipe on a real photo."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from conftest import model_folders
from transedit.models.face import align as fa
from transedit.models.face import landmarks as fl
from transedit.models.core.errors import CheckpointError
from transedit.models.registry import load_encoder, load_retinaface
from transedit.random_weights import save_random_retinaface
from transedit.models.face.retinaface import MIN_SIZES, STEPS, RetinaFace, RetinaFaceConfig, infer_config, nms
from transedit.random_weights import TEST_FACE
from transedit.nodes import faces as nodes
from transedit.nodes.inputs import NodeInputError

# Full-size layouts of the released files (parameters + BatchNorm buffers), as the reference code builds them
# (checked against facexlib's retinaface_net.py + torchvision's resnet50 run locally: identical key sets,
# shapes and outputs).
RELEASED = {"mobilenet0.25": (32, 64, 300, 426_608), "resnet50": (256, 256, 456, 27_293_600)}


@pytest.mark.parametrize("backbone", list(RELEASED))
def test_released_layouts(backbone):
    c, o, entries, params = RELEASED[backbone]
    model = RetinaFace(RetinaFaceConfig(backbone, c, o))
    sd = model.state_dict()
    assert len(sd) == entries and sum(p.numel() for p in model.parameters()) == params
    assert infer_config(sd) == model.config
    assert "ClassHead.2.conv1x1.weight" in sd and "ssh3.conv7x7_3.1.running_var" in sd
    assert ("body.layer4.2.bn3.weight" if backbone == "resnet50" else "body.stage3.1.4.weight") in sd


@pytest.mark.parametrize("prefix", ["", "module."])
def test_loads_the_released_state_dict_unchanged(tmp_path, prefix):
    """The release is a bare state dict (biubug6's originals carry DataParallel's module. prefix)."""
    src = save_random_retinaface(tmp_path / "a.pth", seed=1)
    sd = torch.load(src, weights_only=True)
    torch.save({prefix + k: v for k, v in sd.items()}, tmp_path / "detection_mobilenet0.25_Final.pth")
    desc = load_retinaface(tmp_path / "detection_mobilenet0.25_Final.pth")
    assert desc.config.backbone == "mobilenet0.25" and desc.config.leaky == 0.1
    for k, v in desc.model.state_dict().items():
        assert torch.equal(v, sd[k]), k


def test_other_files_are_refused_naming_what_they_are(tmp_path):
    from transedit.random_weights import save_random_encoder

    enc = save_random_encoder(tmp_path / "enc.pt")
    with pytest.raises(CheckpointError, match="is an inversion encoder, not a RetinaFace face detector"):
        load_retinaface(enc)
    face = save_random_retinaface(tmp_path / "detection_Resnet50_Final.pth")
    with pytest.raises(CheckpointError, match="is a RetinaFace face detector, not an inversion encoder"):
        load_encoder(face)


def test_priors_follow_the_reference_order():
    """facexlib PriorBox: per level, row, column, then the level's two sizes; centres at (j + 0.5) * step."""
    h, w = 100, 130
    pri = RetinaFace.priors(h, w)
    expected = []
    for sizes, step in zip(MIN_SIZES, STEPS):
        for i in range(math.ceil(h / step)):
            for j in range(math.ceil(w / step)):
                for s in sizes:
                    expected.append([(j + 0.5) * step, (i + 0.5) * step, s, s])
    assert torch.equal(pri, torch.tensor(expected, dtype=torch.float32))


def test_test_detector_finds_its_face_and_batches_equal_single_images():
    torch.manual_seed(0)
    model = RetinaFace(RetinaFaceConfig("mobilenet0.25", 32, 64))
    with torch.no_grad():  # the save_random_retinaface heads, without the file
        for heads, bias in ((model.ClassHead, [-4.0, 4.0]), (model.BboxHead, [0.0] * 4),
                            (model.LandmarkHead, [c / 0.1 for p in TEST_FACE for c in p])):
            for head in heads:
                head.conv1x1.weight.zero_()
                head.conv1x1.bias.copy_(torch.tensor(bias * 2))
    images = torch.rand(3, 3, 96, 128, generator=torch.Generator().manual_seed(1))
    batch = model.detect(images)
    for i in range(3):
        single = model.detect(images[i:i + 1])[0]
        assert len(single) == len(batch[i]) > 0
        np.testing.assert_allclose(single[0].points, batch[i][0].points, atol=1e-4)
    face = batch[0][0]
    w = face.box[2] - face.box[0]
    centre = (face.box[:2] + face.box[2:]) / 2
    np.testing.assert_allclose(face.points, centre + np.array(TEST_FACE) * w, atol=1e-3)
    assert face.score > 0.99


def test_nms_matches_torchvision():
    tv = pytest.importorskip("torchvision.ops")
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(200, 2, generator=g) * 100
    boxes = torch.cat([xy, xy + 10 + torch.rand(200, 2, generator=g) * 40], 1)
    scores = torch.rand(200, generator=g)
    order = scores.argsort(descending=True)
    assert nms(boxes[order], 0.4) == tv.nms(boxes[order], scores[order], 0.4).tolist()


# ---------------------------------------------------------------------------------------------- node
def test_align_face_with_retinaface(tmp_path):
    with model_folders(tmp_path, ["facedetection"]):
        save_random_retinaface(tmp_path / "facedetection" / "detection_Resnet50_Final.pth")
        choice = "retinaface: detection_Resnet50_Final.pth"
        assert nodes._detector_choices()[0] == choice
        photos = torch.rand(3, 160, 200, 3, generator=torch.Generator().manual_seed(2))
        aligned, align, _ = nodes.TransEditAlignFace().align(photos, choice, 128, 0, "error", "blur")
        assert aligned.shape == (3, 128, 128, 3) and align.found == [True] * 3
        assert align.records[0].landmarks.source == "retinaface"
        again, _, _ = nodes.TransEditAlignFace().align(photos[1:2], choice, 128, 0, "error", "blur")
        torch.testing.assert_close(again[0], aligned[1], atol=1e-5, rtol=0)  # batch of 3 == image alone
        assert len(nodes._retinaface_cache) == 1  # loaded once


def test_missing_retinaface_names_the_file_and_its_source(tmp_path):
    with model_folders(tmp_path, ["facedetection"]):
        with pytest.raises(NodeInputError) as err:
            nodes.TransEditAlignFace().align(torch.rand(1, 64, 64, 3), "retinaface: detection_Resnet50_Final.pth",
                                             128, 0, "error", "blur")
    text = str(err.value)
    assert "TransEdit Align Face: input 'detector'" in text and "detection_Resnet50_Final.pth" in text
    assert "github.com/xinntao/facexlib/releases/download/v0.1.0/detection_Resnet50_Final.pth" in text
    assert "models/facedetection" in text


def test_a_file_that_is_not_retinaface_is_a_clear_node_error(tmp_path):
    with model_folders(tmp_path, ["facedetection"]):
        torch.save({"weight": torch.ones(3)}, tmp_path / "facedetection" / "detection_parsenet.pth")
        assert "retinaface: detection_parsenet.pth" in nodes._detector_choices()
        with pytest.raises(NodeInputError, match="input 'detector' cannot be used: detection_parsenet.pth"):
            nodes.TransEditAlignFace().align(torch.rand(1, 64, 64, 3), "retinaface: detection_parsenet.pth",
                                             128, 0, "error", "blur")


# ------------------------------------------------------------------ 5 points against FFHQ's 68-point recipe
def test_five_point_alignment_agrees_with_the_68_point_recipe():
    """RetinaFace gives eye centres (pupils) and mouth corners; FFHQ averages each 6-point eye contour. On the
    real photo (scikit-image's astronaut), with mediapipe's refined mesh standing in for both (its iris centres
    as the 5-point eyes, its iBUG-matching contour points as the 68-point eyes, the same mouth corners), the
    two FFHQ crops differ by the figures below (recorded in docs/faithfulness.md)."""
    pytest.importorskip("mediapipe")
    skdata = pytest.importorskip("skimage.data")
    photo = np.asarray(skdata.astronaut())
    with fl.MediaPipeLandmarks(max_num_faces=1, eye_mode="contour") as contour:
        (ibug,) = contour.detect_landmarks(photo)
    with fl.MediaPipeLandmarks(max_num_faces=1, eye_mode="iris") as iris:
        (five,) = iris.detect_landmarks(photo)
    q68, s68 = fa.ffhq_quad(ibug)
    q5, s5 = fa.ffhq_quad(five)
    corner_shift = np.abs(q68 - q5).max() / s68  # as a fraction of the crop side
    size = 1024
    image = torch.from_numpy(photo).float()[None] / 255.0
    a68, _ = fa.align_faces(image, [[ibug]], output_size=size)
    a5, _ = fa.align_faces(image, [[five]], output_size=size)
    mean_abs = (a68 - a5).abs().mean().item() * 255
    print(f"5-point vs 68-point FFHQ crop: corners move {corner_shift * size:.1f} px of {size}, side ratio "
          f"{s5 / s68:.4f}, mean |difference| {mean_abs:.2f} / 255")
    assert corner_shift < 0.02 and abs(s5 / s68 - 1) < 0.02 and mean_abs < 12
