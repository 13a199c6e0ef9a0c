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

Which models a worker process serves (and so claims) follows from the same table: the models it
configures, or every model when it is empty (all on the preview engine). `serve` (the `worker_models`
setting, `wanserve worker --models a,b`) narrows a process to some of them, and only their engines are
loaded, so worker processes sharing one config file on several GPUs each load what they serve.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from ..catalog.models import ModelSpec, canonical_name, find_model
from ..metrics import ENGINE_LOAD_SECONDS
from .base import Engine, EngineConfigError, RenderJob
from .registry import DEFAULT_ENGINE, LOADERS, default_engine
from .sound import SILENT, SoundEngine, load_sound_engines, parse_sound
from .sound.placeholder import PlaceholderChord

__all__ = ["ALL_MODELS", "Engine", "EngineConfigError", "EngineSet", "RenderJob", "SoundEngine"]

ALL_MODELS = "*"  # a worker serving every model registers and claims with it (= tasks.workers.ALL_MODELS)


class EngineSet:
    """The engines one worker process has loaded, by canonical public model name."""

    def __init__(self, models: dict[str, dict] | None = None, *, serve: Iterable[str] | None = None) -> None:
        """`models`: the [models] tables; `serve`: the names (or aliases) this process serves, a subset of
        them (of every model when `models` is empty); None or empty: all. Raises EngineConfigError."""
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
        self.configured: list[str] = list(seen)  # canonical names, in the file's order
        self.served: list[str] = (_narrow(self.configured, serve, "worker_models") or self.configured
                                  or [ALL_MODELS])
        if self.configured and self.served != self.configured:  # load only what this process serves
            needed = _with_continuations(self.served, tables)
            tables = {e: {m: t for m, t in ts.items() if m in needed} for e, ts in tables.items()}
            sound_tables = {m: t for m, t in sound_tables.items() if m in needed}
        for engine, load in LOADERS.items():
            if engine in tables:
                started = time.monotonic()
                self.by_model.update(load(tables[engine]))
                ENGINE_LOAD_SECONDS.labels(engine).observe(time.monotonic() - started)
        self.sound_by_model.update(load_sound_engines(sound_tables))

    def served_models(self, only: Iterable[str] | None = None) -> list[str]:
        """The canonical names this process's workers serve and claim (["*"]: every model), narrowed to
        `only` (names or aliases among them; None or empty: all). Raises EngineConfigError for a name
        that is not served."""
        if not only:
            return list(self.served)
        return _narrow([] if self.served == [ALL_MODELS] else self.served, only, "worker_models")

    def for_model(self, model: str) -> Engine:
        key = canonical_name(model)
        if key in self.by_model:
            return self.by_model[key]
        if self._default is None:
            started = time.monotonic()
            self._default = default_engine()
            ENGINE_LOAD_SECONDS.labels(DEFAULT_ENGINE).observe(time.monotonic() - started)
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


def _narrow(available: list[str], wanted: Iterable[str] | None, setting: str) -> list[str]:
    """The canonical names of `wanted` (names or aliases), each one of `available` (when `available` is
    empty, any public model); [] when nothing is wanted. One line per refusal, naming the setting."""
    names: list[str] = []
    for name in wanted or ():
        spec = find_model(name)
        if spec is None:
            raise EngineConfigError(f"{setting}: {name!r} is not a public model name or alias "
                                    "(see `wanserve models`).")
        if available and spec.name not in available:
            raise EngineConfigError(f"{setting}: {name!r} is not configured here (configured: "
                                    f"{', '.join(available)}); add a [models.\"{spec.name}\"] table or "
                                    "leave it out of the list.")
        if spec.name not in names:
            names.append(spec.name)
    return names


def _with_continuations(served: list[str], tables: dict[str, dict[str, dict]]) -> set[str]:
    """`served` and the models their tables continue long shots with (`continue_with`), which are loaded
    too (for the continuation only: this process does not claim their tasks)."""
    needed = set(served)
    for by_model in tables.values():
        for model, table in by_model.items():
            other = find_model(str(table.get("continue_with", ""))) if model in served else None
            if other is not None:
                needed.add(other.name)
    return needed


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
