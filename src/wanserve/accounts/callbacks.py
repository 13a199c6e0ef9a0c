"""Webhook settings of accounts and keys: a key's default callback URL, and the account's signing secret.

The secret is derived, not stored: HMAC(server secret, "webhook:" + account id). Every process that shares
the data dir (and so the server secret) signs with the same secret, nothing needs migrating, and an operator
can show it again at any time (`wanserve keys webhook-secret`). Accounts never see each other's secret.
"""

from __future__ import annotations

import hashlib
import hmac

from sqlalchemy import Engine, update

from ..tasks.db import write
from ..tasks.schema import api_keys


def webhook_secret(server_secret: bytes, account_id: str) -> str:
    """The account's webhook signing secret (hex): what receivers use to check X-Wanserve-Signature."""
    return hmac.new(server_secret, b"webhook:" + account_id.encode(), hashlib.sha256).hexdigest()


def set_key_callback(engine: Engine, key_id: str, url: str | None) -> str | None:
    """Set (or, with None, clear) the key's default callback URL; returns the key's account, or None if
    there is no such active key."""
    with write(engine) as conn:
        stmt = (update(api_keys).where(api_keys.c.id == key_id, api_keys.c.revoked_ms.is_(None))
                .values(callback_url=url).returning(api_keys.c.account_id))
        return conn.execute(stmt).scalar_one_or_none()

