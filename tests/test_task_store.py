"""The task state machine and its queue, on SQLite and on PostgreSQL (the local server CI has)."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine, text, update
from sqlalchemy.exc import OperationalError

from wanserve.tasks.db import migrate, now_ms, open_engine
from wanserve.tasks.schema import tasks
from wanserve.tasks.store import TaskStore

PG_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


def _postgres_url() -> Iterator[str]:
    name = f"wanserve_test_{uuid.uuid4().hex[:8]}"
    admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except OperationalError as exc:  # pragma: no cover - CI machines run PostgreSQL locally
        pytest.skip(f"PostgreSQL not reachable at {PG_ADMIN}: {exc}")
    yield PG_ADMIN.rsplit("/", 1)[0] + f"/{name}"
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'tasks.db'}"
    else:
        yield from _postgres_url()


@pytest.fixture
def store(db_url) -> Iterator[TaskStore]:
    engine = open_engine(db_url)
    migrate(engine)
    yield TaskStore(engine, lease_seconds=0.3, max_attempts=2)
    engine.dispose()


def new_task(store: TaskStore, account: str = "acct") -> str:
    return store.create(account_id=account, api_key_id="k", request_id="r", model="wan2.6-t2v",
                        endpoint="video-generation", request={"n": 1})["id"]


def test_migrations_are_idempotent(db_url):
    engine = open_engine(db_url)
    migrate(engine)
    migrate(engine)
    engine.dispose()


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
    ids = {new_task(store) for _ in range(20)}
    claimed: list[str] = []
    lock = threading.Lock()

    def worker(name: str) -> None:
        while (c := store.claim(name)) is not None:
            with lock:
                claimed.append(c.id)

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
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
