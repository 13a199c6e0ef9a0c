"""Result videos behind signed, expiring URLs, for storage that serves its own files (local disk)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from ...storage.base import chunks
from ..deps import services
from .schemas import errors

router = APIRouter()


@router.get("/files/results/{name}", response_class=StreamingResponse, responses=errors(403, 404))
def get_result(name: str, request: Request, Expires: str = "", Signature: str = "") -> StreamingResponse:
    fh = services(request).storage.open_signed_result(name, Expires, Signature)
    size = fh.seek(0, 2)
    fh.seek(0)
    return StreamingResponse(chunks(fh), media_type="video/mp4", headers={"Content-Length": str(size)})
