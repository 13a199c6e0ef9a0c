"""Every non-2xx answer is a DashScope error body: {"request_id", "code", "message"}."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ...errors import Code, ServiceError
from ..deps import request_id

log = logging.getLogger("wanserve.api")


# The one place an error code becomes an HTTP status; every code not listed is a 400.
STATUS_BY_CODE: dict[Code, int] = {
    Code.INVALID_API_KEY: 401,
    Code.ACCESS_DENIED: 403,
    Code.NOT_FOUND: 404,
    Code.FILE_EXISTS: 409,
    Code.INTERNAL: 500,
    Code.INTERNAL_ALGO: 500,
}


def http_status(code: Code) -> int:
    return STATUS_BY_CODE.get(code, 400)


def error_response(request: Request, code: str, message: str, status: int) -> JSONResponse:
    return JSONResponse({"request_id": request_id(request), "code": code, "message": message}, status_code=status)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, exc: ServiceError) -> JSONResponse:
        return error_response(request, exc.code, exc.message, http_status(exc.code))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p not in ("query", "body"))
        return error_response(request, "InvalidParameter", f"{where}: {first.get('msg', 'invalid value')}", 400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            return error_response(request, "NotFound", f"Not found! No endpoint {request.method} {request.url.path}.",
                                  404)
        if exc.status_code == 405:
            return error_response(request, "InvalidParameter",
                                  f"Method {request.method} is not allowed on {request.url.path}.", 405)
        return error_response(request, "InvalidParameter", str(exc.detail), exc.status_code)

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(request, "InternalError", "An internal error has occured, please try again later "
                              "or contact service support.", 500)
