"""The task state machine and its queue, on SQLite and on PostgreSQL (the local server CI has)."""

from __future__ import annotations

import itertools
import threading
import time
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, event, inspect, select, update
from sqlalchemy.exc import IntegrityError

import wanserve.tasks
from wanserve.tasks.db import migrate, now_ms, open_engine, read
from wanserve.tasks.schema import TASK_CHECKS, metadata, task_failures, tasks
from wanserve.tasks.states import TRANSITIONS, TaskStatus, describe
from wanserve.tasks.store import Claimed, TaskStore


def new_task(store: TaskStore, account: str = "acct") -> str:
    return store.create(account_id=account, api_key_id="k", request_id="r", model="wan2.6-t2v",
                        endpoint="video-generation", request={"n": 1})["id"]


def claim_concurrently(store: TaskStore, workers: int, each: int | None = None) -> list[Claimed]:
    """What `workers` threads claiming from `store` at once took, in the order taken: each thread claims
    `each` times, or (None) until nothing is left."""
    claimed: list[Claimed] = []
    lock = threading.Lock()

    def worker(name: str) -> None:
        for _ in itertools.count() if each is None else range(each):
            if (c := store.claim(name)) is None:
                return
            with lock:
                claimed.append(c)

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return claimed


def alembic_config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", "wanserve.tasks:migrations")
    return cfg


# the newest file under tasks/migrations/versions (named <revision>_<what>.py)
LATEST_REVISION = max(p.name.split("_")[0] for p in (Path(wanserve.tasks.__file__).parent / "migrations"
                                                      / "versions").glob("0*.py"))


def schema_snapshot(engine: Engine) -> dict:
    insp = inspect(engine)
    return {t: {"columns": [(c["name"], str(c["type"]), c["nullable"]) for c in insp.get_columns(t)],
                "indexes": sorted((i["name"], tuple(i["column_names"])) for i in insp.get_indexes(t)),
                "checks": sorted(c["name"] for c in insp.get_check_constraints(t)),
                "fks": sorted(str(f["referred_table"]) for f in insp.get_foreign_keys(t))}
            for t in sorted(insp.get_table_names())}


def test_migrations_are_idempotent_and_match_schema_py(db_url):
    engine = open_engine(db_url)
    migrate(engine)
    first = schema_snapshot(engine)
    migrate(engine)
    assert schema_snapshot(engine) == first
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    with engine.connect() as conn:
        assert MigrationContext.configure(conn).get_current_revision() == head == LATEST_REVISION
        assert compare_metadata(MigrationContext.configure(conn), metadata) == []  # tables, columns, indexes
    assert set(first) >= {"accounts", "api_keys", "tasks", "task_failures", "uploads", "alembic_version"}
    assert first["tasks"]["checks"] == sorted(TASK_CHECKS)  # what autogenerate does not compare
    engine.dispose()


def test_a_database_at_revision_0001_is_upgraded_with_its_tasks(db_url):
    engine = open_engine(db_url)
    cfg = alembic_config()
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0001")
        base = {"account_id": "a", "api_key_id": "k", "request_id": "r", "model": "m", "endpoint": "e",
                "request": {}, "submit_ms": 1, "attempts": 1, "end_ms": None, "result": None,
                "worker_id": None, "lease_until_ms": None}
        for row in ({"id": "done", "status": "SUCCEEDED", "end_ms": 5, "result": {"usage": {}}},
                    {"id": "stale-lease", "status": "CANCELED", "end_ms": 5, "lease_until_ms": 9},
                    {"id": "running", "status": "RUNNING", "worker_id": "w", "lease_until_ms": 9}):
            conn.execute(tasks.insert().values(**{**base, **row}))
    migrate(engine)
    store = TaskStore(engine)
    assert store.get("done")["result"] == {"usage": {}}
    assert store.get("stale-lease")["lease_until_ms"] is None  # brought into line with the constraints
    assert store.get("running")["status"] == TaskStatus.RUNNING
    engine.dispose()


def _impossible(engine: Engine, task_id: str, **values) -> None:
    with pytest.raises(IntegrityError), engine.begin() as conn:
        conn.execute(update(tasks).where(tasks.c.id == task_id).values(**values))


def test_check_constraints_refuse_impossible_rows(store):
    pending = new_task(store)
    running = new_task(store)
    store.claim("w")  # pending is the oldest
    store.claim("w")
    e = store.engine
    _impossible(e, pending, status="DONE")
    _impossible(e, pending, status="SUCCEEDED", result={"usage": {}})  # terminal without end_ms
    _impossible(e, pending, end_ms=now_ms())  # end_ms on a task that has not ended
    _impossible(e, running, status="SUCCEEDED", end_ms=now_ms(), lease_until_ms=None)  # without result
    _impossible(e, running, status="FAILED", end_ms=now_ms(), lease_until_ms=None)  # without a code
    _impossible(e, running, worker_id=None)  # RUNNING without an owner
    _impossible(e, running, lease_until_ms=None)  # RUNNING without a lease
    _impossible(e, running, status="CANCELED", end_ms=now_ms())  # a lease on a task that is not RUNNING
    with pytest.raises(IntegrityError):
        store.succeed(running, "w", None)  # type: ignore[arg-type]  # SUCCEEDED needs a result
    assert store.get(pending)["status"] == store.get(running)["status"] == TaskStatus.RUNNING
    assert store.succeed(running, "w", {"usage": {}})  # the rows are still usable


def test_the_transition_table_is_complete():
    assert set(TRANSITIONS) == {"claim", "reclaim", "exhaust", "heartbeat", "succeed", "fail", "release",
                                "cancel"}
    assert TRANSITIONS["cancel"].sources == (TaskStatus.PENDING, TaskStatus.RUNNING)
    assert all(f"| {event} |" in describe() for event in TRANSITIONS)


def test_claim_takes_the_oldest_pending_task_and_marks_it_running(store):
    first, second = new_task(store), new_task(store)
    claimed = store.claim("w1")
    assert claimed.id == first and claimed.attempts == 1
    task = store.get(first)
    assert task["status"] == "RUNNING" and task["worker_id"] == "w1" and task["scheduled_ms"]
    assert store.get(second)["status"] == "PENDING"


def test_claim_returns_none_when_nothing_is_runnable(store):
    assert store.claim("w1") is None


def test_concurrent_workers_never_claim_the_same_task(store):
    # a lease long enough that none runs out while the threads claim (these workers never heartbeat)
    store = TaskStore(store.engine, lease_seconds=60, max_attempts=2)
    ids = {new_task(store) for _ in range(20)}
    claimed = [c.id for c in claim_concurrently(store, workers=6)]
    assert sorted(claimed) == sorted(ids)


def test_a_running_task_is_reclaimed_only_after_its_lease_runs_out(store):
    tid = new_task(store)
    store.claim("dead-worker")
    assert store.claim("w2") is None
    time.sleep(0.4)
    again = store.claim("w2")
    assert again.id == tid and again.attempts == 2
    assert not store.heartbeat(tid, "dead-worker")  # the old owner has lost it
    assert not store.succeed(tid, "dead-worker", {"usage": {}})
    assert store.succeed(tid, "w2", {"usage": {}})


def test_heartbeat_keeps_the_lease(store):
    tid = new_task(store)
    store.claim("w1")
    for _ in range(4):
        time.sleep(0.15)
        assert store.heartbeat(tid, "w1", {"done": 1, "total": 2})
    assert store.claim("w2") is None
    assert store.get(tid)["progress"] == {"done": 1, "total": 2}


def test_task_fails_after_max_attempts_of_lost_leases(store):
    tid = new_task(store)
    store.claim("w1")
    time.sleep(0.4)
    store.claim("w2")
    time.sleep(0.4)
    assert store.claim("w3") is None
    task = store.get(tid)
    assert task["status"] == "FAILED" and task["code"] == "InternalError" and task["end_ms"]


def test_cancel_moves_pending_and_running_to_canceled_only(store):
    pending, running, done = new_task(store), new_task(store), new_task(store)
    store.claim("w")  # pending -> running (oldest first)
    store.cancel(pending, "acct")
    claimed = store.claim("w")
    assert claimed.id == running
    store.claim("w")
    assert store.succeed(done, "w", {"usage": {}})
    assert store.cancel(running, "acct")
    assert not store.cancel(done, "acct")
    assert not store.heartbeat(running, "w")  # the worker sees it at its next beat
    assert not store.succeed(running, "w", {})
    assert store.get(running)["status"] == "CANCELED"


def test_statuses_answers_for_the_ids_that_exist(store):
    pending, running = new_task(store), new_task(store)
    store.claim("w")
    store.claim("w")
    store.cancel(running, "acct")
    assert store.statuses([pending, running, "gone"]) == {pending: TaskStatus.RUNNING,
                                                          running: TaskStatus.CANCELED}
    assert store.statuses([]) == {}


def test_cancel_by_another_account_changes_nothing(store):
    tid = new_task(store, account="a")
    assert not store.cancel(tid, "b")
    assert store.get(tid)["status"] == "PENDING"


def test_fail_records_code_message_and_end_time(store):
    tid = new_task(store)
    store.claim("w")
    assert store.fail(tid, "w", "InvalidURL", "bad url")
    task = store.get(tid)
    assert (task["status"], task["code"], task["message"]) == ("FAILED", "InvalidURL", "bad url")
    assert task["end_ms"] >= task["scheduled_ms"] >= task["submit_ms"]


def test_expire_removes_old_finished_tasks_but_not_running_ones(store):
    old, running, fresh = new_task(store), new_task(store), new_task(store)
    store.claim("w")
    store.cancel(old, "acct")
    store.claim("w")  # running
    with store.engine.begin() as conn:
        conn.execute(update(tasks).where(tasks.c.id != fresh).values(submit_ms=now_ms() - 10_000_000))
        conn.execute(update(tasks).where(tasks.c.id == old).values(end_ms=now_ms() - 10_000_000))
    assert store.expire(now_ms() - 5_000_000) == [old]
    assert store.get(old) is None and store.get(running) and store.get(fresh)


def test_expire_deletes_the_failure_history_too(store):
    tid = new_task(store)
    store.claim("w")
    assert store.fail(tid, "w", "InvalidURL", "bad url")
    assert len(store.failures(tid)) == 1
    with store.engine.begin() as conn:
        conn.execute(update(tasks).where(tasks.c.id == tid).values(submit_ms=1, end_ms=1))
    assert store.expire() == [tid]
    assert store.failures(tid) == [] and store.get(tid) is None
    with store.engine.begin() as conn:
        assert conn.execute(select(task_failures)).first() is None


def test_the_store_owns_the_lifetime(db_url):
    engine = open_engine(db_url)
    migrate(engine)
    store = TaskStore(engine, task_ttl_seconds=60)
    old, young = new_task(store), new_task(store)
    assert store.alive_since_ms() == pytest.approx(now_ms() - 60_000, abs=1000)
    with engine.begin() as conn:
        conn.execute(update(tasks).where(tasks.c.id == old).values(submit_ms=now_ms() - 61_000))
    assert store.get(old) is not None  # still stored
    assert store.get(old, alive_only=True) is None and store.get(young, alive_only=True) is not None
    total, rows = store.list("acct", start_ms=0, end_ms=now_ms())
    assert total == 1 and [r["id"] for r in rows] == [young]
    assert store.expire() == [old]
    engine.dispose()


# -- failure history ----------------------------------------------------------------------------


def test_fail_records_the_attempt_in_the_history(store):
    tid = new_task(store)
    store.claim("w")
    assert store.failures(tid) == []
    assert store.fail(tid, "w", "InvalidURL", "bad url")
    [row] = store.failures(tid)
    assert (row["attempt"], row["worker_id"], row["code"]) == (1, "w", "InvalidURL")
    assert row["message"] == "bad url" and row["at_ms"] >= store.get(tid)["scheduled_ms"]
    assert not store.fail(tid, "w", "InvalidURL", "again")  # not RUNNING any more: nothing written
    assert len(store.failures(tid)) == 1


def test_release_hands_a_running_task_back_with_its_attempt_not_counted(store):
    tid = new_task(store)
    assert store.claim("w1").attempts == 1
    assert store.heartbeat(tid, "w1", {"done": 1, "total": 2})
    assert not store.release(tid, "w2")  # only the lease holder
    assert store.release(tid, "w1")  # every CHECK constraint holds for the row it leaves
    row = store.get(tid)
    assert row["status"] == TaskStatus.PENDING and row["attempts"] == 0
    assert (row["worker_id"], row["lease_until_ms"], row["scheduled_ms"], row["progress"], row["end_ms"]) == (
        None, None, None, None, None)
    assert not store.release(tid, "w1")  # PENDING: nothing to hand back
    again = store.claim("w2")  # at once, not after a lease
    assert again is not None and again.id == tid and again.attempts == 1
    assert store.failures(tid) == []  # a released attempt is no failure
    assert store.cancel(tid, "acct")
    assert not store.release(tid, "w2")


def test_a_lost_lease_reclaimed_is_recorded_as_a_failed_attempt(store):
    tid = new_task(store)
    store.claim("dead-worker")
    time.sleep(0.4)
    again = store.claim("w2")
    assert again.id == tid and again.attempts == 2 and again.account_id == "acct"
    [lost] = store.failures(tid)
    assert (lost["attempt"], lost["worker_id"], lost["code"]) == (1, "dead-worker", "InternalError")
    assert "stopped responding" in lost["message"]
    assert store.fail(tid, "w2", "InternalError.Algo", "boom")
    assert [(f["attempt"], f["worker_id"]) for f in store.failures(tid)] == [(1, "dead-worker"), (2, "w2")]


def test_an_exhausted_task_fails_inside_claim_and_keeps_every_attempt(store):
    tid = new_task(store)  # max_attempts=2 in this fixture
    store.claim("w1")
    time.sleep(0.4)
    store.claim("w2")
    time.sleep(0.4)
    later = new_task(store)
    assert store.claim("w3") is None  # the claim statement failed the exhausted task instead
    task = store.get(tid)
    assert task["status"] == TaskStatus.FAILED and task["code"] == "InternalError"
    assert task["message"] == ("The task was interrupted 2 times (its worker stopped responding); please "
                               "submit it again.")
    assert task["end_ms"] and task["lease_until_ms"] is None and task["attempts"] == 2
    assert [(f["attempt"], f["worker_id"]) for f in store.failures(tid)] == [(1, "w1"), (2, "w2")]
    claimed = store.claim("w3")  # the next poll takes the next task
    assert claimed.id == later and claimed.attempts == 1


# -- reads never wait for a writer ------------------------------------------------------------


def _hold_write_lock(db_url: str, ready: threading.Event, release: threading.Event) -> None:
    """Another connection holding the lock a writer needs, until `release`."""
    if db_url.startswith("sqlite"):
        import sqlite3

        conn = sqlite3.connect(db_url.removeprefix("sqlite:///"), isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
    else:
        import psycopg

        conn = psycopg.connect(db_url.replace("postgresql+psycopg", "postgresql"))
        conn.execute("LOCK TABLE tasks IN EXCLUSIVE MODE")  # plain SELECTs only
    ready.set()
    release.wait(30)
    conn.rollback()
    conn.close()


def _in_thread(fn, wait: float) -> tuple[threading.Thread, list]:
    out: list = []
    t = threading.Thread(target=lambda: out.append(fn()), daemon=True)
    t.start()
    t.join(wait)
    return t, out


def _quick(fn):
    """fn()'s result, asserting it came back in under 0.5 s (a write would wait for the lock)."""
    t0 = time.monotonic()
    t, out = _in_thread(fn, 2)
    assert not t.is_alive() and time.monotonic() - t0 < 0.5
    return out[0]


def test_an_idle_claim_and_reads_take_no_write_lock(store, db_url):
    done = new_task(store)
    store.claim("w")
    assert store.succeed(done, "w", {"usage": {}})
    ready, release = threading.Event(), threading.Event()
    holder = threading.Thread(target=_hold_write_lock, args=(db_url, ready, release), daemon=True)
    holder.start()
    assert ready.wait(10)
    try:
        assert _quick(lambda: store.claim("idle")) is None
        assert _quick(lambda: store.get(done, alive_only=True))["status"] == TaskStatus.SUCCEEDED
        assert _quick(lambda: store.list("acct", start_ms=0, end_ms=now_ms()))[0] == 1
        assert _quick(lambda: store.status(done)) == TaskStatus.SUCCEEDED
        assert _quick(lambda: store.failures(done)) == []
        writer, _ = _in_thread(lambda: new_task(store), 0.5)
        assert writer.is_alive()  # a write does wait for the lock, so the reads above mean something
    finally:
        release.set()
        holder.join(10)
    writer.join(10)
    assert not writer.is_alive()


def test_a_read_transaction_issues_a_deferred_begin_on_sqlite(tmp_path):
    engine = open_engine(f"sqlite:///{tmp_path / 'x.db'}")
    migrate(engine)
    seen: list[str] = []
    event.listen(engine, "before_cursor_execute", lambda *a: seen.append(a[2]))
    with read(engine) as conn:
        conn.execute(select(tasks.c.id)).all()
    with engine.begin() as conn:
        conn.execute(select(tasks.c.id)).all()
    assert [s for s in seen if s.startswith("BEGIN")] == ["BEGIN", "BEGIN IMMEDIATE"]
    engine.dispose()
