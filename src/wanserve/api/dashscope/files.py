"""Result videos behind signed, expiring URLs (HMAC; see storage.local)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse

from .schemas import errors
from ..deps import services as _services

router = APIRouter()


@router.get("/files/results/{name}", response_class=FileResponse, responses=errors(403, 404))
def get_result(name: str, request: Request, Expires: str = "", Signature: str = "") -> FileResponse:
    path = _services(request).storage.check_signature(name, Expires, Signature)
    return FileResponse(path, media_type="video/mp4")
