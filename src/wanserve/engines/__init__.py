"""Engines behind one small interface (base.Engine). Which engine serves a public model is set per
model in the config file; every model not configured is served by the preview engine.

    [models."wanx2.1-t2v-turbo"]        # a public model name or one of its aliases
    engine = "wan"                      # "preview" (the default) or "wan"
    checkpoint = "/models/Wan2.1-T2V-1.3B-Diffusers"

The `wan` engine (torch + diffusers, `pip install -e '.[wan]'`) is imported only when a model is
configured with it, and its checkpoints are loaded here, once per process: a broken configuration
or checkpoint fails the start (EngineConfigError), never the first task.
"""

from __future__ import annotations

from ..catalog.models import find_model
from .base import Engine, RenderJob

__all__ = ["Engine", "EngineConfigError", "EngineSet", "RenderJob"]

ENGINES = ("preview", "wan")


class EngineConfigError(ValueError):
    """A [models."..."] table or its checkpoint cannot be used: raised at start (EngineSet), never at a task."""


class EngineSet:
    """The engines one worker process has loaded, by canonical public model name."""

    def __init__(self, models: dict[str, dict] | None = None) -> None:
        self._default: Engine | None = None
        self.by_model: dict[str, Engine] = {}
        wan_tables: dict[str, dict] = {}
        seen: dict[str, str] = {}
        for name, cfg in (models or {}).items():
            spec = find_model(name)
            if spec is None:
                raise EngineConfigError(f"models.{name!r}: not a public model name or alias (see `wanserve models`).")
            if spec.name in seen:
                raise EngineConfigError(f"models.{name!r} and models.{seen[spec.name]!r} both configure {spec.name}; "
                                        "keep one table per model.")
            seen[spec.name] = name
            if not isinstance(cfg, dict):
                raise EngineConfigError(f"models.{name!r} must be a table.")
            engine = cfg.get("engine", "preview")
            if engine not in ENGINES:
                raise EngineConfigError(f"models.{name!r}: engine {engine!r} is unknown; use one of {list(ENGINES)}.")
            if engine == "preview":
                extra = sorted(set(cfg) - {"engine"})
                if extra:
                    raise EngineConfigError(f"models.{name!r}: keys {extra} are not used by the preview engine.")
                continue
            wan_tables[spec.name] = cfg
        if wan_tables:
            try:
                from .wan import load_wan_engines
            except ImportError as exc:
                raise EngineConfigError(
                    f"models {sorted(wan_tables)} use engine = \"wan\", which needs torch and diffusers: "
                    f"pip install -e '.[wan]' ({exc})") from exc
            self.by_model.update(load_wan_engines(wan_tables))

    def for_model(self, model: str) -> Engine:
        spec = find_model(model)
        key = spec.name if spec is not None else model
        if key in self.by_model:
            return self.by_model[key]
        if self._default is None:
            from .preview import PreviewEngine

            self._default = PreviewEngine()
        return self._default
