"""Multi-GPU tasks (issue #12): one worker over several ranks, here two CPU processes on gloo.

Rank 0 claims from a real task store (a SQLite file), broadcasts the task and the planned job, and every
rank renders in step (a progress report is a collective); rank 0 records the outcome. The orchestration
runs a fake pipeline whose steps are progress reports; the last test runs the wan engine's real context
parallelism (diffusers' Ulysses attention over gloo) on a tiny checkpoint.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import queue
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from wanserve.config import DistributedEnv, Settings, distributed_env
from wanserve.services import Services
from wanserve.storage.base import RESULT_ATTEMPT
from wanserve.worker.distributed import free_port, parse_gpus

from . import wan_fixtures

WORLD = 2
JOIN_S = 30.0  # every rank process must be gone within this (no hang)
START_S = 120.0
T2V = "wanx2.1-t2v-turbo"


# -- the rank processes (module level: spawned processes import them) -----------------------------


class FakePipeline:
    """Stands in for GenerationPipeline: shares a job, then `steps` progress reports `step_s` apart on every
    rank; rank 0 stores a result. `die_at`: rank 1 exits hard at that step."""

    def __init__(self, storage: Any, rank: int, events: Any, steps: int, step_s: float,
                 die_at: int | None) -> None:
        self.storage, self.rank, self.events = storage, rank, events
        self.steps, self.step_s, self.die_at = steps, step_s, die_at

    def __call__(self, task_id: str, account_id: str, req: Any, ctx: Any, *, attempt: int) -> dict[str, Any]:
        ctx.check()
        ctx.share(req.model, {"task": task_id, "steps": self.steps}, None)
        self._render(ctx)
        with self.storage.temp_result(task_id) as tmp:
            tmp.write_bytes(b"not really an mp4")
            self.storage.put_result(task_id, attempt, tmp)
        return {RESULT_ATTEMPT: attempt, "width": 1, "height": 1, "fps": 30, "frame_count": 1, "duration": 1}

    def follow(self, model: str, job: Any, clip: Any, ctx: Any) -> None:
        assert job["steps"] == self.steps  # the job rank 0 shared
        self._render(ctx)

    def _render(self, ctx: Any) -> None:
        done = 0
        try:
            for done in range(1, self.steps + 1):
                time.sleep(self.step_s)
                if self.rank == 1 and done == self.die_at:
                    _exit(self.events, 3)
                ctx.progress(done, self.steps)
        except BaseException as exc:
            self.events.put((self.rank, "stopped", done, type(exc).__name__))
            raise
        self.events.put((self.rank, "rendered", done, ""))

    def discard(self, task_id: str, attempt: int) -> None:
        self.storage.remove_attempt(task_id, attempt)


def _settings(data: Path, **kw: Any) -> Settings:
    return Settings(data_dir=data, lease_seconds=kw.pop("lease_seconds", 5.0), poll_seconds=0.05,
                    shutdown_grace_seconds=kw.pop("grace", 0.0), dist_timeout_seconds=10.0, **kw)


def _rank_main(rank: int, port: int, data: str, stop: Any, events: Any, steps: int, step_s: float,
               die_at: int | None) -> None:
    from wanserve.engines import EngineSet
    from wanserve.worker.distributed import RankGroup, follow, run_leader, tick_seconds
    from wanserve.worker.runner import run_workers

    settings = _settings(Path(data))
    group = RankGroup.init(DistributedEnv(rank=rank, world_size=WORLD, local_rank=rank, master_port=port),
                           settings.dist_timeout_seconds)
    services = Services.open(settings)
    pipeline = FakePipeline(services.storage, rank, events, steps, step_s, die_at)
    events.put((rank, "ready", 0, ""))
    if rank:
        code = follow(group, pipeline)
    else:
        local_stop = threading.Event()
        _watch(stop, local_stop)
        engines = EngineSet({})
        code = run_leader(lambda leader: run_workers(services, engines, 1, local_stop, pipeline=leader),
                          pipeline, group, local_stop, grace_seconds=settings.shutdown_grace_seconds,
                          tick_s=tick_seconds(settings.dist_timeout_seconds))
    events.put((rank, "exit", code, ""))
    _exit(events, code)


def _exit(events: Any, code: int) -> None:
    """Exit at once (no interpreter teardown: a broken group's gloo threads), the reports flushed first."""
    events.close()
    events.join_thread()
    os._exit(code)



def _watch(stop: Any, local: threading.Event) -> None:
    """Set `local` once the parent sets `stop`, polling: a process waiting in an mp.Event that then exits
    at once would leave the parent's set() waiting for it for ever."""

    def poll() -> None:
        while not stop.is_set():
            time.sleep(0.05)
        local.set()

    threading.Thread(target=poll, daemon=True).start()


class Ranks:
    """Two rank processes on a fresh data dir, and what they report."""

    def __init__(self, tmp_path: Path, *, steps: int = 6, step_s: float = 0.05, die_at: int | None = None):
        self.services = Services.open(_settings(tmp_path))  # migrated here, before the ranks open it
        ctx = mp.get_context("spawn")
        self.stop, self.queue = ctx.Event(), ctx.Queue()
        port = free_port()
        args = (port, str(tmp_path), self.stop, self.queue, steps, step_s, die_at)
        self.procs = [ctx.Process(target=_rank_main, args=(r, *args), daemon=True) for r in range(WORLD)]
        for p in self.procs:
            p.start()
        self.events: list[tuple] = []
        deadline = time.monotonic() + START_S  # importing torch in two processes on a busy 2-core machine
        while sum(e[1] == "ready" for e in self.events) < WORLD and time.monotonic() < deadline:
            self.events.append(self.queue.get(timeout=max(0.1, deadline - time.monotonic())))

    def create(self) -> str:
        request = {"model": T2V, "requested_model": T2V, "kind": "t2v", "prompt": "a cat",
                   "negative_prompt": "", "template": None, "resolution": "480P", "size": "832*480",
                   "duration": 5, "prompt_extend": False, "shot_type": "single", "sound": "none",
                   "watermark": False, "seed": 1, "media": [], "resolve_uploads": False}
        return self.services.store.create(account_id="acct", api_key_id="k", request_id="r", model=T2V,
                                          endpoint="video-generation", request=request)["id"]

    def task(self, task_id: str) -> dict[str, Any]:
        return self.services.store.get(task_id) or {}

    def wait_status(self, task_id: str, *statuses: str, timeout: float = 20.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            task = self.task(task_id)
            if task.get("status") in statuses:
                return task
            time.sleep(0.05)
        raise AssertionError(f"task {task_id} never reached {statuses}: {self.task(task_id)}")

    def finish(self) -> tuple[list[int | None], list[tuple]]:
        """Stop the group; every rank's exit code (within JOIN_S) and everything reported."""
        self.stop.set()
        deadline = time.monotonic() + JOIN_S
        for p in self.procs:
            p.join(max(0.0, deadline - time.monotonic()))
        alive = [p for p in self.procs if p.is_alive()]
        for p in alive:
            p.kill()
        assert not alive, "a rank process hung"
        with contextlib.suppress(queue.Empty):
            while True:
                self.events.append(self.queue.get(timeout=0.5))
        self.services.close()
        return [p.exitcode for p in self.procs], self.events


def results(services: Services) -> list[tuple[str, int | None]]:
    return list(services.storage.result_files())


# -- the orchestration -----------------------------------------------------------------------------------


def test_rank_0_claims_both_ranks_render_in_step_and_the_task_succeeds_with_one_result(tmp_path: Path):
    ranks = Ranks(tmp_path, steps=6)
    tid = ranks.create()
    task = ranks.wait_status(tid, "SUCCEEDED", "FAILED")
    codes, events = ranks.finish()
    assert task["status"] == "SUCCEEDED", task
    assert results(ranks.services) == [(tid, 1)]
    assert {(r, what, n) for r, what, n, _ in events if what == "rendered"} == {(0, "rendered", 6),
                                                                              (1, "rendered", 6)}
    assert codes == [0, 0]  # rank 0 told rank 1 to stop, both exited cleanly


def test_a_cancel_seen_by_rank_0_stops_every_rank_at_the_same_step_and_leaves_no_result(tmp_path: Path):
    ranks = Ranks(tmp_path, steps=400, step_s=0.02)
    tid = ranks.create()
    ranks.wait_status(tid, "RUNNING")
    deadline = time.monotonic() + 20
    while not (ranks.task(tid).get("progress") or {}).get("done") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ranks.services.store.cancel(tid, "acct")
    started = time.monotonic()
    time.sleep(1.0)
    codes, events = ranks.finish()
    stopped = {r: (n, name) for r, what, n, name in events if what == "stopped"}
    assert set(stopped) == {0, 1}, events
    assert stopped[0][1] == "TaskCanceled" and stopped[1][1] == "Stopped"
    assert abs(stopped[0][0] - stopped[1][0]) <= 1 and stopped[0][0] < 400
    assert ranks.task(tid)["status"] == "CANCELED"
    assert results(ranks.services) == []
    assert codes == [0, 0] and time.monotonic() - started < JOIN_S


def test_a_rank_dying_mid_task_fails_it_cleanly_and_every_process_exits(tmp_path: Path):
    ranks = Ranks(tmp_path, steps=200, step_s=0.02, die_at=5)
    tid = ranks.create()
    task = ranks.wait_status(tid, "FAILED", "SUCCEEDED", timeout=30)
    codes, _ = ranks.finish()
    assert task["status"] == "FAILED"
    assert task["code"] == "InternalError"
    assert "GPU rank of this multi-GPU worker stopped responding" in task["message"]
    assert results(ranks.services) == []
    assert codes == [1, 3]  # rank 0 exits non-zero for its supervisor to restart the group


def test_the_torchrun_environment_is_read_by_config_and_gpus_are_checked(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert distributed_env() is None
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("MASTER_PORT", "1234")
    assert distributed_env() == DistributedEnv(rank=1, world_size=4, local_rank=1, master_port=1234)
    assert parse_gpus("0, 1,3") == ["0", "1", "3"]
    for bad in ("0", "0,0", "a,b"):
        with pytest.raises(ValueError):
            parse_gpus(bad)


# -- the wan engine: diffusers' context parallelism on gloo ------------------------------------------------


def _wan_rank(rank: int, port: int, checkpoint: str, out: str) -> None:
    from wanserve.engines import EngineSet
    from wanserve.engines.base import RenderJob
    from wanserve.worker.distributed import RankGroup

    RankGroup.init(DistributedEnv(rank=rank, world_size=WORLD, local_rank=rank, master_port=port), 60.0)
    engines = EngineSet({T2V: {"engine": "wan", "checkpoint": checkpoint, "num_inference_steps": 3}})
    engine = engines.for_model(T2V)
    assert engine.loaded.parallel == "ulysses"
    job = RenderJob(kind="t2v", model=T2V, width=100, height=60, frame_count=30, prompt="a cat", seed=3)
    frames = np.stack(list(engine.render(job, lambda done, total: None)))
    if rank == 0:
        np.save(out, frames)
    os._exit(0)


@pytest.mark.slow
def test_wan_context_parallel_output_on_two_ranks_equals_one_rank(tmp_path: Path):
    from wanserve.engines import EngineSet
    from wanserve.engines.base import RenderJob

    checkpoint = wan_fixtures.build_t2v(tmp_path / "t2v", layers=2)
    ctx = mp.get_context("spawn")
    port, out = free_port(), tmp_path / "two-ranks.npy"
    procs = [ctx.Process(target=_wan_rank, args=(r, port, str(checkpoint), str(out))) for r in range(WORLD)]
    for p in procs:
        p.start()
    engines = EngineSet({T2V: {"engine": "wan", "checkpoint": str(checkpoint), "num_inference_steps": 3}})
    job = RenderJob(kind="t2v", model=T2V, width=100, height=60, frame_count=30, prompt="a cat", seed=3)
    one = np.stack(list(engines.for_model(T2V).render(job, lambda done, total: None)))
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]
    two = np.load(out)
    assert engines.for_model(T2V).loaded.parallel == "none"
    assert two.shape == one.shape
    assert np.abs(two.astype(int) - one.astype(int)).max() <= 2
