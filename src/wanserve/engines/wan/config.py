"""One [models."<public name>"] table with engine = "wan": parsed and checked at start
(`WanModelConfig.parse`), never at a task."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ...catalog.models import find_model
from ..base import EngineConfigError
from .parallel import PARALLEL_MODES
from .speed import COMPILE_MODES, QUANTIZE_MODES

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
OFFLOAD_MODES = ("none", "model", "sequential", "group")
CACHE_TYPES = ("first_block", "taylorseer", "mag")
DISTILLED_KEYS = ("lora", "lora_2", "scale")

@dataclass(frozen=True)
class TemplateConfig:
    name: str
    lora: Path
    prompt: str
    scale: float = 1.0
    lora_2: Path | None = None  # for two-expert checkpoints: the low-noise expert's adapter (default: lora)


@dataclass(frozen=True)
class DistilledConfig:
    """A step-distillation LoRA fused into the transformer(s) at start (speed.fuse_distilled)."""

    lora: Path
    lora_2: Path | None = None
    scale: float = 1.0


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
    max_native_frames: int | None = None  # None: 121 for TI2V-5B (24 fps), else 81 (5 s at 16 fps)
    continue_with: str | None = None  # a configured wan model whose checkpoint does i2v: continues long shots
    parallel: str = "auto"  # multi-GPU worker: context parallelism (parallel.py): auto, ulysses, ring, none
    # speed (speed.py, issue 11)
    cfg_batch: bool | None = None  # None ("auto"): on unless a cache or an offload is set
    compile: str = "none"  # "regional": torch.compile of the repeated transformer blocks
    fuse_qkv: bool = False
    vae_tiling: bool | None = None  # None ("auto"): tiles only when the whole decode runs out of memory
    quantize: str = "none"  # "fp8": torchao float8 (CUDA, compute capability >= 8.9)
    distilled: DistilledConfig | None = None

    KEYS = ("engine", "checkpoint", "num_inference_steps", "dtype", "device", "offload", "attention_backend",
            "guidance_scale", "guidance_scale_2", "flow_shift", "native_fps", "cache", "templates",
            "max_native_frames", "continue_with", "parallel", "cfg_batch", "compile", "fuse_qkv",
            "vae_tiling", "quantize", "distilled")
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
                raise EngineConfigError(f"{where}: cache type {cache.get('type')!r} must be one of "
                                        f"{list(CACHE_TYPES)}.")
            if cache["type"] == "mag":
                cache = _mag_cache(where, cache, table.get("num_inference_steps", 50))
            if not all(isinstance(v, (str, int, float, tuple)) for v in cache.values()):
                raise EngineConfigError(f"{where}: cache options must be numbers or strings, got {cache}.")
            cache = tuple(sorted(cache.items()))
        templates_table = get("templates", (dict,), default={},
                              hint="a table of [models.\"...\".templates.NAME]")
        templates: dict[str, TemplateConfig] = {}
        for tname, tcfg in templates_table.items():
            twhere = f"[models.{name!r}.templates.{tname!r}]"
            if tname not in spec.templates:
                raise EngineConfigError(f"{twhere}: {spec.name} has no template {tname!r}; its templates "
                                        f"are: {', '.join(spec.templates) or 'none'}.")
            if not isinstance(tcfg, dict):
                raise EngineConfigError(f"{twhere} must be a table with lora, prompt and optional scale.")
            unknown = sorted(set(tcfg) - set(cls.TEMPLATE_KEYS))
            if unknown:
                raise EngineConfigError(f"{twhere}: unknown keys {unknown}; known keys: "
                                        f"{list(cls.TEMPLATE_KEYS)}.")
            lora, prompt = tcfg.get("lora"), tcfg.get("prompt")
            if not isinstance(lora, str) or not lora:
                raise EngineConfigError(f"{twhere}: lora = \"/path/to/adapter.safetensors\" is required.")
            if not isinstance(prompt, str) or not prompt.strip():
                raise EngineConfigError(f"{twhere}: prompt = \"...\" is required (it replaces the request's "
                                        "prompt).")
            scale = tcfg.get("scale", 1.0)
            if isinstance(scale, bool) or not isinstance(scale, number):
                raise EngineConfigError(f"{twhere}: scale = {scale!r} must be a number.")
            lora_2 = tcfg.get("lora_2")
            if lora_2 is not None and (not isinstance(lora_2, str) or not lora_2):
                raise EngineConfigError(f"{twhere}: lora_2 must be a file path.")
            paths = [Path(p).expanduser() for p in (lora, lora_2) if p]
            for p in paths:
                if not p.is_file():
                    raise EngineConfigError(f"{twhere}: LoRA file {str(p)!r} does not exist "
                                            f"(model {spec.name}).")
            templates[tname] = TemplateConfig(tname, paths[0], prompt.strip(), float(scale),
                                              paths[1] if len(paths) > 1 else None)
        return cls(
            model=spec.name,
            checkpoint=Path(checkpoint).expanduser(),
            num_inference_steps=get("num_inference_steps", (int,), 50, lambda v: 1 <= v <= 1000,
                                    "an integer 1-1000"),
            dtype=dtype,
            device=device,
            offload=get("offload", (str,), "none", lambda v: v in OFFLOAD_MODES,
                        f"one of {list(OFFLOAD_MODES)}"),
            attention_backend=get("attention_backend", (str,), check=lambda v: v in _attention_backends(),
                                  hint=f"one of the diffusers attention backends "
                                       f"{list(_attention_backends())}"),
            guidance_scale=_float(get("guidance_scale", number, None, lambda v: v >= 0, "a number >= 0")),
            guidance_scale_2=_float(get("guidance_scale_2", number, None, lambda v: v >= 0, "a number >= 0")),
            flow_shift=_float(get("flow_shift", number, None, lambda v: v > 0, "a number > 0")),
            native_fps=_float(get("native_fps", number, None, lambda v: 0 < v <= 120,
                                  "a number in (0, 120]")),
            cache=cache,
            max_native_frames=get("max_native_frames", (int,), None, lambda v: v >= 5 and (v - 1) % 4 == 0,
                                  "an integer 4k+1 >= 5 (the Wan VAE's frame counts, e.g. 81)"),
            continue_with=_continue_with(where, get("continue_with", (str,), hint="a public model name")),
            parallel=get("parallel", (str,), "auto", lambda v: v in PARALLEL_MODES,
                         f"one of {list(PARALLEL_MODES)}"),
            templates=templates,
            **_speed_keys(where, table, get, cache, templates),
        )

    def resolved_device(self) -> torch.device:
        if self.device is None:
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        device = torch.device(self.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise EngineConfigError(f"[models.{self.model!r}]: device = {self.device!r} but no CUDA device "
                                    "is available to this process; use device = \"cpu\" or run on a GPU "
                                    "machine.")
        return device

    def resolved_dtype(self, device: torch.device) -> torch.dtype:
        if self.dtype is not None:
            return DTYPES[self.dtype]
        return torch.bfloat16 if device.type == "cuda" else torch.float32

    def load_key(self) -> tuple:
        """Models whose tables agree on these share one loaded pipeline."""
        device = self.resolved_device()
        return (str(self.checkpoint.resolve()), str(device), str(self.resolved_dtype(device)), self.offload,
                self.attention_backend, self.cache, self.parallel,
                (self.compile, self.fuse_qkv, self.quantize, self.distilled))

    def guidance_batching(self) -> bool:
        """Whether guidance's two forwards run as one batch of two (`cfg_batch`; "auto": unless a cache
        decides per forward or an offload says memory is short)."""
        if self.cfg_batch is not None:
            return self.cfg_batch
        return self.cache is None and self.offload == "none"


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


def _continue_with(where: str, name: str | None) -> str | None:
    """The canonical public name of `continue_with` (whether it is configured with an image-capable
    checkpoint is checked once every wan model is loaded, `load_wan_engines`)."""
    if name is None:
        return None
    spec = find_model(name)
    if spec is None:
        raise EngineConfigError(f"{where}: continue_with = {name!r} is not a public model name.")
    return spec.name


def _attention_backends() -> tuple[str, ...]:
    from .speed import attention_backends

    return attention_backends()


def _mag_cache(where: str, cache: dict[str, Any], steps: Any) -> dict[str, Any]:
    """cache = {type = "mag", mag_ratios = [...]} or {type = "mag", calibrate = true}: diffusers'
    MagCacheConfig; its num_inference_steps is the model's (the ratios are interpolated to it)."""
    known = ("type", "threshold", "max_skip_steps", "retention_ratio", "num_inference_steps", "mag_ratios",
             "calibrate")
    unknown = sorted(set(cache) - set(known))
    if unknown:
        raise EngineConfigError(f"{where}: cache type \"mag\" has no options {unknown}; its options: "
                                f"{list(known[1:])}.")
    ratios = cache.get("mag_ratios")
    if ratios is not None:
        if not isinstance(ratios, list) or len(ratios) < 2 or \
                not all(isinstance(r, (int, float)) and not isinstance(r, bool) for r in ratios):
            raise EngineConfigError(f"{where}: cache mag_ratios must be a list of numbers (calibrate = true "
                                    "logs them for a checkpoint).")
        cache["mag_ratios"] = tuple(float(r) for r in ratios)
    if not isinstance(cache.get("calibrate", False), bool):
        raise EngineConfigError(f"{where}: cache calibrate must be true or false.")
    if ratios is None and not cache.get("calibrate"):
        raise EngineConfigError(f"{where}: cache type \"mag\" needs mag_ratios = [...] (calibrated for the "
                                "checkpoint; see docs/wan-engine.md) or calibrate = true.")
    cache.setdefault("num_inference_steps", steps if isinstance(steps, int) else 50)
    return cache


def _speed_keys(where: str, table: dict[str, Any], get: Any, cache: Any,
                templates: dict[str, TemplateConfig]) -> dict[str, Any]:
    """cfg_batch, compile, fuse_qkv, vae_tiling, quantize, distilled (speed.py): parsed, and the
    combinations that cannot work refused."""
    auto_or_bool = "true, false or \"auto\""
    cfg_batch = get("cfg_batch", (bool, str), "auto", lambda v: v in (True, False, "auto"), auto_or_bool)
    vae_tiling = get("vae_tiling", (bool, str), "auto", lambda v: v in (True, False, "auto"), auto_or_bool)
    compile_mode = get("compile", (str,), "none", lambda v: v in COMPILE_MODES,
                       f"one of {list(COMPILE_MODES)}")
    fuse_qkv = get("fuse_qkv", (bool,), False, hint="true or false")
    quantize = get("quantize", (str,), "none", lambda v: v in QUANTIZE_MODES,
                   f"one of {list(QUANTIZE_MODES)}")
    offload = table.get("offload", "none")
    if cfg_batch is True and cache is not None:
        raise EngineConfigError(f"{where}: cfg_batch = true cannot be combined with cache (the cache keeps "
                                "separate state for the prompt and negative-prompt forwards); remove one.")
    if compile_mode != "none" and (cache is not None or offload != "none"):
        raise EngineConfigError(f"{where}: compile = {compile_mode!r} cannot be combined with "
                                f"{'cache' if cache is not None else 'offload'} (their per-block hooks break "
                                "the compiled graphs); remove one.")
    if quantize != "none" and (templates or offload != "none"):
        raise EngineConfigError(f"{where}: quantize = {quantize!r} cannot be combined with "
                                f"{'templates (LoRA adapters)' if templates else 'offload'}; remove one.")
    if fuse_qkv and templates:
        raise EngineConfigError(f"{where}: fuse_qkv = true cannot be combined with templates (their LoRA "
                                "adapters sit on the unfused projections); remove one.")
    distilled = get("distilled", (dict,), None,
                    hint="a table {lora = \"...\", lora_2 = \"...\", scale = 1.0}")
    if distilled is not None:
        unknown = sorted(set(distilled) - set(DISTILLED_KEYS))
        if unknown:
            raise EngineConfigError(f"{where}: distilled: unknown keys {unknown}; known keys: "
                                    f"{list(DISTILLED_KEYS)}.")
        paths = []
        for key in ("lora", "lora_2"):
            value = distilled.get(key)
            if value is None and key == "lora_2":
                paths.append(None)
                continue
            if not isinstance(value, str) or not value:
                raise EngineConfigError(f"{where}: distilled: {key} = \"/path/to/adapter.safetensors\" "
                                        f"{'is required' if key == 'lora' else 'must be a file path'}.")
            path = Path(value).expanduser()
            if not path.is_file():
                raise EngineConfigError(f"{where}: distilled: LoRA file {str(path)!r} does not exist.")
            paths.append(path)
        scale = distilled.get("scale", 1.0)
        if isinstance(scale, bool) or not isinstance(scale, (int, float)):
            raise EngineConfigError(f"{where}: distilled: scale = {scale!r} must be a number.")
        distilled = DistilledConfig(paths[0], paths[1], float(scale))
    return {"cfg_batch": None if cfg_batch == "auto" else cfg_batch, "compile": compile_mode,
            "fuse_qkv": fuse_qkv, "vae_tiling": None if vae_tiling == "auto" else vae_tiling,
            "quantize": quantize, "distilled": distilled}
