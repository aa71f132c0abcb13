"""GPU habits shared by the model families: constants made once per device, and the marker for host-side code.

On a GPU, anything that moves data between host and device inside a per-step loop stalls the loop until the GPU
has caught up: `.item()`, `.tolist()`, `bool(t)`, `.nonzero()`, a `torch.tensor([...], device=gpu)` copy. The pack's
hot loops (Splice's training step, PUT's sampling passes, synthesis) avoid them; tests/test_sync_free.py counts
them on the CPU. Code that deliberately works on host tensors only (random draws on a seeded CPU generator, so a
seed means the same on every device) is marked `@host_side`, and the count leaves it out.

Capabilities are read for the device a model runs on, never the current one: `has_native_bf16`.
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


# bf16 tensor cores arrived with compute capability 8.0 (Ampere); before it (T4, V100, RTX 20xx) torch emulates
# bf16, which runs but is slower than fp32
NATIVE_BF16_CAPABILITY = (8, 0)


def has_native_bf16(device: torch.device) -> bool:
    """Whether `device` runs bf16 math natively: the CPU does (torch's CPU kernels); a CUDA device from Ampere on,
    read for that device (torch.cuda.is_bf16_supported(including_emulation=False) reads the current one); ROCm
    GPUs do. Other devices: no (their bf16 support varies; fp16/fp32 are the safe answers)."""
    device = torch.device(device)
    if device.type == "cpu":
        return True
    if device.type != "cuda":
        return False
    if torch.version.hip:
        return True
    return tuple(torch.cuda.get_device_capability(device)) >= NATIVE_BF16_CAPABILITY
