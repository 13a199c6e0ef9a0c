"""Sniffing and checking fetched media inputs: images (frames) and audio (spec §2.2, §2.4, §6).

The format is always detected from the bytes (magic numbers, then Pillow / PyAV with the detected format
forced), never from a file name, URL or declared MIME type.

Images: JPEG, PNG, BMP or WEBP; no alpha channel; each side within the limits; optional aspect-ratio bounds; a
byte-size cap. The dimensions come from the header (Pillow's `Image.open` is lazy) and are checked before any
pixel is decoded, so a small file that declares a huge canvas (a decompression bomb) is refused without
decoding it. Pillow's own bomb check (`DecompressionBombError`, raised by `open` above 2 x MAX_IMAGE_PIXELS)
is turned into the same resolution error. Pillow's `DecompressionBombWarning` (between 1 x and 2 x
MAX_IMAGE_PIXELS, about 89 and 179 Mpx) is not escalated through the process-global warnings filter; every
such image has a side far above any `max_side` used here (sqrt(89e6) > 9400) and is refused by the side check
before decoding. As a second line of defence an image is never decoded if width x height exceeds max_side
squared.

Audio: WAV or MP3 (sniffed), a byte-size cap, and a duration range measured by decoding with PyAV.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass

import av
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from wanserve.errors import Code, ServiceError
from wanserve.media.audio import decoded_seconds

__all__ = [
    "LEGACY_AUDIO_LIMITS",
    "LEGACY_IMAGE_LIMITS",
    "WAN27_AUDIO_LIMITS",
    "WAN27_IMAGE_LIMITS",
    "AudioLimits",
    "ImageLimits",
    "check_audio",
    "load_image",
    "sniff_audio_format",
    "sniff_image_format",
]


@dataclass(frozen=True)
class ImageLimits:
    min_side: int
    max_side: int
    max_bytes: int
    min_aspect: float | None = None  # width / height lower bound, e.g. 1/8
    max_aspect: float | None = None  # width / height upper bound, e.g. 8


LEGACY_IMAGE_LIMITS = ImageLimits(360, 2000, 10 * 2**20)  # img_url, first_frame_url, last_frame_url
WAN27_IMAGE_LIMITS = ImageLimits(240, 8000, 20 * 2**20, 1 / 8, 8)  # wan2.7 media first_frame / last_frame


@dataclass(frozen=True)
class AudioLimits:
    min_seconds: float
    max_seconds: float
    max_bytes: int


LEGACY_AUDIO_LIMITS = AudioLimits(3, 30, 15 * 2**20)  # wan2.5 / wan2.6 audio_url
WAN27_AUDIO_LIMITS = AudioLimits(2, 30, 15 * 2**20)  # wan2.7 driving_audio

ALLOWED_IMAGE_FORMATS = "JPEG, PNG, BMP, WEBP"
_AUDIO_FORMAT_MESSAGE = "File type is not supported. Allowed types are: .wav, .mp3."

# Encoders pad MP3 streams (encoder delay and the last frame), so a clip cut to exactly 30 s can decode a few
# tens of milliseconds longer. Durations within this tolerance of a bound are accepted.
_DURATION_TOLERANCE_S = 0.1


# --------------------------------------------------------------------------------------------------- images


def sniff_image_format(data: bytes) -> str | None:
    """Return "JPEG", "PNG", "BMP" or "WEBP" from the magic number, or None for anything else."""
    if data[:3] == b"\xff\xd8\xff":
        return "JPEG"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "PNG"
    if data[:2] == b"BM" and len(data) >= 26:
        return "BMP"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return None


def _describe_unsupported_image(data: bytes) -> str:
    head = data[:512].lstrip()
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "a GIF image"
    if data[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "a TIFF image"
    if data[4:12] in (b"ftypheic", b"ftypheix", b"ftypmif1", b"ftypmsf1", b"ftypavif", b"ftyphevc"):
        return "a HEIC/AVIF image"
    if head[:5].lower() in (b"<?xml", b"<svg ", b"<svg>") or b"<svg" in head.lower():
        return "an SVG or XML document"
    if head[:1] in (b"<", b"{", b"[") or (head and all(32 <= b < 127 or b in (9, 10, 13) for b in head)):
        return "text, not an image"
    if not data:
        return "empty"
    return "not a recognised image"


def load_image(data: bytes, limits: ImageLimits, *, field: str) -> Image.Image:
    """Check an image input and return it decoded as RGB with its EXIF orientation applied.

    Raises ServiceError: InvalidFile.Size (too many bytes), InvalidImage.FileFormat (not JPEG/PNG/BMP/WEBP,
    corrupt or truncated, or has an alpha channel), InvalidImageResolution (a side or the aspect ratio out of
    range).
    """
    if len(data) > limits.max_bytes:
        raise ServiceError(
            Code.FILE_SIZE,
            f"{field}: the image is {_mb(len(data))} MB; the limit is {_mb(limits.max_bytes)} MB. "
            "Send a smaller or more compressed image.",
        )
    fmt = sniff_image_format(data)
    if fmt is None:
        raise ServiceError(
            Code.IMAGE_FORMAT,
            f"{field}: the file is {_describe_unsupported_image(data)}; this image format is not supported. "
            f"Allowed formats: {ALLOWED_IMAGE_FORMATS}.",
        )
    corrupt = ServiceError(
        Code.IMAGE_FORMAT,
        f"{field}: the {fmt} image is corrupt or truncated and cannot be decoded. "
        f"Send a complete, valid image (allowed formats: {ALLOWED_IMAGE_FORMATS}).",
    )
    try:
        img = Image.open(io.BytesIO(data), formats=[fmt, "MPO"] if fmt == "JPEG" else [fmt])
    except Image.DecompressionBombError:
        raise ServiceError(
            Code.IMAGE_RESOLUTION,
            f"{field}: the image declares far too many pixels; width and height must each be between "
            f"{limits.min_side} and {limits.max_side} px. Send a smaller image.",
        ) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error):
        raise corrupt from None

    width, height = img.size  # from the header; nothing decoded yet
    _check_sides(width, height, limits, field=field)
    if width * height > limits.max_side**2:  # implied by the side check; kept as a guard against bombs
        raise ServiceError(Code.IMAGE_RESOLUTION, f"{field}: the image is {width}x{height} px; too large.")
    _check_aspect(*_oriented_size(img), limits, field=field)
    if _has_alpha(img):
        raise ServiceError(
            Code.IMAGE_FORMAT,
            f"{field}: the {fmt} image has an alpha (transparency) channel, which is not supported. "
            "Remove the transparency (flatten the image onto a solid background, e.g. save it as RGB) "
            "and send it again.",
        )
    try:
        img.load()
        img = ImageOps.exif_transpose(img)
        if img.size != (width, height) and img.size != (height, width):  # pragma: no cover - defensive
            raise corrupt
        rgb = _to_rgb(img)
    except ServiceError:
        raise
    except Image.DecompressionBombError:
        raise ServiceError(
            Code.IMAGE_RESOLUTION,
            f"{field}: the image declares far too many pixels. Send a smaller image.",
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error):
        raise corrupt from None
    return rgb


def _check_sides(width: int, height: int, limits: ImageLimits, *, field: str) -> None:
    if all(limits.min_side <= side <= limits.max_side for side in (width, height)):
        return
    if min(width, height) < limits.min_side:
        advice = "Send a larger image."
    else:
        advice = "Send a smaller image (scale it down)."
    raise ServiceError(
        Code.IMAGE_RESOLUTION,
        f"{field}: the image is {width}x{height} px; width and height must each be between "
        f"{limits.min_side} and {limits.max_side} px. {advice}",
    )


def _oriented_size(img: Image.Image) -> tuple[int, int]:
    """The displayed size: swapped when the EXIF orientation rotates by 90 degrees (5-8)."""
    width, height = img.size
    try:
        orientation = img.getexif().get(0x0112)
    except (OSError, SyntaxError, ValueError, TypeError, KeyError, IndexError, struct.error):
        # a broken EXIF block only loses the orientation
        orientation = None
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def _ratio_text(value: float) -> str:
    if value >= 1:
        return f"{value:g}:1"
    return f"1:{1 / value:g}"


def _check_aspect(width: int, height: int, limits: ImageLimits, *, field: str) -> None:
    aspect = width / height
    low_ok = limits.min_aspect is None or aspect >= limits.min_aspect - 1e-9
    high_ok = limits.max_aspect is None or aspect <= limits.max_aspect + 1e-9
    if low_ok and high_ok:
        return
    bounds = []
    if limits.min_aspect is not None:
        bounds.append(f"at least {_ratio_text(limits.min_aspect)}")
    if limits.max_aspect is not None:
        bounds.append(f"at most {_ratio_text(limits.max_aspect)}")
    raise ServiceError(
        Code.IMAGE_RESOLUTION,
        f"{field}: the image is {width}x{height} px (width:height {_ratio_text(aspect)}); the width:height "
        f"ratio must be {' and '.join(bounds)}. Crop the image to a less extreme shape.",
    )


def _has_alpha(img: Image.Image) -> bool:
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        return True
    return "transparency" in img.info


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        # 16-bit / 32-bit greyscale: scale to 8 bits instead of letting convert() clip.
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") else max(float(arr.max()), 1.0)
        if img.mode == "I" and arr.max() <= 255:
            top = 255.0
        arr8 = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr8, "L").convert("RGB")
    if img.mode == "RGB":
        return img
    return img.convert("RGB")


# --------------------------------------------------------------------------------------------------- audio


def sniff_audio_format(data: bytes) -> str | None:
    """Return "wav" (RIFF....WAVE) or "mp3" (an ID3 tag or an MPEG audio layer III frame header),
    else None."""
    if data[:4] == b"RIFF" and data[8:12] == b"WAVE":
        return "wav"
    if data[:3] == b"ID3":
        return "mp3"
    if len(data) >= 4 and data[0] == 0xFF and data[1] & 0xE0 == 0xE0:
        version = (data[1] >> 3) & 0b11  # 01 is reserved
        layer = (data[1] >> 1) & 0b11  # 01 is layer III; 00 (reserved) is what AAC ADTS uses
        bitrate_index = data[2] >> 4
        sample_rate_index = (data[2] >> 2) & 0b11
        if version != 0b01 and layer == 0b01 and bitrate_index != 0b1111 and sample_rate_index != 0b11:
            return "mp3"
    return None


def check_audio(data: bytes, limits: AudioLimits, *, field: str) -> float:
    """Check an audio input (WAV or MP3) and return its duration in seconds.

    Raises ServiceError: InvalidFile.Size, InvalidFile.Format (not WAV/MP3 or not decodable),
    InvalidFile.Duration (outside [min_seconds, max_seconds]).
    """
    if len(data) > limits.max_bytes:
        raise ServiceError(
            Code.FILE_SIZE,
            f"{field}: File size is larger than {_mb(limits.max_bytes)}MB. The file is {_mb(len(data))} MB; "
            "send a shorter or more compressed audio file.",
        )
    fmt = sniff_audio_format(data)
    if fmt is None:
        raise ServiceError(Code.FILE_FORMAT, f"{field}: {_AUDIO_FORMAT_MESSAGE}")
    undecodable = ServiceError(
        Code.FILE_FORMAT,
        f"{field}: the {fmt.upper()} audio could not be decoded (corrupt, truncated or an unsupported "
        "encoding). Send a valid .wav or .mp3 file.",
    )
    stop_after = limits.max_seconds + _DURATION_TOLERANCE_S + 1.0
    try:
        decoded, complete, declared = decoded_seconds(data, fmt, stop_after)
    except av.FFmpegError:
        raise undecodable from None
    except (OSError, ValueError, IndexError, EOFError):
        raise undecodable from None
    if decoded <= 0:
        raise undecodable
    duration = decoded
    if not complete and declared is not None and declared > duration:
        duration = declared
    allowed = f"{limits.min_seconds:g}-{limits.max_seconds:g} s"
    if duration < limits.min_seconds - _DURATION_TOLERANCE_S:
        raise ServiceError(
            Code.FILE_DURATION,
            f"{field}: the audio is {duration:.2f} s long; its duration must be within {allowed}. "
            "Send a longer audio clip.",
        )
    if duration > limits.max_seconds + _DURATION_TOLERANCE_S:
        measured = f"{duration:.2f} s" if complete or declared is not None else f"more than {duration:.2f} s"
        raise ServiceError(
            Code.FILE_DURATION,
            f"{field}: The input audio is longer than {limits.max_seconds:g}s (it is {measured} long); its "
            f"duration must be within {allowed}. Trim the audio.",
        )
    return round(duration, 3)


def _mb(n_bytes: int) -> str:
    return f"{n_bytes / 2**20:.1f}".rstrip("0").rstrip(".")
