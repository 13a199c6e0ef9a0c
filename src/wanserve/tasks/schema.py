"""Tables of the task store (SQLAlchemy Core). Times are epoch milliseconds (UTC) everywhere, so
SQLite and PostgreSQL compare them the same way; the API formats them for display.

Changing a table means a new Alembic revision in tasks/migrations/versions.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    Column,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    text,
)

from .states import STORED, TERMINAL, TaskStatus

metadata = MetaData()


def _quoted(states) -> str:
    return ", ".join(f"'{s}'" for s in sorted(states))


_TERMINAL = _quoted(TERMINAL)
# The claim's partial indexes' conditions. A query must spell its status test the same way (a literal, not
# a bound parameter) for SQLite and PostgreSQL to use them. The second term (always true there) keeps them
# out of the list's plans: a query may use a partial index only if its WHERE implies the whole condition,
# and only the claim's probes test route_model or lease_until_ms (any comparison implies IS NOT NULL).
PENDING_ROUTED = f"status = '{TaskStatus.PENDING}' AND route_model IS NOT NULL"
RUNNING_ROUTED = f"status = '{TaskStatus.RUNNING}' AND route_model IS NOT NULL"
RUNNING_LEASED = f"status = '{TaskStatus.RUNNING}' AND lease_until_ms IS NOT NULL"
# The state machine's invariants (tasks/states.py), enforced by the database (migration 0002).
TASK_CHECKS: dict[str, str] = {
    "ck_tasks_status": f"status IN ({_quoted(STORED)})",
    "ck_tasks_end_iff_terminal": f"(status IN ({_TERMINAL}) AND end_ms IS NOT NULL) "
                                 f"OR (status NOT IN ({_TERMINAL}) AND end_ms IS NULL)",
    "ck_tasks_running_owned": f"status <> '{TaskStatus.RUNNING}' "
                              "OR (worker_id IS NOT NULL AND lease_until_ms IS NOT NULL)",
    "ck_tasks_lease_only_running": f"lease_until_ms IS NULL OR status = '{TaskStatus.RUNNING}'",
    "ck_tasks_failed_code": f"status <> '{TaskStatus.FAILED}' OR code IS NOT NULL",
    "ck_tasks_succeeded_result": f"status <> '{TaskStatus.SUCCEEDED}' OR result IS NOT NULL",
}

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
    Column("callback_url", Text),  # migration 0004: the key's default webhook URL (`wanserve keys callback`)
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
    # None is SQL NULL here (not JSON null), so "SUCCEEDED => result" means a real result
    Column("result", JSON(none_as_null=True)),  # {"path", "usage", "actual_prompt"} once SUCCEEDED
    Column("progress", JSON(none_as_null=True)),  # {"done", "total", "eta_s"} while RUNNING
    Column("worker_id", String(64)),
    Column("lease_until_ms", BigInteger),
    Column("attempts", Integer, nullable=False, default=0),
    # Extension (migration 0003): the client's X-Idempotency-Key, unique per account while the task
    # lives, and the sha256 of the request it came with (another request under the key is a conflict).
    Column("idempotency_key", String(255)),
    Column("request_hash", String(64)),
    # Extension (migration 0004): webhooks. The URL the client asked to be told at (X-Wanserve-Callback-Url,
    # or its key's default), and when its next delivery attempt is due once the task is terminal
    # (NULL: nothing (more) to deliver); the deliverer takes a due task with one guarded UPDATE.
    Column("callback_url", Text),
    Column("callback_due_ms", BigInteger),
    # Extension (migration 0005): the canonical catalog name workers route on (`model` keeps the caller's
    # spelling, an alias or a snapshot name); create() fills it. '' only for a row written around the
    # store, which a worker serving every model ("*") still runs.
    Column("route_model", String(64), nullable=False, server_default=""),
    *(CheckConstraint(sql, name=name) for name, sql in TASK_CHECKS.items()),
)
Index("ix_tasks_status_submit", tasks.c.status, tasks.c.submit_ms)
# The list (GET /tasks): one account's window, newest first (submit_ms DESC, id: the list's order), with
# every column its filters and the lifetime rule read, so both the count and a page's ids come from
# the index alone (PostgreSQL: an index-only scan; SQLite: a covering index). Migration 0003.
Index("ix_tasks_account_list", tasks.c.account_id, tasks.c.submit_ms.desc(), tasks.c.id, tasks.c.status,
      tasks.c.model, tasks.c.end_ms)
Index("ux_tasks_account_idempotency", tasks.c.account_id, tasks.c.idempotency_key, unique=True)
Index("ix_tasks_callback_due", tasks.c.callback_due_ms)
# The claim's probes (migration 0005, docs/queue.md), partial so they hold only the queue, not the history:
# the models queued and one account's oldest PENDING task of one model; the oldest expired lease; what an
# account runs now (its running limits).
Index("ix_tasks_pending_route", tasks.c.route_model, tasks.c.account_id, tasks.c.submit_ms,
      sqlite_where=text(PENDING_ROUTED), postgresql_where=text(PENDING_ROUTED))
Index("ix_tasks_running_lease", tasks.c.lease_until_ms,
      sqlite_where=text(RUNNING_LEASED), postgresql_where=text(RUNNING_LEASED))
Index("ix_tasks_running_route", tasks.c.route_model, tasks.c.account_id,
      sqlite_where=text(RUNNING_ROUTED), postgresql_where=text(RUNNING_ROUTED))

# The queue's round robin (migration 0005): one row per account that has queued a task, written at its
# first create; a claim takes the account whose last claim is oldest and stamps it (tasks/store.py).
queue_accounts = Table(
    "queue_accounts",
    metadata,
    Column("account_id", String(64), primary_key=True),
    Column("last_claim_ms", BigInteger, nullable=False),  # first: its first create; then: its last claim
)

# One row per webhook delivery attempt (migration 0004): what was sent where, and how it went.
webhook_deliveries = Table(
    "webhook_deliveries",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("task_id", String(36), ForeignKey("tasks.id"), nullable=False),
    Column("url", Text, nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("at_ms", BigInteger, nullable=False),
    Column("status_code", Integer),  # the receiver's HTTP status; NULL: no answer (error says why)
    Column("error", Text),
    Column("ok", Integer, nullable=False),  # 1: delivered (2xx)
    Column("duration_ms", Integer, nullable=False),
)
Index("ix_webhook_deliveries_task", webhook_deliveries.c.task_id)

# The worker processes' registry (migration 0004): each worker registers, beats while alive, and
# deregisters on a clean stop; `last_seen_ms` tells the live ones (tasks/workers.py).
workers = Table(
    "workers",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("host", String(255), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("models", JSON, nullable=False),  # canonical model names served; ["*"]: every model
    Column("gpus", String(64), nullable=False, default=""),  # e.g. "0,1"; "" for the CPU
    Column("started_ms", BigInteger, nullable=False),
    Column("last_seen_ms", BigInteger, nullable=False),
    Column("state", String(16), nullable=False),  # idle | busy | draining
    Column("task_id", String(36)),  # the task it runs now, if any
)
Index("ix_workers_last_seen", workers.c.last_seen_ms)

# One row per failed attempt of a task (a worker's fail(), or a lease lost because its worker stopped
# responding), kept as long as the task; the task row itself holds only the final outcome.
task_failures = Table(
    "task_failures",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("task_id", String(36), ForeignKey("tasks.id"), nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("worker_id", String(64)),
    Column("code", String(64), nullable=False),
    Column("message", Text, nullable=False),
    Column("at_ms", BigInteger, nullable=False),
)
Index("ix_task_failures_task", task_failures.c.task_id)

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
