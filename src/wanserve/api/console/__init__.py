"""The web console at `/` and the API documentation at `/docs` and `/redoc`, all from files in this
package (`static/`; the documentation viewers in `static/vendor/`), so both work with no network.

The console is plain HTML, CSS and JavaScript with no build step: it signs in with an API key, draws a
form per model from `GET /console/catalog.json` (built here from the catalog, so a new `ModelSpec` row
gets its form with no change to the page), and talks to the public DashScope API like any other client.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles

from ...catalog.models import MODELS, NEG_PROMPT_MAX, ModelSpec

STATIC = Path(__file__).parent / "static"
STATIC_PATH = "/console/static"

__all__ = ["catalog", "include"]


def include(app: FastAPI) -> None:
    """Mount the console's files and add `/`, `/console/catalog.json`, `/docs` and `/redoc`. The app must
    be created with `docs_url=None, redoc_url=None`, so FastAPI's CDN-loading pages are not there."""
    app.mount(STATIC_PATH, StaticFiles(directory=STATIC), name="console-static")

    @app.get("/", include_in_schema=False)
    def console_page() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    @app.get("/console/catalog.json", include_in_schema=False)
    def console_catalog() -> dict[str, Any]:
        return catalog()

    @app.get("/docs", include_in_schema=False)
    def swagger_ui(request: Request) -> HTMLResponse:
        schema, vendor = _docs_urls(app, request)
        return get_swagger_ui_html(
            openapi_url=schema, title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{vendor}/swagger-ui-bundle.js", swagger_css_url=f"{vendor}/swagger-ui.css",
            swagger_favicon_url=f"{vendor}/swagger-ui-favicon-32x32.png", oauth2_redirect_url=None,
            swagger_ui_parameters={"validatorUrl": None},  # the default validator is an external host
        )

    @app.get("/redoc", include_in_schema=False)
    def redoc(request: Request) -> HTMLResponse:
        schema, vendor = _docs_urls(app, request)
        return get_redoc_html(
            openapi_url=schema, title=f"{app.title} - ReDoc", redoc_js_url=f"{vendor}/redoc.standalone.js",
            redoc_favicon_url=f"{vendor}/swagger-ui-favicon-32x32.png", with_google_fonts=False,
        )


def _docs_urls(app: FastAPI, request: Request) -> tuple[str, str]:
    """The OpenAPI schema's URL and the vendored viewers' folder, under the prefix the app is served at (a
    proxy's root_path), so the documentation pages work behind it."""
    root = str(request.scope.get("root_path", "")).rstrip("/")
    return root + (app.openapi_url or "/openapi.json"), f"{root}{STATIC_PATH}/vendor"


def catalog() -> dict[str, Any]:
    """What the console needs to draw each model's form: the catalog's choices and defaults, and which
    inputs the model's DashScope body takes (the same rules `api/dashscope/normalize.py` applies)."""
    return {"negative_prompt_max": NEG_PROMPT_MAX, "models": [_model(m) for m in MODELS]}


def _model(spec: ModelSpec) -> dict[str, Any]:
    return {
        "name": spec.name,
        "aliases": list(spec.aliases),
        "kind": spec.kind,
        "endpoint": spec.endpoint,
        "path": f"/api/v1/services/aigc/{spec.endpoint}/video-synthesis",
        # text-to-video picks an exact size; the other kinds a resolution tier (the size follows the image)
        "sizes": list(spec.sizes) if spec.kind == "t2v" else [],
        "default_size": spec.default_size,
        "resolutions": list(spec.resolutions),
        "default_resolution": spec.default_resolution,
        "durations": list(spec.durations),
        "default_duration": spec.default_duration,
        "templates": list(spec.templates),
        "audio": spec.audio,
        "prompt_max": spec.prompt_max,
        "prompt_required": spec.kind in ("t2v", "i2v"),  # unless a template is chosen
        "inputs": _inputs(spec),
        "audio_switch": spec.audio == "auto_switch",  # parameters.audio=false for a silent video
        "shot_type": spec.multi_shot,
        "prompt_extend": True,
        "returns_actual_prompt": spec.returns_actual_prompt,
    }


def _inputs(spec: ModelSpec) -> list[dict[str, Any]]:
    """The media a model takes, each as where it goes in the body (`input.<field>`, or an `input.media`
    item of `type` for wan2.7), what kind of file it is, and whether the body needs it."""
    def item(field: str, accept: str, label: str, required: bool, media_type: str | None = None) -> dict:
        return {"field": field, "accept": accept, "label": label, "required": required,
                "media_type": media_type}

    audio = [item("audio_url", "audio", "Audio (optional; replaces generated sound)", False)] \
        if spec.accepts_audio_url else []
    if spec.kind == "i2v":
        return [item("img_url", "image", "First frame", True), *audio]
    if spec.kind == "kf2v":
        return [item("first_frame_url", "image", "First frame", True),
                item("last_frame_url", "image", "Last frame (not with a template)", True)]
    if spec.kind == "wan27":
        return [item("media", "image", "First frame", False, "first_frame"),
                item("media", "image", "Last frame", False, "last_frame"),
                item("media", "audio", "Driving audio", False, "driving_audio"),
                item("media", "video", "First clip (continue a video)", False, "first_clip")]
    return audio
