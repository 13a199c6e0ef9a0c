"""The typed request the core runs: one task's inputs, normalised and with every default filled.

An API flavour builds it from its own wire body (`api/dashscope/normalize.py` today) and the task
store keeps it as JSON; the pipeline reads nothing else. It names no HTTP flavour's words.
"""

from __future__ import annotations

from typing import Literal

from pydantic import AliasChoices, BaseModel, Field

MediaRole = Literal["first_frame", "last_frame", "audio", "first_clip"]


class MediaInput(BaseModel):
    """One media input of a task: what it is for, the URL as sent, and the field to name in errors."""

    role: MediaRole
    url: str  # http(s), data:<mime>;base64, or upload://-style reference resolved by the upload store
    field: str


class GenerationRequest(BaseModel):
    """Everything a worker needs to run a task; stored with the task as JSON."""

    model: str  # canonical catalog name
    requested_model: str  # as the caller spelled it (alias or snapshot name)
    kind: Literal["t2v", "i2v", "kf2v", "wan27"]  # the catalog family: which inputs the model takes
    prompt: str
    negative_prompt: str
    template: str | None
    resolution: str
    size: str | None  # t2v: the exact output size; image-driven: decided from the first frame
    duration: int
    prompt_extend: bool
    shot_type: Literal["single", "multi"]
    sound: Literal["none", "generate", "input"]
    watermark: bool
    seed: int
    media: list[MediaInput]
    # the caller allowed references to its own uploads (oss://<key>) among the media URLs
    resolve_uploads: bool = Field(validation_alias=AliasChoices("resolve_uploads", "oss_resolve"))
