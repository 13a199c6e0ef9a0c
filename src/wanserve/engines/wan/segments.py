"""Multi-shot prompts and long videos on checkpoints trained for about 5 s: the task's output frames
laid out into shots (hard cuts at the planned frames) and each shot into segments no longer than a
checkpoint's native length (each later segment continues from the last frame of the one before).
Pure arithmetic; the engine (`engine.py`) runs the generations."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

from ..base import RenderJob, Shot

SEGMENT_SEED_STRIDE = 1000  # segment j of shot k is generated with seed + k + 1000 j
MAX_SEGMENTS = 64  # per shot; far beyond 15 s at any native frame rate


@dataclass(frozen=True)
class ShotSpan:
    """One shot of the plan on the output timeline: output frames [start, start + count)."""

    index: int  # 0-based, in the plan's order
    shot: Shot
    start: int
    count: int


def shot_spans(job: RenderJob) -> list[ShotSpan]:
    """The job's shots as output frame ranges: shot k starts at frame round(start x fps) and runs to
    the next shot's first frame (the last one to job.frame_count). Shots left without a frame by the
    rounding are dropped. No plan: one shot of the whole prompt."""
    shots = job.shots or (Shot(1, 0.0, job.frame_count / job.fps, job.prompt),)
    starts: list[int] = []
    for k, shot in enumerate(shots):
        start = 0 if k == 0 else min(job.frame_count, max(0, round(shot.start * job.fps)))
        starts.append(max(start, starts[-1]) if starts else start)
    ends = [*starts[1:], job.frame_count]
    spans = zip(shots, starts, ends, strict=True)
    return [ShotSpan(k, shot, a, b - a) for k, (shot, a, b) in enumerate(spans) if b > a]


def shot_prompt(job: RenderJob, span: ShotSpan, multi: bool) -> str:
    """A one-shot task keeps its prompt as written. Otherwise the shot's own text, after the prompt's
    shared context (the text before the first marker: subject, setting, style) unless the shot's text
    already starts with it (the shot planner puts it in front of the first shot)."""
    if not multi:
        return job.prompt
    text, context = span.shot.text, job.context.strip()
    if not context or text.startswith(context):
        return text
    cjk = r"[\u3000-\u9fff\uff00-\uffef]"
    if re.search(cjk + "$", context) or re.match(cjk, text):
        return context + text
    return f"{context} {text}"


def segment_positions(count: int, parts: int, native_counts: list[int]) -> list[np.ndarray]:
    """The `count` output frames of a shot spread over `parts` segments of equal duration: for each
    segment, the native positions (0 .. native_counts[j] - 1) of the output frames that fall in it.
    Output frame i sits at u = i / (count - 1) of the shot (first and last frames line up with the
    first and last native frames); segment j covers u in [j / parts, (j + 1) / parts), the last one
    including 1. A segment's first native frame is the previous segment's last."""
    out: list[list[float]] = [[] for _ in range(parts)]
    for i in range(count):
        x = i * parts / (count - 1) if count > 1 else 0.0
        j = min(parts - 1, math.floor(x + 1e-9))
        out[j].append(max(0.0, x - j) * (native_counts[j] - 1))
    return [np.array(p, dtype=float) for p in out]
