"""How stored tasks look on the wire (contract section 5): the task query and the list item."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

from ...config import Settings
from ...storage.local import LocalStorage
from ...tasks.store import FAILED, RUNNING, SUCCEEDED, UNKNOWN


def display_zone(settings: Settings) -> timezone:
    return timezone(timedelta(hours=settings.utc_offset_hours))


def format_time(ms: int | None, zone: timezone) -> str | None:
    if ms is None:
        return None
    return datetime.fromtimestamp(ms / 1000, zone).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def unknown_output(task_id: str) -> dict[str, Any]:
    return {"task_id": task_id, "task_status": UNKNOWN}


def task_body(task: dict[str, Any], *, settings: Settings, storage: LocalStorage, base_url: str) -> dict[str, Any]:
    """`output` (and `usage` for SUCCEEDED) of GET /tasks/{id}."""
    zone = display_zone(settings)
    status = task["status"]
    out: dict[str, Any] = {"task_id": task["id"], "task_status": status,
                           "submit_time": format_time(task["submit_ms"], zone)}
    if task["scheduled_ms"] is not None:
        out["scheduled_time"] = format_time(task["scheduled_ms"], zone)
    if task["end_ms"] is not None:
        out["end_time"] = format_time(task["end_ms"], zone)
    body: dict[str, Any] = {"output": out}
    if status == RUNNING and task["progress"]:
        out["progress"] = task["progress"]  # extension; the SDK keeps unknown output keys
    elif status == FAILED:
        out["code"] = task["code"]
        out["message"] = task["message"]
    elif status == SUCCEEDED:
        result = task["result"]
        expires = task["end_ms"] // 1000 + settings.task_ttl_seconds
        name = f"{task['id']}.mp4"
        out["video_url"] = f"{base_url.rstrip('/')}/files/results/{name}?{storage.signed_query(name, expires)}"
        out["orig_prompt"] = task["request"]["prompt"]
        if result.get("actual_prompt") is not None:
            out["actual_prompt"] = result["actual_prompt"]
        body["usage"] = result["usage"]
    return body


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
