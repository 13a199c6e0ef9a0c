"""The preview's placeholder sound: a quiet seeded chord (media.audio.ambient_wav), NOT generated
from the prompt. Models served by the preview engine that promise sound get it unless their table
says `sound = "silent"` or names a real sound engine."""

from __future__ import annotations

from collections.abc import Sequence

from ...media.audio import ambient_wav
from ..base import Shot


class PlaceholderChord:
    name = "placeholder"

    def generate(self, prompt: str, seconds: float, seed: int, shots: Sequence[Shot] = ()) -> bytes:
        return ambient_wav(seconds, seed)
