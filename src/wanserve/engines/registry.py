"""Which engines exist: a table from the `engine = "..."` name of a [models."..."] table to the
loader that builds that engine's engines at start.

A loader takes the validated tables of every model configured with its engine ({canonical public
model name: table}) and returns {canonical public model name: Engine}; it raises EngineConfigError
for anything it cannot use. Loaders import their engine's package only when called, so an engine's
dependencies (torch and diffusers for "wan") are needed only when a model is configured with it.

Adding an engine: write its package under `wanserve.engines`, then add one line to `LOADERS`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .base import Engine, EngineConfigError

Tables = dict[str, dict[str, Any]]
Loader = Callable[[Tables], dict[str, Engine]]

DEFAULT_ENGINE = "preview"  # serves every model without a table, and tables without `engine = "..."`


def _preview(tables: Tables) -> dict[str, Engine]:
    from .preview import load

    return load(tables)


def _wan(tables: Tables) -> dict[str, Engine]:
    try:
        from .wan import load_wan_engines
    except ImportError as exc:
        raise EngineConfigError(
            f"models {sorted(tables)} use engine = \"wan\", which needs torch and diffusers: "
            f"pip install -e '.[wan]' ({exc})") from exc
    return load_wan_engines(tables)


LOADERS: dict[str, Loader] = {
    "preview": _preview,
    "wan": _wan,
}


def default_engine() -> Engine:
    """The engine of every model that is not configured."""
    from .preview import PreviewEngine

    return PreviewEngine()
