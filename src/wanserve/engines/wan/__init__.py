"""The `wan` engine: the open Wan models (Wan2.1, Wan2.2) through Hugging Face diffusers.

Selected per public model in the settings file (see docs/wan-engine.md):

    [models."wanx2.1-t2v-turbo"]
    engine = "wan"
    checkpoint = "/models/Wan2.1-T2V-1.3B-Diffusers"   # a diffusers-format directory
    num_inference_steps = 50

This package imports torch and diffusers; the engine registry (`wanserve.engines.registry`) imports
it only when some model is configured with engine = "wan", so the base install never needs them.

The modules: `config` (a [models."..."] table, parsed and checked), `checkpoint` (reading and
loading a checkpoint, what it can do, the `LoadedCheckpoint` models share), `engine` (`WanEngine`:
plan, denoise, decode, out of memory), `retime` (generation size, native frame count, frame-rate
conversion), `segments` (shots and segments: multi-shot prompts, durations past the native length).

What happens, in order:

1. Start (`load_wan_engines`, once per worker process): every [models."..."] table is checked (unknown
   keys, types, templates the public model really has, LoRA files present); tables that name the same
   checkpoint with the same load settings share one loaded pipeline. Each checkpoint is read from its
   `model_index.json` (`_class_name` WanPipeline or WanImageToVideoPipeline), its components are
   loaded one by one (a missing or broken one raises `EngineConfigError` naming the public model, the
   component and the path), the public model's kind is checked against what the checkpoint can do,
   template LoRA adapters are loaded, then the pipeline is placed on its device (or set up for CPU
   offload). Time and memory are logged.
2. A task (`WanEngine.render`): `segments()` splits it into generations, one or more per shot of
   `job.shots` (at most `max_native_frames` each; later segments i2v from the previous one's last
   frame, see `segments`); for each, `plan()` maps the RenderJob to pipeline arguments: generation size
   (the contract size rounded to the VAE-scale x patch-size grid), native frame count (duration x
   native fps rounded to 4k+1), prompt (a template's configured prompt replaces the user's), negative
   prompt (Wan's default when none is given), seed, first and last frame. Under the checkpoint's lock
   the template's adapter is switched on (or all adapters off), the pipeline denoises (each step
   reports progress; whatever progress raises, e.g. TaskCanceled, propagates out within the step),
   and the latents are decoded here. Out of memory becomes a ServiceError (InternalError.Algo).
3. Outside the lock, each decoded frame is fitted (scale to cover, centre-crop) to exactly the
   contract size, and the clip is converted from the native frame rate to exactly `job.frame_count`
   frames at 30 fps by optical-flow interpolation (`FlowMorph`), not by repeating frames.
"""

from .checkpoint import (
    Capabilities,
    LoadedCheckpoint,
    checkpoint_capabilities,
    load_checkpoint,
    load_components,
    memory_report,
    read_model_index,
    required_kinds,
)
from .config import TemplateConfig, WanModelConfig
from .engine import (
    MAX_SEQUENCE_LENGTH,
    WAN_DEFAULT_NEGATIVE_PROMPT,
    RenderPlan,
    Segment,
    WanEngine,
    decode_latents,
    free_memory,
    load_wan_engines,
)
from .retime import convert_frame_rate, generation_size, native_frame_count, retime_positions
from .segments import ShotSpan, segment_positions, shot_prompt, shot_spans

__all__ = [
    "MAX_SEQUENCE_LENGTH",
    "WAN_DEFAULT_NEGATIVE_PROMPT",
    "Capabilities",
    "LoadedCheckpoint",
    "RenderPlan",
    "Segment",
    "ShotSpan",
    "TemplateConfig",
    "WanEngine",
    "WanModelConfig",
    "checkpoint_capabilities",
    "convert_frame_rate",
    "decode_latents",
    "free_memory",
    "generation_size",
    "load_checkpoint",
    "load_components",
    "load_wan_engines",
    "memory_report",
    "native_frame_count",
    "read_model_index",
    "required_kinds",
    "retime_positions",
    "segment_positions",
    "shot_prompt",
    "shot_spans",
]
