"""Every error an HTTP request can end in, turned into (code, message, status) once, then written
as the body of the API flavour that owns the request's path (`Flavour.error_response`)."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from ..errors import Code, QuotaExceeded, ServiceError
from .bodies import wants_close

log = logging.getLogger("wanserve.api")

ErrorWriter = Callable[[Request, Code, str, int | None], JSONResponse]
"""A flavour's error body writer: (request, code, message, status or None for the flavour's own)."""


def retry_after(seconds: float) -> str:
    """A Retry-After value (RFC 9110: whole seconds): rounded up, at least 1."""
    return str(max(1, math.ceil(seconds)))


def install_error_handlers(app: FastAPI, writers: Sequence[tuple[str, ErrorWriter]]) -> None:
    """`writers`: (path prefix, writer) per flavour; the first is the default for other paths."""

    def write(request: Request, code: Code, message: str, status: int | None = None) -> JSONResponse:
        path = request.url.path
        writer = next((w for prefix, w in writers if path.startswith(prefix)), writers[0][1])
        response = writer(request, code, message, status)
        if wants_close(request):  # refused with its body unread: do not read the rest to reuse the connection
            response.headers["Connection"] = "close"
        return response

    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, exc: ServiceError) -> JSONResponse:
        response = write(request, exc.code, exc.message)
        if isinstance(exc, QuotaExceeded) and exc.retry_after_s is not None:
            response.headers["Retry-After"] = retry_after(exc.retry_after_s)
        return response

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p not in ("query", "body"))
        return write(request, Code.INVALID_PARAMETER, f"{where}: {first.get('msg', 'invalid value')}")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            return write(request, Code.NOT_FOUND,
                         f"Not found! No endpoint {request.method} {request.url.path}.")
        if exc.status_code == 405:
            return write(request, Code.INVALID_PARAMETER,
                         f"Method {request.method} is not allowed on {request.url.path}.", 405)
        return write(request, Code.INVALID_PARAMETER, str(exc.detail), exc.status_code)

    @app.exception_handler(ClientDisconnect)
    async def _client_gone(request: Request, exc: ClientDisconnect) -> JSONResponse:
        # request.stream()/form() found the client gone mid-body: its problem, not ours, so one line and no
        # traceback (handled here, the exception does not reach uvicorn, which would log a second one)
        client = request.client.host if request.client else "?"
        log.info("the connection from %s closed during %s %s before the request body was complete", client,
                 request.method, request.url.path)
        return write(request, Code.INVALID_PARAMETER, "The connection closed before the request body was "
                     "complete.")  # nobody reads it

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return write(request, Code.INTERNAL,
                     "An internal error has occured, please try again later or contact "
                     "service support.")
