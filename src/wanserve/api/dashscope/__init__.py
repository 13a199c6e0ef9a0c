"""The DashScope flavour: Alibaba Cloud Model Studio's video-synthesis API, wire for wire.

What `api/app.py` needs of a flavour: `PREFIXES` (the paths whose errors it writes), `include(app)`,
`error_response` and `openapi_components()`.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from . import events, files, tasks, uploads
from .errors import error_response
from .schemas import CreateBody

PREFIXES = ("/api/v1", "/files")

__all__ = ["PREFIXES", "error_response", "include", "openapi_components"]


def include(app: FastAPI) -> None:
    app.include_router(tasks.router, prefix="/api/v1")
    app.include_router(events.router, prefix="/api/v1")
    app.include_router(uploads.router, prefix="/api/v1")
    app.include_router(files.router)


def openapi_components() -> dict[str, Any]:
    """The create body, which the routes parse themselves (see schemas.py), for /openapi.json."""
    body = CreateBody.model_json_schema(ref_template="#/components/schemas/{model}")
    return {**body.pop("$defs", {}), "CreateBody": body}
