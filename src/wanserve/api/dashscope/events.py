"""Live progress (an extension): GET /tasks/{task_id}/events, the task query as Server-Sent Events.

Each event is `event: task` with, as its data, exactly the JSON body GET /tasks/{task_id} answers (one
line). The first is sent at once, the next whenever that body changes (status, progress); the stream ends
after the event of a terminal status. The server reads the task every POLL_SECONDS (in the thread pool)
and writes a `: ping` comment after PING_SECONDS without an event, so proxies keep the connection open.
It stops reading when the client goes away, and when the process is shutting down (`app.state.stopping`,
a callable `wanserve serve` sets: the server waits for open responses, and a stream must not hold its
shutdown until the task ends).

Streams are bounded apart from plain requests (api/streams.py): per API key, per account and in all, each
process; a stream over a limit is answered 429 Throttling with a Retry-After, and the server does not count
open streams against `max_connections`, so streams never take the room GETs and creates need.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.types import Receive, Scope, Send

from ...errors import not_found, throttled
from ...services import Services
from ...tasks.states import TERMINAL, TaskStatus
from ..deps import CallerDep, public_base, request_id
from ..deps import services as _services
from ..streams import RETRY_AFTER_SECONDS, EventStreams
from .schemas import errors
from .views import query_body, unknown_output

router = APIRouter()

POLL_SECONDS = 0.3
PING_SECONDS = 15.0
ENDED = TERMINAL | {TaskStatus.UNKNOWN}  # UNKNOWN: the task expired while watched

EVENTS_DOC = (
    "Extension: the task's state as Server-Sent Events (`text/event-stream`). Each event is `event: task` "
    "with `data:` the exact JSON body GET /tasks/{task_id} answers; the first comes at once, then one each "
    "time the status or progress changes, and the stream ends after the event of a terminal status "
    "(SUCCEEDED, FAILED, CANCELED, UNKNOWN). A `: ping` comment comes every 15 s without an event. A task "
    "of another account, or none, is a 404 NotFound error body and no stream. Streams open at once are "
    "limited per API key, per account and per server (max_event_streams_per_key, _per_account, "
    "max_event_streams): beyond them 429 Throttling with a Retry-After header."
)


class _CountedStream(StreamingResponse):
    """A stream that gives its place back (`EventStreams.close`) when it ends, however it ends."""

    def __init__(self, content: AsyncIterator[bytes], on_close: Callable[[], None], **kwargs: Any) -> None:
        super().__init__(content, **kwargs)
        self._on_close: Callable[[], None] | None = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.close_count()

    def close_count(self) -> None:
        on_close, self._on_close = self._on_close, None
        if on_close is not None:
            on_close()


def _body(services: Services, task_id: str, account_id: str, base: str) -> dict[str, Any] | None:
    task = services.store.get(task_id, account_id, alive_only=True)
    return None if task is None else query_body(task, services, base)


def sse_event(data: dict[str, Any]) -> bytes:
    return f"event: task\ndata: {json.dumps(data, ensure_ascii=False, separators=(',', ':'))}\n\n".encode()


def _stopping(request: Request) -> bool:
    stopping = getattr(request.app.state, "stopping", None)
    return bool(stopping()) if callable(stopping) else False


async def _stream(request: Request, services: Services, task_id: str, account_id: str, base: str,
                  first: dict[str, Any]) -> AsyncIterator[bytes]:
    rid = request_id(request)
    body, last_sent = first, time.monotonic()
    yield sse_event({"request_id": rid, **body})
    while body["output"]["task_status"] not in ENDED:
        await asyncio.sleep(POLL_SECONDS)
        if _stopping(request) or await request.is_disconnected():
            return
        now = await run_in_threadpool(_body, services, task_id, account_id, base)
        now = now or {"output": unknown_output(task_id)}  # expired (deleted) while watched: GET says UNKNOWN
        if now != body:
            body, last_sent = now, time.monotonic()
            yield sse_event({"request_id": rid, **body})
        elif time.monotonic() - last_sent >= PING_SECONDS:
            last_sent = time.monotonic()
            yield b": ping\n\n"


@router.get("/tasks/{task_id}/events", response_class=StreamingResponse, description=EVENTS_DOC,
            responses={200: {"description": EVENTS_DOC, "content": {"text/event-stream": {}}},
                       **errors(401, 404, 429)})
async def task_events(task_id: str, request: Request, caller: CallerDep) -> StreamingResponse:
    """Follow a task's status and progress live (Server-Sent Events) until it ends."""
    services = _services(request)
    streams = _streams(request)
    refused = streams.open(caller.account_id, caller.api_key_id)
    if refused is not None:
        raise throttled(refused, RETRY_AFTER_SECONDS)
    response = None
    try:
        base = public_base(request)
        first = await run_in_threadpool(_body, services, task_id, caller.account_id, base)
        if first is None:
            raise not_found(f"No task {task_id} in this account (unknown, another account's, or expired); "
                            "check the task_id that create returned.")
        response = _CountedStream(_stream(request, services, task_id, caller.account_id, base, first),
                                  lambda: streams.close(caller.account_id, caller.api_key_id),
                                  media_type="text/event-stream",
                                  headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        return response
    finally:
        if response is None:  # no stream after all: its place is free again
            streams.close(caller.account_id, caller.api_key_id)


def _streams(request: Request) -> EventStreams:
    """This app's stream counter (api/app.py makes it from the settings)."""
    streams = getattr(request.app.state, "event_streams", None)
    if streams is None:
        streams = request.app.state.event_streams = EventStreams.from_settings(_services(request).settings)
    return streams
