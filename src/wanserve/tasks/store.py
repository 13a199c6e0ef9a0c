"""The task store and queue: a task's life as the state machine in tasks/states.py.

    PENDING --claim--> RUNNING --succeed--> SUCCEEDED
       |                 |  \\--fail-----> FAILED
       |                 |   \\--lease runs out--> RUNNING again (reclaim, by another worker)
       \\--cancel--> CANCELED <--cancel--/         or FAILED once max_attempts runs are used (exhaust)
    RUNNING --release--> PENDING (its worker shuts down: the attempt is handed back, not counted)

Every transition is one UPDATE guarded by the states it leaves (`TRANSITIONS[event].sources`; for
a worker's own transitions also by its worker id), so concurrent workers on SQLite or PostgreSQL
never both win: the loser's statement matches no row. The database checks the states' invariants
too (CHECK constraints, migration 0002). Leases make a dead worker's task claimable again
`lease_seconds` after its last heartbeat. Each failed attempt (a worker's fail(), or a lease lost)
is kept in `task_failures`, written in the transaction of the transition that ends the attempt.

The store also owns a task's lifetime (`task_ttl_seconds` after it ends): reads leave out tasks
past it and expire() deletes them, from the one cut-off `alive_since_ms()`. A client's idempotency
key (create) is unique per account among living tasks: a task past its lifetime frees it.

A list is one account's window: its count and its page's ids are read from the list's covering
index alone (migration 0003), and both stop at the window's newest `list_limit` tasks.

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
    Select,
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
from sqlalchemy.exc import IntegrityError

from ..errors import Code, idempotent_mismatch
from .db import now_ms, read, write
from .schema import task_failures, tasks, webhook_deliveries
from .states import TERMINAL, TRANSITIONS, TaskStatus

DEFAULT_TASK_TTL_SECONDS = 24 * 3600
# A list answers at most the newest LIST_LIMIT tasks of its window (`total` counts no further), so its
# cost is bounded however many tasks an account has in a day: narrow the window to page further back.
LIST_LIMIT = 5_000

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
                 task_ttl_seconds: float = DEFAULT_TASK_TTL_SECONDS, list_limit: int = LIST_LIMIT) -> None:
        self.engine = engine
        self.list_limit = list_limit
        self.lease_ms = int(lease_seconds * 1000)
        self.max_attempts = max_attempts
        self.ttl_ms = int(task_ttl_seconds * 1000)

    # -- lifetime -------------------------------------------------------------------------

    def alive_since_ms(self) -> int:
        """Tasks that ended (or, never run, were submitted) before this are past their lifetime."""
        return now_ms() - self.ttl_ms

    # -- API side -------------------------------------------------------------------------

    def create(self, *, account_id: str, api_key_id: str, request_id: str, model: str, endpoint: str,
               request: dict[str, Any], idempotency_key: str | None = None,
               request_hash: str | None = None) -> dict[str, Any]:
        """A new PENDING task. With `idempotency_key` (unique per account while its task lives): the
        living task already created under the key if `request_hash` matches its own (so the caller
        can tell by its id, or its request_id, that it is not new), ServiceError
        IdempotentParameterMismatch if not. Atomic: of concurrent creates with one key, one inserts and
        the others (their insert refused by the unique index) read its task."""
        row = {"id": str(uuid.uuid4()), "account_id": account_id, "api_key_id": api_key_id,
               "request_id": request_id, "model": model, "endpoint": endpoint,
               "status": TaskStatus.PENDING.value, "request": request, "submit_ms": now_ms(), "attempts": 0}
        if idempotency_key is None:
            with write(self.engine) as conn:
                conn.execute(tasks.insert().values(**row))
            return row
        row.update(idempotency_key=idempotency_key, request_hash=request_hash)
        same_key = and_(tasks.c.account_id == account_id, tasks.c.idempotency_key == idempotency_key)
        for _ in range(3):  # a winner can only vanish under expire() (it would have to be past its lifetime)
            with write(self.engine) as conn:
                # A task past its lifetime frees its key, whether or not expire() has deleted it yet.
                conn.execute(update(tasks).where(same_key, ~_alive(self.alive_since_ms()))
                             .values(idempotency_key=None, request_hash=None))
                try:
                    with conn.begin_nested():  # a savepoint: PostgreSQL's transaction survives the refusal
                        conn.execute(tasks.insert().values(**row))
                    return row
                except IntegrityError:
                    # PostgreSQL: the insert waited for the other transaction's commit; in READ COMMITTED
                    # this next statement sees it. SQLite: writers are serialised, it committed first.
                    winner = conn.execute(select(tasks).where(same_key)).mappings().first()
            if winner is not None:
                if winner["request_hash"] != request_hash:
                    raise idempotent_mismatch(idempotency_key, winner["id"])
                return dict(winner)
        raise RuntimeError(f"create with idempotency key {idempotency_key!r} kept colliding")

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
        how many there are in all, both within the newest `list_limit` of them (pages past it are empty)."""
        count, page = self.list_queries(account_id, start_ms=start_ms, end_ms=end_ms, model=model,
                                        status=status, task_id=task_id, page_no=page_no, page_size=page_size)
        offset = (page_no - 1) * page_size
        wanted = max(0, min(page_size, self.list_limit - offset))
        with read(self.engine) as conn:
            rows = conn.execute(page).mappings().all() if wanted else []
            if 0 < len(rows) < wanted or (not rows and offset == 0):
                total = offset + len(rows)  # the page holds the last of them: no need to count
            else:
                total = conn.execute(count).scalar_one()
        return total, [dict(r) for r in rows]

    def list_queries(self, account_id: str, *, start_ms: int, end_ms: int, model: str | None = None,
                     status: str | None = None, task_id: str | None = None, page_no: int = 1,
                     page_size: int = 10) -> tuple[Select, Select]:
        """list()'s two statements (the count, the page), for list() and for EXPLAIN in the tests; both
        stop at the newest `list_limit` tasks.

        Both read only `ix_tasks_account_list`'s columns in its order (account_id, submit_ms DESC, id,
        status, model, end_ms) until the page's ids are known: the count is an index-only scan of the
        window, and the page is a deferred join: its ids are picked (and the offset skipped) in the
        index, and only its own rows are read from the table."""
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
        newest = select(literal(1).label("one")).where(where).limit(self.list_limit).subquery("newest")
        count = select(func.count()).select_from(newest)
        offset = (page_no - 1) * page_size
        ids = (select(tasks.c.id, tasks.c.submit_ms).where(where)
               .order_by(tasks.c.submit_ms.desc(), tasks.c.id)
               .limit(max(0, min(page_size, self.list_limit - offset))).offset(offset).subquery("page"))
        page = select(tasks).join(ids, ids.c.id == tasks.c.id).order_by(ids.c.submit_ms.desc(), ids.c.id)
        return count, page

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

    def release(self, task_id: str, worker_id: str) -> bool:
        """RUNNING (ours) -> PENDING, as our process shuts down: the lease, worker and progress are
        cleared and the attempt is not counted (attempts - 1), so the task is claimed again at once,
        oldest first, with all its attempts. False: canceled or taken over meanwhile; nothing was
        written. Call it only once the attempt has stopped and stored no result: the next claim
        gets the same attempt number."""
        stmt = (update(tasks).where(self._own(task_id, worker_id, "release"))
                .values(status=_to("release"), worker_id=None, lease_until_ms=None, scheduled_ms=None,
                        progress=None, attempts=tasks.c.attempts - 1))
        with write(self.engine) as conn:
            return conn.execute(stmt).rowcount == 1

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

    def outcomes(self, task_ids: Iterable[str]) -> dict[str, tuple[TaskStatus, dict[str, Any] | None]]:
        """The status and result (the facts succeed() stored; None unless SUCCEEDED) of each of
        `task_ids` that exists, for the orphan sweep."""
        ids = sorted(set(task_ids))
        found: dict[str, tuple[TaskStatus, dict[str, Any] | None]] = {}
        with read(self.engine) as conn:
            for i in range(0, len(ids), 500):  # bounded IN lists
                query = (select(tasks.c.id, tasks.c.status, tasks.c.result)
                         .where(tasks.c.id.in_(ids[i:i + 500])))
                found.update((row.id, (TaskStatus(row.status), row.result)) for row in conn.execute(query))
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
        their files. Its failure history and webhook deliveries go with it. Running tasks are left
        to finish. `older_than_ms` overrides the cut-off."""
        since = self.alive_since_ms() if older_than_ms is None else older_than_ms
        expired = select(tasks.c.id).where(~_alive(since))
        with write(self.engine) as conn:
            conn.execute(delete(task_failures).where(task_failures.c.task_id.in_(expired)))
            conn.execute(delete(webhook_deliveries).where(webhook_deliveries.c.task_id.in_(expired)))
            return list(conn.execute(delete(tasks).where(~_alive(since)).returning(tasks.c.id)).scalars())


def _alive(since_ms: int):
    """Within its lifetime: running, or ended (or, never run, submitted) at or after `since_ms`."""
    return or_(tasks.c.status == TaskStatus.RUNNING.value,
               func.coalesce(tasks.c.end_ms, tasks.c.submit_ms) >= since_ms)
