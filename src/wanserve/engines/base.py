"""The one small interface every engine implements.

An engine turns a `RenderJob` (already normalised, inputs already fetched, decoded and checked)
into exactly `job.frame_count` RGB frames of `job.width` x `job.height`, at `job.fps`. It knows
nothing of HTTP, tasks or encoding: the worker encodes the frames (with watermark and audio) and
records progress. Engines call `progress(done, total)` as they work; that call may raise
`TaskCanceled`, `LeaseLost` or `ShuttingDown`, which the engine must let propagate.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np
from PIL import Image

Progress = Callable[[int, int], None]
TaskKind = Literal["t2v", "i2v", "kf2v"]


@dataclass(frozen=True)
class Shot:
    """One shot of the plan: its number as the prompt wrote it, its time span, and its text."""

    number: int
    start: float  # seconds
    end: float
    text: str


@dataclass(frozen=True)
class RenderJob:
    kind: TaskKind
    model: str
    width: int
    height: int
    frame_count: int
    fps: int = 30
    seed: int = 0
    prompt: str = ""
    negative_prompt: str = ""
    template: str | None = None
    shot_type: str = "single"
    shots: tuple[Shot, ...] = ()  # the pipeline's shot plan (generation.shots); empty: one shot of the prompt
    context: str = ""  # the prompt's text before its first shot marker (subject, setting, style)
    first_frame: Image.Image | None = None  # RGB, any size; the engine fits it to width x height
    last_frame: Image.Image | None = None
    audio: bytes | None = None  # the caller's audio file (audio_url, driving_audio), for audio-driven engines
    extra: dict = field(default_factory=dict)


class EngineConfigError(ValueError):
    """A [models."..."] table or its checkpoint cannot be used: raised at start (EngineSet, an
    engine's loader), never at a task."""


class Engine(Protocol):
    name: str

    def render(self, job: RenderJob, progress: Progress) -> Iterator[np.ndarray]:
        """Yield `job.frame_count` uint8 arrays of shape (height, width, 3)."""
        ...
