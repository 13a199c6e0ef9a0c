"""Request bodies read with a cap, for every API flavour.

A body is counted while it arrives and refused as soon as it passes its cap (a Content-Length over the
cap is refused before anything is read), so a hostile client cannot make the server hold more than the
cap. A request refused with its body unread is answered with `Connection: close` (`close_connection`):
otherwise the HTTP server would keep reading, and discarding, the rest of the body to reuse the
connection.
"""

from __future__ import annotations

from fastapi import Request

from ..errors import Code, ServiceError, invalid_parameter


def close_connection(request: Request) -> None:
    """Answer this request with `Connection: close` (api/errors.py adds the header to error bodies)."""
    request.state.close_connection = True


def wants_close(request: Request) -> bool:
    return bool(getattr(request.state, "close_connection", False))


def declared_length(request: Request) -> int | None:
    """The Content-Length header as a number, None when absent (chunked); 400 when not a number."""
    value = request.headers.get("content-length")
    if value is None:
        return None
    value = value.strip()
    if not (value.isascii() and value.isdigit()):
        close_connection(request)
        raise invalid_parameter(f"Content-Length must be a number of bytes, got {value[:40]!r}.")
    return int(value)


async def read_body(request: Request, max_bytes: int, what: str, hint: str) -> bytes:
    """The whole body, at most `max_bytes` of it: EntityTooLarge, naming `what` and the limit and saying
    what to do instead (`hint`), as soon as the declared length or the bytes read pass the cap."""

    def too_large() -> ServiceError:
        close_connection(request)
        return ServiceError(Code.ENTITY_TOO_LARGE,
                            f"The {what} is larger than the limit of {_mb(max_bytes)} MB. {hint}")

    declared = declared_length(request)
    if declared is not None and declared > max_bytes:
        raise too_large()
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise too_large()
        chunks.append(chunk)
    return b"".join(chunks)


def _mb(n_bytes: int) -> str:
    return f"{n_bytes / 2**20:.1f}".rstrip("0").rstrip(".")
