"""Step 2 of a task: the plan every engine renders from (size, frame count, kind, shots)."""

from __future__ import annotations

from ..catalog.models import image_output_size, parse_size
from ..engines.base import RenderJob, TaskKind
from .inputs import Inputs
from .request import GenerationRequest
from .rewrite.base import Rewrite
from .shots import has_shot_markers, parse_shots, shot_context, timed_shots

FPS = 30  # every output is 30 fps, as the hosted service's are


def output_size(req: GenerationRequest, inputs: Inputs) -> tuple[int, int]:
    """t2v: the requested size. Image-driven: the first frame's (or, for a continuation, the clip's)
    aspect ratio at the resolution tier's pixel count."""
    if req.size is not None:
        return parse_size(req.size)
    if inputs.clip is not None:
        return image_output_size(inputs.clip_width, inputs.clip_height, req.resolution)
    assert inputs.first_frame is not None  # the normaliser requires a first frame or a clip
    return image_output_size(inputs.first_frame.width, inputs.first_frame.height, req.resolution)


def job_kind(req: GenerationRequest, inputs: Inputs) -> TaskKind:
    """What the engine generates: from text, from a first frame, or between a first and a last frame."""
    if req.kind == "t2v":
        return "t2v"
    return "kf2v" if inputs.last_frame is not None else "i2v"


def plan(req: GenerationRequest, inputs: Inputs, rewrite: Rewrite | None = None) -> RenderJob:
    """The job; with a rewrite (step 1b) the engine gets the rewritten prompt, and for shot_type "multi"
    the rewriter's shot list, unless the caller's prompt writes its own shots (its markers win)."""
    width, height = output_size(req, inputs)
    prompt = rewrite.prompt if rewrite is not None else req.prompt
    own_shots = has_shot_markers(req.prompt)
    source = req.prompt if own_shots else prompt  # the text the shots come from
    if rewrite is not None and rewrite.shots and req.shot_type == "multi" and not own_shots:
        shots = timed_shots(rewrite.shots, req.duration)
    else:
        shots = parse_shots(source, req.duration, req.shot_type)
    return RenderJob(
        kind=job_kind(req, inputs), model=req.model, width=width, height=height,
        frame_count=req.duration * FPS, fps=FPS, seed=req.seed, prompt=prompt,
        negative_prompt=req.negative_prompt, template=req.template,
        shot_type=req.shot_type, shots=tuple(shots),
        context=shot_context(source),
        first_frame=inputs.first_frame, last_frame=inputs.last_frame, audio=inputs.audio)
