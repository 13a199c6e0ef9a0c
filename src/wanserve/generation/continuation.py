"""wan2.7 `first_clip` continuation, for every engine: the output starts with the caller's clip
and an engine generates the rest of the duration from the clip's last frame.

The open checkpoints take no video input, so the clip conditions the continuation through its last
frame only (to the task's last frame, when one is given). Engines never see the clip.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image

from ..engines.base import Engine, Progress, RenderJob
from ..errors import Code, invalid_file
from ..media.clip import clip_frames
from ..media.frames import fit_image

CHECK_EVERY = 30  # clip frames between progress reports (each lets a cancel through)


@dataclass(frozen=True)
class Clip:
    data: bytes  # an mp4/mov already checked (media.clip.check_clip)
    seconds: float


def clip_frame_count(clip: Clip, job: RenderJob) -> int:
    """How many output frames the clip fills: its length at the output rate, leaving at least one
    frame to generate."""
    return max(1, min(job.frame_count - 1, round(clip.seconds * job.fps)))


def continue_clip(engine: Engine, job: RenderJob, clip: Clip, progress: Progress) -> Iterator[np.ndarray]:
    """`job.frame_count` frames: the clip fitted to the output size at `job.fps`, then the engine's
    render of the rest, which starts on the clip's last frame (so that frame is not shown twice)."""
    n_clip = clip_frame_count(clip, job)
    last = None
    for i, raw in enumerate(clip_frames(clip.data, job.fps, n_clip)):
        if i % CHECK_EVERY == 0:
            progress(0, job.frame_count)
        last = fit_image(raw, job.width, job.height)
        yield last
    if last is None:
        raise invalid_file(Code.FILE_FORMAT, "input.media first_clip: the video has no decodable frames.")
    offset = (n_clip - 1) / job.fps  # the rest starts on the clip's last frame: shots move back by that
    shots = tuple(replace(s, start=max(0.0, s.start - offset), end=s.end - offset)
                  for s in job.shots if s.end - offset > 0)
    rest = replace(job, kind="kf2v" if job.last_frame is not None else "i2v", shots=shots,
                   first_frame=Image.fromarray(last), frame_count=job.frame_count - n_clip + 1)
    frames = engine.render(rest, progress)
    next(frames)
    yield from frames
