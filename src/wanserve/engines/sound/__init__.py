"""Sound engines: what makes the generated track of a model whose catalog row promises sound.

Configured per model, in its [models."..."] table, with one key:

    sound = "silent"                                       # no generated track
    sound = { engine = "stable_audio", checkpoint = "/models/stable-audio-open-1.0" }  # and options

Without a `sound` key, a model served by the preview engine gets the placeholder chord
(placeholder.PlaceholderChord); a model served by any other engine that promises sound is refused at
start (EngineSet), so a real engine never silently ships a silent or chord track. The caller's own
audio (audio_url, wan2.7 driving_audio) always wins over generated sound.

Adding a sound engine: a module here with a loader ({model: options table} -> {model: SoundEngine},
raising EngineConfigError) and one line in `LOADERS`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..base import EngineConfigError
from .base import SoundEngine

__all__ = ["LOADERS", "SILENT", "SoundEngine", "load_sound_engines", "parse_sound"]

SILENT = "silent"
SoundLoader = Callable[[dict[str, dict[str, Any]]], dict[str, SoundEngine]]


def _stable_audio(tables: dict[str, dict[str, Any]]) -> dict[str, SoundEngine]:
    from .stable_audio import load

    return dict(load(tables))


LOADERS: dict[str, SoundLoader] = {
    "stable_audio": _stable_audio,
}


def parse_sound(name: str, value: Any) -> str | dict[str, Any]:
    """A `sound` value checked: "silent" or a table naming a sound engine in LOADERS."""
    example = '{ engine = "stable_audio", checkpoint = "/models/stable-audio-open-1.0" }'
    if value == SILENT:
        return SILENT
    if not isinstance(value, dict):
        raise EngineConfigError(f"[models.{name!r}]: sound = {value!r} must be \"silent\" or a table "
                                f"such as {example}.")
    engine = value.get("engine")
    if engine not in LOADERS:
        raise EngineConfigError(f"[models.{name!r}]: sound engine {engine!r} is unknown; use one of "
                                f"{list(LOADERS)} (sound = {example}) or sound = \"silent\".")
    return value


def load_sound_engines(tables: dict[str, dict[str, Any]]) -> dict[str, SoundEngine]:
    """{canonical model name: checked sound table} -> {model: loaded SoundEngine}, engine by engine."""
    by_engine: dict[str, dict[str, dict[str, Any]]] = {}
    for model, table in tables.items():
        by_engine.setdefault(table["engine"], {})[model] = table
    out: dict[str, SoundEngine] = {}
    for engine, load in LOADERS.items():
        if engine in by_engine:
            out.update(load(by_engine[engine]))
    return out
