"""Tables of the task store (SQLAlchemy Core). Times are epoch milliseconds (UTC) everywhere, so
SQLite and PostgreSQL compare them the same way; the API formats them for display.

Changing a table means a new Alembic revision in tasks/migrations/versions.
"""

from __future__ import annotations

from sqlalchemy import JSON, BigInteger, Column, ForeignKey, Index, Integer, MetaData, String, Table, Text

metadata = MetaData()

accounts = Table(
    "accounts",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("created_ms", BigInteger, nullable=False),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("account_id", String(64), ForeignKey("accounts.id"), nullable=False),
    Column("key_hash", String(64), nullable=False, unique=True),  # sha256 hex of the key
    Column("prefix", String(16), nullable=False),  # first characters, to recognise a key in lists
    Column("created_ms", BigInteger, nullable=False),
    Column("revoked_ms", BigInteger),
)

tasks = Table(
    "tasks",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("account_id", String(64), nullable=False),
    Column("api_key_id", String(32), nullable=False),
    Column("request_id", String(36), nullable=False),
    Column("model", String(64), nullable=False),  # as the caller spelled it
    Column("endpoint", String(32), nullable=False),  # video-generation | image2video
    Column("status", String(16), nullable=False),
    Column("request", JSON, nullable=False),  # the normalised GenerationRequest
    Column("submit_ms", BigInteger, nullable=False),
    Column("scheduled_ms", BigInteger),
    Column("end_ms", BigInteger),
    Column("code", String(64)),
    Column("message", Text),
    Column("result", JSON),  # {"path", "usage", "actual_prompt"} once SUCCEEDED
    Column("progress", JSON),  # {"done", "total", "eta_s"} while RUNNING
    Column("worker_id", String(64)),
    Column("lease_until_ms", BigInteger),
    Column("attempts", Integer, nullable=False, default=0),
)
Index("ix_tasks_status_submit", tasks.c.status, tasks.c.submit_ms)
Index("ix_tasks_account_submit", tasks.c.account_id, tasks.c.submit_ms)

uploads = Table(
    "uploads",
    metadata,
    Column("key", String(512), primary_key=True),  # the part after oss://
    Column("account_id", String(64), nullable=False),
    Column("model", String(64), nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("created_ms", BigInteger, nullable=False),
)
Index("ix_uploads_created", uploads.c.created_ms)
