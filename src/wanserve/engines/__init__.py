"""Engines behind one small interface (base.Engine). Which engine serves a public model is set per
model in the config file; every model not configured is served by the preview engine.

    [models."wanx2.1-t2v-turbo"]        # a public model name or one of its aliases
    engine = "wan"                      # a name in registry.LOADERS: "preview" (the default) or "wan"
    checkpoint = "/models/Wan2.1-T2V-1.3B-Diffusers"

Each engine is a package here (`preview`, `wan`) with one line in `registry.LOADERS`. An engine's
package is imported only when a model is configured with it (the `wan` engine needs torch and
diffusers, `pip install -e '.[wan]'`), and its models are loaded here, once per process: a broken
configuration or checkpoint fails the start (EngineConfigError), never the first task.
"""

from __future__ import annotations

from ..catalog.models import find_model
from .base import Engine, EngineConfigError, RenderJob
from .registry import DEFAULT_ENGINE, LOADERS, default_engine

__all__ = ["Engine", "EngineConfigError", "EngineSet", "RenderJob"]


class EngineSet:
    """The engines one worker process has loaded, by canonical public model name."""

    def __init__(self, models: dict[str, dict] | None = None) -> None:
        self._default: Engine | None = None
        self.by_model: dict[str, Engine] = {}
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
            tables.setdefault(engine, {})[spec.name] = cfg
        for engine, load in LOADERS.items():
            if engine in tables:
                self.by_model.update(load(tables[engine]))

    def for_model(self, model: str) -> Engine:
        spec = find_model(model)
        key = spec.name if spec is not None else model
        if key in self.by_model:
            return self.by_model[key]
        if self._default is None:
            self._default = default_engine()
        return self._default
