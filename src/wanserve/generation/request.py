"""The typed request the core runs: one task's inputs, normalised and with every default filled.

An API flavour builds it from its own wire body (`api/dashscope/normalize.py` today) and the task
store keeps it as JSON; the pipeline reads nothing else. It names no HTTP flavour's words.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import AliasChoices, BaseModel, Field, SerializerFunctionWrapHandler, model_serializer

MediaRole = Literal["first_frame", "last_frame", "audio", "first_clip"]


class MediaError(BaseModel):
    """Why a media input is unusable, found before the task ran; the task fails with it when it runs."""

    code: str  # an errors.Code value
    message: str


class MediaInput(BaseModel):
    """One media input of a task: what it is for, the URL as sent, and the field to name in errors.

    An inline `data:` URL is not kept here: at create its bytes become an upload of the task's own
    account (`upload_key`; `url` keeps only the `data:<mime>;base64,` head), or, if it cannot be decoded,
    `error` holds what the fetch would have said, so the task row stays small whatever the input."""

    role: MediaRole
    url: str  # http(s), data:<mime>;base64 (head only once stored), or oss://<key> of an upload
    field: str
    upload_key: str | None = None  # the bytes are this upload of the task's account, whatever the header
    error: MediaError | None = None  # the task fails with this when it fetches the input

    @model_serializer(mode="wrap")
    def _without_empty_extras(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """Stored and compared as {role, url, field} unless the input was inline."""
        data = handler(self)
        for name in ("upload_key", "error"):
            if data.get(name) is None:
                data.pop(name, None)
        return data


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
