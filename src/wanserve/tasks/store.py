"""The task store and queue: a task's life as a small state machine.

    PENDING --claim--> RUNNING --succeed--> SUCCEEDED
       |                 |  \\--fail-----> FAILED
       |                 |   \\--lease runs out--> RUNNING again (claimed by another worker)
       \\--cancel--> CANCELED <--cancel--/         or FAILED once max_attempts runs are used

Every transition is a single SQL statement guarded by the state it leaves (and, for a worker's
own transitions, by its worker id), so concurrent workers on SQLite or PostgreSQL never both
win: the loser's statement matches no row. Leases make a dead worker's task claimable again
`lease_seconds` after its last heartbeat.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, and_, delete, func, or_, select, update

from .db import now_ms
from .schema import tasks

PENDING, RUNNING, SUCCEEDED, FAILED, CANCELED = "PENDING", "RUNNING", "SUCCEEDED", "FAILED", "CANCELED"
UNKNOWN = "UNKNOWN"  # never stored: what the API answers for a task it cannot show
STATUSES = (PENDING, RUNNING, SUCCEEDED, FAILED, CANCELED)


@dataclass(frozen=True)
class Claimed:
    id: str
    request: dict[str, Any]
    attempts: int


class TaskStore:
    def __init__(self, engine: Engine, *, lease_seconds: float = 30.0, max_attempts: int = 3) -> None:
        self.engine = engine
        self.lease_ms = int(lease_seconds * 1000)
        self.max_attempts = max_attempts

    # -- API side -------------------------------------------------------------------------

    def create(self, *, account_id: str, api_key_id: str, request_id: str, model: str, endpoint: str,
               request: dict[str, Any]) -> dict[str, Any]:
        row = {"id": str(uuid.uuid4()), "account_id": account_id, "api_key_id": api_key_id,
               "request_id": request_id, "model": model, "endpoint": endpoint, "status": PENDING,
               "request": request, "submit_ms": now_ms(), "attempts": 0}
        with self.engine.begin() as conn:
            conn.execute(tasks.insert().values(**row))
        return row

    def get(self, task_id: str, account_id: str | None = None, *,
            alive_since_ms: int | None = None) -> dict[str, Any] | None:
        """The task, or None; with `alive_since_ms`, also None for a task past its lifetime (so expiry
        never depends on when the sweeper last ran)."""
        query = select(tasks).where(tasks.c.id == task_id)
        if account_id is not None:
            query = query.where(tasks.c.account_id == account_id)
        if alive_since_ms is not None:
            query = query.where(_alive(alive_since_ms))
        with self.engine.begin() as conn:
            row = conn.execute(query).mappings().first()
        return dict(row) if row else None

    def list(self, account_id: str, *, start_ms: int, end_ms: int, alive_since_ms: int, model: str | None = None,
             status: str | None = None, task_id: str | None = None, page_no: int = 1,
             page_size: int = 10) -> tuple[int, list[dict[str, Any]]]:
        cond = [tasks.c.account_id == account_id, tasks.c.submit_ms >= start_ms, tasks.c.submit_ms <= end_ms,
                _alive(alive_since_ms)]
        if model:
            cond.append(tasks.c.model == model)
        if status:
            cond.append(tasks.c.status == status)
        if task_id:
            cond.append(tasks.c.id == task_id)
        where = and_(*cond)
        with self.engine.begin() as conn:
            total = conn.execute(select(func.count()).select_from(tasks).where(where)).scalar_one()
            rows = conn.execute(select(tasks).where(where).order_by(tasks.c.submit_ms.desc(), tasks.c.id)
                                .limit(page_size).offset((page_no - 1) * page_size)).mappings().all()
        return total, [dict(r) for r in rows]

    def cancel(self, task_id: str, account_id: str) -> bool:
        """PENDING or RUNNING -> CANCELED. A running worker notices at its next heartbeat or progress
        report (its own guarded statements stop matching) and stops."""
        stmt = (update(tasks)
                .where(tasks.c.id == task_id, tasks.c.account_id == account_id,
                       tasks.c.status.in_((PENDING, RUNNING)))
                .values(status=CANCELED, end_ms=now_ms(), lease_until_ms=None,
                        code=None, message=None))
        with self.engine.begin() as conn:
            return conn.execute(stmt).rowcount == 1

    # -- worker side ----------------------------------------------------------------------

    def claim(self, worker_id: str) -> Claimed | None:
        """Take the oldest runnable task: PENDING, or RUNNING with an expired lease (its worker died)."""
        now = now_ms()
        self._fail_exhausted(now)
        runnable = or_(tasks.c.status == PENDING, and_(tasks.c.status == RUNNING, tasks.c.lease_until_ms < now))
        candidate = (select(tasks.c.id).where(runnable).order_by(tasks.c.submit_ms).limit(1)
                     .with_for_update(skip_locked=True).scalar_subquery())
        stmt = (update(tasks).where(tasks.c.id == candidate, runnable)
                .values(status=RUNNING, worker_id=worker_id, lease_until_ms=now + self.lease_ms,
                        scheduled_ms=now, attempts=tasks.c.attempts + 1, progress=None)
                .returning(tasks.c.id, tasks.c.request, tasks.c.attempts))
        with self.engine.begin() as conn:
            row = conn.execute(stmt).first()
        return Claimed(row.id, row.request, row.attempts) if row else None

    def _fail_exhausted(self, now: int) -> None:
        stmt = (update(tasks)
                .where(tasks.c.status == RUNNING, tasks.c.lease_until_ms < now,
                       tasks.c.attempts >= self.max_attempts)
                .values(status=FAILED, end_ms=now, lease_until_ms=None, code="InternalError",
                        message=f"The task was interrupted {self.max_attempts} times (its worker stopped "
                                "responding); please submit it again."))
        with self.engine.begin() as conn:
            conn.execute(stmt)

    def _own(self, task_id: str, worker_id: str):
        return and_(tasks.c.id == task_id, tasks.c.status == RUNNING, tasks.c.worker_id == worker_id)

    def heartbeat(self, task_id: str, worker_id: str, progress: dict[str, Any] | None = None) -> bool:
        """Extend our lease (and record progress). False: the task was canceled or is no longer ours."""
        values: dict[str, Any] = {"lease_until_ms": now_ms() + self.lease_ms}
        if progress is not None:
            values["progress"] = progress
        with self.engine.begin() as conn:
            return conn.execute(update(tasks).where(self._own(task_id, worker_id)).values(**values)).rowcount == 1

    def succeed(self, task_id: str, worker_id: str, result: dict[str, Any]) -> bool:
        stmt = (update(tasks).where(self._own(task_id, worker_id))
                .values(status=SUCCEEDED, end_ms=now_ms(), result=result, lease_until_ms=None))
        with self.engine.begin() as conn:
            return conn.execute(stmt).rowcount == 1

    def fail(self, task_id: str, worker_id: str, code: str, message: str) -> bool:
        stmt = (update(tasks).where(self._own(task_id, worker_id))
                .values(status=FAILED, end_ms=now_ms(), code=code, message=message, lease_until_ms=None))
        with self.engine.begin() as conn:
            return conn.execute(stmt).rowcount == 1

    def status(self, task_id: str) -> str | None:
        with self.engine.begin() as conn:
            return conn.execute(select(tasks.c.status).where(tasks.c.id == task_id)).scalar_one_or_none()

    # -- expiry ---------------------------------------------------------------------------

    def expire(self, older_than_ms: int) -> list[str]:
        """Delete tasks that ended (or, never run, were submitted) before the cut-off; returns their
        ids so the caller removes their files. Running tasks are left to finish."""
        with self.engine.begin() as conn:
            return list(conn.execute(delete(tasks).where(~_alive(older_than_ms)).returning(tasks.c.id)).scalars())


def _alive(since_ms: int):
    """Within its lifetime: running, or ended (or, never run, submitted) at or after `since_ms`."""
    return or_(tasks.c.status == RUNNING, func.coalesce(tasks.c.end_ms, tasks.c.submit_ms) >= since_ms)
