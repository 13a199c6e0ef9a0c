"""File storage behind one protocol (`base.Storage`); `open_storage` picks the implementation."""

from __future__ import annotations

from pathlib import Path

from ..config import Settings
from .base import Storage
from .local import LocalStorage
from .signing import Signer

BACKENDS = ("local", "s3")


def open_storage(backend: str, data_dir: Path, signer: Signer, settings: Settings | None = None) -> Storage:
    """`settings` carries a backend's own settings (s3_*); "local" needs none."""
    if backend == "local":
        return LocalStorage(data_dir, signer)
    if backend == "s3":
        if settings is None:
            raise ValueError('storage = "s3" needs the s3_* settings; pass settings to open_storage.')
        try:
            from .s3 import open_s3  # boto3 is an optional dependency: imported only when chosen
        except ImportError as exc:
            raise ValueError(f'storage = "s3" needs boto3 ({exc}); install it with '
                             "pip install 'wanserve[s3]'.") from None
        return open_s3(settings, signer)
    raise ValueError(f"storage = {backend!r} is not a storage backend; use one of {list(BACKENDS)}.")
