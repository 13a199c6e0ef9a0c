"""Benchmark: GET /api/v1/tasks/{id} latency on SQLite while two workers are busy.

    python benchmarks/api_latency.py [--src DIR] [-n 500] [--list] [--writer-hold-ms MS] [--port P]

Starts `python -m wanserve.cli serve --workers 2` from the source tree in --src (default: this
checkout's src/, so the same script measures any commit: make a worktree and point --src at its
src/) on a fresh data directory, keeps both workers busy with long preview renders (wan2.6-t2v at
1920*1080 for 15 s, plus a few image-to-video tasks) submitted continuously from a background
thread, then times N sequential GETs of one task (and, with --list, N list calls) and prints
p50/p95/p99/max with the machine it ran on. Only loopback is used.

With --writer-hold-ms MS, another connection also takes SQLite's write lock (BEGIN IMMEDIATE) for MS
milliseconds at a time, half of the time, standing in for a slow writer (a big sweep, a slow disk's
fsync): a request whose reads take the write lock waits behind it, one that reads a WAL snapshot
does not.
"""

from __future__ import annotations

import argparse
import base64
import io
import os
import platform
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

KEY = "sk-bench"
ASYNC = {"X-DashScope-Async": "enable"}
LONG_T2V = {"model": "wan2.6-t2v",
            "input": {"prompt": "A lighthouse on a cliff at dusk, waves crashing below."},
            "parameters": {"size": "1920*1080", "duration": 15}}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def png_data_url(width: int = 1280, height: int = 720) -> str:
    """A small gradient picture as a data: URL (no media server needed)."""
    import numpy as np
    from PIL import Image

    y, x = np.mgrid[0:height, 0:width]
    img = np.dstack([x * 255 // width, y * 255 // height, (x + y) * 127 // (width + height)]).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def i2v_body(img: str) -> dict:
    return {"model": "wan2.6-i2v", "input": {"prompt": "The camera slowly pushes in.", "img_url": img},
            "parameters": {"resolution": "1080P", "duration": 10}}


def machine() -> str:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} CPU ({len(os.sched_getaffinity(0))} usable), {cpu or 'unknown CPU'}"


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    k = min(len(s) - 1, max(0, round(p / 100 * (len(s) - 1))))
    return s[k]


def summary(name: str, ms: list[float]) -> str:
    return (f"{name:<22} n={len(ms):<5} p50={pct(ms, 50):7.2f} ms  p95={pct(ms, 95):7.2f} ms  "
            f"p99={pct(ms, 99):7.2f} ms  max={max(ms):7.2f} ms  mean={statistics.fmean(ms):7.2f} ms")


def hold_write_lock(db: Path, hold_ms: float, stop: threading.Event) -> None:
    conn = sqlite3.connect(db, isolation_level=None, timeout=30)
    try:
        while not stop.is_set():
            conn.execute("BEGIN IMMEDIATE")
            time.sleep(hold_ms / 1000)
            conn.execute("COMMIT")
            time.sleep(hold_ms / 1000)
    finally:
        conn.close()


def wait_ready(client: httpx.Client, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with status {proc.returncode} before answering")
        try:
            if client.get("/tasks", params={"page_size": 1}).status_code < 500:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise SystemExit("server did not answer in time")


def running_count(client: httpx.Client) -> int:
    r = client.get("/tasks", params={"status": "RUNNING", "page_size": 10})
    return int(r.json().get("total", 0)) if r.status_code == 200 else 0


def main() -> int:
    here = Path(__file__).resolve().parent.parent
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--src", default=str(here / "src"), help="the src/ directory of the checkout to measure")
    ap.add_argument("-n", type=int, default=500, help="sequential GETs to time")
    ap.add_argument("--list", action="store_true", help="also time N list calls (GET /tasks)")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--warmup", type=float, default=3.0, help="seconds of load before measuring")
    ap.add_argument("--writer-hold-ms", type=float, default=0,
                    help="also hold SQLite's write lock this long, half of the time, from another connection")
    ap.add_argument("--keep", action="store_true", help="keep the data directory and server log")
    args = ap.parse_args()

    src = Path(args.src).resolve()
    if not (src / "wanserve").is_dir():
        raise SystemExit(f"--src {src}: no wanserve package there")
    port = args.port or free_port()
    data = Path(tempfile.mkdtemp(prefix="wanserve-bench-"))
    log = open(data / "server.log", "wb")  # noqa: SIM115 - closed in finally
    env = {**os.environ, "PYTHONPATH": str(src), "WANSERVE_API_KEY": KEY, "WANSERVE_LOG_LEVEL": "WARNING"}
    cmd = [sys.executable, "-m", "wanserve.cli", "serve", "--workers", "2", "--data-dir", str(data / "data"),
           "--port", str(port)]
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    stop = threading.Event()
    submitted = [0]
    errors: list[str] = []
    base = f"http://127.0.0.1:{port}/api/v1"
    headers = {"Authorization": f"Bearer {KEY}"}
    try:
        client = httpx.Client(base_url=base, headers=headers, timeout=60)
        wait_ready(client, proc)
        img = png_data_url()

        def create(c: httpx.Client, body: dict) -> str | None:
            r = c.post("/services/aigc/video-generation/video-synthesis", json=body, headers=ASYNC)
            if r.status_code != 200:
                errors.append(f"create {r.status_code}: {r.text[:200]}")
                return None
            submitted[0] += 1
            return r.json()["output"]["task_id"]

        def feeder() -> None:
            # Keep a backlog so both workers stay busy for the whole run: a few tasks queued at all
            # times, mostly long 1080p t2v renders, every fourth an image-to-video one.
            with httpx.Client(base_url=base, headers=headers, timeout=60) as c:
                k = 0
                while not stop.is_set():
                    r = c.get("/tasks", params={"status": "PENDING", "page_size": 1})
                    pending = int(r.json().get("total", 0)) if r.status_code == 200 else 0
                    if pending < 4:
                        create(c, i2v_body(img) if k % 4 == 3 else LONG_T2V)
                        k += 1
                    stop.wait(0.5)

        target = create(client, LONG_T2V)
        if target is None:
            raise SystemExit("could not create a task: " + "; ".join(errors))
        for _ in range(5):
            create(client, LONG_T2V)
        create(client, i2v_body(img))
        threading.Thread(target=feeder, daemon=True).start()
        deadline = time.monotonic() + 60
        while running_count(client) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        if args.writer_hold_ms:
            db = data / "data" / "wanserve.db"
            hold = threading.Thread(target=hold_write_lock, args=(db, args.writer_hold_ms, stop), daemon=True)
            hold.start()
        time.sleep(args.warmup)
        busy_before = running_count(client)

        get_ms: list[float] = []
        for _ in range(args.n):
            t0 = time.perf_counter()
            r = client.get(f"/tasks/{target}")
            get_ms.append((time.perf_counter() - t0) * 1000)
            if r.status_code != 200:
                errors.append(f"get {r.status_code}")
        list_ms: list[float] = []
        if args.list:
            for _ in range(args.n):
                t0 = time.perf_counter()
                r = client.get("/tasks", params={"page_size": 10})
                list_ms.append((time.perf_counter() - t0) * 1000)
                if r.status_code != 200:
                    errors.append(f"list {r.status_code}")
        busy_after = running_count(client)
        stop.set()

        print(f"machine: {machine()}; python {platform.python_version()}; {platform.platform()}")
        print(f"src: {src}" + (f"; another writer holds the lock {args.writer_hold_ms:g} ms of every "
                                f"{2 * args.writer_hold_ms:g} ms" if args.writer_hold_ms else ""))
        print(f"workers busy (RUNNING tasks) before/after: {busy_before}/{busy_after}; tasks submitted: "
              f"{submitted[0]}")
        print(summary("GET /tasks/{id}", get_ms))
        if list_ms:
            print(summary("GET /tasks (list)", list_ms))
        if errors:
            print(f"{len(errors)} errors, first: {errors[0]}")
        return 1 if errors else 0
    finally:
        stop.set()
        stop_process(proc)
        log.close()
        if args.keep:
            print(f"data and server log kept in {data}")
        else:
            shutil.rmtree(data, ignore_errors=True)


def stop_process(proc: subprocess.Popen) -> None:
    """SIGTERM the server's process group, SIGKILL it after 15 s (list_latency.py uses this too)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


if __name__ == "__main__":
    sys.exit(main())
