"""When a live preview may use the models: never while ComfyUI's queue runs a prompt, nor while one is on its way.

ComfyUI's model management is made for one thread, the prompt worker; a live preview renders in another. So:

- A submitted prompt (POST /prompt; nodes/http_routes.py wraps the route) takes a hold at once and waits, without
  holding the event loop, until the preview in flight has let go of the models; only then is it validated and
  queued. The hold lasts until the prompt has been taken by the prompt worker (left the pending queue), or until
  the route answered without queueing it (rejected, or it failed).
- A preview starts only with no hold and an idle queue, checked under the render lock; between layers it stops as
  soon as a hold appears or the queue is busy (a prompt queued by some other route), and on the user's Cancel,
  read without consuming it so that the same Cancel still reaches the queued job. A flag left set by an earlier
  press (ComfyUI clears it only when the next prompt starts) is reset when a preview starts with the queue idle and
  no hold: it belongs to nobody then, and each press during a preview stops that preview.

No ComfyUI import: the queue and the Cancel flag are read through the callables it is given (the bridge's).
"""
from __future__ import annotations

import asyncio
import itertools
import json
import logging
import threading
import time
from contextlib import contextmanager
from typing import Awaitable, Callable, Optional

log = logging.getLogger("TransEdit")

BUSY = "the queue is running; the preview renders when it is idle"
STOPPED = "a prompt was queued; the preview renders when the queue is idle"
PROMPT_WAIT_SECONDS = 120.0  # a preview that cannot stop (stuck in a load) holds a submitted prompt back this long
WAIT_POLL_SECONDS = 0.01


class PreviewStopped(Exception):
    """A preview stopped between two layers: a prompt was submitted or queued (503), or the user's Cancel (409)."""

    def __init__(self, status: int, message: str, reason: str):
        super().__init__(message)
        self.status, self.reason = status, reason


class PreviewGate:
    """Holds of submitted prompts, the render lock, and the checks a preview makes before and while it renders.

    queue_busy(): whether ComfyUI's queue holds a prompt (pending or running); pending_ids(): the ids of prompts
    still waiting to be taken (None: the server does not say); interrupted(): the Cancel flag, read only;
    clear_interrupt(): reset it."""

    def __init__(self, queue_busy: Callable[[], Optional[bool]], pending_ids: Callable[[], Optional[set]],
                 interrupted: Callable[[], bool], clear_interrupt: Callable[[], None]):
        self._queue_busy, self._pending_ids = queue_busy, pending_ids
        self._interrupted, self._clear_interrupt = interrupted, clear_interrupt
        self._book = threading.Lock()  # guards the holds
        self._render = threading.Lock()  # one preview uses the models at a time
        self._holds: dict[int, Optional[str]] = {}  # token -> id of the queued prompt (None: not answered yet)
        self._tokens = itertools.count(1)

    # ------------------------------------------------------------ the prompt's side (event loop: never blocks)
    def prompt_arriving(self) -> int:
        """A prompt is being submitted: previews are held from now on and the one in flight stops at its next
        layer. Returns the hold's token for prompt_routed."""
        with self._book:
            token = next(self._tokens)
            self._holds[token] = None
            return token

    def prompt_routed(self, token: int, prompt_id: Optional[str]) -> None:
        """The submission was answered: queued as `prompt_id` (the hold lasts until the worker takes it), or not
        queued (None: rejected or failed; the hold ends)."""
        with self._book:
            if token not in self._holds:
                return
            if prompt_id is None:
                del self._holds[token]
            else:
                self._holds[token] = str(prompt_id)

    def rendering(self) -> bool:
        """A preview holds the models (the render lock)."""
        return self._render.locked()

    def holds(self) -> int:
        """Holds in force, after letting go of those whose prompt the worker has taken (or that left the queue)."""
        with self._book:
            queued = set(v for v in self._holds.values() if v is not None)
        if queued:
            pending = self._pending_ids()
            with self._book:
                for token, prompt_id in list(self._holds.items()):
                    # not pending any more: taken by the worker (the busy queue covers it from here) or deleted;
                    # a server that does not list its queue is covered by the busy check alone
                    if prompt_id is not None and (pending is None or prompt_id not in pending):
                        del self._holds[token]
        with self._book:
            return len(self._holds)

    # ------------------------------------------------------------ the preview's side (a worker thread)
    @contextmanager
    def render_slot(self):
        """The render lock, for one preview at a time."""
        with self._render:
            yield

    def refusal(self) -> Optional[str]:
        """Under the render lock, before any model is touched: why the preview may not render now, or None."""
        if self._queue_busy() or self.holds():
            return BUSY
        return None

    def layer_check(self) -> Callable[[], None]:
        """The check a render makes between layers; made once refusal() let it start (queue idle, no hold), when a
        Cancel flag still set is an old press that no prompt will read."""
        if self._interrupted():
            self._clear_interrupt()

        def check() -> None:
            with self._book:
                held = bool(self._holds)
            if held or self._queue_busy():
                raise PreviewStopped(503, STOPPED, "busy")
            if self._interrupted():
                raise PreviewStopped(409, "cancelled", "cancelled")

        return check


def queued_prompt_id(status: int, body) -> Optional[str]:
    """The id ComfyUI's prompt route answered with when it queued the prompt (HTTP 200 with a prompt_id), else
    None. `body` is the answer's bytes or text."""
    if status != 200 or body is None:
        return None
    try:
        answer = json.loads(body)
    except (TypeError, ValueError, UnicodeDecodeError) as e:  # not ComfyUI's JSON answer: no prompt id to wait for
        log.warning("TransEdit: the prompt route answered 200 with a body that is not JSON (%s); previews resume "
                    "without waiting for that prompt", e)
        return None
    prompt_id = answer.get("prompt_id") if isinstance(answer, dict) else None
    return None if prompt_id is None else str(prompt_id)


async def submit_after_previews(gate: PreviewGate, submit: Callable[[], Awaitable], answer_of: Callable,
                                wait_seconds: float = PROMPT_WAIT_SECONDS, poll: float = WAIT_POLL_SECONDS):
    """Run ComfyUI's prompt route (`submit()`) once no preview holds the models: a hold first (the preview in
    flight stops at its next layer, new ones are refused), then a wait that yields to the event loop, then the
    route. `answer_of(response)` gives (status, body) for queued_prompt_id. A preview that does not let go within
    `wait_seconds` (stuck in a load) is logged and the prompt goes ahead."""
    token = gate.prompt_arriving()
    prompt_id = None
    try:
        waited_from = time.monotonic()
        while gate.rendering():
            if time.monotonic() - waited_from > wait_seconds:
                log.warning("TransEdit: a live preview did not stop within %.0f s of a submitted prompt; queueing "
                            "the prompt anyway", wait_seconds)
                break
            await asyncio.sleep(poll)
        response = await submit()
        prompt_id = queued_prompt_id(*answer_of(response))
        return response
    finally:
        gate.prompt_routed(token, prompt_id)
