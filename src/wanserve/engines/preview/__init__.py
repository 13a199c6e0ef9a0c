"""The deterministic CPU preview engine.

This engine is NOT a generative model and never claims to be one. It turns a request into a real,
watchable video with classic image processing, so the whole service (API, queue, worker, storage,
encoding) can run end to end on any machine, and so a client can see what its request asked for:

- i2v (first frame): a slow Ken Burns camera move over the image (zoom in or pull back, with a pan)
  (`camera`).
- kf2v, or i2v with first and last frame: an optical-flow morph from the first image to the last
  (`camera.flow_morph`, over `media.frames.FlowMorph`, which the wan engine also uses for frame
  interpolation).
- i2v with an effect `template`: a simple visible effect of its own per template name (`effects`).
- t2v: storyboard cards showing the prompt, one per shot of `job.shots`, over slowly moving colour
  gradients, each with the footer "wanserve preview — not AI generated" (`storyboard`, `text`).

Output is deterministic: the same job (inputs and seed) gives the same bytes of frames on the same
machine. Randomness comes only from `numpy.random.default_rng` seeded from `job.seed`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from ...media.frames import fit_image
from ..base import EngineConfigError, Progress, RenderJob
from .camera import flow_morph, ken_burns
from .common import FrameFn, ease
from .effects import DEFAULT_EFFECT, EFFECTS, template_plan
from .storyboard import storyboard
from .text import FOOTER_TEXT, wrap_text

__all__ = ["DEFAULT_EFFECT", "EFFECTS", "FOOTER_TEXT", "PreviewEngine", "ease", "load", "wrap_text"]

PROGRESS_EVERY = 5  # frames between progress() calls


class PreviewEngine:
    """Deterministic, non-AI preview renderer (see the module docstring)."""

    name = "preview"

    def render(self, job: RenderJob, progress: Progress) -> Iterator[np.ndarray]:
        """Yield exactly `job.frame_count` uint8 RGB frames of shape (job.height, job.width, 3).

        `progress(done, total)` is called with 0 once set-up is done, then every few frames and with
        (total, total) before the last frame is yielded; whatever it raises (TaskCanceled,
        LeaseLost) propagates and ends the generator.
        """
        total = job.frame_count
        check_job(job)
        make = plan(job)
        progress(0, total)
        for i in range(total):
            frame = make(i)
            if (i + 1) % PROGRESS_EVERY == 0 or i + 1 == total:
                progress(i + 1, total)
            yield frame


def check_job(job: RenderJob) -> None:
    if job.width <= 0 or job.height <= 0:
        raise ValueError(f"invalid output size {job.width}x{job.height}")
    if job.frame_count <= 0 or job.fps <= 0:
        raise ValueError(f"invalid frame_count={job.frame_count} / fps={job.fps}")
    if job.kind in ("i2v", "kf2v") and job.first_frame is None:
        raise ValueError(f"a {job.kind} job needs first_frame")
    if job.kind == "kf2v" and job.last_frame is None and not job.template:
        raise ValueError("a kf2v job needs last_frame")


def plan(job: RenderJob) -> FrameFn:
    """Do the per-job precomputation and return the function that makes frame i."""
    if job.kind == "t2v" or job.first_frame is None:
        return storyboard(job)
    first = fit_image(job.first_frame, job.width, job.height)
    if job.template:
        return template_plan(job, first)
    if job.last_frame is not None:
        last = fit_image(job.last_frame, job.width, job.height)
        return flow_morph(job, first, last)
    return ken_burns(job, first)


def load(tables: dict[str, dict[str, Any]]) -> dict[str, PreviewEngine]:
    """The registry's loader: one PreviewEngine for every model configured with it. The engine has no
    settings, so a table with any key besides `engine` is a mistake."""
    for name, table in tables.items():
        extra = sorted(set(table) - {"engine"})
        if extra:
            raise EngineConfigError(f"models.{name!r}: keys {extra} are not used by the preview engine.")
    engine = PreviewEngine()
    return {model: engine for model in tables}
