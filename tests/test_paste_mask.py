"""Paste Back with a caller's region mask in aligned-crop space (STIT pastes the stitched crop with its region's
mask): outside the warped mask the photo is untouched, inside it is the crop, feathering as STIT's, batches,
several faces per photo, video, errors; planted faults (mask ignored, mask not warped by the crop's transform)."""
import cv2
import numpy as np
import pytest
import torch

from transedit.models.face import align as fa
from transedit.models.face import paste as fp
from transedit.nodes import faces as nodes
from transedit.nodes.inputs import NodeInputError

S = 32  # aligned crop side


def record(h, w, cx, cy, side, angle):
    """A rotated crop square of ``side`` source pixels centred at (cx, cy); corner order as align.py's quads."""
    c, s = np.cos(angle), np.sin(angle)
    x, y = np.array([c, s]) * side / 2, np.array([-s, c]) * side / 2
    centre = np.array([cx, cy])
    quad = np.stack([centre - x - y, centre - x + y, centre + x + y, centre + x - y])
    return fa.AlignRecord.from_quad((h, w), quad, S)


def gradient_crop(offset=0.0):
    """[S, S, 3]: channel 0 = x / S, channel 1 = y / S (linear, so bilinear sampling is exact), channel 2 constant."""
    j = torch.arange(S, dtype=torch.float32) / S
    return torch.stack([j[None, :].expand(S, S), j[:, None].expand(S, S), torch.full((S, S), 0.5 + offset)], -1)


def quadrant_mask():
    """Asymmetric (the upper-left quadrant and a bar along the bottom), so a flip or transpose shows."""
    m = torch.zeros(S, S)
    m[2:14, 3:15] = 1.0
    m[24:29, 4:28] = 1.0
    return m


def aligned_coords(rec, h, w):
    ys, xs = np.mgrid[0:h, 0:w]
    pts = np.stack([xs.ravel(), ys.ravel(), np.ones(h * w)])
    u, v, _ = rec.aligned_from_source @ pts
    return u.reshape(h, w), v.reshape(h, w)


def check_mask_paste(photo, out, crop, rec, mask, offset=0.0, margin=1.5, check_outside=True):
    """Pixels whose aligned position is farther than ``margin`` px from any mask pixel: unchanged; deeper than
    ``margin`` inside the mask: the crop's value there (its linear gradient)."""
    h, w = photo.shape[:2]
    u, v = aligned_coords(rec, h, w)
    m = mask.numpy().astype(np.uint8)
    k = np.ones((2 * int(np.ceil(margin)) + 1,) * 2, np.uint8)
    grown = cv2.dilate(m, k, borderType=cv2.BORDER_CONSTANT, borderValue=0)
    shrunk = cv2.erode(m, k, borderType=cv2.BORDER_CONSTANT, borderValue=0)
    ui, vi = np.round(u).astype(int), np.round(v).astype(int)
    in_crop = (ui >= 0) & (ui < S) & (vi >= 0) & (vi < S)
    look = lambda a: np.where(in_crop, a[vi.clip(0, S - 1), ui.clip(0, S - 1)], 0)  # noqa: E731
    outside, inside = look(grown) == 0, look(shrunk) == 1
    assert inside.sum() > 20 and outside.sum() > 20
    if check_outside:
        assert torch.equal(out[torch.from_numpy(outside)], photo[torch.from_numpy(outside)]), "changed outside"
    want = np.stack([u / S, v / S, np.full_like(u, 0.5 + offset)], -1)[inside]
    got = out[torch.from_numpy(inside)].numpy()
    assert np.abs(got - want).max() < 1e-4, "inside the mask is not the crop"


@pytest.fixture
def scene():
    g = torch.Generator().manual_seed(3)
    return torch.rand(2, 70, 90, 3, generator=g), [record(70, 90, 40, 36, 44, 0.5), record(70, 90, 50, 33, 40, -0.3)]


def test_mask_replaces_the_shape_outside_unchanged_inside_the_crop(scene):
    photos, recs = scene
    crops = torch.stack([gradient_crop(), gradient_crop(0.2)])
    masks = torch.stack([quadrant_mask(), quadrant_mask().flip(0)])
    kept = photos.clone()
    out, pasted = fp.paste_back(photos, crops, recs, feather=0.0, color_match=False, crop_mask=masks)
    assert torch.equal(photos, kept), "the caller's photos were written to"
    for i in range(2):  # each photo with its own mask
        check_mask_paste(photos[i], out[i], crops[i], recs[i], masks[i], offset=0.2 * i)
    assert pasted.shape == photos.shape[:3] and pasted.max() == 1.0
    # one mask for the whole batch
    out1, _ = fp.paste_back(photos, crops, recs, feather=0.0, color_match=False, crop_mask=masks[:1])
    check_mask_paste(photos[1], out1[1], crops[1], recs[1], masks[0], offset=0.2)


def test_planted_faults_are_caught(scene, monkeypatch):
    photos, recs = scene
    crops, mask = gradient_crop()[None], quadrant_mask()
    # the mask ignored: the ellipse is pasted instead
    out, _ = fp.paste_back(photos[:1], crops, recs[:1], feather=0.0, color_match=False)
    with pytest.raises(AssertionError):
        check_mask_paste(photos[0], out[0], crops[0], recs[0], mask)
    # the mask warped with the transpose of the crop (not the inverse transform of its record)
    out, _ = fp.paste_back(photos[:1], crops, recs[:1], feather=0.0, color_match=False, crop_mask=mask.T[None])
    with pytest.raises(AssertionError):
        check_mask_paste(photos[0], out[0], crops[0], recs[0], mask)
    # the mask warped by the forward instead of the inverse transform, or moved by 3 crop pixels
    real_warp = fp.warp
    for wrong in (np.linalg.inv, lambda m: np.array([[1.0, 0, 3.0], [0, 1.0, 0], [0, 0, 1.0]]) @ m):
        monkeypatch.setattr(fp, "warp", lambda img, m, *a, wrong=wrong, **k: real_warp(
            img, wrong(m) if img.shape[1] == 1 else m, *a, **k))
        out, _ = fp.paste_back(photos[:1], crops, recs[:1], feather=0.0, color_match=False, crop_mask=mask[None])
        with pytest.raises(AssertionError):
            check_mask_paste(photos[0], out[0], crops[0], recs[0], mask)


@pytest.mark.parametrize("radius", [1, 2, 3, 5, 12])
def test_feathering_is_stits(radius):
    """STIT's feathered paste: cv2.erode (zero border) then cv2.GaussianBlur with the same (2r+1) kernel, sigma 0."""
    g = np.random.default_rng(radius)
    m = (g.random((48, 48)) > 0.4).astype(np.float32)
    m[8:40, 10:36] = 1.0
    m *= g.random((48, 48)).astype(np.float32) ** 0.2
    k = 2 * radius + 1
    ref = cv2.GaussianBlur(cv2.erode(m, np.ones((k, k)), borderType=cv2.BORDER_CONSTANT, borderValue=0), (k, k),
                           sigmaX=0.0)
    ours = fp.feather_crop_mask(torch.from_numpy(m)[None, None], radius)[0, 0].numpy()
    assert np.abs(ours - ref).max() < 1e-5
    assert torch.equal(fp.feather_crop_mask(torch.from_numpy(m)[None, None], 0)[0, 0], torch.from_numpy(m))


def test_feather_shrinks_the_pasted_region(scene):
    photos, recs = scene
    crops, mask = gradient_crop()[None], torch.zeros(S, S)
    mask[4:28, 6:26] = 1.0
    _, hard = fp.paste_back(photos[:1], crops, recs[:1], feather=0.0, color_match=False, crop_mask=mask[None])
    out, soft = fp.paste_back(photos[:1], crops, recs[:1], feather=3 / S, color_match=False, crop_mask=mask[None])
    # feathering stays inside the region (nothing new outside), pulls the edge in, leaves the core whole
    assert (soft <= hard + 1e-6).all() and soft.sum() < 0.8 * hard.sum()
    core = torch.zeros(S, S)
    core[4 + 7:28 - 7, 6 + 7:26 - 7] = 1.0
    check_mask_paste(photos[0], out[0], crops[0], recs[0], core, check_outside=False)
    outside = torch.from_numpy(hard[0].numpy() == 0)
    assert torch.equal(out[0][outside], photos[0][outside])


def test_mask_at_another_crop_size_and_shrunk_faces(scene):
    """The mask is in crop space whatever its pixel size; a face smaller in the photo than the crop is
    anti-aliased, its mask too."""
    photos, recs = scene
    big = quadrant_mask().repeat_interleave(4, 0).repeat_interleave(4, 1)  # 128 px, the same region
    small_rec = record(70, 90, 40, 36, 20, 0.5)  # 20 px in the photo, 32 in the crop
    for rec, m in ((recs[0], big), (small_rec, quadrant_mask())):
        out, pasted = fp.paste_back(photos[:1], gradient_crop()[None], [rec], feather=0.0, color_match=False,
                                    crop_mask=m[None])
        assert pasted.max() > 0.9
        outside = torch.from_numpy(aligned_outside(rec, quadrant_mask(), 70, 90, margin=2.5))
        assert torch.equal(out[0][outside], photos[0][outside])


def aligned_outside(rec, mask, h, w, margin):
    u, v = aligned_coords(rec, h, w)
    k = np.ones((2 * int(np.ceil(margin)) + 1,) * 2, np.uint8)
    grown = cv2.dilate(mask.numpy().astype(np.uint8), k, borderType=cv2.BORDER_CONSTANT, borderValue=0)
    ui, vi = np.round(u).astype(int), np.round(v).astype(int)
    in_crop = (ui >= 0) & (ui < S) & (vi >= 0) & (vi < S)
    return np.where(in_crop, grown[vi.clip(0, S - 1), ui.clip(0, S - 1)], 0) == 0


def test_node_several_faces_each_with_its_mask(scene):
    """Align Face faces: all: every crop into its own photo with its own mask (the larger face pasted last)."""
    photos, _ = scene
    recs = [record(70, 90, 28, 30, 36, 0.2), record(70, 90, 66, 40, 40, -0.4), record(70, 90, 45, 35, 44, 0.1)]
    align = nodes.FaceAlignment(recs, [True] * 3, sources=[0, 0, 1], faces=[1, 0, 0], image_count=2)
    crops = torch.stack([gradient_crop(), gradient_crop(0.1), gradient_crop(0.2)])
    masks = torch.stack([quadrant_mask(), quadrant_mask().flip(1), quadrant_mask().flip(0)])
    out, pasted = unwrap(nodes.TransEditPasteBack().paste(photos, crops, align, "ellipse", 0.0, "off", mask=masks))
    check_mask_paste(photos[1], out[1], crops[2], recs[2], masks[2], offset=0.2)
    # photo 0 holds two faces: the same as pasting the smaller (crop 0), then the larger over it, each with its mask
    step = photos[0:1]
    for k in (0, 1):
        single, _ = fp.paste_back(photos[0:1], crops[k:k + 1], [recs[k]], feather=0.0, color_match=False,
                                  crop_mask=masks[k:k + 1])
        check_mask_paste(photos[0], single[0], crops[k], recs[k], masks[k], offset=0.1 * k)
        step, _ = fp.paste_back(step, crops[k:k + 1], [recs[k]], feather=0.0, color_match=False,
                                crop_mask=masks[k:k + 1])
    assert torch.allclose(out[0], step[0], atol=1e-6)
    both_outside = aligned_outside(recs[0], masks[0], 70, 90, 1.5) & aligned_outside(recs[1], masks[1], 70, 90, 1.5)
    assert torch.equal(out[0][torch.from_numpy(both_outside)], photos[0][torch.from_numpy(both_outside)])
    assert pasted[0].max() == 1.0 and pasted[1].max() == 1.0


def unwrap(result):
    return result["result"] if isinstance(result, dict) else result


def test_node_video_with_masks_and_lost_frames():
    """A clip: one mask per frame, a lost frame left untouched, the colour match measured inside the mask."""
    g = torch.Generator().manual_seed(5)
    frames = torch.rand(3, 70, 90, 3, generator=g)
    recs = [record(70, 90, 40 + i, 36, 44, 0.1 * i) for i in range(3)]
    align = nodes.FaceAlignment(recs, [True, False, True], status=["found", "lost", "found"], smoothing=1.0,
                                segments=[0, 0, 0])
    crops = torch.stack([gradient_crop()] * 3)
    masks = torch.stack([quadrant_mask()] * 3)
    out, pasted = unwrap(nodes.TransEditPasteBack().paste(frames, crops, align, "ellipse", 0.0, "off", mask=masks))
    assert torch.equal(out[1], frames[1]) and pasted[1].max() == 0
    for i in (0, 2):
        outside = torch.from_numpy(aligned_outside(recs[i], masks[i], 70, 90, 1.5))
        assert torch.equal(out[i][outside], frames[i][outside]) and pasted[i].max() > 0.3  # faded next to the lost frame
    out_lab, _ = unwrap(nodes.TransEditPasteBack().paste(frames, crops, align, "ellipse", 0.0, "lab", mask=masks))
    outside = torch.from_numpy(aligned_outside(recs[0], masks[0], 70, 90, 1.5))
    assert torch.equal(out_lab[0][outside], frames[0][outside]) and not torch.equal(out_lab[0], out[0])


@pytest.mark.parametrize("mask, fix", [
    (torch.ones(1, 16, 16), "edited faces' size"),
    (torch.ones(2, S, S), "one mask per aligned face (3)"),
    (torch.ones(S, S, 3, 1), "MASK [N, H, W]"),
    (torch.full((1, S, S), float("nan")), "NaN"),
])
def test_node_mask_errors_name_the_input_and_the_fix(scene, mask, fix):
    photos, recs = scene
    align = nodes.FaceAlignment([recs[0], recs[1], recs[0]], [True] * 3, sources=[0, 1, 1], faces=[0, 0, 1],
                                image_count=2)
    crops = torch.stack([gradient_crop()] * 3)
    with pytest.raises(NodeInputError) as err:
        nodes.TransEditPasteBack().paste(photos, crops, align, "ellipse", 0.0, "off", mask=mask)
    text = str(err.value)
    assert "Paste Back" in text and "mask" in text and fix in text


def test_model_mask_count_mismatch(scene):
    photos, recs = scene
    with pytest.raises(fp.BatchSizeMismatch, match="3 crop masks for 2 faces"):
        fp.paste_back(photos, torch.stack([gradient_crop()] * 2), recs, crop_mask=torch.ones(3, S, S))


def test_colour_statistics_are_measured_inside_the_mask(scene):
    """The colour match's statistics come from the caller's mask, not the built-in shape: the paste equals one
    handed the statistics measured with that mask, and differs from one handed the ellipse's."""
    photos, recs = scene
    crops, mask = gradient_crop()[None], quadrant_mask()[None]
    kw = dict(feather=0.0, color_match="rgb")
    with_mask, _ = fp.paste_back(photos[:1], crops, recs[:1], crop_mask=mask, **kw)
    stats, valid = fp.paste_color_stats(photos[:1], crops, recs[:1], crop_mask=mask, **kw)
    ellipse, _ = fp.paste_color_stats(photos[:1], crops, recs[:1], **kw)
    assert valid.all() and not torch.allclose(stats, ellipse, atol=1e-3)
    handed, _ = fp.paste_back(photos[:1], crops, recs[:1], crop_mask=mask, color_stats=stats, **kw)
    assert torch.allclose(with_mask, handed, atol=1e-5)
    wrong, _ = fp.paste_back(photos[:1], crops, recs[:1], crop_mask=mask, color_stats=ellipse, **kw)
    assert not torch.allclose(with_mask, wrong, atol=1e-3)


def test_face_video_tuned_pastes_with_the_stitching_mask():
    """The shipped workflow feeds Stitching Tune's region (its output 1) into Paste Back's mask input."""
    import json
    from pathlib import Path

    graph = json.loads((Path(__file__).resolve().parents[1] / "workflows" / "face_video_tuned.json").read_text())
    by_id = {n["id"]: n for n in graph["nodes"]}
    (paste,) = [n for n in graph["nodes"] if n["type"] == "TransEditPasteBack"]
    (link,) = [inp["link"] for inp in paste["inputs"] if inp["name"] == "mask"]
    ((src, slot),) = [(l[1], l[2]) for l in graph["links"] if l[0] == link]
    assert by_id[src]["type"] == "TransEditStitchingTune" and by_id[src]["outputs"][slot]["name"] == "mask"
    # the same crops: Paste Back's edited faces are that node's stitched images
    (edited,) = [inp["link"] for inp in paste["inputs"] if inp["name"] == "edited"]
    assert [(l[1], l[2]) for l in graph["links"] if l[0] == edited] == [(src, 0)]


def test_model_mask_forms_and_bad_shapes(scene):
    """A single [S, S] mask or a list serves like [1, S, S]; values past 1 count as 1; a mask that is not square
    is refused."""
    photos, recs = scene
    crops, mask = gradient_crop()[None], quadrant_mask()
    want, _ = fp.paste_back(photos[:1], crops, recs[:1], feather=0.0, color_match=False, crop_mask=mask[None])
    for form in (mask, [mask], mask[None] * 1.5 - 0.25 * (1 - mask)[None]):
        got, _ = fp.paste_back(photos[:1], crops, recs[:1], feather=0.0, color_match=False, crop_mask=form)
        assert torch.equal(got, want)
    with pytest.raises(ValueError, match="square"):
        fp.paste_back(photos[:1], crops, recs[:1], crop_mask=torch.ones(1, S, S - 2))


def test_a_shrunk_face_gets_an_anti_aliased_mask(scene):
    """A face smaller in the photo than its crop: a mask of one-pixel stripes is averaged down before the warp
    (even, about half pasted), not sampled into a moire of 0s and 1s."""
    photos, _ = scene
    rec = record(70, 90, 45, 35, 20, 0.0)  # 20 photo pixels for 32 crop pixels
    stripes = torch.zeros(S, S)
    stripes[:, ::2] = 1.0
    _, pasted = fp.paste_back(photos[:1], gradient_crop()[None], [rec], feather=0.0, color_match=False,
                              crop_mask=stripes[None])
    inner = pasted[0, 35 - 6:35 + 6, 45 - 6:45 + 6]
    assert abs(float(inner.mean()) - 0.5) < 0.1 and float(inner.std()) < 0.1


def test_node_takes_a_single_two_dimensional_mask_for_every_face(scene):
    photos, recs = scene
    align = nodes.FaceAlignment(recs, [True, True])
    crops = torch.stack([gradient_crop()] * 2)
    want = unwrap(nodes.TransEditPasteBack().paste(photos, crops, align, "ellipse", 0.0, "off",
                                                   mask=quadrant_mask()[None]))
    got = unwrap(nodes.TransEditPasteBack().paste(photos, crops, align, "ellipse", 0.0, "off", mask=quadrant_mask()))
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    check_mask_paste(photos[1], got[0][1], crops[1], recs[1], quadrant_mask())
