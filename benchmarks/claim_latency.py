"""Benchmark: TaskStore.claim() at 50 and 50,000 queued tasks, and create -> RUNNING with and without
LISTEN/NOTIFY (issue 12; docs/queue.md).

    python benchmarks/claim_latency.py [--db URL] [--sizes 50 50000] [--accounts 5] [-n 300] [--creates 20]

--db: a SQLite URL, or a PostgreSQL URL naming a throwaway database, e.g.
postgresql+psycopg://postgres@127.0.0.1:5432/wanserve_bench_claim (created if missing; it is dropped and
created again for each size, through the server's `postgres` database). Default: a SQLite file in a
temporary directory.

For each size: a fresh migrated database filled in bulk with that many PENDING tasks spread over
--accounts accounts and three models (plus as many finished tasks, the history a real queue sits next
to), then ANALYZE (PostgreSQL: VACUUM ANALYZE, what autovacuum does after a bulk load). Then -n claims,
timed one by one, each followed by release() so the queue keeps its length: by a worker serving every
model ("*") and by one serving two of the three models. Reported: median and p95 in milliseconds.

create -> RUNNING: one worker thread serving only a model nothing else is queued for idles (claim, then
wait poll_seconds = 0.5 s); the main thread creates --creates tasks of that model at random intervals
and times each from create() to the worker's claim returning it. "poll": the worker sleeps between
claims (the old loop); "notify": it waits in TaskStore.wait_for_work (LISTEN on PostgreSQL; on SQLite
the same sleep).
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from sqlalchemy import create_engine, insert, make_url, text

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from wanserve.tasks.db import migrate, now_ms, open_engine  # noqa: E402
from wanserve.tasks.schema import queue_accounts, tasks  # noqa: E402
from wanserve.tasks.store import TaskStore  # noqa: E402

MODELS = ["wan2.6-t2v", "wan2.6-i2v", "wan2.2-kf2v-flash"]
LATENCY_MODEL = "wan2.5-t2v-preview"  # only the create -> RUNNING tasks are of this model
POLL_SECONDS = 0.5


def machine() -> str:
    cpu = subprocess.run("lscpu | grep 'Model name'", shell=True, capture_output=True, text=True).stdout
    return (f"{os.cpu_count()} CPUs, {cpu.split(':')[-1].strip() or platform.processor()}, "
            f"Python {platform.python_version()}, {platform.system()} {platform.release()}")


def fresh_database(url: str, size: int) -> str:
    """A new empty database for one size; its URL."""
    if url.startswith("sqlite"):
        path = Path(tempfile.mkdtemp(prefix="claim-bench-")) / f"q{size}.db"
        return f"sqlite:///{path}"
    name = make_url(url).database
    admin = create_engine(make_url(url).set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return url


def fill(engine, queued: int, accounts: int) -> None:
    """`queued` PENDING tasks and as many SUCCEEDED ones, over `accounts` accounts and MODELS."""
    rnd, now = random.Random(1), now_ms()
    rows = []
    for i in range(2 * queued):
        model = MODELS[i % len(MODELS)]
        row = {"id": f"{i:012d}", "account_id": f"acct{rnd.randrange(accounts)}", "api_key_id": "k",
               "request_id": "r", "model": model, "route_model": model, "endpoint": "video-generation",
               "status": "PENDING", "request": {"model": model}, "submit_ms": now - 2 * queued + i,
               "attempts": 0, "end_ms": None, "result": None}
        if i % 2:
            row.update(status="SUCCEEDED", end_ms=now, result={"usage": {}})
        rows.append(row)
    with engine.begin() as conn:
        for i in range(0, len(rows), 2000):
            conn.execute(insert(tasks), rows[i:i + 2000])
        conn.execute(insert(queue_accounts), [{"account_id": f"acct{a}", "last_claim_ms": 0}
                                              for a in range(accounts)])
    if engine.dialect.name == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("VACUUM ANALYZE"))
    else:
        with engine.begin() as conn:
            conn.execute(text("ANALYZE"))


def percentiles(samples: list[float]) -> str:
    ms = sorted(s * 1000 for s in samples)
    return f"{statistics.median(ms):7.2f} / {ms[int(0.95 * (len(ms) - 1))]:7.2f}"


def claim_latency(store: TaskStore, n: int, models) -> list[float]:
    out = []
    for _ in range(n):
        started = time.perf_counter()
        claimed = store.claim("bench", models=models)
        out.append(time.perf_counter() - started)
        assert claimed is not None, "the queue ran dry"
        store.release(claimed.id, "bench")
    return out


def create_to_running(store: TaskStore, creates: int, notify: bool) -> list[float]:
    """Seconds from create() to an idle worker's claim returning the task, for `creates` tasks."""
    claimed_at: dict[str, float] = {}
    stop = threading.Event()

    def worker() -> None:
        while not stop.is_set():
            claimed = store.claim("latency", models=[LATENCY_MODEL])
            if claimed is not None:
                claimed_at[claimed.id] = time.perf_counter()
                store.succeed(claimed.id, "latency", {"usage": {}})
            elif notify:
                store.wait_for_work(POLL_SECONDS, [LATENCY_MODEL], stop)
            else:
                stop.wait(POLL_SECONDS)
        store.stop_waiting()

    thread = threading.Thread(target=worker, daemon=True)
    thread.start()
    time.sleep(0.3)  # the worker is idle (and, with notify, listening)
    rnd, out = random.Random(2), []
    for _ in range(creates):
        time.sleep(rnd.uniform(0.1, 0.4))
        started = time.perf_counter()
        task_id = store.create(account_id="latency", api_key_id="k", request_id="r", model=LATENCY_MODEL,
                               endpoint="video-generation", request={"model": LATENCY_MODEL})["id"]
        deadline = time.monotonic() + 5
        while task_id not in claimed_at and time.monotonic() < deadline:
            time.sleep(0.0005)
        out.append(claimed_at[task_id] - started)
    stop.set()
    thread.join(5)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", default="sqlite")
    parser.add_argument("--sizes", type=int, nargs="+", default=[50, 50_000])
    parser.add_argument("--accounts", type=int, default=5)
    parser.add_argument("-n", type=int, default=300)
    parser.add_argument("--creates", type=int, default=20)
    args = parser.parse_args()
    print(f"machine: {machine()}")
    print(f"load average: {os.getloadavg()[0]:.1f}")
    medians: dict[tuple[str, int], float] = {}
    for size in args.sizes:
        url = fresh_database(args.db, size)
        engine = open_engine(url)
        migrate(engine)
        fill(engine, size, args.accounts)
        store = TaskStore(engine, lease_seconds=60)
        print(f"\n{engine.dialect.name}, {size:,} queued (+{size:,} finished), {args.accounts} accounts, "
              f"n={args.n}: claim median / p95 ms")
        for label, models in (("*", None), ("2 of 3 models", MODELS[:2])):
            claim_latency(store, 20, models)  # warm up: connections, prepared plans
            samples = claim_latency(store, args.n, models)
            medians[(label, size)] = statistics.median(samples)
            print(f"  claim ({label:>13}): {percentiles(samples)}")
        if size == args.sizes[-1]:
            for notify in (False, True):
                samples = create_to_running(store, args.creates, notify)
                print(f"  create -> RUNNING ({'notify' if notify else 'poll'}, poll {POLL_SECONDS} s, "
                      f"n={args.creates}): {percentiles(samples)}")
        engine.dispose()
    if len(args.sizes) > 1:
        small, large = args.sizes[0], args.sizes[-1]
        for label in ("*", "2 of 3 models"):
            ratio = medians[(label, large)] / medians[(label, small)]
            print(f"claim ({label}) median at {large:,} / at {small:,}: {ratio:.2f}x")


if __name__ == "__main__":
    main()
