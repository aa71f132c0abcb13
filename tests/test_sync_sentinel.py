"""The sync sentinel (tests/sync_sentinel.py) sees every kind of host synchronisation planted in pack code, and
sees it whether the pack is imported through its real path or through a symlink, as ./dev.sh gpu-check imports
it (/tmp/transedit-src/transedit -> the checkout). The planted module lives in a copy of the pack in a temporary
folder, never in the checkout. Calls that do not synchronise, calls from outside the pack and @host_side
functions are not counted.

Over 600 lines: the planted module is one table of every syncing call the sentinel knows, read beside its checks."""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest
import torch

import sync_sentinel
from sync_sentinel import SyncCounter, per_step, sync_op

TESTS = Path(__file__).resolve().parent
PACK = TESTS.parent

# One function per syncing call, planted in a pack module. EXPECT: function -> (the op it must be counted as,
# whether the count needs moves=True). Each gets x = torch.arange(6.0) (on the host).
PLANTED = textwrap.dedent('''
    import io
    import math

    import numpy as np
    import torch

    from transedit.models.core.devices import host_side


    def item(x): return x.sum().item()
    def tolist(x): return x.tolist()
    def cpu(x): return x.cpu()
    def numpy_(x): return x.numpy()
    def array(x): return np.asarray(x)
    def bool_(x): return bool(x.sum() > 0)
    def int_(x): return int(x.sum())
    def float_(x): return float(x.sum())
    def complex_(x): return complex(x.sum())
    def index_(x): return [0, 1, 2][x.long()[1]]
    def contains(x): return 3.0 in x
    def is_nonzero(x): return torch.is_nonzero(x.sum())
    def equal(x): return torch.equal(x, x)
    def allclose(x): return torch.allclose(x, x)
    def isclose_all_read(x): return bool(torch.isclose(x, x).all())
    def format_(x): return f"{x.sum():.3f}"
    def repr_(x): return repr(x)
    def str_(x): return str(x)
    def print_(x): print(x, file=io.StringIO())
    def nonzero(x): return (x > 2).nonzero()
    def argwhere(x): return torch.argwhere(x > 2)
    def where_condition(x): return torch.where(x > 2)
    def unique(x): return torch.unique(x)
    def unique_method(x): return x.unique()
    def unique_consecutive(x): return torch.unique_consecutive(x)
    def masked_select(x): return x.masked_select(x > 2)
    def bincount(x): return torch.bincount(x.long())
    def multinomial(x): return torch.multinomial(x + 1, 1)
    def repeat_interleave(x): return x.repeat_interleave(torch.ones_like(x, dtype=torch.long))
    def repeat_interleave_kw(x): return torch.repeat_interleave(x, repeats=torch.ones_like(x, dtype=torch.long))
    def repeat_interleave_alone(x): return torch.repeat_interleave(x.long())
    def inverse(x): return torch.inverse(torch.eye(2, device=x.device) + x[0])
    def linalg_inv(x): return torch.linalg.inv(torch.eye(2, device=x.device))
    def linalg_solve(x): return torch.linalg.solve(torch.eye(2, device=x.device), x[:2])
    def linalg_cholesky(x): return torch.linalg.cholesky(torch.eye(2, device=x.device))
    def mask_index(x): return x[x > 2]
    def mask_index_in_tuple(x): return x[None][:, x > 2]
    def mask_assign(x):
        y = x.clone()
        y[y > 2] = 0.0
        return y
    def mask_index_put(x): return x.clone().index_put_((x > 2,), torch.zeros((), device=x.device))
    def mask_index_put_kw(x): return torch.index_put(x, indices=(x > 2,), values=torch.zeros((), device=x.device))
    def scalar_index(x): return x[x.long()[2]]
    def list_index(x): return x[[0, 2]]
    def array_index(x): return x[np.array([0, 2])]
    def tensor(x): return x + torch.tensor([1.0] * 6)
    def as_tensor(x): return x + torch.as_tensor([1.0] * 6)
    def asarray(x): return x + torch.asarray([1.0] * 6)
    def from_numpy(x): return x + torch.from_numpy(np.ones(6, dtype=np.float32))
    def frombuffer(x): return x + torch.frombuffer(bytearray(24), dtype=torch.float32)
    def new_tensor(x): return x + x.new_tensor([1.0] * 6)
    def blur_kernel_built_on_host(x, sigma=1.5):
        # the regression Splice had: a 3-tap kernel built on the CPU, then moved to the device every step
        k = torch.tensor([math.exp(-(i - 1) ** 2 / (2 * sigma ** 2)) for i in range(3)]).to(x.device)
        return torch.nn.functional.conv1d(x.view(1, 1, -1), (k / k.sum()).view(1, 1, 3))
    def to_device(x): return x.to(x.device)
    def to_device_kw(x): return x.to(device=x.device, dtype=torch.float64)
    def to_device_index(x):
        try:
            return x.to(0)  # CUDA device 0
        except (RuntimeError, AssertionError):  # no CUDA device here: the attempt is what counts
            return None
    def to_other_tensor(x): return x.to(torch.zeros(1, dtype=torch.float64))
    def to_other_tensor_kw(x): return x.to(tensor=torch.zeros(1, dtype=torch.float64))
    def copy_from_host(x): return torch.empty_like(x).copy_(x)
    def copy_from_host_kw(x): return torch.empty_like(x).copy_(other=x)
    def cuda(x):
        try:
            return x.cuda()
        except (RuntimeError, AssertionError):
            return None
    def to_meta(x): return x.to("meta")
    def to_meta_device(x): return x.to(torch.device("meta"))
    def copy_into_meta(x): return torch.empty(6, device="meta").copy_(x)
    def copy_from_meta(x):
        try:
            return torch.empty(6).copy_(torch.empty(6, device="meta"))
        except (RuntimeError, NotImplementedError):  # a meta tensor has no data to copy: the attempt counts
            return None
    def host_index_into_meta(x):
        try:
            return torch.empty(6, device="meta")[x.long()]
        except (RuntimeError, NotImplementedError):
            return None
    def host_value_into_meta(x):
        y = torch.empty(6, device="meta")
        try:
            y[torch.arange(6, device="meta")] = x
        except (RuntimeError, NotImplementedError):
            pass
        return y
    def cuda_synchronize(x):
        try:
            torch.cuda.synchronize()
        except (RuntimeError, AssertionError):  # no CUDA device here: the attempt is what counts
            pass
    def stream_synchronize(x):
        try:
            torch.cuda.Stream.synchronize(object())
        except Exception:
            pass
    def event_synchronize(x):
        try:
            torch.cuda.Event.synchronize(object())
        except Exception:
            pass
    def accelerator_synchronize(x):
        try:
            torch.accelerator.synchronize()
        except Exception:
            pass
    def empty_cache(x): torch.cuda.empty_cache()  # a no-op without CUDA: the call is what counts
    def slice_tensor_bound(x): return x[: (x > 2).sum()]
    def range_index(x): return x[range(2)]
    def tuple_index(x): return x[(0, 2),]
    def arange_tensor(x): return torch.arange((x > 2).sum(), device=x.device)
    def zeros_tensor(x): return torch.zeros((x > 2).sum(), device=x.device)
    def zeros_tensor_in_size(x): return torch.zeros(((x > 2).sum(), 2), device=x.device)
    def full_tensor_fill(x): return torch.full((2,), x.sum(), device=x.device)
    def view_tensor(x): return x.view((x > -1).sum())
    def reshape_tensor(x): return x.reshape(2, (x > 2).sum())
    def topk_tensor(x): return x.topk((x > 3).sum())
    def one_hot_default(x): return torch.nn.functional.one_hot(x.long())
    def one_hot_minus_one(x): return torch.nn.functional.one_hot(x.long(), num_classes=-1)
    def linalg_eigh(x): return torch.linalg.eigh(torch.eye(2, device=x.device))
    def linalg_eigvalsh(x): return torch.linalg.eigvalsh(torch.eye(2, device=x.device))
    def linalg_svd(x): return torch.linalg.svd(torch.eye(2, device=x.device))
    def linalg_svdvals(x): return torch.linalg.svdvals(torch.eye(2, device=x.device))
    def svd(x): return torch.svd(torch.eye(2, device=x.device))
    def linalg_eig(x): return torch.linalg.eig(torch.eye(2, device=x.device))
    def legacy_tensor(x): return x + torch.Tensor([1.0] * 6)
    def legacy_float_tensor(x): return x + torch.FloatTensor([1.0] * 6)
    def legacy_long_tensor(x): return x + torch.LongTensor(np.ones(6, dtype=np.int64))
    def type_as(x): return x.type_as(torch.zeros(1, dtype=torch.float64))
    def type_as_meta(x): return x.type_as(torch.empty(1, device="meta"))
    def torch_helper_reads_back(x):
        # the read-back happens inside torch.nn.utils (torch's own Python code): charged to this line
        weight = torch.nn.Parameter(x.clone())
        weight.grad = x.clone()
        return torch.nn.utils.clip_grad_norm_([weight], 1.0, error_if_nonfinite=True)

    # calls that make no host sync: none may be counted, with or without moves
    def clean_arithmetic(x): return (x * 2 + 1).sum()
    def clean_where3(x): return torch.where(x > 2, x, 0.0)
    def clean_where_kw(x): return torch.where(x > 2, input=x, other=torch.zeros_like(x))
    def clean_long_index(x): return x[x.long() % 3]
    def clean_index_put_long(x): return x.clone().index_put_((x.long() % 3,), torch.zeros((), device=x.device))
    def clean_slices(x): return x[1:3].sum() + x[None, ..., 0].sum() + x[True][0].sum()
    def clean_slice_assign(x):
        y = x.clone()
        y[1:3] = 0.0
        y[x.long() % 2] = x[:6]
        return y
    def clean_masked_fill(x): return x.masked_fill(x > 2, 0.0)
    def clean_isclose(x): return torch.isclose(x, x).all()
    def clean_repeat_int(x): return x.repeat_interleave(2)
    def clean_repeat_output_size(x):
        return x.repeat_interleave(torch.ones_like(x, dtype=torch.long), output_size=6)
    def clean_factories(x): return torch.arange(3, device=x.device) + torch.full((3,), 2.0, device=x.device)
    def clean_to_dtype(x): return x.to(torch.float64) + x.to(dtype=torch.float16).float()
    def clean_len_and_shape(x): return len(x) + x.shape[0] + x.size(0) + x.dim()
    def clean_scalar_mix(x): return torch.empty(6, device="meta").mul_(x.sum())  # a 0-dim host scalar: read on the host
    def clean_list_of_host_tensors(x): return torch.stack([x, x])
    def clean_meta_only(x): return torch.empty(6, device="meta") * 2
    def clean_int_sizes(x):
        sized = torch.zeros(3, 2, device=x.device).view(6).reshape(2, 3).topk(1).values
        return sized + torch.arange(2, device=x.device)[:1]
    def clean_one_hot_with_classes(x): return torch.nn.functional.one_hot(x.long(), 6)
    def clean_scalar_tensor_arithmetic(x): return x * x.sum() + torch.clamp(x, max=x.sum())

    def calls_back(x, callback):
        """Pack code that calls a caller's function: what that function does is the caller's."""
        return callback(x)

    @host_side
    def draw(gen):
        return torch.rand((), generator=gen).item() + torch.tensor([1.0]).sum().item()

    @host_side
    def calls_pack_code(x):
        return item(x) + len(nonzero(x))

    def setup_then_steps(x, n):
        """One host-built constant, then one read-back per step."""
        scale = torch.tensor(2.0)
        return [(x * scale)[i].item() for i in range(n)]

    def moves_per_step(x, n):
        return [x.to(x.device) for _ in range(n)]


    ONCE = {
        "item": "item", "tolist": "tolist", "cpu": "cpu", "numpy_": "numpy", "array": "__array__",
        "bool_": "__bool__", "int_": "__int__", "float_": "__float__", "complex_": "__complex__",
        "index_": "__index__", "contains": "__contains__", "is_nonzero": "is_nonzero", "equal": "equal",
        "allclose": "allclose", "isclose_all_read": "__bool__", "format_": "__format__", "repr_": "__repr__",
        "str_": "__repr__", "print_": "__repr__", "nonzero": "nonzero", "argwhere": "argwhere",
        "where_condition": "where(condition)", "unique": "unique", "unique_method": "unique",
        "unique_consecutive": "unique_consecutive", "masked_select": "masked_select", "bincount": "bincount",
        "multinomial": "multinomial", "repeat_interleave": "repeat_interleave(tensor repeats)",
        "repeat_interleave_kw": "repeat_interleave(tensor repeats)",
        "repeat_interleave_alone": "repeat_interleave(tensor repeats)", "inverse": "inverse",
        "linalg_inv": "linalg_inv", "linalg_solve": "linalg_solve", "linalg_cholesky": "linalg_cholesky",
        "mask_index": "__getitem__(host index)", "mask_index_in_tuple": "__getitem__(host index)",
        "mask_assign": "__setitem__(host index)", "mask_index_put": "index_put_(mask)",
        "mask_index_put_kw": "index_put(mask)", "scalar_index": "__getitem__(host index)",
        "list_index": "__getitem__(host index)", "array_index": "__getitem__(host index)", "tensor": "tensor",
        "as_tensor": "as_tensor", "asarray": "asarray", "from_numpy": "from_numpy", "frombuffer": "frombuffer",
        "new_tensor": "new_tensor", "blur_kernel_built_on_host": "tensor",
        "to_device_index": "to(host<->device)", "to_meta": "to(host<->device)", "to_meta_device": "to(host<->device)",
        "copy_into_meta": "copy_(host<->device)", "copy_from_meta": "copy_(host<->device)",
        "host_index_into_meta": "__getitem__(host<->device)", "host_value_into_meta": "__setitem__(host<->device)",
        "cuda": "cuda(host<->device)", "cuda_synchronize": "cuda.synchronize",
        "stream_synchronize": "Stream.synchronize", "event_synchronize": "Event.synchronize",
        "accelerator_synchronize": "accelerator.synchronize", "empty_cache": "cuda.empty_cache",
        "slice_tensor_bound": "__getitem__(host index)", "range_index": "__getitem__(host index)",
        "tuple_index": "__getitem__(host index)", "arange_tensor": "arange(tensor as number)",
        "zeros_tensor": "zeros(tensor as number)", "zeros_tensor_in_size": "zeros(tensor as number)",
        "full_tensor_fill": "full(tensor as number)", "view_tensor": "view(tensor as number)",
        "reshape_tensor": "reshape(tensor as number)", "topk_tensor": "topk(tensor as number)",
        "one_hot_default": "one_hot(num_classes=-1)", "one_hot_minus_one": "one_hot(num_classes=-1)",
        "linalg_eigh": "linalg_eigh", "linalg_eigvalsh": "linalg_eigvalsh", "linalg_svd": "linalg_svd",
        "linalg_svdvals": "linalg_svdvals", "svd": "svd", "linalg_eig": "linalg_eig",
        "legacy_tensor": "Tensor(data)", "legacy_float_tensor": "FloatTensor", "legacy_long_tensor": "LongTensor",
        "type_as_meta": "type_as(host<->device)", "torch_helper_reads_back": "__bool__",
    }
    # counted only with moves=True (on a CPU a move to the compute device looks like any other)
    MOVES = {
        "to_device": "to(device)", "to_device_kw": "to(device)",
        "to_other_tensor": "to(device)", "to_other_tensor_kw": "to(device)", "copy_from_host": "copy_(device)",
        "copy_from_host_kw": "copy_(device)", "blur_kernel_built_on_host": "to(device)",
        "type_as": "type_as(device)", "torch_helper_reads_back": "to(device)",  # clip_grad_norm_ moves inside
    }
''')

# Runs in this process or a fresh one: each planted function under a fresh counter.
CENSUS = textwrap.dedent('''
    def census(module, SyncCounter):
        import torch

        out = {}
        for name in [n for n in vars(module) if callable(getattr(module, n)) and
                     (n in module.ONCE or n in module.MOVES or n.startswith("clean_"))]:
            for moves in (False, True):
                with SyncCounter(moves) as syncs:
                    getattr(module, name)(torch.arange(6.0))
                out[f"{name}/{moves}"] = sorted(f"{op}@{site}" for (op, site), n in syncs.counts.items()
                                                for _ in range(n))
        return out
''')


def plant(name: str, filename: str, source: str = PLANTED) -> types.ModuleType:
    """The planted functions as module `name`, their code attributed to `filename` (nothing is written there)."""
    module = types.ModuleType(name)
    module.__file__ = filename
    exec(compile(source, filename, "exec"), module.__dict__)  # noqa: S102 - the test's own source, never shipped
    return module


def census(module) -> dict:
    scope: dict = {}
    exec(CENSUS, scope)  # noqa: S102 - the test's own source, never shipped
    return scope["census"](module, SyncCounter)


def def_line(function: str) -> int:
    """The line of PLANTED where `function` is defined."""
    return next(i for i, line in enumerate(PLANTED.splitlines(), 1) if line.startswith(f"def {function}("))


def expectations():
    scope: dict = {}
    exec(compile(PLANTED, "<planted>", "exec"), scope)  # noqa: S102 - the test's own source, never shipped
    return scope["ONCE"], scope["MOVES"], sorted(n for n in scope if n.startswith("clean_"))


ONCE, MOVES, CLEAN = expectations()


def check_census(result: dict, site_file: str) -> list[str]:
    """What is wrong with a census of the planted module (empty when all is right)."""
    wrong = []
    for name, op in ONCE.items():
        for moves in (False, True):
            got = [s for s in result[f"{name}/{moves}"] if s.startswith(op + "@")]
            if not got:
                wrong.append(f"{name} (moves={moves}): {op} not counted; got {result[f'{name}/{moves}']}")
            elif not all(s.startswith(f"{op}@{site_file}:") for s in got):
                wrong.append(f"{name}: counted at the wrong site {got}")
    for name, op in MOVES.items():
        if not any(s.startswith(op + "@") for s in result[f"{name}/True"]):
            wrong.append(f"{name} (moves=True): {op} not counted; got {result[f'{name}/True']}")
        if name not in ONCE and result[f"{name}/False"]:
            wrong.append(f"{name} (moves=False): counted {result[f'{name}/False']}")
    for name in CLEAN:
        if result[f"{name}/False"] or result[f"{name}/True"]:
            wrong.append(f"{name}: a call without a sync was counted {result[f'{name}/True']}")
    return wrong


# ------------------------------------------------------------------------------------------- in this process
@pytest.fixture(scope="module")
def by_module_name():
    """Recognised by its module's name alone (its file is nowhere near the checkout)."""
    return census(plant("transedit.models.planted_syncs", "/nowhere/planted_syncs.py"))


@pytest.fixture(scope="module")
def by_path():
    """Recognised by its file alone (a module name the pack does not use), under the checkout's nodes/."""
    return census(plant("planted_syncs", str(PACK / "nodes" / "planted_syncs.py")))


@pytest.mark.parametrize("name", sorted(ONCE))
def test_each_planted_sync_is_counted_once_per_call(by_module_name, by_path, name):
    op = ONCE[name]
    for result, site in ((by_module_name, "models/planted_syncs.py"), (by_path, "nodes/planted_syncs.py")):
        counted = result[f"{name}/False"]
        assert [s for s in counted if s.startswith(op + "@")], (name, op, counted)
        assert all(s.startswith(f"{op}@{site}:") for s in counted if s.startswith(op + "@")), counted
        assert counted == result[f"{name}/True"] or name in MOVES, (counted, result[f"{name}/True"])


@pytest.mark.parametrize("name", sorted(MOVES))
def test_each_planted_move_is_counted_with_moves(by_module_name, name):
    op = MOVES[name]
    assert [s for s in by_module_name[f"{name}/True"] if s.startswith(op + "@")], by_module_name[f"{name}/True"]
    if name not in ONCE:
        assert by_module_name[f"{name}/False"] == [], "a move on one device counts only with moves=True"


@pytest.mark.parametrize("name", CLEAN)
def test_calls_without_a_sync_are_not_counted(by_module_name, by_path, name):
    for result in (by_module_name, by_path):
        assert result[f"{name}/False"] == result[f"{name}/True"] == [], name


def test_the_census_check_fails_on_a_blind_census(by_module_name):
    """check_census (used on the subprocess runs below) reports a sentinel that counts nothing or everything."""
    assert check_census(by_module_name, "models/planted_syncs.py") == []
    blind = {k: [] for k in by_module_name}
    assert len(check_census(blind, "models/planted_syncs.py")) == 2 * len(ONCE) + len(MOVES)
    noisy = {k: ["item@models/planted_syncs.py:1"] for k in by_module_name}
    assert any("without a sync" in w for w in check_census(noisy, "models/planted_syncs.py"))
    assert any("wrong site" in w for w in check_census(by_module_name, "nodes/planted_syncs.py"))


def test_the_site_is_the_planted_line(by_module_name):
    assert by_module_name["item/False"] == [f"item@models/planted_syncs.py:{def_line('item')}"]
    assert by_module_name["mask_assign/False"] == [f"__setitem__(host index)@models/planted_syncs.py:"
                                                   f"{def_line('mask_assign') + 2}"]


def test_code_outside_the_pack_is_not_counted():
    x = torch.arange(6.0)
    for name, filename in (("tests.planted", str(PACK / "tests" / "planted.py")),
                           ("transedit.random_weights", "/nowhere/random_weights.py"),
                           ("transedit.modelsextra", "/nowhere/modelsextra.py"),
                           ("planted", str(PACK / "models_planted.py"))):
        module = plant(name, filename)
        with SyncCounter(moves=True) as syncs:
            module.item(x), module.mask_index(x), module.tensor(x), module.to_device(x)
            _ = x.sum().item(), torch.tensor([1.0])
        assert syncs.total() == 0, (name, syncs.counts)
    for name in ("transedit.models", "transedit.nodes", "transedit.nodes.deeper.module"):
        with SyncCounter() as syncs:
            plant(name, "/nowhere/x.py").item(x)
        assert syncs.total() == 1, name


def test_a_callers_function_called_by_pack_code_is_the_callers():
    """A call is charged to the code that made it, walking out only through torch's own frames: a test's callback
    that pack code calls is not the pack's (charging the innermost pack frame on the stack would count it at
    `return callback(x)`), while pack code that torch calls back, or that syncs inside torch, is the pack's."""
    module = plant("transedit.models.planted_syncs", "/nowhere/planted_syncs.py")
    callers = plant("tests.planted_callers", str(TESTS / "planted_callers.py"))
    x = torch.arange(6.0)
    with SyncCounter(moves=True) as syncs:
        module.calls_back(x, lambda t: t.sum().item())
        module.calls_back(x, callers.mask_index)  # another module's function, outside the pack
        # a read-back inside torch's code on behalf of the test's function
        module.calls_back(x, lambda t: torch.distributions.Categorical(probs=t + 1, validate_args=True))
        callers.calls_back(x, module.clean_arithmetic)
    assert syncs.total() == 0, syncs.counts
    line = def_line("item")
    layer = torch.nn.Identity()
    layer.register_forward_hook(lambda _layer, _inputs, out: module.item(out))
    with SyncCounter() as syncs:
        module.calls_back(x, module.item)  # pack code reached through pack code
        callers.calls_back(x, module.item)  # pack code reached through the test's code
        layer(x)  # pack code reached through torch's frames and the test's hook
    assert syncs.counts == {("item", f"models/planted_syncs.py:{line}"): 3}, syncs.counts


def test_the_pack_loaded_the_way_comfyui_loads_it(tmp_path, monkeypatch):
    """ComfyUI imports the pack as `<folder name>.models...` from custom_nodes/<folder>, often a symlink to the
    checkout: its files are recognised through the link, and its own copy of devices.py marks @host_side code."""
    folder = tmp_path / "custom_nodes" / "ComfyUI-TransEdit"
    folder.parent.mkdir()
    folder.symlink_to(PACK, target_is_directory=True)
    spec = importlib.util.spec_from_file_location("ComfyUI-TransEdit.models.core.devices",
                                                  folder / "models" / "core" / "devices.py")
    devices = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(devices)
    monkeypatch.setitem(sys.modules, spec.name, devices)
    module = plant("ComfyUI-TransEdit.models.planted_syncs", str(folder / "models" / "planted_syncs.py"))
    with SyncCounter() as syncs:
        module.item(torch.arange(6.0))
    assert syncs.counts == {("item", f"models/planted_syncs.py:{def_line('item')}"): 1}, syncs.counts
    devices.host_side(module.item)
    with SyncCounter() as syncs:
        module.item(torch.arange(6.0))
    assert syncs.total() == 0, syncs.counts


def test_host_side_functions_are_left_out():
    module = plant("transedit.models.planted_syncs", "/nowhere/planted_syncs.py")
    with SyncCounter(moves=True) as syncs:
        module.draw(torch.Generator().manual_seed(0))
        module.calls_pack_code(torch.arange(6.0))  # pack code called from a @host_side function: host-side too
    assert syncs.total() == 0, syncs.counts
    with SyncCounter() as syncs:
        module.item(torch.arange(6.0))
    assert syncs.total() == 1 and syncs.ops() == {"item"}


def test_per_step_keeps_what_grows_with_the_steps():
    module = plant("transedit.models.planted_syncs", "/nowhere/planted_syncs.py")
    x = torch.arange(6.0)
    grown = per_step(lambda n: module.setup_then_steps(x, n), 2, 5)
    line = def_line("setup_then_steps") + 3
    assert grown == {("item", f"models/planted_syncs.py:{line}"): 3}
    with SyncCounter() as once:
        module.setup_then_steps(x, 2)
    assert once.counts == {("tensor", f"models/planted_syncs.py:{line - 1}"): 1,
                           ("item", f"models/planted_syncs.py:{line}"): 2}
    assert per_step(lambda n: [module.clean_arithmetic(x) for _ in range(n)], 1, 4) == {}
    line = def_line("moves_per_step") + 1
    assert per_step(lambda n: module.moves_per_step(x, n), 1, 4) == {}
    assert per_step(lambda n: module.moves_per_step(x, n), 1, 4, moves=True) == {
        ("to(device)", f"models/planted_syncs.py:{line}"): 3}
    with SyncCounter() as syncs:
        module.moves_per_step(x, 2)
    assert syncs.total() == 0, "moves count only when asked for"


class FakeSyncDebugMode:
    """A stand-in for torch.cuda's sync debug mode on a machine without CUDA: a 'synchronising call' warns or
    raises as the mode says, as PyTorch's does."""

    def __init__(self, monkeypatch):
        self.mode = 0
        monkeypatch.setattr(torch.cuda, "get_sync_debug_mode", lambda: self.mode)
        monkeypatch.setattr(torch.cuda, "set_sync_debug_mode", self.set)

    def set(self, mode):
        self.mode = {"default": 0, "warn": 1, "error": 2}.get(mode, mode)

    def sync(self, times: int = 1):
        import warnings

        for _ in range(times):
            if self.mode == 2:
                raise RuntimeError("called a synchronizing CUDA operation")
            if self.mode == 1:
                warnings.warn("called a synchronizing CUDA operation")
        warnings.warn("an unrelated warning")


def test_the_cuda_detector_helpers(monkeypatch):
    """cuda_sync_errors, cuda_syncs and cuda_per_step (which run on a GPU) against a stand-in for PyTorch's
    sync debug mode: they count each synchronising call, raise in error mode, and restore the mode."""
    import warnings

    fake = FakeSyncDebugMode(monkeypatch)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a filter outside does not hide the calls
        assert sync_sentinel.cuda_syncs(lambda: fake.sync(3)) == 3
        assert sync_sentinel.cuda_syncs(lambda: fake.sync(0)) == 0
        assert sync_sentinel.cuda_per_step(lambda n: fake.sync(2 * n + 1), 1, 3) == 4
        assert sync_sentinel.cuda_per_step(lambda n: fake.sync(5), 1, 3) == 0
    assert fake.mode == 0
    with pytest.raises(RuntimeError, match="synchronizing"), sync_sentinel.cuda_sync_errors():
        fake.sync(1)
    assert fake.mode == 0
    fake.mode = 1
    with sync_sentinel.cuda_sync_errors():
        with pytest.raises(RuntimeError):
            fake.sync(1)
    assert fake.mode == 1


def test_waits_are_unwrapped_afterwards():
    originals = [getattr(owner, attr) for owner, attr, _ in sync_sentinel.wrapped_calls()]
    with SyncCounter(), SyncCounter():
        assert torch.cuda.synchronize is not originals[0] and "__new__" in torch.Tensor.__dict__
        # the legacy constructors' stand-ins still answer isinstance and their attributes
        assert isinstance(torch.zeros(1), torch.FloatTensor) and not isinstance(torch.zeros(1), torch.LongTensor)
        assert torch.LongTensor.dtype == torch.int64 and type(torch.Tensor(2, 3)) is torch.Tensor
    assert [getattr(owner, attr) for owner, attr, _ in sync_sentinel.wrapped_calls()] == originals
    assert "__new__" not in torch.Tensor.__dict__, "torch.Tensor's constructor is its own again"


def test_nested_counters_both_count():
    module = plant("transedit.models.planted_syncs", "/nowhere/planted_syncs.py")
    with SyncCounter() as outer:
        with SyncCounter() as inner:
            module.cuda_synchronize(None)
        module.item(torch.arange(6.0))
    assert inner.ops() == {"cuda.synchronize"} and inner.total() == 1
    assert outer.ops() == {"cuda.synchronize", "item"} and outer.total() == 2


def test_sync_op_reads_the_arguments():
    """Direct cases: the rules that depend on arguments, each side of the line."""
    x = torch.arange(6.0)
    mask = x > 2
    assert sync_op(torch.where, (mask,), {}) == "where(condition)"
    assert sync_op(torch.where, (), {"condition": mask}) == "where(condition)"
    assert sync_op(torch.where, (mask, x), {"other": x}) is None
    assert sync_op(torch.Tensor.__getitem__, (x, (slice(None), mask)), {}) == "__getitem__(host index)"
    assert sync_op(torch.Tensor.__getitem__, (x, mask.to(torch.uint8)), {}) == "__getitem__(host index)"
    assert sync_op(torch.Tensor.__getitem__, (x, torch.tensor(1)), {}) == "__getitem__(host index)"
    assert sync_op(torch.Tensor.__getitem__, (x, torch.tensor([1])), {}) is None
    assert sync_op(torch.Tensor.__getitem__, (x, (0, None, Ellipsis)), {}) is None
    assert sync_op(torch.Tensor.to, (x, torch.float16), {}, moves=True) is None
    assert sync_op(torch.Tensor.to, (x, "cpu"), {}) is None  # moves only when asked for
    assert sync_op(torch.Tensor.copy_, (x, x), {}) is None
    assert sync_op(torch.Tensor.index_put_, (x, (mask,)), {"values": x}) == "index_put_(mask)"
    assert sync_op(torch.Tensor.to, (x, torch.float16), {"device": "cpu"}, moves=True) == "to(device)"
    assert sync_op(torch.Tensor.to, (x, True), {}, moves=True) is None  # a bool is the non_blocking flag
    assert sync_op(torch.Tensor.to, (x, "meta"), {}) == "to(host<->device)"
    assert sync_op(torch.Tensor.copy_, (torch.empty(6, device="meta"), x), {}) == "copy_(host<->device)"
    assert sync_op(torch.add, (torch.empty(6, device="meta"), torch.tensor(1.0)), {}) is None
    assert sync_op(torch.add, (torch.empty(6, device="meta"), x), {}) == "add(host<->device)"
    assert sync_op(torch.cat, ([torch.empty(6, device="meta"), x],), {}) == "cat(host<->device)"
    assert sync_op(torch.Tensor.to, (torch.tensor(1.0), "meta"), {}) == "to(host<->device)"
    assert sync_op(torch.Tensor.repeat_interleave, (x, 2), {}) is None
    assert sync_op(torch.Tensor.repeat_interleave, (x,), {"repeats": 2}) is None
    assert sync_op(torch.Tensor.repeat_interleave, (x, x.long()), {"output_size": 6}) is None
    assert sync_op(torch.Tensor.index_put_, (x, (x.long(),), x), {}) is None
    assert sync_op(torch.Tensor.index_put_, (x, (x.long(), mask), x), {}) == "index_put_(mask)"


# ------------------------------------------------------------------ a fresh process: real path and symlink
@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    """A package `transedit` in a temporary folder with the pack's models/core/devices.py (@host_side) and the planted
    module in models/, imported two ways: through its real path and through a symlink, as ./dev.sh gpu-check
    imports the checkout. (Only what the planted module needs is copied: importing the whole pack would cost
    each process seconds.) {layout: (PYTHONPATH entry, census)}."""
    tmp = tmp_path_factory.mktemp("sync-layouts")
    real = tmp / "real" / "transedit"
    (real / "models" / "core").mkdir(parents=True)
    for rel in ("models/__init__.py", "models/core/__init__.py", "models/core/devices.py"):
        shutil.copy2(PACK / rel, real / rel)
    (real / "__init__.py").write_text('"""The planted copy."""\n')
    (real / "models" / "planted_syncs.py").write_text(PLANTED)
    link = tmp / "link"
    link.mkdir()
    (link / "transedit").symlink_to(real, target_is_directory=True)
    script = CENSUS + textwrap.dedent('''
        import json, sys
        import transedit
        import transedit.models.planted_syncs as planted
        from sync_sentinel import SyncCounter
        from pathlib import Path
        from test_sync_sentinel import plant
        by_path = {how: census(plant("planted_by_path", str(path)), SyncCounter) for how, path in
                   (("as imported", Path(planted.__file__)), ("resolved", Path(planted.__file__).resolve()))}
        print("CENSUS " + json.dumps({"file": transedit.__file__, "planted": planted.__file__,
                                      "result": census(planted, SyncCounter), "by_path": by_path}))
    ''')
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    procs = {}
    for layout, root in (("real", real.parent), ("symlink", link)):
        procs[layout] = (root, subprocess.Popen(
            [sys.executable, "-c", script], cwd=tmp, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env=dict(env, PYTHONPATH=os.pathsep.join([str(root), str(TESTS)]))))
    out = {}
    for layout, (root, proc) in procs.items():
        stdout, _ = proc.communicate(timeout=600)
        line = [ln for ln in stdout.splitlines() if ln.startswith("CENSUS ")]
        assert proc.returncode == 0 and line, stdout[-3000:]
        out[layout] = (root, json.loads(line[-1][len("CENSUS "):]))
    return out


@pytest.mark.parametrize("layout", ["real", "symlink"])
def test_planted_syncs_are_counted_through_real_and_symlinked_imports(layouts, layout):
    root, found = layouts[layout]
    assert found["file"] == str(root / "transedit" / "__init__.py"), "the copy, imported this way, was not used"
    assert found["planted"].startswith(str(root)), found["planted"]
    assert check_census(found["result"], "models/planted_syncs.py") == []
    for how, result in found["by_path"].items():  # a module name the pack does not use: its file is recognised
        assert check_census(result, "models/planted_syncs.py") == [], how


@pytest.mark.parametrize("name", sorted(ONCE))
def test_each_planted_sync_is_counted_through_a_symlink(layouts, name):
    """One test per syncing call, as gpu-check imports the pack."""
    for layout in ("real", "symlink"):
        counted = layouts[layout][1]["result"][f"{name}/False"]
        assert any(s.startswith(f"{ONCE[name]}@models/planted_syncs.py:") for s in counted), (layout, counted)
