"""One access-log line and one latency observation per HTTP request, from one ASGI middleware.

Both name the route's path template (`/api/v1/tasks/{task_id}`), not the raw path: a label per task id
would grow the metric without bound. The request id is made here, first, so the access line and the
request's own uses of it (error bodies, task rows: deps.request_id) carry the same one.

Lines go to the logger "wanserve.access" (uvicorn's own access log is off: api/server.py) at INFO, with
request_id, method, route, path, status and latency_ms as `extra` fields (JSON logs show each as a key,
logs.py); the probes' own routes (/healthz, /readyz, /metrics), polled every few seconds, log at DEBUG.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

from starlette.routing import Mount
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..metrics import HTTP_REQUEST_SECONDS

log = logging.getLogger("wanserve.access")

UNMATCHED = "<unmatched>"  # the route label of a request no route claimed (a 404 for an unknown path)
QUIET_ROUTES = frozenset({"/healthz", "/readyz", "/metrics"})  # logged at DEBUG: probes poll them


def route_template(scope: Scope) -> str:
    """The path template of the route that handled the request (a mount: its prefix and `/{path}`).

    FastAPI may leave the router's own route in the scope, whose template lacks the prefix it was included
    under (`/tasks/{task_id}` for `/api/v1/tasks/{task_id}`); the prefix is then recovered from the path:
    whatever comes before the route's template filled in with this request's path parameters."""
    route = scope.get("route")
    template = getattr(route, "path_format", None) or ""
    if not template:
        return UNMATCHED
    if isinstance(route, Mount):
        return template  # Starlette's mount template is already its prefix and /{path}
    path, root = scope.get("path", ""), scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root):]
    try:
        filled = template.format(**{k: str(v) for k, v in scope.get("path_params", {}).items()})
    except (KeyError, IndexError, ValueError):
        return template
    if path.endswith(filled) and path != filled:
        return path[:-len(filled)] + template if filled else template
    return template


class AccessLog:
    """The middleware: times each HTTP request to its last byte out and records it as it ends."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        state = scope.setdefault("state", {})
        request_id = state.setdefault("request_id", str(uuid.uuid4()))
        status = 500  # if the app raises before it starts a response, the server answers 500

        async def send_noting_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_noting_status)
        finally:
            record(scope, request_id, status, time.perf_counter() - started)


def record(scope: Scope, request_id: str, status: int, seconds: float) -> None:
    route, method = route_template(scope), scope.get("method", "")
    HTTP_REQUEST_SECONDS.labels(method, route, str(status)).observe(seconds)
    latency_ms = round(seconds * 1000, 1)
    fields: dict[str, Any] = {"request_id": request_id, "method": method, "route": route,
                              "path": scope.get("path", ""), "status": status, "latency_ms": latency_ms}
    level = logging.DEBUG if route in QUIET_ROUTES else logging.INFO
    log.log(level, "%s %s %d %.1fms route=%s request_id=%s", method, fields["path"], status, latency_ms,
            route, request_id, extra=fields)
