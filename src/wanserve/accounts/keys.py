"""Accounts and API keys. Keys are random, shown once, and stored only as a SHA-256 hash (a key has
256 bits of entropy, so a fast hash is enough; no salt or slow KDF needed)."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from sqlalchemy import Engine, insert, select, update

from ..tasks.db import now_ms, read, write
from ..tasks.schema import accounts, api_keys

BOOTSTRAP_KEY_ID = "bootstrap"


@dataclass(frozen=True)
class Caller:
    account_id: str
    api_key_id: str
    callback_url: str | None = None  # the key's default webhook URL (`wanserve keys callback`)


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def ensure_account(engine: Engine, account_id: str) -> None:
    with write(engine) as conn:
        if conn.execute(select(accounts.c.id).where(accounts.c.id == account_id)).first() is None:
            conn.execute(insert(accounts).values(id=account_id, created_ms=now_ms()))


def create_key(engine: Engine, account_id: str = "default") -> tuple[str, str]:
    """Create a key for the account (creating the account if new); returns (key id, the key)."""
    ensure_account(engine, account_id)
    key = "sk-ws-" + secrets.token_hex(24)
    key_id = secrets.token_hex(8)
    with write(engine) as conn:
        conn.execute(insert(api_keys).values(id=key_id, account_id=account_id, key_hash=_hash(key),
                                             prefix=key[:10], created_ms=now_ms()))
    return key_id, key


def list_keys(engine: Engine) -> list[dict]:
    with read(engine) as conn:
        rows = conn.execute(select(api_keys).order_by(api_keys.c.created_ms)).mappings().all()
    return [dict(r) for r in rows]


def revoke_key(engine: Engine, key_id: str) -> bool:
    with write(engine) as conn:
        stmt = update(api_keys).where(api_keys.c.id == key_id, api_keys.c.revoked_ms.is_(None))
        return conn.execute(stmt.values(revoked_ms=now_ms())).rowcount == 1


def authenticate(engine: Engine, key: str, bootstrap_key: str | None = None) -> Caller | None:
    if bootstrap_key and hmac.compare_digest(key.encode(), bootstrap_key.encode()):
        return Caller("default", BOOTSTRAP_KEY_ID)
    with read(engine) as conn:  # every request authenticates: never wait for a writer
        row = conn.execute(select(api_keys.c.id, api_keys.c.account_id, api_keys.c.callback_url)
                           .where(api_keys.c.key_hash == _hash(key), api_keys.c.revoked_ms.is_(None))).first()
    return Caller(row.account_id, row.id, row.callback_url) if row else None
