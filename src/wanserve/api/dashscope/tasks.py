"""Create, query, list and cancel tasks (contract E1-E5)."""

from __future__ import annotations

import hashlib
import json
import re
from datetime import datetime, timedelta
from functools import partial
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request
from starlette.concurrency import run_in_threadpool

from ...accounts.keys import Caller
from ...errors import Code, ServiceError, invalid_parameter
from ...generation.inline import remove_inline_media, store_inline_media
from ...tasks.db import now_ms
from ...tasks.states import TaskStatus
from ..bodies import LargeDataUrls, read_json_body
from ..deps import CallerDep, public_base, request_id
from ..deps import services as _services
from .normalize import normalize
from .schemas import CreateResponse, ListResponse, RequestIdOnly, TaskResponse, errors
from .views import display_zone, list_item, query_body, sdk_job_item, unknown_output
from .webhooks import CALLBACK_HEADER, CallbackHeader, callback_for

router = APIRouter()
AsyncHeader = Annotated[str | None, Header(alias="X-DashScope-Async", description="Must be `enable`")]
OssHeader = Annotated[
    str | None,
    Header(alias="X-DashScope-OssResourceResolve",
           description="`enable` to resolve oss:// inputs from the upload endpoint"),
]
IDEMPOTENCY_KEY_PATTERN = r"^[!-~]{1,255}$"  # 1-255 visible ASCII characters
IdempotencyHeader = Annotated[
    str | None,
    Header(alias="X-Idempotency-Key", pattern=IDEMPOTENCY_KEY_PATTERN, max_length=255,
           description="Extension: a key of the client's choosing (1-255 visible ASCII characters). The "
                       "same key with the same body (same endpoint) answers the task already created "
                       "under it (200, its current status) instead of creating another; with another "
                       "body, 409 IdempotentParameterMismatch. Keys are per account and are kept as "
                       "long as their task (24 h after it ends)."),
]
BODY_HINT = ("Send media larger than that as files: upload each one (GET /api/v1/uploads?action=getPolicy, "
             "then POST the file) and send its oss:// URL with the header X-DashScope-OssResourceResolve: "
             "enable, or send an http(s) URL.")
CREATE_DOC: dict[str, Any] = {
    "response_model": CreateResponse, "responses": errors(400, 401, 403, 409, 429),
    "openapi_extra": {"requestBody": {"required": True, "content": {
        "application/json": {"schema": {"$ref": "#/components/schemas/CreateBody"}}}}},
}


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def parse_json_body(raw: bytes) -> Any:
    """Strict JSON (no NaN/Infinity), refused as BadRequest.IllegalInput in every way it can be bad:
    syntax, encoding, over-long integer literals, nesting too deep, lone surrogates that could not
    be stored and shown again."""
    try:
        body = json.loads(raw, parse_constant=_reject_constant)
        json.dumps(body, ensure_ascii=False).encode("utf-8")
    except (ValueError, RecursionError, UnicodeError) as exc:
        detail = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)[:200]
        raise ServiceError(Code.ILLEGAL_INPUT,
                           f"The input parameter requires json format: {detail}.") from None
    return body


def idempotency(request: Request, endpoint: str, body: Any, oss: bool) -> tuple[str | None, str | None]:
    """The X-Idempotency-Key header (None when absent) and the sha256 of what makes a request the same
    request: the endpoint, the OSS header and the body as JSON (key order and spacing aside)."""
    key = request.headers.get("x-idempotency-key")
    if key is None:
        return None, None
    if not re.fullmatch(IDEMPOTENCY_KEY_PATTERN, key):
        raise invalid_parameter("X-Idempotency-Key must be 1-255 visible ASCII characters.")
    canonical = json.dumps([endpoint, oss, body], sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return key, hashlib.sha256(canonical.encode("utf-8")).hexdigest()


async def _create(request: Request, caller: Caller, endpoint: str) -> dict[str, Any]:
    if request.headers.get("x-dashscope-async", "").strip().lower() != "enable":
        raise ServiceError(Code.ACCESS_DENIED,
                           "current user api does not support synchronous calls; "
                           "send the header X-DashScope-Async: enable.")
    services = _services(request)
    # large data: URLs stay out of the parsed body, as pieces decoded straight to files (api/bodies.py)
    raw, large = await read_json_body(request, services.settings.max_body_mb * 2**20, "request body",
                                      BODY_HINT)
    try:
        return await _create_from(request, caller, endpoint, raw, large)
    finally:
        await run_in_threadpool(large.release)  # created or refused, the body's memory goes back at once


async def _create_from(request: Request, caller: Caller, endpoint: str, raw: bytes,
                       large: LargeDataUrls) -> dict[str, Any]:
    services = _services(request)
    body = parse_json_body(raw)
    oss = request.headers.get("x-dashscope-ossresourceresolve", "").strip().lower() == "enable"
    gen = normalize(body, endpoint, oss_resolve=oss)
    key, request_hash = idempotency(request, endpoint, body, oss)
    callback = await run_in_threadpool(callback_for, request.headers.get(CALLBACK_HEADER), caller,
                                       services.settings.allow_private_media_urls)  # refused: no task
    quotas = services.quotas  # [quotas]: refused here (429) before anything is stored
    # a retry under a living task's idempotency key gets that task (or a mismatch): it creates nothing,
    # so no quota applies to it
    limited = quotas.enabled and not (
        key is not None and await run_in_threadpool(services.store.has_living_key, caller.account_id, key))
    if limited:
        await run_in_threadpool(quotas.check, caller.account_id, caller.api_key_id, gen.model)
    # data: URLs become uploads of the caller's account; the row names them (removed if no task is created)
    gen, inline = await run_in_threadpool(store_inline_media, gen, services.uploads, caller.account_id, large)
    large.clear()
    create = partial(  # with a key: the task already created under it, if any
        services.store.create, account_id=caller.account_id, api_key_id=caller.api_key_id,
        request_id=request_id(request), model=gen.requested_model, route_model=gen.model,
        endpoint=endpoint, request=gen.model_dump(mode="json"), idempotency_key=key,
        request_hash=request_hash, callback_url=callback)
    try:
        if limited:  # checked again, under the account's lock
            row = await run_in_threadpool(quotas.admit, caller.account_id, caller.api_key_id, gen.model,
                                          create)
        else:
            row = await run_in_threadpool(create)
    except BaseException:
        remove_inline_media(services.uploads, inline)
        raise
    if inline and row["request_id"] != request_id(request):  # an earlier task under the key: ours is unused
        await run_in_threadpool(remove_inline_media, services.uploads, inline)
    return {"request_id": request_id(request), "output": {"task_id": row["id"], "task_status": row["status"]}}


@router.post("/services/aigc/video-generation/video-synthesis", **CREATE_DOC)
async def create_video_generation(request: Request, caller: CallerDep, x_dashscope_async: AsyncHeader = None,
                                  oss_resolve: OssHeader = None, idempotency_key: IdempotencyHeader = None,
                                  callback_url: CallbackHeader = None) -> dict[str, Any]:
    """Create a text-to-video, first-frame or wan2.7 task (asynchronous: poll GET /tasks/{task_id})."""
    return await _create(request, caller, "video-generation")


@router.post("/services/aigc/image2video/video-synthesis", **CREATE_DOC)
async def create_image2video(request: Request, caller: CallerDep, x_dashscope_async: AsyncHeader = None,
                             oss_resolve: OssHeader = None, idempotency_key: IdempotencyHeader = None,
                             callback_url: CallbackHeader = None) -> dict[str, Any]:
    """Create a first-and-last-frame (kf2v) task."""
    return await _create(request, caller, "image2video")


@router.get("/tasks/{task_id}", response_model=TaskResponse, response_model_exclude_unset=True,
            responses=errors(401))
def get_task(task_id: str, request: Request, caller: CallerDep) -> dict[str, Any]:
    services = _services(request)
    task = services.store.get(task_id, caller.account_id, alive_only=True)
    if task is None:
        return {"request_id": request_id(request), "output": unknown_output(task_id)}
    return {"request_id": request_id(request), **query_body(task, services, public_base(request))}


def _parse_list_time(value: str | None, name: str, request: Request) -> int | None:
    if not value:
        return None
    try:
        moment = datetime.strptime(value, "%Y%m%d%H%M%S").replace(
            tzinfo=display_zone(_services(request).settings))
    except ValueError:
        raise invalid_parameter(
            f"{name} must be YYYYMMDDhhmmss, e.g. 20250101120000; got {value!r}.") from None
    return int(moment.timestamp() * 1000)


@router.get("/tasks", response_model=ListResponse, response_model_exclude_unset=True,
            responses=errors(400, 401))
@router.get("/tasks/", include_in_schema=False)
def list_tasks(request: Request, caller: CallerDep,
               task_id: str | None = None, start_time: str | None = None, end_time: str | None = None,
               model_name: str | None = None, status: str | None = None,
               page_no: Annotated[int, Query(ge=1, le=1_000_000)] = 1,
               page_size: Annotated[int, Query(ge=1, le=100)] = 10) -> dict[str, Any]:
    """List this account's tasks in a window of at most 24 h (default: the last 24 h), newest first;
    at most the window's newest 5,000 (`total` counts no further: narrow the window to reach older ones)."""
    day = int(timedelta(days=1).total_seconds() * 1000)
    start = _parse_list_time(start_time, "start_time", request)
    end = _parse_list_time(end_time, "end_time", request)
    if start is None and end is None:
        end = now_ms()
    if start is None:
        start = end - day
    if end is None:
        end = start + day
    if end < start or end - start > day:
        raise invalid_parameter("start_time and end_time must span at most 24 hours, end after start.")
    statuses = list(TaskStatus)
    if status and status.upper() not in statuses:
        raise invalid_parameter(f"status must be one of {', '.join(statuses)}; got {status!r}.")
    services = _services(request)
    total, rows = services.store.list(caller.account_id, start_ms=start, end_ms=end, model=model_name,
                                      status=status.upper() if status else None, task_id=task_id,
                                      page_no=page_no, page_size=page_size)
    data = [list_item(r) for r in rows]
    return {"request_id": request_id(request), "total": total, "total_page": -(-total // page_size),
            "page_no": page_no, "page_size": page_size, "data": data,
            "tasks": [sdk_job_item(r, display_zone(services.settings)) for r in rows]}


@router.post("/tasks/{task_id}/cancel", response_model=RequestIdOnly, responses=errors(400, 401))
def cancel_task(task_id: str, request: Request, caller: CallerDep) -> dict[str, Any]:
    """Cancel a PENDING task (contract) or, as an extension, a RUNNING one (it stops within a second)."""
    if not _services(request).store.cancel(task_id, caller.account_id):
        raise ServiceError(Code.UNSUPPORTED_OPERATION,
                           "Failed to cancel the task, please confirm if the task is in "
                           "PENDING status.")
    return {"request_id": request_id(request)}
