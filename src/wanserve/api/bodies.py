"""Request bodies read with a cap, for every API flavour.

A body is counted while it arrives and refused as soon as it passes its cap (a Content-Length over the
cap is refused before anything is read), so a hostile client cannot make the server hold more than the
cap. A request refused with its body unread is answered with `Connection: close` (`close_connection`):
otherwise the HTTP server would keep reading, and discarding, the rest of the body to reuse the
connection.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Request

from ..errors import Code, ServiceError, invalid_parameter
from ..media.fetch import LargeDataUrl


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

    chunks: list[bytes] = []
    async for chunk in _capped_stream(request, max_bytes, what, hint):
        chunks.append(chunk)
    return b"".join(chunks)


class LargeDataUrls(dict[str, LargeDataUrl]):
    """The data: URLs `read_json_body` kept out of a body, by placeholder; `release()` once done with them."""

    size = 0  # the bytes of their pieces

    def release(self) -> None:
        """Drop them, and, after a large body, hand the freed memory back to the system: the allocator
        keeps the freed pieces of a body (below its mmap threshold) for reuse, so without this one large
        body, even a refused one, leaves the process its size larger."""
        self.clear()
        if self.size >= TRIM_AFTER_BYTES:
            trim_free_memory()


TRIM_AFTER_BYTES = 8 * 2**20


def trim_free_memory() -> None:
    """glibc's malloc_trim(0): free memory of every arena back to the system (nothing elsewhere)."""
    global _malloc_trim
    if _malloc_trim is None:
        try:
            import ctypes

            _malloc_trim = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):  # not glibc
            _malloc_trim = False
    if _malloc_trim:
        _malloc_trim(0)


_malloc_trim: Any = None


async def read_json_body(request: Request, max_bytes: int, what: str,
                         hint: str) -> tuple[bytes, LargeDataUrls]:
    """As `read_body`, for a JSON body whose bulk may be data: URLs: each string longer than
    LARGE_STRING_BYTES that is a base64 data: URL of plain characters (no escape) is kept out of the
    returned text, as the pieces it arrived in (`LargeDataUrl`), and the text names it by its
    placeholder (a string of its own); the second value maps each placeholder to it. The text is then
    small whatever the body's size, and nothing holds the body twice: parsing it, hashing it and storing
    the data: URLs as files cost about the body's size once (a join, a decoded string, the parsed value
    and the decoded bytes each held it again before)."""
    splitter = _Splitter()
    async for chunk in _capped_stream(request, max_bytes, what, hint):
        splitter.feed(chunk)
    return splitter.finish()


async def _capped_stream(request: Request, max_bytes: int, what: str, hint: str) -> AsyncIterator[bytes]:
    def too_large() -> ServiceError:
        close_connection(request)
        return ServiceError(Code.ENTITY_TOO_LARGE,
                            f"The {what} is larger than the limit of {_mb(max_bytes)} MB. {hint}")

    declared = declared_length(request)
    if declared is not None and declared > max_bytes:
        raise too_large()
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise too_large()
        if chunk:
            yield bytes(chunk)  # (bytes already: the same object)


LARGE_STRING_BYTES = 256 * 1024  # a data: URL longer than this is kept out of the parsed body
_MAX_HEAD = 256  # a data: URL's head (data:<mime>;base64,) is at most this long
_MAX_TRACKED_QUOTES = 20_000  # past this many strings, stop looking for large ones (bounded work per body)
_STRING_END = re.compile(rb'["\\]')
_RUN_END = re.compile(rb'[^\x20\x21\x23-\x5b\x5d-\x7e]')  # anything but printable ASCII less " and \\
_HEAD = re.compile(rb"data:[\x20-\x7e]{0,%d}?," % _MAX_HEAD, re.IGNORECASE)


class _Splitter:
    """Follows a JSON text's strings while it arrives (one regex search per quote or escape) and moves each
    large data: URL string out of it into a LargeDataUrl (see read_json_body)."""

    def __init__(self) -> None:
        self.text = bytearray()
        self.large = LargeDataUrls()
        self.in_string = False
        self.escaped = False  # a backslash ended the last piece
        self.start = 0  # in a string: where its first character is in self.text
        self.plain = True  # in a string: no escape, no control or non-ASCII character so far
        self.run: LargeDataUrl | None = None  # in a large data: URL: where its characters go
        self.quotes = 0

    def feed(self, chunk: bytes) -> None:
        if self.quotes > _MAX_TRACKED_QUOTES and self.run is None:
            self.text += chunk  # (an unusual body: parsed the ordinary way)
            return
        pos, end = 0, len(chunk)
        while pos < end:
            if self.run is not None:
                match = _RUN_END.search(chunk, pos)
                stop = end if match is None else match.start()
                if stop > pos:
                    self.run.add(chunk if (pos, stop) == (0, end) else chunk[pos:stop])
                if match is None:
                    return
                if chunk[stop] == 0x22:  # its closing quote
                    self._close_run()
                    self.text += b'"'
                    self.in_string = False
                    pos = stop + 1
                else:  # an escape or an unusual character: back into the text, the ordinary way
                    self._spill()
                    pos = stop
                continue
            if not self.in_string:
                quote = chunk.find(b'"', pos)
                if quote < 0:
                    self.text += chunk[pos:] if pos else chunk
                    return
                self.text += chunk[pos:quote + 1]
                self.in_string, self.start, self.plain, self.escaped = True, len(self.text), True, False
                self.quotes += 1
                pos = quote + 1
                continue
            if self.escaped:
                self.text += chunk[pos:pos + 1]
                self.escaped, pos = False, pos + 1
                continue
            match = _STRING_END.search(chunk, pos)
            stop = end if match is None else match.start()
            room = LARGE_STRING_BYTES + 1 - (len(self.text) - self.start)
            if self.plain and stop - pos > room:  # a long string within this piece: decide at its start
                self.text += chunk[pos:pos + room]
                pos += room
                self._maybe_large()
                continue
            self.text += chunk[pos:stop]
            if match is None:
                self._maybe_large()
                return
            self.text += chunk[stop:stop + 1]
            pos = stop + 1
            if chunk[stop] == 0x22:
                self.in_string = False
            else:
                self.plain, self.escaped = False, True

    def finish(self) -> tuple[bytes, LargeDataUrls]:
        if self.run is not None:  # the body ended inside it: the text stays unterminated, as the body was
            self._close_run()
        return bytes(self.text), self.large

    def _maybe_large(self) -> None:
        """In a string longer than LARGE_STRING_BYTES so far: a plain base64 data: URL moves out."""
        if not self.plain or len(self.text) - self.start <= LARGE_STRING_BYTES:
            return
        self.plain = False  # decided once per string
        view = memoryview(self.text)[self.start:]
        try:
            head = _HEAD.match(view)
            if head is None or not head.group().lower().rstrip(b", ").endswith(b";base64") \
                    or _RUN_END.search(view) is not None:
                return
            run = LargeDataUrl(head.group().decode("ascii"))
            run.add(bytes(view[head.end():]))
        finally:
            view.release()
        del self.text[self.start:]
        self.run = run

    def _close_run(self) -> None:
        assert self.run is not None
        placeholder = self.run.placeholder
        self.large[placeholder] = self.run
        self.large.size += sum(len(p) for p in self.run.pieces)
        self.text += placeholder.encode("ascii")
        self.run = None

    def _spill(self) -> None:
        """Put the run's characters back into the text (an escape or an unusual character in it)."""
        assert self.run is not None
        self.text += self.run.head.encode("ascii")
        pieces = self.run.pieces
        pieces.reverse()
        while pieces:
            self.text += pieces.pop()
        self.run = None


def _mb(n_bytes: int) -> str:
    return f"{n_bytes / 2**20:.1f}".rstrip("0").rstrip(".")
