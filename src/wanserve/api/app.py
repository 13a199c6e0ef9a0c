"""The FastAPI application: DashScope-compatible routes under /api/v1, signed files under /files."""

from __future__ import annotations

import os

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from ..services import Services
from . import files, tasks, uploads
from .errors import install_error_handlers
from .schemas import CreateBody


def create_app(services: Services, *, bootstrap_key: str | None = None) -> FastAPI:
    app = FastAPI(title="wanserve", summary="Self-hosted, DashScope-compatible Wan video synthesis",
                  version="0.1.0")
    app.state.services = services
    app.state.bootstrap_key = bootstrap_key if bootstrap_key is not None else os.environ.get("WANSERVE_API_KEY")
    install_error_handlers(app)
    app.include_router(tasks.router, prefix="/api/v1")
    app.include_router(uploads.router, prefix="/api/v1")
    app.include_router(files.router)

    def openapi() -> dict:
        """FastAPI's schema plus the create body, which the routes parse themselves (see schemas.py)."""
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
            body = CreateBody.model_json_schema(ref_template="#/components/schemas/{model}")
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            components.update(body.pop("$defs", {}))
            components["CreateBody"] = body
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
