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

import threading
import uuid
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from itertools import dropwhile
from typing import Any, Literal

from sqlalchemy import (
    BigInteger,
    Connection,
    Engine,
    Select,
    and_,
    case,
    delete,
    func,
    insert,
    literal,
    literal_column,
    null,
    or_,
    select,
    union_all,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError

from ..catalog.models import canonical_name
from ..config import QuotaSettings
from ..errors import Code, idempotent_mismatch
from .db import now_ms, read, write
from .notify import Waiters, announce
from .schema import queue_accounts, task_failures, tasks, webhook_deliveries
from .states import TERMINAL, TRANSITIONS, TaskStatus
from .workers import ALL_MODELS

DEFAULT_TASK_TTL_SECONDS = 24 * 3600
# A list answers at most the newest LIST_LIMIT tasks of its window (`total` counts no further), so its
# cost is bounded however many tasks an account has in a day: narrow the window to page further back.
LIST_LIMIT = 5_000

LOST_MESSAGE = "The worker {worker} stopped responding (its lease ran out) during attempt {attempt}."
EXHAUSTED_MESSAGE = ("The task was interrupted {n} times (its worker stopped responding); please submit it "
                     "again.")

# _claim_from: another claimer is taking this account's turn right now
TAKEN = "taken"

__all__ = ["Claimed", "TaskStore", "TaskStatus", "TERMINAL", "TRANSITIONS"]


@dataclass(frozen=True)
class Claimed:
    id: str
    request: dict[str, Any]
    attempts: int
    account_id: str
    queued_ms: int = 0  # from the task's submission to this claim (the time-in-queue metric)


def _from(event: str):
    """The guard on the states a transition leaves."""
    return tasks.c.status.in_([s.value for s in TRANSITIONS[event].sources])


def _to(event: str) -> str:
    return TRANSITIONS[event].target.value


# The claim's partial indexes' conditions (schema.py), spelled out whole and with the status as a literal,
# so SQLite and PostgreSQL (its generic plans included) see that a probe may use them.
_PENDING = tasks.c.status == literal_column(f"'{TaskStatus.PENDING}'")
_RUNNING = tasks.c.status == literal_column(f"'{TaskStatus.RUNNING}'")
_PENDING_ROUTED = and_(_PENDING, tasks.c.route_model.is_not(None))  # ix_tasks_pending_route
_RUNNING_LEASED = and_(_RUNNING, tasks.c.lease_until_ms.is_not(None))  # ix_tasks_running_lease
_RUNNING_ROUTED = and_(_RUNNING, tasks.c.route_model.is_not(None))  # ix_tasks_running_route


def _served(models: Collection[str] | None) -> tuple[str, ...] | None:
    """The canonical model names a claim may take, sorted; None: every model."""
    if models is None or ALL_MODELS in models:
        return None
    return tuple(sorted(set(models)))


def _model_limits(quotas: QuotaSettings | None) -> dict[str, int]:
    """{canonical model: max_running per account} of `[quotas.models."..."]` (0 there: no limit)."""
    if quotas is None:
        return {}
    return {canonical_name(name): q.max_running for name, q in quotas.models.items() if q.max_running}


def _queue(conn: Connection, row: dict[str, Any]) -> None:
    """Insert a new PENDING task, give its account a place in the round robin, and wake a listening
    worker (at commit)."""
    conn.execute(tasks.insert().values(**row))
    _enqueue_account(conn, row["account_id"], row["submit_ms"])
    announce(conn, row["route_model"])


def _enqueue_account(conn: Connection, account_id: str, now: int) -> None:
    """Give the account its place in the round robin (queue_accounts) if it has none: at the back, as
    if its last claim were now."""
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    conn.execute(dialect.insert(queue_accounts).values(account_id=account_id, last_claim_ms=now)
                 .on_conflict_do_nothing(index_elements=[queue_accounts.c.account_id]))


class TaskStore:
    def __init__(self, engine: Engine, *, lease_seconds: float = 30.0, max_attempts: int = 3,
                 task_ttl_seconds: float = DEFAULT_TASK_TTL_SECONDS, list_limit: int = LIST_LIMIT,
                 quotas: QuotaSettings | None = None) -> None:
        self.engine = engine
        self.quotas = quotas  # the running limits a claim keeps (None: none)
        self.model_limits = _model_limits(quotas)
        self._waiters = Waiters(engine)
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
               request_hash: str | None = None, callback_url: str | None = None,
               route_model: str | None = None) -> dict[str, Any]:
        """A new PENDING task. With `idempotency_key` (unique per account while its task lives): the
        living task already created under the key if `request_hash` matches its own (so the caller
        can tell by its id, or its request_id, that it is not new), ServiceError
        IdempotentParameterMismatch if not. Atomic: of concurrent creates with one key, one inserts and
        the others (their insert refused by the unique index) read its task. With `callback_url` (a
        webhook), the transition that ends the task makes its delivery due (`callback_due_ms`).
        `route_model` is the canonical name workers route on (default: `model`, as spelled)."""
        row = {"id": str(uuid.uuid4()), "account_id": account_id, "api_key_id": api_key_id,
               "request_id": request_id, "model": model, "route_model": route_model or model,
               "endpoint": endpoint,
               "status": TaskStatus.PENDING.value, "request": request, "submit_ms": now_ms(), "attempts": 0}
        if callback_url is not None:
            row["callback_url"] = callback_url
        if idempotency_key is None:
            with write(self.engine) as conn:
                _queue(conn, row)
            return row
        row.update(idempotency_key=idempotency_key, request_hash=request_hash)
        same_key = _same_key(account_id, idempotency_key)
        for _ in range(3):  # a winner can only vanish under expire() (it would have to be past its lifetime)
            with write(self.engine) as conn:
                # A task past its lifetime frees its key, whether or not expire() has deleted it yet.
                conn.execute(update(tasks).where(same_key, ~_alive(self.alive_since_ms()))
                             .values(idempotency_key=None, request_hash=None))
                try:
                    with conn.begin_nested():  # a savepoint: PostgreSQL's transaction survives the refusal
                        _queue(conn, row)
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

    def has_living_key(self, account_id: str, idempotency_key: str) -> bool:
        """Whether a living task of the account was created under `idempotency_key`: a create under it
        answers that task (or a mismatch) and creates nothing, so quotas do not apply to it."""
        query = (select(tasks.c.id)
                 .where(_same_key(account_id, idempotency_key), _alive(self.alive_since_ms())).limit(1))
        with read(self.engine) as conn:
            return conn.execute(query).first() is not None

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
                .values(status=_to("cancel"), end_ms=now_ms(), lease_until_ms=None, code=None, message=None,
                        callback_due_ms=_callback_due(now_ms())))
        with write(self.engine) as conn:
            return conn.execute(stmt).rowcount == 1

    # -- worker side ----------------------------------------------------------------------

    def _runnable(self, now: int):
        """PENDING, or RUNNING with an expired lease (its worker died): the claim UPDATE's guard."""
        return or_(_from("claim"), and_(_from("reclaim"), tasks.c.lease_until_ms < now))

    def claim(self, worker_id: str, models: Collection[str] | None = None) -> Claimed | None:
        """Take a runnable task of one of `models` (canonical names; None or containing "*": any model).

        A task whose worker died (RUNNING, its lease expired) goes first, oldest lease first. Else the
        round robin (docs/queue.md): of the accounts with a PENDING task this claim may take, the one
        whose last claim is oldest, and its oldest such task. "May take": of a served model, and within
        the account's running limits (`[quotas]`: max_running per account, and per account and model);
        an account at a limit is skipped and its tasks wait PENDING.

        None when nothing is runnable (found by reads, so an idle poll takes no write lock), and also
        when the task taken had used all its attempts: the same statement fails it instead
        (`exhaust`), and the worker simply polls again. Every probe is an index seek (the partial
        indexes of migration 0005), so a claim costs the same whatever the queue's length."""
        served = _served(models)
        if served == ():
            return None
        now = now_ms()
        with read(self.engine) as conn:
            lost = conn.execute(self._lost(now, served)).first() is not None
            # "*": the models queued now (a seek each), so every probe below names its model
            queued = tuple(self._queued_models(conn)) if served is None else served
            order = list(conn.execute(self._accounts_with_work(queued)).scalars()) if queued else []
            if self.quotas is not None:  # accounts held back by their limits leave an idle poll idle
                order = list(dropwhile(lambda a: self._pick(conn, a, queued) is None, order))
        if not lost and not order:
            return None
        with write(self.engine) as conn:
            if lost and (reclaimed := self._reclaim(conn, worker_id, now, served)) is not None:
                return reclaimed or None  # False: it was exhausted (FAILED) instead
            # The turns again, now: claims committed since the read have moved their accounts back.
            # Accounts whose turn another claimer is taking now are skipped (we take the next one's),
            # then, if no other had work for us, waited for: their claims take milliseconds.
            order = list(conn.execute(self._accounts_with_work(queued)).scalars()) if queued else []
            taken = []
            for account in order:
                claimed = self._claim_from(conn, account, worker_id, now, queued, wait=False)
                if claimed == TAKEN:
                    taken.append(account)
                elif isinstance(claimed, Claimed):
                    return claimed
            for account in taken:
                claimed = self._claim_from(conn, account, worker_id, now, queued, wait=True)
                if isinstance(claimed, Claimed):
                    return claimed
        return None

    def _claim_update(self, worker_id: str, now: int):
        """The claim's one guarded UPDATE: PENDING or lost -> RUNNING with our lease; or, for a lost task
        that used all its attempts, -> FAILED (`exhaust`) in the same statement."""
        exhausted = and_(_from("exhaust"), tasks.c.lease_until_ms < now,
                         tasks.c.attempts >= self.max_attempts)

        def unless_exhausted(keep, claimed):
            return case((exhausted, keep), else_=claimed)

        return (update(tasks)
                .values(status=unless_exhausted(_to("exhaust"), _to("claim")),
                        worker_id=unless_exhausted(tasks.c.worker_id, worker_id),
                        lease_until_ms=unless_exhausted(null(), literal(now + self.lease_ms, BigInteger)),
                        scheduled_ms=unless_exhausted(tasks.c.scheduled_ms, literal(now, BigInteger)),
                        attempts=unless_exhausted(tasks.c.attempts, tasks.c.attempts + 1),
                        end_ms=unless_exhausted(literal(now, BigInteger), null()),
                        callback_due_ms=unless_exhausted(_callback_due(now), tasks.c.callback_due_ms),
                        code=unless_exhausted(Code.INTERNAL.value, null()),
                        message=unless_exhausted(EXHAUSTED_MESSAGE.format(n=self.max_attempts), null()),
                        progress=None)
                .where(self._runnable(now))
                .returning(tasks.c.id, tasks.c.status, tasks.c.request, tasks.c.attempts, tasks.c.account_id,
                           tasks.c.submit_ms, tasks.c.scheduled_ms))

    @staticmethod
    def _claimed(row, now: int) -> Claimed:
        return Claimed(row.id, row.request, row.attempts, row.account_id,
                       queued_ms=max(0, (row.scheduled_ms or now) - row.submit_ms))

    def _reclaim(self, conn: Connection, worker_id: str, now: int,
                 served: tuple[str, ...] | None) -> Claimed | Literal[False] | None:
        """Take the oldest lost task (RUNNING, lease expired) of a served model, writing its lost attempt
        into the failure history; False if it was exhausted instead, None if there was none to take.

        The candidate is locked (PostgreSQL: FOR UPDATE SKIP LOCKED, so concurrent claimers take
        different tasks; SQLite: the transaction holds the write lock), which is what lets the lost
        attempt's worker be read before the claim overwrites it. Running limits do not apply: the task
        already counts as running."""
        before = conn.execute(self._lost(now, served).with_for_update(skip_locked=True)).first()
        if before is None:
            return None
        row = conn.execute(self._claim_update(worker_id, now).where(tasks.c.id == before.id)).first()
        if row is None:  # cannot happen while the row is locked; the guard keeps it safe anyway
            return None
        conn.execute(insert(task_failures).values(
            task_id=before.id, attempt=before.attempts, worker_id=before.worker_id,
            code=Code.INTERNAL.value, at_ms=now,
            message=LOST_MESSAGE.format(worker=before.worker_id, attempt=before.attempts)))
        return self._claimed(row, now) if row.status == TaskStatus.RUNNING else False

    def _claim_from(self, conn: Connection, account: str, worker_id: str, now: int,
                    models: tuple[str, ...], *, wait: bool) -> Claimed | str | None:
        """Take `account`'s turn: its oldest PENDING task this claim may take, stamping its last claim;
        None if it has none for us, TAKEN if another claimer is taking its turn now (and not `wait`).

        The account's queue_accounts row is locked first (PostgreSQL: FOR UPDATE, SKIP LOCKED unless
        `wait`; SQLite: the write lock), so its running tasks are counted and its next task taken by one
        claimer at a time: the limits hold exactly. All in a savepoint, rolled back when the account has
        nothing for us, so a claim holds at most one account's lock while it waits for another's (no
        deadlock). The task itself changes by one guarded UPDATE (a cancel in between makes it match
        nothing, and we go on)."""
        mine = queue_accounts.c.account_id == account
        turn = conn.begin_nested()
        try:
            if conn.execute(select(queue_accounts.c.account_id).where(mine)
                            .with_for_update(skip_locked=not wait)).first() is None:
                turn.rollback()
                return None if wait else TAKEN
            task_id = self._pick(conn, account, models)
            stmt = self._claim_update(worker_id, now).where(tasks.c.id == task_id, _from("claim"))
            row = conn.execute(stmt).first() if task_id is not None else None
            if row is None:
                turn.rollback()
                return None
            conn.execute(update(queue_accounts).where(mine).values(last_claim_ms=now))
            turn.commit()
            return self._claimed(row, now)
        except BaseException:
            if turn.is_active:
                turn.rollback()
            raise

    def _lost(self, now: int, served: tuple[str, ...] | None) -> Select:
        """The oldest expired lease of a served model (ix_tasks_running_lease)."""
        query = select(tasks.c.id, tasks.c.worker_id, tasks.c.attempts).where(_RUNNING_LEASED,
                                                                              tasks.c.lease_until_ms < now)
        if served is not None:
            query = query.where(tasks.c.route_model.in_(served))
        return query.order_by(tasks.c.lease_until_ms).limit(1)

    def _accounts_with_work(self, models: tuple[str, ...]) -> Select:
        """The accounts with a PENDING task of one of `models`, in round-robin order (oldest last claim
        first). One probe per account (a correlated LIMIT 1 subquery, never a join that could read the
        whole queue), a seek per model in ix_tasks_pending_route."""
        work = select(literal(1)).where(_PENDING_ROUTED, tasks.c.route_model.in_(models),
                                        tasks.c.account_id == queue_accounts.c.account_id)
        turns = select(queue_accounts.c.account_id, queue_accounts.c.last_claim_ms,
                       work.limit(1).scalar_subquery().label("work")).subquery("turns")
        return (select(turns.c.account_id).where(turns.c.work.is_not(None))
                .order_by(turns.c.last_claim_ms, turns.c.account_id))

    def _pick(self, conn: Connection, account: str, models: tuple[str, ...]) -> str | None:
        """The id of `account`'s oldest PENDING task of one of `models` it may start now, or None (none
        queued, or the account at its running limit, or every such model at its per-model limit): the
        oldest of each model's head (a seek each in ix_tasks_pending_route)."""
        blocked = self._blocked_models(conn, account)
        if blocked is None:
            return None
        heads = [select(tasks.c.id, tasks.c.submit_ms)
                 .where(_PENDING_ROUTED, tasks.c.route_model == model, tasks.c.account_id == account)
                 .order_by(tasks.c.submit_ms).limit(1).subquery()
                 for model in models if model not in blocked]
        if not heads:
            return None
        oldest = union_all(*(select(h.c.id, h.c.submit_ms) for h in heads)).subquery("heads")
        return conn.execute(select(oldest.c.id).order_by(oldest.c.submit_ms).limit(1)).scalar()

    def _queued_models(self, conn: Connection) -> list[str]:
        """The models with PENDING tasks: a loose index scan of ix_tasks_pending_route, one seek per
        model, however many tasks each has."""
        found: list[str] = []
        while True:
            query = select(tasks.c.route_model).where(_PENDING_ROUTED)
            if found:
                query = query.where(tasks.c.route_model > found[-1])
            model = conn.execute(query.order_by(tasks.c.route_model).limit(1)).scalar()
            if model is None:
                return found
            found.append(model)

    def _blocked_models(self, conn: Connection, account: str) -> frozenset[str] | None:
        """The models `account` may start no more of now (at their per-model running limit); None if it
        is at its own running limit. Counted from ix_tasks_running_route (RUNNING rows only: as many as
        there are workers)."""
        if self.quotas is None:
            return frozenset()
        account_limit = self.quotas.running_limit(account)
        if not account_limit and not self.model_limits:
            return frozenset()
        query = (select(tasks.c.route_model, func.count())
                 .where(_RUNNING_ROUTED, tasks.c.account_id == account)
                 .group_by(tasks.c.route_model))
        running = {model: n for model, n in conn.execute(query).all()}
        if account_limit and sum(running.values()) >= account_limit:
            return None
        return frozenset(m for m, limit in self.model_limits.items() if running.get(m, 0) >= limit)

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
                .values(status=_to("succeed"), end_ms=now_ms(), result=result, lease_until_ms=None,
                        callback_due_ms=_callback_due(now_ms())))
        with write(self.engine) as conn:
            return conn.execute(stmt).rowcount == 1

    def fail(self, task_id: str, worker_id: str, code: str, message: str) -> bool:
        """RUNNING (ours) -> FAILED, and the attempt's failure into the history, in one transaction.
        False: canceled or taken over meanwhile; nothing was written."""
        now = now_ms()
        stmt = (update(tasks).where(self._own(task_id, worker_id, "fail"))
                .values(status=_to("fail"), end_ms=now, code=str(code), message=message, lease_until_ms=None,
                        callback_due_ms=_callback_due(now))
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
                        progress=None, attempts=tasks.c.attempts - 1)
                .returning(tasks.c.account_id, tasks.c.route_model))
        with write(self.engine) as conn:
            row = conn.execute(stmt).first()
            if row is None:
                return False
            _enqueue_account(conn, row.account_id, now_ms())  # (it has its place unless it lost it)
            announce(conn, row.route_model)  # queued again: wake a listening worker
        return True

    def wait_for_work(self, timeout: float, models: Collection[str] | None = None,
                      stop: threading.Event | None = None) -> bool:
        """An idle worker's wait between claims: until a task of one of `models` is queued (PostgreSQL:
        NOTIFY from create() or release(), True), `stop` is set, or `timeout` passes. On SQLite, or
        without a LISTEN connection, it sleeps `timeout` (the poll), as it must anyway for lost leases."""
        return self._waiters.wait(timeout, _served(models), stop)

    def stop_waiting(self) -> None:
        """Close the calling thread's LISTEN connection (a worker thread as it stops)."""
        self._waiters.close_thread()

    def counts(self) -> dict[tuple[str, str], int]:
        """{(model as stored, status): tasks} over every stored task: the metrics' view at scrape time."""
        query = select(tasks.c.model, tasks.c.status, func.count()).group_by(tasks.c.model, tasks.c.status)
        with read(self.engine) as conn:
            return {(row[0], row[1]): int(row[2]) for row in conn.execute(query)}

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


def _same_key(account_id: str, idempotency_key: str):
    return and_(tasks.c.account_id == account_id, tasks.c.idempotency_key == idempotency_key)


def _callback_due(now: int):
    """Set by every transition that ends a task: its webhook is due now if it has one (else stays NULL), so
    the deliverer's index holds only ended tasks that still owe a delivery."""
    return case((tasks.c.callback_url.is_(None), null()), else_=literal(now, BigInteger))


def _alive(since_ms: int):
    """Within its lifetime: running, or ended (or, never run, submitted) at or after `since_ms`."""
    return or_(tasks.c.status == TaskStatus.RUNNING.value,
               func.coalesce(tasks.c.end_ms, tasks.c.submit_ms) >= since_ms)
