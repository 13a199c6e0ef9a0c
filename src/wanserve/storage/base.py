"""What the rest of wanserve may ask of file storage: results, uploads, signed URLs, sweeping.

Callers name things (a task id, an upload key); only a `Storage` implementation knows where they
live. The one path that crosses this seam is a temp file the pipeline writes a result into
(`temp_result`) and hands back with `put_result`.

Each attempt of a task stores its result under its own name (task id and attempt number), and the
facts the guarded `succeed()` stores name the attempt that won (`published_attempt`). So a worker
that lost its task at the last moment removes only its own file (`remove_attempt`), never the
result of the worker that took the task over.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, BinaryIO, Protocol, runtime_checkable

RESULT_ATTEMPT = "attempt"  # the key, in a SUCCEEDED task's facts, of the attempt whose file is the result


def published_attempt(result: Mapping[str, Any]) -> int | None:
    """The attempt whose result file a SUCCEEDED task's facts publish. None: the task succeeded before
    results were stored per attempt, and its one file has the task's plain name."""
    attempt = result.get(RESULT_ATTEMPT)
    return int(attempt) if attempt is not None else None


class Storage(Protocol):
    # -- results ----------------------------------------------------------------------------
    def temp_result(self, task_id: str) -> AbstractContextManager[Path]:
        """A fresh temp file path for `task_id`'s result, removed on exit if still there."""
        ...

    def put_result(self, task_id: str, attempt: int, source: Path) -> None:
        """Store `source` (a finished temp file) as attempt `attempt`'s result file, atomically. It becomes
        the task's result when succeed() stores facts naming that attempt."""
        ...

    def result_url(self, task_id: str, attempt: int | None, base_url: str, expires_s: int) -> str:
        """A URL that grants GET on attempt `attempt`'s result file (`published_attempt`) until
        `expires_s` (epoch seconds)."""
        ...

    def remove_result(self, task_id: str) -> None:
        """Remove every result file of the task, whichever attempt wrote it (the task expired)."""
        ...

    def remove_attempt(self, task_id: str, attempt: int | None) -> None:
        """Remove one attempt's result file, and no other (None: the file stored before per-attempt
        files)."""
        ...

    def result_files(self) -> Iterable[tuple[str, int | None]]:
        """(task id, attempt) of each stored result file (for the orphan sweep)."""
        ...

    def partial_results(self) -> Iterable[tuple[str, str]]:
        """(task id, handle) of each unfinished temp result, e.g. left by a killed worker."""
        ...

    def remove_partial(self, handle: str) -> None: ...

    def temp_files(self) -> Iterable[tuple[str, str]]:
        """(task id, handle) of each temp file in this process's own data folder (`<data_dir>/partial/`: temp
        results and the encoder's `.part` files), the part of `partial_results` a worker sweeps for itself
        (nothing remote); removed with `remove_partial`."""
        ...

    # -- uploads ----------------------------------------------------------------------------
    def save_upload(self, key: str, data: bytes | BinaryIO) -> None:
        """Store an upload atomically: bytes, or a binary file copied from its current position."""
        ...

    def upload_exists(self, key: str) -> bool: ...

    def read_upload(self, key: str, max_bytes: int) -> bytes:
        """Up to `max_bytes + 1` bytes of an upload (so the caller can tell it is too big);
        OSError if gone."""
        ...

    def remove_upload(self, key: str) -> None: ...

    # -- health -----------------------------------------------------------------------------
    def ping(self) -> None:
        """Raise (OSError, or the backend's own error) if results and uploads cannot be stored now, saying
        why. `/readyz` calls it every few seconds: cheap, leaving nothing behind."""
        ...


@runtime_checkable
class RedirectsResults(Protocol):
    """A storage whose result files live elsewhere (an object store): wanserve's signed result link is
    answered with a redirect to the file (`result_location`), not with the file's bytes."""

    def result_location(self, name: str, expires: str, signature: str, method: str = "GET") -> str:
        """The URL to send a client following a signed result link to, for `method` (GET or HEAD);
        AccessDenied if the link is forged or expired, NotFound if the file is gone."""
        ...


def chunks(fh: BinaryIO, size: int = 1 << 20) -> Iterator[bytes]:
    with fh:
        while block := fh.read(size):
            yield block
