"""File storage behind one protocol (`base.Storage`); `open_storage` picks the implementation."""

from __future__ import annotations

from pathlib import Path

from .base import Storage
from .local import LocalStorage
from .signing import Signer

BACKENDS = ("local",)


def open_storage(backend: str, data_dir: Path, signer: Signer) -> Storage:
    if backend == "local":
        return LocalStorage(data_dir, signer)
    raise ValueError(f"storage = {backend!r} is not a storage backend; use one of {list(BACKENDS)}.")
