"""Generated sound with diffusers' StableAudioPipeline (e.g. stabilityai/stable-audio-open-1.0) from a
LOCAL checkpoint directory, never downloaded (`local_files_only`).

    [models."wan2.6-t2v"]
    engine = "wan"
    checkpoint = "/models/Wan2.2-TI2V-5B-Diffusers"

    [models."wan2.6-t2v".sound]         # or inline: sound = { engine = "stable_audio", checkpoint = ... }
    engine = "stable_audio"
    checkpoint = "/models/stable-audio-open-1.0"
    num_inference_steps = 50            # optional; also guidance_scale, negative_prompt, device, dtype

The prompt is the one the video was made from; with two or more shots each shot gets its own
generation (its text, its span, seed + shot index) and the pieces are concatenated, each faded in and
out over 10 ms. A piece longer than the checkpoint's window (47.55 s for Stable Audio Open) is made
in windows the same way. torch and diffusers are imported only when a model is configured with it;
the real checkpoint's scheduler (CosineDPMSolverMultistepScheduler) also needs `torchsde`.
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..base import EngineConfigError, Shot
from .base import fade_edges, fit_samples, segments, wav_bytes

DTYPES = ("float16", "bfloat16", "float32")


@dataclass(frozen=True)
class StableAudioConfig:
    model: str  # canonical public model name
    checkpoint: Path
    num_inference_steps: int = 100
    guidance_scale: float = 7.0
    negative_prompt: str | None = None
    device: str | None = None  # default: cuda if available, else cpu
    dtype: str | None = None  # default: float16 on CUDA, float32 on CPU

    KEYS = ("engine", "checkpoint", "num_inference_steps", "guidance_scale", "negative_prompt", "device",
            "dtype")

    @classmethod
    def parse(cls, model: str, table: dict[str, Any]) -> StableAudioConfig:
        where = f"[models.{model!r}] sound"
        unknown = sorted(set(table) - set(cls.KEYS))
        if unknown:
            raise EngineConfigError(f"{where}: unknown keys {unknown}; known keys: {list(cls.KEYS)}.")

        def bad(key: str, hint: str) -> EngineConfigError:
            return EngineConfigError(f"{where}: {key} = {table[key]!r} must be {hint}.")

        checkpoint = table.get("checkpoint")
        if not isinstance(checkpoint, str) or not checkpoint:
            raise EngineConfigError(f"{where}: checkpoint = \"/path/to/stable-audio-open-1.0\" (a local "
                                    "diffusers directory) is required.")
        path = Path(checkpoint).expanduser()
        if not (path / "model_index.json").is_file():
            raise EngineConfigError(f"{where}: checkpoint {str(path)!r} is not a diffusers pipeline "
                                    "directory (no model_index.json); download it once, e.g. "
                                    "`huggingface-cli download stabilityai/stable-audio-open-1.0 "
                                    f"--local-dir {path}`.")
        steps = table.get("num_inference_steps", 100)
        if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= 1000:
            raise bad("num_inference_steps", "an integer 1-1000")
        guidance = table.get("guidance_scale", 7.0)
        if isinstance(guidance, bool) or not isinstance(guidance, (int, float)) or guidance < 0:
            raise bad("guidance_scale", "a number >= 0")
        negative = table.get("negative_prompt")
        if negative is not None and not isinstance(negative, str):
            raise bad("negative_prompt", "a string")
        device = table.get("device")
        if device is not None and (not isinstance(device, str)
                                   or re.fullmatch(r"cpu|cuda(:\d+)?", device) is None):
            raise bad("device", "\"cuda\", \"cuda:N\" or \"cpu\"")
        dtype = table.get("dtype")
        if dtype is not None and dtype not in DTYPES:
            raise bad("dtype", f"one of {list(DTYPES)}")
        return cls(model, path, steps, float(guidance), negative or None, device, dtype)


class StableAudioSound:
    """One loaded StableAudioPipeline; models whose tables agree on checkpoint, device and dtype share it
    (their steps, guidance and negative prompt are their own)."""

    name = "stable_audio"

    def __init__(self, pipe: Any, device: Any, config: StableAudioConfig, lock: threading.Lock) -> None:
        self.pipe, self.device, self.config, self._lock = pipe, device, config, lock
        self.rate = int(pipe.vae.config.sampling_rate)
        # the longest piece one call makes (Stable Audio Open: 1024 latents * 2048 / 44100 Hz = 47.55 s)
        self.window = pipe.transformer.config.sample_size * pipe.vae.hop_length / self.rate

    def generate(self, prompt: str, seconds: float, seed: int, shots: Sequence[Shot] = ()) -> bytes:
        pieces = []
        k = 0
        for text, span in segments(prompt, seconds, shots):
            for w in range(max(1, math.ceil(span / self.window - 1e-9))):
                part = min(self.window, span - w * self.window)
                pieces.append(fade_edges(self._one(text, part, seed + k), self.rate))
                k += 1
        total = round(seconds * self.rate)
        return wav_bytes(fit_samples(np.concatenate(pieces, axis=1), total), self.rate)

    def _one(self, text: str, seconds: float, seed: int) -> np.ndarray:
        import torch

        n = round(seconds * self.rate)
        if n <= 0:
            return np.zeros((self.pipe.vae.config.audio_channels, 0), np.float32)
        generator = torch.Generator(device=self.device).manual_seed(seed)
        with self._lock, torch.inference_mode():
            audio = self.pipe(text, negative_prompt=self.config.negative_prompt, audio_end_in_s=seconds,
                              num_inference_steps=self.config.num_inference_steps,
                              guidance_scale=self.config.guidance_scale, generator=generator).audios
        return fit_samples(audio[0].float().cpu().numpy(), n)


def load(tables: dict[str, dict[str, Any]]) -> dict[str, StableAudioSound]:
    """The sound registry's loader: every model's table parsed, each distinct checkpoint loaded once."""
    configs = {model: StableAudioConfig.parse(model, table) for model, table in tables.items()}
    try:
        import torch
        from diffusers import StableAudioPipeline
    except ImportError as exc:
        raise EngineConfigError(f"models {sorted(tables)} use sound engine \"stable_audio\", which needs "
                                f"torch and diffusers: pip install -e '.[wan]' ({exc})") from exc
    loaded: dict[tuple, tuple[Any, Any, threading.Lock]] = {}
    out: dict[str, StableAudioSound] = {}
    for model, cfg in configs.items():
        if cfg.device is None:
            device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        else:
            device = torch.device(cfg.device)
            if device.type == "cuda" and not torch.cuda.is_available():
                raise EngineConfigError(f"[models.{model!r}] sound: device = {cfg.device!r} but no CUDA "
                                        "device is available to this process.")
        dtype = getattr(torch, cfg.dtype or ("float16" if device.type == "cuda" else "float32"))
        key = (str(cfg.checkpoint.resolve()), str(device), str(dtype))
        if key not in loaded:
            try:
                pipe = StableAudioPipeline.from_pretrained(cfg.checkpoint, torch_dtype=dtype,
                                                           local_files_only=True)
            except ImportError as exc:  # e.g. CosineDPMSolverMultistepScheduler without torchsde
                hint = "" if "pip install" in str(exc) else " (pip install torchsde)"
                raise EngineConfigError(f"[models.{model!r}] sound: cannot load {str(cfg.checkpoint)!r}: "
                                        f"{_one_line(exc)}{hint}") from exc
            except Exception as exc:  # noqa: BLE001 - any loading failure stops the start, named
                raise EngineConfigError(f"[models.{model!r}] sound: cannot load the StableAudioPipeline "
                                        f"checkpoint {str(cfg.checkpoint)!r}: {_one_line(exc)}") from exc
            pipe.set_progress_bar_config(disable=True)
            loaded[key] = (pipe.to(device), device, threading.Lock())
        pipe, device, lock = loaded[key]
        out[model] = StableAudioSound(pipe, device, cfg, lock)
    return out


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300] or type(exc).__name__
