"""Temporary uploads: who may upload where (signed policies), what was uploaded (the `uploads`
table, owned here only), and reading an upload back for its own account while it lives.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable
from typing import Any, BinaryIO

from sqlalchemy import Engine, delete, insert, select

from ..errors import Code, ServiceError, access_denied
from ..media.fetch import OssResolver
from ..tasks.db import now_ms, read, write
from ..tasks.schema import uploads
from .base import Storage
from .signing import Signer, b64, unb64


class UploadStore:
    def __init__(self, db: Engine, storage: Storage, signer: Signer, *, ttl_seconds: int) -> None:
        self.db, self.storage, self.signer = db, storage, signer
        self.ttl_ms = ttl_seconds * 1000

    # -- policies (OSS PostObject-style credentials) --------------------------------------

    def make_policy(self, account_id: str, model: str, upload_dir: str, expires_s: int,
                    max_bytes: int) -> tuple[str, str]:
        doc = {"expiration": expires_s, "account": account_id, "model": model, "dir": upload_dir,
               "max_bytes": max_bytes}
        policy = b64(json.dumps(doc, separators=(",", ":")).encode())
        return policy, self.signer.sign(policy)

    def open_policy(self, policy: str, signature: str) -> dict[str, Any]:
        if not self.signer.verify(policy, signature):
            raise access_denied("The request signature we calculated does not match the signature you "
                                "provided; request a new policy with GET /api/v1/uploads.")
        doc = json.loads(unb64(policy))
        if doc["expiration"] < time.time():
            raise access_denied("Invalid according to Policy: Policy expired.")
        return doc

    # -- files ----------------------------------------------------------------------------

    def save(self, key: str, account_id: str, model: str, data: bytes | BinaryIO) -> None:
        """Store the file (bytes, or a binary file read from its start) and its row; never one without
        the other."""
        if self.storage.upload_exists(key):
            raise ServiceError(Code.FILE_EXISTS, "The object already exists; request a new policy.")
        if isinstance(data, bytes):
            size = len(data)
        else:
            size = data.seek(0, os.SEEK_END)
            data.seek(0)
        self.storage.save_upload(key, data)
        try:
            with write(self.db) as conn:
                conn.execute(insert(uploads).values(key=key, account_id=account_id, model=model,
                                                    size=size, created_ms=now_ms()))
        except BaseException:
            self.storage.remove_upload(key)
            raise

    def remove(self, keys: Iterable[str]) -> None:
        """Remove uploads now (rows, then files), e.g. a refused create's inline media."""
        keys = list(keys)
        if not keys:
            return
        with write(self.db) as conn:
            conn.execute(delete(uploads).where(uploads.c.key.in_(keys)))
        for key in keys:
            self.storage.remove_upload(key)

    def resolver(self, account_id: str) -> OssResolver:
        """oss:// keys resolve only to live uploads of `account_id`."""

        def resolve(key: str, max_bytes: int) -> bytes:
            query = select(uploads.c.key).where(uploads.c.key == key, uploads.c.account_id == account_id,
                                                uploads.c.created_ms > now_ms() - self.ttl_ms)
            with read(self.db) as conn:
                row = conn.execute(query).first()
            if row is None:
                raise ServiceError(Code.DATA_INSPECTION,
                                   f"Unable to download the media resource oss://{key}: it "
                                   "was not uploaded by this account or has expired (uploads live "
                                   f"{self.ttl_ms // 3_600_000} hours). Upload it again.")
            return self.storage.read_upload(key, max_bytes)

        return resolve

    def expire(self) -> list[str]:
        """Remove uploads past their lifetime (rows, then files); returns their keys."""
        with write(self.db) as conn:
            keys = list(conn.execute(delete(uploads).where(uploads.c.created_ms < now_ms() - self.ttl_ms)
                                     .returning(uploads.c.key)).scalars())
        for key in keys:
            self.storage.remove_upload(key)
        return keys
