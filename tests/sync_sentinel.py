"""Counting host synchronisations on a CPU-only machine (and, on a GPU, the same calls on real devices).

On a GPU, every call counted here makes the host wait for the device, or copies host memory into a device stream
(which waits just the same). A torch function mode sees each of them on the CPU too, so a test can count them in a
hot loop and fail when a loop that must run without them gains one. What counts (`sync_op` decides):

- a value read back: `.item()`, `.tolist()`, `.cpu()`, `.numpy()`, `np.asarray(t)`, `bool()`/`int()`/`float()`/
  `complex()`/`operator.index()` of a tensor, `v in t`, `torch.is_nonzero`, `torch.equal`, `torch.allclose`,
  formatting or printing a tensor (`__format__`, `__repr__`, which `str()` and `print` use);
- a shape that depends on the data: `nonzero`, `argwhere`, one-argument `torch.where(cond)`, `unique`,
  `unique_consecutive`, `masked_select`, `bincount`, `repeat_interleave` with tensor repeats and no output_size,
  indexing or assigning through a boolean mask (`x[mask]`, `x[mask] = v`, `index_put_` with a bool index);
  `x[t]` with a 0-dim integer tensor `t` (read back as a Python int), a tensor as a slice's bound (`x[:t]`), and
  an index built on the host (`x[[0, 2]]`, `x[(0, 2),]`, `x[range(2)]`, a numpy array);
- a tensor read back as a size, a count or a bound, which PyTorch's C++ argument parser does without calling any
  Python (`torch.arange(t)`, `torch.zeros(t)`, `torch.zeros((t, 2))`, `torch.full(size, t)`, `x.view(t)`,
  `x.topk(t)`, ...; `SIZE_OPS`), and `F.one_hot` without `num_classes` (it reads the largest class back);
- a device-side check read back: `multinomial`, `inverse`/`linalg.inv`/`linalg.solve`/`linalg.cholesky`, and
  the eigen and singular value decompositions (`linalg.eigh`/`eigvalsh`/`eig`/`eigvals`/`svd`/`svdvals`,
  `torch.svd`: the solver's error code is read back, `eig` runs on the host);
- an explicit wait: `torch.cuda.synchronize()`, `torch.accelerator.synchronize()`, a CUDA stream's or event's
  `.synchronize()`, and `torch.cuda.empty_cache()` (freeing device memory waits for the device). These,
  `torch.from_numpy`, `torch.frombuffer` and the legacy constructors (`torch.Tensor([..])`,
  `torch.FloatTensor([..])`, `torch.LongTensor`, ...; counted when given data, not sizes) bypass torch function
  modes, so a counter wraps them while it is active (code that bound them under another name,
  `from torch import from_numpy, FloatTensor`, is not seen).

Host data meeting device data. On a CPU machine every tensor lives on the host, so "a host-built tensor added to a
device tensor" cannot be seen at the addition; it is counted where the host data becomes a tensor instead: every
`torch.tensor`, `as_tensor`, `asarray`, `from_numpy`, `frombuffer` and `new_tensor` in pack code counts (make
constants once, e.g. models/core/devices.py `device_constant`, or build them on the device with `torch.arange`/`full`).
Moves are counted with `moves=True`: `.to(<device>)`, `.to(<other tensor>)`, `.type_as(<other>)`, `.cuda()`, and
`copy_` from a host tensor, since on a CPU a move to the compute device and a copy back look the same; compared
across runs (`per_step`) they show copies that grow with the work. Where devices really differ (a GPU run, or a test's
"meta" device) any call whose tensors sit on the host and on a device counts without `moves`
(`op(host<->device)`): `.to`, `copy_`, an index or a value on the wrong side. (`.to("cpu")` alone is not
counted on a CPU: there `.to(x.device)`, the usual way to stay on x's device, names the host too.)

Only calls made by the pack's library code count. A call is charged to the frame that made it: the sentinel walks
out from the call through PyTorch's own frames (files in the torch package, e.g. `F.*` helpers and `nn.Module`
plumbing that sync inside) to the first frame outside torch, and counts the call only when that frame is the
pack's: its module is `transedit.models.*` or `transedit.nodes.*`, or its file is under models/ or nodes/ of the
checkout, whether imported through its real path or a symlink to it (./dev.sh gpu-check imports the checkout
through /tmp/transedit-src/transedit; ComfyUI imports it through custom_nodes/<folder>, often a symlink). So a test's
callback that pack code calls is the test's, not the pack's. A sync made inside another library's Python code
(numpy, the standard library, ComfyUI) that the pack called is charged to that library and not counted. Calls
while a function marked `@host_side` is on the stack (models/core/devices.py, in any copy of it loaded: they read
CPU-generator draws, never device memory) do not count.

Not counted, because no Python runs where they happen and their arguments do not show them: a tensor read back
by PyTorch's C++ (e.g. a 0-dim tensor as a size to an op not in `SIZE_OPS`; the table lists the common ones),
syncs inside third-party C extensions, legacy typed constructors bound under another name before the counter
starts, and `pin_memory`/non_blocking copies, whose cost depends on the allocator, not the call.

On a GPU, `cuda_sync_errors` and `cuda_syncs` ask PyTorch's own detector (`torch.cuda.set_sync_debug_mode`) the
same question.
"""
from __future__ import annotations

import contextlib
import sys
import warnings
from collections import Counter
from pathlib import Path

import torch
from torch.overrides import TorchFunctionMode

import transedit.models.core.devices as _devices
from transedit.models.core.devices import HOST_SIDE_CODE

# always a sync, whatever the arguments
SYNC_OPS = frozenset({
    "__bool__", "__int__", "__float__", "__complex__", "__index__", "__contains__", "__format__", "__repr__",
    "__array__", "item", "tolist", "cpu", "numpy", "is_nonzero", "equal", "allclose",
    "nonzero", "argwhere", "unique", "unique_consecutive", "masked_select", "bincount", "multinomial",
    "inverse", "linalg_inv", "linalg_solve", "linalg_cholesky",
    "linalg_eigh", "linalg_eigvalsh", "linalg_eig", "linalg_eigvals", "linalg_svd", "linalg_svdvals", "svd",
    "tensor", "new_tensor", "as_tensor", "asarray"})  # from_numpy, frombuffer: see wrapped_calls
INDEXING = frozenset({"__getitem__", "__setitem__"})
MOVES = frozenset({"to", "copy_", "cuda", "type_as"})
# ops whose arguments after the tensor they act on are sizes, counts, bounds or fill values: a tensor among them is
# read back on the host by PyTorch's argument parser (factories take no tensor to act on: all arguments count)
FACTORIES = frozenset({"arange", "range", "linspace", "logspace", "zeros", "ones", "empty", "full", "rand", "randn",
                       "randint", "randperm", "eye"})
SIZE_OPS = FACTORIES | frozenset({
    "view", "reshape", "expand", "repeat", "tile", "topk", "kthvalue", "narrow", "split", "chunk", "roll",
    "select", "unflatten", "new_zeros", "new_ones", "new_empty", "new_full", "tril", "triu", "diag", "resize_"})
TORCH_CODE = str(Path(torch.__file__).resolve().parent) + "/"  # PyTorch's own frames: walked through
SENTINEL_CODE = (__file__, str(Path(__file__).resolve()))

PACK_MODULES = ("transedit.models", "transedit.nodes")  # the library; not tests, not the root's test writers
# the checkout as imported (through a symlink under ./dev.sh gpu-check) and as it really is
_ROOTS = tuple(dict.fromkeys([str(Path(_devices.__file__).absolute().parents[2]),  # models/core/devices.py
                              str(Path(_devices.__file__).resolve().parents[2])]))
_PACK_CODE = tuple(f"{root}/{folder}/" for root in _ROOTS for folder in ("models", "nodes"))


_resolved: dict = {}


def pack_site(frame) -> str | None:
    """'models/x.py:LINE' when the frame runs the pack's library code, else None."""
    module = frame.f_globals.get("__name__") or ""
    path = frame.f_code.co_filename
    if not path.startswith(_PACK_CODE):  # e.g. custom_nodes/ComfyUI-TransEdit, a symlink to the checkout
        path = _resolved.get(path) or _resolved.setdefault(path, str(Path(path).resolve()))
    for root in _ROOTS:
        if path.startswith(_PACK_CODE) and path.startswith(root + "/"):
            return f"{path[len(root) + 1:]}:{frame.f_lineno}"
    if module in PACK_MODULES or module.startswith(tuple(m + "." for m in PACK_MODULES)):
        return f"{module.split('.', 1)[1].replace('.', '/')}.py:{frame.f_lineno}"
    return None


_library_files: dict = {}


def _in_torch_or_sentinel(filename: str) -> bool:
    """A frame of PyTorch's own code (or of this module): the caller is further out."""
    known = _library_files.get(filename)
    if known is None:
        known = _library_files[filename] = (filename in SENTINEL_CODE or filename.startswith(TORCH_CODE) or
                                            str(Path(filename).resolve()).startswith(TORCH_CODE))
    return known


def _host_side_code() -> set:
    """@host_side functions of every copy of models/core/devices.py loaded (ComfyUI loads the pack under its
    folder's name, beside the `transedit` the tests import)."""
    found = set(HOST_SIDE_CODE)
    for name, module in list(sys.modules.items()):
        if name.endswith(".models.core.devices") and module is not _devices:
            found |= getattr(module, "HOST_SIDE_CODE", set())
    return found


def _site() -> tuple[str | None, bool]:
    """(the pack's site that made the call, or None when the call's maker is not the pack's code; whether a
    @host_side function is on the stack)."""
    frame = sys._getframe(1)
    while frame is not None and _in_torch_or_sentinel(frame.f_code.co_filename):
        frame = frame.f_back
    site = pack_site(frame) if frame is not None else None
    if site is None:
        return None, False
    host_side_code = _host_side_code()
    while frame is not None:
        if frame.f_code in host_side_code:
            return site, True
        frame = frame.f_back
    return site, False


def _tensors(args, kwargs):
    for a in list(args) + list(kwargs.values()):
        if isinstance(a, torch.Tensor):
            yield a
        elif isinstance(a, (tuple, list)):
            yield from (t for t in a if isinstance(t, torch.Tensor))


def _target_device(args, kwargs):
    """The device `.to(...)` names (a device, its name or index, or another tensor's), else None (a dtype)."""
    for t in list(args[1:]) + [kwargs.get("device"), kwargs.get("tensor")]:
        if isinstance(t, torch.Tensor):
            return t.device
        if isinstance(t, torch.device):
            return t
        if isinstance(t, str):
            return torch.device(t)
        if isinstance(t, int) and not isinstance(t, bool):
            return torch.device("cuda", t)
    return None


def _crosses(devices) -> bool:
    """Host and a device among them."""
    types = {d.type for d in devices}
    return "cpu" in types and len(types) > 1


def _host_index(index) -> bool:
    """An index that is read back or built on the host: a bool mask (its positions are counted), a 0-dim integer
    tensor (read as a Python int), a tensor as a slice's bound, a list, tuple, range or array of positions."""
    for item in index if isinstance(index, tuple) else (index,):
        if isinstance(item, torch.Tensor):
            if item.dtype in (torch.bool, torch.uint8) or (item.dim() == 0 and not item.is_floating_point()):
                return True
        elif isinstance(item, slice):
            if any(isinstance(bound, torch.Tensor) for bound in (item.start, item.stop, item.step)):
                return True
        elif isinstance(item, (list, tuple, range)) or getattr(item, "ndim", 0) > 0:
            return True
    return False


def _read_as_size(name: str, args, kwargs) -> bool:
    """A tensor given where a `SIZE_OPS` op takes a number (not `out=`): the parser reads it back."""
    values = list(args if name in FACTORIES else args[1:]) + [v for k, v in kwargs.items() if k != "out"]
    for value in values:
        if isinstance(value, torch.Tensor) or (isinstance(value, (tuple, list)) and
                                               any(isinstance(v, torch.Tensor) for v in value)):
            return True
    return False


def sync_op(func, args, kwargs, moves: bool = False) -> str | None:
    """The name to count `func(*args, **kwargs)` under when it synchronises (see the module's docstring)."""
    name = getattr(func, "__name__", "")
    if name in SYNC_OPS:
        return name
    if name == "where" and len(args) + len(kwargs) == 1:
        return "where(condition)"
    if name == "repeat_interleave" and "output_size" not in kwargs:
        repeats = args[1] if len(args) > 1 else kwargs.get("repeats")
        if repeats is None or isinstance(repeats, torch.Tensor):
            return "repeat_interleave(tensor repeats)"
    if name in INDEXING and _host_index(args[1]):
        return f"{name}(host index)"
    if name in SIZE_OPS and _read_as_size(name, args, kwargs):
        return f"{name}(tensor as number)"
    if name == "one_hot" and (args[1] if len(args) > 1 else kwargs.get("num_classes", -1)) == -1:
        return "one_hot(num_classes=-1)"
    if name in ("index_put_", "index_put"):
        indices = args[1] if len(args) > 1 else kwargs.get("indices", ())
        if any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in indices):
            return f"{name}(mask)"
    if name in MOVES:
        source = args[0]
        if name == "to":
            target = _target_device(args, kwargs)
        elif name == "copy_":
            source_of_copy = args[1] if len(args) > 1 else kwargs.get("src", kwargs.get("other"))
            target = source_of_copy.device
        elif name == "type_as":
            target = (args[1] if len(args) > 1 else kwargs["other"]).device
        else:
            target = torch.device("cuda")
        if target is None:
            return None
        if _crosses((source.device, target)):
            return f"{name}(host<->device)"
        if moves:
            return f"{name}(device)"
        return None
    if _crosses(t.device for t in _tensors(args, kwargs) if t.device.type != "cpu" or t.dim() > 0):
        return f"{name}(host<->device)"
    return None


LEGACY_TYPES = ("FloatTensor", "DoubleTensor", "HalfTensor", "BFloat16Tensor", "ByteTensor", "CharTensor",
                "ShortTensor", "IntTensor", "LongTensor", "BoolTensor")


def wrapped_calls() -> list[tuple[object, str, str]]:
    """(owner, attribute, name to count): calls a torch function mode does not see, wrapped while a counter is
    active: the explicit waits, the two ways of making a tensor of host memory without copying it, and the legacy
    constructors (see `legacy_data`)."""
    found = [(torch.cuda, "synchronize", "cuda.synchronize"), (torch.cuda.Stream, "synchronize", "Stream.synchronize"),
             (torch.cuda.Event, "synchronize", "Event.synchronize"), (torch.cuda, "empty_cache", "cuda.empty_cache"),
             (torch, "from_numpy", "from_numpy"), (torch, "frombuffer", "frombuffer")]
    if hasattr(getattr(torch, "accelerator", None), "synchronize"):
        found.append((torch.accelerator, "synchronize", "accelerator.synchronize"))
    found += [(module, name, f"{prefix}{name}") for module, prefix in ((torch, ""), (torch.cuda, "cuda."))
              for name in LEGACY_TYPES if hasattr(module, name)]
    return found


def legacy_data(args) -> bool:
    """`torch.Tensor(...)`/`torch.FloatTensor(...)` given host data (a list, tuple or array), not sizes."""
    return any(not isinstance(a, (torch.Tensor, torch.Size)) and
               (isinstance(a, (list, tuple)) or hasattr(a, "__array__")) for a in args)


class LegacyType:
    """Stands in for torch.FloatTensor & co. while a counter is active: a call with host data counts; isinstance
    and attributes go to the real type."""

    def __init__(self, original, count):
        self.original, self.count = original, count

    def __call__(self, *args, **kwargs):
        if legacy_data(args):
            self.count()
        return self.original(*args, **kwargs)

    def __instancecheck__(self, obj):
        return isinstance(obj, self.original)

    def __getattr__(self, name):
        return getattr(self.original, name)


class SyncCounter(TorchFunctionMode):
    """`with SyncCounter() as syncs: ...` then `syncs.counts` {(op, file:line): n} for calls from the pack.

    moves=True also counts moves and copies between devices (`.to(<a device or tensor>)`, `.cuda()`, `copy_`):
    on a CPU every device is the host, so a move to the compute device and a copy back cannot be told apart;
    compared across runs (per_step) they show copies that grow with the work."""

    def __init__(self, moves: bool = False):
        super().__init__()
        self.counts: Counter = Counter()
        self.moves = moves
        self._wrapped: list = []

    def count(self, op: str) -> None:
        site, host = _site()
        if site is not None and not host:
            self.counts[(op, site)] += 1

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        op = sync_op(func, args, kwargs, self.moves)
        if op is not None:
            self.count(op)
        return func(*args, **kwargs)

    def __enter__(self):
        for owner, attr, op in wrapped_calls():
            original = getattr(owner, attr)
            self._wrapped.append((owner, attr, original))
            if attr in LEGACY_TYPES:
                setattr(owner, attr, LegacyType(original, lambda op=op: self.count(op)))
            else:
                setattr(owner, attr, self._counting(original, op))
        # torch.Tensor(...) itself: its class cannot be replaced, so its __new__ is, for the counter's lifetime
        outer_new = torch.Tensor.__dict__.get("__new__")
        self._wrapped.append((torch.Tensor, "__new__", outer_new))
        base_new = torch.Tensor.__new__

        def new(*args, **kwargs):  # (cls, *args): a signature torch._dynamo accepts, should it be imported meanwhile
            if args[0] is torch.Tensor and legacy_data(args[1:]):
                self.count("Tensor(data)")
            return base_new(*args, **kwargs)

        torch.Tensor.__new__ = staticmethod(new)
        return super().__enter__()

    def __exit__(self, *exc):
        while self._wrapped:
            owner, attr, original = self._wrapped.pop()
            if original is None:  # inherited (torch.Tensor.__new__ comes from its C base)
                delattr(owner, attr)
            else:
                setattr(owner, attr, original)
        return super().__exit__(*exc)

    def _counting(self, original, op: str):
        def wait(*args, **kwargs):
            self.count(op)
            return original(*args, **kwargs)

        return wait

    def total(self) -> int:
        return sum(self.counts.values())

    def ops(self) -> set[str]:
        return {op for op, _ in self.counts}


def per_step(run, small: int, large: int, moves: bool = False) -> Counter:
    """The syncs that grow with the number of steps: run(n) is counted for n = small and n = large; what a
    loop-free setup does once cancels out. Returns {(op, site): extra calls} (empty when the loop is clean)."""
    with SyncCounter(moves) as a:
        run(small)
    with SyncCounter(moves) as b:
        run(large)
    return Counter({k: v for k, v in (b.counts - a.counts).items() if v})


# ---------------------------------------------------------------- PyTorch's own detector, on a CUDA device
@contextlib.contextmanager
def cuda_sync_errors():
    """Inside, any CUDA call that synchronises raises RuntimeError ("called a synchronizing CUDA operation")."""
    before = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(before)


def cuda_syncs(run) -> int:
    """How many synchronising CUDA calls run() makes, by PyTorch's detector in warning mode (one warning each)."""
    before = torch.cuda.get_sync_debug_mode()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            run()
        finally:
            torch.cuda.set_sync_debug_mode(before)
    return sum("synchronizing CUDA operation" in str(w.message) for w in caught)


def cuda_per_step(run, small: int, large: int) -> int:
    """The CUDA detector's count for run(large) less run(small): 0 when the loop adds no sync per step."""
    return cuda_syncs(lambda: run(large)) - cuda_syncs(lambda: run(small))
