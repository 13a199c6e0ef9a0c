"""What the rest of wanserve may ask of file storage: results, uploads, signed URLs, sweeping.

Callers name things (a task id, an upload key); only a `Storage` implementation knows where they
live. The one path that crosses this seam is a temp file the pipeline writes a result into
(`temp_result`) and hands back with `put_result`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import BinaryIO, Protocol


class Storage(Protocol):
    # -- results ----------------------------------------------------------------------------
    def temp_result(self, task_id: str) -> AbstractContextManager[Path]:
        """A fresh temp file path for `task_id`'s result, removed on exit if still there."""
        ...

    def put_result(self, task_id: str, source: Path) -> None:
        """Make `source` (a finished temp file) the task's result, atomically."""
        ...

    def result_url(self, task_id: str, base_url: str, expires_s: int) -> str:
        """A URL that grants GET on the result until `expires_s` (epoch seconds)."""
        ...

    def remove_result(self, task_id: str) -> None: ...

    def result_ids(self) -> Iterable[str]:
        """Task ids that have a stored result (for the orphan sweep)."""
        ...

    def partial_results(self) -> Iterable[tuple[str, str]]:
        """(task id, handle) of each unfinished temp result, e.g. left by a killed worker."""
        ...

    def remove_partial(self, handle: str) -> None: ...

    # -- uploads ----------------------------------------------------------------------------
    def save_upload(self, key: str, data: bytes) -> None: ...

    def upload_exists(self, key: str) -> bool: ...

    def read_upload(self, key: str, max_bytes: int) -> bytes:
        """Up to `max_bytes + 1` bytes of an upload (so the caller can tell it is too big);
        OSError if gone."""
        ...

    def remove_upload(self, key: str) -> None: ...


class SignedFiles(Protocol):
    """Storage that serves results itself through wanserve (signed `/files/...` URLs)."""

    def open_signed_result(self, name: str, expires: str, signature: str) -> BinaryIO: ...


def chunks(fh: BinaryIO, size: int = 1 << 20) -> Iterator[bytes]:
    with fh:
        while block := fh.read(size):
            yield block
