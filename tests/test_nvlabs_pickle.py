"""NVlabs .pkl reading without executing the file, and the G_ema -> rosinality conversion.

The pickles are built here from scratch (no NVlabs code, no network): throwaway nn.Modules whose
`__reduce__` mimics `torch_utils.persistence` (a call to `torch_utils.persistence._reconstruct_persistent_obj`
with a meta dict of type/version/module_src/class_name/state), pickled while fake `torch_utils`/`dnnlib`
modules are in sys.modules. The fakes are removed again before anything is loaded, so loading works with
no such module importable.
"""
from __future__ import annotations

import contextlib
import math
import os
import pickle
import subprocess
import sys
import types
import warnings

import numpy as np
import pytest
import torch

from transedit.models.stylegan import nvlabs_pickle as nv
from transedit.models.registry import load_stylegan2
from transedit.models.stylegan.generator import StyleGAN2Config, StyleGAN2Generator

FAKE_MODULES = ("torch_utils", "torch_utils.persistence", "dnnlib", "dnnlib.util")
SRC = "# stand-in for the embedded training/networks.py source\n"


# ------------------------------------------------------------------------------ fake NVlabs modules
def _fake_reconstruct(meta):  # never called: loading goes through transedit's stand-in
    raise AssertionError("the fake torch_utils.persistence must not be used for loading")


class FakeEasyDict(dict):
    pass


@contextlib.contextmanager
def fake_nvlabs_modules():
    """Install fake torch_utils.persistence / dnnlib.util so pickle can name them; always remove them."""
    assert not any(name in sys.modules for name in FAKE_MODULES)
    persistence = types.ModuleType("torch_utils.persistence")
    persistence._reconstruct_persistent_obj = _fake_reconstruct
    util = types.ModuleType("dnnlib.util")
    util.EasyDict = FakeEasyDict
    mods = {"torch_utils": types.ModuleType("torch_utils"), "torch_utils.persistence": persistence,
            "dnnlib": types.ModuleType("dnnlib"), "dnnlib.util": util}
    saved = (_fake_reconstruct.__module__, _fake_reconstruct.__qualname__, FakeEasyDict.__module__,
             FakeEasyDict.__qualname__)
    _fake_reconstruct.__module__, _fake_reconstruct.__qualname__ = "torch_utils.persistence", "_reconstruct_persistent_obj"
    FakeEasyDict.__module__, FakeEasyDict.__qualname__ = "dnnlib.util", "EasyDict"
    sys.modules.update(mods)
    try:
        yield
    finally:
        for name in FAKE_MODULES:
            sys.modules.pop(name, None)
        (_fake_reconstruct.__module__, _fake_reconstruct.__qualname__, FakeEasyDict.__module__,
         FakeEasyDict.__qualname__) = saved


@pytest.fixture(autouse=True)
def no_fake_modules_leak():
    yield
    assert not any(name in sys.modules for name in FAKE_MODULES)


def dump(obj, path, protocol=4):
    with fake_nvlabs_modules():
        with open(path, "wb") as f:
            pickle.dump(obj, f, protocol=protocol)
    return path


class Node(torch.nn.Module):
    """A module that pickles like a `torch_utils.persistence` object."""

    def __init__(self, class_name, module_src=SRC, **attrs):
        super().__init__()
        self._nv = (class_name, module_src)
        for k, v in attrs.items():
            setattr(self, k, v)

    def __reduce__(self):
        state = {k: v for k, v in self.__dict__.items() if k != "_nv"}
        meta = dict(type="class", version=6, module_src=self._nv[1], class_name=self._nv[0], state=state)
        return _fake_reconstruct, (meta,)


class Hostile:
    def __init__(self, func, *args):
        self.call = (func, args)

    def __reduce__(self):
        return self.call


# --------------------------------------------------------------------- rosinality -> NVlabs (tests only)
FILTER = torch.outer(torch.tensor([1.0, 3, 3, 1]), torch.tensor([1.0, 3, 3, 1])) / 64


def fc_node(weight, bias, lr=1.0, activation="linear"):
    node = Node("FullyConnectedLayer", activation=activation, weight_gain=np.float64(lr / math.sqrt(weight.shape[1])),
                bias_gain=lr)
    node.weight = torch.nn.Parameter(weight.clone())
    node.bias = torch.nn.Parameter(bias.clone())
    return node


def nvlabs_generator(g: StyleGAN2Generator, w_avg, c_dim=0, architecture="skip", module_src=SRC):
    """Our generator's weights in NVlabs' persistent-object tree (training/networks.py naming)."""
    sd, cfg = {k: v.detach() for k, v in g.state_dict().items()}, g.config
    clamp = cfg.conv_clamp
    mapping = Node("MappingNetwork", module_src=module_src, z_dim=cfg.input_dim, c_dim=c_dim, w_dim=cfg.style_dim,
                   num_ws=cfg.n_latent, num_layers=cfg.n_mlp, w_avg_beta=0.995)
    for i in range(cfg.n_mlp):
        setattr(mapping, f"fc{i}", fc_node(sd[f"style.{i + 1}.weight"], sd[f"style.{i + 1}.bias"], cfg.lr_mlp, "lrelu"))
    if c_dim:
        mapping.embed = fc_node(torch.randn(cfg.style_dim, c_dim), torch.zeros(cfg.style_dim))
    mapping.register_buffer("w_avg", w_avg.clone())

    noise = iter(range(cfg.num_noises))

    def layer(prefix, res, up):
        node = Node("SynthesisLayer", resolution=res, up=up, use_noise=True, activation="lrelu", conv_clamp=clamp,
                    padding=1, act_gain=np.float64(math.sqrt(2)))
        node.register_buffer("resample_filter", FILTER.clone())
        node.affine = fc_node(sd[prefix + "conv.modulation.weight"], sd[prefix + "conv.modulation.bias"])
        node.weight = torch.nn.Parameter(sd[prefix + "conv.weight"][0].clone())
        node.register_buffer("noise_const", sd[f"noises.noise_{next(noise)}"][0, 0].clone())
        node.noise_strength = torch.nn.Parameter(sd[prefix + "noise.weight"].reshape(()).clone())
        node.bias = torch.nn.Parameter(sd[prefix + "activate.bias"].clone())
        return node

    def torgb(prefix):
        w = sd[prefix + "conv.weight"][0]
        node = Node("ToRGBLayer", conv_clamp=clamp, weight_gain=np.float64(1 / math.sqrt(w.shape[1])))
        node.affine = fc_node(sd[prefix + "conv.modulation.weight"], sd[prefix + "conv.modulation.bias"])
        node.weight = torch.nn.Parameter(w.clone())
        node.bias = torch.nn.Parameter(sd[prefix + "bias"].reshape(3).clone())
        return node

    synthesis = Node("SynthesisNetwork", w_dim=cfg.style_dim, img_resolution=cfg.size, img_channels=3,
                     block_resolutions=cfg.resolutions, num_ws=cfg.n_latent)
    for k, res in enumerate(cfg.resolutions):
        block = Node("SynthesisBlock", in_channels=0 if res == 4 else cfg.channels[res // 2], resolution=res,
                     img_channels=3, is_last=res == cfg.size, architecture=architecture, use_fp16=False)
        block.register_buffer("resample_filter", FILTER.clone())
        if res == 4:
            block.const = torch.nn.Parameter(sd["input.input"][0].clone())
            block.conv1 = layer("conv1.", 4, 1)
            block.torgb = torgb("to_rgb1.")
        else:
            block.conv0 = layer(f"convs.{2 * k - 2}.", res, 2)
            block.conv1 = layer(f"convs.{2 * k - 1}.", res, 1)
            block.torgb = torgb(f"to_rgbs.{k - 1}.")
        setattr(synthesis, f"b{res}", block)
    gen = Node("Generator", module_src=module_src, z_dim=cfg.input_dim, c_dim=c_dim, w_dim=cfg.style_dim,
               img_resolution=cfg.size, img_channels=3, num_ws=cfg.n_latent,
               _init_kwargs=FakeEasyDict(mapping_kwargs=FakeEasyDict(num_layers=cfg.n_mlp)))
    gen.synthesis = synthesis
    gen.mapping = mapping
    return gen


def random_generator(seed=0, **overrides):
    kw = dict(size=32, style_dim=32, n_mlp=2, channels={4: 16, 8: 16, 16: 16, 32: 8}, conv_clamp=256.0)
    kw.update(overrides)
    torch.manual_seed(seed)
    g = StyleGAN2Generator(StyleGAN2Config(**kw)).eval()
    with torch.no_grad():
        for name, p in g.named_parameters():
            if name.endswith(("noise.weight", "bias")):
                p.add_(0.2 * torch.randn_like(p))
    return g


def snapshot(gen, **extra):
    snap = dict(training_set_kwargs=FakeEasyDict(class_name="training.dataset.ImageFolderDataset", resolution=32),
                G=gen, D=Node("Discriminator", c_dim=0), G_ema=gen, augment_pipe=None)
    snap.update(extra)
    return snap


# ------------------------------------------------------------------------------------------ round trip
@pytest.mark.parametrize("protocol", [0, 1, 2, 4, 5])
@pytest.mark.parametrize("overrides", [{}, dict(z_dim=24, style_dim=40, n_mlp=3, conv_clamp=None)],
                         ids=["square", "zdim-differs"])
def test_round_trip(tmp_path, protocol, overrides):
    g = random_generator(**overrides)
    w_avg = torch.randn(g.config.style_dim)
    path = dump(snapshot(nvlabs_generator(g, w_avg)), tmp_path / "network-snapshot-000100.pkl", protocol)

    sd, config, latent_avg = nv.nvlabs_generator_state(path)
    expected = g.config.to_dict()
    assert StyleGAN2Config(**config).to_dict() == expected
    assert config["z_dim"] == overrides.get("z_dim")
    torch.testing.assert_close(latent_avg, w_avg, rtol=0, atol=0)

    loaded = StyleGAN2Generator(StyleGAN2Config(**config)).eval()
    loaded.load_state_dict(sd, strict=True)
    for key, value in g.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    z = torch.randn(3, g.config.input_dim)
    with torch.no_grad():
        assert torch.equal(loaded([z], truncation=0.7, truncation_latent=latent_avg),
                           g([z], truncation=0.7, truncation_latent=w_avg))
    assert not any(m in sys.modules for m in FAKE_MODULES)


def test_snapshot_contents_are_inert(tmp_path):
    g = random_generator()
    path = dump(snapshot(nvlabs_generator(g, torch.zeros(32))), tmp_path / "snap.pkl")
    snap = nv.read_nvlabs_pickle(path)
    assert set(snap) == {"training_set_kwargs", "G", "D", "G_ema", "augment_pipe"}
    assert isinstance(snap["training_set_kwargs"], nv.EasyDict)
    gen = snap["G_ema"]
    assert isinstance(gen, nv.InertObject) and gen.class_name == "Generator" and gen.module_src == SRC
    assert snap["D"].class_name == "Discriminator"
    fc = gen.child("mapping").child("fc0")
    assert fc.attr("weight_gain") == pytest.approx(0.01 / math.sqrt(32))


def test_registry_loads_nvlabs_pickle(tmp_path):
    g = random_generator()
    w_avg = torch.randn(32)
    desc = load_stylegan2(dump(snapshot(nvlabs_generator(g, w_avg)), tmp_path / "ffhq.pkl"))
    assert desc.source_format == "nvlabs-pkl" and desc.latent_avg_source == "checkpoint"
    assert desc.config.conv_clamp == 256.0 and desc.config.lr_mlp == pytest.approx(0.01)
    z = torch.randn(2, 32)
    with torch.no_grad():
        assert torch.equal(desc.model([z]), g([z]))


def test_falls_back_to_G_with_a_warning(tmp_path):
    g = random_generator()
    path = dump({"G": nvlabs_generator(g, torch.zeros(32))}, tmp_path / "no_ema.pkl")
    with pytest.warns(UserWarning, match="no G_ema"):
        sd, _, _ = nv.nvlabs_generator_state(path)
    assert torch.equal(sd["input.input"], g.input.input.detach())


# --------------------------------------------------------------------------------------- never executed
def test_embedded_module_src_is_never_executed(tmp_path):
    canary = tmp_path / "canary.txt"
    evil_src = f"open({str(canary)!r}, 'w').write('pwned')\nclass Generator:\n    pass\n"
    # Control: this source really does write the canary when run (what the official loader does by importing
    # it); run as a script in a child process, so the published tree holds no exec.
    control = tmp_path / "control.txt"
    script = tmp_path / "control_src.py"
    script.write_text(evil_src.replace(str(canary), str(control)))
    subprocess.run([sys.executable, str(script)], check=True, timeout=120)
    assert control.exists()

    g = random_generator()
    path = dump(snapshot(nvlabs_generator(g, torch.zeros(32), module_src=evil_src)), tmp_path / "evil_src.pkl")
    sd, _, _ = nv.nvlabs_generator_state(path)  # the data is fine; the code is ignored
    assert not canary.exists()
    assert "pwned" in nv.read_nvlabs_pickle(path)["G_ema"].module_src  # kept as text only
    assert not canary.exists()
    assert not any(name.startswith("_imported_module_") for name in sys.modules)


def _hostile_calls(canary):
    return {
        "os.system": (os.system, f"touch {canary}"),
        "builtins.eval": (eval, f"open({str(canary)!r}, 'w').write('x')"),
        "builtins.exec": (exec, f"open({str(canary)!r}, 'w').write('x')"),
        "subprocess.check_call": (subprocess.check_call, ["touch", str(canary)]),
        "builtins.getattr": (getattr, str(canary), "upper"),
    }


@pytest.mark.parametrize("name", ["os.system", "builtins.eval", "builtins.exec", "subprocess.check_call",
                                  "builtins.getattr"])
@pytest.mark.parametrize("where", ["top", "nested"])
def test_hostile_reduce_is_refused(tmp_path, name, where):
    canary = tmp_path / "canary.txt"
    func, *args = _hostile_calls(canary)[name]
    evil = Hostile(func, *args)
    if where == "top":
        obj = {"G_ema": evil}
    else:  # hidden deep inside an otherwise valid generator
        gen = nvlabs_generator(random_generator(), torch.zeros(32))
        gen.synthesis.b8.conv0.padding = evil
        obj = snapshot(gen)
    path = dump(obj, tmp_path / "hostile.pkl")
    with pytest.raises(nv.UnsafePickleError) as info:
        nv.read_nvlabs_pickle(path)
    message = str(info.value)
    assert message.startswith("hostile.pkl:")
    qualified = f"{func.__module__}.{func.__name__}"  # os.system pickles as posix.system on Linux
    assert qualified in message and info.value.global_name == qualified
    assert isinstance(info.value, ValueError)
    with pytest.raises(nv.UnsafePickleError):
        nv.nvlabs_generator_state(path)
    assert not canary.exists()


@pytest.mark.parametrize("global_name", ["torch_utils.persistence._src_to_module", "torch.load",
                                         "importlib.import_module", "numpy.load", "torch.nn.functional.conv2d"])
def test_other_globals_are_refused(tmp_path, global_name):
    module, _, attr = global_name.rpartition(".")
    # GLOBAL opcode with protocol 0 text, then call it with one string argument.
    payload = b"\x80\x02c" + module.encode() + b"\n" + attr.encode() + b"\nX\x01\x00\x00\x00x\x85R."
    path = tmp_path / "refs.pkl"
    path.write_bytes(payload)
    with pytest.raises(nv.UnsafePickleError, match=global_name.replace(".", r"\.")):
        nv.read_nvlabs_pickle(path)


def test_hostile_storage_payload_is_refused(tmp_path):
    """The tensor storage bytes are themselves a pickle; they go through torch.load(weights_only=True)."""
    canary = tmp_path / "canary.txt"
    inner = pickle.dumps(Hostile(os.system, f"touch {canary}"), protocol=2)
    payload = (b"\x80\x04\x8c\rtorch.storage\x8c\x10_load_from_bytes\x93C" + bytes([len(inner)]) + inner
               + b"\x85R.")
    path = tmp_path / "storage.pkl"
    path.write_bytes(payload)
    with pytest.raises(nv.UnsafePickleError, match="storage.pkl: refusing to load"):
        nv.read_nvlabs_pickle(path)
    assert not canary.exists()


def test_setstate_on_allowed_classes_is_refused(tmp_path):
    """BUILD with slot state would setattr on the allowed class itself (rewiring it for later loads)."""
    path = tmp_path / "rewire.pkl"
    path.write_bytes(b"\x80\x02cdnnlib.util\nEasyDict\nN}X\x04\x00\x00\x00evilK\x01s\x86b.")
    with pytest.raises(nv.NVlabsPickleError, match="rewire.pkl:.*BUILD"):
        nv.read_nvlabs_pickle(path)
    assert not hasattr(nv.EasyDict, "evil")


def test_tensorflow_pickle_is_unsupported(tmp_path):
    path = tmp_path / "stylegan2-ffhq-config-f-tf.pkl"
    path.write_bytes(b"\x80\x02cdnnlib.tflib.network\nNetwork\n)\x81.")
    with pytest.raises(nv.UnsupportedNetworkError, match="TensorFlow"):
        nv.read_nvlabs_pickle(path)


# ---------------------------------------------------------------------------------- unsupported networks
def test_stylegan3_is_unsupported(tmp_path):
    synthesis = Node("SynthesisNetwork", w_dim=32, img_resolution=32, img_channels=3)
    synthesis.input = Node("SynthesisInput", w_dim=32, channels=32, size=36)
    synthesis.input.register_buffer("freqs", torch.randn(32, 2))
    synthesis.L0_36_32 = Node("SynthesisLayer", is_torgb=False)
    mapping = Node("MappingNetwork", z_dim=32, c_dim=0, w_dim=32, num_ws=16, num_layers=2)
    gen = Node("Generator", z_dim=32, c_dim=0, w_dim=32, img_resolution=32, img_channels=3)
    gen.synthesis, gen.mapping = synthesis, mapping
    path = dump({"G_ema": gen}, tmp_path / "stylegan3-t.pkl")
    with pytest.raises(nv.UnsupportedNetworkError, match="stylegan3-t.pkl: StyleGAN3 .*not supported"):
        nv.nvlabs_generator_state(path)


def test_conditional_is_unsupported(tmp_path):
    g = random_generator()
    path = dump(snapshot(nvlabs_generator(g, torch.zeros(32), c_dim=4)), tmp_path / "cifar10.pkl")
    with pytest.raises(nv.UnsupportedNetworkError, match=r"cifar10.pkl: conditional generators \(c_dim=4"):
        nv.nvlabs_generator_state(path)


def test_resnet_architecture_is_unsupported(tmp_path):
    g = random_generator()
    path = dump(snapshot(nvlabs_generator(g, torch.zeros(32), architecture="resnet")), tmp_path / "resnet.pkl")
    with pytest.raises(nv.UnsupportedNetworkError, match="'resnet' is not supported"):
        nv.nvlabs_generator_state(path)


def test_non_standard_filter_is_unsupported(tmp_path):
    gen = nvlabs_generator(random_generator(), torch.zeros(32))
    gen.synthesis.b16.conv0.resample_filter = torch.ones(4, 4) / 16
    path = dump(snapshot(gen), tmp_path / "box.pkl")
    with pytest.raises(nv.UnsupportedNetworkError, match=r"synthesis\.b16\.conv0\.resample_filter"):
        nv.nvlabs_generator_state(path)


# ----------------------------------------------------------------------------------------- broken files
@pytest.mark.parametrize("fraction", [0.5, 0.999, 0.01])
def test_truncated_file(tmp_path, fraction):
    good = dump(snapshot(nvlabs_generator(random_generator(), torch.zeros(32))), tmp_path / "good.pkl")
    data = good.read_bytes()
    path = tmp_path / "network-snapshot-truncated.pkl"
    path.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(nv.NVlabsPickleError) as info:
        nv.nvlabs_generator_state(path)
    assert isinstance(info.value, ValueError)
    assert str(info.value).startswith("network-snapshot-truncated.pkl:")
    assert "truncated" in str(info.value)


def test_torch_save_file_is_not_an_nvlabs_pickle(tmp_path):
    path = tmp_path / "plain.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.save({"w": torch.zeros(2)}, path, _use_new_zipfile_serialization=False)
    with pytest.raises(nv.NVlabsPickleError, match="plain.pt:"):
        nv.read_nvlabs_pickle(path)
