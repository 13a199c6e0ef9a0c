"""Benchmark: request rates over kept-alive connections, GET /tasks/{id} against a 404 (issue 18, item 1).

    python benchmarks/keepalive_rate.py [--src DIR] [--clients 32] [--seconds 5] [--workers 0]

Starts `python -m wanserve.cli serve` from --src (default: this checkout's src/; a worktree of another
commit measures that commit) on a fresh data directory, creates one task, then for --seconds each runs
--clients threads, each on its own kept-alive connection, doing GET /tasks/{id} (a 200) and then
GET /tasks/<unknown id> (a 404, the cheapest answer the API gives), and prints both rates, their ratio,
and the p50 of a single kept-alive client's GET /healthz. With Nagle on (no TCP_NODELAY on the accepted
connection) a response written in two parts (headers, body) waits for the client's delayed ACK (~40 ms),
which caps every kept-alive rate far below what the server can do.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from api_latency import ASYNC, KEY, free_port, machine, wait_ready  # noqa: E402

BODY = {"model": "wan2.6-t2v", "input": {"prompt": "A lighthouse at dawn"},
        "parameters": {"size": "1280*720"}}


def rate(base: str, path: str, clients: int, seconds: float) -> tuple[float, int]:
    """Requests per second over `clients` kept-alive connections for `seconds`; and the non-2xx/404 count."""
    counts = [0] * clients
    bad = [0]
    start = threading.Barrier(clients + 1)
    stop = threading.Event()

    def run(i: int) -> None:
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {KEY}"}, timeout=30) as c:
            c.get(path)  # connect before the clock starts
            start.wait()
            while not stop.is_set():
                r = c.get(path)
                if r.status_code not in (200, 404):
                    bad[0] += 1
                counts[i] += 1

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    total = sum(counts)
    elapsed = time.perf_counter() - t0
    for t in threads:
        t.join(30)
    return total / elapsed, bad[0]


def main() -> int:
    here = Path(__file__).resolve().parent.parent
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--src", default=str(here / "src"))
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--workers", type=int, default=0, help="in-process workers (busy with the created task)")
    args = ap.parse_args()
    src = Path(args.src).resolve()
    port = free_port()
    data = Path(tempfile.mkdtemp(prefix="wanserve-ka-"))
    env = {**os.environ, "PYTHONPATH": str(src), "WANSERVE_API_KEY": KEY, "WANSERVE_LOG_LEVEL": "WARNING"}
    cmd = [sys.executable, "-m", "wanserve.cli", "serve", "--workers", str(args.workers),
           "--data-dir", str(data / "data"), "--port", str(port)]
    with open(data / "server.log", "wb") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}/api/v1"
    try:
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {KEY}"}, timeout=60) as c:
            wait_ready(c, proc)
            task = c.post("/services/aigc/video-generation/video-synthesis", json=BODY,
                          headers=ASYNC).json()["output"]["task_id"]
            health = []
            for _ in range(50):
                t0 = time.perf_counter()
                c.get(f"http://127.0.0.1:{port}/healthz")
                health.append((time.perf_counter() - t0) * 1000)
        get_rate, bad_get = rate(base, f"/tasks/{task}", args.clients, args.seconds)
        unknown = "/tasks/00000000-0000-0000-0000-000000000000"
        miss_rate, bad_miss = rate(base, unknown, args.clients, args.seconds)
        print(f"src={src} machine: {machine()}, load {os.getloadavg()[0]:.1f}")
        print(f"kept-alive GET /healthz p50 {statistics.median(health):.2f} ms (one client, 50 requests)")
        print(f"{args.clients} clients: GET /tasks/{{id}} {get_rate:.0f}/s, 404 {miss_rate:.0f}/s, "
              f"ratio {get_rate / miss_rate:.2f} (errors {bad_get + bad_miss})")
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
