"""GPU habits shared by the model families: constants made once per device, and the marker for host-side code.

On a GPU, anything that moves data between host and device inside a per-step loop stalls the loop until the GPU
has caught up: `.item()`, `.tolist()`, `bool(t)`, `.nonzero()`, a `torch.tensor([...], device=gpu)` copy. The pack's
hot loops (Splice's training step, PUT's sampling passes, synthesis) avoid them; tests/test_sync_free.py counts
them on the CPU. Code that deliberately works on host tensors only (random draws on a seeded CPU generator, so a
seed means the same on every device) is marked `@host_side`, and the count leaves it out.
"""
from __future__ import annotations

import threading
from typing import Callable, Sequence, TypeVar

import torch

F = TypeVar("F", bound=Callable)

HOST_SIDE_CODE: set = set()  # code objects of @host_side functions (read by the sync count in the tests)


def host_side(fn: F) -> F:
    """Mark a function that only touches host (CPU) tensors, e.g. draws from a CPU torch.Generator: its
    `.item()` calls read host memory and never wait for a GPU."""
    HOST_SIDE_CODE.add(fn.__code__)
    return fn


_constants: dict = {}
_lock = threading.Lock()


def device_constant(values: Sequence[float], device: torch.device, dtype: torch.dtype = torch.float32,
                    shape: Sequence[int] = (-1,)) -> torch.Tensor:
    """A small constant tensor (e.g. normalisation means) on `device`, copied there once and then reused: a
    copy from host memory made inside a loop would wait for the GPU every time. Treat it as read-only."""
    key = (tuple(float(v) for v in values), str(torch.device(device)), dtype, tuple(shape))
    cached = _constants.get(key)
    if cached is None:
        with _lock:
            cached = _constants.get(key)
            if cached is None:
                with torch.inference_mode(False):  # usable in autograd later (Splice trains through DINO)
                    cached = torch.tensor(key[0], dtype=dtype, device=device).view(*shape)
                _constants[key] = cached
    return cached
