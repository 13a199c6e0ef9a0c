"""Restarts: a stopped `serve` or `worker` hands its running task back (the attempt not counted) so
another worker finishes it at once, and a worker that lost its task never removes the result of the
worker that took it over."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import update

from wanserve.config import Settings
from wanserve.engines import EngineSet
from wanserve.services import Services
from wanserve.tasks.db import now_ms
from wanserve.tasks.schema import tasks
from wanserve.worker.runner import Worker, run_workers

from .conftest import ASYNC, download, free_port, stored_results, wait_for, wait_until_serving

pytestmark = pytest.mark.slow

LONG_T2V = {"model": "wan2.6-t2v",
            "input": {"prompt": "Shot 1 [0-5 s]: a harbour. Shot 2 [5-15 s]: a storm."},
            "parameters": {"size": "1920*1080", "duration": 15, "seed": 1}}
MEDIUM_T2V = {"model": "wan2.6-t2v", "input": {"prompt": "a harbour at dawn"},
              "parameters": {"size": "1280*720", "duration": 5, "seed": 2}}
SHORT_T2V = {"model": "wanx2.1-t2v-turbo", "input": {"prompt": "a cat"}, "parameters": {"size": "832*480"}}
KEY = "sk-restarts"
HEADERS = {"Authorization": f"Bearer {KEY}"}


def wanserve(command: str, data: Path, log: Path, *args: str, grace: float) -> subprocess.Popen:
    env = {**os.environ, "WANSERVE_API_KEY": KEY, "WANSERVE_SHUTDOWN_GRACE_SECONDS": str(grace)}
    argv = [sys.executable, "-m", "wanserve.cli", command, "--data-dir", str(data), *args]
    with log.open("a") as out:
        return subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)




def stop(proc: subprocess.Popen, timeout: float) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_serve_hands_its_running_task_back_on_sigterm_and_a_worker_finishes_it_at_once(tmp_path):
    data, log = tmp_path / "data", tmp_path / "wanserve.log"
    port = free_port()
    api = f"http://127.0.0.1:{port}/api/v1"
    serve = wanserve("serve", data, log, "--port", str(port), grace=1)
    try:
        wait_until_serving(api, HEADERS, serve)
        r = httpx.post(f"{api}/services/aigc/video-generation/video-synthesis", json=LONG_T2V,
                       headers={**HEADERS, **ASYNC})
        tid = r.json()["output"]["task_id"]
        wait_for(lambda: httpx.get(f"{api}/tasks/{tid}", headers=HEADERS).json()["output"].get("progress"),
                 60)
    finally:
        signaled = time.monotonic()
        assert stop(serve, timeout=30) == 0, log.read_text()
    assert time.monotonic() - signaled < 1 + 5, log.read_text()  # the grace, then at once
    services = Services.open(Settings(data_dir=data))
    try:
        task = services.store.get(tid)
        assert task["status"] == "PENDING", log.read_text()  # handed back, not left RUNNING on its lease
        assert (task["attempts"], task["worker_id"], task["lease_until_ms"]) == (0, None, None)
        started_ms = now_ms()
        worker = wanserve("worker", data, log, grace=1)
        try:
            # claimed as soon as the worker starts, not once a 30 s lease has run out
            wait_for(lambda: services.store.get(tid)["status"] != "PENDING", 30)
            assert services.store.get(tid)["scheduled_ms"] - started_ms < 15_000
            done = wait_for(lambda: (t := services.store.get(tid))["status"] not in ("PENDING", "RUNNING")
                            and t, 300, every=0.2)
        finally:
            assert stop(worker, timeout=30) == 0, log.read_text()
        assert done["status"] == "SUCCEEDED", (done, log.read_text())
        assert done["attempts"] == 1 and done["result"]["attempt"] == 1  # the released attempt not counted
        assert services.store.failures(tid) == []  # and no lost lease in the history
        assert set(services.storage.result_files()) == {(tid, 1)}
    finally:
        services.close()
    assert "handed back" in log.read_text()


def test_a_stopped_worker_lets_its_running_task_finish_within_the_grace_period(make_server, tmp_path):
    server = make_server(workers=0)
    log = tmp_path / "worker.log"
    tid = server.create(MEDIUM_T2V).json()["output"]["task_id"]
    worker = wanserve("worker", server.services.settings.data_dir, log, grace=120)
    try:
        wait_for(lambda: server.task(tid)["output"].get("progress"), 60)
    finally:
        assert stop(worker, timeout=150) == 0, log.read_text()
    task = server.services.store.get(tid)
    assert task["status"] == "SUCCEEDED" and task["attempts"] == 1, log.read_text()


def test_hurry_ends_the_grace_period_and_the_running_task_is_handed_back_at_once(make_server):
    server = make_server(workers=0)
    tid = server.create(LONG_T2V).json()["output"]["task_id"]
    pool = run_workers(server.services, EngineSet(server.services.settings.models), 1, threading.Event())
    wait_for(lambda: server.task(tid)["output"].get("progress"), 60)
    threading.Timer(0.3, pool.hurry).start()  # a second signal, while the grace period runs
    started = time.monotonic()
    assert pool.shutdown(grace_seconds=120)
    assert time.monotonic() - started < 5
    task = server.services.store.get(tid)
    assert (task["status"], task["attempts"], task["progress"]) == ("PENDING", 0, None)
    assert tid not in stored_results(server.services)


def test_a_worker_that_lost_its_task_removes_only_its_own_result_file(make_server):
    """Two attempts of one task both finish encoding; the old one's succeed() fails and it discards
    its file: the published file survives and is the one video_url serves."""
    server = make_server(workers=0)
    store, data = server.services.store, server.services.settings.data_dir
    tid = server.create(SHORT_T2V).json()["output"]["task_id"]
    old = store.claim("old-worker")
    with server.services.db.begin() as conn:  # the old worker stalls: its lease runs out
        conn.execute(update(tasks).where(tasks.c.id == tid).values(lease_until_ms=now_ms() - 1))
    new = store.claim("new-worker")
    assert (old.attempts, new.attempts) == (1, 2)
    pipeline = server.services.pipeline(EngineSet(server.services.settings.models))

    def worker(worker_id: str) -> Worker:
        return Worker(store, pipeline, lease_seconds=30, poll_seconds=0.05, worker_id=worker_id)

    worker("new-worker").run_task(new)
    published = (data / "results" / f"{tid}.2.mp4").read_bytes()
    stalled = worker("old-worker")
    stalled.heartbeat_s = 3600  # it never notices the lost lease before it reaches succeed()
    stalled.run_task(old)  # stores attempt 1's file, succeed() fails, it discards
    task = store.get(tid)
    assert task["status"] == "SUCCEEDED" and task["worker_id"] == "new-worker"
    assert task["result"]["attempt"] == 2
    assert set(server.services.storage.result_files()) == {(tid, 2)}
    url = server.task(tid)["output"]["video_url"]
    assert f"/{tid}.2.mp4?" in url
    assert download(url) == published
    server.sweep()
    assert download(url) == published
