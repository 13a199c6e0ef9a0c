"""A stopped worker's task is taken over (issue 18, item 7).

A worker process stopped with SIGSTOP (or frozen) stops renewing its lease; a live worker must take its
task over within the lease plus one poll, wherever the stop landed. The stop that used to lose the task
for good (once in 22 trials on PostgreSQL) landed inside a heartbeat: the stopped process's open
transaction kept the task row locked, and the claim, which skips locked rows (SKIP LOCKED), never saw
the task, for as long as the process stayed stopped. PostgreSQL now ends a session idle in a transaction
after half a lease (tasks/db.py, idle_transaction_seconds), which releases the lock in time.

Each run makes 20 trials at once: 20 worker "processes" (an engine each), each running one task and
stopped at a different point of its heartbeat cycle (on PostgreSQL half of them inside a heartbeat's
transaction; SQLite holds its one write lock across processes, so a process stopped inside a write
transaction holds up every writer there, and that case is not one SQLite can recover from), and one
live worker polling; every task must be the live worker's within lease + one poll of the stop.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

from sqlalchemy import Connection, select, update

from wanserve.config import Settings
from wanserve.services import Services
from wanserve.tasks.db import idle_transaction_seconds, now_ms, open_engine
from wanserve.tasks.schema import tasks
from wanserve.tasks.store import TaskStore

TRIALS = 20
LEASE_S = 2.0
POLL_S = 0.1
SLACK_S = 0.5  # a busy CI machine's scheduling, on top of lease + one poll


@dataclass
class Stopped:
    task_id: str
    worker_id: str
    store: TaskStore
    held: Connection | None = None  # PostgreSQL: stopped inside a heartbeat, its transaction open


def test_a_stopped_workers_task_is_taken_over_within_lease_and_one_poll(db_url, tmp_path):
    live = Services.open(Settings(data_dir=tmp_path / "live", database_url=db_url, lease_seconds=LEASE_S,
                                  poll_seconds=POLL_S))
    rng = random.Random(18)
    postgres = live.db.dialect.name == "postgresql"
    stopped: list[Stopped] = []
    try:
        ids = [live.store.create(account_id=f"acct{i % 3}", api_key_id="k", request_id="r", model="m",
                                 endpoint="video-generation", request={"model": "m"})["id"]
               for i in range(TRIALS)]
        for i in range(TRIALS):  # each "process" claims one task with its own engine, as Services.open would
            engine = open_engine(db_url, idle_transaction_s=idle_transaction_seconds(LEASE_S))
            store = TaskStore(engine, lease_seconds=LEASE_S)
            claimed = store.claim(f"stopped-{i}")
            assert claimed is not None
            stopped.append(Stopped(claimed.id, f"stopped-{i}", store))
        assert {s.task_id for s in stopped} == set(ids)
        # the beats before the stop, up to a quarter second apart (the keeper's interval)
        for s in stopped:
            time.sleep(rng.uniform(0, 0.25) / TRIALS)
            assert s.store.heartbeat(s.task_id, s.worker_id, {"done": 1, "total": 2})
        # SIGSTOP: half of them (PostgreSQL) inside their next heartbeat, its UPDATE sent, no COMMIT
        for i, s in enumerate(stopped):
            if postgres and i % 2 == 0:
                s.held = s.store.engine.connect()
                s.held.begin()
                s.held.execute(update(tasks).where(tasks.c.id == s.task_id)
                               .values(lease_until_ms=now_ms() + round(LEASE_S * 1000)))
        stop_at = time.monotonic()

        # the live worker: claim, else wait one poll
        taken: dict[str, float] = {}
        deadline = stop_at + LEASE_S + POLL_S + SLACK_S
        while len(taken) < TRIALS and time.monotonic() < deadline + 2:
            claimed = live.store.claim("live")
            if claimed is None:
                time.sleep(POLL_S)
            else:
                taken[claimed.id] = time.monotonic() - stop_at
        late = {t: round(s, 2) for t, s in taken.items() if s > LEASE_S + POLL_S + SLACK_S}
        missing = set(ids) - set(taken)
        assert not missing and not late, (f"{len(missing)} of {TRIALS} never taken over, "
                                          f"{len(late)} late: {sorted(late.values())}")
        with live.db.connect() as conn:
            owners = dict(conn.execute(select(tasks.c.id, tasks.c.worker_id)).all())
        assert set(owners.values()) == {"live"}

        # SIGCONT: the stopped workers carry on; none gets its task back, none takes the live one's lease
        for s in stopped:
            if s.held is not None:
                try:
                    s.held.commit()  # PostgreSQL ended the idle session: the late beat is refused
                except Exception:  # noqa: BLE001 - the connection is gone, as it should be
                    pass
                finally:
                    s.held.close()
                    s.held = None
            assert not s.store.heartbeat(s.task_id, s.worker_id)
        with live.db.connect() as conn:
            rows = conn.execute(select(tasks.c.worker_id, tasks.c.attempts, tasks.c.status)).all()
        assert {(r.worker_id, r.attempts, r.status) for r in rows} == {("live", 2, "RUNNING")}
    finally:
        for s in stopped:
            if s.held is not None:
                s.held.close()
            s.store.engine.dispose()
        live.close()
