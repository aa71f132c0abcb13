"""Edit nodes: Load Direction / Apply / SeFa / Mix / Sweep / Edit Transformer, shapes, chaining, errors."""
import numpy as np
import pytest
import torch

from transedit.models.core.directions import LatentDirection, save_direction
from transedit.models.core.latent import StyleLatent
from transedit.models.registry import atomic_write, load_stylegan2
from transedit.random_weights import save_random_generator
from transedit.models.encoders.style_transformer import EditTransformer, EditTransformerConfig
from transedit.nodes import comfy_bridge as bridge
from transedit.nodes.inputs import NodeInputError
from transedit.nodes.editing import (NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS, SEFA_ENTRY, EditTransformerHandle,
                                     TransEditApplyDirection, TransEditLatentSweep, TransEditLoadDirection,
                                     TransEditLoadEditTransformer, TransEditMixLatents, TransEditReferenceEdit,
                                     TransEditSeFa, preset_label)
from transedit.nodes.rendering import StyleGANHandle
from transedit.nodes.stylegan import TransEditSampleLatent

N, C = 10, 64  # the default random generator: 64 px, style_dim 64


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def generator(tmp_path_factory):
    path = save_random_generator(tmp_path_factory.mktemp("stylegan") / "g.pt", seed=3)
    return StyleGANHandle(load_stylegan2(path))


@pytest.fixture(scope="module")
def other_generator(tmp_path_factory):
    path = save_random_generator(tmp_path_factory.mktemp("stylegan2") / "other.pt", seed=4)
    return StyleGANHandle(load_stylegan2(path))


@pytest.fixture(scope="module")
def dir_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("latent_directions")
    torch.save(rand(1, C, seed=1), folder / "age.pt")
    torch.save(rand(1, N, C, seed=2), folder / "pose.pt")
    (folder / "styleclip").mkdir()
    np.save(folder / "styleclip" / "clip.npy", rand(1, N * C, seed=3).numpy())
    torch.save(rand(1, 512, seed=4), folder / "ffhq_age_512.pt")  # made for another generator
    bad = rand(1, C, seed=5)
    bad[0, 0] = float("inf")
    torch.save(bad, folder / "broken.pt")
    save_direction(LatentDirection("mine", rand(C, seed=6), start=2, end=6, default_strength=2.0),
                   folder / "mine.safetensors")
    return folder


@pytest.fixture(scope="module")
def pca_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("with_pca")
    q, _ = torch.linalg.qr(rand(C, 64, seed=7))
    pca = {"mean": rand(1, C, seed=8), "comp": q.T.reshape(64, 1, C).contiguous(), "std": torch.linspace(3, 1, 64)}
    (folder / "ganspace").mkdir()
    torch.save(pca, folder / "ganspace" / "cars_pca.pt")
    return folder, pca


@pytest.fixture(autouse=True)
def folders(dir_folder):
    bridge.set_fallback_folder("latent_directions", [str(dir_folder)])
    yield
    bridge._fallback_paths.pop("latent_directions", None)
    bridge._fallback_paths.pop("gan_encoders", None)


@pytest.fixture
def latent(generator):
    return TransEditSampleLatent().sample(generator, 0, 3, 0.7)[0]


def load(name, component=0, generator=None):
    return TransEditLoadDirection().load(name, component, generator)[0]


def apply(latent, direction, strength=1.0, start=-1, end=-1):
    return TransEditApplyDirection().apply(latent, direction, strength, start, end)[0]


# ------------------------------------------------------------------------------------------- the pack
def test_nodes_are_documented():
    assert set(NODE_CLASS_MAPPINGS) == set(NODE_DISPLAY_NAME_MAPPINGS) == {
        "TransEditLoadDirection", "TransEditApplyDirection", "TransEditSeFa", "TransEditMixLatents",
        "TransEditReferenceEdit", "TransEditLoadEditTransformer", "TransEditLatentSweep", "TransEditSmoothLatents"}
    for node_id, cls in NODE_CLASS_MAPPINGS.items():
        assert cls.CATEGORY == "TransEdit/Edit" and cls.DESCRIPTION and callable(getattr(cls, cls.FUNCTION))
        for section in cls.INPUT_TYPES().values():
            for name, entry in section.items():
                assert len(entry) == 2 and entry[1].get("tooltip"), f"{node_id}.{name}"
        assert len(cls.RETURN_TYPES) == len(cls.RETURN_NAMES) == len(cls.OUTPUT_TOOLTIPS)


def test_load_direction_lists_files_presets_and_sefa():
    choices = TransEditLoadDirection.INPUT_TYPES()["required"]["direction"][0]
    assert {"age.pt", "pose.pt", "styleclip/clip.npy", "mine.safetensors"} <= set(choices)
    assert "preset: ganspace ffhq smile" in choices and "preset: ganspace cars grass" in choices
    assert preset_label("ffhq", "eye_openness") in choices and SEFA_ENTRY in choices


# --------------------------------------------------------------------------------------- load + apply
def test_apply_file_directions(latent):
    age = load("age.pt")
    out = apply(latent, age, 2.0)
    assert isinstance(out, StyleLatent) and out.wplus.shape == (3, N, C)
    assert out.wplus.dtype == torch.float32 and out.wplus.device.type == "cpu"
    torch.testing.assert_close(out.wplus, latent.wplus + 2.0 * rand(1, C, seed=1))
    assert out.generator == latent.generator and out.extras["seed"] == 0
    assert out.extras["edits"] == [{"direction": "age", "kind": "add", "strength": 2.0, "layers": [0, N]}]
    assert "edits" not in latent.extras and not torch.equal(out.wplus, latent.wplus)  # input untouched
    pose = apply(latent, load("pose.pt"), -1.0, 3, 5)
    torch.testing.assert_close(pose.wplus[:, 3:5], latent.wplus[:, 3:5] - rand(1, N, C, seed=2)[:, 3:5])
    torch.testing.assert_close(pose.wplus[:, 5:], latent.wplus[:, 5:])
    clip = apply(latent, load("styleclip/clip.npy"), 0.5)
    torch.testing.assert_close(clip.wplus, latent.wplus + 0.5 * rand(1, N * C, seed=3).reshape(1, N, C))


def test_default_strength_and_own_range(latent):
    mine = load("mine.safetensors")  # rows 2..5, default strength 2
    out = apply(latent, mine, 1.5)
    v = rand(C, seed=6)
    torch.testing.assert_close(out.wplus[:, 2:6], latent.wplus[:, 2:6] + 3.0 * v)
    torch.testing.assert_close(out.wplus[:, :2], latent.wplus[:, :2])
    torch.testing.assert_close(out.wplus[:, 6:], latent.wplus[:, 6:])
    only_end = apply(latent, mine, 1.0, -1, 4)  # start from the direction (2), end overridden
    torch.testing.assert_close(only_end.wplus[:, 2:4], latent.wplus[:, 2:4] + 2.0 * v)
    torch.testing.assert_close(only_end.wplus[:, 4:], latent.wplus[:, 4:])


def test_chaining(latent):
    age, pose = load("age.pt"), load("pose.pt")
    chained = apply(apply(latent, age, 1.0), pose, 2.0, 0, 4)
    expected = latent.wplus + rand(1, C, seed=1)
    expected[:, :4] += 2.0 * rand(1, N, C, seed=2)[:, :4]
    torch.testing.assert_close(chained.wplus, expected)
    assert [e["direction"] for e in chained.extras["edits"]] == ["age", "pose"]


def test_presets(latent, pca_folder):
    with pytest.raises(NodeInputError, match=r"TransEdit Load Direction: input 'direction' .*cars_pca.pt.*"
                                             r"Fix: download cars_pca.pt"):
        load("preset: ganspace cars grass")
    folder, pca = pca_folder
    bridge.set_fallback_folder("latent_directions", [str(folder)])
    grass = load("preset: ganspace cars grass")  # found in a subfolder
    assert (grass.kind, grass.start, grass.end, grass.default_strength) == ("ganspace", 9, 11, -18.0)
    with pytest.raises(NodeInputError, match=r"input 'direction' layer range \[9, 11\) is outside the latent's "
                                             r"10 layers.*Fix: this direction was made for a generator with more"):
        apply(latent, grass)  # a 512 px cars preset on a 64 px generator (10 rows)
    torch.testing.assert_close(apply(latent, grass, 1.0, 8, 10).wplus[:, :8], latent.wplus[:, :8])
    cube = load("preset: ganspace cars cube")  # component 16, rows 3..5, target 25
    out = apply(latent, cube, 1.0)
    comp, std = pca["comp"][16, 0], pca["std"][16]
    coord = ((latent.wplus[:, 0] - pca["mean"][0]) @ comp) / std
    delta = (25.0 - coord)[:, None] * comp * std
    torch.testing.assert_close(out.wplus[:, 3:6], latent.wplus[:, 3:6] + delta[:, None], atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(out.wplus[:, 6:], latent.wplus[:, 6:])
    # a GANSpace PCA chosen as a file: the component input picks the component, on every layer
    whole = load("ganspace/cars_pca.pt", component=5)
    assert whole.extras["component"] == 5 and (whole.start, whole.end) == (0, None)
    with pytest.raises(NodeInputError, match="input 'component'"):
        load("ganspace/cars_pca.pt", component=64)
    with pytest.raises(NodeInputError, match="ffhq_pca.pt"):
        load("preset: ganspace ffhq smile")


def test_sefa_entry_and_node(generator, latent):
    with pytest.raises(NodeInputError, match="input 'generator' is needed for the SeFa entry"):
        load(SEFA_ENTRY, 0)
    entry = load(SEFA_ENTRY, 2, generator)
    node = TransEditSeFa().factorize(generator, 2, 0, -1)[0]
    torch.testing.assert_close(entry.vector, node.vector)
    assert (node.start, node.end, node.default_strength) == (0, N, 3.0)
    assert node.generator == generator.descriptor.fingerprint and abs(float(node.vector.norm()) - 1) < 1e-5
    coarse = TransEditSeFa().factorize(generator, 0, 0, 4)[0]
    assert (coarse.start, coarse.end) == (0, 4)
    out = apply(latent, coarse, 1.0)
    torch.testing.assert_close(out.wplus[:, :4], latent.wplus[:, :4] + 3.0 * coarse.vector)
    torch.testing.assert_close(out.wplus[:, 4:], latent.wplus[:, 4:])
    for args, name, msg in [((generator, 64, 0, -1), "component", "style_dim is 64"),
                            ((generator, 0, 6, 3), "start_layer", "reversed"),
                            ((generator, 0, 3, 3), "end_layer", "empty"),
                            ((generator, 0, 0, 11), "end_layer", "only 10 W\\+ layers"),
                            (("nope", 0, 0, -1), "generator", "must be a TE_STYLEGAN")]:
        with pytest.raises(NodeInputError, match=rf"TransEdit SeFa: input '{name}' .*{msg}"):
            TransEditSeFa().factorize(*args)


def test_direction_of_another_generator_warns(latent, other_generator, caplog):
    d = TransEditSeFa().factorize(other_generator, 0, 0, -1)[0]
    with caplog.at_level("WARNING", logger="TransEdit"):
        apply(latent, d, 1.0)
    assert "was made for generator" in caplog.text


def test_apply_bad_inputs(latent):
    node = "TransEdit Apply Direction"
    with pytest.raises(NodeInputError, match=rf"{node}: input 'direction' .*does not fit W\+ \[10, 64\]"):
        apply(latent, load("ffhq_age_512.pt"))
    with pytest.raises(NodeInputError, match="input 'strength' must be between"):
        apply(latent, load("age.pt"), 500.0)
    with pytest.raises(NodeInputError, match="input 'strength' must be a number"):
        apply(latent, load("age.pt"), float("nan"))
    with pytest.raises(NodeInputError, match="input 'end_layer' .*reversed"):
        apply(latent, load("age.pt"), 1.0, 6, 2)
    with pytest.raises(NodeInputError, match="input 'end_layer' .*empty"):
        apply(latent, load("age.pt"), 1.0, 4, 4)
    with pytest.raises(NodeInputError, match="input 'start_layer' .*reversed"):
        apply(latent, load("age.pt"), 1.0, 12, -1)  # start 12 after the direction's end (the last row, 10)
    with pytest.raises(NodeInputError, match="input 'end_layer' .*outside the latent's 10 layers"):
        apply(latent, load("age.pt"), 1.0, 8, 12)
    with pytest.raises(NodeInputError, match="input 'end_layer' must be between -1 and 64"):
        apply(latent, load("age.pt"), 1.0, 0, 99)
    with pytest.raises(NodeInputError, match="input 'latent' must be a TE_LATENT"):
        apply(latent.wplus, load("age.pt"))
    with pytest.raises(NodeInputError, match="input 'direction' must be a TE_DIRECTION"):
        apply(latent, rand(C))
    with pytest.raises(Exception, match=r"broken.pt: .*NaN or infinite"):
        load("broken.pt")
    with pytest.raises(NodeInputError, match="'nothing.pt' was not found"):
        load("nothing.pt")


# ------------------------------------------------------------------------------------------------ mix
def test_mix_layers(generator, latent):
    ref = TransEditSampleLatent().sample(generator, 100, 3, 1.0)[0]
    out = TransEditMixLatents().mix(latent, ref, "coarse", "", 1.0)[0]
    torch.testing.assert_close(out.wplus[:, :4], ref.wplus[:, :4])
    torch.testing.assert_close(out.wplus[:, 4:], latent.wplus[:, 4:])
    half = TransEditMixLatents().mix(latent, ref, "fine", "", 0.5)[0]
    torch.testing.assert_close(half.wplus[:, 8:], 0.5 * (latent.wplus[:, 8:] + ref.wplus[:, 8:]))
    torch.testing.assert_close(half.wplus[:, :8], latent.wplus[:, :8])
    custom = TransEditMixLatents().mix(latent, ref, "custom", "1, 5-6", 1.0)[0]
    torch.testing.assert_close(custom.wplus[:, [1, 5, 6]], ref.wplus[:, [1, 5, 6]])
    torch.testing.assert_close(custom.wplus[:, [0, 2, 3, 4, 7, 8, 9]], latent.wplus[:, [0, 2, 3, 4, 7, 8, 9]])
    assert custom.extras["edits"][-1]["layers"] == [1, 5, 6]
    none = TransEditMixLatents().mix(latent, ref, "all", "", 0.0)[0]
    torch.testing.assert_close(none.wplus, latent.wplus)


def test_mix_broadcast(generator, latent):
    one = TransEditSampleLatent().sample(generator, 7, 1, 1.0)[0]
    out = TransEditMixLatents().mix(latent, one, "middle", "", 1.0)[0]  # one reference for the batch
    assert out.batch_size == 3
    torch.testing.assert_close(out.wplus[:, 4:8], one.wplus[:, 4:8].expand(3, -1, -1))
    many = TransEditMixLatents().mix(one, latent, "middle", "", 1.0)[0]  # one source, many references
    assert many.batch_size == 3 and many.extras["seed"] == 7
    torch.testing.assert_close(many.wplus[:, :4], one.wplus[:, :4].expand(3, -1, -1))
    torch.testing.assert_close(many.wplus[:, 4:8], latent.wplus[:, 4:8])


def test_mix_per_item_extras_follow_the_batch(latent):
    one = StyleLatent(latent.wplus[:1], extras={"images": torch.arange(1.0).reshape(1, 1), "names": ["a"]})
    many = TransEditMixLatents().mix(one, latent, "coarse", "", 1.0)[0]
    assert many.extras["images"].shape == (3, 1) and many.extras["names"] == ["a", "a", "a"]


def test_mix_bad_inputs(generator, latent):
    node = "TransEdit Mix Latents"
    two = TransEditSampleLatent().sample(generator, 5, 2, 1.0)[0]
    with pytest.raises(NodeInputError, match=rf"{node}: input 'latent_b' has a batch of 2 but 'latent_a' has 3"):
        TransEditMixLatents().mix(latent, two, "coarse", "", 1.0)
    other = StyleLatent(rand(3, 14, 512))
    with pytest.raises(NodeInputError, match=r"input 'latent_b' holds W\+ \[14, 512\]"):
        TransEditMixLatents().mix(latent, other, "coarse", "", 1.0)
    with pytest.raises(NodeInputError, match="input 'custom_layers' .*do not exist"):
        TransEditMixLatents().mix(latent, latent, "custom", "8-12", 1.0)
    with pytest.raises(NodeInputError, match="input 'custom_layers' .*reversed"):
        TransEditMixLatents().mix(latent, latent, "custom", "5-2", 1.0)
    with pytest.raises(NodeInputError, match="input 'weight' must be between 0.0 and 1.0"):
        TransEditMixLatents().mix(latent, latent, "coarse", "", 1.5)
    with pytest.raises(NodeInputError, match="input 'layers' must be one of"):
        TransEditMixLatents().mix(latent, latent, "face", "", 1.0)
    tiny = StyleLatent(rand(1, 8, 32))  # 32 px generator: no fine layers
    with pytest.raises(NodeInputError, match="input 'layers' .*do not exist"):
        TransEditMixLatents().mix(tiny, tiny, "fine", "", 1.0)


# ---------------------------------------------------------------------------------------------- sweep
def test_sweep_order(latent):
    age = load("age.pt")
    out = TransEditLatentSweep().sweep(latent, age, -2.0, 2.0, 5, -1, -1)[0]
    assert out.wplus.shape == (15, N, C) and out.wplus.dtype == torch.float32
    strengths = [-2.0, -1.0, 0.0, 1.0, 2.0]
    for i in range(3):
        for j, s in enumerate(strengths):
            single = apply(StyleLatent(latent.wplus[i:i + 1]), age, s)
            torch.testing.assert_close(out.wplus[i * 5 + j], single.wplus[0])  # image-major
    assert out.extras["edits"][-1]["strengths"] == strengths and out.extras["edits"][-1]["order"] == "image-major"
    torch.testing.assert_close(out.wplus[2 * 5 + 2], latent.wplus[2])  # strength 0 is the input


def test_sweep_ranges_and_errors(latent, generator):
    d = TransEditSeFa().factorize(generator, 1, 4, 8)[0]
    out = TransEditLatentSweep().sweep(latent, d, 0.0, 1.0, 2, -1, -1)[0]
    torch.testing.assert_close(out.wplus[1, 4:8], latent.wplus[0, 4:8] + 3.0 * d.vector)
    torch.testing.assert_close(out.wplus[1, 8:], latent.wplus[0, 8:])
    node = "TransEdit Latent Sweep"
    with pytest.raises(NodeInputError, match=rf"{node}: input 'steps' must be between 2 and 64"):
        TransEditLatentSweep().sweep(latent, d, 0.0, 1.0, 1, -1, -1)
    big = StyleLatent(rand(100, N, C))
    with pytest.raises(NodeInputError, match="input 'steps' x a batch of 100"):
        TransEditLatentSweep().sweep(big, d, 0.0, 1.0, 64, -1, -1)
    with pytest.raises(NodeInputError, match="input 'to_strength' must be between"):
        TransEditLatentSweep().sweep(latent, d, 0.0, 1e9, 5, -1, -1)
    with pytest.raises(NodeInputError, match="input 'end_layer' .*reversed"):
        TransEditLatentSweep().sweep(latent, d, 0.0, 1.0, 3, 7, 5)
    with pytest.raises(NodeInputError, match="input 'direction' .*does not fit"):
        TransEditLatentSweep().sweep(latent, load("ffhq_age_512.pt"), 0.0, 1.0, 3, -1, -1)


# ---------------------------------------------------------------------------------- reference editing
@pytest.fixture(scope="module")
def random_edit_transformer(tmp_path_factory):
    """A small random EditTransformer in the official ref-edit container (no ../shared needed)."""
    torch.manual_seed(0)
    model = EditTransformer(EditTransformerConfig(d_model=C, nhead=4, dim_feedforward=2 * C)).eval()
    state = {f"encoder.module.{k}": v for k, v in model.state_dict().items()}
    folder = tmp_path_factory.mktemp("gan_encoders")
    atomic_write(folder / "ref_edit.pt", lambda tmp: torch.save({"state_dict": state, "opts": {}}, tmp))
    return folder, model


def test_reference_edit_random(random_edit_transformer, latent, generator):
    folder, model = random_edit_transformer
    bridge.set_fallback_folder("gan_encoders", [str(folder)])
    assert "ref_edit.pt" in TransEditLoadEditTransformer.INPUT_TYPES()["required"]["transformer_name"][0]
    handle = TransEditLoadEditTransformer().load("ref_edit.pt")[0]
    assert isinstance(handle, EditTransformerHandle) and handle.config.d_model == C
    ref = TransEditSampleLatent().sample(generator, 50, 3, 1.0)[0]
    out = TransEditReferenceEdit().edit(handle, latent, ref)[0]
    assert out.wplus.shape == (3, N, C) and out.wplus.dtype == torch.float32 and out.wplus.device.type == "cpu"
    with torch.no_grad():
        torch.testing.assert_close(out.wplus, model(latent.wplus, ref.wplus), atol=1e-5, rtol=1e-5)
    assert out.generator == latent.generator and out.extras["edits"][-1] == {"reference_edit": "ref_edit.pt"}
    one_ref = StyleLatent(ref.wplus[1:2])
    bcast = TransEditReferenceEdit().edit(handle, latent, one_ref)[0]
    with torch.no_grad():
        torch.testing.assert_close(bcast.wplus[2], model(latent.wplus[2:3], ref.wplus[1:2])[0], atol=1e-5, rtol=1e-5)
    node = "TransEdit Reference Edit"
    with pytest.raises(NodeInputError, match=rf"{node}: input 'reference' has a batch of 2 but 'latent' has 3"):
        TransEditReferenceEdit().edit(handle, latent, StyleLatent(ref.wplus[:2]))
    with pytest.raises(NodeInputError, match="input 'latent' has style_dim 512"):
        TransEditReferenceEdit().edit(handle, StyleLatent(rand(1, 18, 512)), StyleLatent(rand(1, 18, 512)))
    with pytest.raises(NodeInputError, match="input 'edit_transformer' must be a TE_EDIT_TRANSFORMER"):
        TransEditReferenceEdit().edit(model, latent, ref)
    nan = StyleLatent(torch.full((3, N, C), float("nan")))
    with pytest.raises(NodeInputError, match="input 'reference' contains NaN"):
        TransEditReferenceEdit().edit(handle, latent, nan)
    with pytest.raises(NodeInputError, match="'missing.pt' was not found"):
        TransEditLoadEditTransformer().load("missing.pt")


def test_reference_edit_matches_official(sg2_fixtures):
    from safetensors.torch import load_file

    bridge.set_fallback_folder("gan_encoders", [str(sg2_fixtures)])
    handle = TransEditLoadEditTransformer().load("edit_transformer_small.pt")[0]
    io = load_file(str(sg2_fixtures / "io_edit_transformer_small.safetensors"))
    src, ref = StyleLatent(io["in_src_wplus"]), StyleLatent(io["in_ref_wplus"])
    out = TransEditReferenceEdit().edit(handle, src, ref)[0]
    torch.testing.assert_close(out.wplus, io["out_codes"], atol=1e-5, rtol=1e-5)
    # a single reference broadcast to the batch equals pairing it with every item
    one = TransEditReferenceEdit().edit(handle, src, StyleLatent(io["in_ref_wplus"][:1]))[0]
    first = TransEditReferenceEdit().edit(handle, StyleLatent(io["in_src_wplus"][:1]),
                                          StyleLatent(io["in_ref_wplus"][:1]))[0]
    torch.testing.assert_close(one.wplus[0], first.wplus[0], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(one.wplus[0], io["out_codes"][0], atol=1e-5, rtol=1e-5)
