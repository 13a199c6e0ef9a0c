"""The FastAPI application: DashScope-compatible routes under /api/v1, signed files under /files."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from ..services import Services
from .dashscope import files, tasks, uploads
from .dashscope.errors import install_error_handlers
from .dashscope.schemas import CreateBody


def create_app(services: Services) -> FastAPI:
    app = FastAPI(title="wanserve", summary="Self-hosted, DashScope-compatible Wan video synthesis",
                  version="0.1.0")
    app.state.services = services
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
