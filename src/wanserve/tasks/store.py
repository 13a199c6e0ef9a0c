"""The task store and queue: a task's life as the state machine in tasks/states.py.

    PENDING --claim--> RUNNING --succeed--> SUCCEEDED
       |                 |  \\--fail-----> FAILED
       |                 |   \\--lease runs out--> RUNNING again (reclaim, by another worker)
       \\--cancel--> CANCELED <--cancel--/         or FAILED once max_attempts runs are used (exhaust)

Every transition is one UPDATE guarded by the states it leaves (`TRANSITIONS[event].sources`; for
a worker's own transitions also by its worker id), so concurrent workers on SQLite or PostgreSQL
never both win: the loser's statement matches no row. The database checks the states' invariants
too (CHECK constraints, migration 0002). Leases make a dead worker's task claimable again
`lease_seconds` after its last heartbeat. Each failed attempt (a worker's fail(), or a lease lost)
is kept in `task_failures`, written in the transaction of the transition that ends the attempt.

The store also owns a task's lifetime (`task_ttl_seconds` after it ends): reads leave out tasks
past it and expire() deletes them, from the one cut-off `alive_since_ms()`.

Reads use read transactions (no write lock on SQLite); an idle worker's claim() is a read too.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    BigInteger,
    Engine,
    and_,
    case,
    delete,
    func,
    insert,
    literal,
    null,
    or_,
    select,
    update,
)

from ..errors import Code
from .db import now_ms, read, write
from .schema import task_failures, tasks
from .states import TERMINAL, TRANSITIONS, TaskStatus

DEFAULT_TASK_TTL_SECONDS = 24 * 3600

LOST_MESSAGE = "The worker {worker} stopped responding (its lease ran out) during attempt {attempt}."
EXHAUSTED_MESSAGE = ("The task was interrupted {n} times (its worker stopped responding); please submit it "
                     "again.")

__all__ = ["Claimed", "TaskStore", "TaskStatus", "TERMINAL", "TRANSITIONS"]


@dataclass(frozen=True)
class Claimed:
    id: str
    request: dict[str, Any]
    attempts: int
    account_id: str


def _from(event: str):
    """The guard on the states a transition leaves."""
    return tasks.c.status.in_([s.value for s in TRANSITIONS[event].sources])


def _to(event: str) -> str:
    return TRANSITIONS[event].target.value


class TaskStore:
    def __init__(self, engine: Engine, *, lease_seconds: float = 30.0, max_attempts: int = 3,
                 task_ttl_seconds: float = DEFAULT_TASK_TTL_SECONDS) -> None:
        self.engine = engine
        self.lease_ms = int(lease_seconds * 1000)
        self.max_attempts = max_attempts
        self.ttl_ms = int(task_ttl_seconds * 1000)

    # -- lifetime -------------------------------------------------------------------------

    def alive_since_ms(self) -> int:
        """Tasks that ended (or, never run, were submitted) before this are past their lifetime."""
        return now_ms() - self.ttl_ms

    # -- API side -------------------------------------------------------------------------

    def create(self, *, account_id: str, api_key_id: str, request_id: str, model: str, endpoint: str,
               request: dict[str, Any]) -> dict[str, Any]:
        row = {"id": str(uuid.uuid4()), "account_id": account_id, "api_key_id": api_key_id,
               "request_id": request_id, "model": model, "endpoint": endpoint,
               "status": TaskStatus.PENDING.value, "request": request, "submit_ms": now_ms(), "attempts": 0}
        with write(self.engine) as conn:
            conn.execute(tasks.insert().values(**row))
        return row

    def get(self, task_id: str, account_id: str | None = None, *,
            alive_only: bool = False) -> dict[str, Any] | None:
        """The task, or None; with `alive_only`, also None for a task past its lifetime (so expiry
        never depends on when the sweeper last ran)."""
        query = select(tasks).where(tasks.c.id == task_id)
        if account_id is not None:
            query = query.where(tasks.c.account_id == account_id)
        if alive_only:
            query = query.where(_alive(self.alive_since_ms()))
        with read(self.engine) as conn:
            row = conn.execute(query).mappings().first()
        return dict(row) if row else None

    def list(self, account_id: str, *, start_ms: int, end_ms: int, model: str | None = None,
             status: str | None = None, task_id: str | None = None, page_no: int = 1,
             page_size: int = 10) -> tuple[int, list[dict[str, Any]]]:
        """One page of the account's living tasks submitted in [start_ms, end_ms], newest first, and
        how many there are in all."""
        since = self.alive_since_ms()
        cond = [tasks.c.account_id == account_id, tasks.c.submit_ms >= start_ms, tasks.c.submit_ms <= end_ms,
                _alive(since)]
        if model:
            cond.append(tasks.c.model == model)
        if status:
            cond.append(tasks.c.status == str(status))
        if task_id:
            cond.append(tasks.c.id == task_id)
        where = and_(*cond)
        with read(self.engine) as conn:
            total = conn.execute(select(func.count()).select_from(tasks).where(where)).scalar_one()
            rows = conn.execute(select(tasks).where(where).order_by(tasks.c.submit_ms.desc(), tasks.c.id)
                                .limit(page_size).offset((page_no - 1) * page_size)).mappings().all()
        return total, [dict(r) for r in rows]

    def cancel(self, task_id: str, account_id: str) -> bool:
        """PENDING or RUNNING -> CANCELED. A running worker notices at its next heartbeat or progress
        report (its own guarded statements stop matching) and stops."""
        stmt = (update(tasks)
                .where(tasks.c.id == task_id, tasks.c.account_id == account_id, _from("cancel"))
                .values(status=_to("cancel"), end_ms=now_ms(), lease_until_ms=None, code=None, message=None))
        with write(self.engine) as conn:
            return conn.execute(stmt).rowcount == 1

    # -- worker side ----------------------------------------------------------------------

    def _runnable(self, now: int):
        """PENDING, or RUNNING with an expired lease (its worker died)."""
        return or_(_from("claim"), and_(_from("reclaim"), tasks.c.lease_until_ms < now))

    def claim(self, worker_id: str) -> Claimed | None:
        """Take the oldest runnable task: PENDING, or RUNNING with an expired lease (its worker died).

        None when nothing is runnable (found by a read, so an idle poll takes no write lock), and
        also when the task taken had used all its attempts: the same statement fails it instead
        (`exhaust`), and the worker simply polls again."""
        now = now_ms()
        with read(self.engine) as conn:
            if conn.execute(select(tasks.c.id).where(self._runnable(now)).limit(1)).first() is None:
                return None
        # The candidate is locked (PostgreSQL: FOR UPDATE SKIP LOCKED, so concurrent claimers take
        # different tasks; SQLite: the transaction holds the write lock), which is what lets the
        # lost attempt's worker be read before the claim overwrites it.
        candidate = (select(tasks.c.id, tasks.c.status, tasks.c.worker_id, tasks.c.attempts)
                     .where(self._runnable(now)).order_by(tasks.c.submit_ms).limit(1)
                     .with_for_update(skip_locked=True))
        exhausted = and_(_from("exhaust"), tasks.c.lease_until_ms < now,
                         tasks.c.attempts >= self.max_attempts)

        def unless_exhausted(keep, claimed):
            return case((exhausted, keep), else_=claimed)

        stmt = (update(tasks)
                .values(status=unless_exhausted(_to("exhaust"), _to("claim")),
                        worker_id=unless_exhausted(tasks.c.worker_id, worker_id),
                        lease_until_ms=unless_exhausted(null(), literal(now + self.lease_ms, BigInteger)),
                        scheduled_ms=unless_exhausted(tasks.c.scheduled_ms, literal(now, BigInteger)),
                        attempts=unless_exhausted(tasks.c.attempts, tasks.c.attempts + 1),
                        end_ms=unless_exhausted(literal(now, BigInteger), null()),
                        code=unless_exhausted(Code.INTERNAL.value, null()),
                        message=unless_exhausted(EXHAUSTED_MESSAGE.format(n=self.max_attempts), null()),
                        progress=None)
                .returning(tasks.c.id, tasks.c.status, tasks.c.request, tasks.c.attempts, tasks.c.account_id))
        with write(self.engine) as conn:
            before = conn.execute(candidate).first()
            if before is None:
                return None
            row = conn.execute(stmt.where(tasks.c.id == before.id, self._runnable(now))).first()
            if row is None:  # cannot happen while the row is locked; the guard keeps it safe anyway
                return None
            if before.status == TaskStatus.RUNNING:  # its previous attempt was lost
                conn.execute(insert(task_failures).values(
                    task_id=before.id, attempt=before.attempts, worker_id=before.worker_id,
                    code=Code.INTERNAL.value, at_ms=now,
                    message=LOST_MESSAGE.format(worker=before.worker_id, attempt=before.attempts)))
        if row.status != TaskStatus.RUNNING:
            return None
        return Claimed(row.id, row.request, row.attempts, row.account_id)

    def _own(self, task_id: str, worker_id: str, event: str):
        return and_(tasks.c.id == task_id, _from(event), tasks.c.worker_id == worker_id)

    def heartbeat(self, task_id: str, worker_id: str, progress: dict[str, Any] | None = None) -> bool:
        """Extend our lease (and record progress). False: the task was canceled or is no longer ours."""
        values: dict[str, Any] = {"lease_until_ms": now_ms() + self.lease_ms}
        if progress is not None:
            values["progress"] = progress
        with write(self.engine) as conn:
            stmt = update(tasks).where(self._own(task_id, worker_id, "heartbeat")).values(**values)
            return conn.execute(stmt).rowcount == 1

    def succeed(self, task_id: str, worker_id: str, result: dict[str, Any]) -> bool:
        """RUNNING (ours) -> SUCCEEDED. False: canceled or taken over meanwhile; nothing was written."""
        stmt = (update(tasks).where(self._own(task_id, worker_id, "succeed"))
                .values(status=_to("succeed"), end_ms=now_ms(), result=result, lease_until_ms=None))
        with write(self.engine) as conn:
            return conn.execute(stmt).rowcount == 1

    def fail(self, task_id: str, worker_id: str, code: str, message: str) -> bool:
        """RUNNING (ours) -> FAILED, and the attempt's failure into the history, in one transaction.
        False: canceled or taken over meanwhile; nothing was written."""
        now = now_ms()
        stmt = (update(tasks).where(self._own(task_id, worker_id, "fail"))
                .values(status=_to("fail"), end_ms=now, code=str(code), message=message, lease_until_ms=None)
                .returning(tasks.c.attempts))
        with write(self.engine) as conn:
            attempt = conn.execute(stmt).scalar_one_or_none()
            if attempt is None:
                return False
            conn.execute(insert(task_failures).values(task_id=task_id, attempt=attempt, worker_id=worker_id,
                                                      code=str(code), message=message, at_ms=now))
        return True

    def status(self, task_id: str) -> TaskStatus | None:
        with read(self.engine) as conn:
            value = conn.execute(select(tasks.c.status).where(tasks.c.id == task_id)).scalar_one_or_none()
        return TaskStatus(value) if value is not None else None

    def statuses(self, task_ids: Iterable[str]) -> dict[str, TaskStatus]:
        """The status of each of `task_ids` that exists (expired or unknown ids are left out)."""
        ids = sorted(set(task_ids))
        found: dict[str, TaskStatus] = {}
        with read(self.engine) as conn:
            for i in range(0, len(ids), 500):  # bounded IN lists
                query = select(tasks.c.id, tasks.c.status).where(tasks.c.id.in_(ids[i:i + 500]))
                found.update((row.id, TaskStatus(row.status)) for row in conn.execute(query))
        return found

    def failures(self, task_id: str) -> list[dict[str, Any]]:
        """The task's failed attempts, oldest first: {attempt, worker_id, code, message, at_ms}."""
        query = (select(task_failures.c.attempt, task_failures.c.worker_id, task_failures.c.code,
                        task_failures.c.message, task_failures.c.at_ms)
                 .where(task_failures.c.task_id == task_id).order_by(task_failures.c.id))
        with read(self.engine) as conn:
            return [dict(r) for r in conn.execute(query).mappings()]

    # -- expiry ---------------------------------------------------------------------------

    def expire(self, older_than_ms: int | None = None) -> list[str]:
        """Delete tasks past their lifetime (ended, or never run and submitted, before
        `alive_since_ms()`), with their failure history; returns their ids so the caller removes
        their files. Running tasks are left to finish. `older_than_ms` overrides the cut-off."""
        since = self.alive_since_ms() if older_than_ms is None else older_than_ms
        expired = select(tasks.c.id).where(~_alive(since))
        with write(self.engine) as conn:
            conn.execute(delete(task_failures).where(task_failures.c.task_id.in_(expired)))
            return list(conn.execute(delete(tasks).where(~_alive(since)).returning(tasks.c.id)).scalars())


def _alive(since_ms: int):
    """Within its lifetime: running, or ended (or, never run, submitted) at or after `since_ms`."""
    return or_(tasks.c.status == TaskStatus.RUNNING.value,
               func.coalesce(tasks.c.end_ms, tasks.c.submit_ms) >= since_ms)
