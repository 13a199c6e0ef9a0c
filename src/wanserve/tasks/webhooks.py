"""The webhook queue: which ended tasks still owe their client a delivery, who is sending it, and the
log of every attempt (`webhook_deliveries`).

A task created with a callback URL gets `callback_due_ms` from the transition that ends it (migration
0004; store.py `_callback_due`), so only ended tasks are in the index; once that time has passed, a
deliverer `take()`s it with one UPDATE guarded by the value it read, pushing the due time a lease into
the future. Of several deliverers (one per API process) reading the same row, only
one statement matches, so only one sends; if that one dies mid-send the lease runs out and another takes
the task again. `finish()` is guarded by the lease value too, so a deliverer whose lease ran out (and whose
task was taken over) cannot overwrite the new holder's schedule. NULL means nothing is left to deliver.

`due()` hands the due deliveries out round-robin by account (every account's most overdue one, then each
one's second, ...), counting the attempts a deliverer already has in flight for an account as turns that
account has had, so one account's backlog cannot push another account's delivery behind it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, case, func, insert, literal, select, update

from .db import read, write
from .schema import tasks, webhook_deliveries
from .states import TERMINAL


@dataclass(frozen=True)
class Due:
    task_id: str
    due_ms: int
    account_id: str = ""


class WebhookQueue:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def due(self, now: int, limit: int, *, per_account: int | None = None,
            in_flight: Mapping[str, int] | None = None) -> list[Due]:
        """Ended tasks whose next delivery attempt is due, at most `limit`, taken round-robin by account:
        each account's most overdue first, then each one's second, and so on (most overdue first within a
        round). `in_flight`: attempts the caller is sending now, per account; they count as rounds that
        account has had, and with `per_account` an account gets at most `per_account` minus those."""
        turn = func.row_number().over(partition_by=tasks.c.account_id,
                                      order_by=(tasks.c.callback_due_ms, tasks.c.id))
        ranked = (select(tasks.c.id, tasks.c.account_id, tasks.c.callback_due_ms, turn.label("turn"))
                  .where(tasks.c.callback_due_ms <= now, tasks.c.status.in_([s.value for s in TERMINAL]))
                  .subquery())
        busy = {account: n for account, n in (in_flight or {}).items() if n > 0}
        held = case(busy, value=ranked.c.account_id, else_=0) if busy else literal(0)
        query = select(ranked.c.id, ranked.c.account_id, ranked.c.callback_due_ms)
        if per_account is not None:
            query = query.where(ranked.c.turn + held <= per_account)
        query = query.order_by(ranked.c.turn + held, ranked.c.callback_due_ms, ranked.c.id).limit(limit)
        with read(self.engine) as conn:
            return [Due(row.id, row.callback_due_ms, row.account_id) for row in conn.execute(query)]

    def take(self, due: Due, lease_until_ms: int) -> bool:
        """Claim one delivery attempt: True for exactly one of the deliverers that read `due`."""
        stmt = (update(tasks).where(tasks.c.id == due.task_id, tasks.c.callback_due_ms == due.due_ms)
                .values(callback_due_ms=lease_until_ms))
        with write(self.engine) as conn:
            return conn.execute(stmt).rowcount == 1

    def begin_attempt(self, task_id: str, url: str, at_ms: int) -> tuple[int, int]:
        """Log an attempt before it is sent (its row id is the X-Wanserve-Delivery header); returns (delivery
        id, attempt number, 1 for the first)."""
        with write(self.engine) as conn:
            last = conn.execute(select(func.max(webhook_deliveries.c.attempt))
                                .where(webhook_deliveries.c.task_id == task_id)).scalar_one()
            attempt = (last or 0) + 1
            delivery_id = conn.execute(insert(webhook_deliveries).values(
                task_id=task_id, url=url, attempt=attempt, at_ms=at_ms, ok=0, duration_ms=0,
                error="in flight").returning(webhook_deliveries.c.id)).scalar_one()
        return delivery_id, attempt

    def end_attempt(self, delivery_id: int, *, ok: bool, status: int | None, error: str | None,
                    duration_ms: int) -> None:
        with write(self.engine) as conn:
            # the receiver's HTTP status is only recorded here (keyed by column: this layer answers no HTTP)
            conn.execute(update(webhook_deliveries).where(webhook_deliveries.c.id == delivery_id).values(
                {webhook_deliveries.c.status_code: status, webhook_deliveries.c.ok: int(ok),
                 webhook_deliveries.c.error: error, webhook_deliveries.c.duration_ms: duration_ms}))

    def finish(self, task_id: str, lease_until_ms: int, next_due_ms: int | None) -> bool:
        """After an attempt: the next one's due time, or None (delivered, or given up). False: our lease ran
        out and another deliverer took the task meanwhile; its schedule stands."""
        stmt = (update(tasks).where(tasks.c.id == task_id, tasks.c.callback_due_ms == lease_until_ms)
                .values(callback_due_ms=next_due_ms))
        with write(self.engine) as conn:
            return conn.execute(stmt).rowcount == 1

    def deliveries(self, task_id: str) -> list[dict[str, Any]]:
        """The task's delivery attempts, oldest first."""
        query = (select(webhook_deliveries).where(webhook_deliveries.c.task_id == task_id)
                 .order_by(webhook_deliveries.c.id))
        with read(self.engine) as conn:
            return [dict(r) for r in conn.execute(query).mappings()]
