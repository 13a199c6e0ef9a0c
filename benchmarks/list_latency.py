"""Benchmark: GET /api/v1/tasks (the list) at 1k and 100k tasks, on SQLite and on PostgreSQL.

    python benchmarks/list_latency.py [--src DIR] [--sizes 1000 100000] [--accounts 4] [-n 300]
                                      [--db sqlite postgresql] [--pg-admin URL]

For each database and size: a fresh database (SQLite: a temporary file; PostgreSQL: a throwaway
database `wanserve_bench`, created and dropped on --pg-admin's server), migrated by the wanserve in
--src (default: this checkout's src/, so any commit can be measured: `git archive <commit> src | tar -x
-C /tmp/base` and --src /tmp/base/src), filled with N tasks spread evenly over --accounts accounts and
submitted over the last 23 hours (all in the list's default 24 h window, all within their lifetime:
the worst case for a window), inserted in bulk straight into the store's `tasks` table. PostgreSQL
then gets VACUUM ANALYZE (what autovacuum does to a table after a bulk load). Then `python -m
wanserve.cli serve --workers 0 --database-url ...` from --src answers, over loopback, N sequential
requests per case, timed from the client:

- first:  GET /tasks                                   (page 1 of 10, the default)
- deep:   GET /tasks?page_no=<last page>&page_size=10  (the end of the account's window)
- status: GET /tasks?status=SUCCEEDED&page_no=<middle>  (a filter, halfway down)

and prints p50/p99 per case with the machine it ran on, then each 100k case against its 1k one.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from api_latency import stop_process  # the script directory is on sys.path

KEY = "sk-bench-list"
HOUR_MS = 3600 * 1000
PG_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
BENCH_DB = "wanserve_bench"
MODELS = ["wan2.6-t2v", "wan2.6-i2v", "wanx2.1-t2v-turbo", "wan2.2-kf2v-flash"]
# (status, weight): mostly finished work, as on a busy server
STATUSES = [("SUCCEEDED", 80), ("FAILED", 5), ("CANCELED", 5), ("PENDING", 7), ("RUNNING", 3)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def machine() -> str:
    def sh(cmd: str) -> str:
        try:
            return subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return "?"
    model = sh("lscpu | grep 'Model name'").split(":", 1)[-1].strip()
    return (f"nproc {sh('nproc')}, {model or 'unknown CPU'}; load average {os.getloadavg()[0]:.1f}; "
            f"python {platform.python_version()}; {platform.platform()}")


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(p / 100 * (len(s) - 1))))]


def fill(engine, tasks_table, n: int, accounts: int, seed: int = 7) -> dict[str, int]:
    """n tasks in valid states across `accounts` accounts ("default" is the first: the bootstrap key's);
    returns how many each account got."""
    from sqlalchemy import insert

    rnd = random.Random(seed)
    now = int(time.time() * 1000)
    names = ["default"] + [f"acct{i}" for i in range(1, accounts)]
    per: dict[str, int] = dict.fromkeys(names, 0)
    statuses = [s for s, _ in STATUSES]
    weights = [w for _, w in STATUSES]
    batch: list[dict] = []
    with engine.begin() as conn:
        for i in range(n):
            account = names[i % accounts]
            per[account] += 1
            status = rnd.choices(statuses, weights)[0]
            submit = now - rnd.randrange(23 * HOUR_MS)
            model = rnd.choice(MODELS)
            row = {"id": f"{rnd.getrandbits(128):032x}", "account_id": account, "api_key_id": "bootstrap",
                   "request_id": f"{rnd.getrandbits(128):032x}", "model": model,
                   "endpoint": "video-generation",
                   "status": status, "submit_ms": submit, "attempts": 1,
                   "request": {"model": model, "prompt": "A lighthouse on a cliff at dusk, waves crashing "
                               f"below, shot {i}.", "negative_prompt": "", "size": [1280, 720],
                               "duration": 5, "seed": rnd.randrange(2**31), "watermark": False,
                               "prompt_extend": True, "shot_type": "single", "media": []},
                   "scheduled_ms": None, "end_ms": None, "code": None, "message": None, "result": None,
                   "worker_id": None, "lease_until_ms": None}
            if status != "PENDING":
                row["scheduled_ms"] = submit + rnd.randrange(60_000)
            if status in ("SUCCEEDED", "FAILED", "CANCELED"):
                row["end_ms"] = min(now, row["scheduled_ms"] + rnd.randrange(600_000))
            if status == "SUCCEEDED":
                row["result"] = {"path": f"results/{row['id']}.mp4", "actual_prompt": "...",
                                 "usage": {"video_count": 1, "video_duration": 5, "video_ratio": "1280*720"}}
            elif status == "FAILED":
                row.update(code="InvalidURL", message="Failed to download the image.")
            elif status == "RUNNING":
                row.update(worker_id="w-bench", lease_until_ms=now + 3600_000)
            else:
                row["attempts"] = 0
            batch.append(row)
            if len(batch) == 5000:
                conn.execute(insert(tasks_table), batch)
                batch.clear()
        if batch:
            conn.execute(insert(tasks_table), batch)
    return per


def prepare(db: str, n: int, accounts: int, work: Path, pg_admin: str) -> str:
    """A fresh, migrated, filled database; its URL."""
    from sqlalchemy import create_engine, text

    from wanserve.tasks.db import migrate, open_engine
    from wanserve.tasks.schema import tasks

    if db == "sqlite":
        url = f"sqlite:///{work / 'bench.db'}"
    else:
        admin = create_engine(pg_admin, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{BENCH_DB}" WITH (FORCE)'))
            conn.execute(text(f'CREATE DATABASE "{BENCH_DB}"'))
        admin.dispose()
        url = pg_admin.rsplit("/", 1)[0] + f"/{BENCH_DB}"
    engine = open_engine(url)
    migrate(engine)
    t0 = time.perf_counter()
    fill(engine, tasks, n, accounts)
    if db == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("VACUUM ANALYZE tasks"))
    print(f"  filled {n} tasks in {time.perf_counter() - t0:.1f} s", flush=True)
    engine.dispose()
    return url


def drop(db: str, pg_admin: str) -> None:
    if db == "postgresql":
        from sqlalchemy import create_engine, text

        admin = create_engine(pg_admin, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{BENCH_DB}" WITH (FORCE)'))
        admin.dispose()


def serve(src: Path, url: str, work: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(src), "WANSERVE_API_KEY": KEY, "WANSERVE_LOG_LEVEL": "WARNING",
           "WANSERVE_SWEEP_SECONDS": "86400"}
    log = open(work / "server.log", "ab")  # noqa: SIM115 - the server keeps it; closed with the process
    proc = subprocess.Popen([sys.executable, "-m", "wanserve.cli", "serve", "--workers", "0",
                             "--data-dir", str(work / "data"), "--database-url", url, "--port", str(port)],
                            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    log.close()
    base = f"http://127.0.0.1:{port}/api/v1"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}; see {work / 'server.log'}")
        try:
            if httpx.get(base + "/tasks", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200:
                return proc, base
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise SystemExit("server did not answer in time")


def measure(base: str, n: int, expected_total: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {KEY}"}, timeout=60) as c:
        first = c.get("/tasks").json()
        if first["total"] != expected_total:
            raise SystemExit(f"list total {first['total']}, expected {expected_total}")
        succeeded = c.get("/tasks", params={"status": "SUCCEEDED"}).json()["total_page"]
        cases = {"first": {}, "deep": {"page_no": first["total_page"], "page_size": 10},
                 "status": {"status": "SUCCEEDED", "page_no": max(1, succeeded // 2), "page_size": 10}}
        for name, params in cases.items():
            for _ in range(min(20, n)):  # warm up: connections, caches
                c.get("/tasks", params=params)
            ms = []
            for _ in range(n):
                t0 = time.perf_counter()
                r = c.get("/tasks", params=params)
                ms.append((time.perf_counter() - t0) * 1000)
                if r.status_code != 200 or not r.json()["data"]:
                    raise SystemExit(f"{name}: {r.status_code} {r.text[:200]}")
            out[name] = ms
    return out


def main() -> int:
    here = Path(__file__).resolve().parent.parent
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--src", default=str(here / "src"), help="the src/ directory of the checkout to measure")
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 100_000])
    ap.add_argument("--accounts", type=int, default=4)
    ap.add_argument("-n", type=int, default=300, help="timed requests per case")
    ap.add_argument("--db", nargs="+", default=["sqlite", "postgresql"], choices=["sqlite", "postgresql"])
    ap.add_argument("--pg-admin", default=PG_ADMIN, help="a database URL on the PostgreSQL server to use")
    args = ap.parse_args()
    src = Path(args.src).resolve()
    if not (src / "wanserve").is_dir():
        raise SystemExit(f"--src {src}: no wanserve package there")
    sys.path.insert(0, str(src))

    print(f"machine: {machine()}")
    print(f"src: {src}; {args.accounts} accounts, tasks submitted over the last 23 h; n={args.n} per case")
    results: dict[tuple[str, int, str], list[float]] = {}
    for db in args.db:
        for size in args.sizes:
            work = Path(tempfile.mkdtemp(prefix="wanserve-listbench-"))
            print(f"{db}, {size} tasks:", flush=True)
            proc = None
            try:
                url = prepare(db, size, args.accounts, work, args.pg_admin)
                proc, base = serve(src, url, work)
                expected = len(range(0, size, args.accounts))  # the "default" account's share
                try:  # a list counts its window's newest LIST_LIMIT tasks at most (none before issue 10)
                    from wanserve.tasks.store import LIST_LIMIT
                    expected = min(expected, LIST_LIMIT)
                except ImportError:
                    pass
                for case, ms in measure(base, args.n, expected).items():
                    results[(db, size, case)] = ms
                    print(f"  {case:<7} p50={pct(ms, 50):7.2f} ms  p99={pct(ms, 99):7.2f} ms  "
                          f"mean={statistics.fmean(ms):7.2f} ms", flush=True)
            finally:
                if proc is not None:
                    stop_process(proc)
                drop(db, args.pg_admin)
                shutil.rmtree(work, ignore_errors=True)
    small, large = min(args.sizes), max(args.sizes)
    if small != large:
        print(f"\n{large} against {small} (p50 ratio, p99 ratio):")
        for db in args.db:
            for case in ("first", "deep", "status"):
                a, b = results[(db, small, case)], results[(db, large, case)]
                print(f"  {db:<10} {case:<7} {pct(b, 50) / pct(a, 50):5.2f}x  "
                      f"{pct(b, 99) / pct(a, 99):5.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
