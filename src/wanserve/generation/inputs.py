"""Step 1 of a task: fetch each media input and check it against its model's limits."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from PIL import Image

from ..catalog.models import ModelSpec
from ..errors import Code, ServiceError, invalid_parameter
from ..media.clip import WAN27_CLIP_LIMITS, check_clip
from ..media.fetch import OssResolver, fetch_media
from ..media.inputs import (
    LEGACY_AUDIO_LIMITS,
    LEGACY_IMAGE_LIMITS,
    WAN27_AUDIO_LIMITS,
    WAN27_IMAGE_LIMITS,
    AudioLimits,
    ImageLimits,
    check_audio,
    load_image,
)
from .continuation import Clip
from .request import GenerationRequest, MediaRole


@dataclass(frozen=True)
class Inputs:
    first_frame: Image.Image | None = None
    last_frame: Image.Image | None = None
    audio: bytes | None = None
    clip: Clip | None = None
    clip_width: int = 0
    clip_height: int = 0


def limits_for(spec: ModelSpec) -> tuple[ImageLimits, AudioLimits]:
    """The image and audio limits a model's inputs are checked against (contract section 4)."""
    image = WAN27_IMAGE_LIMITS if spec.image_limits == "wan27" else LEGACY_IMAGE_LIMITS
    audio = WAN27_AUDIO_LIMITS if spec.kind == "wan27" else LEGACY_AUDIO_LIMITS
    return image, audio


def max_bytes_for(spec: ModelSpec, role: MediaRole) -> int:
    """The largest file a model takes for one media role."""
    image_limits, audio_limits = limits_for(spec)
    return {"audio": audio_limits.max_bytes, "first_clip": WAN27_CLIP_LIMITS.max_bytes}.get(
        role, image_limits.max_bytes)


def fetch_inputs(req: GenerationRequest, spec: ModelSpec, *, resolver: OssResolver | None,
                 allow_private: bool, check: Callable[[], None]) -> Inputs:
    """Download and check every media input; `check()` between downloads lets a cancel through.
    `resolver` reads the task's own account's uploads: oss:// URLs when the caller allowed them, and
    always the inline data: URLs stored at create (`MediaInput.upload_key`)."""
    image_limits, audio_limits = limits_for(spec)
    found: dict = {}
    for media in req.media:
        if media.error is not None:  # an inline data: URL that could not be decoded at create
            raise ServiceError(Code(media.error.code), media.error.message)
        own = media.upload_key is not None
        data = fetch_media(f"oss://{media.upload_key}" if own else media.url, field=media.field,
                           max_bytes=max_bytes_for(spec, media.role),
                           oss_resolver=resolver if req.resolve_uploads or own else None,
                           allow_private=allow_private)
        check()
        if media.role == "audio":
            check_audio(data, audio_limits, field=media.field)
            found["audio"] = data
        elif media.role == "first_clip":
            info = check_clip(data, WAN27_CLIP_LIMITS, field=media.field)
            if info.seconds >= req.duration:
                raise invalid_parameter(f"parameters.duration ({req.duration} s) "
                                        "is the length of the whole output "
                                        f"and must exceed the first_clip ({info.seconds:.1f} s).")
            found.update(clip=Clip(data, info.seconds), clip_width=info.width, clip_height=info.height)
        else:
            found[media.role] = load_image(data, image_limits, field=media.field)
    return Inputs(**found)
