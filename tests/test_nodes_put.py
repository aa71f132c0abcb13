"""PUT through the registry and the nodes: files, mask convention, windows at any size, samples and seeds,
schedules, progress, Cancel, bad input."""
import pytest
import torch

from transedit.models.put.sampling import SamplerRNG
from transedit.random_weights import save_random_put
from transedit.nodes import comfy_bridge as bridge
from transedit.nodes import put as nodes
from transedit.nodes.inputs import NodeInputError

FAST = dict(num_samples=2, seed=0, schedule="tokens per iteration", tokens_per_iter=8, iterations=4, top_k=8,
            temperature=1.0, order="most confident first (official)", output_mode="crop around mask", context=0.5,
            feather=4, precision="fp32")


@pytest.fixture(scope="module")
def put_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("put")
    save_random_put(folder / "put_cvpr.pth", version="cvpr2022", seed=0)
    save_random_put(folder / "put_tpami.safetensors", version="tpami2024", seed=1)
    sd = torch.load(folder / "put_cvpr.pth", weights_only=True)["model"]
    codec = {k[len("content_codec."):]: v for k, v in sd.items() if k.startswith("content_codec.")}
    torch.save({"model": codec, "last_epoch": 3}, folder / "p_vqvae_only.pth")
    return folder


@pytest.fixture(autouse=True)
def folders(put_dir):
    bridge.set_fallback_folder("put", [str(put_dir)])
    yield
    bridge._fallback_paths.pop("put", None)


@pytest.fixture(scope="module", params=("put_cvpr.pth", "put_tpami.safetensors"))
def put(request, put_dir):
    bridge.set_fallback_folder("put", [str(put_dir)])
    return nodes.TransEditLoadPUT().load(request.param)[0]


@pytest.fixture(scope="module")
def cvpr(put_dir):
    bridge.set_fallback_folder("put", [str(put_dir)])
    return nodes.TransEditLoadPUT().load("put_cvpr.pth")[0]


@pytest.fixture(scope="module")
def tpami(put_dir):
    bridge.set_fallback_folder("put", [str(put_dir)])
    return nodes.TransEditLoadPUT().load("put_tpami.safetensors")[0]


def picture(b, h, w, c=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.linspace(0, 1, h).view(1, h, 1, 1).expand(b, h, w, 1)
    x = torch.linspace(0, 1, w).view(1, 1, w, 1).expand(b, h, w, 1)
    img = (0.8 * torch.cat([y, x, x * y], -1) + 0.2 * torch.rand(b, h, w, 3, generator=g)).clamp(0, 1)
    if c == 1:
        return img.mean(-1, keepdim=True)
    if c == 4:
        return torch.cat([img, torch.ones(b, h, w, 1)], -1)
    return img


def box_mask(b, h, w, y0, y1, x0, x1):
    m = torch.zeros(b, h, w)
    m[:, y0:y1, x0:x1] = 1
    return m


def run(put, images, mask, **kw):
    return nodes.TransEditPUTInpaint().inpaint(put, images, mask, **(FAST | kw))


# ------------------------------------------------------------------------------------------------ basics
def test_fills_only_the_hole_any_size(put):
    img = picture(1, 90, 130)
    mask = box_mask(1, 90, 130, 30, 50, 60, 90)
    out, filled = run(put, img, mask, feather=0)
    assert out.shape == (2, 90, 130, 3) and out.dtype == torch.float32 and filled.shape == (2, 90, 130)
    assert out.min() >= 0 and out.max() <= 1 and torch.isfinite(out).all()
    outside = mask[0] < 0.5
    assert torch.equal(out[:, outside], img[0][outside].expand(2, -1, -1))  # untouched, bit for bit
    assert not torch.allclose(out[:, ~outside], img[0][~outside].expand(2, -1, -1), atol=1e-3)
    assert torch.equal(filled, mask.expand(2, -1, -1))


def test_feather_blends_a_band_outside_the_hole_only(cvpr):
    img = picture(1, 96, 96)
    mask = box_mask(1, 96, 96, 40, 56, 40, 56)
    out, _ = run(cvpr, img, mask, feather=6)
    changed = (out[0] - img[0]).abs().amax(-1) > 1e-6
    assert changed[40:56, 40:56].float().mean() > 0.5
    assert not changed[:33].any() and not changed[63:].any() and not changed[:, :33].any()
    assert changed[35:40, 40:56].any()  # the band just outside
    alpha = nodes._feather(mask[0] > 0.5, 4)
    assert alpha[48, 48] == 1 and alpha[48, 61] == 0  # hole columns 40..55; distance d outside: 1 - d / 5
    assert [round(float(alpha[48, c]), 4) for c in (56, 57, 59, 60)] == [0.8, 0.6, 0.2, 0.0]


def test_samples_differ_and_seeds_reproduce(put):
    img, mask = picture(1, 80, 80), box_mask(1, 80, 80, 20, 60, 20, 60)
    a, _ = run(put, img, mask, num_samples=3, seed=5)
    b, _ = run(put, img, mask, num_samples=3, seed=5)
    assert torch.equal(a, b)
    assert not torch.equal(a[0], a[1]) and not torch.equal(a[1], a[2])
    # fill i uses seed + i: asking for fewer samples, or starting one seed later, gives the same fills
    one, _ = run(put, img, mask, num_samples=1, seed=6)
    torch.testing.assert_close(one[0], a[1], atol=1e-5, rtol=0)
    greedy, _ = run(put, img, mask, num_samples=2, top_k=1)
    assert torch.equal(greedy[0], greedy[1])  # top_k 1 is deterministic


def test_batch_is_image_major_and_each_image_its_own_mask(cvpr):
    imgs = torch.cat([picture(1, 64, 64, seed=1), picture(1, 64, 64, seed=2)])
    masks = torch.cat([box_mask(1, 64, 64, 8, 24, 8, 24), box_mask(1, 64, 64, 40, 60, 30, 50)])
    out, filled = run(cvpr, imgs, masks, num_samples=2, feather=0)
    assert out.shape == (4, 64, 64, 3)
    assert torch.equal(filled[:2], masks[:1].expand(2, -1, -1)) and torch.equal(filled[2:], masks[1:].expand(2, -1, -1))
    for i in range(4):
        outside = filled[i] < 0.5
        assert torch.equal(out[i][outside & (masks[i // 2] < 0.5)], imgs[i // 2][outside & (masks[i // 2] < 0.5)])
    # image 1's fills equal running it alone with its own seeds (seed + 1 * num_samples)
    alone, _ = run(cvpr, imgs[1:], masks[1:], num_samples=2, seed=2, feather=0)
    torch.testing.assert_close(alone, out[2:], atol=1e-5, rtol=0)
    # one mask for every image
    out_shared, filled_shared = run(cvpr, imgs, masks[:1], num_samples=1)
    assert out_shared.shape == (2, 64, 64, 3) and torch.equal(filled_shared, masks[:1].expand(2, -1, -1))


def test_several_separate_holes(cvpr):
    img = picture(1, 120, 160)
    mask = box_mask(1, 120, 160, 10, 30, 10, 30) + box_mask(1, 120, 160, 80, 110, 120, 150)
    out, _ = run(cvpr, img, mask, feather=0, num_samples=1)
    for y0, y1, x0, x1 in ((10, 30, 10, 30), (80, 110, 120, 150)):
        assert not torch.allclose(out[0, y0:y1, x0:x1], img[0, y0:y1, x0:x1], atol=1e-3)
    keep = mask[0] < 0.5
    assert torch.equal(out[0][keep], img[0][keep])


def test_whole_image_mode_and_hole_at_the_border(put):
    img = picture(1, 70, 100)
    mask = box_mask(1, 70, 100, 0, 20, 80, 100)  # touches the top-right corner: window is padded
    for mode in nodes.OUTPUT_MODES:
        out, _ = run(put, img, mask, output_mode=mode, feather=3)
        keep = nodes._feather(mask[0] > 0.5, 3) == 0
        assert out.shape == (2, 70, 100, 3) and torch.equal(out[:, keep], img[0][keep].expand(2, -1, -1))


def test_far_apart_holes_get_their_own_windows():
    hole = torch.zeros(600, 900, dtype=torch.bool)
    hole[50:90, 60:100] = True  # group A
    hole[95:100, 100:110] = True  # touches A's window: merged into A
    hole[400:480, 700:800] = True  # group B, far away
    yy, xx = torch.meshgrid(torch.arange(600), torch.arange(900), indexing="ij")
    hole |= (yy - 500) ** 2 + (xx - 100) ** 2 <= 30 ** 2  # group C: a disk
    groups = nodes._hole_groups(hole, 0.5, 64)
    assert len(groups) == 3
    assert torch.equal(torch.stack(groups).sum(0), hole.long())  # a partition of the holes
    sizes = sorted(int(g.sum()) for g in groups)
    assert sizes == sorted([40 * 40 + 5 * 10, 80 * 100, int(((yy - 500) ** 2 + (xx - 100) ** 2 <= 900).sum())])
    assert len(nodes._hole_groups(hole, 0.5, 600)) == 1  # windows as large as the photo: one window


def test_window_helpers():
    hole = torch.zeros(100, 200, dtype=torch.bool)
    hole[40:60, 150:170] = True
    top, left, side = nodes._context_window(hole, 0.5, 64)
    assert side == 64 and top <= 40 and top + side >= 60 and left <= 150 and left + side >= 170
    top, left, side = nodes._context_window(hole, 2.0, 16)
    assert side == 100  # 20 px box + 2 x 40 px context
    win = nodes._crop_padded(torch.arange(12.).view(1, 3, 4), -1, 2, 3)  # replicate padding outside
    assert win.shape == (1, 3, 3) and win[0, 0].tolist() == [2.0, 3.0, 3.0]
    small = torch.zeros(64, 64, dtype=torch.bool)
    small[10, 10] = True  # a 1-pixel hole survives downscaling
    assert nodes._holes_at(small, (8, 8)).sum() == 1


# ------------------------------------------------------------------------------------------------ masks
def test_mask_convention_threshold_and_channels(cvpr):
    img = picture(1, 64, 64)
    soft = box_mask(1, 64, 64, 16, 48, 16, 48) * 0.6  # above 0.5: a hole
    faint = box_mask(1, 64, 64, 16, 48, 16, 48) * 0.4  # below: no hole
    out_soft, filled = run(cvpr, img, soft)
    assert torch.equal(filled[0], (soft[0] > 0.5).float())
    out_faint, filled_faint = run(cvpr, img, faint)
    assert torch.equal(out_faint, img.expand(2, -1, -1, -1)) and filled_faint.sum() == 0
    rgb_mask = torch.stack([soft / 0.6, torch.zeros_like(soft), torch.ones_like(soft)], -1)  # [B, H, W, C]
    out_rgb, filled_rgb = run(cvpr, img, rgb_mask)
    assert torch.equal(out_rgb, out_soft) and torch.equal(filled_rgb, filled)
    chw = (soft / 0.6).unsqueeze(1)  # [B, 1, H, W]
    assert torch.equal(run(cvpr, img, chw)[0], out_soft)
    assert torch.equal(run(cvpr, img, soft[0] / 0.6)[0], out_soft)  # [H, W]


def test_empty_mask_returns_input_unchanged(cvpr, caplog):
    img = picture(2, 48, 48)
    with caplog.at_level("WARNING"):
        out, filled = run(cvpr, img, torch.zeros(1, 48, 48), num_samples=3)
    assert torch.equal(out, img.repeat_interleave(3, 0)) and filled.shape == (6, 48, 48) and filled.sum() == 0
    assert "empty mask" in caplog.text


def test_full_mask_fills_everything(put):
    img = picture(1, 40, 56)
    out, filled = run(put, img, torch.ones(1, 40, 56), feather=0)
    assert filled.sum() == 2 * 40 * 56 and torch.isfinite(out).all()
    assert (out - img).abs().mean() > 0.01


def test_grey_rgba_and_tiny_images(cvpr):
    for c in (1, 4):
        out, _ = run(cvpr, picture(1, 48, 48, c=c), box_mask(1, 48, 48, 10, 30, 10, 30))
        assert out.shape == (2, 48, 48, 3)
    tiny = picture(1, 5, 3)  # smaller than one 8x8 patch: filled through a padded window
    out, _ = run(cvpr, tiny, box_mask(1, 5, 3, 1, 3, 1, 2), feather=0)
    assert out.shape == (2, 5, 3, 3) and torch.equal(out[:, 0], tiny[0, 0].expand(2, -1, -1))


# ------------------------------------------------------------------------------------------------ schedules
def test_schedules_and_orders(tpami, cvpr):
    img, mask = picture(1, 64, 64), box_mask(1, 64, 64, 8, 56, 8, 56)
    for schedule in ("cosine", "linear", "average"):
        out, _ = run(tpami, img, mask, schedule=schedule, iterations=3)
        assert out.shape == (2, 64, 64, 3)
    out, _ = run(tpami, img, mask, order="raster")
    out, _ = run(cvpr, img, mask, order="raster", tokens_per_iter=1)
    for put in (tpami, cvpr):
        all_at_once, _ = run(put, img, mask, tokens_per_iter=0)
        assert torch.isfinite(all_at_once).all()
    with pytest.raises(NodeInputError, match="schedule.*CVPR 2022"):
        run(cvpr, img, mask, schedule="cosine")
    with pytest.raises(NodeInputError, match="order.*tokens_per_iter"):
        run(cvpr, img, mask, order="raster", tokens_per_iter=4)


def test_progress_counts_passes_and_shows_previews(tpami, monkeypatch):
    events = []

    class FakeProgress:
        def __init__(self, total):
            self.total, self.done = total, 0
            events.append(("total", total))

        def update(self, steps=1, preview=None):
            self.done += steps
            events.append(("step", self.done, preview is not None))

    monkeypatch.setattr(bridge, "Progress", FakeProgress)
    imgs = picture(2, 64, 64)
    masks = torch.cat([box_mask(1, 64, 64, 0, 64, 0, 64), torch.zeros(1, 64, 64)])
    run(tpami, imgs, masks, schedule="cosine", iterations=5)
    assert events[0] == ("total", 5)  # image 0: 5 passes; image 1 (empty mask): none
    steps = [e for e in events if e[0] == "step"]
    assert [s[1] for s in steps] == [1, 2, 3, 4, 5] and any(s[2] for s in steps)


def test_cancel_stops_within_one_iteration(cvpr, monkeypatch):
    img, mask = picture(1, 64, 64), box_mask(1, 64, 64, 0, 64, 0, 64)
    expected, _ = run(cvpr, img, mask, tokens_per_iter=1)

    class Interrupted(Exception):
        pass

    passes = {"n": 0}
    real_choose = SamplerRNG.choose  # one per-sample draw per pass

    def counting_choose(self, scores):
        passes["n"] += 1
        return real_choose(self, scores)

    calls = {"n": 0}

    def interrupt():
        calls["n"] += 1
        if calls["n"] > 4:
            raise Interrupted()

    monkeypatch.setattr(bridge, "check_interrupt", interrupt)
    monkeypatch.setattr(SamplerRNG, "choose", counting_choose)
    with pytest.raises(Interrupted):
        run(cvpr, img, mask, tokens_per_iter=1)  # 64 passes if not cancelled
    # checks: before the image, before its chunk of samples, after passes 1, 2; the 5th raised after pass 3
    assert passes["n"] == 3
    monkeypatch.undo()
    again, _ = run(cvpr, img, mask, tokens_per_iter=1)
    assert torch.equal(again, expected)  # nothing leaked from the cancelled run


def test_bf16_runs(tpami):
    out, _ = run(tpami, picture(1, 64, 64), box_mask(1, 64, 64, 8, 40, 8, 40), precision="bf16")
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


# ------------------------------------------------------------------------------------------------ errors
def test_bad_inputs_name_node_and_input(cvpr):
    img = picture(1, 48, 48)
    with pytest.raises(NodeInputError, match="PUT Inpaint.*mask.*48x40") as err:
        run(cvpr, img, torch.ones(1, 40, 48))
    assert "resize" in str(err.value)
    with pytest.raises(NodeInputError, match="mask.*3 masks for 2 images"):
        run(cvpr, picture(2, 48, 48), torch.ones(3, 48, 48))
    with pytest.raises(NodeInputError, match="mask.*must be a MASK"):
        run(cvpr, img, None)
    with pytest.raises(NodeInputError, match="put.*TE_PUT"):
        run("not a model", img, torch.ones(1, 48, 48))
    with pytest.raises(NodeInputError, match="num_samples"):
        run(cvpr, img, torch.ones(1, 48, 48), num_samples=0)
    with pytest.raises(NodeInputError, match="images"):
        run(cvpr, torch.zeros(0, 48, 48, 3), torch.ones(1, 48, 48))


def test_loader_refuses_pvqvae_only_and_lists_folder(put_dir):
    assert {"put_cvpr.pth", "put_tpami.safetensors"} <= set(bridge.list_models("put"))
    with pytest.raises(NodeInputError, match="Load PUT: input 'put_name' .*P-VQVAE.*not a transformer") as err:
        nodes.TransEditLoadPUT().load("p_vqvae_only.pth")
    assert "p_vqvae_only.pth" in str(err.value)
    with pytest.raises(NodeInputError, match="put_name"):
        nodes.TransEditLoadPUT().load("missing.pth")


def test_schema_has_stable_ids_and_outputs():
    inputs = nodes.TransEditPUTInpaint.INPUT_TYPES()["required"]
    assert list(inputs)[:3] == ["put", "images", "mask"]
    for name in ("num_samples", "seed", "schedule", "tokens_per_iter", "top_k", "temperature", "context",
                 "output_mode"):
        assert name in inputs
    assert nodes.TransEditPUTInpaint.RETURN_TYPES == ("IMAGE", "MASK")
    assert set(nodes.NODE_CLASS_MAPPINGS) == {"TransEditLoadPUT", "TransEditPUTInpaint"}
