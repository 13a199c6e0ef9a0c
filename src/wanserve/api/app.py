"""The FastAPI application: each API flavour's routes (DashScope's under /api/v1 and /files today),
the shared services, and one error mapping point that writes each flavour's own error body."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from ..services import Services
from . import console, dashscope, ops
from .errors import install_error_handlers
from .streams import EventStreams

FLAVOURS = (dashscope,)  # the first one writes errors for paths no flavour claims


def create_app(services: Services) -> FastAPI:
    app = FastAPI(title="wanserve", summary="Self-hosted, DashScope-compatible Wan video synthesis",
                  version="0.1.0", docs_url=None, redoc_url=None)  # console serves both offline
    app.state.services = services
    app.state.event_streams = EventStreams.from_settings(services.settings)  # counted per process
    for flavour in FLAVOURS:
        flavour.include(app)
    console.include(app)  # the web console at /, /docs and /redoc from packaged files
    ops.include(app)  # /metrics, /healthz, /readyz (no key, not in the schema) and the access log
    install_error_handlers(app, [(prefix, f.error_response) for f in FLAVOURS for prefix in f.PREFIXES])

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for flavour in FLAVOURS:
                components.update(flavour.openapi_components())
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
