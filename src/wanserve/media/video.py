"""Encoding the result video: H.264 + optional AAC in MP4, with PyAV.

`encode_mp4` consumes the engine's RGB frames one by one (it never holds the whole video), converts
each to YUV 4:2:0 with OpenCV, optionally stamps the "AI生成" label on the few pixels it covers,
and feeds libx264. Audio supplied by the user is decoded, resampled, cut or padded with silence to
exactly the video's length, encoded as AAC and interleaved with the video as it is written.

The output is written to a temporary file beside `path` and renamed onto `path` only when it is
complete, so a failure (bad frame, bad audio, a `TaskCanceled` raised by the frame iterator)
never leaves a partial file at `path`.
"""

from __future__ import annotations

import contextlib
import io
import os
import uuid
from collections.abc import Iterable
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

from wanserve.errors import Code, ServiceError
from wanserve.media import watermark as _wm
from wanserve.media.audio import decoded_seconds

X264_PRESET = "veryfast"
X264_CRF = 23
AUDIO_BIT_RATE = 128_000
AAC_FRAME_SIZE = 1024

# Colour tags matching cv2's RGB->I420 conversion: BT.601 matrix, limited ("tv") range; sRGB input
# content has BT.709 primaries. Values are FFmpeg's AVColorSpace / AVColorPrimaries / AVColorTransfer
# Characteristic / AVColorRange enums.
_AVCOL_SPC_SMPTE170M = 6
_AVCOL_PRI_BT709 = 1
_AVCOL_TRC_BT709 = 1
_AVCOL_RANGE_MPEG = 1

_AUDIO_ERROR = "The audio file could not be decoded as audio; upload a valid WAV or MP3 file."
_NO_AUDIO = "The audio file contains no audio; upload a WAV or MP3 file with sound in it."


# --------------------------------------------------------------------------------------------------
# audio


def _open_audio(data: bytes):
    try:
        container = av.open(io.BytesIO(data), mode="r")
    except (av.FFmpegError, ValueError, OSError) as exc:
        raise ServiceError(Code.FILE_FORMAT, _AUDIO_ERROR) from exc
    if not container.streams.audio:
        container.close()
        raise ServiceError(Code.FILE_FORMAT, _NO_AUDIO)
    return container


def _output_rate(source_rate: int | None) -> int:
    """44.1 kHz for sources on the 44.1 kHz family, else 48 kHz."""
    if source_rate in (11025, 22050, 44100, 88200, 176400):
        return 44100
    return 48000


def audio_duration(data: bytes) -> float:
    """Duration in seconds of an audio file (WAV, MP3, ... anything FFmpeg decodes), by decoding it.

    Raises `ServiceError(Code.FILE_FORMAT, ...)` when it cannot be decoded or holds no audio.
    """
    try:
        seconds, _, _ = decoded_seconds(data)
    except (av.FFmpegError, ValueError, OSError) as exc:
        raise ServiceError(Code.FILE_FORMAT, _AUDIO_ERROR) from exc
    if seconds <= 0:
        raise ServiceError(Code.FILE_FORMAT, _NO_AUDIO)
    return seconds


def _decode_audio(data: bytes, max_seconds: float) -> tuple[np.ndarray, int]:
    """Decode to stereo float32 planar samples, shape (2, n), at 44.1 or 48 kHz; stop after max_seconds."""
    container = _open_audio(data)
    try:
        stream = container.streams.audio[0]
        rate = _output_rate(stream.sample_rate or stream.codec_context.sample_rate)
        limit = int(np.ceil(max_seconds * rate)) + AAC_FRAME_SIZE
        resampler = av.AudioResampler(format="fltp", layout="stereo", rate=rate)
        chunks: list[np.ndarray] = []
        have = 0
        for frame in container.decode(stream):
            frame.pts = None  # let the resampler count samples; some WAV/MP3 pts are unreliable
            for out in resampler.resample(frame):
                chunk = out.to_ndarray()
                chunks.append(chunk)
                have += chunk.shape[1]
            if have >= limit:
                break
        else:
            for out in resampler.resample(None):
                chunk = out.to_ndarray()
                chunks.append(chunk)
                have += chunk.shape[1]
    except (av.FFmpegError, ValueError) as exc:
        raise ServiceError(Code.FILE_FORMAT, _AUDIO_ERROR) from exc
    finally:
        container.close()
    if have == 0:
        raise ServiceError(Code.FILE_FORMAT, _NO_AUDIO)
    samples = np.concatenate(chunks, axis=1).astype(np.float32, copy=False)
    return samples, rate


def _fit_audio(samples: np.ndarray, total: int) -> np.ndarray:
    """Cut to `total` samples, or pad with silence up to it."""
    if samples.shape[1] >= total:
        return np.ascontiguousarray(samples[:, :total])
    out = np.zeros((2, total), dtype=np.float32)
    out[:, : samples.shape[1]] = samples
    return out


class _AudioTrack:
    """Feeds a fixed buffer of samples to an AAC stream, in step with the video."""

    def __init__(self, container, samples: np.ndarray, rate: int) -> None:
        self.container = container
        self.samples = samples
        self.rate = rate
        self.pos = 0
        self.stream = container.add_stream("aac", rate=rate)
        self.stream.layout = "stereo"
        self.stream.format = "fltp"
        self.stream.bit_rate = AUDIO_BIT_RATE
        self.stream.time_base = Fraction(1, rate)
        self.time_base = Fraction(1, rate)

    def write_until(self, sample_index: int) -> None:
        end = min(sample_index, self.samples.shape[1])
        while self.pos < end:
            stop = min(self.pos + AAC_FRAME_SIZE, self.samples.shape[1])
            if stop - self.pos < AAC_FRAME_SIZE and stop < self.samples.shape[1]:
                break  # wait for a full AAC frame unless this is the tail
            frame = av.AudioFrame.from_ndarray(
                np.ascontiguousarray(self.samples[:, self.pos : stop]), format="fltp", layout="stereo"
            )
            frame.sample_rate = self.rate
            frame.time_base = self.time_base
            frame.pts = self.pos
            self.container.mux(self.stream.encode(frame))
            self.pos = stop

    def finish(self) -> None:
        self.write_until(self.samples.shape[1])
        self.container.mux(self.stream.encode(None))


# --------------------------------------------------------------------------------------------------
# video


class _Stamp:
    """Watermark applied in YUV: the label's 2-aligned region is converted on its own and patched in.

    cv2's RGB->I420 conversion works on 2x2 blocks, so converting an even-aligned region separately
    gives exactly the bytes a full-frame conversion of the stamped frame would, without copying or
    modifying the caller's frame.
    """

    def __init__(self, width: int, height: int) -> None:
        self.width, self.height = width, height
        self.x, self.y, self.lw, self.lh = _wm.placement(width, height)
        self.ew = min(width - self.x, self.lw + (self.lw & 1))
        self.eh = min(height - self.y, self.lh + (self.lh & 1))

    def apply(self, rgb: np.ndarray, yuv: np.ndarray) -> None:
        x, y, ew, eh, lw, lh = self.x, self.y, self.ew, self.eh, self.lw, self.lh
        region = rgb[y : y + eh, x : x + ew].copy()
        region[:lh, :lw] = _wm.blend_region(region[:lh, :lw], lh)
        patch = cv2.cvtColor(region, cv2.COLOR_RGB2YUV_I420)
        w, h = self.width, self.height
        yuv[y : y + eh, x : x + ew] = patch[:eh]
        flat, pflat = yuv.reshape(-1), patch.reshape(-1)
        cw, ch, pcw, pch = w // 2, h // 2, ew // 2, eh // 2
        for plane in range(2):
            full = flat[w * h + plane * cw * ch : w * h + (plane + 1) * cw * ch].reshape(ch, cw)
            part = pflat[ew * eh + plane * pcw * pch : ew * eh + (plane + 1) * pcw * pch].reshape(pch, pcw)
            full[y // 2 : y // 2 + pch, x // 2 : x // 2 + pcw] = part


def _temp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.part")


def encode_mp4(
    frames: Iterable[np.ndarray],
    path: Path,
    *,
    width: int,
    height: int,
    fps: int,
    frame_count: int,
    audio: bytes | None = None,
    watermark: bool = False,
) -> None:
    """Encode exactly `frame_count` uint8 RGB frames (height x width x 3) to an H.264 MP4 at `path`.

    Constant `fps` frame rate, yuv420p, libx264 (preset veryfast, CRF 23). With `audio` (the bytes
    of a WAV/MP3/... file) an AAC track is added, cut or padded with silence to frame_count / fps
    seconds. With `watermark` the "AI生成" label is stamped at the bottom right of every frame.

    Raises ValueError for a frame of the wrong shape/dtype or a frame count other than
    `frame_count`; ServiceError(Code.FILE_FORMAT) for undecodable audio. Whatever is raised
    (including from the frame iterator), nothing is left at `path`.
    """
    path = Path(path)
    if width <= 0 or height <= 0 or width % 2 or height % 2:
        raise ValueError(f"width and height must be positive and even, got {width}x{height}")
    if fps <= 0 or frame_count <= 0:
        raise ValueError(f"fps and frame_count must be positive, got fps={fps} frame_count={frame_count}")

    # Decode audio before touching the filesystem: a bad file fails fast.
    track_samples: tuple[np.ndarray, int] | None = None
    if audio is not None:
        samples, rate = _decode_audio(audio, frame_count / fps)
        total = frame_count * rate // fps  # exact for 30 fps at 44.1/48 kHz
        track_samples = (_fit_audio(samples, total), rate)

    tmp = _temp_path(path)
    container = None
    try:
        container = av.open(str(tmp), mode="w", format="mp4", options={"movflags": "+faststart"})
        vs = container.add_stream("libx264", rate=fps)
        vs.width = width
        vs.height = height
        vs.pix_fmt = "yuv420p"
        vs.time_base = Fraction(1, fps)
        vs.codec_context.time_base = Fraction(1, fps)
        vs.codec_context.colorspace = _AVCOL_SPC_SMPTE170M
        vs.codec_context.color_primaries = _AVCOL_PRI_BT709
        vs.codec_context.color_trc = _AVCOL_TRC_BT709
        vs.codec_context.color_range = _AVCOL_RANGE_MPEG
        # Frame threading: x264 encodes earlier frames on its own threads while the caller renders the
        # next one (PyAV's default, slice threading, makes every encode() call synchronous).
        vs.codec_context.thread_type = "FRAME"
        vs.codec_context.thread_count = 0  # x264 picks its thread count from the CPU count
        vs.options = {"preset": X264_PRESET, "crf": str(X264_CRF)}
        vtb = Fraction(1, fps)

        track = _AudioTrack(container, *track_samples) if track_samples is not None else None
        stamp = _Stamp(width, height) if watermark else None
        expected = (height, width, 3)

        n = 0
        for frame in frames:
            if n >= frame_count:
                raise ValueError(f"got more than the {frame_count} frames announced")
            if not isinstance(frame, np.ndarray) or frame.shape != expected or frame.dtype != np.uint8:
                is_array = isinstance(frame, np.ndarray)
                got = f"{frame.dtype} {frame.shape}" if is_array else type(frame).__name__
                raise ValueError(f"frame {n}: expected uint8 array of shape {expected}, got {got}")
            yuv = cv2.cvtColor(frame, cv2.COLOR_RGB2YUV_I420)
            if stamp is not None:
                stamp.apply(frame, yuv)
            vf = av.VideoFrame.from_ndarray(yuv, format="yuv420p")
            vf.pts = n
            vf.time_base = vtb
            container.mux(vs.encode(vf))
            n += 1
            if track is not None:
                track.write_until(n * track.rate // fps)
        if n != frame_count:
            raise ValueError(f"got {n} frames, expected {frame_count}")
        container.mux(vs.encode(None))
        if track is not None:
            track.finish()
        container.close()
        container = None
        os.replace(tmp, path)
    finally:
        if container is not None:
            with contextlib.suppress(Exception):  # already failing: the original error is what matters
                container.close()
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
