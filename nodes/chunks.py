"""Running a node's batch in chunks: Cancel between chunks, out of memory answered by smaller chunks, then by
unloading every other model once, then by a clear error that is still the device's out-of-memory class."""
from __future__ import annotations

from typing import Callable, TypeVar

from . import comfy_bridge as bridge

T = TypeVar("T")


def run_in_chunks(node: str, total: int, chunk: int, work: Callable[[int, int], T], *, what: str,
                  advice: str, keep: tuple = (), cancel: Callable[[], None] = None) -> list[T]:
    """work(start, stop) over items 0..total in chunks of `chunk`, results in order.

    Cancel is checked before every chunk (`cancel`, default ComfyUI's check; work beside the queue passes its own). Out of memory frees the cache and retries the failed chunk at half
    its size (later chunks keep the smaller size). When a single item does not fit, every other model
    ComfyUI holds is unloaded (not `keep`: the ManagedModels this node runs) and the item is tried once
    more; if it still fails, the device's OOM exception is raised again with a message naming the node,
    `what` failed and `advice` (what to lower), so ComfyUI still recognises it as out-of-memory. `work` must
    not leave partial results behind when it raises."""
    oom = bridge.oom_exception()
    results: list[T] = []
    start, chunk = 0, max(1, int(chunk))
    made_room = False
    cancel = cancel or bridge.check_interrupt
    while start < total:
        cancel()
        stop = min(start + chunk, total)
        try:
            results.append(work(start, stop))
        except oom:
            bridge.soft_empty_cache()
            if stop - start == 1:
                if not made_room and bridge.unload_other_models(keep):
                    made_room = True
                    continue
                raise oom(f"{node}: out of memory {what}. Fix: {advice}") from None
            chunk = max(1, (stop - start) // 2)
            bridge.log.warning("%s: out of memory with %d items at once; retrying %d at a time", node,
                               stop - start, chunk)
            continue
        start = stop
    return results
