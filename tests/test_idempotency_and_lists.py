"""Idempotent create (X-Idempotency-Key, an extension) and the task list at scale (issue 10), on SQLite
and on PostgreSQL: one task per key however many creates race for it, the list's results unchanged
by the deferred join, and its statements planned on the list's index."""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import func, insert, select, text, update

from wanserve.accounts.keys import create_key
from wanserve.errors import Code, ServiceError
from wanserve.tasks.db import migrate, now_ms, open_engine
from wanserve.tasks.schema import tasks
from wanserve.tasks.states import TERMINAL, TaskStatus
from wanserve.tasks.store import TaskStore

T2V = {"model": "wanx2.1-t2v-turbo", "input": {"prompt": "a cat"}, "parameters": {"size": "832*480"}}
KF2V = {"model": "wan2.2-kf2v-flash", "input": {"prompt": "a door opens",
                                                "first_frame_url": "https://example.com/first.png",
                                                "last_frame_url": "https://example.com/last.png"}}
HOUR = 3600 * 1000


@pytest.fixture
def store(db_url) -> Iterator[TaskStore]:
    engine = open_engine(db_url)
    migrate(engine)
    yield TaskStore(engine)
    engine.dispose()


def keyed(store: TaskStore, key: str | None, request_hash: str = "h1", account: str = "acct") -> dict:
    return store.create(account_id=account, api_key_id="k", request_id="r", model="wan2.6-t2v",
                        endpoint="video-generation", request={"n": 1}, idempotency_key=key,
                        request_hash=request_hash)


def count(store: TaskStore, account: str | None = None) -> int:
    query = select(func.count()).select_from(tasks)
    if account is not None:
        query = query.where(tasks.c.account_id == account)
    with store.engine.connect() as conn:
        return conn.execute(query).scalar_one()


# -- idempotency in the store -------------------------------------------------------------------


def test_the_same_key_and_request_give_one_task(store):
    first = keyed(store, "order-1")
    again = keyed(store, "order-1")
    assert again["id"] == first["id"] and again["status"] == TaskStatus.PENDING
    assert count(store) == 1
    assert keyed(store, None)["id"] != keyed(store, None)["id"]  # no key: a new task each time
    assert count(store) == 3


def test_the_same_key_with_another_request_is_a_conflict_and_creates_nothing(store):
    first = keyed(store, "order-1", "h1")
    with pytest.raises(ServiceError) as err:
        keyed(store, "order-1", "h2")
    assert err.value.code == Code.IDEMPOTENT_MISMATCH and first["id"] in err.value.message
    assert count(store) == 1


def test_keys_belong_to_their_account(store):
    a = keyed(store, "order-1", "h1", account="a")
    b = keyed(store, "order-1", "h2", account="b")
    assert a["id"] != b["id"] and count(store) == 2


def test_the_replay_answers_the_task_as_it_is_now(store):
    tid = keyed(store, "order-1")["id"]
    store.claim("w")
    again = keyed(store, "order-1")
    assert (again["id"], again["status"]) == (tid, TaskStatus.RUNNING) and count(store) == 1


def test_a_task_past_its_lifetime_frees_its_key(db_url):
    engine = open_engine(db_url)
    migrate(engine)
    store = TaskStore(engine, task_ttl_seconds=60)
    old = keyed(store, "order-1", "h1")["id"]
    with engine.begin() as conn:  # never ran, submitted 61 s ago: past its lifetime, not yet swept
        conn.execute(update(tasks).where(tasks.c.id == old).values(submit_ms=now_ms() - 61_000))
    new = keyed(store, "order-1", "h2")  # another request is no conflict with an expired task
    assert new["id"] != old and keyed(store, "order-1", "h2")["id"] == new["id"]
    assert store.get(old)["idempotency_key"] is None  # still stored until expire(), key given up
    assert store.expire() == [old] and count(store) == 1
    engine.dispose()


@pytest.mark.parametrize("hashes", [["h1"], ["h1", "h2"]], ids=["same-request", "two-requests"])
def test_concurrent_creates_with_one_key_make_one_task(store, hashes):
    n = 8
    barrier = threading.Barrier(n)
    outcomes: list[Any] = [None] * n

    def create(i: int) -> None:
        barrier.wait()
        try:
            outcomes[i] = keyed(store, "race", hashes[i % len(hashes)])["id"]
        except ServiceError as exc:
            outcomes[i] = exc.code

    threads = [threading.Thread(target=create, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert count(store) == 1
    [tid] = [r["id"] for r in store.list("acct", start_ms=0, end_ms=now_ms())[1]]
    assert set(outcomes) <= {tid, Code.IDEMPOTENT_MISMATCH} and tid in outcomes
    if len(hashes) == 1:
        assert outcomes == [tid] * n


# -- idempotency through the API ----------------------------------------------------------------


def _key(key: str) -> dict[str, str]:
    return {"X-Idempotency-Key": key}


def test_api_replays_the_task_for_the_same_key_and_body(make_server):
    server = make_server(workers=0)
    first = server.create(T2V, **_key("order-1"))
    assert first.status_code == 200, first.text
    reordered = {"parameters": {"size": "832*480"}, "input": {"prompt": "a cat"},
                 "model": "wanx2.1-t2v-turbo"}
    again = server.create(reordered, **_key("order-1"))  # the same JSON, keys in another order
    assert again.status_code == 200 and set(again.json()) == {"request_id", "output"}
    assert again.json()["output"] == first.json()["output"] == {
        "task_id": first.json()["output"]["task_id"], "task_status": "PENDING"}
    assert again.json()["request_id"] != first.json()["request_id"]
    assert count(server.services.store) == 1


def test_api_refuses_the_same_key_with_another_body_409(make_server):
    server = make_server(workers=0)
    tid = server.create(T2V, **_key("order-1")).json()["output"]["task_id"]
    r = server.create({**T2V, "input": {"prompt": "a dog"}}, **_key("order-1"))
    assert r.status_code == 409 and r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert set(body) == {"request_id", "code", "message"} and body["code"] == "IdempotentParameterMismatch"
    assert tid in body["message"]
    # the same body on the other endpoint is another request too (kf2v models are accepted on both)
    assert server.create(KF2V, **_key("kf")).status_code == 200
    assert server.create(KF2V, endpoint="image2video", **_key("kf")).status_code == 409
    assert count(server.services.store) == 2


def test_api_keys_are_per_account_and_malformed_keys_are_400(make_server):
    server = make_server(workers=0)
    _, other = create_key(server.services.db, "other")
    mine = server.create(T2V, **_key("order-1")).json()["output"]["task_id"]
    with server.client(key=other) as c:
        r = c.post("/services/aigc/video-generation/video-synthesis", json=T2V,
                   headers={"X-DashScope-Async": "enable", **_key("order-1")})
    assert r.status_code == 200 and r.json()["output"]["task_id"] != mine
    for bad in ("x" * 256, "two words", "", "caf\u00e9".encode()):
        r = server.create(T2V, **{"X-Idempotency-Key": bad})
        assert r.status_code == 400 and r.json()["code"] == "InvalidParameter", (bad, r.text)
    assert count(server.services.store) == 2


def test_api_concurrent_creates_with_one_key_make_one_task(make_server):
    server = make_server(workers=0)
    barrier = threading.Barrier(6)
    ids: list[str] = []

    def create() -> None:
        barrier.wait()
        r = server.create(T2V, **_key("race"))
        ids.append(r.json()["output"]["task_id"] if r.status_code == 200 else r.text)

    threads = [threading.Thread(target=create) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(ids) == 6 and len(set(ids)) == 1 and count(server.services.store) == 1


def test_openapi_declares_the_header_and_the_409(make_server):
    server = make_server(workers=0)
    import httpx

    doc = httpx.get(server.base + "/openapi.json").json()
    for path in ("/api/v1/services/aigc/video-generation/video-synthesis",
                 "/api/v1/services/aigc/image2video/video-synthesis"):
        op = doc["paths"][path]["post"]
        [header] = [p for p in op["parameters"] if p["name"] == "X-Idempotency-Key"]
        assert header["in"] == "header" and not header.get("required")
        assert "409" in op["responses"]


# -- lists at scale -----------------------------------------------------------------------------


def fill(engine, n: int, *, accounts: int, span_ms: int, now: int, seed: int = 1) -> list[dict]:
    """n tasks in valid states, submitted over the last `span_ms` (many sharing a millisecond), spread
    over `accounts` accounts and three models; inserted directly, in bulk."""
    rnd = random.Random(seed)
    statuses = sorted(t.value for t in TERMINAL) + ["PENDING", "RUNNING"]
    rows = []
    for i in range(n):
        status = rnd.choice(statuses)
        submit = now - rnd.randrange(span_ms) // 7 * 7  # coarse, so ties in submit_ms are common
        row = {"id": f"{i:08d}-{rnd.randrange(16**8):08x}", "account_id": f"acct{i % accounts}",
               "api_key_id": "k", "request_id": "r", "model": rnd.choice(["wan2.6-t2v", "wan2.2-i2v-flash",
                                                                          "wanx2.1-t2v-turbo"]),
               "endpoint": "video-generation", "status": status, "request": {"n": i}, "submit_ms": submit,
               "attempts": 0, "end_ms": None, "code": None, "result": None, "worker_id": None,
               "lease_until_ms": None}
        if status in {t.value for t in TERMINAL}:
            row["end_ms"] = min(now, submit + rnd.randrange(2 * HOUR))
        if status == "FAILED":
            row["code"] = "InternalError"
        if status == "SUCCEEDED":
            row["result"] = {"usage": {}}
        if status == "RUNNING":
            row.update(worker_id="w", lease_until_ms=now + 30_000)
        rows.append(row)
    with engine.begin() as conn:
        for i in range(0, n, 1000):
            conn.execute(insert(tasks), rows[i:i + 1000])
    return rows


def reference(rows: list[dict], since: int, account: str, start: int, end: int, model=None, status=None,
              task_id=None) -> list[str]:
    """What the list means, in Python: the account's living tasks in [start, end] that pass the
    filters, newest first, ties by id."""
    def alive(r):
        ended = r["end_ms"] if r["end_ms"] is not None else r["submit_ms"]
        return r["status"] == "RUNNING" or ended >= since

    hits = [r for r in rows if r["account_id"] == account and start <= r["submit_ms"] <= end and alive(r)
            and (model is None or r["model"] == model) and (status is None or r["status"] == status)
            and (task_id is None or r["id"] == task_id)]
    return [r["id"] for r in sorted(hits, key=lambda r: (-r["submit_ms"], r["id"]))]


def test_list_pages_and_totals_are_what_the_list_means(store):
    now = now_ms()
    rows = fill(store.engine, 1500, accounts=3, span_ms=50 * HOUR, now=now)
    since = store.alive_since_ms()
    some_id = next(r["id"] for r in rows if r["account_id"] == "acct1" and r["submit_ms"] > now - 10 * HOUR)
    cases = [dict(), dict(model="wan2.6-t2v"), dict(status="RUNNING"),
             dict(status="SUCCEEDED", model="wan2.6-t2v"), dict(task_id=some_id), dict(model="nope")]
    for filters in cases:
        for start, end in ((now - 24 * HOUR, now), (now - 30 * HOUR, now - 6 * HOUR)):
            want = reference(rows, since, "acct1", start, end, **filters)
            for page_size in (1, 7, 100):
                pages = -(-len(want) // page_size)
                for page_no in sorted({1, 2, max(1, pages // 2), max(1, pages), pages + 1}):
                    total, got = store.list("acct1", start_ms=start, end_ms=end, page_no=page_no,
                                            page_size=page_size, **filters)
                    assert total == len(want), (filters, page_no, page_size)
                    assert [r["id"] for r in got] == want[(page_no - 1) * page_size:page_no * page_size]
    [row] = store.list("acct1", start_ms=now - 24 * HOUR, end_ms=now, task_id=some_id)[1]
    assert row["request"] == next(r["request"] for r in rows if r["id"] == some_id)  # whole rows


def test_a_list_stops_at_the_newest_list_limit_tasks_of_its_window(store):
    now = now_ms()
    rows = fill(store.engine, 300, accounts=1, span_ms=10 * HOUR, now=now)
    store.list_limit = 50
    window = dict(start_ms=now - 24 * HOUR, end_ms=now)
    want = reference(rows, store.alive_since_ms(), "acct0", **{"start": window["start_ms"], "end": now})
    assert len(want) > 100
    got: list[str] = []
    for page_no in range(1, 7):
        total, page = store.list("acct0", **window, page_no=page_no, page_size=10)
        assert total == 50
        got += [r["id"] for r in page]
    assert got == want[:50]  # pages 6 and on are empty
    total, page = store.list("acct0", **window, page_no=3, page_size=20)  # a page the limit cuts short
    assert total == 50 and [r["id"] for r in page] == want[40:50]
    assert store.list("acct0", **window, page_no=10 ** 6, page_size=100) == (50, [])
    store.list_limit = 10_000
    assert store.list("acct0", **window, page_no=6, page_size=10)[0] == len(want)


def test_the_documented_list_cap_is_the_stores():
    from pathlib import Path

    from wanserve.tasks.store import LIST_LIMIT

    doc = (Path(__file__).resolve().parent.parent / "docs" / "compatibility.md").read_text()
    assert f"newest {LIST_LIMIT:,} tasks of its window" in doc


def _plans(store: TaskStore, **kw) -> list[str]:
    """EXPLAIN of list()'s two statements, each as one string."""
    conn_engine = store.engine
    out = []
    for query in store.list_queries("acct2", **kw):
        sql = str(query.compile(conn_engine, compile_kwargs={"literal_binds": True}))
        with conn_engine.connect() as conn:
            if conn.dialect.name == "sqlite":
                plan = [r[-1] for r in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql)]
            else:
                plan = [r[0] for r in conn.exec_driver_sql("EXPLAIN " + sql)]
        out.append("\n".join(plan))
    return out


def test_list_statements_use_the_list_index_not_a_table_scan(store):
    now = now_ms()
    fill(store.engine, 5000, accounts=5, span_ms=120 * HOUR, now=now)
    if store.engine.dialect.name == "postgresql":
        with store.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("VACUUM ANALYZE tasks"))  # what autovacuum does for a real table
    else:
        with store.engine.begin() as conn:
            conn.execute(text("ANALYZE"))
    window = dict(start_ms=now - 24 * HOUR, end_ms=now)
    for kw in (dict(), dict(page_no=20, page_size=10), dict(status="PENDING"), dict(model="wan2.6-t2v"),
               dict(status="FAILED", model="wan2.6-t2v", page_no=3, page_size=100)):
        count_plan, page_plan = _plans(store, **window, **kw)
        for plan in (count_plan, page_plan):
            assert "ix_tasks_account_list" in plan, plan
            assert "Seq Scan on tasks" not in plan, plan
            assert not {"SCAN tasks", "SCAN TABLE tasks"} & {line.strip() for line in plan.split("\n")}, plan
        if store.engine.dialect.name == "sqlite":
            # the count and the page's ids come from the index alone; then one lookup per row by id
            assert "COVERING INDEX ix_tasks_account_list" in count_plan, count_plan
            assert "COVERING INDEX ix_tasks_account_list" in page_plan, page_plan
        else:
            assert "Index Only Scan using ix_tasks_account_list" in count_plan, count_plan
            assert "Index Only Scan using ix_tasks_account_list" in page_plan, page_plan
