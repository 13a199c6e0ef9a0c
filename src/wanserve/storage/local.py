"""Files on local disk, and the signed URLs and upload policies that give access to them.

Results live at <data_dir>/results/<task_id>.mp4 and uploads at <data_dir>/uploads/<key>. Both
the API and the workers reach them through this class, so moving to S3 later means one more
implementation of the same few methods.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import time
from pathlib import Path
from typing import Any

from ..errors import Code, ServiceError

_SAFE_SEGMENT = re.compile(r"^[A-Za-z0-9._-]{1,200}$")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _same(given: str, expected: str) -> bool:
    """Constant-time comparison that also accepts non-ASCII input (which never matches)."""
    return hmac.compare_digest(given.encode("utf-8", "surrogatepass"), expected.encode())


class LocalStorage:
    def __init__(self, root: Path, secret: bytes) -> None:
        self.root = root
        self.secret = secret
        (root / "results").mkdir(parents=True, exist_ok=True)
        (root / "uploads").mkdir(parents=True, exist_ok=True)

    # -- results ------------------------------------------------------------------------

    def result_path(self, task_id: str) -> Path:
        return self.root / "results" / f"{task_id}.mp4"

    def remove_result(self, task_id: str) -> None:
        self.result_path(task_id).unlink(missing_ok=True)

    # -- signed URLs --------------------------------------------------------------------

    def _sign(self, text: str) -> str:
        return _b64(hmac.new(self.secret, text.encode(), hashlib.sha256).digest())

    def _sign_result(self, name: str, expires: str) -> str:
        return self._sign(f"results/{name}\n{expires}")

    def signed_query(self, name: str, expires_s: int) -> str:
        """Query string granting GET on results/<name> until `expires_s` (epoch seconds)."""
        return f"Expires={expires_s}&Signature={self._sign_result(name, str(expires_s))}"

    def check_signature(self, name: str, expires: str, signature: str) -> Path:
        """The file a signed URL grants, or ServiceError(403) if tampered, expired or gone."""
        if not (expires.isascii() and expires.isdigit()
                and _same(signature, self._sign_result(name, expires))):
            raise ServiceError(Code.ACCESS_DENIED, "The URL signature does not match; use the video_url exactly "
                               "as the task query returned it.")
        if int(expires) < time.time():
            raise ServiceError(Code.ACCESS_DENIED, "Request has expired: video URLs are valid for 24 hours after "
                               "the task ends.")
        path = self.root / "results" / name
        if not _SAFE_SEGMENT.match(name) or not path.is_file():
            raise ServiceError(Code.NOT_FOUND, "Not found! The video has been removed.")
        return path

    # -- uploads (OSS PostObject-style) ---------------------------------------------------

    def make_policy(self, account_id: str, model: str, upload_dir: str, expires_s: int,
                    max_bytes: int) -> tuple[str, str]:
        doc = {"expiration": expires_s, "account": account_id, "model": model, "dir": upload_dir,
               "max_bytes": max_bytes}
        policy = _b64(json.dumps(doc, separators=(",", ":")).encode())
        return policy, self._sign(policy)

    def open_policy(self, policy: str, signature: str) -> dict[str, Any]:
        if not _same(signature, self._sign(policy)):
            raise ServiceError(Code.ACCESS_DENIED, "The request signature we calculated does not match the "
                               "signature you provided; request a new policy with GET /api/v1/uploads.")
        doc = json.loads(base64.urlsafe_b64decode(policy + "=" * (-len(policy) % 4)))
        if doc["expiration"] < time.time():
            raise ServiceError(Code.ACCESS_DENIED, "Invalid according to Policy: Policy expired.")
        return doc

    def upload_path(self, key: str) -> Path:
        parts = key.split("/")
        if not all(_SAFE_SEGMENT.match(p) and p not in (".", "..") for p in parts):
            raise ServiceError(Code.INVALID_PARAMETER, f"Invalid upload key {key!r}: use plain file names "
                               "(letters, digits, '.', '_', '-').")
        return self.root / "uploads" / Path(*parts)

    def save_upload(self, key: str, data: bytes) -> Path:
        path = self.upload_path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".part")
        tmp.write_bytes(data)
        os.replace(tmp, path)
        return path

    def remove_upload(self, key: str) -> None:
        try:
            self.upload_path(key).unlink(missing_ok=True)
        except ServiceError:
            pass

