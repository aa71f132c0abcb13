"""Checkpoint registry: formats, shape inference, conversion, and every kind of bad file."""
import argparse
import os
import pickle
import subprocess
import sys

import pytest
import torch

from transedit.cli import main as cli_main
from transedit.models.registry import CheckpointError, load_stylegan2, read_checkpoint, save_stylegan2_safetensors
from transedit.random_weights import save_random_generator
from transedit.models.stylegan.generator import StyleGAN2Config, StyleGAN2Generator


def images(desc, seed=0):
    w = torch.randn(2, desc.config.n_latent, desc.config.style_dim, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return desc.model.synthesis(w)


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_random_generator_round_trip(tmp_path, tiny_config, suffix):
    path = save_random_generator(tmp_path / f"g{suffix}", tiny_config, seed=3)
    desc = load_stylegan2(path)
    assert desc.config == tiny_config
    assert desc.latent_avg.shape == (tiny_config.style_dim,) and desc.latent_avg_source == "checkpoint"
    assert desc.source_format == ("safetensors" if suffix == ".safetensors" else "torch")
    out = images(desc)
    assert out.shape == (2, 3, 32, 32) and torch.isfinite(out).all()


def test_convert_cli_is_exact_atomic_and_never_clobbers(tmp_path, tiny_config, capsys):
    src = save_random_generator(tmp_path / "g.pt", tiny_config)
    dst = tmp_path / "out" / "g.safetensors"
    assert cli_main(["convert", str(src), str(dst)]) == 0
    a, b = load_stylegan2(src), load_stylegan2(dst)
    torch.testing.assert_close(images(a), images(b), rtol=0, atol=0)
    torch.testing.assert_close(a.latent_avg, b.latent_avg, rtol=0, atol=0)
    assert a.fingerprint == b.fingerprint
    assert sorted(os.listdir(dst.parent)) == ["g.safetensors"]  # no temp files left behind

    before = dst.read_bytes()
    assert cli_main(["convert", str(src), str(dst)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert dst.read_bytes() == before
    assert cli_main(["convert", str(src), str(dst), "--overwrite"]) == 0
    assert cli_main(["info", str(dst)]) == 0
    assert "32x32" in capsys.readouterr().out


def test_train_py_checkpoint_with_namespace_and_no_latent_avg(tmp_path, tiny_config):
    g = StyleGAN2Generator(tiny_config)
    ckpt = {"g": g.state_dict(), "d": {"convs.0.0.weight": torch.zeros(1)}, "g_ema": g.state_dict(),
            "g_optim": {}, "d_optim": {}, "args": argparse.Namespace(size=32, lr=0.002), "ada_aug_p": 0.0}
    torch.save(ckpt, tmp_path / "train.pt")
    desc = load_stylegan2(tmp_path / "train.pt")
    assert desc.weights == "g_ema" and desc.latent_avg_source == "estimated"
    assert any("estimated" in n for n in desc.notes)


def test_dataparallel_prefix_and_g_only(tmp_path, tiny_config):
    g = StyleGAN2Generator(tiny_config)
    torch.save({"g": {"module." + k: v for k, v in g.state_dict().items()}}, tmp_path / "g.pt")
    desc = load_stylegan2(tmp_path / "g.pt")
    assert desc.weights == "g" and any("g_ema" in n for n in desc.notes)


@pytest.mark.parametrize("size", [4, 8, 256])
def test_sizes_and_inference(tmp_path, size):
    cfg = StyleGAN2Config(size=size, style_dim=16, n_mlp=1, channels={r: 8 for r in [4, 8, 16, 32, 64, 128, 256]})
    desc = load_stylegan2(save_random_generator(tmp_path / "g.pt", cfg))
    assert desc.config.size == size and desc.config.n_latent == 2 * size.bit_length() - 4
    assert images(desc).shape[-1] == size


def test_config_limits():
    for bad in (2, 3, 48, 4096):
        with pytest.raises(ValueError, match="power of two"):
            StyleGAN2Config(size=bad)
    assert StyleGAN2Config(size=2048).n_latent == 20


# ------------------------------------------------------------------------------------ bad input
def assert_names_file(err, path):
    assert os.path.basename(str(path)) in str(err.value)


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="not found") as e:
        load_stylegan2(tmp_path / "nope.pt")
    assert_names_file(e, "nope.pt")


def test_unknown_file_type(tmp_path):
    p = tmp_path / "readme.pt"
    p.write_text("this is not a checkpoint at all")
    with pytest.raises(CheckpointError, match="unrecognised file type") as e:
        load_stylegan2(p)
    assert_names_file(e, p)
    assert "TransEdit reads" in str(e.value)


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_truncated_file(tmp_path, tiny_config, suffix):
    src = save_random_generator(tmp_path / f"g{suffix}", tiny_config)
    data = src.read_bytes()
    bad = tmp_path / f"cut{suffix}"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError) as e:
        load_stylegan2(bad)
    assert_names_file(e, bad)
    assert "truncated" in str(e.value) or "corrupt" in str(e.value)
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty or truncated"):
        load_stylegan2(tmp_path / "empty.pt")


def test_not_a_stylegan_checkpoint(tmp_path):
    torch.save({"state_dict": {"fc.weight": torch.zeros(2, 2), "fc.bias": torch.zeros(2)}}, tmp_path / "cls.pth")
    with pytest.raises(CheckpointError, match="contains no StyleGAN2 generator") as e:
        load_stylegan2(tmp_path / "cls.pth")
    assert "fc.weight" in str(e.value)


def test_inconsistent_stylegan_layout(tmp_path, tiny_config):
    sd = StyleGAN2Generator(tiny_config).state_dict()
    sd["convs.1.conv.weight"] = torch.zeros(1, 16, 9, 3, 3)
    torch.save({"g_ema": sd}, tmp_path / "bad.pt")
    with pytest.raises((CheckpointError, RuntimeError)) as e:
        load_stylegan2(tmp_path / "bad.pt")
    assert "bad.pt" in str(e.value) or "size mismatch" in str(e.value)


def test_stylegan3_state_dict(tmp_path):
    torch.save({"G_ema": {"synthesis.L0_36_512.weight": torch.zeros(1), "synthesis.input.freqs": torch.zeros(1)}},
               tmp_path / "sg3.pt")
    torch.save({"synthesis.L0_36_512.weight": torch.zeros(1), "synthesis.input.freqs": torch.zeros(1)},
               tmp_path / "sg3_sd.pt")
    for name in ("sg3.pt", "sg3_sd.pt"):
        with pytest.raises(CheckpointError, match="StyleGAN3"):
            load_stylegan2(tmp_path / name)


class _Evil:
    def __init__(self, canary):
        self.canary = canary

    def __reduce__(self):
        return (os.system, (f"touch {self.canary}",))


@pytest.mark.parametrize("writer", ["torch.save", "pickle"])
def test_pickle_that_runs_code_is_refused(tmp_path, writer):
    canary = tmp_path / "PWNED"
    path = tmp_path / "evil.pt"
    payload = {"g_ema": _Evil(canary), "latent_avg": torch.zeros(4)}
    if writer == "torch.save":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=2))
    with pytest.raises(CheckpointError, match="refusing to load") as e:
        read_checkpoint(path)
    assert_names_file(e, path)
    assert not canary.exists()


def test_loading_never_imports_modules_named_in_the_file(tmp_path):
    """A pickle naming an importable module must not import it (checked in a clean interpreter)."""
    path = tmp_path / "imp.pt"
    code = (
        "import pickle, sys\n"
        "class R:\n"
        "    def __reduce__(self):\n"
        "        import http.server\n"
        "        return (http.server.test, ())\n"
        f"open({str(path)!r}, 'wb').write(pickle.dumps({{'g_ema': R()}}, protocol=2))\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    check = (
        "import sys\n"
        "from transedit.models.registry import read_checkpoint, CheckpointError\n"
        "try:\n"
        f"    read_checkpoint({str(path)!r})\n"
        "except CheckpointError as e:\n"
        "    print('refused', e)\n"
        "print('imported' if 'http.server' in sys.modules else 'clean')\n"
    )
    out = subprocess.run([sys.executable, "-c", check], check=True, capture_output=True, text=True).stdout
    assert "refused" in out and out.strip().endswith("clean")


def test_save_refuses_to_overwrite(tmp_path, tiny_config):
    p = save_random_generator(tmp_path / "g.safetensors", tiny_config)
    before = p.read_bytes()
    with pytest.raises(FileExistsError):
        save_stylegan2_safetensors(load_stylegan2(p), p)
    assert p.read_bytes() == before
