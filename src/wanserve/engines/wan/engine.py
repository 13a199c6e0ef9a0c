"""The engine: a RenderJob -> pipeline arguments (`WanEngine.plan`), the denoising under the
checkpoint's lock, the decode, out-of-memory as a task failure, and the frames fitted and retimed
to the contract. `load_wan_engines` builds one engine per configured public model."""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
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
from .retime import convert_frame_rate, generation_size, native_frame_count

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
    return engines


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

    def render(self, job: RenderJob, progress: Progress) -> Iterator[np.ndarray]:
        plan = self.plan(job)
        total = plan.total
        progress(0, total)
        native = self.generate(plan, progress)
        progress(plan.steps + 1, total)
        started = time.monotonic()
        fitted = [fit_image(f, job.width, job.height) for f in native]
        del native
        for i, frame in enumerate(convert_frame_rate(fitted, job.frame_count,
                                                     tick=lambda: progress(plan.steps + 1, total))):
            if i == job.frame_count - 1:
                self.last_timings["interpolate_s"] = time.monotonic() - started
                progress(total, total)
            yield frame

    def generate(self, plan: RenderPlan, progress: Progress) -> list[np.ndarray]:
        """Denoise and decode under the checkpoint's lock: `plan.num_frames` uint8 RGB frames at the
        generation size. progress(i, total) after each step; what it raises propagates at once."""
        loaded, total = self.loaded, plan.total
        step_times: list[float] = []

        def on_step_end(pipe: Any, i: int, t: Any, tensors: dict[str, Any]) -> dict[str, Any]:
            step_times.append(time.monotonic())
            progress(i + 1, total)
            return {}

        oom = False
        with loaded.acquire(lambda: progress(0, total)):
            pipe = loaded.pipelines[plan.family]
            started = time.monotonic()
            try:
                loaded.use_adapter(plan.adapter, plan.template.scale if plan.template else 1.0)
                self._apply_flow_shift(pipe)
                kwargs = self.pipeline_kwargs(plan, pipe._execution_device)
                latents = pipe(**kwargs, callback_on_step_end=on_step_end).frames
                denoised = time.monotonic()
                frames = decode_latents(pipe, latents)
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


def decode_latents(pipe: Any, latents: torch.Tensor) -> list[np.ndarray]:
    """The pipeline's own decode (un-normalise with the VAE's latents mean/std, VAE decode), then
    straight to uint8 frames on the device, without a float copy of the video in host memory."""
    vae = pipe.vae
    z = vae.config.z_dim
    latents = latents.to(pipe._execution_device, vae.dtype)
    mean = torch.tensor(vae.config.latents_mean).view(1, z, 1, 1, 1).to(latents)
    std = torch.tensor(vae.config.latents_std).view(1, z, 1, 1, 1).to(latents)
    with torch.no_grad():
        video = vae.decode(latents * std + mean, return_dict=False)[0]  # (1, 3, F, H, W) in [-1, 1]
        frames = ((video[0].float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    array = frames.permute(1, 2, 3, 0).contiguous().cpu().numpy()  # (F, H, W, 3)
    return list(array)


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
