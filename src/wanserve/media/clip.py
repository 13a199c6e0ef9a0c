"""wan2.7 `first_clip` inputs: checking an uploaded video and reading its frames at 30 fps.

A clip is checked from its container header and stream (never fully decoded up front), and its
frames are streamed later already fitted to the output size, so a 10 s 4K clip never sits in
memory whole.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass

import av
import numpy as np

from ..errors import Code, ServiceError


@dataclass(frozen=True)
class ClipLimits:
    min_seconds: float
    max_seconds: float
    min_side: int
    max_side: int
    max_bytes: int
    min_aspect: float = 1 / 8
    max_aspect: float = 8.0


WAN27_CLIP_LIMITS = ClipLimits(2, 10, 240, 4096, 100 * 2**20)


@dataclass(frozen=True)
class ClipInfo:
    width: int
    height: int
    seconds: float


_FORMAT = "File type is not supported. Allowed types are: .mp4, .mov."


def sniff_clip_format(data: bytes) -> str | None:
    """MP4 and QuickTime files are ISO base-media boxes: a size, then a box type such as 'ftyp'."""
    if len(data) >= 12 and data[4:8] in (b"ftyp", b"moov", b"mdat", b"wide", b"free", b"skip"):
        return "mp4"
    return None


def check_clip(data: bytes, limits: ClipLimits, *, field: str) -> ClipInfo:
    if len(data) > limits.max_bytes:
        raise ServiceError(Code.FILE_SIZE,
                           f"{field}: the video is larger than {limits.max_bytes // 2**20} MB; "
                           "send a shorter or more compressed clip.")
    if sniff_clip_format(data) is None:
        raise ServiceError(Code.FILE_FORMAT, f"{field}: {_FORMAT}")
    try:
        with av.open(io.BytesIO(data)) as container:
            if not container.streams.video:
                raise ServiceError(Code.FILE_FORMAT, f"{field}: the file has no video track; {_FORMAT}")
            stream = container.streams.video[0]
            width, height = stream.codec_context.width, stream.codec_context.height
            if stream.duration is not None and stream.time_base is not None:
                seconds = float(stream.duration * stream.time_base)
            elif container.duration is not None:
                seconds = container.duration / av.time_base
            else:
                seconds = sum(1 for _ in container.decode(video=0)) / float(stream.average_rate or 30)
    except av.FFmpegError:
        raise ServiceError(Code.FILE_FORMAT, f"{field}: the video could not be decoded; {_FORMAT}") from None
    if not (limits.min_side <= width <= limits.max_side and limits.min_side <= height <= limits.max_side):
        raise ServiceError(Code.FILE_RESOLUTION,
                           f"{field}: the video is {width}x{height} px; each side must be "
                           f"between {limits.min_side} and {limits.max_side} px.")
    if not limits.min_aspect <= width / height <= limits.max_aspect:
        raise ServiceError(Code.FILE_RESOLUTION,
                           f"{field}: the video's aspect ratio {width}:{height} is outside "
                           "1:8 to 8:1.")
    if not limits.min_seconds <= seconds <= limits.max_seconds:
        raise ServiceError(Code.FILE_DURATION, f"{field}: the video lasts {seconds:.1f} s; it must last "
                           f"{limits.min_seconds:g} to {limits.max_seconds:g} s.")
    return ClipInfo(width, height, seconds)


def clip_frames(data: bytes, fps: int, count: int) -> Iterator[np.ndarray]:
    """Up to `count` RGB frames at `fps`, sampled from the clip by time (a frame is held until the
    next one is due), so clips of any frame rate come out at the output's rate."""
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        current: np.ndarray | None = None
        k = 0
        for frame in container.decode(stream):
            t = float(frame.time) if frame.time is not None else 0.0
            while current is not None and k < count and k / fps < t:
                yield current
                k += 1
            if k >= count:
                return
            current = frame.to_ndarray(format="rgb24")
        while current is not None and k < count:  # the last frame lasts until the clip's end
            yield current
            k += 1
