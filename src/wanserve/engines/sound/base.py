"""The sound engine slot: one small interface for whatever makes a generated soundtrack.

A video engine makes frames; a sound engine makes the track of models whose catalog row promises
generated sound (audio "auto", "auto_switch", "media") when the caller gives no audio of their own.
It knows nothing of tasks or encoding: it returns a WAV file exactly `seconds` long, which the
encoder resamples to AAC and fits to the video (media.video.encode_mp4).
"""

from __future__ import annotations

import io
import wave
from collections.abc import Sequence
from typing import Protocol

import numpy as np

from ..base import Shot

FADE_SECONDS = 0.01  # each generated segment fades in and out this long: no click where two meet


class SoundEngine(Protocol):
    name: str

    def generate(self, prompt: str, seconds: float, seed: int, shots: Sequence[Shot] = ()) -> bytes:
        """A WAV file of exactly `seconds` of sound for `prompt` (or, with two or more `shots`, for
        each shot's text over its time span), deterministic for a given `seed`."""
        ...


def fit_samples(samples: np.ndarray, total: int) -> np.ndarray:
    """(channels, n) float samples cut or padded with silence to (channels, total)."""
    if samples.shape[1] >= total:
        return samples[:, :total]
    return np.pad(samples, ((0, 0), (0, total - samples.shape[1])))


def fade_edges(samples: np.ndarray, rate: int) -> np.ndarray:
    n = min(int(FADE_SECONDS * rate), samples.shape[1] // 2)
    if n <= 0:
        return samples
    ramp = np.linspace(0.0, 1.0, n, dtype=np.float32)
    out = samples.astype(np.float32, copy=True)
    out[:, :n] *= ramp
    out[:, -n:] *= ramp[::-1]
    return out


def wav_bytes(samples: np.ndarray, rate: int) -> bytes:
    """A 16-bit WAV file of (channels, n) float samples in [-1, 1]."""
    pcm = (np.clip(samples, -1.0, 1.0) * 32767).round().astype("<i2")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(pcm.shape[0])
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.T.tobytes())  # interleaved
    return buf.getvalue()


def segments(prompt: str, seconds: float, shots: Sequence[Shot]) -> list[tuple[str, float]]:
    """What to generate, in order: (text, seconds). One segment of the whole prompt, or with two or
    more shots one per shot (its text, its span), the last one running to `seconds`."""
    if len(shots) < 2:
        return [(prompt, seconds)]
    out = []
    for k, shot in enumerate(shots):
        end = seconds if k == len(shots) - 1 else min(shot.end, seconds)
        span = end - max(shot.start, 0.0)
        if span > 0:
            out.append((shot.text or prompt, span))
    return out or [(prompt, seconds)]
