"""Engines behind one small interface (base.Engine). Which engine serves a public model is set per
model in the config file; every model not configured is served by the preview engine."""

from __future__ import annotations

from .base import Engine, RenderJob

__all__ = ["Engine", "EngineSet", "RenderJob"]


class EngineSet:
    """The engines one worker process has loaded, by public model name."""

    def __init__(self, models: dict[str, dict] | None = None) -> None:
        self._default: Engine | None = None
        self.by_model: dict[str, Engine] = {}
        for name, cfg in (models or {}).items():
            engine = cfg.get("engine", "preview")
            if engine != "preview":
                raise ValueError(f"models.{name!r}: engine {engine!r} is not available in this build; "
                                 "use engine = \"preview\".")

    def for_model(self, model: str) -> Engine:
        if model in self.by_model:
            return self.by_model[model]
        if self._default is None:
            from .preview import PreviewEngine

            self._default = PreviewEngine()
        return self._default
