"""Wire shapes for the OpenAPI document (what FastAPI publishes at /openapi.json).

The routes validate create bodies themselves (normalize.py), because DashScope's errors and
lenience (unknown keys ignored, prompts truncated) differ from pydantic's; these models only
describe the shapes truthfully, and schemathesis checks the server against them in the tests.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ...catalog.models import all_names
from ...media.fetch import URL_PATTERN

TaskStatus = Literal["PENDING", "RUNNING", "SUCCEEDED", "FAILED", "CANCELED", "UNKNOWN"]


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")




class MediaItem(_Open):
    type: Literal["first_frame", "last_frame", "driving_audio", "first_clip"]
    url: str = Field(description="http(s) URL, data:<mime>;base64,<data>, or oss:// from the upload endpoint",
                     pattern=URL_PATTERN)


class CreateInput(_Open):
    prompt: str | None = Field(None, description="Truncated at the model family's limit (800/1500/5000)")
    negative_prompt: str | None = Field(None, description="Truncated at 500 characters")
    img_url: str | None = Field(None, pattern=URL_PATTERN, description="First frame (first-frame i2v models)")
    first_frame_url: str | None = Field(None, pattern=URL_PATTERN, description="First frame (kf2v models)")
    last_frame_url: str | None = Field(None, pattern=URL_PATTERN, description="Last frame (kf2v models)")
    audio_url: str | None = Field(None, pattern=URL_PATTERN, description="wav/mp3, 3-30 s (wan2.5/wan2.6)")
    template: str | None = Field(None,
                                 description="Effect template (wanx2.1 i2v/kf2v); the prompt is ignored")
    media: list[MediaItem] | None = Field(None, description="wan2.7-i2v inputs")


class CreateParameters(_Open):
    size: str | None = Field(None, description='t2v only, "W*H" from the model\'s list',
                             examples=["1280*720"])
    resolution: str | None = Field(None, description="480P, 720P or 1080P (image-driven models)")
    duration: int | None = Field(None, description="Seconds, from the model's list")
    prompt_extend: bool | None = None
    shot_type: Literal["single", "multi"] | None = None
    audio: bool | None = Field(None, description="wan2.6-i2v-flash: false gives a silent video")
    watermark: bool | None = None
    seed: int | None = Field(None, ge=0, le=2147483647)


EXAMPLE_BODIES = [
    {"model": "wan2.6-t2v", "input": {"prompt": "A lighthouse at dawn"},
     "parameters": {"size": "1280*720", "duration": 5, "shot_type": "multi", "prompt_extend": True}},
    {"model": "wanx2.1-i2v-turbo", "input": {"template": "flying", "img_url": "https://example.com/cat.png"},
     "parameters": {"resolution": "720P", "watermark": True}},
    {"model": "wan2.7-i2v", "input": {"prompt": "a cat looks up", "media": [
        {"type": "first_frame", "url": "https://example.com/first.png"},
        {"type": "last_frame", "url": "https://example.com/last.png"}]},
     "parameters": {"resolution": "720P", "duration": 10, "prompt_extend": False}},
]


class CreateBody(_Open):
    model_config = ConfigDict(extra="allow", json_schema_extra={"examples": EXAMPLE_BODIES})

    model: str = Field(description="A public model name", examples=["wan2.6-t2v"],
                       json_schema_extra={"enum": all_names()})
    input: CreateInput
    parameters: CreateParameters | None = None


class ErrorBody(BaseModel):
    request_id: str
    code: str
    message: str


class CreateOutput(BaseModel):
    task_id: str
    task_status: TaskStatus


class CreateResponse(BaseModel):
    request_id: str
    output: CreateOutput


class TaskOutput(_Open):
    task_id: str
    task_status: TaskStatus
    submit_time: str | None = None
    scheduled_time: str | None = None
    end_time: str | None = None
    video_url: str | None = None
    orig_prompt: str | None = None
    actual_prompt: str | None = None
    code: str | None = None
    message: str | None = None
    progress: dict[str, Any] | None = Field(None, description="Extension: progress of a RUNNING task")
    wanserve_pending_reason: str | None = Field(
        None, description="Extension: why a PENDING task has not started (no live worker serves its model, "
                          "or its account is at its running limit); absent while it simply waits its turn")


class TaskResponse(BaseModel):
    request_id: str
    output: TaskOutput
    usage: dict[str, Any] | None = None


class ListItem(_Open):
    task_id: str
    status: TaskStatus
    model_name: str
    gmt_create: int
    start_time: int
    end_time: int | None = None


class SdkJobItem(_Open):
    """A `tasks[]` item: the fields of GET /tasks/{task_id} `output` that a list can give (no video_url)."""

    task_id: str
    task_status: TaskStatus
    submit_time: str = Field(description='Display time zone, "YYYY-MM-DD hh:mm:ss.SSS"')
    scheduled_time: str | None = Field(None, description="Absent until a worker takes the task")
    end_time: str | None = Field(None, description="Absent until the task ends")
    model_name: str
    code: str | None = Field(None, description="FAILED only")
    message: str | None = Field(None, description="FAILED only")


class ListResponse(BaseModel):
    request_id: str
    total: int
    total_page: int
    page_no: int
    page_size: int
    data: list[ListItem]
    tasks: list[SdkJobItem] = Field(description="The same tasks as data, in the task-query shape the "
                                    "dashscope 2.x client (Client().videos.jobs.list) parses")


class RequestIdOnly(BaseModel):
    request_id: str


class PolicyData(_Open):
    policy: str
    signature: str
    upload_dir: str
    upload_host: str
    expire_in_seconds: int
    max_file_size_mb: int
    oss_access_key_id: str
    x_oss_object_acl: str
    x_oss_forbid_overwrite: str


class PolicyResponse(BaseModel):
    request_id: str
    data: PolicyData


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {status: {"model": ErrorBody} for status in statuses}
