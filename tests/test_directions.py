"""Latent directions: every file format, GANSpace's formula, SeFa, presets, layer groups, errors."""
import zipfile

import numpy as np
import pytest
import torch

from transedit.models.core.directions import (GANSPACE_PCA_FILES, GANSPACE_PRESETS, SEFA_DEFAULT_STRENGTH,
                                              CheckpointError, DirectionError, LatentDirection, ganspace_preset,
                                              layer_group, load_direction, load_ganspace_pca, mix_wplus, parse_layers,
                                              save_direction, sefa_direction, sefa_factorize, sefa_modulation_layers)
from transedit.models.stylegan.generator import StyleGAN2Generator

N, C = 18, 512


def rand(*shape, seed=0, dtype=torch.float32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def random_pca(c=C, k=8, seed=0):
    """A PCA file in e4e's layout: {'mean': (1, C), 'comp': (K, 1, C) orthonormal, 'std': (K,)}."""
    q, _ = torch.linalg.qr(rand(c, k, seed=seed))
    return {"mean": rand(1, c, seed=seed + 1), "comp": q.T.contiguous().reshape(k, 1, c),
            "std": torch.linspace(3.0, 1.0, k)}


# ---------------------------------------------------------------------------------------- file formats
def test_interfacegan_one_w(tmp_path):
    v = rand(1, C)
    torch.save(v, tmp_path / "age.pt")
    d = load_direction(tmp_path / "age.pt")
    assert d.kind == "add" and d.vector.shape == (C,) and not d.per_layer and d.name == "age"
    assert (d.start, d.end, d.default_strength) == (0, None, 1.0)
    w = rand(2, N, C, seed=1)
    out = d.apply(w, 3.0)
    torch.testing.assert_close(out, w + 3.0 * v)  # (1, C) broadcasts over batch and layers
    part = d.apply(w, -2.0, 4, 8)
    torch.testing.assert_close(part[:, 4:8], w[:, 4:8] - 2.0 * v)
    torch.testing.assert_close(part[:, :4], w[:, :4])
    torch.testing.assert_close(part[:, 8:], w[:, 8:])
    assert out.dtype == torch.float32 and not torch.equal(out, w)


def test_interfacegan_per_layer(tmp_path):
    v = rand(1, N, C)
    torch.save(v, tmp_path / "pose.pth")
    d = load_direction(tmp_path / "pose.pth")
    assert d.vector.shape == (N, C) and d.per_layer
    w = rand(3, N, C, seed=2)
    torch.testing.assert_close(d.apply(w, 1.5), w + 1.5 * v)
    part = d.apply(w, 1.0, 2, 5)
    torch.testing.assert_close(part[:, 2:5], w[:, 2:5] + v[:, 2:5])  # each row its own vector
    torch.testing.assert_close(part[:, 5:], w[:, 5:])


def test_saved_on_a_gpu_loads_on_cpu(tmp_path, monkeypatch):
    """e4e's files were partly saved from cuda:0 tensors; the storage location in the file says so."""
    path = tmp_path / "smile_cuda.pt"
    with monkeypatch.context() as m:
        m.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")
        torch.save(rand(1, C, seed=3), path)
    with zipfile.ZipFile(path) as z:
        assert b"cuda:0" in z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))
    d = load_direction(path)
    assert d.vector.device.type == "cpu"
    torch.testing.assert_close(d.vector, rand(1, C, seed=3)[0])


def test_styleclip_npy_both_shapes(tmp_path):
    a = (rand(N, C, seed=4, dtype=torch.float64) * 7.0).numpy()  # float64, not normalised
    np.save(tmp_path / "clip_a.npy", a)
    da = load_direction(tmp_path / "clip_a.npy")
    assert da.vector.dtype == torch.float32 and da.vector.shape == (N, C)
    np.testing.assert_allclose(da.vector.numpy(), a.astype(np.float32))  # unchanged, no normalisation
    b = rand(1, N * C, seed=5).numpy()
    np.save(tmp_path / "clip_b.npy", b)
    db = load_direction(tmp_path / "clip_b.npy")
    assert db.vector.shape == (N * C,)
    w = rand(2, N, C, seed=6)
    torch.testing.assert_close(db.apply(w, 2.0), w + 2.0 * torch.from_numpy(b).reshape(N, C))
    torch.testing.assert_close(db.resolve_vector(N, C), torch.from_numpy(b).reshape(N, C))


def test_safetensors_round_trip_with_metadata(tmp_path):
    d = LatentDirection(name="my smile", vector=rand(N, C, seed=7), start=3, end=9, default_strength=2.5,
                        generator="abc123", generator_name="ffhq.pt", extras={"note": "hand-made"})
    path = save_direction(d, tmp_path / "sub" / "smile.safetensors")
    back = load_direction(path)
    assert (back.name, back.kind, back.start, back.end, back.default_strength) == ("my smile", "add", 3, 9, 2.5)
    assert (back.generator, back.generator_name, back.extras["note"]) == ("abc123", "ffhq.pt", "hand-made")
    torch.testing.assert_close(back.vector, d.vector)
    with pytest.raises(FileExistsError):
        save_direction(d, path)
    save_direction(LatentDirection(name="other", vector=rand(C, seed=8)), path, overwrite=True)
    again = load_direction(path)
    assert again.name == "other" and again.end is None and again.vector.shape == (C,)
    with pytest.raises(ValueError, match="safetensors"):
        save_direction(d, tmp_path / "x.pt")


def test_safetensors_ganspace_round_trip(tmp_path):
    torch.save(random_pca(k=80), tmp_path / "ffhq_pca.pt")
    d = ganspace_preset(load_ganspace_pca(tmp_path / "ffhq_pca.pt"), "ffhq", "smile")
    back = load_direction(save_direction(d, tmp_path / "smile.safetensors"))
    assert back.kind == "ganspace" and (back.start, back.end, back.default_strength) == (4, 5, -20.0)
    w = rand(2, N, C, seed=9)
    torch.testing.assert_close(back.apply(w, -20.0), d.apply(w, -20.0))


# ------------------------------------------------------------------------------------------- GANSpace
def e4e_ganspace_edit(latents, pca, component, start, end, strength):
    """GANSpace as e4e's editings/ganspace.py describes it, re-derived one latent at a time:
    centre on the PCA mean, take the coordinate of W+ row 0 along the component in std units, and add
    (strength - coordinate) * component * std to every row of [start, end)."""
    out = []
    comp = pca["comp"][component].reshape(-1)
    std = pca["std"][component]
    for latent in latents:
        centred = latent - pca["mean"]
        coord = torch.dot(centred[0], comp) / std
        delta = (strength - coord) * comp * std
        edited = latent.clone()
        for row in range(start, end):
            edited[row] = edited[row] + delta
        out.append(edited)
    return torch.stack(out)


def test_ganspace_pca_file_and_formula(tmp_path):
    raw = random_pca()
    torch.save(raw, tmp_path / "ffhq_pca.pt")
    pca = load_ganspace_pca(tmp_path / "ffhq_pca.pt")
    assert pca.n_components == 8 and pca.comp.shape == (8, C) and pca.mean.shape == (C,)
    w = rand(3, N, C, seed=10)
    for component, start, end, strength in [(0, 0, 18, 1.5), (3, 4, 5, -20.0), (7, 7, 10, 24.0)]:
        d = pca.direction(component, start, end, strength)
        torch.testing.assert_close(d.apply(w, strength), e4e_ganspace_edit(w, raw, component, start, end, strength),
                                   atol=1e-4, rtol=1e-5)
    # loading the PCA file as a direction: the chosen component on every layer, strength = target coordinate
    d = load_direction(tmp_path / "ffhq_pca.pt", component=2)
    assert d.kind == "ganspace" and (d.start, d.end) == (0, None) and d.extras["component"] == 2
    torch.testing.assert_close(d.apply(w, 2.0), e4e_ganspace_edit(w, raw, 2, 0, N, 2.0), atol=1e-4, rtol=1e-5)
    with pytest.raises(DirectionError, match="component 8 does not exist"):
        load_direction(tmp_path / "ffhq_pca.pt", component=8)


def test_ganspace_sets_the_coordinate():
    raw = random_pca(seed=3)
    from transedit.models.core.directions import GanSpacePCA

    pca = GanSpacePCA(raw["mean"].reshape(-1), raw["comp"].reshape(8, C), raw["std"])
    d = pca.direction(1, 0, 5, 2.0)  # includes row 0, like the cars viewpoint preset
    w = rand(2, N, C, seed=11)
    once = d.apply(w, 2.0)
    coord = ((once[:, 0] - pca.mean) @ pca.comp[1]) / pca.std[1]
    torch.testing.assert_close(coord, torch.full((2,), 2.0), atol=1e-4, rtol=0)
    torch.testing.assert_close(d.apply(once, 2.0), once, atol=1e-4, rtol=0)  # idempotent: it sets, not adds


def test_presets_table():
    assert GANSPACE_PRESETS["ffhq"] == {"eye_openness": (54, 7, 8, 20.0), "smile": (46, 4, 5, -20.0),
                                        "trimmed_beard": (58, 7, 9, 20.0), "white_hair": (57, 7, 10, -24.0),
                                        "lipstick": (34, 10, 11, 20.0)}
    assert GANSPACE_PRESETS["cars"] == {"viewpoint_i": (0, 0, 5, 2.0), "viewpoint_ii": (0, 0, 5, -2.0),
                                        "cube": (16, 3, 6, 25.0), "color": (22, 9, 11, -8.0),
                                        "grass": (41, 9, 11, -18.0)}
    assert GANSPACE_PCA_FILES == {"ffhq": "ffhq_pca.pt", "cars": "cars_pca.pt"}
    n_latent = {"ffhq": 18, "cars": 16}  # 1024 px faces, 512 px cars
    for domain, table in GANSPACE_PRESETS.items():
        for name, (component, start, end, _) in table.items():
            assert 0 <= component < 80 and 0 <= start < end <= n_latent[domain], (domain, name)


def test_preset_direction():
    raw = random_pca(k=80, seed=5)
    from transedit.models.core.directions import GanSpacePCA

    pca = GanSpacePCA(raw["mean"].reshape(-1), raw["comp"].reshape(80, C), raw["std"], "ffhq_pca.pt")
    d = ganspace_preset(pca, "ffhq", "white_hair")
    assert (d.kind, d.start, d.end, d.default_strength) == ("ganspace", 7, 10, -24.0)
    assert d.extras == {"component": 57, "preset": "ffhq/white_hair"}
    torch.testing.assert_close(d.vector, pca.comp[57])
    w = rand(1, N, C, seed=12)
    torch.testing.assert_close(d.apply(w, -24.0), e4e_ganspace_edit(w, raw, 57, 7, 10, -24.0), atol=1e-4, rtol=1e-5)
    with pytest.raises(KeyError):
        ganspace_preset(pca, "ffhq", "nose")


# ----------------------------------------------------------------------------------------------- SeFa
@pytest.fixture(scope="module")
def small_generator():
    from transedit.models.stylegan.generator import StyleGAN2Config

    torch.manual_seed(0)
    cfg = StyleGAN2Config(size=32, style_dim=32, n_mlp=2, channels={4: 16, 8: 16, 16: 16, 32: 8})
    return StyleGAN2Generator(cfg).eval()


def direct_sefa_matrix(g, layers):
    """AᵀA re-derived from the W+ -> layer wiring: row 0 drives conv1, row i drives convs[i-1], and the
    last row only the final ToRGB; A stacks each chosen layer's modulation weight, rows unit-normalised."""
    blocks = []
    for i in layers:
        if i == 0:
            lin = g.conv1.conv.modulation
        elif i == g.n_latent - 1:
            lin = g.to_rgbs[len(g.to_rgbs) - 1].conv.modulation
        else:
            lin = g.convs[i - 1].conv.modulation
        w = lin.weight.detach().double()
        blocks.append(w / w.norm(dim=1, keepdim=True))
    a = torch.cat(blocks)
    return a.T @ a


def test_sefa_eigenvectors(small_generator):
    g = small_generator
    assert len(sefa_modulation_layers(g)) == g.n_latent == 8
    values, vectors = sefa_factorize(g, range(0, 8))
    assert vectors.shape == (32, 32) and values.shape == (32,)
    torch.testing.assert_close(vectors @ vectors.T, torch.eye(32, dtype=torch.float64), atol=1e-10, rtol=0)
    m = direct_sefa_matrix(g, range(0, 8))
    torch.testing.assert_close(m @ vectors.T, vectors.T * values, atol=1e-8, rtol=1e-8)  # M v = λ v
    assert bool((values[:-1] >= values[1:]).all()) and values[0] == values.max()
    top = torch.linalg.eigvalsh(m).max()
    torch.testing.assert_close(values[0], top)
    # the top direction maximises vᵀMv over unit vectors
    probe = torch.nn.functional.normalize(torch.randn(100, 32, dtype=torch.float64), dim=1)
    assert ((probe @ m * probe).sum(1) <= values[0] + 1e-9).all()
    # reproducible, sign fixed (largest entry positive)
    values2, vectors2 = sefa_factorize(g, range(0, 8))
    assert torch.equal(vectors, vectors2) and torch.equal(values, values2)
    idx = vectors.abs().argmax(1)
    assert (vectors[torch.arange(32), idx] > 0).all()


def test_sefa_layer_range(small_generator):
    g = small_generator
    _, coarse = sefa_factorize(g, range(0, 2))
    _, fine = sefa_factorize(g, range(4, 8))
    assert abs(float(coarse[0] @ fine[0])) < 0.99  # different layers, different directions
    values, vectors = sefa_factorize(g, [2, 3])
    torch.testing.assert_close(direct_sefa_matrix(g, [2, 3]) @ vectors.T, vectors.T * values, atol=1e-8, rtol=1e-8)
    d = sefa_direction(g, 1, 2, 4, fingerprint="fp", generator_name="g.pt")
    assert (d.start, d.end, d.default_strength, d.generator) == (2, 4, SEFA_DEFAULT_STRENGTH, "fp")
    torch.testing.assert_close(d.vector, vectors[1].float())
    assert d.extras["component"] == 1 and d.extras["eigenvalue"] == pytest.approx(float(values[1]))
    w = rand(2, 8, 32, seed=13)
    out = d.apply(w, 3.0)
    torch.testing.assert_close(out[:, 2:4], w[:, 2:4] + 3.0 * d.vector)
    torch.testing.assert_close(out[:, [0, 1, 4, 5, 6, 7]], w[:, [0, 1, 4, 5, 6, 7]])
    with pytest.raises(DirectionError, match="reversed"):
        sefa_direction(g, 0, 5, 3)
    with pytest.raises(DirectionError, match="empty"):
        sefa_direction(g, 0, 3, 3)
    with pytest.raises(DirectionError, match="outside"):
        sefa_direction(g, 0, 0, 9)
    with pytest.raises(DirectionError, match="component 32"):
        sefa_direction(g, 32)


# --------------------------------------------------------------------------------- shapes and ranges
def test_direction_for_another_generator_is_a_clear_error():
    w = rand(2, 10, 64)
    with pytest.raises(DirectionError, match=r"does not fit W\+ \[10, 64\]"):
        LatentDirection("ffhq", rand(C)).apply(w, 1.0)
    with pytest.raises(DirectionError, match="different style_dim or number of layers"):
        LatentDirection("per-layer", rand(N, 64)).apply(w, 1.0)
    with pytest.raises(DirectionError):
        LatentDirection("flat", rand(N * 64)).apply(w, 1.0)


def test_layer_ranges():
    d = LatentDirection("d", rand(C))
    w = rand(1, N, C)
    with pytest.raises(DirectionError, match="reversed"):
        d.apply(w, 1.0, 8, 4)
    with pytest.raises(DirectionError, match="empty"):
        d.apply(w, 1.0, 4, 4)
    with pytest.raises(DirectionError, match="outside"):
        d.apply(w, 1.0, 10, 19)
    with pytest.raises(DirectionError, match="outside"):
        LatentDirection("d", rand(C), start=10, end=18).apply(rand(1, 14, C), 1.0)  # 18-layer range, 14 rows
    with pytest.raises(ValueError, match="empty or reversed"):
        LatentDirection("d", rand(C), start=5, end=5)


def test_layer_groups_and_parsing():
    assert layer_group("coarse", 18) == [0, 1, 2, 3]
    assert layer_group("middle", 18) == [4, 5, 6, 7]
    assert layer_group("fine", 18) == list(range(8, 18))
    assert layer_group("fine", 14) == list(range(8, 14))  # 256 px: same resolutions, fewer fine rows
    assert layer_group("coarse+middle", 10) == list(range(8))
    assert layer_group("all", 10) == list(range(10))
    with pytest.raises(DirectionError, match="do not exist"):
        layer_group("fine", 8)  # 32 px has no 64 px layers
    assert parse_layers("0-3, 8, 10-11", 18) == [0, 1, 2, 3, 8, 10, 11]
    assert parse_layers(" Middle ", 18) == [4, 5, 6, 7]
    for bad, msg in [("5-2", "reversed"), ("x", "cannot read"), ("", "no layers"), ("17-18", "do not exist"),
                     ("1-2-3", "cannot read")]:
        with pytest.raises(DirectionError, match=msg):
            parse_layers(bad, 18)


def test_mix_wplus_broadcast():
    a, b = rand(3, 10, 8, seed=1), rand(1, 10, 8, seed=2)
    out = mix_wplus(a, b, [0, 1], 0.25)
    torch.testing.assert_close(out[:, :2], 0.75 * a[:, :2] + 0.25 * b[:, :2].expand(3, -1, -1))
    torch.testing.assert_close(out[:, 2:], a[:, 2:])
    assert mix_wplus(b, a, [0], 1.0).shape == (3, 10, 8)
    with pytest.raises(DirectionError, match="cannot be paired"):
        mix_wplus(a, rand(2, 10, 8), [0], 1.0)
    with pytest.raises(DirectionError, match="shapes differ"):
        mix_wplus(a, rand(3, 10, 16), [0], 1.0)


# ----------------------------------------------------------------------------------------- bad files
def test_nan_and_inf_files_name_the_file(tmp_path):
    bad = rand(1, C)
    bad[0, 3] = float("nan")
    torch.save(bad, tmp_path / "nan_dir.pt")
    inf = rand(N, C).numpy()
    inf[2, 5] = np.inf
    np.save(tmp_path / "inf_dir.npy", inf)
    pca = random_pca()
    pca["comp"][1, 0, 7] = float("inf")
    torch.save(pca, tmp_path / "bad_pca.pt")
    from safetensors.torch import save_file

    save_file({"direction": bad}, str(tmp_path / "nan_dir.safetensors"))
    for name in ("nan_dir.pt", "inf_dir.npy", "bad_pca.pt", "nan_dir.safetensors"):
        with pytest.raises(CheckpointError, match=rf"^{name}: .*NaN or infinite") as err:
            load_direction(tmp_path / name)
        assert err.value.path.endswith(name)


def test_other_bad_files(tmp_path):
    torch.save({"a": rand(3), "b": rand(4)}, tmp_path / "dict.pt")
    with pytest.raises(CheckpointError, match="dict.pt: is a dict"):
        load_direction(tmp_path / "dict.pt")
    torch.save(torch.arange(512), tmp_path / "ints.pt")
    with pytest.raises(CheckpointError, match="not a floating-point"):
        load_direction(tmp_path / "ints.pt")
    np.save(tmp_path / "obj.npy", np.array([{"x": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(CheckpointError, match="obj.npy: could not be read"):
        load_direction(tmp_path / "obj.npy")
    torch.save(rand(2, 3, 4, 5), tmp_path / "4d.pt")
    with pytest.raises(CheckpointError, match="shape"):
        load_direction(tmp_path / "4d.pt")
    with pytest.raises(CheckpointError, match="file not found"):
        load_direction(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="junk.pt"):
        load_direction(tmp_path / "junk.pt")
    torch.save(rand(1, C), tmp_path / "plain.pt")
    with pytest.raises(CheckpointError, match="not a GANSpace PCA"):
        load_ganspace_pca(tmp_path / "plain.pt")
