"""Benchmark: the API's memory over rounds of the same mixed load (issue 18, item 7: soak growth).

    python benchmarks/soak.py [--src DIR] [--rounds 5] [--requests 6000] [--clients 16] [--workers 1]

Starts `python -m wanserve.cli serve` (preview engine) from --src (default: this checkout's src/; a worktree
of another commit measures that commit) on a fresh data directory, runs one warm-up round and then --rounds
rounds of the same mixed load from --clients kept-alive clients, and prints the server's RSS (VmRSS of its
process) after each round and the growth after the warm-up. A round is --requests requests drawn with fixed
weights (the same seed every round): creates (each canceled soon after, so the workers stay mostly idle),
GET /tasks/{id} of created tasks, unknown task ids (404), lists with and without filters, cancels,
refused creates (invalid JSON, unknown model, no async header), a wrong key (401), /healthz, /readyz and
/metrics.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from api_latency import ASYNC, KEY, free_port, machine, wait_ready  # noqa: E402

CREATE = "/services/aigc/video-generation/video-synthesis"
T2V = {"model": "wanx2.1-t2v-turbo", "input": {"prompt": "A lighthouse at dawn, waves below."},
       "parameters": {"size": "832*480"}}
MIX = [("get", 30), ("create", 8), ("missing", 12), ("list", 12), ("list_filtered", 6), ("cancel", 6),
       ("bad_json", 4), ("bad_model", 4), ("no_async", 3), ("bad_key", 5), ("healthz", 4), ("readyz", 3),
       ("metrics", 3)]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


class Load:
    def __init__(self, base: str, root: str) -> None:
        self.base, self.root = base, root
        self.tasks: list[str] = []
        self.lock = threading.Lock()
        self.statuses: dict[int, int] = {}

    def one(self, c: httpx.Client, kind: str, rng: random.Random) -> int:
        with self.lock:
            task = rng.choice(self.tasks) if self.tasks else None
        if kind == "create" or (task is None and kind in ("get", "cancel")):
            r = c.post(CREATE, json=T2V, headers=ASYNC)
            if r.status_code == 200:
                tid = r.json()["output"]["task_id"]
                c.post(f"/tasks/{tid}/cancel")
                with self.lock:
                    self.tasks.append(tid)
            return r.status_code
        if kind == "get":
            return c.get(f"/tasks/{task}").status_code
        if kind == "cancel":
            return c.post(f"/tasks/{task}/cancel").status_code
        if kind == "missing":
            return c.get(f"/tasks/{uuid.UUID(int=rng.getrandbits(128))}").status_code
        if kind == "list":
            return c.get("/tasks", params={"page_no": rng.randint(1, 3), "page_size": 10}).status_code
        if kind == "list_filtered":
            return c.get("/tasks", params={"status": rng.choice(["CANCELED", "PENDING", "SUCCEEDED"]),
                                           "model": T2V["model"]}).status_code
        if kind == "bad_json":
            return c.post(CREATE, content=b'{"model": "wanx2.1-t2v-turbo", "input": ',
                          headers={**ASYNC, "Content-Type": "application/json"}).status_code
        if kind == "bad_model":
            return c.post(CREATE, json={**T2V, "model": f"no-such-{rng.randint(0, 10**9)}"},
                          headers=ASYNC).status_code
        if kind == "no_async":
            return c.post(CREATE, json=T2V).status_code
        if kind == "bad_key":
            return c.get(f"/tasks/{task or 'x'}", headers={"Authorization": f"Bearer sk-{uuid.uuid4().hex}"}
                         ).status_code
        path = {"healthz": "/healthz", "readyz": "/readyz", "metrics": "/metrics"}[kind]
        return c.get(self.root + path).status_code

    def round(self, n: int, clients: int, seed: int) -> float:
        kinds = [k for k, w in MIX for _ in range(w)]
        plan = random.Random(seed)
        jobs = [plan.choice(kinds) for _ in range(n)]
        per = [jobs[i::clients] for i in range(clients)]

        def run(i: int) -> None:
            rng = random.Random(seed * 1000 + i)
            auth = {"Authorization": f"Bearer {KEY}"}
            with httpx.Client(base_url=self.base, headers=auth, timeout=60) as c:
                for kind in per[i]:
                    status = self.one(c, kind, rng)
                    with self.lock:
                        self.statuses[status] = self.statuses.get(status, 0) + 1

        t0 = time.perf_counter()
        threads = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return time.perf_counter() - t0


def main() -> int:
    here = Path(__file__).resolve().parent.parent
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--src", default=str(here / "src"))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--requests", type=int, default=6000, help="requests per round")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--settle", type=float, default=2.0, help="seconds idle before each RSS reading")
    args = ap.parse_args()
    src = Path(args.src).resolve()
    port = free_port()
    data = Path(tempfile.mkdtemp(prefix="wanserve-soak-"))
    env = {**os.environ, "PYTHONPATH": str(src), "WANSERVE_API_KEY": KEY, "WANSERVE_LOG_LEVEL": "WARNING"}
    cmd = [sys.executable, "-m", "wanserve.cli", "serve", "--workers", str(args.workers),
           "--data-dir", str(data / "data"), "--port", str(port)]
    with open(data / "server.log", "wb") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    root = f"http://127.0.0.1:{port}"
    print(f"src={src} machine: {machine()}, load {os.getloadavg()[0]:.1f}; {args.requests} requests a round, "
          f"{args.clients} clients, {args.workers} worker(s)", flush=True)
    try:
        with httpx.Client(base_url=root + "/api/v1", headers={"Authorization": f"Bearer {KEY}"}) as c:
            wait_ready(c, proc)
        load = Load(root + "/api/v1", root)
        readings = [rss_mb(proc.pid)]
        print(f"started: RSS {readings[0]:.1f} MB", flush=True)
        for i in range(args.rounds + 1):
            seconds = load.round(args.requests, args.clients, seed=1)  # the same load every round
            time.sleep(args.settle)
            readings.append(rss_mb(proc.pid))
            name = "warm-up" if i == 0 else f"round {i}"
            print(f"{name:>8}: {seconds:6.1f} s, {args.requests / seconds:5.0f} req/s, "
                  f"RSS {readings[-1]:7.1f} MB "
                  f"({readings[-1] - readings[-2]:+.1f})", flush=True)
        growth = [round(b - a, 1) for a, b in zip(readings[1:], readings[2:], strict=False)]
        print(f"growth after warm-up: {readings[-1] - readings[1]:+.1f} MB over {args.rounds} rounds "
              f"{growth}; "
              f"statuses {dict(sorted(load.statuses.items()))}; tasks created {len(load.tasks)}")
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
