"""Operations: /metrics for Prometheus, /healthz and /readyz for probes, the access log and JSON logs
(docs/deploy.md, Monitoring). Real servers on loopback; the task-running ones share one run of four tasks."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import create_engine, text

from wanserve.api import ops
from wanserve.engines import EngineSet
from wanserve.worker.runner import run_workers
from wanserve.worker.supervise import ThreadGuard

from .conftest import PG_ADMIN, Server, free_port, running_server, wait_for, wait_until_serving

T2V = {"model": "wanx2.1-t2v-turbo", "input": {"prompt": "a lighthouse"}, "parameters": {"size": "832*480"}}
MODEL = "wanx2.1-t2v-turbo"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]  # (sample name, labels) -> value


def scrape(server: Server) -> Samples:
    """GET /metrics (no key), parsed as Prometheus does."""
    r = httpx.get(f"{server.base}/metrics")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(r.text) for s in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of `name` over the samples carrying `labels` (others free), 0 if none."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


@pytest.fixture(scope="module")
def ran(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Samples, Samples]]:
    """A server whose one task was canceled while no worker ran, then three tasks run by three workers;
    with its metrics page before the tasks and after."""
    with running_server(tmp_path_factory.mktemp("ops"), workers=0) as server:
        before = scrape(server)
        canceled = server.create(T2V).json()["output"]["task_id"]
        with server.client() as c:
            assert c.post(f"/tasks/{canceled}/cancel").status_code == 200
        run_workers(server.services, EngineSet(), 3, server.stop)
        ids = [server.create(T2V).json()["output"]["task_id"] for _ in range(3)]
        assert [server.wait(i)["output"]["task_status"] for i in ids] == ["SUCCEEDED"] * 3
        yield server, before, scrape(server)


# -- /metrics -----------------------------------------------------------------------------------


def test_metrics_count_the_tasks_by_model_and_status(ran):
    _, _, after = ran
    assert value(after, "wanserve_tasks", model=MODEL, status="SUCCEEDED") == 3
    assert value(after, "wanserve_tasks", model=MODEL, status="CANCELED") == 1
    assert value(after, "wanserve_tasks", status="FAILED") == 0
    assert value(after, "wanserve_queue_depth") == 0
    assert value(after, "wanserve_database_up") == 1


def test_metrics_show_the_live_workers_and_when_each_was_last_seen(ran):
    _, _, after = ran
    assert value(after, "wanserve_workers_live") == 3
    seen = [v for (n, _), v in after.items() if n == "wanserve_worker_last_seen_seconds"]
    assert len(seen) == 3 and all(0 <= s < 15 for s in seen)


def test_the_queue_run_and_step_histograms_observe_each_task(ran):
    _, before, after = ran

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert grew("wanserve_task_queue_seconds_count", model=MODEL) == 3  # the canceled one was never claimed
    assert grew("wanserve_task_run_seconds_count", model=MODEL, outcome="succeeded") == 3
    assert grew("wanserve_task_run_seconds_sum", model=MODEL, outcome="succeeded") > 0
    assert grew("wanserve_step_seconds_count", model=MODEL) >= 3
    assert grew("wanserve_engine_load_seconds_count", engine="preview") >= 1


def test_http_latency_is_labelled_by_route_template_not_raw_path(ran):
    _, _, after = ran
    polls = value(after, "wanserve_http_request_duration_seconds_count", method="GET",
                  route="/api/v1/tasks/{task_id}", status="200")
    assert polls >= 3
    routes = {dict(ls)["route"] for (n, ls), _ in after.items()
              if n == "wanserve_http_request_duration_seconds_count"}
    assert "/api/v1/services/aigc/video-generation/video-synthesis" in routes
    uuid_like = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-")
    assert not [r for r in routes if uuid_like.search(r)]  # no task ids in labels


def test_a_new_queue_shows_its_pending_tasks_per_model(make_server):
    server = make_server(workers=0)
    for _ in range(2):
        assert server.create(T2V).status_code == 200
    samples = scrape(server)
    assert value(samples, "wanserve_queue_depth") == 2
    assert value(samples, "wanserve_queue_depth_by_model", model=MODEL) == 2
    assert value(samples, "wanserve_workers_live") == 0


# -- /healthz, /readyz ----------------------------------------------------------------------------


def test_healthz_answers_ok_without_a_key(make_server):
    server = make_server(workers=0)
    r = httpx.get(f"{server.base}/healthz")
    assert (r.status_code, r.json()) == (200, {"status": "ok"})


def test_readyz_is_200_with_every_check_passing(ran):
    server, _, _ = ran
    r = httpx.get(f"{server.base}/readyz")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "ok" and body["failed"] == []
    assert body["checks"]["database"]["ok"] and body["checks"]["storage"]["ok"]
    assert body["checks"]["workers"] == {"ok": True, "live": 3}


def test_readyz_is_503_when_no_worker_is_live(make_server):
    server = make_server(workers=0)
    r = httpx.get(f"{server.base}/readyz")
    assert r.status_code == 503
    body = r.json()
    assert body["failed"] == ["workers"]
    assert "no live worker" in body["checks"]["workers"]["error"]


def test_readyz_is_503_naming_storage_when_its_folder_is_gone(make_server):
    server = make_server(workers=1, readyz_details=True)  # the reason in the body
    wait_for(lambda: httpx.get(f"{server.base}/readyz").status_code == 200)
    (server.services.settings.data_dir / "partial").rmdir()
    body = httpx.get(f"{server.base}/readyz").json()
    assert body["failed"] == ["storage"]
    assert "partial" in body["checks"]["storage"]["error"]


def test_readyz_names_a_failed_check_but_not_its_endpoint_or_bucket_without_details(make_server, caplog):
    secret = "Could not connect to the endpoint URL: http://minio.internal:9000/secret-bucket"

    def ping() -> None:
        raise ConnectionError(secret)

    for details in (False, True):
        server = make_server(workers=1, readyz_details=details)
        wait_for(lambda s=server: httpx.get(f"{s.base}/readyz").status_code == 200)
        server.services.storage.ping = ping  # an S3 endpoint that does not answer
        with caplog.at_level(logging.WARNING, logger="wanserve.api"):
            r = httpx.get(f"{server.base}/readyz")
        assert r.status_code == 503 and r.json()["failed"] == ["storage"]
        if details:
            assert secret in r.json()["checks"]["storage"]["error"]
        else:
            assert "minio" not in r.text and "secret-bucket" not in r.text
            assert r.json()["checks"]["storage"] == {
                "ok": False,
                "error": "ConnectionError (the reason is in the server log; readyz_details = true shows it "
                         "here)"}
        assert secret in caplog.text  # the operator still learns why


def test_a_worker_thread_that_dies_fails_readyz_until_it_is_restarted(make_server, monkeypatch):
    monkeypatch.setattr(ThreadGuard, "RESTART_DELAY_S", 1.5)
    server = make_server(workers=1)
    wait_for(lambda: httpx.get(f"{server.base}/readyz").status_code == 200)
    store, broken = server.services.store, threading.Event()
    wait_for_work = store.wait_for_work

    def wait_or_die(*args: Any, **kwargs: Any) -> Any:
        if broken.is_set():  # as `poll_seconds = inf` once did: outside the loop's guard
            raise OverflowError("timeout value is too large")
        return wait_for_work(*args, **kwargs)

    monkeypatch.setattr(store, "wait_for_work", wait_or_die)
    broken.set()
    wait_for(lambda: httpx.get(f"{server.base}/readyz").status_code == 503, timeout=10, every=0.05)
    body = httpx.get(f"{server.base}/readyz").json()
    broken.clear()
    assert body["failed"] == ["workers"]
    assert body["checks"]["workers"]["error"] == "worker thread worker-0 stopped; restarting it"
    wait_for(lambda: httpx.get(f"{server.base}/readyz").status_code == 200, timeout=10)
    task = server.create(T2V).json()["output"]["task_id"]
    assert server.wait(task)["output"]["task_status"] == "SUCCEEDED"  # the restarted thread runs work


def test_worker_threads_that_keep_dying_stop_the_pool_and_fail_readyz(make_server, monkeypatch):
    monkeypatch.setattr(ThreadGuard, "RESTART_DELAY_S", 0.05)
    server = make_server(workers=0, readyz_details=True)

    def die(*args: Any, **kwargs: Any) -> None:
        raise OverflowError("timeout value is too large")

    monkeypatch.setattr(server.services.store, "wait_for_work", die)
    stop, fatal = threading.Event(), []
    pool = run_workers(server.services, EngineSet(), 2, stop, on_fatal=fatal.append)
    wait_for(lambda: fatal, timeout=10)
    assert pool.failed and stop.is_set()  # the other worker stops claiming; `serve` exits 1
    assert fatal[0].startswith(f"worker threads stopped {ThreadGuard.MAX_RESTARTS + 1} times in 600 s, the "
                               "last worker-")
    assert fatal[0].endswith("OverflowError: timeout value is too large")
    pool.shutdown(1)
    body = httpx.get(f"{server.base}/readyz").json()
    assert body["failed"] == ["workers"]
    assert body["checks"]["workers"]["error"] == f"{fatal[0]}; the process is stopping"


def test_readyz_fails_a_check_that_hangs_without_waiting_for_it(make_server, monkeypatch):
    monkeypatch.setattr(ops, "READY_TIMEOUT_SECONDS", 0.2)
    server = make_server(workers=1)
    wait_for(server.services.workers.live)
    release = threading.Event()
    monkeypatch.setattr(server.services.storage, "ping", lambda: release.wait(10))  # a hung volume
    try:
        started = time.monotonic()
        r = httpx.get(f"{server.base}/readyz")
        assert time.monotonic() - started < 2
        assert r.status_code == 503 and r.json()["failed"] == ["storage"]
        assert "no answer within 0.2 s" in r.json()["checks"]["storage"]["error"]
    finally:
        release.set()


def test_readyz_is_503_naming_the_database_once_it_is_dropped(tmp_path, postgres_url):
    with running_server(tmp_path, workers=1, database_url=postgres_url) as server:
        wait_for(lambda: httpx.get(f"{server.base}/readyz").status_code == 200)
        admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE "{postgres_url.rsplit("/", 1)[1]}" WITH (FORCE)'))
        admin.dispose()
        r = httpx.get(f"{server.base}/readyz")
        assert r.status_code == 503
        body = r.json()
        assert "database" in body["failed"] and "storage" not in body["failed"]
        assert body["checks"]["database"]["error"]
        assert value(scrape(server), "wanserve_database_up") == 0  # the scrape still answers


def test_ops_routes_are_not_in_the_openapi_schema(make_server):
    server = make_server(workers=0)
    paths = httpx.get(f"{server.base}/openapi.json").json()["paths"]
    assert not {"/metrics", "/healthz", "/readyz"} & set(paths)


# -- the access log -----------------------------------------------------------------------------


def test_each_request_writes_one_access_line_with_request_id_route_status_and_latency(make_server, caplog):
    server = make_server(workers=0)
    caplog.set_level(logging.INFO, logger="wanserve.access")
    task_id = str(uuid.uuid4())
    with server.client() as c:
        r = c.get(f"/tasks/{task_id}")
    request_id = r.json()["request_id"]
    lines = wait_for(lambda: [rec for rec in caplog.records if rec.name == "wanserve.access"
                              and getattr(rec, "request_id", "") == request_id])
    assert len(lines) == 1
    line: Any = lines[0]
    assert (line.method, line.route, line.path, line.status) == \
        ("GET", "/api/v1/tasks/{task_id}", f"/api/v1/tasks/{task_id}", r.status_code)
    assert line.latency_ms >= 0
    message = line.getMessage()
    assert request_id in message and "/api/v1/tasks/{task_id}" in message and str(r.status_code) in message


def test_probes_are_logged_at_debug_only(make_server, caplog):
    server = make_server(workers=0)
    caplog.set_level(logging.INFO, logger="wanserve.access")
    httpx.get(f"{server.base}/healthz")
    with server.client() as c:
        c.get("/tasks")  # an ordinary request after it: its line shows the log is on
    wait_for(lambda: [rec for rec in caplog.records if getattr(rec, "route", "") == "/api/v1/tasks"])
    assert not [rec for rec in caplog.records if getattr(rec, "route", "") == "/healthz"]


# -- the commands ---------------------------------------------------------------------------------


def test_serve_with_json_log_format_writes_one_json_object_per_line(tmp_path):
    port = free_port()
    env = {**os.environ, "WANSERVE_LOG_FORMAT": "json", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen([sys.executable, "-m", "wanserve.cli", "serve", "--port", str(port), "--workers",
                             "0", "--data-dir", str(tmp_path / "d")], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        api = f"http://127.0.0.1:{port}/api/v1"
        wait_until_serving(api, {}, proc)
        httpx.get(f"{api}/tasks/{uuid.uuid4()}")  # no key: 401, one access line
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
    lines = [json.loads(line) for line in stderr.splitlines() if line.strip()]  # each one parses
    assert lines and all({"time", "level", "logger", "message"} <= set(line) for line in lines)
    access = [line for line in lines if line["logger"] == "wanserve.access" and line["status"] == 401]
    assert access and access[-1]["route"] == "/api/v1/tasks/{task_id}"
    assert access[-1]["request_id"] and access[-1]["latency_ms"] >= 0


def test_a_worker_process_serves_its_metrics_on_metrics_port(tmp_path):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "wanserve.cli", "worker", "--metrics-port", str(port),
                             "--data-dir", str(tmp_path / "d")], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        def page() -> str | None:
            try:
                return httpx.get(f"http://127.0.0.1:{port}/").text
            except httpx.TransportError:
                assert proc.poll() is None, "the worker exited"
                return None

        names = {f.name for f in text_string_to_metric_families(wait_for(page, timeout=30, every=0.1))}
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    assert {"wanserve_task_queue_seconds", "wanserve_task_run_seconds", "wanserve_step_seconds"} <= names
    assert "wanserve_tasks" not in names  # the database's view is the API's to serve, once


def test_step_timer_observes_seconds_per_step_and_skips_set_up():
    from wanserve.metrics import STEP_SECONDS, StepTimer

    clock = iter([0.0, 10.0, 11.0, 13.0, 20.0, 20.5]).__next__
    model = f"test-{uuid.uuid4().hex[:6]}"
    timer = StepTimer(model, clock=clock)
    for done, total in [(0, 4), (1, 4), (3, 4), (0, 1), (1, 1)]:
        timer.report(done, total)
    # 0/4 -> 1/4: 10 s for 1 step; 1/4 -> 3/4: 1 s for 2 steps; 0/1 starts a new count; 0/1 -> 1/1: 7 s
    samples = {s.name: s.value for s in STEP_SECONDS.collect()[0].samples if s.labels.get("model") == model}
    assert samples["wanserve_step_seconds_count"] == 3
    assert samples["wanserve_step_seconds_sum"] == pytest.approx(10.0 + 0.5 + 7.0)
