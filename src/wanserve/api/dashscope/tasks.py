"""Create, query, list and cancel tasks (contract E1-E5)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request
from starlette.concurrency import run_in_threadpool

from ...accounts.keys import Caller
from ...errors import Code, ServiceError, invalid_parameter
from ...tasks.db import now_ms
from ...tasks.states import TaskStatus
from ..deps import CallerDep, public_base, request_id
from ..deps import services as _services
from .normalize import normalize
from .schemas import CreateResponse, ListResponse, RequestIdOnly, TaskResponse, errors
from .views import display_zone, list_item, sdk_job_item, task_body, unknown_output

router = APIRouter()
AsyncHeader = Annotated[str | None, Header(alias="X-DashScope-Async", description="Must be `enable`")]
OssHeader = Annotated[
    str | None,
    Header(alias="X-DashScope-OssResourceResolve",
           description="`enable` to resolve oss:// inputs from the upload endpoint"),
]
CREATE_DOC: dict[str, Any] = {
    "response_model": CreateResponse, "responses": errors(400, 401, 403),
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


async def _create(request: Request, caller: Caller, endpoint: str) -> dict[str, Any]:
    if request.headers.get("x-dashscope-async", "").strip().lower() != "enable":
        raise ServiceError(Code.ACCESS_DENIED,
                           "current user api does not support synchronous calls; "
                           "send the header X-DashScope-Async: enable.")
    body = parse_json_body(await request.body())
    oss = request.headers.get("x-dashscope-ossresourceresolve", "").strip().lower() == "enable"
    gen = normalize(body, endpoint, oss_resolve=oss)
    services = _services(request)
    row = await run_in_threadpool(
        services.store.create, account_id=caller.account_id, api_key_id=caller.api_key_id,
        request_id=request_id(request), model=gen.requested_model, endpoint=endpoint,
        request=gen.model_dump(mode="json"))
    return {"request_id": request_id(request), "output": {"task_id": row["id"], "task_status": row["status"]}}


@router.post("/services/aigc/video-generation/video-synthesis", **CREATE_DOC)
async def create_video_generation(request: Request, caller: CallerDep, x_dashscope_async: AsyncHeader = None,
                                  oss_resolve: OssHeader = None) -> dict[str, Any]:
    """Create a text-to-video, first-frame or wan2.7 task (asynchronous: poll GET /tasks/{task_id})."""
    return await _create(request, caller, "video-generation")


@router.post("/services/aigc/image2video/video-synthesis", **CREATE_DOC)
async def create_image2video(request: Request, caller: CallerDep, x_dashscope_async: AsyncHeader = None,
                             oss_resolve: OssHeader = None) -> dict[str, Any]:
    """Create a first-and-last-frame (kf2v) task."""
    return await _create(request, caller, "image2video")


@router.get("/tasks/{task_id}", response_model=TaskResponse, response_model_exclude_unset=True,
            responses=errors(401))
def get_task(task_id: str, request: Request, caller: CallerDep) -> dict[str, Any]:
    services = _services(request)
    task = services.store.get(task_id, caller.account_id, alive_only=True)
    if task is None:
        return {"request_id": request_id(request), "output": unknown_output(task_id)}
    video_url = None
    if task["status"] == TaskStatus.SUCCEEDED:
        expires = (task["end_ms"] + services.store.ttl_ms) // 1000  # the URL lives as long as the task
        video_url = services.storage.result_url(task["id"], public_base(request), expires)
    body = task_body(task, zone=display_zone(services.settings), video_url=video_url)
    return {"request_id": request_id(request), **body}


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
    """List this account's tasks in a window of at most 24 h (default: the last 24 h), newest first."""
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
