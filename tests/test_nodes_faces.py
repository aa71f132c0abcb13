"""Align Face / Paste Back nodes: batches, pass-through, errors (detector stubbed; mediapipe when installed)."""
import numpy as np
import pytest
import torch

from transedit.models.face import align as fa
from transedit.models.face import landmarks as fl
from transedit.models.face import paste as fp
from transedit.nodes import faces as nodes
from transedit.nodes.inputs import NodeInputError


class StubDetector:
    """Returns fixed landmarks per call (None = no face)."""

    def __init__(self, per_image):
        self.per_image = list(per_image)

    def detect_landmarks(self, image):
        lm = self.per_image.pop(0)
        return [] if lm is None else [lm]


def face_at(cx, cy, scale=40.0):
    return fl.FaceLandmarks(eye_left=(cx - scale / 2, cy), eye_right=(cx + scale / 2, cy),
                            mouth_left=(cx - scale / 3, cy + scale), mouth_right=(cx + scale / 3, cy + scale))


@pytest.fixture
def photos():
    g = torch.Generator().manual_seed(0)
    return torch.rand(2, 200, 240, 3, generator=g)


def run_align(monkeypatch, images, landmarks, **kw):
    monkeypatch.setattr(nodes, "_make_detector", lambda node, choice: StubDetector(landmarks))
    args = dict(detector=nodes.MEDIAPIPE, output_size=128, face_index=0, if_no_face="error", padding="blur")
    args.update(kw)
    return nodes.TransEditAlignFace().align(images, **args)


def test_align_batch_and_round_trip(monkeypatch, photos):
    aligned, align, _ = run_align(monkeypatch, photos, [face_at(120, 90), face_at(100, 110, 30)])
    assert aligned.shape == (2, 128, 128, 3) and aligned.dtype == torch.float32
    assert len(align) == 2 and align.found == [True, True]
    out, mask = nodes.TransEditPasteBack().paste(photos, aligned, align, "ellipse", 0.04, "off")
    assert out.shape == photos.shape and mask.shape == photos.shape[:3]
    assert 0 <= mask.min() and mask.max() <= 1 and mask.max() > 0.99
    outside = mask == 0
    assert torch.equal(out[outside], photos[outside])


def test_pass_through_leaves_photo_untouched(monkeypatch, photos):
    aligned, align, _ = run_align(monkeypatch, photos, [None, face_at(120, 100)], if_no_face="pass through")
    assert align.found == [False, True] and aligned.shape == (2, 128, 128, 3)
    out, mask = nodes.TransEditPasteBack().paste(photos, torch.zeros_like(aligned), align, "ellipse", 0.04, "lab")
    assert torch.equal(out[0], photos[0]) and mask[0].max() == 0
    assert mask[1].max() > 0.99 and not torch.equal(out[1], photos[1])


def test_no_face_error_names_the_image(monkeypatch, photos):
    with pytest.raises(NodeInputError, match=r"TransEdit Align Face: input 'images' image 1 of the batch: no face"):
        run_align(monkeypatch, photos, [face_at(120, 90), None])


def test_paste_back_batch_mismatch(monkeypatch, photos):
    aligned, align, _ = run_align(monkeypatch, photos, [face_at(120, 90), face_at(100, 110)])
    with pytest.raises(NodeInputError, match="'edited' has 1 images but 'align' describes 2"):
        nodes.TransEditPasteBack().paste(photos, aligned[:1], align, "ellipse", 0.04, "lab")
    with pytest.raises(NodeInputError, match="'original' has 1 images"):
        nodes.TransEditPasteBack().paste(photos[:1], aligned, align, "ellipse", 0.04, "lab")
    with pytest.raises(NodeInputError, match="'align' must be a TE_ALIGN"):
        nodes.TransEditPasteBack().paste(photos, aligned, "nope", "ellipse", 0.04, "lab")
    resized = torch.rand(2, 100, 240, 3)
    with pytest.raises(NodeInputError, match="when aligned"):
        nodes.TransEditPasteBack().paste(resized, aligned, align, "ellipse", 0.04, "lab")


@pytest.mark.parametrize("shape", [(0, 64, 64, 3), (1, 1, 1, 3), (64, 64, 3)])
def test_align_bad_images(monkeypatch, shape):
    with pytest.raises(NodeInputError, match="'images'"):
        run_align(monkeypatch, torch.rand(*shape), [face_at(10, 10)])


def test_greyscale_and_rgba_inputs(monkeypatch):
    grey = torch.rand(1, 120, 120, 1)
    aligned, _, _ = run_align(monkeypatch, grey, [face_at(60, 50, 20)])
    assert aligned.shape == (1, 128, 128, 3)
    rgba = torch.rand(1, 120, 120, 4)
    aligned, _, _ = run_align(monkeypatch, rgba, [face_at(60, 50, 20)])
    assert aligned.shape == (1, 128, 128, 3)


def test_mediapipe_on_a_real_face():
    pytest.importorskip("mediapipe")
    data = pytest.importorskip("skimage.data")
    photo = torch.from_numpy(np.asarray(data.astronaut())).float()[None] / 255.0
    aligned, align, _ = nodes.TransEditAlignFace().align(photo, nodes.MEDIAPIPE, 256, 0, "error", "blur")
    assert aligned.shape == (1, 256, 256, 3) and align.found == [True]
    eyes = align.records[0].to_aligned(np.array([align.records[0].landmarks.eye_left,
                                                 align.records[0].landmarks.eye_right]))
    np.testing.assert_allclose(eyes[:, 0], [0.375 * 256, 0.625 * 256], atol=4)
    with pytest.raises(NodeInputError, match="image 0 of the batch: no face"):
        nodes.TransEditAlignFace().align(torch.zeros(1, 256, 256, 3), nodes.MEDIAPIPE, 256, 0, "error", "blur")


def test_align_and_paste_back_run_on_the_compute_device(monkeypatch):
    """The warps, blurs and colour matching run where the models run (bridge.compute_device: the GPU under
    ComfyUI on a GPU machine), not on the CPU the IMAGEs arrive on; results come back to the intermediate device."""
    import torch

    from transedit.models.face import paste as fp
    from transedit.nodes import comfy_bridge as bridge
    from transedit.nodes import faces as face_nodes

    pytest.importorskip("mediapipe", reason="the node's detector here is mediapipe")
    seen = []
    for module, name in ((fa, "align_faces"), (fa, "align_to_quad"), (fp, "paste_back")):
        real = getattr(module, name)

        def spy(*args, _real=real, _name=name, **kwargs):
            seen.append((_name, kwargs.get("device")))
            return _real(*args, **kwargs)

        monkeypatch.setattr(module, name, spy)
    compute = torch.device("cpu", 0)  # a device object of its own, to tell it from a default
    monkeypatch.setattr(bridge, "compute_device", lambda: compute)
    photos = torch.rand(2, 96, 80, 3, generator=torch.Generator().manual_seed(0))
    aligned, align, _ = face_nodes.TransEditAlignFace().align(photos, face_nodes.MEDIAPIPE, 64, 0, "pass through", "blur")
    align.found = [True, True]  # paste both back (random pictures have no face: centre squares)
    face_nodes.TransEditPasteBack().paste(photos, aligned, align, "ellipse", 0.04, "lab")
    assert {n for n, _ in seen} >= {"align_to_quad", "paste_back"}
    assert all(d is compute for _, d in seen), seen


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA device to compare with")
def test_align_and_paste_back_agree_on_cpu_and_gpu():
    """The same warp, blur padding and colour match on the CPU and on the GPU."""
    import torch

    photo = torch.rand(160, 144, 3, generator=torch.Generator().manual_seed(1))
    quad = fa.centre_quad(160, 144) + torch.tensor([[3.0, -2.0]]).numpy()  # off-centre: padding is exercised
    out = {}
    for dev in ("cpu", "cuda"):
        aligned, rec = fa.align_to_quad(photo, quad, 64, padding="blur", device=dev)
        pasted, mask = fp.paste_back(photo[None], aligned[None].flip(-1), [rec], feather=0.04, mask_shape="ellipse",
                                     color_match="lab", device=dev)
        out[dev] = [t.float().cpu() for t in (aligned, pasted, mask)]
    for a, b in zip(out["cpu"], out["cuda"]):
        assert (a - b).abs().max() < 2e-3
