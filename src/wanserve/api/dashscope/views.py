"""How stored tasks look on the wire (contract section 5): the task query and the list item."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from ...catalog.models import find_model
from ...config import Settings
from ...storage.base import published_attempt
from ...tasks.states import TaskStatus

if TYPE_CHECKING:
    from ...services import Services


def display_zone(settings: Settings) -> timezone:
    return timezone(timedelta(hours=settings.utc_offset_hours))


def format_time(ms: int | None, zone: timezone) -> str | None:
    if ms is None:
        return None
    return datetime.fromtimestamp(ms / 1000, zone).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def unknown_output(task_id: str) -> dict[str, Any]:
    return {"task_id": task_id, "task_status": TaskStatus.UNKNOWN}


def query_body(task: dict[str, Any], services: Services, base: str) -> dict[str, Any]:
    """GET /tasks/{id}'s body less its request_id, with the video_url signed on `base`: one function for
    every reader of a task (the query, its event stream, its webhook), so all of them send the same JSON."""
    video_url = None
    if task["status"] == TaskStatus.SUCCEEDED:
        expires = (task["end_ms"] + services.store.ttl_ms) // 1000  # the URL lives as long as the task
        attempt = published_attempt(task["result"])  # the attempt whose file succeed() published
        video_url = services.storage.result_url(task["id"], attempt, base, expires)
    body = task_body(task, zone=display_zone(services.settings), video_url=video_url)
    if task["status"] == TaskStatus.PENDING and (reason := pending_reason(task, services)):
        body["output"]["wanserve_pending_reason"] = reason  # extension (docs/compatibility.md)
    return body


def pending_reason(task: dict[str, Any], services: Services) -> str | None:
    """Why a PENDING task has not started, when something other than the queue ahead of it holds it: no
    live worker serves its model, or its account is at a running limit. None: it simply waits its turn."""
    model = task["request"]["model"]  # the canonical name, as workers register theirs
    if not services.workers.serving(model):
        return (f"No live worker serves {model}; start a worker with it configured (wanserve workers lists "
                "the live ones).")
    return services.quotas.queued_reason(task["account_id"], model)


def task_body(task: dict[str, Any], *, zone: timezone, video_url: str | None) -> dict[str, Any]:
    """`output` (and `usage` for SUCCEEDED) of GET /tasks/{id}; `video_url` for a SUCCEEDED task."""
    status = task["status"]
    out: dict[str, Any] = {"task_id": task["id"], "task_status": status,
                           "submit_time": format_time(task["submit_ms"], zone)}
    if task["scheduled_ms"] is not None:
        out["scheduled_time"] = format_time(task["scheduled_ms"], zone)
    if task["end_ms"] is not None:
        out["end_time"] = format_time(task["end_ms"], zone)
    body: dict[str, Any] = {"output": out}
    if status == TaskStatus.RUNNING and task["progress"]:
        out["progress"] = task["progress"]  # extension; the SDK keeps unknown output keys
    elif status == TaskStatus.FAILED:
        out["code"] = task["code"]
        out["message"] = task["message"]
    elif status == TaskStatus.SUCCEEDED:
        request, result = task["request"], task["result"]
        spec = find_model(request["model"])
        out["video_url"] = video_url
        out["orig_prompt"] = request["prompt"]
        if spec is not None and spec.returns_actual_prompt and request["prompt_extend"]:
            out["actual_prompt"] = result.get("prompt", result.get("actual_prompt"))
        # rows stored before usage was computed at read time carry their own
        body["usage"] = (result["usage"] if "usage" in result
                         else usage(spec.usage if spec else "v27", request, result))
    return body


def usage(family: str, request: dict[str, Any], result: dict[str, Any]) -> dict[str, Any]:
    """Billing keys per model family (contract 5.2), from the task's neutral facts. A continuation
    bills the whole output; its input clip's length is reported as input_video_duration."""
    duration, width, height = request["duration"], result["width"], result["height"]
    if family == "legacy_size":
        return {"video_count": 1, "video_duration": duration, "video_ratio": f"{width}*{height}"}
    if family == "legacy_standard":
        return {"video_count": 1, "video_duration": duration, "video_ratio": "standard"}
    clip = round(result["input_video_seconds"], 2) if result["input_video_seconds"] else 0
    out = {"duration": duration, "input_video_duration": clip, "output_video_duration": duration - clip,
           "video_count": 1, "SR": int(request["resolution"].rstrip("P"))}
    if family == "v26":
        out["size"] = f"{width}*{height}"
    return out


def list_item(task: dict[str, Any]) -> dict[str, Any]:
    item = {
        "api_key_id": task["api_key_id"],
        "caller_parent_id": task["account_id"],
        "caller_uid": task["account_id"],
        "gmt_create": task["submit_ms"],
        "start_time": task["scheduled_ms"] or task["submit_ms"],
        "model_name": task["model"],
        "region": "local",
        "request_id": task["request_id"],
        "status": task["status"],
        "task_id": task["id"],
        "user_api_unique_key": f"apikey:v1:aigc:{task['endpoint']}:video-synthesis:{task['model']}",
    }
    if task["end_ms"] is not None:
        item["end_time"] = task["end_ms"]
    return item


def sdk_job_item(task: dict[str, Any], zone: timezone) -> dict[str, Any]:
    """An item of GET /tasks `tasks[]`: the task-query shape the dashscope 2.x client parses each item
    into (`dashscope.v2.resources._jobs.Job`: `task_id`, `task_status`, and string times, which its
    pydantic model refuses as integers), built from the same row as the contract's `data[]` item."""
    item: dict[str, Any] = {"task_id": task["id"], "task_status": task["status"],
                            "submit_time": format_time(task["submit_ms"], zone), "model_name": task["model"]}
    if task["scheduled_ms"] is not None:
        item["scheduled_time"] = format_time(task["scheduled_ms"], zone)
    if task["end_ms"] is not None:
        item["end_time"] = format_time(task["end_ms"], zone)
    if task["status"] == TaskStatus.FAILED:
        item["code"] = task["code"]
        item["message"] = task["message"]
    return item
