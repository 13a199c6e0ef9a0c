"""Result videos behind signed, expiring URLs: served from storage that keeps its own files (local disk),
redirected to storage that serves them itself (S3: a presigned URL, storage/s3.py).

Served files answer HEAD (the headers alone) and single byte ranges (`Range: bytes=a-b`, `a-`, `-n`: 206
with Content-Range; beyond the end: 416 with `Content-Range: bytes */size`), so players can seek and
downloaders resume. Other Range headers (several ranges, other units, bad syntax) are ignored, as RFC 9110
allows: the whole file, 200. HEAD checks the signature exactly as GET does."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import BinaryIO

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response, StreamingResponse

from ...storage.base import RedirectsResults, chunks
from ..deps import services
from .schemas import errors

router = APIRouter()


_RANGE_RESPONSES = {206: {"description": "The requested byte range (Range: bytes=a-b)"},
                   416: {"description": "The byte range lies beyond the file; Content-Range: bytes */size"}}


@router.head("/files/results/{name}", include_in_schema=False)
@router.get("/files/results/{name}", response_class=StreamingResponse,
            responses={**errors(403, 404), **_RANGE_RESPONSES})
def get_result(name: str, request: Request, Expires: str = "", Signature: str = "") -> Response:
    storage = services(request).storage
    if isinstance(storage, RedirectsResults):  # object storage: the client fetches the file from there
        location = storage.result_location(name, Expires, Signature, request.method)
        return RedirectResponse(location, status_code=307)
    fh = storage.open_signed_result(name, Expires, Signature)
    size = fh.seek(0, 2)
    fh.seek(0)
    headers = {"Accept-Ranges": "bytes"}
    wanted = byte_range(request.headers.get("range", ""), size)
    if wanted is None:
        status, start, length = 200, 0, size
    elif wanted == UNSATISFIABLE:
        fh.close()
        return Response(status_code=416, headers={**headers, "Content-Range": f"bytes */{size}"})
    else:
        status, start, length = 206, wanted[0], wanted[1] - wanted[0] + 1
        headers["Content-Range"] = f"bytes {wanted[0]}-{wanted[1]}/{size}"
    headers["Content-Length"] = str(length)
    if request.method == "HEAD":
        fh.close()
        return Response(status_code=status, media_type="video/mp4", headers=headers)
    if status == 200:
        return StreamingResponse(chunks(fh), media_type="video/mp4", headers=headers)
    fh.seek(start)
    return StreamingResponse(_span(fh, length), status_code=206, media_type="video/mp4", headers=headers)


UNSATISFIABLE = (-1, -1)
_BYTES = re.compile(r"bytes=(\d*)-(\d*)")


def byte_range(header: str, size: int) -> tuple[int, int] | None:
    """The inclusive (first, last) byte a `Range` header asks of a `size`-byte file; None to send the
    whole file (no header, or one this server ignores); UNSATISFIABLE when it starts past the end."""
    match = _BYTES.fullmatch(header.strip().replace(" ", ""))
    if not match or not (match.group(1) or match.group(2)):
        return None
    first, last = match.group(1), match.group(2)
    if not first:  # a suffix: the last n bytes
        n = int(last)
        return UNSATISFIABLE if n == 0 or size == 0 else (max(0, size - n), size - 1)
    if last and int(last) < int(first):
        return None  # invalid: ignored
    if int(first) >= size:
        return UNSATISFIABLE
    return int(first), min(int(last), size - 1) if last else size - 1


def _span(fh: BinaryIO, length: int, size: int = 1 << 20) -> Iterator[bytes]:
    """`length` bytes of `fh` from where it stands, in blocks; closes it."""
    with fh:
        while length > 0 and (block := fh.read(min(size, length))):
            length -= len(block)
            yield block
