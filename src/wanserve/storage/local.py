"""Files on local disk, served by wanserve itself behind signed, expiring URLs.

Layout under the data dir: results/<task_id>.<attempt>.mp4 (one file per attempt that finished
encoding; the task's facts name the one published), partial/ (results being written; a killed
worker's leftovers are swept), uploads/<key>. A result stored before per-attempt files is
results/<task_id>.mp4 (attempt None) and is still served, swept and expired.
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from ..errors import ServiceError, invalid_parameter, not_found
from .links import check_result_link, result_link
from .signing import Signer

_SAFE_SEGMENT = re.compile(r"^[A-Za-z0-9._-]{1,200}$")


class LocalStorage:
    def __init__(self, root: Path, signer: Signer) -> None:
        self.root = root
        self.signer = signer
        for sub in ("results", "partial", "uploads"):
            (root / sub).mkdir(parents=True, exist_ok=True)

    # -- results ------------------------------------------------------------------------

    def _result(self, task_id: str, attempt: int | None) -> Path:
        return self.root / "results" / _result_name(task_id, attempt)

    @contextlib.contextmanager
    def temp_result(self, task_id: str) -> Iterator[Path]:
        path = self.root / "partial" / f"{task_id}.{uuid.uuid4().hex[:12]}.mp4"
        try:
            yield path
        finally:
            path.unlink(missing_ok=True)

    def put_result(self, task_id: str, attempt: int, source: Path) -> None:
        os.replace(source, self._result(task_id, attempt))

    def remove_result(self, task_id: str) -> None:
        self._result(task_id, None).unlink(missing_ok=True)
        for path in (self.root / "results").glob(f"{glob.escape(task_id)}.*.mp4"):
            if (_parse_result_name(path.name) or ("", None))[0] == task_id:
                path.unlink(missing_ok=True)

    def remove_attempt(self, task_id: str, attempt: int | None) -> None:
        self._result(task_id, attempt).unlink(missing_ok=True)

    def result_files(self) -> Iterator[tuple[str, int | None]]:
        for p in (self.root / "results").glob("*.mp4"):
            parsed = _parse_result_name(p.name)
            if parsed is not None:
                yield parsed

    def partial_results(self) -> Iterator[tuple[str, str]]:
        """Temp results, and the encoder's own temp files beside them (`.<name>.<hex>.part`)."""
        return self.temp_files()

    def temp_files(self) -> Iterator[tuple[str, str]]:
        for p in (self.root / "partial").iterdir():
            yield p.name.lstrip(".").split(".", 1)[0], p.name

    def remove_partial(self, handle: str) -> None:
        if _SAFE_SEGMENT.match(handle):
            (self.root / "partial" / handle).unlink(missing_ok=True)

    # -- signed result URLs -------------------------------------------------------------

    def result_url(self, task_id: str, attempt: int | None, base_url: str, expires_s: int) -> str:
        return result_link(self.signer, base_url, _result_name(task_id, attempt), expires_s)

    def open_signed_result(self, name: str, expires: str, signature: str) -> BinaryIO:
        """The file a signed URL grants, or AccessDenied if tampered or expired, NotFound if gone."""
        check_result_link(self.signer, name, expires, signature)
        try:
            if not _SAFE_SEGMENT.match(name):
                raise FileNotFoundError(name)
            return (self.root / "results" / name).open("rb")
        except (FileNotFoundError, IsADirectoryError):
            raise not_found("Not found! The video has been removed.") from None

    # -- uploads ------------------------------------------------------------------------

    def _upload(self, key: str) -> Path:
        parts = key.split("/")
        if not all(_SAFE_SEGMENT.match(p) and p not in (".", "..") for p in parts):
            raise invalid_parameter(f"Invalid upload key {key!r}: "
                                    "use plain file names (letters, digits, '.', '_', '-').")
        return self.root / "uploads" / Path(*parts)

    def save_upload(self, key: str, data: bytes | BinaryIO) -> None:
        path = self._upload(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + f".{uuid.uuid4().hex[:8]}.part")
        try:
            if isinstance(data, bytes):
                tmp.write_bytes(data)
            else:
                with tmp.open("wb") as out:
                    shutil.copyfileobj(data, out, 1 << 20)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    def upload_exists(self, key: str) -> bool:
        return self._upload(key).exists()

    def read_upload(self, key: str, max_bytes: int) -> bytes:
        with self._upload(key).open("rb") as fh:  # OSError if gone: the fetcher names the field
            return fh.read(max_bytes + 1)

    def remove_upload(self, key: str) -> None:
        with contextlib.suppress(ServiceError):
            self._upload(key).unlink(missing_ok=True)

    # -- health -------------------------------------------------------------------------

    def ping(self) -> None:
        """Each folder is there and writable, and a file can really be written (a read-only remount or a
        vanished volume shows here, not in the next task): a nameless temp file, gone on close."""
        for sub in ("results", "partial", "uploads"):
            folder = self.root / sub
            if not folder.is_dir():
                raise FileNotFoundError(f"{folder} is missing")
            if not os.access(folder, os.W_OK | os.X_OK):
                raise PermissionError(f"{folder} is not writable")
        with tempfile.TemporaryFile(dir=self.root / "partial") as fh:
            fh.write(b"ping")
            fh.flush()


def _result_name(task_id: str, attempt: int | None) -> str:
    return f"{task_id}.mp4" if attempt is None else f"{task_id}.{int(attempt)}.mp4"


def _parse_result_name(name: str) -> tuple[str, int | None] | None:
    """(task id, attempt) of a result file name (task ids are UUIDs: no dots); None if not one."""
    if not name.endswith(".mp4") or name.startswith("."):
        return None
    head, dot, tail = name[:-len(".mp4")].rpartition(".")
    if not dot:
        return tail, None
    return (head, int(tail)) if tail.isascii() and tail.isdigit() else None
