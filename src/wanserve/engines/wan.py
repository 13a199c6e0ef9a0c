"""The `wan` engine: the open Wan models (Wan2.1, Wan2.2) through Hugging Face diffusers.

Selected per public model in the settings file (see docs/wan-engine.md):

    [models."wanx2.1-t2v-turbo"]
    engine = "wan"
    checkpoint = "/models/Wan2.1-T2V-1.3B-Diffusers"   # a diffusers-format directory
    num_inference_steps = 50

This module imports torch and diffusers; `wanserve.engines.EngineSet` imports it only when some
model is configured with engine = "wan", so the base install never needs them.

What happens, in order:

1. Start (`load_wan_engines`, once per worker process): every [models."..."] table is checked (unknown
   keys, types, templates the public model really has, LoRA files present); tables that name the same
   checkpoint with the same load settings share one loaded pipeline. Each checkpoint is read from its
   `model_index.json` (`_class_name` WanPipeline or WanImageToVideoPipeline), its components are
   loaded one by one (a missing or broken one raises `EngineConfigError` naming the public model, the
   component and the path), the public model's kind is checked against what the checkpoint can do,
   template LoRA adapters are loaded, then the pipeline is placed on its device (or set up for CPU
   offload). Time and memory are logged.
2. A task (`WanEngine.render`): `plan()` maps the RenderJob to pipeline arguments: generation size
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

from __future__ import annotations

import gc
import json
import logging
import math
import re
import resource
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..catalog.models import ModelSpec, find_model
from ..errors import Code, ServiceError
from ..media.frames import FlowMorph, fit_image
from . import EngineConfigError  # raised at start, never at a task
from .base import Progress, RenderJob

log = logging.getLogger("wanserve.engines.wan")

# The default negative prompt of the Wan repositories (Wan2.1 / Wan2.2 `sample_neg_prompt`).
WAN_DEFAULT_NEGATIVE_PROMPT = (
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，JPEG压缩残留，"
    "丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，手指融合，静止不动的画面，"
    "杂乱的背景，三条腿，背景人很多，倒着走"
)

PIPELINE_CLASSES = ("WanPipeline", "WanImageToVideoPipeline")
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
OFFLOAD_MODES = ("none", "model", "sequential")
CACHE_TYPES = ("first_block", "taylorseer")
MAX_SEQUENCE_LENGTH = 512  # the text length Wan was trained with; the image cross-attention assumes it
LOCK_POLL_SECONDS = 0.5  # a task waiting for the pipeline still answers cancellation this often


# ==================================================================================================
# pure helpers: sizes, frame counts, frame-rate conversion


def generation_size(width: int, height: int, multiple: int) -> tuple[int, int]:
    """The size to generate at: each side of the contract size rounded to the nearest multiple of
    `multiple` (the VAE's spatial scale x the transformer's patch size), which keeps the aspect ratio
    within one grid step. The frames are then fitted to the exact contract size."""
    return (max(multiple, math.floor(width / multiple + 0.5) * multiple),
            max(multiple, math.floor(height / multiple + 0.5) * multiple))


def native_frame_count(seconds: float, native_fps: float, temporal_scale: int = 4) -> int:
    """duration x native fps, rounded to the nearest count the Wan VAE accepts (temporal_scale*k + 1),
    at least temporal_scale + 1 frames."""
    k = math.floor((seconds * native_fps - 1) / temporal_scale + 0.5)
    return max(1, k) * temporal_scale + 1


def retime_positions(native_count: int, out_count: int) -> np.ndarray:
    """Where each output frame lies on the native timeline (0 .. native_count - 1). The first and last
    frames line up (so a last-frame task ends exactly on its last frame); the clip is stretched by at
    most the rounding of the native count to 4k+1 (about 1% at 16 fps)."""
    if out_count <= 1 or native_count <= 1:
        return np.zeros(max(out_count, 0))
    return np.arange(out_count) * (native_count - 1) / (out_count - 1)


def convert_frame_rate(frames: list[np.ndarray], out_count: int,
                       tick: Callable[[], None] | None = None) -> Iterator[np.ndarray]:
    """Exactly `out_count` frames from `frames`, each output frame at its place on the native
    timeline: a native frame where one lies exactly there, else the optical-flow interpolation
    (FlowMorph) between its two neighbours. `tick()` is called before each interpolated pair."""
    positions = retime_positions(len(frames), out_count)
    last = len(frames) - 1
    morph, morph_at = None, -1
    for p in positions:
        j = min(math.floor(p + 1e-6), last)
        t = float(p - j)
        if t < 1e-4 or j == last:
            yield frames[j]
            continue
        if t > 1 - 1e-4:
            yield frames[j + 1]
            continue
        if morph_at != j:
            if tick is not None:
                tick()
            morph, morph_at = FlowMorph(frames[j], frames[j + 1]), j
        yield morph.frame(t)


# ==================================================================================================
# configuration


@dataclass(frozen=True)
class TemplateConfig:
    name: str
    lora: Path
    prompt: str
    scale: float = 1.0
    lora_2: Path | None = None  # for two-expert checkpoints: the low-noise expert's adapter (default: lora)


@dataclass(frozen=True)
class WanModelConfig:
    """One [models."<public name>"] table with engine = "wan"."""

    model: str  # canonical public model name
    checkpoint: Path
    num_inference_steps: int = 50
    dtype: str | None = None  # default: bfloat16 on CUDA, float32 on CPU
    device: str | None = None  # default: cuda if available, else cpu
    offload: str = "none"
    attention_backend: str | None = None
    guidance_scale: float | None = None  # None: the pipeline's default (5.0)
    guidance_scale_2: float | None = None  # two-expert checkpoints: the low-noise expert's guidance
    flow_shift: float | None = None  # None: the checkpoint scheduler's own
    native_fps: float | None = None  # None: 24 for TI2V-5B (expand_timesteps), else 16
    cache: tuple[tuple[str, Any], ...] | None = None  # ("type", "first_block"), ("threshold", 0.05) ...
    templates: dict[str, TemplateConfig] = field(default_factory=dict)

    KEYS = ("engine", "checkpoint", "num_inference_steps", "dtype", "device", "offload", "attention_backend",
            "guidance_scale", "guidance_scale_2", "flow_shift", "native_fps", "cache", "templates")
    TEMPLATE_KEYS = ("lora", "lora_2", "prompt", "scale")

    @classmethod
    def parse(cls, name: str, table: dict[str, Any]) -> WanModelConfig:
        where = f"[models.{name!r}]"
        spec = find_model(name)
        if spec is None:
            raise EngineConfigError(f"{where}: {name!r} is not a public model name (see `wanserve models`).")
        if not isinstance(table, dict):
            raise EngineConfigError(f"{where} must be a table.")
        unknown = sorted(set(table) - set(cls.KEYS))
        if unknown:
            raise EngineConfigError(f"{where}: unknown keys {unknown}; known keys: {list(cls.KEYS)}.")

        def get(key: str, types: tuple[type, ...], default: Any = None, check=None, hint: str = "") -> Any:
            if key not in table:
                return default
            value = table[key]
            if isinstance(value, bool) and bool not in types or not isinstance(value, types):
                raise EngineConfigError(f"{where}: {key} = {value!r} must be {hint or types[0].__name__}.")
            if check is not None and not check(value):
                raise EngineConfigError(f"{where}: {key} = {value!r} must be {hint}.")
            return value

        checkpoint = get("checkpoint", (str,), hint="a directory path")
        if not checkpoint:
            raise EngineConfigError(f"{where}: checkpoint = \"/path/to/Wan-Diffusers-dir\" is required.")
        number = (int, float)
        dtype = get("dtype", (str,), check=lambda v: v in DTYPES, hint=f"one of {list(DTYPES)}")
        device = get("device", (str,), check=lambda v: re.fullmatch(r"cpu|cuda(:\d+)?", v) is not None,
                     hint="\"cuda\", \"cuda:N\" or \"cpu\"")
        cache = get("cache", (str, dict), hint=f"one of {list(CACHE_TYPES)} or a table {{type = ..., ...}}")
        if cache is not None:
            cache = {"type": cache} if isinstance(cache, str) else dict(cache)
            if cache.get("type") not in CACHE_TYPES:
                raise EngineConfigError(f"{where}: cache type {cache.get('type')!r} must be one of {list(CACHE_TYPES)}.")
            if not all(isinstance(v, (str, int, float)) for v in cache.values()):
                raise EngineConfigError(f"{where}: cache options must be numbers or strings, got {cache}.")
            cache = tuple(sorted(cache.items()))
        templates_table = get("templates", (dict,), default={}, hint="a table of [models.\"...\".templates.NAME]")
        templates: dict[str, TemplateConfig] = {}
        for tname, tcfg in templates_table.items():
            twhere = f"[models.{name!r}.templates.{tname!r}]"
            if tname not in spec.templates:
                raise EngineConfigError(f"{twhere}: {spec.name} has no template {tname!r}; its templates are: "
                                        f"{', '.join(spec.templates) or 'none'}.")
            if not isinstance(tcfg, dict):
                raise EngineConfigError(f"{twhere} must be a table with lora, prompt and optional scale.")
            unknown = sorted(set(tcfg) - set(cls.TEMPLATE_KEYS))
            if unknown:
                raise EngineConfigError(f"{twhere}: unknown keys {unknown}; known keys: {list(cls.TEMPLATE_KEYS)}.")
            lora, prompt = tcfg.get("lora"), tcfg.get("prompt")
            if not isinstance(lora, str) or not lora:
                raise EngineConfigError(f"{twhere}: lora = \"/path/to/adapter.safetensors\" is required.")
            if not isinstance(prompt, str) or not prompt.strip():
                raise EngineConfigError(f"{twhere}: prompt = \"...\" is required (it replaces the request's prompt).")
            scale = tcfg.get("scale", 1.0)
            if isinstance(scale, bool) or not isinstance(scale, number):
                raise EngineConfigError(f"{twhere}: scale = {scale!r} must be a number.")
            lora_2 = tcfg.get("lora_2")
            if lora_2 is not None and (not isinstance(lora_2, str) or not lora_2):
                raise EngineConfigError(f"{twhere}: lora_2 must be a file path.")
            paths = [Path(p).expanduser() for p in (lora, lora_2) if p]
            for p in paths:
                if not p.is_file():
                    raise EngineConfigError(f"{twhere}: LoRA file {str(p)!r} does not exist (model {spec.name}).")
            templates[tname] = TemplateConfig(tname, paths[0], prompt.strip(), float(scale),
                                              paths[1] if len(paths) > 1 else None)
        return cls(
            model=spec.name,
            checkpoint=Path(checkpoint).expanduser(),
            num_inference_steps=get("num_inference_steps", (int,), 50, lambda v: 1 <= v <= 1000, "an integer 1-1000"),
            dtype=dtype,
            device=device,
            offload=get("offload", (str,), "none", lambda v: v in OFFLOAD_MODES, f"one of {list(OFFLOAD_MODES)}"),
            attention_backend=get("attention_backend", (str,), hint="a diffusers attention backend name"),
            guidance_scale=_float(get("guidance_scale", number, None, lambda v: v >= 0, "a number >= 0")),
            guidance_scale_2=_float(get("guidance_scale_2", number, None, lambda v: v >= 0, "a number >= 0")),
            flow_shift=_float(get("flow_shift", number, None, lambda v: v > 0, "a number > 0")),
            native_fps=_float(get("native_fps", number, None, lambda v: 0 < v <= 120, "a number in (0, 120]")),
            cache=cache,
            templates=templates,
        )

    def resolved_device(self) -> torch.device:
        if self.device is None:
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        device = torch.device(self.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise EngineConfigError(f"[models.{self.model!r}]: device = {self.device!r} but no CUDA device is "
                                    "available to this process; use device = \"cpu\" or run on a GPU machine.")
        return device

    def resolved_dtype(self, device: torch.device) -> torch.dtype:
        if self.dtype is not None:
            return DTYPES[self.dtype]
        return torch.bfloat16 if device.type == "cuda" else torch.float32

    def load_key(self) -> tuple:
        """Models whose tables agree on these share one loaded pipeline."""
        device = self.resolved_device()
        return (str(self.checkpoint.resolve()), str(device), str(self.resolved_dtype(device)), self.offload,
                self.attention_backend, self.cache)


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


# ==================================================================================================
# loading a checkpoint


@dataclass
class Capabilities:
    """What a loaded checkpoint can generate: job kinds t2v, i2v (first frame), kf2v (first + last)."""

    kinds: frozenset[str]
    description: str


def checkpoint_capabilities(index: dict[str, Any], transformer_config: Any) -> Capabilities:
    cls = index["_class_name"]
    ti2v = bool(index.get("expand_timesteps"))
    experts = "two experts" if _present(index, "transformer_2") else "one transformer"
    if cls == "WanPipeline":
        if ti2v:
            return Capabilities(frozenset({"t2v", "i2v"}), f"text/image-to-video (TI2V, {experts})")
        return Capabilities(frozenset({"t2v"}), f"text-to-video ({experts})")
    if ti2v:
        return Capabilities(frozenset({"i2v"}), f"image-to-video (TI2V, {experts})")
    image_dim = getattr(transformer_config, "image_dim", None)
    if image_dim is None:  # Wan2.2 I2V-A14B: the frames condition through the VAE only, first and/or last
        return Capabilities(frozenset({"i2v", "kf2v"}), f"image-to-video, first or first+last frame ({experts})")
    if getattr(transformer_config, "pos_embed_seq_len", None):  # Wan2.1 FLF2V: two CLIP embeddings
        return Capabilities(frozenset({"kf2v"}), f"first+last-frame-to-video (FLF2V, {experts})")
    return Capabilities(frozenset({"i2v"}), f"image-to-video, first frame ({experts})")


def required_kinds(spec: ModelSpec, cfg: WanModelConfig) -> frozenset[str]:
    """The job kinds a public model sends to its engine."""
    if spec.kind == "t2v":
        return frozenset({"t2v"})
    if spec.kind == "kf2v":  # template tasks of a kf2v model come with a first frame only
        return frozenset({"kf2v", "i2v"}) if cfg.templates else frozenset({"kf2v"})
    return frozenset({"i2v"})  # i2v, and wan2.7 (its first+last-frame tasks need a checkpoint that can)


def _present(index: dict[str, Any], name: str) -> bool:
    entry = index.get(name)
    return isinstance(entry, list) and len(entry) == 2 and entry[0] is not None and entry[1] is not None


def _rss_report() -> str:
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    try:
        with open("/proc/self/statm") as fh:
            rss = int(fh.read().split()[1]) * resource.getpagesize()
        return f"RSS {rss / 2**30:.2f} GiB (peak {peak_kib / 2**20:.2f} GiB)"
    except OSError:
        return f"peak RSS {peak_kib / 2**20:.2f} GiB"


def memory_report(device: torch.device) -> str:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return (f"GPU memory {torch.cuda.memory_allocated(device) / 2**30:.2f} GiB allocated, "
                f"peak {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB; " + _rss_report())
    return _rss_report()


class LoadedCheckpoint:
    """One checkpoint in memory: its components, a pipeline per job family ("t2v" -> WanPipeline,
    "i2v" -> WanImageToVideoPipeline; a TI2V checkpoint has both, over the same modules), the
    template adapters loaded into its transformer(s), and the lock every task holds while it uses it."""

    def __init__(self, path: Path, index: dict[str, Any], components: dict[str, Any], device: torch.device,
                 dtype: torch.dtype, offload: str = "none") -> None:
        from diffusers import WanImageToVideoPipeline, WanPipeline

        self.path, self.index, self.device, self.dtype, self.offload = path, index, device, dtype, offload
        self.components = components
        self.lock = threading.Lock()
        self.adapters: dict[tuple[str, str | None], str] = {}  # (lora, lora_2) -> adapter name
        transformer = components["transformer"]
        if transformer is None:
            raise EngineConfigError(f"{path}: the checkpoint has no `transformer` component.")
        self.capabilities = checkpoint_capabilities(index, transformer.config)
        self.two_experts = components.get("transformer_2") is not None
        self.ti2v = bool(index.get("expand_timesteps"))
        common = {k: components[k] for k in ("tokenizer", "text_encoder", "vae", "scheduler", "transformer")}
        common.update(transformer_2=components.get("transformer_2"), boundary_ratio=index.get("boundary_ratio"),
                      expand_timesteps=self.ti2v)
        self.pipelines: dict[str, Any] = {}
        if "t2v" in self.capabilities.kinds:
            self.pipelines["t2v"] = WanPipeline(**common)
        if self.capabilities.kinds & {"i2v", "kf2v"}:
            self.pipelines["i2v"] = WanImageToVideoPipeline(**common, image_encoder=components.get("image_encoder"),
                                                            image_processor=components.get("image_processor"))
        for pipe in self.pipelines.values():
            pipe.set_progress_bar_config(disable=True)
        vae = components["vae"]
        patch = transformer.config.patch_size
        self.size_multiple = int(vae.config.scale_factor_spatial) * int(max(patch[1], patch[2]))
        self.temporal_scale = int(vae.config.scale_factor_temporal)
        self.default_native_fps = 24.0 if self.ti2v else 16.0

    @property
    def any_pipeline(self) -> Any:
        return next(iter(self.pipelines.values()))

    # -- start-time set-up ---------------------------------------------------------------------

    def load_template(self, model: str, template: TemplateConfig) -> str:
        """Load a template's LoRA adapter(s) once (shared by every model on this checkpoint)."""
        key = (str(template.lora), str(template.lora_2) if template.lora_2 else None)
        if key in self.adapters:
            return self.adapters[key]
        if template.lora_2 is not None and not self.two_experts:
            raise EngineConfigError(f"[models.{model!r}.templates.{template.name!r}]: lora_2 is only for two-expert "
                                    f"checkpoints (transformer_2); {self.path} has one transformer.")
        name = re.sub(r"\W", "_", f"{template.name}_{len(self.adapters)}")
        pipe = self.any_pipeline
        try:
            pipe.load_lora_weights(str(template.lora), adapter_name=name)
            if self.two_experts:
                pipe.load_lora_weights(str(template.lora_2 or template.lora), adapter_name=name,
                                       load_into_transformer_2=True)
        except Exception as exc:
            raise EngineConfigError(f"[models.{model!r}.templates.{template.name!r}]: cannot load the LoRA adapter "
                                    f"{str(template.lora)!r} into {self.path}: {type(exc).__name__}: {exc}") from exc
        self.adapters[key] = name
        return name

    def place(self, attention_backend: str | None, cache: tuple | None) -> None:
        """Attention backend, cache, then device placement or CPU offload (after the adapters are in)."""
        transformers = [t for t in (self.components["transformer"], self.components.get("transformer_2"))
                        if t is not None]
        if attention_backend:
            for t in transformers:
                t.set_attention_backend(attention_backend)
        if cache:
            import diffusers.hooks

            options = dict(cache)
            kind = options.pop("type")
            config_cls = getattr(diffusers.hooks, {"first_block": "FirstBlockCacheConfig",
                                                   "taylorseer": "TaylorSeerCacheConfig"}[kind])
            for t in transformers:
                t.enable_cache(config_cls(**options))
        if self.offload == "none":
            for pipe in self.pipelines.values():
                pipe.to(self.device)
        else:
            for pipe in self.pipelines.values():
                if self.offload == "model":
                    pipe.enable_model_cpu_offload(device=self.device)
                else:
                    pipe.enable_sequential_cpu_offload(device=self.device)

    # -- per task --------------------------------------------------------------------------------

    def use_adapter(self, name: str | None, scale: float = 1.0) -> None:
        """Switch the template adapter `name` on at `scale`, or every adapter off (name None)."""
        if not self.adapters:
            if name is not None:
                raise RuntimeError(f"adapter {name!r} is not loaded")
            return
        pipe = self.any_pipeline
        if name is None:
            pipe.disable_lora()
        else:
            pipe.enable_lora()
            pipe.set_adapters([name], adapter_weights=[scale])

    def acquire(self, waiting: Callable[[], None]) -> _Held:
        """Hold the lock; while another task has it, call `waiting()` (which may raise TaskCanceled)."""
        while not self.lock.acquire(timeout=LOCK_POLL_SECONDS):
            waiting()
        return _Held(self.lock)


class _Held:
    def __init__(self, lock: threading.Lock) -> None:
        self.lock = lock

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        self.lock.release()


def read_model_index(model: str, path: Path) -> dict[str, Any]:
    where = f"model {model!r}: checkpoint {str(path)!r}"
    if not path.is_dir():
        raise EngineConfigError(f"{where} is not a directory (it should be a diffusers-format Wan checkpoint, "
                                "e.g. Wan-AI/Wan2.1-T2V-1.3B-Diffusers).")
    index_file = path / "model_index.json"
    if not index_file.is_file():
        raise EngineConfigError(f"{where} has no model_index.json; it is not a diffusers-format checkpoint "
                                "(use the *-Diffusers repositories of Wan-AI).")
    try:
        index = json.loads(index_file.read_text())
    except (OSError, ValueError) as exc:
        raise EngineConfigError(f"{where}: model_index.json is not valid JSON: {exc}") from exc
    if not isinstance(index, dict) or index.get("_class_name") not in PIPELINE_CLASSES:
        name = index.get("_class_name") if isinstance(index, dict) else None
        raise EngineConfigError(f"{where}: model_index.json names pipeline {name!r}; the wan engine runs "
                                f"{' and '.join(PIPELINE_CLASSES)} checkpoints.")
    for required in ("tokenizer", "text_encoder", "vae", "scheduler", "transformer"):
        if not _present(index, required):
            raise EngineConfigError(f"{where}: model_index.json lists no {required!r} component.")
    return index


def load_components(model: str, path: Path, index: dict[str, Any], dtype: torch.dtype) -> dict[str, Any]:
    """Load each component of the checkpoint explicitly. The transformer(s) and text encoder use
    `dtype`; the VAE and the CLIP image encoder stay in float32, as the Wan references run them."""
    import diffusers
    from diffusers import AutoencoderKLWan, WanTransformer3DModel
    from transformers import AutoTokenizer, CLIPImageProcessor, CLIPVisionModel, UMT5EncoderModel

    def scheduler_loader(sub: Path) -> Any:
        name = index["scheduler"][1]
        cls = getattr(diffusers, name, None)
        if cls is None or not name.endswith("Scheduler"):
            raise ValueError(f"unknown scheduler class {name!r}")
        return cls.from_pretrained(sub)

    loaders: dict[str, Callable[[Path], Any]] = {
        "tokenizer": lambda sub: AutoTokenizer.from_pretrained(sub, local_files_only=True),
        "text_encoder": lambda sub: UMT5EncoderModel.from_pretrained(sub, torch_dtype=dtype, local_files_only=True),
        "vae": lambda sub: AutoencoderKLWan.from_pretrained(sub, torch_dtype=torch.float32, local_files_only=True),
        "scheduler": scheduler_loader,
        "transformer": lambda sub: WanTransformer3DModel.from_pretrained(sub, torch_dtype=dtype, local_files_only=True),
        "transformer_2": lambda sub: WanTransformer3DModel.from_pretrained(sub, torch_dtype=dtype,
                                                                           local_files_only=True),
        "image_encoder": lambda sub: CLIPVisionModel.from_pretrained(sub, torch_dtype=torch.float32,
                                                                     local_files_only=True),
        "image_processor": lambda sub: CLIPImageProcessor.from_pretrained(sub, local_files_only=True),
    }
    components: dict[str, Any] = {}
    for name, load in loaders.items():
        if not _present(index, name):
            components[name] = None
            continue
        sub = path / name
        if not sub.is_dir():
            raise EngineConfigError(f"model {model!r}: checkpoint {str(path)!r}: component {name!r} is listed in "
                                    f"model_index.json but {str(sub)!r} is missing.")
        try:
            components[name] = load(sub)
        except EngineConfigError:
            raise
        except Exception as exc:
            raise EngineConfigError(f"model {model!r}: checkpoint {str(path)!r}: cannot load component {name!r} "
                                    f"from {str(sub)!r}: {type(exc).__name__}: {exc}") from exc
        if hasattr(components[name], "eval"):
            components[name].eval()
    return components


def load_checkpoint(cfg: WanModelConfig, templates: list[tuple[str, TemplateConfig]]) -> LoadedCheckpoint:
    """Read, load, check and place one checkpoint; log how long it took and the memory it holds."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    started = time.monotonic()
    device = cfg.resolved_device()
    dtype = cfg.resolved_dtype(device)
    if cfg.offload != "none" and device.type != "cuda":
        raise EngineConfigError(f"[models.{cfg.model!r}]: offload = {cfg.offload!r} needs a CUDA device "
                                f"(device is {device}).")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    index = read_model_index(cfg.model, cfg.checkpoint)
    components = load_components(cfg.model, cfg.checkpoint, index, dtype)
    loaded = LoadedCheckpoint(cfg.checkpoint, index, components, device, dtype, cfg.offload)
    for model, template in templates:
        loaded.load_template(model, template)
    try:
        loaded.place(cfg.attention_backend, cfg.cache)
    except Exception as exc:
        raise EngineConfigError(f"model {cfg.model!r}: checkpoint {str(cfg.checkpoint)!r}: cannot set up "
                                f"(device {device}, offload {cfg.offload}, attention_backend "
                                f"{cfg.attention_backend}, cache {cfg.cache}): {type(exc).__name__}: {exc}") from exc
    n_params = sum(p.numel() for t in (components["transformer"], components.get("transformer_2")) if t
                   for p in t.parameters())
    log.info("wan: loaded %s from %s in %.1f s: %s, %s, %s transformer parameters, %s on %s, "
             "offload %s, %d template adapter(s); %s", cfg.model, cfg.checkpoint, time.monotonic() - started,
             index["_class_name"], loaded.capabilities.description,
             f"{n_params / 1e9:.2f}B" if n_params >= 1e8 else f"{n_params / 1e6:.2f}M", str(dtype).removeprefix("torch."),
             device, cfg.offload, len(loaded.adapters), memory_report(device))
    return loaded


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


# ==================================================================================================
# the engine


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
                f"model {cfg.model!r} ({spec.kind}) cannot be served by checkpoint {str(cfg.checkpoint)!r}: it is a "
                f"{loaded.capabilities.description} checkpoint ({loaded.index['_class_name']}) and cannot do "
                f"{', '.join(sorted(missing))} tasks. Configure a checkpoint of the right kind for this model.")
        if cfg.guidance_scale_2 is not None and not loaded.index.get("boundary_ratio"):
            raise EngineConfigError(f"[models.{cfg.model!r}]: guidance_scale_2 needs a two-expert checkpoint "
                                    f"(boundary_ratio in model_index.json); {str(cfg.checkpoint)!r} has none.")
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
            raise ServiceError(Code.INVALID_PARAMETER, f"{self.cfg.model} is served by a "
                               f"{self.loaded.capabilities.description} checkpoint, which cannot do this "
                               f"{job.kind} task.")
        if job.kind in ("i2v", "kf2v") and job.first_frame is None:
            raise ServiceError(Code.INVALID_PARAMETER, f"a {job.kind} task needs a first frame.")
        if job.kind == "kf2v" and job.last_frame is None:
            raise ServiceError(Code.INVALID_PARAMETER, "a first-and-last-frame task needs a last frame.")
        template = None
        if job.template:
            template = self.cfg.templates.get(job.template)
            if template is None:
                configured = ", ".join(self.cfg.templates) or "none"
                raise ServiceError(Code.INVALID_PARAMETER, f"input.template: template {job.template!r} is not set up on "
                                   f"this server for {self.cfg.model} (configured: {configured}).")
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
            seed=int(job.seed), template=template, adapter=self.adapters.get(job.template) if template else None,
            image=image, last_image=last)

    def pipeline_kwargs(self, plan: RenderPlan, device: torch.device) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "prompt": plan.prompt, "negative_prompt": plan.negative_prompt, "height": plan.height, "width": plan.width,
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
        if job.first_clip is not None:
            yield from self._continue_clip(job, progress)
            return
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

    def _continue_clip(self, job: RenderJob, progress: Progress) -> Iterator[np.ndarray]:
        """wan2.7 first_clip (continuation): the clip itself, fitted to the output size at 30 fps,
        then an image-to-video generation from its last frame (to the last frame, when one is given)
        for the rest of the duration. The open checkpoints take no video input, so the clip
        conditions the continuation through its last frame only."""
        from ..media.clip import clip_frames

        total = job.frame_count
        n_clip = max(1, min(total - 1, round(job.first_clip_seconds * job.fps)))
        last = None
        for i, raw in enumerate(clip_frames(job.first_clip, job.fps, n_clip)):
            if i % 30 == 0:
                progress(0, self.cfg.num_inference_steps + 2)  # lets a cancel through while the clip streams
            last = fit_image(raw, job.width, job.height)
            yield last
        if last is None:
            raise ServiceError(Code.FILE_FORMAT, "input.media first_clip: the video has no decodable frames.")
        # one frame more than the rest, as the generated clip starts on the clip's last frame (dropped)
        rest = replace(job, kind="kf2v" if job.last_frame is not None else "i2v", first_frame=Image.fromarray(last),
                       first_clip=None, first_clip_seconds=0.0, frame_count=total - n_clip + 1)
        frames = self.render(rest, progress)
        next(frames)
        yield from frames

    def generate(self, plan: RenderPlan, progress: Progress) -> list[np.ndarray]:
        """Denoise and decode under the checkpoint's lock: `plan.num_frames` uint8 RGB frames at the
        generation size. progress(i, total) after each step; what it raises propagates at once."""
        loaded, total = self.loaded, plan.total
        step_times: list[float] = []

        def on_step_end(pipe: Any, i: int, t: Any, tensors: dict[str, Any]) -> dict[str, Any]:
            step_times.append(time.monotonic())
            progress(i + 1, total)
            return {}

        out_of_memory = False
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
                out_of_memory = True
            except RuntimeError as exc:
                if not _is_oom_message(exc):
                    raise
                out_of_memory = True
            finally:
                pipe.maybe_free_model_hooks()  # resets cache hooks / offload state even after a cancel
        if out_of_memory:  # outside the except block: the exception (and the tensors its frames hold) is gone
            free_memory(loaded.device)
            where = "GPU memory" if loaded.device.type == "cuda" else "memory"
            raise ServiceError(Code.INTERNAL_ALGO, f"inference internal error: out of {where} generating "
                               f"{plan.width}x{plan.height}, {plan.num_frames} frames with {self.cfg.model}. Try a "
                               "lower resolution or a shorter duration.")
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
