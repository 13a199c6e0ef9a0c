"""Which tasks a worker process takes: the models its config names (every model when [models] is empty),
narrowed by `worker_models`; why a task waits when no live worker serves it; `wanserve workers`."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from wanserve.cli import main
from wanserve.config import load_settings
from wanserve.engines import EngineConfigError, EngineSet
from wanserve.worker.runner import Worker

from .conftest import Server, wait_for

PLUS = "wan2.2-t2v-plus"
TURBO = "wanx2.1-t2v-turbo"


def t2v(model: str) -> dict[str, Any]:
    return {"model": model, "input": {"prompt": "a lighthouse at dawn"}, "parameters": {"size": "832*480"}}


def status(server: Server, task_id: str) -> str:
    return server.task(task_id)["output"]["task_status"]


def started(server: Server, task_id: str) -> bool:
    return status(server, task_id) != "PENDING"


def cancel(server: Server, task_id: str) -> None:
    """Stop a task the test no longer needs, so its rendering does not slow the tests after it."""
    with server.client() as c:
        c.post(f"/tasks/{task_id}/cancel")


def test_a_task_no_live_worker_serves_waits_with_the_reason_and_runs_once_one_starts(make_server):
    server = make_server(workers=0)  # the API alone
    tid = server.create(t2v(PLUS)).json()["output"]["task_id"]
    out = server.task(tid)["output"]
    assert out["task_status"] == "PENDING"
    assert out["wanserve_pending_reason"] == (
        f"No live worker serves {PLUS}; start a worker with it configured (wanserve workers lists the "
        "live ones).")

    worker = subprocess.Popen([sys.executable, "-m", "wanserve.cli", "worker", "--models", "wan2.2-t2v-plus",
                               "--data-dir", str(server.services.settings.data_dir)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              env={**os.environ, "WANSERVE_SHUTDOWN_GRACE_SECONDS": "0"})
    try:
        wait_for(lambda: started(server, tid), timeout=60)
        assert "wanserve_pending_reason" not in server.task(tid)["output"]
        assert server.services.workers.serving(PLUS) and not server.services.workers.serving(TURBO)
    finally:
        worker.terminate()
        worker.wait(30)


def test_a_worker_with_worker_models_claims_only_those(make_server):
    server = make_server(workers=2, worker_models=["wan2.1-t2v-turbo"])  # an alias of wanx2.1-t2v-turbo
    other = server.create(t2v(PLUS)).json()["output"]["task_id"]
    mine = server.create(t2v(TURBO)).json()["output"]["task_id"]  # submitted later, taken first
    wait_for(lambda: started(server, mine))
    time.sleep(0.5)  # ten polls of the idle second worker
    assert status(server, other) == "PENDING"
    assert "No live worker serves wan2.2-t2v-plus" in server.task(other)["output"]["wanserve_pending_reason"]
    assert [w["models"] for w in server.services.workers.live()] == [[TURBO], [TURBO]]
    cancel(server, mine)


def test_a_worker_with_models_configured_serves_those_and_no_others(make_server):
    server = make_server(workers=2, models={TURBO: {"engine": "preview"}})
    other = server.create(t2v(PLUS)).json()["output"]["task_id"]
    mine = server.create(t2v(TURBO)).json()["output"]["task_id"]
    wait_for(lambda: started(server, mine))
    time.sleep(0.5)  # ten polls of the idle second worker
    assert status(server, other) == "PENDING"
    assert server.task(other)["output"]["wanserve_pending_reason"].startswith("No live worker serves")
    cancel(server, mine)


def test_the_served_models_follow_the_config_and_worker_models():
    assert EngineSet().served_models() == ["*"]  # the embedded default: every model, preview engine
    assert EngineSet().served_models(["wan2.1-t2v-turbo", PLUS]) == [TURBO, PLUS]
    configured = EngineSet({TURBO: {}, "wan2.6-t2v": {"engine": "preview"}})
    assert configured.served_models() == [TURBO, "wan2.6-t2v"]
    narrowed = EngineSet({TURBO: {}, "wan2.6-t2v": {}}, serve=["wan2.6-t2v"])
    assert narrowed.served_models() == ["wan2.6-t2v"] and list(narrowed.by_model) == ["wan2.6-t2v"]
    with pytest.raises(EngineConfigError, match=r"worker_models: 'wan2\.2-t2v-plus' is not configured here"):
        configured.served_models([PLUS])
    with pytest.raises(EngineConfigError, match=r"worker_models: 'wan9-t2v' is not a public model name"):
        EngineSet(serve=["wan9-t2v"])


def test_worker_models_come_from_the_file_the_environment_or_the_flag(tmp_path: Path, monkeypatch):
    cfg = tmp_path / "wanserve.toml"
    cfg.write_text('worker_models = ["wan2.6-t2v"]\n')
    assert load_settings(cfg).worker_models == ["wan2.6-t2v"]
    monkeypatch.setenv("WANSERVE_WORKER_MODELS", "wan2.2-t2v-plus, wan2.1-t2v-turbo")
    assert load_settings(cfg).worker_models == [PLUS, "wan2.1-t2v-turbo"]
    assert load_settings(cfg, worker_models="wan2.7-i2v").worker_models == ["wan2.7-i2v"]  # --models


@pytest.mark.parametrize(("config", "flag", "expected"), [
    ("", "wan9-t2v", "worker_models: 'wan9-t2v' is not a public model name or alias"),
    (f'[models."{TURBO}"]\nengine = "preview"\n', PLUS,
     f"worker_models: '{PLUS}' is not configured here (configured: {TURBO})"),
])
def test_a_worker_asked_for_a_model_it_cannot_serve_stops_at_start_with_one_line(tmp_path: Path, config,
                                                                                   flag, expected):
    cfg = tmp_path / "wanserve.toml"
    cfg.write_text(config)
    result = subprocess.run([sys.executable, "-m", "wanserve.cli", "worker", "--config", str(cfg), "--models",
                             flag, "--data-dir", str(tmp_path / "data")], capture_output=True, text=True,
                            timeout=60, env={**os.environ, "WANSERVE_LOG_LEVEL": "WARNING"})
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.startswith("wanserve:")]
    assert len(lines) == 1 and lines[0].startswith("wanserve: cannot start: " + expected), result.stderr


def test_wanserve_workers_lists_a_live_worker(make_server, capsys):
    server = make_server(workers=1, worker_models=[TURBO])
    wait_for(lambda: server.services.workers.live())
    assert main(["workers", "--data-dir", str(server.services.settings.data_dir)]) == 0
    header, row = capsys.readouterr().out.splitlines()
    assert header.split()[:3] == ["worker", "host", "pid"] and header.endswith("live")
    (worker,) = server.services.workers.live()
    assert row.startswith(worker["id"]) and f" {os.getpid()} " in row
    assert TURBO in row and " idle " in row and row.endswith(" live")


class SleepingPipeline:
    """A pipeline that never reports progress nor checks: only the keeper can see it run past the cap."""

    def __init__(self, seconds: float) -> None:
        self.seconds, self.discarded = seconds, []

    def __call__(self, task_id: str, account_id: str, req: Any, ctx: Any, *, attempt: int) -> dict:
        time.sleep(self.seconds)
        return {"width": 832, "height": 480}

    def discard(self, task_id: str, attempt: int) -> None:
        self.discarded.append(task_id)


def test_a_task_past_the_run_cap_fails_even_if_its_pipeline_never_reports(make_server):
    server = make_server(workers=0)
    tid = server.create(t2v(TURBO)).json()["output"]["task_id"]
    pipeline = SleepingPipeline(2.0)
    worker = Worker(server.services.store, pipeline, lease_seconds=30, poll_seconds=0.05,  # type: ignore
                    max_run_seconds=0.5)
    assert worker.run_once()
    out = server.task(tid)["output"]
    assert (out["task_status"], out["code"]) == ("FAILED", "InternalError.Timeout")
    assert "longer than 0.5 s" in out["message"]
    assert pipeline.discarded == [tid]  # its late result is not published


def test_a_task_past_the_run_cap_ends_failed_and_the_worker_takes_the_next(make_server):
    server = make_server(workers=1, max_run_seconds=1)
    long = {"model": "wan2.6-t2v", "input": {"prompt": "a storm over a harbour"},
            "parameters": {"size": "1920*1080", "duration": 15}}
    tid = server.create(long).json()["output"]["task_id"]
    nxt = server.create(t2v(TURBO)).json()["output"]["task_id"]
    body = server.wait(tid, timeout=30)["output"]
    assert (body["task_status"], body["code"]) == ("FAILED", "InternalError.Timeout"), body
    assert body["message"].startswith("An internal timeout error has occured during execution")
    wait_for(lambda: started(server, nxt), timeout=10)
    failures = server.services.store.failures(tid)
    assert [f["code"] for f in failures] == ["InternalError.Timeout"]
    cancel(server, nxt)

