"""Turning a create-request body into one typed, normalised `GenerationRequest`.

The rule for when a mistake is answered (docs/compatibility.md repeats it):
- anything the body and headers alone show to be wrong (unknown model, wrong endpoint, a value
  outside the model's list, a missing required field, a malformed or unsupported URL form, oss://
  without the resolve header) is refused at create time with 400 and no task is created;
- anything that needs the media itself (download failures, formats, pixel sizes, audio length)
  is found by the worker and ends the task FAILED with the contract code.
So the same mistake always gets the same answer, and create stays fast and never downloads.

Lenient where the hosted service is: unknown `input`/`parameters` keys are ignored, the SDK's
injected keys (`extend_prompt`, `function`, `prompt: null`) are tolerated, over-long prompts are
truncated (never refused), `resolution` is case-insensitive.
"""

from __future__ import annotations

import math
import secrets
from typing import Any, Literal

from ...catalog.models import NEG_PROMPT_MAX, ModelSpec, find_model, size_tier
from ...errors import Code, ServiceError, invalid_parameter
from ...generation.request import GenerationRequest, MediaInput
from ...media.fetch import url_form

SEED_MAX = 2147483647
URL_MAX = 16384  # characters of an http(s) or oss:// URL (signed URLs run to 1-2 KB)
MEDIA_COMBINATIONS = {
    frozenset({"first_frame"}),
    frozenset({"first_frame", "driving_audio"}),
    frozenset({"first_frame", "last_frame"}),
    frozenset({"first_frame", "last_frame", "driving_audio"}),
    frozenset({"first_clip"}),
    frozenset({"first_clip", "last_frame"}),
}


def _get_str(obj: dict, key: str, where: str) -> str | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise invalid_parameter(f"{where}.{key} must be a string, got {type(value).__name__}.")
    return value


def _get_bool(params: dict, key: str, default: bool) -> bool:
    value = params.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise invalid_parameter(f"parameters.{key} must be true or false, got {value!r}.")
    return value


def _get_int(params: dict, key: str) -> int | None:
    value = params.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or int(value) != value:
        raise invalid_parameter(f"parameters.{key} must be an integer, got {value!r}.")
    return int(value)


def _check_url(url: str, field: str, oss_resolve: bool) -> str:
    url = url.strip()
    form = url_form(url)
    if form != "data" and len(url) > URL_MAX:  # data: URLs are stored as uploads, out of the task row
        raise invalid_parameter(f"{field}: the URL is {len(url)} characters long; the limit is {URL_MAX}. "
                                "Send a shorter URL, or upload the file and send its oss:// URL.")
    if form == "http":
        return url
    if form == "data":
        if ";base64," not in url:
            raise invalid_parameter(f"{field}: a data: URL must look like data:<mime>;base64,<data>.")
        return url
    if form == "oss":
        if not oss_resolve:
            raise ServiceError(
                Code.DATA_INSPECTION,
                f"{field}: oss:// URLs are resolved only when the request carries the header "
                "X-DashScope-OssResourceResolve: enable.",
            )
        return url
    raise ServiceError(
        Code.INVALID_URL,
        f"{field}: {url[:80]!r} is not a supported URL. Send an http(s) URL, a data:<mime>;base64 URL, "
        "or an oss:// URL from the upload endpoint.",
    )


def resolve_model(body_model: Any, endpoint: str) -> ModelSpec:
    """The catalog entry for the body's model, checked against the endpoint it was posted to.

    kf2v models are also accepted on video-generation, because the official v2 SDK client posts
    every model there; other models posted to image2video get the gateway's "url error".
    """
    if body_model is None or body_model == "":
        raise ServiceError(Code.EMPTY_MODEL, 'Required parameter "model" missing from request.')
    if not isinstance(body_model, str):
        raise invalid_parameter("model must be a string naming a model, e.g. \"wan2.6-t2v\".")
    spec = find_model(body_model)
    if spec is None:
        raise invalid_parameter(f"Model not exist. {body_model!r} is not a model this server knows; "
                                "run `wanserve models` for the list.")
    if endpoint == "image2video" and spec.endpoint != "image2video":
        raise invalid_parameter(
            f"url error, please check url! Model {body_model} is served at "
            "POST /api/v1/services/aigc/video-generation/video-synthesis."
        )
    return spec


def normalize(body: Any, endpoint: str, *, oss_resolve: bool) -> GenerationRequest:
    """Validate a create body and fill every default; raises ServiceError (400) on any mistake."""
    if not isinstance(body, dict):
        raise ServiceError(Code.ILLEGAL_INPUT, "The request body must be a JSON object "
                           '{"model": ..., "input": {...}, "parameters": {...}}.')
    spec = resolve_model(body.get("model"), endpoint)
    inp = body.get("input")
    if inp is None:
        raise ServiceError(Code.EMPTY_INPUT, "Required input parameter missing from request.")
    if not isinstance(inp, dict):
        raise invalid_parameter("input must be a JSON object.")
    params = body.get("parameters")
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise invalid_parameter("parameters must be a JSON object.")

    template = _get_str(inp, "template", "input") or None
    if template is not None:
        if not spec.templates:
            raise invalid_parameter(f"input.template: {spec.name} has no effect templates; remove template.")
        if template not in spec.templates:
            raise invalid_parameter(f"input.template: {template!r} is not a template of {spec.name}. "
                                    f"Use one of: {', '.join(spec.templates)}.")

    raw_prompt = _get_str(inp, "prompt", "input") or ""
    prompt = "" if template else raw_prompt[: spec.prompt_max]
    negative = (_get_str(inp, "negative_prompt", "input") or "")[:NEG_PROMPT_MAX]

    media = _media_inputs(spec, inp, template, oss_resolve)
    if not prompt and not template and spec.kind in ("t2v", "i2v"):
        raise invalid_parameter("Field required: input.prompt")

    resolution, size = _resolution_and_size(spec, params)
    duration = _get_int(params, "duration")
    if duration is None:
        duration = spec.default_duration
    if duration not in spec.durations:
        allowed = (f"an integer from {spec.durations[0]} to {spec.durations[-1]}"
                   if len(spec.durations) > 3 else ", ".join(map(str, spec.durations)))
        raise invalid_parameter(f"parameters.duration: {duration} is not supported by {spec.name}; "
                                f"use {allowed} (seconds).")

    prompt_extend = _get_bool(params, "prompt_extend", True)
    shot_type = params.get("shot_type") or "single"
    if shot_type not in ("single", "multi"):
        raise invalid_parameter(f"parameters.shot_type must be \"single\" or \"multi\", got {shot_type!r}.")
    if not (spec.multi_shot and prompt_extend):
        shot_type = "single"  # honoured only by wan2.6 and only with prompt_extend (contract 2.3)

    seed = _get_int(params, "seed")
    if seed is None:
        seed = secrets.randbelow(SEED_MAX + 1)
    if not 0 <= seed <= SEED_MAX:
        raise invalid_parameter(f"parameters.seed must be between 0 and {SEED_MAX}, got {seed}.")

    sound = _sound(spec, params, media)
    if sound == "none":
        media = [m for m in media if m.role != "audio"]
    return GenerationRequest(
        model=spec.name,
        requested_model=body["model"],
        kind=spec.kind,
        prompt=prompt,
        negative_prompt=negative,
        template=template,
        resolution=resolution,
        size=size,
        duration=duration,
        prompt_extend=prompt_extend,
        shot_type=shot_type,
        sound=sound,
        watermark=_get_bool(params, "watermark", False),
        seed=seed,
        media=media,
        resolve_uploads=oss_resolve,
    )


def _resolution_and_size(spec: ModelSpec, params: dict) -> tuple[str, str | None]:
    if spec.kind == "t2v":
        size = _get_str(params, "size", "parameters") or spec.default_size
        assert size is not None
        if size not in spec.sizes:
            raise invalid_parameter(f"size must be in {','.join(spec.sizes)} for {spec.name}; got {size!r}.")
        return size_tier(size), size
    resolution = _get_str(params, "resolution", "parameters") or spec.default_resolution
    resolution = resolution.upper()
    if resolution not in spec.resolutions:
        raise invalid_parameter(f"parameters.resolution: {resolution!r} is not supported by {spec.name}; "
                                f"use one of {', '.join(spec.resolutions)}.")
    return resolution, None


def _media_inputs(spec: ModelSpec, inp: dict, template: str | None, oss: bool) -> list[MediaInput]:
    def ref(role: str, key: str, required: bool) -> list[MediaInput]:
        url = _get_str(inp, key, "input")
        if not url:
            if required:
                raise invalid_parameter(f"Field required: input.{key}")
            return []
        return [MediaInput(role=role, url=_check_url(url, f"input.{key}", oss), field=f"input.{key}")]

    if spec.kind == "t2v":
        return ref("audio", "audio_url", False) if spec.accepts_audio_url else []
    if spec.kind == "i2v":
        audio = ref("audio", "audio_url", False) if spec.accepts_audio_url else []
        return ref("first_frame", "img_url", True) + audio
    if spec.kind == "kf2v":
        return (ref("first_frame", "first_frame_url", True)
                + ref("last_frame", "last_frame_url", template is None))
    return _wan27_media(inp, oss)


def _wan27_media(inp: dict, oss: bool) -> list[MediaInput]:
    items = inp.get("media")
    if not isinstance(items, list) or not items:
        raise invalid_parameter("Field required: input.media (a list of {\"type\": ..., \"url\": ...} items, "
                                "e.g. [{\"type\": \"first_frame\", \"url\": \"https://...\"}]).")
    roles = {"first_frame": "first_frame", "last_frame": "last_frame", "driving_audio": "audio",
             "first_clip": "first_clip"}
    out: list[MediaInput] = []
    seen: set[str] = set()
    for i, item in enumerate(items):
        field = f"input.media[{i}]"
        if not isinstance(item, dict):
            raise invalid_parameter(f"{field} must be an object {{\"type\": ..., \"url\": ...}}.")
        kind, url = item.get("type"), item.get("url")
        if not isinstance(kind, str) or kind not in roles:
            raise invalid_parameter(f"{field}.type: {kind!r} is not supported by wan2.7-i2v; "
                                    "use first_frame, last_frame, driving_audio or first_clip.")
        if kind in seen:
            raise invalid_parameter(f"{field}.type: {kind} appears more than once; "
                                    "send each type at most once.")
        if not isinstance(url, str) or not url:
            raise invalid_parameter(f"Field required: {field}.url")
        seen.add(kind)
        out.append(MediaInput(role=roles[kind], url=_check_url(url, f"{field}.url", oss),
                              field=f"{field}.url"))
    if frozenset(seen) not in MEDIA_COMBINATIONS:
        raise invalid_parameter(
            f"input.media: the combination {sorted(seen)} is not supported. "
            "Use first_frame (+ driving_audio), "
            "first_frame + last_frame (+ driving_audio), or first_clip (+ last_frame)."
        )
    return out


def _sound(spec: ModelSpec, params: dict, media: list[MediaInput]) -> Literal["none", "generate", "input"]:
    if spec.audio == "silent":
        return "none"
    if spec.audio == "auto_switch" and not _get_bool(params, "audio", True):
        return "none"  # audio=false beats audio_url (contract 2.3)
    return "input" if any(m.role == "audio" for m in media) else "generate"

