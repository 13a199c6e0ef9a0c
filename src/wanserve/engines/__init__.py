"""Engines behind one small interface (base.Engine). Which engine serves a public model is set per
model in the config file; every model not configured is served by the preview engine.

    [models."wanx2.1-t2v-turbo"]        # a public model name or one of its aliases
    engine = "wan"                      # a name in registry.LOADERS: "preview" (the default) or "wan"
    checkpoint = "/models/Wan2.1-T2V-1.3B-Diffusers"

Each engine is a package here (`preview`, `wan`) with one line in `registry.LOADERS`. An engine's
package is imported only when a model is configured with it (the `wan` engine needs torch and
diffusers, `pip install -e '.[wan]'`), and its models are loaded here, once per process: a broken
configuration or checkpoint fails the start (EngineConfigError), never the first task.

A table's `sound` key (`sound = "silent"` or `sound = { engine = "stable_audio", ... }`) picks the
model's sound engine (engines.sound); EngineSet strips it before the video engine sees the table.
"""

from __future__ import annotations

from ..catalog.models import ModelSpec, find_model
from .base import Engine, EngineConfigError, RenderJob
from .registry import DEFAULT_ENGINE, LOADERS, default_engine
from .sound import SILENT, SoundEngine, load_sound_engines, parse_sound
from .sound.placeholder import PlaceholderChord

__all__ = ["Engine", "EngineConfigError", "EngineSet", "RenderJob", "SoundEngine"]


class EngineSet:
    """The engines one worker process has loaded, by canonical public model name."""

    def __init__(self, models: dict[str, dict] | None = None) -> None:
        self._default: Engine | None = None
        self.by_model: dict[str, Engine] = {}
        self.sound_by_model: dict[str, SoundEngine] = {}  # models with generated sound, configured
        sound_tables: dict[str, dict] = {}  # {canonical model name: its `sound` table}
        self._silent: set[str] = set()  # models whose table says sound = "silent"
        tables: dict[str, dict[str, dict]] = {}  # engine name -> {canonical model name: table}
        seen: dict[str, str] = {}
        for name, cfg in (models or {}).items():
            spec = find_model(name)
            if spec is None:
                raise EngineConfigError(f"models.{name!r}: not a public model name or alias "
                                        "(see `wanserve models`).")
            if spec.name in seen:
                raise EngineConfigError(f"models.{name!r} and models.{seen[spec.name]!r} both configure "
                                        f"{spec.name}; keep one table per model.")
            seen[spec.name] = name
            if not isinstance(cfg, dict):
                raise EngineConfigError(f"models.{name!r} must be a table.")
            engine = cfg.get("engine", DEFAULT_ENGINE)
            if not isinstance(engine, str) or engine not in LOADERS:
                raise EngineConfigError(f"models.{name!r}: engine {engine!r} is unknown; "
                                        f"use one of {list(LOADERS)}.")
            sound = parse_sound(name, cfg["sound"]) if "sound" in cfg else None
            _check_sound(name, spec, engine, sound)
            if isinstance(sound, dict):
                sound_tables[spec.name] = sound
            elif sound == SILENT:
                self._silent.add(spec.name)
            tables.setdefault(engine, {})[spec.name] = {k: v for k, v in cfg.items() if k != "sound"}
        for engine, load in LOADERS.items():
            if engine in tables:
                self.by_model.update(load(tables[engine]))
        self.sound_by_model.update(load_sound_engines(sound_tables))

    def for_model(self, model: str) -> Engine:
        spec = find_model(model)
        key = spec.name if spec is not None else model
        if key in self.by_model:
            return self.by_model[key]
        if self._default is None:
            self._default = default_engine()
        return self._default

    def sound_for_model(self, model: str) -> SoundEngine | None:
        """What makes `model`'s generated sound: its configured sound engine; for a model served by the
        preview engine (configured or not) that promises sound, the placeholder chord; else None
        (silent)."""
        spec = find_model(model)
        if spec is None or spec.audio == "silent":
            return None
        if spec.name in self.sound_by_model:
            return self.sound_by_model[spec.name]
        if spec.name in self._silent or self.for_model(spec.name).name != "preview":
            return None  # a real engine without a sound engine was refused at start unless silent
        return PlaceholderChord()


def _check_sound(name: str, spec: ModelSpec, engine: str, sound: str | dict | None) -> None:
    """Refuse, at start, a model whose sound cannot be what its table says or what its catalog row
    promises: a real engine with no sound engine and no explicit `sound = "silent"`."""
    promises = spec.audio != "silent"
    if isinstance(sound, dict) and not promises:
        raise EngineConfigError(f"[models.{name!r}]: {spec.name} makes silent videos (catalog audio = "
                                "\"silent\"); remove its `sound` key.")
    if sound is None and promises and engine != "preview":
        raise EngineConfigError(
            f"[models.{name!r}]: {spec.name} promises generated sound (catalog audio = {spec.audio!r}) and "
            f"engine \"{engine}\" makes none; configure a sound engine, e.g. sound = {{ engine = "
            "\"stable_audio\", checkpoint = \"/models/stable-audio-open-1.0\" }, or accept silent videos "
            "with sound = \"silent\" (docs/wan-engine.md, Sound).")
