"""Counting host synchronisations on a CPU-only machine.

On a GPU, every call below makes the host wait for the device (or copies host memory into a device stream, which
waits just the same): a value read back (`.item()`, `.tolist()`, `bool()`/`int()`/`float()` of a tensor, `.cpu()`,
`.numpy()`), a data-dependent shape (`.nonzero()`, `torch.unique`, boolean indexing via `masked_select`),
`torch.multinomial`, `torch.equal`, or a tensor built from host data (`torch.tensor`, `new_tensor`,
`as_tensor`, `from_numpy`). A torch function mode sees each of them on the CPU too, so a test can count them in a
hot loop and fail when a loop that must run without them gains one. Calls made inside functions marked
`@host_side` (models/devices.py: they read CPU-generator draws, never device memory) are not counted.
"""
from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

from torch.overrides import TorchFunctionMode

from transedit.models.devices import HOST_SIDE_CODE

SYNC_OPS = frozenset({"__bool__", "__int__", "__float__", "__index__", "item", "tolist", "cpu", "numpy", "nonzero",
                      "argwhere", "unique", "masked_select", "multinomial", "equal", "tensor", "new_tensor",
                      "as_tensor", "from_numpy"})
_PACK = str(Path(__file__).resolve().parents[1])
_PACK_CODE = tuple(f"{_PACK}/{folder}/" for folder in ("models", "nodes"))  # the library; not tests, not .venv


def _site() -> tuple[str, bool]:
    """(the pack's innermost file:line on the stack, whether a @host_side function is on it)."""
    frame = sys._getframe(2)
    site = None
    while frame is not None:
        if frame.f_code in HOST_SIDE_CODE:
            return site or "?", True
        path = frame.f_code.co_filename
        if site is None and path.startswith(_PACK_CODE):
            site = f"{path[len(_PACK) + 1:]}:{frame.f_lineno}"
        frame = frame.f_back
    return site or "?", False


def _names_a_device(args, kwargs) -> bool:
    import torch

    targets = list(args[1:]) + [kwargs.get("device")]
    return any(isinstance(t, (str, torch.device)) for t in targets if t is not None)


class SyncCounter(TorchFunctionMode):
    """`with SyncCounter() as syncs: ...` then `syncs.counts` {(op, file:line): n} for calls from the pack.

    moves=True also counts `.to(<a device>)`: on a CPU every device is the host, so a move to the compute device
    and a copy back cannot be told apart; compared across runs (per_step) they show copies that grow with the
    work."""

    def __init__(self, moves: bool = False):
        super().__init__()
        self.counts: Counter = Counter()
        self.moves = moves

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if self.moves and name == "to" and _names_a_device(args, kwargs or {}):
            name = "to(device)"
        if name in SYNC_OPS or name == "to(device)":
            site, host = _site()
            if not host and site != "?":
                self.counts[(name, site)] += 1
        return func(*args, **(kwargs or {}))

    def total(self) -> int:
        return sum(self.counts.values())


def per_step(run, small: int, large: int, moves: bool = False) -> Counter:
    """The syncs that grow with the number of steps: run(n) is counted for n = small and n = large; what a
    loop-free setup does once cancels out. Returns {(op, site): extra calls} (empty when the loop is clean)."""
    with SyncCounter(moves) as a:
        run(small)
    with SyncCounter(moves) as b:
        run(large)
    return Counter({k: v for k, v in (b.counts - a.counts).items() if v})
