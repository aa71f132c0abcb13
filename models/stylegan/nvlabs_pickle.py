"""Read NVlabs stylegan2-ada-pytorch / stylegan3-repo StyleGAN2 `.pkl` snapshots without running their code.

NVlabs snapshots are plain pickles of `{'G', 'D', 'G_ema', 'augment_pipe', 'training_set_kwargs', ...}`.
The networks are `torch_utils.persistence` objects: each pickles as a call to
`torch_utils.persistence._reconstruct_persistent_obj(meta)`, where `meta` is a dict with `type='class'`,
`version`, `module_src` (the full source of the defining module, which the official loader `exec`s),
`class_name` and `state` (the module's `__dict__`: `_parameters`, `_buffers`, `_modules`, plain attributes).
Tensors pickle as `torch._utils._rebuild_tensor_v2(torch.storage._load_from_bytes(<legacy torch.save
bytes>), ...)` (checked with torch 1.x and 2.x `pickle.dumps(tensor)`).

`read_nvlabs_pickle` uses an unpickler that resolves only an allow-list of globals and replaces every one
of them that could run code by an inert stand-in: persistent objects and torch/torch_utils modules become
`InertObject` records (class name + state; `module_src` is kept as a string for detection and is never
executed), storage bytes go through `torch.load(weights_only=True)`. Anything else raises
`UnsafePickleError` before it is called. It is the pure-Python unpickler with its opcode table narrowed:
BUILD (setstate) only on plain data and our records (never on an allowed class or function, which could
otherwise be rewired through attribute assignment), no extension-registry opcodes, no persistent ids.

`nvlabs_generator_state` converts `G_ema` into the rosinality key layout of `models/stylegan/generator.py`.
Correspondence with the official code (stylegan2-ada-pytorch `training/networks.py`, identical in the
stylegan3 repo's `training/networks_stylegan2.py` apart from defaults and repr helpers):
- mapping: `normalize_2nd_moment(z)` then FullyConnectedLayer(lrelu, lr_multiplier) = PixelNorm then
  EqualLinear(lr_mul) with fused lrelu*sqrt(2): weights and biases are stored the same way (randn/lr_mul,
  runtime gains lr_mul/sqrt(fan_in) and lr_mul), so they copy unchanged and `lr_mlp` = `bias_gain`.
- affine: FullyConnectedLayer(w_dim, in_ch, bias_init=1), gain 1/sqrt(w_dim) = EqualLinear(bias_init=1).
- SynthesisLayer: conv (+noise_const*noise_strength) -> bias -> lrelu*sqrt(2) -> clamp(conv_clamp) is
  rosinality's conv -> NoiseInjection -> FusedLeakyReLU (+ our clamp). NVlabs demodulates the *unscaled*
  weight while rosinality scales it by 1/sqrt(fan_in) first; the two agree except for where the 1e-8
  epsilon sits (relative effect ~1e-8 * fan_in / sum(w^2 s^2), far below fp32 resolution in practice).
- Up-sampling conv: SynthesisLayer passes `flip_weight = (up == 1)` = False to `conv2d_resample`, whose
  up>1 branch calls `conv_transpose2d(x, w.transpose(0, 1), stride=2)` with `flip_weight=(not
  flip_weight)` = True (i.e. *no* flip), padding 0 for k=3, f=4, up=2, then `upfirdn2d` with pad (1, 1)
  and gain 4. rosinality's up-conv is exactly `conv_transpose2d(x, weight.transpose, stride=2)` followed
  by a [1,3,3,1]*4 blur with pad (1, 1): the 3x3 weights copy without flipping (confirmed numerically
  against the official code).
- ToRGB: styles * 1/sqrt(in_ch), no demodulation, bias, clamp = rosinality ToRGB (weight scale
  1/sqrt(in_ch)) + our clamp; the skip image is up-sampled with the same filter and added.
- W indexing: block b4 uses ws[0] (conv1), ws[1] (torgb); block b(2^k) uses ws[2k-5..2k-3], as in
  rosinality. Truncation is `w_avg.lerp(w, psi)` in both.

Over 600 lines: the allow-list, the inert stand-ins and the legacy storage reader are one security boundary,
kept in one file so it can be audited whole.
"""
from __future__ import annotations

import collections
import functools
import io
import math
import os
import pickle
import re
import warnings
from typing import Any, Optional

import numpy as np
import torch

from ..core.checkpoint_io import RawCheckpoint
from ..core.errors import CheckpointError
from .generator import fir_kernel_2d

__all__ = [
    "NVlabsPickleError", "UnsafePickleError", "UnsupportedNetworkError", "InertObject", "EasyDict",
    "read_nvlabs_pickle", "nvlabs_generator_state",
]

FIR_TAPS = (1, 3, 3, 1)


# ------------------------------------------------------------------------------------------- errors
class NVlabsPickleError(CheckpointError):
    """A pickle could not be read or converted; the message starts with the file name."""

    def __init__(self, path, problem: str):
        super().__init__(path, problem)


class UnsafePickleError(NVlabsPickleError):
    """The pickle references a global outside the allow-list (it would run code when loaded)."""

    def __init__(self, path, global_name: str, problem: str = ""):
        self.global_name = global_name
        super().__init__(path, problem or (
            f"refusing to load: the pickle references {global_name}, which is not plain network data "
            "(loading it with the official code would run it). TransEdit never executes code from weight files."))


class UnsupportedNetworkError(NVlabsPickleError):
    """The pickle is readable but holds a network TransEdit cannot run (StyleGAN3, conditional, ...)."""


# ------------------------------------------------------------------------------- inert stand-ins
class EasyDict(dict):
    """Stand-in for `dnnlib.util.EasyDict`: a plain dict (no attribute magic, nothing to hijack)."""


class InertObject:
    """Stand-in for a pickled class instance: remembers its class name and state, runs nothing.

    For `torch_utils.persistence` objects `module_src` holds the embedded source as a string; it is
    only ever searched for text, never compiled.
    """

    module: str = ""
    class_name: str = ""

    def __new__(cls, *args, **kwargs):  # NEWOBJ/REDUCE may pass arguments; keep them as data
        obj = object.__new__(cls)
        obj.__dict__.update(state={}, args=args, module_src=None, version=None)
        return obj

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        if isinstance(state, tuple) and len(state) == 2:  # (dict state, slot state)
            merged = dict(state[0] or {})
            merged.update(state[1] or {})
            state = merged
        self.__dict__["state"] = state if isinstance(state, dict) else {"__state__": state}

    def __repr__(self):
        return f"<inert {self.module}.{self.class_name}>"

    # -- module-tree helpers (state is an nn.Module __dict__)
    def _section(self, name: str) -> dict:
        section = self.state.get(name)
        return section if isinstance(section, dict) else {}

    @property
    def modules(self) -> dict:
        return self._section("_modules")

    def child(self, name: str) -> Optional["InertObject"]:
        child = self.modules.get(name)
        return child if isinstance(child, InertObject) else None

    def tensor(self, name: str) -> Optional[torch.Tensor]:
        for section in ("_parameters", "_buffers"):
            value = self._section(section).get(name)
            if isinstance(value, torch.Tensor):
                return value
        value = self.state.get(name)
        return value if isinstance(value, torch.Tensor) else None

    def attr(self, name: str, default: Any = None) -> Any:
        value = self.state.get(name, default)
        if isinstance(value, np.generic):
            value = value.item()
        return value

    def walk(self, prefix: str = ""):
        yield prefix, self
        for name, child in self.modules.items():
            if isinstance(child, InertObject):
                yield from child.walk(f"{prefix}.{name}" if prefix else name)


class PersistentRecord(InertObject):
    """What `torch_utils.persistence._reconstruct_persistent_obj(meta)` becomes."""

    module = "torch_utils.persistence"


_stub_classes: dict[tuple[str, str], type] = {}


def _stub_class(module: str, name: str) -> type:
    key = (module, name)
    if key not in _stub_classes:
        _stub_classes[key] = type(name, (InertObject,), {"module": module, "class_name": name,
                                                         "__module__": __name__})
    return _stub_classes[key]


# ------------------------------------------------------------------------- safe rebuild functions
def _reconstruct_persistent_obj(meta):
    if not isinstance(meta, dict):
        raise pickle.UnpicklingError("persistent object metadata is not a dict")
    if meta.get("type") != "class":
        raise pickle.UnpicklingError(f"unknown persistent object type {meta.get('type')!r}")
    class_name, src = meta.get("class_name"), meta.get("module_src")
    if not isinstance(class_name, str) or not isinstance(src, str):
        raise pickle.UnpicklingError("persistent object metadata lacks class_name/module_src strings")
    rec = PersistentRecord()
    rec.__dict__.update(class_name=class_name, module_src=src, version=meta.get("version"))
    rec.__setstate__(meta.get("state") or {})
    return rec


def _load_storage_bytes(b, path="<pickle>"):
    """Replacement for `torch.storage._load_from_bytes`: the bytes are a legacy torch.save of a storage,
    read here with torch's own restricted unpickler (weights_only=True) instead of a full torch.load."""
    if not isinstance(b, (bytes, bytearray)):
        raise pickle.UnpicklingError("storage payload is not bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            storage = torch.load(io.BytesIO(b), map_location="cpu", weights_only=True)
    except Exception as e:
        text = str(e)
        if "Weights only load failed" in text or "Unsupported global" in text:
            found = re.search(r"GLOBAL ([\w.]+)", text)
            raise UnsafePickleError(path, found.group(1) if found else "torch.storage._load_from_bytes", (
                "refusing to load: a tensor storage payload inside the pickle is not plain tensor data"
                + (f" (it references {found.group(1)})" if found else "")
                + "; TransEdit never executes code from weight files.")) from None
        raise
    if not isinstance(storage, (torch.storage.TypedStorage, torch.UntypedStorage)):
        raise pickle.UnpicklingError(f"storage payload holds a {type(storage).__name__}, not a storage")
    return storage


def _check_storage(storage):
    if not isinstance(storage, (torch.storage.TypedStorage, torch.UntypedStorage)):
        raise pickle.UnpicklingError(f"tensor rebuilt from a {type(storage).__name__}, not a storage")


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None):
    _check_storage(storage)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch._utils._rebuild_tensor(storage, int(storage_offset), tuple(size), tuple(stride))


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, backward_hooks, dtype,
                       metadata=None):
    _check_storage(storage)
    if not isinstance(dtype, torch.dtype):
        raise pickle.UnpicklingError("tensor dtype is not a torch.dtype")
    t = torch.empty((0,), dtype=dtype)
    untyped = storage._untyped_storage if isinstance(storage, torch.storage.TypedStorage) else storage
    return t.set_(untyped, int(storage_offset), tuple(size), tuple(stride))


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, state=None):
    if not isinstance(data, torch.Tensor):
        raise pickle.UnpicklingError("parameter data is not a tensor")
    return data.detach()  # plain tensors: hooks and Python attributes are dropped


_TENSOR_TYPES = ("Tensor", "Parameter")


class _TensorTypeMarker:
    """Returned for the tensor classes; only our `_rebuild_from_type_v2` accepts it."""

    def __init__(self, name):
        self.name = name


def _rebuild_from_type_v2(func, new_type, args, state):
    if not isinstance(new_type, _TensorTypeMarker) or not callable(func) or not isinstance(args, tuple):
        raise pickle.UnpicklingError("unexpected arguments to _rebuild_from_type_v2")
    result = func(*args)
    if not isinstance(result, torch.Tensor):
        raise pickle.UnpicklingError("_rebuild_from_type_v2 did not produce a tensor")
    return result  # Python-level tensor state (attributes) is dropped


def _numpy_reconstruct(subtype, shape, dtype):
    if subtype is not np.ndarray:
        raise pickle.UnpicklingError("only plain numpy arrays can be rebuilt")
    return np.ndarray.__new__(np.ndarray, shape, dtype)


def _numpy_scalar(dtype, data=None):
    if not isinstance(dtype, np.dtype) or dtype.hasobject:
        raise pickle.UnpicklingError("only numeric numpy scalars can be rebuilt")
    return np.frombuffer(bytes(data), dtype=dtype, count=1)[0]


def _copyreg_reconstructor(cls, base, state):
    """Protocol 0/1 object creation, restricted to our inert classes."""
    if isinstance(cls, type) and issubclass(cls, InertObject) and base is object:
        return cls.__new__(cls)
    if cls is EasyDict and base is dict:
        return EasyDict(state or {})
    raise pickle.UnpicklingError("copyreg._reconstructor used for something other than plain data")


def _latin1_bytes(text, encoding="latin1"):
    """Protocol 0-2 pickles write `bytes` as `_codecs.encode(str, 'latin1')`."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("_codecs.encode is only allowed for latin1 byte strings")
    return text.encode("latin1")


_DTYPE_NAMES = {
    "float32", "float64", "float16", "bfloat16", "int8", "int16", "int32", "int64", "uint8", "bool",
    "float", "double", "half", "long", "int", "short",
}

_ALLOWED: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set, ("__builtin__", "set"): set,
    ("builtins", "frozenset"): frozenset, ("__builtin__", "frozenset"): frozenset,
    ("builtins", "bytearray"): bytearray, ("__builtin__", "bytearray"): bytearray,
    ("builtins", "object"): object, ("__builtin__", "object"): object,
    ("builtins", "dict"): dict, ("__builtin__", "dict"): dict,
    ("_codecs", "encode"): _latin1_bytes,
    ("copyreg", "_reconstructor"): _copyreg_reconstructor,
    ("copy_reg", "_reconstructor"): _copyreg_reconstructor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
    ("torch._tensor", "Tensor"): _TensorTypeMarker("Tensor"),
    ("torch", "Tensor"): _TensorTypeMarker("Tensor"),
    ("torch.nn.parameter", "Parameter"): _TensorTypeMarker("Parameter"),
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent_obj,
    ("dnnlib.util", "EasyDict"): EasyDict,
    ("dnnlib", "EasyDict"): EasyDict,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
}
# Storage classes (torch.FloatStorage, ...) only occur inside the torch.save'd storage bytes, which
# torch.load(weights_only=True) resolves itself, so the outer pickle never needs them.

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_STUB_MODULES = re.compile(r"^(torch\.nn\.modules(\.\w+)*|torch_utils(\.\w+)*|training\.networks\w*)$")


def _build_allowed(inst) -> bool:
    """BUILD (setstate) targets: our records and plain data only — never a class, function or module,
    so a pickle cannot rewire the allowed callables or classes (e.g. by setting their attributes)."""
    if isinstance(inst, type) or callable(inst) and not isinstance(inst, (InertObject, dict)):
        return False
    return isinstance(inst, (InertObject, dict, set, np.ndarray, np.dtype))


class _RestrictedUnpickler(pickle._Unpickler):
    """The pure-Python unpickler (its opcode table can be restricted; it calls `find_class` for GLOBAL,
    STACK_GLOBAL, INST and OBJ). Extension codes and BUILD on anything but plain data are refused."""

    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, file, path):
        super().__init__(file)
        self._path = path

    def _load_build(self):
        if not _build_allowed(self.stack[-2]):
            raise pickle.UnpicklingError(f"BUILD (setstate) on a {type(self.stack[-2]).__name__} is not allowed")
        pickle._Unpickler.load_build(self)

    def _load_ext(self):
        raise pickle.UnpicklingError("extension-registry opcodes (EXT1/2/4) are not allowed")

    dispatch[pickle.BUILD[0]] = _load_build
    for _op in (pickle.EXT1, pickle.EXT2, pickle.EXT4):
        dispatch[_op[0]] = _load_ext
    del _op

    def find_class(self, module, name):
        key = (module, name)
        if key == ("torch.storage", "_load_from_bytes"):
            return functools.partial(_load_storage_bytes, path=self._path)
        if key in _ALLOWED:
            return _ALLOWED[key]
        if module == "torch" and name in _DTYPE_NAMES and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        if module.startswith("dnnlib.tflib"):
            raise UnsupportedNetworkError(self._path, (
                "this is a TensorFlow StyleGAN/StyleGAN2 pickle (dnnlib.tflib); convert it to PyTorch with "
                "NVlabs' stylegan2-ada-pytorch legacy.py (in its own environment) first."))
        if (_STUB_MODULES.match(module) and _IDENT.match(name) and module != "torch_utils.persistence"
                and name[:1].isupper()):
            # A class from torch.nn / torch_utils / the NVlabs training code: an inert record.
            return _stub_class(module, name)
        raise UnsafePickleError(self._path, f"{module}.{name}")

    def persistent_load(self, pid):
        raise NVlabsPickleError(self._path, (
            "the pickle uses persistent ids (a torch.save checkpoint?), which NVlabs snapshots never do."))


def read_nvlabs_pickle(path) -> dict:
    """Unpickle an NVlabs snapshot into plain data: dicts, tensors and `InertObject` records.

    Never imports or executes anything from the file. Raises `UnsafePickleError` for any global outside the
    allow-list, `NVlabsPickleError` for truncated/corrupt files. A pickle holding one bare network (not a
    snapshot dict) is returned as `{"network": record}`.
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            obj = _RestrictedUnpickler(f, path).load()
    except NVlabsPickleError:
        raise
    except FileNotFoundError:
        raise NVlabsPickleError(path, "file not found.") from None
    except EOFError:
        raise NVlabsPickleError(path, "the pickle ends early; the file is truncated — download it again.") from None
    except Exception as e:  # hostile or corrupt bytes can raise nearly anything from the C unpickler
        if isinstance(e, (MemoryError, RecursionError)):
            raise NVlabsPickleError(path, f"the pickle is malformed ({type(e).__name__}).") from None
        detail = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise NVlabsPickleError(path, f"could not be read as an NVlabs pickle ({type(e).__name__}: {detail}); "
                                "the file may be truncated or corrupt — download it again.") from None
    if isinstance(obj, dict):
        return obj
    if isinstance(obj, InertObject):
        return {"network": obj}
    raise NVlabsPickleError(path, f"the pickle holds a {type(obj).__name__}, not an NVlabs snapshot dict.")


# ------------------------------------------------------------------------------------ conversion
_SG3_NAME = re.compile(r"^L\d+_\d+_\d+$")
_SG3_MARKERS = ("class SynthesisInput", "networks_stylegan3", "Alias-Free")


def _is_stylegan3(gen: InertObject) -> bool:
    for name, rec in gen.walk():
        leaf = name.rsplit(".", 1)[-1]
        if rec.class_name == "SynthesisInput" or _SG3_NAME.match(leaf) or (name == "synthesis.input"):
            return True
        src = rec.module_src or ""
        if any(marker in src for marker in _SG3_MARKERS):
            return True
    return False


def _reference_filter() -> torch.Tensor:
    k = torch.tensor(FIR_TAPS, dtype=torch.float32)
    k = torch.outer(k, k)
    return k / k.sum()


def _check_filter(path, where: str, f: Optional[torch.Tensor]):
    if f is None:
        return
    f = f.float()
    if f.ndim == 1:
        f = torch.outer(f, f)
    ref = _reference_filter()
    if f.shape != ref.shape or not torch.allclose(f, ref, atol=1e-6):
        raise UnsupportedNetworkError(path, f"{where}.resample_filter is not the [1,3,3,1] filter "
                                      f"(got {f.flatten().tolist()}); only standard StyleGAN2 is supported.")


def _need(path, rec: Optional[InertObject], what: str) -> InertObject:
    if rec is None:
        raise UnsupportedNetworkError(path, f"{what} is missing; this is not a StyleGAN2 generator TransEdit knows.")
    return rec


def _need_tensor(path, rec: InertObject, name: str, where: str) -> torch.Tensor:
    t = rec.tensor(name)
    if t is None:
        raise UnsupportedNetworkError(path, f"{where}.{name} is missing; this is not a StyleGAN2 generator "
                                      "TransEdit knows.")
    return t.detach().float().contiguous().clone()


def _close(a, b) -> bool:
    return a is not None and math.isclose(float(a), float(b), rel_tol=1e-5, abs_tol=1e-8)


def nvlabs_generator_state(path) -> tuple[dict[str, torch.Tensor], dict, Optional[torch.Tensor]]:
    """`G_ema` of an NVlabs StyleGAN2 snapshot as (rosinality state dict, StyleGAN2Config kwargs, w_avg).

    Config kwargs: size, style_dim, n_mlp, channels, z_dim (None when equal to style_dim), lr_mlp,
    conv_clamp. Raises `UnsupportedNetworkError` for StyleGAN3, conditional, non-'skip' or otherwise
    non-standard generators.
    """
    snapshot = read_nvlabs_pickle(path)
    gen = None
    for key in ("G_ema", "G", "network"):
        if isinstance(snapshot.get(key), InertObject):
            gen = snapshot[key]
            if key == "G":
                warnings.warn(f"{os.path.basename(os.fspath(path))}: no G_ema in the snapshot; "
                              "using the non-EMA generator G", stacklevel=2)
            break
    if gen is None:
        raise UnsupportedNetworkError(path, f"no generator (G_ema or G) in the pickle (keys: {sorted(map(str, snapshot))}).")
    return _convert_generator(path, gen)


def _convert_generator(path, gen: InertObject):
    if gen.class_name != "Generator":
        raise UnsupportedNetworkError(path, f"G_ema is a {gen.class_name!r}, not a StyleGAN2 Generator.")
    if _is_stylegan3(gen):
        raise UnsupportedNetworkError(path, "StyleGAN3 (alias-free) generators are not supported; TransEdit "
                                      "runs StyleGAN2 only (use a StyleGAN2 .pkl, e.g. stylegan2-*.pkl).")
    mapping = _need(path, gen.child("mapping"), "G_ema.mapping")
    synthesis = _need(path, gen.child("synthesis"), "G_ema.synthesis")
    c_dim = gen.attr("c_dim", mapping.attr("c_dim", 0)) or 0
    if c_dim or mapping.child("embed") is not None:
        raise UnsupportedNetworkError(path, f"conditional generators (c_dim={c_dim}, class-label input) are not "
                                      "supported; TransEdit needs an unconditional StyleGAN2.")
    img_channels = gen.attr("img_channels", synthesis.attr("img_channels", 3))
    if img_channels != 3:
        raise UnsupportedNetworkError(path, f"img_channels={img_channels}; only RGB (3-channel) generators are supported.")

    sd: dict[str, torch.Tensor] = {}

    # ---- mapping network
    n_mlp = int(mapping.attr("num_layers", 0) or 0)
    if n_mlp == 0:
        while mapping.child(f"fc{n_mlp}") is not None:
            n_mlp += 1
    if n_mlp < 1:
        raise UnsupportedNetworkError(path, "the mapping network has no layers.")
    lr_mlp = None
    w_dim = z_dim = None
    for i in range(n_mlp):
        fc = _need(path, mapping.child(f"fc{i}"), f"G_ema.mapping.fc{i}")
        weight = _need_tensor(path, fc, "weight", f"mapping.fc{i}")
        bias = _need_tensor(path, fc, "bias", f"mapping.fc{i}")
        if fc.attr("activation", "lrelu") != "lrelu":
            raise UnsupportedNetworkError(path, f"mapping.fc{i} uses activation {fc.attr('activation')!r}; "
                                          "only 'lrelu' (the StyleGAN2 default) is supported.")
        gain = float(fc.attr("bias_gain", 1.0))
        if lr_mlp is None:
            lr_mlp = gain
        elif not _close(gain, lr_mlp):
            raise UnsupportedNetworkError(path, "the mapping layers use different learning-rate multipliers.")
        out_dim, in_dim = weight.shape
        if i == 0:
            z_dim = in_dim
        w_dim = out_dim if w_dim is None else w_dim
        if out_dim != w_dim or (i > 0 and in_dim != w_dim):
            raise UnsupportedNetworkError(path, "mapping layer widths differ from w_dim (layer_features != w_dim) "
                                          "— not supported.")
        if not _close(fc.attr("weight_gain", gain / math.sqrt(in_dim)), gain / math.sqrt(in_dim)):
            raise UnsupportedNetworkError(path, f"mapping.fc{i} has a non-standard weight gain.")
        sd[f"style.{i + 1}.weight"] = weight
        sd[f"style.{i + 1}.bias"] = bias
    stored_w_dim = gen.attr("w_dim", w_dim)
    if stored_w_dim != w_dim:
        raise UnsupportedNetworkError(path, f"w_dim {stored_w_dim} disagrees with the mapping output width {w_dim}.")
    w_avg = mapping.tensor("w_avg")
    w_avg = w_avg.detach().float().reshape(-1).clone() if w_avg is not None else None

    # ---- synthesis network
    size = int(gen.attr("img_resolution", synthesis.attr("img_resolution", 0)) or 0)
    if size < 4 or size & (size - 1):
        raise UnsupportedNetworkError(path, f"img_resolution {size} is not a power of two >= 4.")
    resolutions = [2 ** i for i in range(2, int(math.log2(size)) + 1)]
    channels: dict[int, int] = {}
    clamps: set = set()
    noise_index = 0
    fir = fir_kernel_2d(FIR_TAPS, 4.0)

    def layer(prefix: str, rec: InertObject, where: str, res: int, up: int, in_ch: int):
        nonlocal noise_index
        if int(rec.attr("up", 1)) != up:
            raise UnsupportedNetworkError(path, f"{where} has up={rec.attr('up')} (expected {up}).")
        if rec.attr("activation", "lrelu") != "lrelu":
            raise UnsupportedNetworkError(path, f"{where} uses activation {rec.attr('activation')!r}; only 'lrelu'.")
        if rec.attr("act_gain") is not None and not _close(rec.attr("act_gain"), math.sqrt(2)):
            raise UnsupportedNetworkError(path, f"{where} has a non-standard activation gain.")
        if up > 1:
            _check_filter(path, where, rec.tensor("resample_filter"))
        weight = _need_tensor(path, rec, "weight", where)
        if weight.ndim != 4 or weight.shape[1] != in_ch or weight.shape[2:] != (3, 3):
            raise UnsupportedNetworkError(path, f"{where}.weight has shape {tuple(weight.shape)}; expected "
                                          f"[out, {in_ch}, 3, 3].")
        affine = _need(path, rec.child("affine"), f"{where}.affine")
        clamps.add(rec.attr("conv_clamp"))
        sd[prefix + "conv.weight"] = weight.unsqueeze(0)  # no flip: see the module docstring
        sd[prefix + "conv.modulation.weight"] = _affine(affine, "weight", f"{where}.affine", in_ch)
        sd[prefix + "conv.modulation.bias"] = _affine(affine, "bias", f"{where}.affine", in_ch)
        if up > 1:
            sd[prefix + "conv.blur.kernel"] = fir.clone()
        sd[prefix + "activate.bias"] = _need_tensor(path, rec, "bias", where)
        if rec.attr("use_noise", True):
            strength = _need_tensor(path, rec, "noise_strength", where).reshape(1)
            noise = _need_tensor(path, rec, "noise_const", where)
            if noise.shape != (res, res):
                raise UnsupportedNetworkError(path, f"{where}.noise_const has shape {tuple(noise.shape)}, expected {res}x{res}.")
        else:  # no noise input: a zero strength reproduces it exactly
            strength, noise = torch.zeros(1), torch.zeros(res, res)
        sd[prefix + "noise.weight"] = strength
        sd[f"noises.noise_{noise_index}"] = noise.reshape(1, 1, res, res)
        noise_index += 1
        return weight.shape[0]

    def _affine(affine: InertObject, name: str, where: str, in_ch: int) -> torch.Tensor:
        t = _need_tensor(path, affine, name, where)
        if name == "weight" and t.shape != (in_ch, w_dim):
            raise UnsupportedNetworkError(path, f"{where}.weight has shape {tuple(t.shape)}, expected [{in_ch}, {w_dim}].")
        if not _close(affine.attr("bias_gain", 1.0), 1.0) or not _close(
                affine.attr("weight_gain", 1 / math.sqrt(w_dim)), 1 / math.sqrt(w_dim)):
            raise UnsupportedNetworkError(path, f"{where} has non-standard gains.")
        return t

    def torgb(prefix: str, rec: InertObject, where: str, in_ch: int, upsample: bool):
        weight = _need_tensor(path, rec, "weight", where)
        if weight.shape != (3, in_ch, 1, 1):
            raise UnsupportedNetworkError(path, f"{where}.weight has shape {tuple(weight.shape)}; expected [3, {in_ch}, 1, 1].")
        if not _close(rec.attr("weight_gain", 1 / math.sqrt(in_ch)), 1 / math.sqrt(in_ch)):
            raise UnsupportedNetworkError(path, f"{where} has a non-standard weight gain.")
        clamps.add(rec.attr("conv_clamp"))
        affine = _need(path, rec.child("affine"), f"{where}.affine")
        sd[prefix + "conv.weight"] = weight.unsqueeze(0)
        sd[prefix + "conv.modulation.weight"] = _affine(affine, "weight", f"{where}.affine", in_ch)
        sd[prefix + "conv.modulation.bias"] = _affine(affine, "bias", f"{where}.affine", in_ch)
        sd[prefix + "bias"] = _need_tensor(path, rec, "bias", where).reshape(1, 3, 1, 1)
        if upsample:
            sd[prefix + "upsample.kernel"] = fir.clone()

    extra = [name for name in synthesis.modules if not re.fullmatch(r"b\d+", name)]
    blocks = [name for name in synthesis.modules if re.fullmatch(r"b\d+", name)]
    if extra or sorted(blocks) != sorted(f"b{r}" for r in resolutions):
        raise UnsupportedNetworkError(path, f"unexpected synthesis layout {list(synthesis.modules)} for "
                                      f"resolution {size}; only the StyleGAN2 'skip' generator is supported.")
    in_ch = 0
    for k, res in enumerate(resolutions):
        where = f"synthesis.b{res}"
        block = _need(path, synthesis.child(f"b{res}"), where)
        arch = block.attr("architecture", "skip")
        if arch != "skip":
            raise UnsupportedNetworkError(path, f"synthesis architecture {arch!r} is not supported (only 'skip', "
                                          "the StyleGAN2 config-e/f and ADA default).")
        if block.child("skip") is not None or block.child("torgb") is None:
            raise UnsupportedNetworkError(path, f"{where} is not a 'skip' block.")
        _check_filter(path, where, block.tensor("resample_filter"))
        if res == 4:
            const = _need_tensor(path, block, "const", where)
            if const.ndim != 3 or const.shape[1:] != (4, 4):
                raise UnsupportedNetworkError(path, f"{where}.const has shape {tuple(const.shape)}, expected [C, 4, 4].")
            sd["input.input"] = const.unsqueeze(0)
            in_ch = channels[4] = const.shape[0]
            layer("conv1.", _need(path, block.child("conv1"), f"{where}.conv1"), f"{where}.conv1", 4, 1, in_ch)
            torgb("to_rgb1.", block.child("torgb"), f"{where}.torgb", in_ch, upsample=False)
            continue
        if block.child("conv0") is None:
            raise UnsupportedNetworkError(path, f"{where}.conv0 is missing.")
        j = 2 * (k - 1)
        out_ch = layer(f"convs.{j}.", block.child("conv0"), f"{where}.conv0", res, 2, in_ch)
        layer(f"convs.{j + 1}.", _need(path, block.child("conv1"), f"{where}.conv1"), f"{where}.conv1", res, 1, out_ch)
        torgb(f"to_rgbs.{k - 1}.", block.child("torgb"), f"{where}.torgb", out_ch, upsample=True)
        channels[res] = in_ch = out_ch

    if len(clamps) > 1:
        raise UnsupportedNetworkError(path, f"layers use different conv_clamp values {sorted(map(str, clamps))}; "
                                      "TransEdit supports one clamp for all layers.")
    conv_clamp = clamps.pop() if clamps else None
    config = dict(size=size, style_dim=int(w_dim), n_mlp=n_mlp, channels=channels,
                  z_dim=None if z_dim == w_dim else int(z_dim), lr_mlp=float(lr_mlp),
                  conv_clamp=None if conv_clamp is None else float(conv_clamp))
    if z_dim == 0:
        raise UnsupportedNetworkError(path, "z_dim=0 generators are not supported.")
    return sd, config, w_avg


def read_nvlabs_checkpoint(path) -> RawCheckpoint:
    """An NVlabs `.pkl` as a RawCheckpoint holding its G_ema in rosinality's layout (config and w_avg kept)."""
    sd, config, w_avg = nvlabs_generator_state(path)
    extras = {"config": config}
    if w_avg is not None:
        extras["latent_avg"] = w_avg
    return RawCheckpoint(str(path), "nvlabs-pkl", {"g_ema": sd}, extras)
