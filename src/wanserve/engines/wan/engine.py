"""The engine: a RenderJob -> its generations (`WanEngine.segments`: one or more per shot, none
longer than the checkpoint's native length, later ones continued from the previous one's last
frame) -> pipeline arguments (`WanEngine.plan`), the denoising under the checkpoint's lock, the
decode, out-of-memory as a task failure, and the frames fitted and retimed to the contract.
`load_wan_engines` builds one engine per configured public model."""

from __future__ import annotations

import contextlib
import gc
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from PIL import Image

from ...catalog.models import find_model
from ...errors import invalid_parameter, out_of_memory
from ...media.frames import fit_image
from ..base import EngineConfigError, Progress, RenderJob
from .checkpoint import LoadedCheckpoint, load_checkpoint, memory_report, required_kinds
from .config import TemplateConfig, WanModelConfig
from .parallel import is_follower
from .retime import frames_at, generation_size, native_frame_count
from .segments import (
    MAX_SEGMENTS,
    SEGMENT_SEED_STRIDE,
    ShotSpan,
    segment_positions,
    shot_prompt,
    shot_spans,
)
from .speed import GuidanceBatch

log = logging.getLogger("wanserve.engines.wan")

# The default negative prompt of the Wan repositories (Wan2.1 / Wan2.2 `sample_neg_prompt`).
WAN_DEFAULT_NEGATIVE_PROMPT = (
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，JPEG压缩残留，"
    "丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，手指融合，静止不动的画面，"
    "杂乱的背景，三条腿，背景人很多，倒着走"
)

MAX_SEQUENCE_LENGTH = 512  # the text length Wan was trained with; the image cross-attention assumes it


def load_wan_engines(tables: dict[str, dict[str, Any]]) -> dict[str, WanEngine]:
    """Build a WanEngine per configured public model (canonical name -> engine), loading each distinct
    checkpoint once. Raises EngineConfigError for any problem, naming the model and the path."""
    configs = [WanModelConfig.parse(name, table) for name, table in tables.items()]
    groups: dict[tuple, list[WanModelConfig]] = {}
    for cfg in configs:
        groups.setdefault(cfg.load_key(), []).append(cfg)
    engines: dict[str, WanEngine] = {}
    for group in groups.values():
        templates = [(cfg.model, t) for cfg in group for t in cfg.templates.values()]
        loaded = load_checkpoint(group[0], templates)
        for cfg in group:
            engines[cfg.model] = WanEngine(cfg, loaded)
    for cfg in configs:
        if cfg.continue_with is not None:
            engines[cfg.model].continuation = _continuation(cfg, engines)
    return engines


def _continuation(cfg: WanModelConfig, engines: dict[str, WanEngine]) -> WanEngine:
    """The engine that continues `cfg.model`'s long shots: a configured wan model whose checkpoint
    generates from a first frame."""
    where = f"[models.{cfg.model!r}]: continue_with = {cfg.continue_with!r}"
    target = engines.get(cfg.continue_with or "")
    if target is None:
        raise EngineConfigError(f"{where}: model {cfg.continue_with!r} is not configured with "
                                f"engine = \"wan\"; add a [models.{cfg.continue_with!r}] table with an "
                                f"image-to-video checkpoint to continue {cfg.model!r}'s long shots.")
    if "i2v" not in target.loaded.capabilities.kinds:
        raise EngineConfigError(f"{where}: model {target.cfg.model!r} is served by "
                                f"{str(target.cfg.checkpoint)!r}, a {target.loaded.capabilities.description} "
                                f"checkpoint, which cannot generate from a first frame; model "
                                f"{cfg.model!r} needs an image-to-video checkpoint there to continue its "
                                "long shots.")
    return target


@dataclass
class RenderPlan:
    """Everything one task passes to the pipeline, decided before the pipeline is touched."""

    family: str  # "t2v" (WanPipeline) or "i2v" (WanImageToVideoPipeline)
    width: int  # generation size (the grid nearest the contract size)
    height: int
    num_frames: int  # native frames, 4k+1
    native_fps: float
    steps: int
    prompt: str
    negative_prompt: str
    seed: int
    template: TemplateConfig | None = None
    adapter: str | None = None
    image: Image.Image | None = None
    last_image: Image.Image | None = None

    @property
    def total(self) -> int:
        """Progress units: one per denoising step, one for the decode, one for the frame-rate conversion."""
        return self.steps + 2


@dataclass
class Segment:
    """One generation of a task: segment `part` of `parts` of a shot, by `engine` (this model's, or
    its `continue_with` model's for a later segment), `native_frames` long (at most the engine's
    max_native_frames); `positions` are the native positions of the output frames it supplies."""

    span: ShotSpan
    part: int
    parts: int
    engine: WanEngine
    kind: str  # "t2v", "i2v" (from the first frame / the previous segment's last) or "kf2v"
    native_frames: int
    prompt: str
    seed: int
    positions: Any = None  # np.ndarray

    @property
    def units(self) -> int:
        """Progress units: the denoising steps and the decode."""
        return self.engine.cfg.num_inference_steps + 1


class WanEngine:
    """Serves one public model from a LoadedCheckpoint (possibly shared with other models)."""

    name = "wan"

    def __init__(self, cfg: WanModelConfig, loaded: LoadedCheckpoint) -> None:
        spec = find_model(cfg.model)
        assert spec is not None
        need = required_kinds(spec, cfg)
        missing = need - loaded.capabilities.kinds
        if missing:
            raise EngineConfigError(
                f"model {cfg.model!r} ({spec.kind}) cannot be served by checkpoint {str(cfg.checkpoint)!r}: "
                f"it is a {loaded.capabilities.description} checkpoint ({loaded.index['_class_name']}) and "
                f"cannot do {', '.join(sorted(missing))} tasks. Configure a checkpoint of the right kind for "
                "this model.")
        if cfg.guidance_scale_2 is not None and not loaded.index.get("boundary_ratio"):
            raise EngineConfigError(f"[models.{cfg.model!r}]: guidance_scale_2 needs a two-expert "
                                    f"checkpoint (boundary_ratio in model_index.json); "
                                    f"{str(cfg.checkpoint)!r} has none.")
        if cfg.flow_shift is not None:
            _check_flow_shift(cfg, loaded)
        self.cfg, self.spec, self.loaded = cfg, spec, loaded
        self.native_fps = cfg.native_fps or loaded.default_native_fps
        self.adapters = {name: loaded.load_template(cfg.model, t) for name, t in cfg.templates.items()}
        self.max_native_frames = cfg.max_native_frames or (121 if loaded.ti2v else 81)
        self.continuation: WanEngine | None = None  # continue_with's engine (set by load_wan_engines)
        self.last_timings: dict[str, float] = {}

    # -- request -> pipeline arguments -----------------------------------------------------------

    def plan(self, job: RenderJob) -> RenderPlan:
        kinds = self.loaded.capabilities.kinds
        if job.kind not in kinds:
            raise invalid_parameter(f"{self.cfg.model} is served by a {self.loaded.capabilities.description} "
                                    f"checkpoint, which cannot do this {job.kind} task.")
        if job.kind in ("i2v", "kf2v") and job.first_frame is None:
            raise invalid_parameter(f"a {job.kind} task needs a first frame.")
        if job.kind == "kf2v" and job.last_frame is None:
            raise invalid_parameter("a first-and-last-frame task needs a last frame.")
        template = None
        if job.template:
            template = self.cfg.templates.get(job.template)
            if template is None:
                configured = ", ".join(self.cfg.templates) or "none"
                raise invalid_parameter(f"input.template: template {job.template!r} is not set up on this "
                                        f"server for {self.cfg.model} (configured: {configured}).")
        width, height = generation_size(job.width, job.height, self.loaded.size_multiple)
        seconds = job.frame_count / job.fps
        image = last = None
        if job.first_frame is not None and job.kind != "t2v":
            image = Image.fromarray(fit_image(job.first_frame, width, height))
        if job.last_frame is not None and job.kind == "kf2v":
            last = Image.fromarray(fit_image(job.last_frame, width, height))
        return RenderPlan(
            family="t2v" if job.kind == "t2v" else "i2v",
            width=width, height=height,
            num_frames=native_frame_count(seconds, self.native_fps, self.loaded.temporal_scale),
            native_fps=self.native_fps, steps=self.cfg.num_inference_steps,
            prompt=template.prompt if template else job.prompt,
            negative_prompt=job.negative_prompt or WAN_DEFAULT_NEGATIVE_PROMPT,
            seed=int(job.seed), template=template,
            adapter=self.adapters.get(job.template) if template else None,
            image=image, last_image=last)

    def pipeline_kwargs(self, plan: RenderPlan, device: torch.device) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "prompt": plan.prompt, "negative_prompt": plan.negative_prompt,
            "height": plan.height, "width": plan.width,
            "num_frames": plan.num_frames, "num_inference_steps": plan.steps,
            "generator": torch.Generator(device=device).manual_seed(plan.seed),
            "max_sequence_length": MAX_SEQUENCE_LENGTH, "output_type": "latent",
        }
        if self.cfg.guidance_scale is not None:
            kwargs["guidance_scale"] = self.cfg.guidance_scale
        if self.cfg.guidance_scale_2 is not None:
            kwargs["guidance_scale_2"] = self.cfg.guidance_scale_2
        if plan.family == "i2v":
            kwargs["image"] = plan.image
            if plan.last_image is not None:
                kwargs["last_image"] = plan.last_image
        return kwargs

    # -- the task ---------------------------------------------------------------------------------

    def segments(self, job: RenderJob) -> list[Segment]:
        """The generations of a task: one or more per shot of its plan, none longer than its engine's
        native length; the cost grows linearly with the duration."""
        spans = shot_spans(job)
        multi = len(spans) > 1
        segments: list[Segment] = []
        for span in spans:
            end_kf2v = job.kind == "kf2v" and span is spans[-1]
            layout = self._layout(span.count / job.fps, "t2v" if job.kind == "t2v" else "i2v", end_kf2v, job)
            prompt = shot_prompt(job, span, multi)
            positions = segment_positions(span.count, len(layout), [n for _, _, n in layout])
            for part, ((engine, kind, native), pos) in enumerate(zip(layout, positions, strict=True)):
                segments.append(Segment(span, part, len(layout), engine, kind, native, prompt,
                                        int(job.seed) + span.index + SEGMENT_SEED_STRIDE * part, pos))
        return segments

    def _layout(self, seconds: float, first_kind: str, end_kf2v: bool,
                job: RenderJob) -> list[tuple[WanEngine, str, int]]:
        """(engine, kind, native frames) per segment of a shot `seconds` long: the fewest segments of
        equal duration that each fit their engine's max_native_frames. A later segment is an i2v
        generation from the previous one's last frame, by this checkpoint if it can, else by the
        continue_with model's."""
        for parts in range(1, MAX_SEGMENTS + 1):
            layout: list[tuple[WanEngine, str, int]] = []
            for part in range(parts):
                kind = "kf2v" if end_kf2v and part == parts - 1 else first_kind if part == 0 else "i2v"
                engine: WanEngine | None = self if kind in self.loaded.capabilities.kinds else None
                if engine is None and part > 0 and self.continuation is not None \
                        and kind in self.continuation.loaded.capabilities.kinds:
                    engine = self.continuation
                if engine is None:
                    break
                native = native_frame_count(seconds / parts, engine.native_fps, engine.loaded.temporal_scale)
                if native > engine.max_native_frames:
                    break
                layout.append((engine, kind, native))
            if len(layout) == parts:
                return layout
            if parts > 1 and len(layout) < parts and engine is None:  # nothing can continue this shot
                break
        # No checkpoint to continue from a frame: one generation at most max_native_frames long (a lower
        # frame rate, which the frame-rate conversion fills).
        kind = first_kind if first_kind in self.loaded.capabilities.kinds else job.kind
        native = min(native_frame_count(seconds, self.native_fps, self.loaded.temporal_scale),
                     self.max_native_frames)
        log.warning("wan: %s: a %.1f s shot is longer than %d native frames and no image-to-video checkpoint "
                    "can continue it (set continue_with); generating %d frames at a lower frame rate",
                    self.cfg.model, seconds, self.max_native_frames, native)
        return [(self, kind, native)]

    def render(self, job: RenderJob, progress: Progress) -> Iterator[np.ndarray]:
        self.plan(job)  # the task's own checks (kind, frames, template) before anything is generated
        segments = self.segments(job)
        total = sum(seg.units for seg in segments) + 1  # + the last frame-rate conversion
        done = 0
        progress(0, total)
        timings: dict[str, float] = {"denoise_s": 0.0, "decode_s": 0.0, "interpolate_s": 0.0,
                                     "segments": float(len(segments)), "seam_mad": 0.0}
        previous: np.ndarray | None = None  # the previous segment's last native frame, generation size
        previous_fitted: np.ndarray | None = None
        emitted = 0
        for k, seg in enumerate(segments, 1):
            plan = self.segment_plan(job, seg, previous)
            log.info("wan: call %d/%d: %s %s, %d native frames, prompt '%s'", k, len(segments),
                     seg.engine.cfg.model, seg.kind, seg.native_frames, seg.prompt[:80])
            native = seg.engine.generate(plan, progress, offset=done, total=total)
            for key in ("denoise_s", "decode_s"):
                timings[key] += seg.engine.last_timings.get(key, 0.0)
            done += seg.units
            progress(done, total)
            started = time.monotonic()
            fitted = [fit_image(f, job.width, job.height) for f in native]
            if seg.part > 0 and previous_fitted is not None:
                # The seam: this segment was generated from the previous one's last frame, which its
                # first frame reproduces; show that frame once, exactly as it was shown.
                mad = float(np.abs(fitted[0].astype(np.int16) - previous_fitted.astype(np.int16)).mean())
                timings["seam_mad"] = max(timings["seam_mad"], mad)
                fitted[0] = previous_fitted
            previous, previous_fitted = native[-1], fitted[-1]
            del native
            for frame in frames_at(fitted, seg.positions, tick=lambda d=done: progress(d, total)):
                emitted += 1
                if emitted == job.frame_count:
                    timings["interpolate_s"] += time.monotonic() - started
                    self.last_timings = timings
                    progress(total, total)
                yield frame
            timings["interpolate_s"] += time.monotonic() - started

    def segment_plan(self, job: RenderJob, seg: Segment, previous: np.ndarray | None) -> RenderPlan:
        """The pipeline arguments of one segment: the shot's prompt and seed; the task's first frame
        (a shot's first segment of an image task) or the previous segment's last frame."""
        own = seg.engine is self
        first = job.first_frame
        if seg.part > 0 and previous is not None:
            first = Image.fromarray(previous)
        sub = replace(job, kind=seg.kind, prompt=seg.prompt, seed=seg.seed, shots=(),
                      template=job.template if own else None,
                      first_frame=first if seg.kind != "t2v" else None,
                      last_frame=job.last_frame if seg.kind == "kf2v" else None)
        return replace(seg.engine.plan(sub), num_frames=seg.native_frames)

    def generate(self, plan: RenderPlan, progress: Progress, offset: int = 0,
                 total: int | None = None) -> list[np.ndarray]:
        """Denoise and decode under the checkpoint's lock: `plan.num_frames` uint8 RGB frames at the
        generation size. progress(offset + i, total) after each step; what it raises propagates at once."""
        loaded, total = self.loaded, plan.total if total is None else total
        step_times: list[float] = []

        def on_step_end(pipe: Any, i: int, t: Any, tensors: dict[str, Any]) -> dict[str, Any]:
            step_times.append(time.monotonic())
            progress(offset + i + 1, total)
            return {}

        oom = False
        with loaded.acquire(lambda: progress(offset, total)):
            pipe = loaded.pipelines[plan.family]
            started = time.monotonic()
            try:
                loaded.use_adapter(plan.adapter, plan.template.scale if plan.template else 1.0)
                self._apply_flow_shift(pipe)
                kwargs = self.pipeline_kwargs(plan, pipe._execution_device)
                with self._guidance_batch(pipe, kwargs):
                    latents = pipe(**kwargs, callback_on_step_end=on_step_end).frames
                denoised = time.monotonic()
                # another rank of a multi-GPU worker: rank 0 decodes and encodes; these frames are dropped
                frames = blank_frames(plan) if loaded.parallel != "none" and is_follower() else \
                    self._decode(pipe, latents)
                del latents
            except _oom_types():
                oom = True
            except RuntimeError as exc:
                if not _is_oom_message(exc):
                    raise
                oom = True
            finally:
                pipe.maybe_free_model_hooks()  # resets cache hooks / offload state even after a cancel
        if oom:  # outside the except block: the exception (and the tensors its frames hold) is gone
            free_memory(loaded.device)
            raise out_of_memory("GPU memory" if loaded.device.type == "cuda" else "memory",
                                f"generating {plan.width}x{plan.height}, {plan.num_frames} frames with "
                                f"{self.cfg.model}")
        steps = len(step_times)
        self.last_timings = {"denoise_s": denoised - started, "decode_s": time.monotonic() - denoised,
                             "step_s": (step_times[-1] - step_times[0]) / (steps - 1) if steps > 1 else
                             denoised - started}
        log.info("wan: %s %s %dx%d, %d frames: %d steps in %.1f s (%.2f s/step), decode %.1f s; %s",
                 self.cfg.model, plan.family, plan.width, plan.height, plan.num_frames, steps,
                 self.last_timings["denoise_s"], self.last_timings["step_s"], self.last_timings["decode_s"],
                 memory_report(loaded.device))
        return frames

    def _guidance_batch(self, pipe: Any, kwargs: dict[str, Any]) -> Any:
        """cfg_batch: for this call, GuidanceBatch takes the embeddings the pipeline's encode_prompt returns
        and runs the pipeline's prompt and negative-prompt forwards of each step as one batch of two.
        Guidance scale <= 1: the pipeline makes no negative-prompt forward at all."""
        scale = kwargs.get("guidance_scale", 5.0)  # 5.0: the Wan pipelines' default
        if scale <= 1 or not self.cfg.guidance_batching():
            return contextlib.nullcontext()
        transformers = [t for t in (pipe.transformer, pipe.transformer_2) if t is not None]
        return GuidanceBatch(transformers, pipe=pipe)

    def _decode(self, pipe: Any, latents: torch.Tensor) -> list[np.ndarray]:
        """vae_tiling: true always tiles, false never; "auto" (None) decodes whole and tiles only when that
        runs out of memory."""
        if self.cfg.vae_tiling is not None:
            return decode_latents(pipe, latents, tiled=self.cfg.vae_tiling)
        try:
            return decode_latents(pipe, latents)
        except _oom_types():
            pass
        except RuntimeError as exc:
            if not _is_oom_message(exc):
                raise
        free_memory(self.loaded.device)  # outside the except block: the failed decode's tensors are gone
        log.warning("wan: %s: the whole VAE decode ran out of memory; decoding in tiles", self.cfg.model)
        return decode_latents(pipe, latents, tiled=True)

    def _apply_flow_shift(self, pipe: Any) -> None:
        """Per-model flow shift on the shared scheduler (set each task: models may share a checkpoint)."""
        shift = self.cfg.flow_shift
        sched = pipe.scheduler
        key = "flow_shift" if "flow_shift" in sched.config else "shift"
        if key not in sched.config:  # a scheduler without a flow shift (checked at start if one is set)
            return
        if shift is None:
            shift = self.loaded.components["scheduler"].config[key]
        if sched.config[key] != shift:
            sched = type(sched).from_config(sched.config, **{key: shift})
            for p in self.loaded.pipelines.values():
                p.scheduler = sched


def _check_flow_shift(cfg: WanModelConfig, loaded: LoadedCheckpoint) -> None:
    config = loaded.components["scheduler"].config
    if "flow_shift" not in config and "shift" not in config:
        raise EngineConfigError(f"[models.{cfg.model!r}]: flow_shift is set but the checkpoint's scheduler "
                                f"({type(loaded.components['scheduler']).__name__}) has no flow shift.")


def decode_latents(pipe: Any, latents: torch.Tensor, tiled: bool = False) -> list[np.ndarray]:
    """The pipeline's own decode (un-normalise with the VAE's latents mean/std, VAE decode; in spatial tiles
    if `tiled`), then straight to uint8 frames on the device, without a float copy of the video in host
    memory."""
    vae = pipe.vae
    if tiled and not vae.use_tiling:
        vae.enable_tiling()
        try:
            return decode_latents(pipe, latents)
        finally:
            vae.disable_tiling()
    z = vae.config.z_dim
    latents = latents.to(pipe._execution_device, vae.dtype)
    mean = torch.tensor(vae.config.latents_mean).view(1, z, 1, 1, 1).to(latents)
    std = torch.tensor(vae.config.latents_std).view(1, z, 1, 1, 1).to(latents)
    with torch.no_grad():
        video = vae.decode(latents * std + mean, return_dict=False)[0]  # (1, 3, F, H, W) in [-1, 1]
        frames = ((video[0].float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    array = frames.permute(1, 2, 3, 0).contiguous().cpu().numpy()  # (F, H, W, 3)
    return list(array)


def blank_frames(plan: RenderPlan) -> list[np.ndarray]:
    """What a follower rank yields instead of decoding: as many frames as the decode gives (the plan's
    native frames), all black: rank 0 alone decodes, so only its GPU holds the decoder's activations."""
    return [np.zeros((plan.height, plan.width, 3), np.uint8)] * plan.num_frames


def _oom_types() -> tuple[type[BaseException], ...]:
    types: list[type[BaseException]] = [MemoryError]
    for owner in (torch, torch.cuda):
        oom = getattr(owner, "OutOfMemoryError", None)
        if isinstance(oom, type) and oom not in types:
            types.append(oom)
    return tuple(types)


def _is_oom_message(exc: BaseException) -> bool:
    text = str(exc).lower()
    return "out of memory" in text or "can't allocate memory" in text or "cannot allocate memory" in text


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
