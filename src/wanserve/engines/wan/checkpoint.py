"""Loading a diffusers-format Wan checkpoint: its `model_index.json`, its components one by one,
what it can generate, and the `LoadedCheckpoint` (pipelines, template adapters, lock) that models
configured with the same checkpoint and load settings share."""

from __future__ import annotations

import json
import logging
import re
import resource
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ...catalog.models import ModelSpec
from ..base import EngineConfigError
from .config import TemplateConfig, WanModelConfig
from .parallel import enable_context_parallel
from .speed import (
    check_fuse_qkv,
    check_quantize,
    compile_blocks,
    fuse_distilled,
    fuse_qkv,
    quantize_fp8,
    tune_vae,
    warm_up,
)

log = logging.getLogger("wanserve.engines.wan")

PIPELINE_CLASSES = ("WanPipeline", "WanImageToVideoPipeline")
LOCK_POLL_SECONDS = 0.5  # a task waiting for the pipeline still answers cancellation this often


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
        return Capabilities(frozenset({"i2v", "kf2v"}),
                            f"image-to-video, first or first+last frame ({experts})")
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
        common.update(transformer_2=components.get("transformer_2"),
                      boundary_ratio=index.get("boundary_ratio"), expand_timesteps=self.ti2v)
        self.pipelines: dict[str, Any] = {}
        if "t2v" in self.capabilities.kinds:
            self.pipelines["t2v"] = WanPipeline(**common)
        if self.capabilities.kinds & {"i2v", "kf2v"}:
            self.pipelines["i2v"] = WanImageToVideoPipeline(
                **common, image_encoder=components.get("image_encoder"),
                image_processor=components.get("image_processor"))
        for pipe in self.pipelines.values():
            pipe.set_progress_bar_config(disable=True)
        vae = components["vae"]
        patch = transformer.config.patch_size
        self.size_multiple = int(vae.config.scale_factor_spatial) * int(max(patch[1], patch[2]))
        self.temporal_scale = int(vae.config.scale_factor_temporal)
        self.default_native_fps = 24.0 if self.ti2v else 16.0
        self.parallel = "none"  # context parallelism over a multi-GPU worker's ranks (set by place)

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
            raise EngineConfigError(f"[models.{model!r}.templates.{template.name!r}]: lora_2 is only for "
                                    f"two-expert checkpoints (transformer_2); {self.path} has one "
                                    "transformer.")
        name = re.sub(r"\W", "_", f"{template.name}_{len(self.adapters)}")
        pipe = self.any_pipeline
        try:
            pipe.load_lora_weights(str(template.lora), adapter_name=name)
            if self.two_experts:
                pipe.load_lora_weights(str(template.lora_2 or template.lora), adapter_name=name,
                                       load_into_transformer_2=True)
        except Exception as exc:
            raise EngineConfigError(f"[models.{model!r}.templates.{template.name!r}]: cannot load the LoRA "
                                    f"adapter {str(template.lora)!r} into {self.path}: "
                                    f"{type(exc).__name__}: {exc}") from exc
        self.adapters[key] = name
        return name

    def place(self, attention_backend: str | None, cache: tuple | None, parallel: str = "none",
              where: str = "", speed: WanModelConfig | None = None) -> None:
        """Fused projections, attention backend, cache, then device placement or CPU offload (after the
        adapters are in), a multi-GPU worker's context parallelism (parallel.py), then fp8 quantization
        and regional compilation with its warm-up (`speed`: the speed keys of the model table, speed.py)."""
        transformers = [t for t in (self.components["transformer"], self.components.get("transformer_2"))
                        if t is not None]
        if speed is not None and speed.fuse_qkv:
            for t in transformers:
                check_fuse_qkv(t, where)
                fuse_qkv(t)
        if attention_backend:
            for t in transformers:
                t.set_attention_backend(attention_backend)
        if cache:
            import diffusers.hooks

            options = dict(cache)
            kind = options.pop("type")
            config_cls = getattr(diffusers.hooks, {"first_block": "FirstBlockCacheConfig",
                                                   "taylorseer": "TaylorSeerCacheConfig",
                                                   "mag": "MagCacheConfig"}[kind])
            for t in transformers:
                t.enable_cache(config_cls(**options))
        if self.offload == "none":
            for pipe in self.pipelines.values():
                pipe.to(self.device)
        elif self.offload == "group":
            self._group_offload()
        else:
            for pipe in self.pipelines.values():
                if self.offload == "model":
                    pipe.enable_model_cpu_offload(device=self.device)
                else:
                    pipe.enable_sequential_cpu_offload(device=self.device)
        self.parallel = enable_context_parallel(transformers, parallel, offload=self.offload, cache=cache,
                                                where=where)
        tune_vae(self.components["vae"], self.device)
        if speed is not None:
            self._speed_after_placement(transformers, speed)

    def _group_offload(self) -> None:
        """offload = "group": the transformer(s) and encoders stay in (pinned) CPU memory and are streamed to
        the GPU one block at a time on a side CUDA stream, overlapping the next block's copy with this
        block's compute; the VAE stays on the GPU."""
        from diffusers.hooks import apply_group_offloading

        for name in ("transformer", "transformer_2", "text_encoder", "image_encoder"):
            module = self.components.get(name)
            if module is not None:
                apply_group_offloading(module, onload_device=self.device, offload_device=torch.device("cpu"),
                                       offload_type="block_level", num_blocks_per_group=1, use_stream=True)
        self.components["vae"].to(self.device)

    def _speed_after_placement(self, transformers: list[Any], speed: WanModelConfig) -> None:
        if speed.quantize == "fp8":
            started = time.monotonic()
            layers = sum(quantize_fp8(t) for t in transformers)
            log.info("wan: %s: fp8 (torchao float8 dynamic) on %d linear layers in %.1f s", speed.model,
                     layers, time.monotonic() - started)
        if speed.compile != "none":
            backend = ""
            for t in transformers:
                backend = compile_blocks(t, speed.compile)
            if self.parallel != "none":  # ranks would have to warm up together: compiled at the first task
                log.info("wan: %s: regional compile (%s) happens at the first task", speed.model, backend)
                return
            cpu = self.device.type == "cpu"
            frames = speed.max_native_frames or (121 if self.ti2v else 81)
            spatial = self.size_multiple // 2
            guided = speed.guidance_scale is None or speed.guidance_scale > 1
            shape = {"latent_frames": 2 if cpu else (frames - 1) // self.temporal_scale + 1,
                     "latent_height": 8 if cpu else 480 // spatial // 2 * 2,
                     "latent_width": 8 if cpu else 832 // spatial // 2 * 2,
                     "batch": 2 if guided and speed.guidance_batching() else 1}
            seconds = sum(warm_up(t, self.device, self.dtype, expand_timesteps=self.ti2v, **shape)
                          for t in transformers)
            log.info("wan: %s: regional compile (%s backend) of %d transformer(s): warm-up %.1f s at %s",
                     speed.model, backend, len(transformers), seconds, shape)

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
        raise EngineConfigError(f"{where} is not a directory (it should be a diffusers-format Wan "
                                "checkpoint, e.g. Wan-AI/Wan2.1-T2V-1.3B-Diffusers).")
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
        "text_encoder": lambda sub: UMT5EncoderModel.from_pretrained(sub, torch_dtype=dtype,
                                                                     local_files_only=True),
        "vae": lambda sub: AutoencoderKLWan.from_pretrained(sub, torch_dtype=torch.float32,
                                                            local_files_only=True),
        "scheduler": scheduler_loader,
        "transformer": lambda sub: WanTransformer3DModel.from_pretrained(sub, torch_dtype=dtype,
                                                                         local_files_only=True),
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
            raise EngineConfigError(f"model {model!r}: checkpoint {str(path)!r}: component {name!r} is "
                                    f"listed in model_index.json but {str(sub)!r} is missing.")
        try:
            components[name] = load(sub)
        except EngineConfigError:
            raise
        except Exception as exc:
            raise EngineConfigError(f"model {model!r}: checkpoint {str(path)!r}: cannot load component "
                                    f"{name!r} from {str(sub)!r}: {type(exc).__name__}: {exc}") from exc
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
    check_quantize(cfg.quantize, device, f"[models.{cfg.model!r}]")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    index = read_model_index(cfg.model, cfg.checkpoint)
    components = load_components(cfg.model, cfg.checkpoint, index, dtype)
    loaded = LoadedCheckpoint(cfg.checkpoint, index, components, device, dtype, cfg.offload)
    if cfg.distilled is not None:
        d = cfg.distilled
        fuse_distilled(loaded.any_pipeline, loaded.two_experts, str(d.lora),
                       str(d.lora_2) if d.lora_2 else None, d.scale, f"[models.{cfg.model!r}]")
    for model, template in templates:
        loaded.load_template(model, template)
    try:
        loaded.place(cfg.attention_backend, cfg.cache, cfg.parallel, f"[models.{cfg.model!r}]", speed=cfg)
    except EngineConfigError:
        raise
    except Exception as exc:
        raise EngineConfigError(f"model {cfg.model!r}: checkpoint {str(cfg.checkpoint)!r}: cannot set up "
                                f"(device {device}, offload {cfg.offload}, attention_backend "
                                f"{cfg.attention_backend}, cache {cfg.cache}): "
                                f"{type(exc).__name__}: {exc}") from exc
    n_params = sum(p.numel() for t in (components["transformer"], components.get("transformer_2")) if t
                   for p in t.parameters())
    log.info("wan: loaded %s from %s in %.1f s: %s, %s, %s transformer parameters, %s on %s, "
             "offload %s, %d template adapter(s); %s", cfg.model, cfg.checkpoint, time.monotonic() - started,
             index["_class_name"], loaded.capabilities.description,
             f"{n_params / 1e9:.2f}B" if n_params >= 1e8 else f"{n_params / 1e6:.2f}M",
             str(dtype).removeprefix("torch."),
             device, cfg.offload, len(loaded.adapters), memory_report(device))
    return loaded

