"""A deterministic soundtrack for models that "generate" sound when the caller gives none.

The preview engine is not AI and cannot make matching sound; it gives these models a quiet,
seeded ambient chord so the output has the audio track the hosted service's output has.
"""

from __future__ import annotations

import io
import wave

import av
import numpy as np

RATE = 44100


def ambient_wav(seconds: float, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * RATE), dtype=np.float32) / RATE
    root = 110.0 * 2 ** (rng.integers(0, 12) / 12)
    signal = np.zeros_like(t)
    for ratio in (1.0, 1.25, 1.5, 2.0):  # a major chord with its octave
        signal += np.sin(2 * np.pi * root * ratio * t + rng.uniform(0, 2 * np.pi)).astype(np.float32)
    swell = 0.5 - 0.5 * np.cos(2 * np.pi * t / max(seconds, 1e-3))  # fade in and out
    return wav_bytes((signal / 4 * swell * 0.2 * 32767).astype(np.int16), RATE)


def wav_bytes(pcm: np.ndarray, rate: int) -> bytes:
    """A mono 16-bit WAV file of the given samples."""
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.astype("<i2").tobytes())
    return buf.getvalue()


def decoded_seconds(data: bytes, fmt: str | None = None,
                    stop_after: float = float("inf")) -> tuple[float, bool, float | None]:
    """Decode the first audio stream; returns (seconds decoded, whether the whole stream was decoded, the
    container's declared duration or None). Stops once `stop_after` seconds have been decoded."""
    with av.open(io.BytesIO(data), mode="r", format=fmt) as container:
        if not container.streams.audio:
            return 0.0, True, None
        stream = container.streams.audio[0]
        declared: float | None = None
        if stream.duration is not None and stream.time_base is not None:
            declared = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            declared = container.duration / av.time_base
        seconds = 0.0
        for frame in container.decode(stream):
            rate = frame.sample_rate or stream.rate
            if not rate:
                continue
            seconds += frame.samples / rate
            if seconds > stop_after:
                return seconds, False, declared
        return seconds, True, declared
