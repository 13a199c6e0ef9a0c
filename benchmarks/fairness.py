"""Benchmark: one busy account does not starve another (issue 12; docs/queue.md).

    python benchmarks/fairness.py [--queued 100] [--workers 2] [--db URL]

A real server (the preview engine, `--workers` in-process workers, SQLite by default or --db) is given
`--queued` tasks of account A at once; once A's first tasks are RUNNING, account B submits one task.
Reported: how long B's task waited (create -> RUNNING), next to how long one of A's tasks runs: with
round-robin claims B starts when the first of the tasks already running ends (at most about one task's
run time), not after A's queue (--queued x run time / workers).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.conftest import running_server  # noqa: E402  (the tests' one way to start a server)

from wanserve.accounts.keys import create_key  # noqa: E402

BODY = {"model": "wanx2.1-t2v-turbo", "input": {"prompt": "a lighthouse in a storm"},
        "parameters": {"size": "832*480"}}
ASYNC = {"X-DashScope-Async": "enable"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--queued", type=int, default=100)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--db", default="", help="database_url (default: SQLite in a temp dir)")
    args = ap.parse_args()
    extra = {"database_url": args.db} if args.db else {}
    with tempfile.TemporaryDirectory() as tmp, running_server(Path(tmp), args.workers, **extra) as server:
        _, key_b = create_key(server.services.db, "b")
        a_ids = []
        with server.client() as a:
            for i in range(args.queued):
                r = a.post("/services/aigc/video-generation/video-synthesis", headers=ASYNC,
                           json={**BODY, "parameters": {**BODY["parameters"], "seed": i}})
                a_ids.append(r.json()["output"]["task_id"])
            while any(a.get(f"/tasks/{t}").json()["output"]["task_status"] == "PENDING"
                      for t in a_ids[:args.workers]):  # A's first tasks have started
                time.sleep(0.02)
            with server.client(key_b) as b:
                created = time.monotonic()
                tid = b.post("/services/aigc/video-generation/video-synthesis", headers=ASYNC,
                             json=BODY).json()["output"]["task_id"]
                while b.get(f"/tasks/{tid}").json()["output"]["task_status"] == "PENDING":
                    time.sleep(0.01)
                waited = time.monotonic() - created
            for t in a_ids:
                a.post(f"/tasks/{t}/cancel")
        runs = [(row["end_ms"] - row["scheduled_ms"]) / 1000 for row in
                (server.services.store.get(t) for t in a_ids) if row["status"] == "SUCCEEDED"]
        print(f"machine: {platform.processor() or platform.machine()}, {args.workers} workers, "
              f"{args.queued} queued tasks of account A")
        print(f"B's task waited {waited:.2f} s; A's tasks ran {statistics.median(runs):.2f} s each "
              f"(median of {len(runs)}); without round-robin B would wait about "
              f"{args.queued * statistics.median(runs) / args.workers:.0f} s")


if __name__ == "__main__":
    main()
