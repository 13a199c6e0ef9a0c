"""HMAC signatures for expiring URLs and upload policies, with one secret per data dir."""

from __future__ import annotations

import base64
import hashlib
import hmac


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Signer:
    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def sign(self, text: str) -> str:
        return b64(hmac.new(self._secret, text.encode(), hashlib.sha256).digest())

    def verify(self, text: str, signature: str) -> bool:
        """Constant-time check that also accepts non-ASCII input (which never matches)."""
        return hmac.compare_digest(signature.encode("utf-8", "surrogatepass"), self.sign(text).encode())
