"""The FastAPI application: DashScope-compatible routes under /api/v1, signed files under /files."""

from __future__ import annotations

import os

from fastapi import FastAPI

from ..services import Services
from . import files, tasks, uploads
from .errors import install_error_handlers


def create_app(services: Services, *, bootstrap_key: str | None = None) -> FastAPI:
    app = FastAPI(title="wanserve", summary="Self-hosted, DashScope-compatible Wan video synthesis",
                  version="0.1.0")
    app.state.services = services
    app.state.bootstrap_key = bootstrap_key if bootstrap_key is not None else os.environ.get("WANSERVE_API_KEY")
    install_error_handlers(app)
    app.include_router(tasks.router, prefix="/api/v1")
    app.include_router(uploads.router, prefix="/api/v1")
    app.include_router(files.router)
    return app
