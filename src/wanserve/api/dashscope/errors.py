"""DashScope's error body, {"request_id", "code", "message"}, and the one place a code becomes an
HTTP status for this flavour."""

from __future__ import annotations

from fastapi import Request
from fastapi.responses import JSONResponse

from ...errors import Code
from ..deps import request_id

# Every code not listed is a 400.
STATUS_BY_CODE: dict[Code, int] = {
    Code.INVALID_API_KEY: 401,
    Code.ACCESS_DENIED: 403,
    Code.NOT_FOUND: 404,
    Code.FILE_EXISTS: 409,
    Code.IDEMPOTENT_MISMATCH: 409,
    Code.RATE_QUOTA: 429,
    Code.ALLOCATION_QUOTA: 429,
    Code.THROTTLING: 429,
    Code.INTERNAL: 500,
    Code.INTERNAL_ALGO: 500,
    Code.INTERNAL_TIMEOUT: 500,
}


def http_status(code: Code) -> int:
    return STATUS_BY_CODE.get(code, 400)


def error_response(request: Request, code: Code, message: str, status: int | None = None) -> JSONResponse:
    return JSONResponse({"request_id": request_id(request), "code": code, "message": message},
                        status_code=status or http_status(code))
