"""The queue (issue 12), on SQLite and on PostgreSQL: a claim takes only the models its worker serves,
accounts take turns (one busy account never starves another), running limits hold tasks back PENDING,
every statement a claim runs is planned on an index, and (PostgreSQL) a create wakes a waiting worker.
docs/queue.md describes the design."""

from __future__ import annotations

import random
import threading
import time

import pytest
from alembic import command
from sqlalchemy import JSON, column, event, insert, table, text, update

from tests.test_task_store import alembic_config, claim_concurrently
from wanserve.config import QuotaLimits, QuotaSettings
from wanserve.tasks.db import migrate, now_ms, open_engine, write
from wanserve.tasks.schema import queue_accounts, tasks
from wanserve.tasks.store import TaskStore

T2V, I2V, KF2V = "wan2.6-t2v", "wan2.6-i2v", "wan2.2-kf2v-flash"


@pytest.fixture
def store(store: TaskStore) -> TaskStore:
    """conftest's store with a long lease: these claims must not see their own tasks' leases run out
    on a loaded machine (the one test about lost tasks ages its lease by hand)."""
    return TaskStore(store.engine, lease_seconds=60, max_attempts=2)


def limited(store: TaskStore, **quotas) -> TaskStore:
    """The same database under `[quotas]` running limits."""
    return TaskStore(store.engine, lease_seconds=60, quotas=QuotaSettings(**quotas))


def new_task(store: TaskStore, account: str = "acct", model: str = T2V) -> str:
    """A PENDING task, a millisecond younger than the one before (submit_ms orders the queue)."""
    time.sleep(0.002)
    return store.create(account_id=account, api_key_id="k", request_id="r", model=model,
                        endpoint="video-generation", request={"model": model})["id"]


def status(store: TaskStore, task_id: str) -> str:
    return store.get(task_id)["status"]


# -- routing ------------------------------------------------------------------------------------


def test_a_claim_takes_only_the_models_its_worker_serves(store):
    t2v, i2v = new_task(store, model=T2V), new_task(store, model=I2V)
    assert store.claim("w", models=[KF2V]) is None
    assert store.claim("w", models=[I2V]).id == i2v
    assert store.claim("w", models=[I2V]) is None
    assert status(store, t2v) == "PENDING"


def test_a_worker_serving_star_takes_every_model(store):
    ids = {new_task(store, model=m) for m in (T2V, I2V, KF2V)}
    assert {store.claim("w", models=["*"]).id for _ in ids} == ids
    assert store.claim("w", models=["*"]) is None


def test_an_empty_model_list_serves_nothing(store):
    new_task(store)
    assert store.claim("w", models=[]) is None


def test_tasks_route_on_the_canonical_name_not_the_callers_alias(store):
    task = store.create(account_id="a", api_key_id="k", request_id="r", model="wan2.1-t2v-turbo",
                        route_model="wanx2.1-t2v-turbo", endpoint="video-generation", request={})
    assert store.claim("w", models=["wan2.1-t2v-turbo"]) is None
    assert store.claim("w", models=["wanx2.1-t2v-turbo"]).id == task["id"]
    assert store.get(task["id"])["model"] == "wan2.1-t2v-turbo"  # the caller's spelling is kept


def test_a_lost_task_is_taken_over_only_by_a_worker_serving_its_model(store):
    tid = new_task(store, model=T2V)
    store.claim("dead", models=[T2V])
    with write(store.engine) as conn:  # the dead worker's lease runs out
        conn.execute(update(tasks).where(tasks.c.id == tid).values(lease_until_ms=now_ms() - 1))
    assert store.claim("w", models=[I2V]) is None
    assert store.claim("w", models=[T2V]).id == tid


def test_migration_0005_routes_existing_tasks_by_their_request_or_the_catalog(db_url):
    engine = open_engine(db_url)
    # the tasks table as revision 0004 left it, for the columns written here
    old_tasks = table("tasks", *(column(c) for c in ("id", "account_id", "api_key_id", "request_id", "model",
                                                    "endpoint", "status", "submit_ms", "attempts")),
                      column("request", JSON))
    base = {"account_id": "old", "api_key_id": "k", "request_id": "r", "endpoint": "e", "status": "PENDING",
            "submit_ms": 1, "attempts": 0}
    with engine.begin() as conn:
        cfg = alembic_config()
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0004")
        conn.execute(insert(old_tasks), [
            {**base, "id": "by-request", "model": "wan2.1-t2v-turbo",
             "request": {"model": "wanx2.1-t2v-turbo"}},
            {**base, "id": "by-catalog", "model": "wan2.1-t2v-turbo", "request": {}},
            {**base, "id": "unknown", "model": "my-model", "request": {}}])
    migrate(engine)
    store = TaskStore(engine)
    assert {t: store.get(t)["route_model"] for t in ("by-request", "by-catalog", "unknown")} == {
        "by-request": "wanx2.1-t2v-turbo", "by-catalog": "wanx2.1-t2v-turbo", "unknown": "my-model"}
    assert store.claim("w", models=["wanx2.1-t2v-turbo"]).id in {"by-request", "by-catalog"}  # it has a turn
    engine.dispose()


# -- fairness -----------------------------------------------------------------------------------


def test_one_busy_account_does_not_starve_another(store):
    for _ in range(100):
        new_task(store, "busy")
    late = new_task(store, "other")
    order = [c.id for c in claim_concurrently(store, workers=2, each=3)]
    assert late in order[:3], order


def test_busy_accounts_take_turns_each_oldest_first(store):
    a = [new_task(store, "a") for _ in range(3)]
    b = [new_task(store, "b") for _ in range(3)]
    assert [store.claim("w").id for _ in range(6)] == [a[0], b[0], a[1], b[1], a[2], b[2]]


# -- running limits -----------------------------------------------------------------------------


def test_an_account_at_its_running_limit_waits_while_others_run(store):
    store = limited(store, max_running=1)
    a1, a2, b1 = new_task(store, "a"), new_task(store, "a"), new_task(store, "b")
    assert {store.claim("w1").id, store.claim("w2").id} == {a1, b1}
    assert store.claim("w3") is None
    assert status(store, a2) == "PENDING"
    assert store.succeed(a1, "w1", {"usage": {}}) or store.succeed(a1, "w2", {"usage": {}})
    assert store.claim("w3").id == a2  # its running task ended: its next one may start


def test_an_account_may_have_its_own_running_limit(store):
    store = limited(store, max_running=1, accounts={"big": QuotaLimits(max_running=2)})
    big = [new_task(store, "big") for _ in range(3)]
    assert {store.claim("w").id, store.claim("w").id} == set(big[:2])
    assert store.claim("w") is None


def test_a_per_model_limit_holds_back_only_that_model(store):
    store = limited(store, models={T2V: QuotaLimits(max_running=1)})
    t2v = [new_task(store, "a", T2V) for _ in range(2)]
    i2v = new_task(store, "a", I2V)
    other = new_task(store, "b", T2V)  # the limit is per account
    claimed = {store.claim("w").id for _ in range(3)}
    assert claimed == {t2v[0], i2v, other}
    assert store.claim("w") is None and store.claim("w", models=[T2V]) is None
    assert status(store, t2v[1]) == "PENDING"


def test_limits_hold_under_concurrent_claimers(store):
    store = limited(store, max_running=2)
    for account in ("a", "b"):
        for _ in range(10):
            new_task(store, account)
    claimed = [c.account_id for c in claim_concurrently(store, workers=6)]
    assert sorted(claimed) == ["a", "a", "b", "b"]


# -- plans --------------------------------------------------------------------------------------


def fill_queue(engine, n: int, *, accounts: int = 5, seed: int = 1) -> None:
    """n tasks, mostly finished, a tenth PENDING and a few RUNNING (some with expired leases), over
    `accounts` accounts and three models; inserted directly, in bulk, with the accounts' turns."""
    rnd, now = random.Random(seed), now_ms()
    rows = []
    for i in range(n):
        state = rnd.choices(["SUCCEEDED", "PENDING", "RUNNING"], [85, 12, 3])[0]
        model = rnd.choice([T2V, I2V, KF2V])
        row = {"id": f"{i:08d}", "account_id": f"acct{i % accounts}", "api_key_id": "k", "request_id": "r",
               "model": model, "route_model": model, "endpoint": "e", "status": state, "request": {},
               "submit_ms": now - n + i, "attempts": 0, "end_ms": None, "result": None, "worker_id": None,
               "lease_until_ms": None}
        if state == "SUCCEEDED":
            row.update(end_ms=now, result={"usage": {}})
        elif state == "RUNNING":
            row.update(worker_id="w", attempts=1, lease_until_ms=now + rnd.choice([-1000, 60_000]))
        rows.append(row)
    with engine.begin() as conn:
        for i in range(0, n, 1000):
            conn.execute(insert(tasks), rows[i:i + 1000])
        conn.execute(insert(queue_accounts), [{"account_id": f"acct{a}", "last_claim_ms": a}
                                              for a in range(accounts)])


def claim_statements(store: TaskStore, **claim) -> list[tuple[str, object]]:
    """Every SELECT and UPDATE one claim runs, with its parameters."""
    seen: list[tuple[str, object]] = []

    def record(_conn, _cursor, statement, parameters, _context, _many):
        if statement.lstrip().upper().startswith(("SELECT", "UPDATE", "WITH")):
            seen.append((statement, parameters))

    event.listen(store.engine, "before_cursor_execute", record)
    try:
        store.claim("planner", **claim)
    finally:
        event.remove(store.engine, "before_cursor_execute", record)
    return seen


def plan(store: TaskStore, statement: str, parameters) -> str:
    with store.engine.connect() as conn:
        if conn.dialect.name == "sqlite":
            rows = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters)
            return "\n".join(r[-1] for r in rows)
        return "\n".join(r[0] for r in conn.exec_driver_sql("EXPLAIN " + statement, parameters))


# the claim's own indexes (migration 0005), and the primary key (the guarded UPDATE, by id)
CLAIM_INDEXES = ("ix_tasks_pending_route", "ix_tasks_running_lease", "ix_tasks_running_route",
                 "sqlite_autoindex_tasks_1", "tasks_pkey")


def test_every_statement_of_a_claim_reads_an_index_not_the_table(store):
    fill_queue(store.engine, 6000)
    if store.engine.dialect.name == "postgresql":
        with store.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("VACUUM ANALYZE"))
    else:
        with store.engine.begin() as conn:
            conn.execute(text("ANALYZE"))
    quotas = limited(store, max_running=50, models={T2V: QuotaLimits(max_running=1)})
    cases = [(store, {}), (store, {"models": [T2V, I2V]}), (quotas, {}), (quotas, {"models": [I2V, KF2V]})]
    checked = 0
    for claimer, claim in cases:
        for statement, parameters in claim_statements(claimer, **claim):
            if "tasks" not in statement:
                continue  # queue_accounts alone: one row per account
            explained = plan(claimer, statement, parameters)
            assert "Seq Scan on tasks" not in explained, (statement, explained)
            lines = {line.strip() for line in explained.split("\n")}
            assert not {"SCAN tasks", "SCAN TABLE tasks"} & lines, (statement, explained)
            assert any(index in explained for index in CLAIM_INDEXES), (statement, explained)
            if claimer.engine.dialect.name == "sqlite":
                assert "USING INDEX" in explained or "USING COVERING INDEX" in explained, \
                    (statement, explained)
            checked += 1
    assert checked >= 12  # the lost probe, the accounts' turns, the heads, the limits, the UPDATEs


# -- wake-up ------------------------------------------------------------------------------------


def test_a_wait_ends_at_once_when_the_worker_is_told_to_stop(store):
    stop = threading.Event()
    stop.set()
    started = time.monotonic()
    assert store.wait_for_work(5.0, stop=stop) is False
    assert time.monotonic() - started < 0.5


def _wait_in_thread(store: TaskStore, timeout: float, models) -> tuple[threading.Thread, dict]:
    out: dict = {}

    def waiter() -> None:
        started = time.monotonic()
        out["woken"] = store.wait_for_work(timeout, models)
        out["seconds"] = time.monotonic() - started
        store.stop_waiting()

    t = threading.Thread(target=waiter)
    t.start()
    return t, out


def test_a_create_wakes_a_waiting_worker_long_before_its_poll(store):
    if store.engine.dialect.name != "postgresql":
        pytest.skip("SQLite has no notifications: an idle worker polls")
    store.wait_for_work(0.01)  # this thread's LISTEN connection, as a worker has before its first wait
    t, out = _wait_in_thread(store, 10.0, [T2V])
    time.sleep(0.3)  # the waiter is listening
    new_task(store, model=T2V)
    t.join(5)
    assert out["woken"] is True and out["seconds"] < 2.0, out
    store.stop_waiting()


def test_a_create_of_another_model_does_not_wake_the_worker(store):
    if store.engine.dialect.name != "postgresql":
        pytest.skip("SQLite has no notifications: an idle worker polls")
    t, out = _wait_in_thread(store, 1.0, [I2V])
    time.sleep(0.3)
    new_task(store, model=T2V)
    t.join(5)
    assert out["woken"] is False and out["seconds"] >= 0.9, out
