"""The pack's HTTP endpoints on ComfyUI's server, for the frontend extension (js/transedit.js).

comfy_bridge hands over the server's route table (`claim_route`); this module owns what is spoken over it:
JSON answers, body limits, the queue check, the worker thread a preview renders in, and the wrapper around
ComfyUI's own prompt route that makes a submitted prompt wait (off the event loop) for the preview in flight.
aiohttp is the server's own dependency, so it is imported only once there is a server to serve on.
"""
from __future__ import annotations

import json
import logging

from . import comfy_bridge as bridge
from .preview_service import submit_after_previews

log = logging.getLogger("TransEdit")

MAX_WAITING_PREVIEWS = 16  # requests waiting for a render at once; more are answered 429 at once
PROMPT_PATHS = ("/prompt", "/api/prompt")  # ComfyUI serves its routes with and without the /api prefix


def register_json_route(path: str, handler) -> bool:
    """Serve handler() as JSON at GET `path`; False when there is no server (tests, scripts) or the route
    exists already (a pack reload)."""
    routes = bridge.claim_route(path)
    if routes is None:
        return False
    from aiohttp import web

    async def serve(request):
        try:
            return web.json_response(handler())
        except (OSError, ValueError, KeyError, RuntimeError) as e:  # a hint: answer with the reason, not a traceback
            log.warning("TransEdit: %s failed: %s", path, e)
            return web.json_response({"error": str(e)}, status=500)

    routes.get(path)(serve)
    return True


def register_preview_route(path: str, service, max_body: int = 16384) -> bool:
    """Serve a live-preview service at POST `path`.

    `service.admit(payload: dict)` runs on the event loop (fast: validation, bookkeeping) and returns either
    a finished answer `(status, body)` or a function that renders and returns one; that function runs in a
    worker thread so the server stays responsive. The route itself refuses what no service should see:
    bodies over `max_body` bytes (413), anything but a JSON object (400), a busy queue (503), more than
    MAX_WAITING_PREVIEWS waiting requests (429), and every request (501) where submitted prompts cannot be made
    to wait for `service.gate`. Errors are answered as JSON and never reach the server."""
    routes = bridge.claim_route(path)
    if routes is None:
        return False
    gated = guard_prompt_route(path, service.gate)
    import asyncio

    from aiohttp import web
    from aiohttp.http_exceptions import HttpProcessingError

    waiting = [0]

    def answer(status: int, body: dict):
        return web.json_response(body, status=status, headers={"Cache-Control": "no-store"})

    async def read_object(request):
        """The body as a dict, or the answer that refuses it."""
        if request.content_length is not None and request.content_length > max_body:
            return answer(413, {"error": f"request body over {max_body} bytes"})
        try:
            raw = await request.content.read(max_body + 1)
        except (OSError, ValueError, HttpProcessingError) as e:  # a broken connection or a malformed body
            return answer(400, {"error": f"cannot read the request: {e}"})
        if len(raw) > max_body:
            return answer(413, {"error": f"request body over {max_body} bytes"})
        try:
            payload = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:  # ValueError includes numbers of over 4300 digits
            return answer(400, {"error": f"the body must be a JSON object ({str(e)[:120]})"})
        if not isinstance(payload, dict):
            return answer(400, {"error": "the body must be a JSON object"})
        return payload

    async def serve(request):
        payload = await read_object(request)
        if not isinstance(payload, dict):
            return payload
        busy = bridge.queue_is_busy()
        if busy is None or not gated:
            return answer(501, {"error": "this ComfyUI does not report its queue or let prompts wait for "
                                         "previews, so previews cannot run beside it; queue the graph to see "
                                         "each edit", "reason": "unsupported"})
        if busy:
            return answer(503, {"error": "the queue is running; the preview renders when it is idle",
                                "reason": "busy"})
        if waiting[0] >= MAX_WAITING_PREVIEWS:
            return answer(429, {"error": "too many preview requests at once", "reason": "busy"})
        waiting[0] += 1
        try:
            admitted = service.admit(payload)
            if not callable(admitted):
                return answer(*admitted)
            return answer(*(await asyncio.get_running_loop().run_in_executor(None, admitted)))
        except bridge.interrupt_exception():  # the service answers Cancel itself; never swallow one that escapes
            raise
        except Exception as e:  # the service answers its own errors; this is the last line of defence
            log.exception("TransEdit: %s failed", path)
            return answer(500, {"error": f"{type(e).__name__}: {e}"})
        finally:
            waiting[0] -= 1

    routes.post(path)(serve)
    return True


def guard_prompt_route(name: str, gate) -> bool:
    """Wrap ComfyUI's POST /prompt so that a submitted prompt takes a hold on `gate` (PreviewGate) at once and is
    validated and queued only once no preview holds the models (preview_service.submit_after_previews). False
    when the server's application takes no more middleware."""
    middlewares = bridge.claim_middlewares(name + " (prompts wait for the preview)")
    if middlewares is None:
        return False
    from aiohttp import web

    def answer_of(response):
        return getattr(response, "status", 0), getattr(response, "body", None)

    @web.middleware
    async def prompts_wait_for_previews(request, handler):
        if request.method != "POST" or request.path not in PROMPT_PATHS:
            return await handler(request)
        return await submit_after_previews(gate, lambda: handler(request), answer_of)

    middlewares.append(prompts_wait_for_previews)
    return True
