"""One task, start to finish, as numbered steps (in the manner of a diffusers pipeline's `__call__`).

The worker hands a claimed task's request here and records what comes back; the pipeline knows
nothing of leases, HTTP or billing. It returns neutral facts (sizes, seconds, engine, prompt used)
from which an API flavour derives its own view (DashScope's `usage`, for one).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any, Protocol

import numpy as np

from ..catalog.models import find_model
from ..engines import EngineSet
from ..engines.base import Engine, RenderJob
from ..engines.sound import SoundEngine
from ..media.video import encode_mp4
from ..storage.base import RESULT_ATTEMPT, Storage
from ..storage.uploads import UploadStore
from .continuation import continue_clip
from .inputs import Inputs, fetch_inputs
from .plan import job_kind, plan
from .request import GenerationRequest
from .rewrite import Rewrite, RewriteError, Rewriter
from .shots import has_shot_markers

log = logging.getLogger(__name__)


class TaskContext(Protocol):
    """What the pipeline may ask of whoever runs it: both calls may raise TaskCanceled, LeaseLost or
    ShuttingDown."""

    def check(self) -> None: ...

    def progress(self, done: int, total: int) -> None: ...


class GenerationPipeline:
    def __init__(self, engines: EngineSet, storage: Storage, uploads: UploadStore, *,
                 allow_private_urls: bool = False, rewriter: Rewriter | None = None) -> None:
        self.engines, self.storage, self.uploads = engines, storage, uploads
        self.allow_private_urls = allow_private_urls
        self.rewriter = rewriter  # prompt_extend's rewriter; None: prompts pass through unchanged

    def __call__(self, task_id: str, account_id: str, req: GenerationRequest, ctx: TaskContext, *,
                 attempt: int) -> dict[str, Any]:
        """Run attempt `attempt` of the task; its result file is stored under that attempt, and the facts
        returned name it (storage.base.published_attempt) for succeed() to publish."""
        spec = find_model(req.model)
        assert spec is not None, req.model  # the normaliser stored a canonical catalog name
        # 1. fetch and check the inputs (oss:// keys resolve to the task's own account's uploads)
        inputs = fetch_inputs(req, spec, resolver=self.uploads.resolver(account_id),
                              allow_private=self.allow_private_urls, check=ctx.check)
        # 1b. rewrite the prompt (prompt_extend); a failing rewriter leaves the caller's prompt
        rewrite, extend = self.extend_prompt(req, inputs, ctx)
        # 2. plan: output size, frame count, job kind, shots
        job = plan(req, inputs, rewrite)
        # 3. render (lazily: frames stream into the encoder)
        engine = self.engines.for_model(req.model)
        share = getattr(ctx, "share", None)
        if share is not None:  # rank 0 of a multi-GPU worker: the other ranks render this job in step
            share(req.model, job, inputs.clip)
        frames = self.render(engine, job, inputs, ctx)
        # 4. sound
        audio = soundtrack(req, inputs, job, self.engines.sound_for_model(req.model))
        # 5. encode, then 6. store the result
        with self.storage.temp_result(task_id) as tmp:
            encode_mp4(frames, tmp, width=job.width, height=job.height, fps=job.fps,
                       frame_count=job.frame_count, audio=audio, watermark=req.watermark)
            ctx.check()
            self.storage.put_result(task_id, attempt, tmp)
        return {RESULT_ATTEMPT: attempt, "width": job.width, "height": job.height, "fps": job.fps,
                "frame_count": job.frame_count, "duration": req.duration,
                "input_video_seconds": inputs.clip.seconds if inputs.clip else 0.0, "engine": engine.name,
                "prompt": job.prompt, "prompt_extend": extend}

    def extend_prompt(self, req: GenerationRequest, inputs: Inputs,
                      ctx: TaskContext) -> tuple[Rewrite | None, dict[str, Any]]:
        """The rewrite of the request's prompt, if asked for and possible, and the facts about it:
        {"used": true, "backend", "seconds"} or {"used": false, "reason"}. It never fails the task."""
        if not req.prompt_extend:
            return None, {"used": False, "reason": "not requested"}
        if self.rewriter is None:
            return None, {"used": False, "reason": "no rewriter configured"}
        if has_shot_markers(req.prompt):
            return None, {"used": False, "reason": "the prompt writes its own shots"}
        ctx.progress(0, 1)
        started = time.monotonic()
        try:
            rewrite = self.rewriter.rewrite(job_kind(req, inputs), req.prompt, req.duration, req.shot_type,
                                            image=inputs.first_frame)
        except Exception as exc:  # noqa: BLE001 - a rewriter never fails the task
            reason = str(exc) if isinstance(exc, RewriteError) else \
                f"the rewriter failed ({type(exc).__name__})"
            log.warning("prompt_extend: %s; using the prompt as given", reason)
            ctx.check()
            return None, {"used": False, "reason": reason}
        ctx.progress(1, 1)
        return rewrite, {"used": True, "backend": self.rewriter.name,
                         "seconds": round(time.monotonic() - started, 3),
                         "shots": len(rewrite.shots) if rewrite.shots else 0}

    @staticmethod
    def render(engine: Engine, job: RenderJob, inputs: Inputs, ctx: TaskContext) -> Iterator[np.ndarray]:
        if inputs.clip is not None:
            return continue_clip(engine, job, inputs.clip, ctx.progress)
        return engine.render(job, ctx.progress)

    def follow(self, model: str, job: RenderJob, clip: Any, ctx: TaskContext) -> None:
        """Another rank of a multi-GPU worker (worker.distributed): render the job rank 0 planned and
        shared, in step with it (each progress report is a collective there); the frames are dropped,
        as rank 0 encodes and stores the result."""
        engine = self.engines.for_model(model)
        frames = continue_clip(engine, job, clip, ctx.progress) if clip is not None else \
            engine.render(job, ctx.progress)
        for _ in frames:
            pass

    def discard(self, task_id: str, attempt: int) -> None:
        """Remove attempt `attempt`'s stored result, which nobody will read (its task was canceled or taken
        over as it finished); another attempt's file, perhaps the published result, stays."""
        self.storage.remove_attempt(task_id, attempt)


def soundtrack(req: GenerationRequest, inputs: Inputs, job: RenderJob,
               sound: SoundEngine | None) -> bytes | None:
    """The caller's audio, a generated track, or none. A generated track comes from the model's sound
    engine (EngineSet.sound_for_model: a configured one such as stable_audio, prompted with the prompt
    used and the job's shots; the placeholder chord for preview-served models), or is none where the
    model is configured `sound = "silent"`."""
    if req.sound == "input":
        return inputs.audio
    if req.sound == "generate" and sound is not None:
        return sound.generate(job.prompt, job.frame_count / job.fps, job.seed, job.shots)
    return None
