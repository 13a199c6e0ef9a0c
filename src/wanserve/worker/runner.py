"""A worker: claim a task, keep its lease, run the generation pipeline, record the outcome.

While a task runs, a keeper thread renews its lease every `heartbeat_s` and writes the latest
progress. When the renewal matches no row the task was canceled (or, after a long stall, taken
over by another worker): the keeper raises a flag, and the pipeline's next progress report or
check raises TaskCanceled / LeaseLost, so a running task stops within about a quarter second.

A process runs its workers as a `WorkerPool`. `shutdown(grace_seconds)` stops claiming, lets
running tasks finish within the grace period, then raises the pool's hand-back flag: each
pipeline still running stops at its next progress report or check (ShuttingDown) and its worker
hands the task back (`release`: PENDING again, the attempt not counted), so another worker takes
it at once instead of after its lease runs out.

A task running longer than the run cap (`max_run_seconds`) is failed by its keeper (InternalError.Timeout,
recorded at once, whether or not the pipeline ever reports progress); the pipeline's next check raises
RunCapReached and the worker discards the partial result and goes on to the next task.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import traceback
import uuid
from typing import Any

from ..engines import EngineSet
from ..errors import (
    LeaseLost,
    ServiceError,
    ShuttingDown,
    TaskCanceled,
    algo_failure,
    out_of_memory,
    run_timeout,
)
from ..generation.pipeline import GenerationPipeline
from ..generation.request import GenerationRequest
from ..metrics import TASK_QUEUE_SECONDS, TASK_RUN_SECONDS, StepTimer
from ..services import Services
from ..tasks.states import TaskStatus
from ..tasks.store import Claimed, TaskStore
from ..tasks.workers import ALL_MODELS, WorkerRegistry
from .supervise import ThreadGuard

log = logging.getLogger("wanserve.worker")


class RunCapReached(Exception):
    """Raised inside a running task once its keeper has failed it for running past the run cap."""


def new_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class Keeper(threading.Thread):
    """Renews one task's lease and publishes its progress until stopped; the pipeline's TaskContext."""

    # the worker registry hears from a busy worker at most this often (its lease beats are more frequent)
    REGISTRY_EVERY_S = 2.0

    def __init__(self, store: TaskStore, task_id: str, worker_id: str, interval: float,
                 hand_back: threading.Event | None = None, on_beat: Any = None,
                 max_run_s: float | None = None) -> None:
        super().__init__(daemon=True, name=f"keeper-{task_id[:8]}")
        self.max_run_s = max_run_s  # the run cap: past it the keeper fails the task (None: no cap)
        self.store, self.task_id, self.worker_id, self.interval = store, task_id, worker_id, interval
        self.on_beat = on_beat  # called (at most every REGISTRY_EVERY_S) while the task runs
        self._last_registry = 0.0
        self.hand_back = hand_back or threading.Event()  # set: the process is shutting down, grace over
        self.latest: dict[str, Any] | None = None
        self.lost: type[Exception] | None = None
        self.done = threading.Event()
        self.started_at = time.monotonic()
        self.steps: StepTimer | None = None  # the seconds-per-step metric, fed by progress()

    def run(self) -> None:
        if self.on_beat is not None:
            self.on_beat()
            self._last_registry = time.monotonic()
        while not self.done.wait(self.interval) and self.beat():
            if self.on_beat is not None and time.monotonic() - self._last_registry >= self.REGISTRY_EVERY_S:
                self.on_beat()
                self._last_registry = time.monotonic()

    def beat(self) -> bool:
        if self.max_run_s is not None and time.monotonic() - self.started_at > self.max_run_s:
            return self.time_out()
        try:
            if self.store.heartbeat(self.task_id, self.worker_id, self.latest):
                return True
        except Exception:  # a database hiccup: keep the task, try again next beat
            log.exception("heartbeat failed for %s", self.task_id)
            return True
        self.lost = TaskCanceled if self.store.status(self.task_id) == TaskStatus.CANCELED else LeaseLost
        return False

    def time_out(self) -> bool:
        """Fail the task for running past the run cap, from this thread (the pipeline may never report
        progress again), and raise the flag that stops it. False once done; True: the database did not
        answer, try again next beat."""
        error = run_timeout(self.max_run_s or 0)
        try:
            failed = self.store.fail(self.task_id, self.worker_id, error.code, error.message)
        except Exception:
            log.exception("could not record the run-cap failure of %s", self.task_id)
            return True
        if failed:
            log.info("task %s: FAILED %s after %g s (the run cap)", self.task_id, error.code, self.max_run_s)
            self.lost = RunCapReached
        else:  # canceled or taken over just before
            self.lost = TaskCanceled if self.store.status(self.task_id) == TaskStatus.CANCELED else LeaseLost
        return False

    def check(self) -> None:
        self.check_ours()
        if self.hand_back.is_set():
            raise ShuttingDown(self.task_id)

    def check_ours(self) -> None:
        """Raise if the task was canceled or taken over (not for a shutdown: a finished result is kept)."""
        if self.lost is not None:
            raise self.lost(self.task_id)

    def progress(self, done: int, total: int) -> None:
        self.check()
        if self.steps is not None:
            self.steps.report(done, total)
        elapsed = time.monotonic() - self.started_at
        eta = elapsed / done * (total - done) if done else None
        self.latest = {"done": done, "total": total, "percent": round(100 * done / max(total, 1), 1),
                       "eta_seconds": None if eta is None else round(eta, 1)}


class Worker:
    def __init__(self, store: TaskStore, pipeline: GenerationPipeline, *, lease_seconds: float,
                 poll_seconds: float, worker_id: str | None = None,
                 hand_back: threading.Event | None = None, registry: WorkerRegistry | None = None,
                 models: list[str] | None = None, max_run_seconds: float | None = None) -> None:
        self.store, self.pipeline, self.poll_seconds = store, pipeline, poll_seconds
        self.max_run_seconds = max_run_seconds  # the run cap (None: none)
        self.worker_id = worker_id or new_worker_id()
        self.heartbeat_s = min(0.25, lease_seconds / 3)
        self.hand_back = hand_back or threading.Event()  # set: stop the running task and release it
        self.registry = registry
        self.models = models or [ALL_MODELS]  # canonical model names this worker serves
        self._last_beat = 0.0  # when the registry last heard from us (monotonic)
        self.task_id: str | None = None  # the task running now (its temp files are not swept)

    def run_forever(self, stop: threading.Event) -> None:
        log.info("worker %s started", self.worker_id)
        self._register()
        try:
            while not stop.is_set():
                try:
                    ran = self.run_once()
                except Exception:  # never let one bad claim kill the worker
                    log.exception("worker loop error")
                    ran = False
                if not ran:
                    if time.monotonic() - self._last_beat >= Keeper.REGISTRY_EVERY_S:  # not every idle poll
                        self._beat()
                    # PostgreSQL: woken by a create's NOTIFY; the poll stays the fallback (tasks/notify.py)
                    self.store.wait_for_work(self.poll_seconds, self.models, stop)
        finally:
            self.store.stop_waiting()
            if self.registry is not None:
                try:
                    self.registry.deregister(self.worker_id)
                except Exception:  # the database may be gone as the process stops
                    log.warning("worker %s: could not deregister", self.worker_id)

    def _register(self) -> None:
        if self.registry is not None:
            try:
                self.registry.register(self.worker_id, self.models)
            except Exception:
                log.exception("worker %s: could not register", self.worker_id)

    def _beat(self, **state: Any) -> None:
        """Tell the registry we are alive (re-registering if our row was pruned); never fatal."""
        if self.registry is None:
            return
        self._last_beat = time.monotonic()
        try:
            if not self.registry.beat(self.worker_id, **state):
                self.registry.register(self.worker_id, self.models)
        except Exception:
            log.warning("worker %s: registry beat failed", self.worker_id)

    def run_once(self) -> bool:
        claimed = self.store.claim(self.worker_id, self.models)  # only tasks of the models we serve
        if claimed is None:
            return False
        self.run_task(claimed)
        return True

    def run_task(self, claimed: Claimed) -> None:
        task_id, attempt = claimed.id, claimed.attempts
        self.task_id = task_id
        log.info("task %s: attempt %d on %s", task_id, attempt, self.worker_id)
        keeper = Keeper(self.store, task_id, self.worker_id, self.heartbeat_s, self.hand_back,
                        on_beat=lambda: self._beat(state="busy", task_id=task_id, set_task=True),
                        max_run_s=self.max_run_seconds)
        model = str(claimed.request.get("model", ""))  # the canonical name: bounded metric labels
        TASK_QUEUE_SECONDS.labels(model).observe(claimed.queued_ms / 1000)
        keeper.steps = StepTimer(model)
        keeper.start()
        outcome = "failed"  # the run-time metric's label, set as the attempt ends
        try:
            req = GenerationRequest.model_validate(claimed.request)
            facts = self.pipeline(task_id, claimed.account_id, req, keeper, attempt=attempt)
            keeper.check_ours()
            if self.store.succeed(task_id, self.worker_id, facts):  # publishes this attempt's file
                outcome = "succeeded"
                log.info("task %s: SUCCEEDED", task_id)
            else:  # canceled or taken over at the last moment: remove our file, never the new owner's
                outcome = "lost"
                self.pipeline.discard(task_id, attempt)
        except TaskCanceled:
            outcome = "canceled"
            log.info("task %s: canceled while running", task_id)
            self.pipeline.discard(task_id, attempt)
        except RunCapReached:  # the keeper recorded the failure (InternalError.Timeout)
            outcome = "failed"
            log.info("task %s: stopped at the run cap; its partial result is discarded", task_id)
            self.pipeline.discard(task_id, attempt)
        except LeaseLost:
            outcome = "lost"
            log.warning("task %s: lease lost; another worker owns it now", task_id)
            self.pipeline.discard(task_id, attempt)
        except ShuttingDown:
            outcome = "handed_back"
            # discard first: once released, the next claim runs under the same attempt number
            self.pipeline.discard(task_id, attempt)
            if self.store.release(task_id, self.worker_id):
                log.info("task %s: handed back as the worker shuts down (attempt %d not counted)",
                         task_id, attempt)
            else:
                log.info("task %s: not ours any more (canceled or taken over); nothing to hand back", task_id)
        except Exception as exc:  # noqa: BLE001 - any failure must end the task FAILED, not the worker
            self.record_failure(task_id, exc)
        finally:
            self.task_id = None
            keeper.done.set()
            TASK_RUN_SECONDS.labels(model, outcome).observe(time.monotonic() - keeper.started_at)
            self._beat(state="idle", task_id=None, set_task=True)

    def record_failure(self, task_id: str, exc: Exception) -> None:
        if isinstance(exc, ServiceError):
            error = exc
        elif isinstance(exc, MemoryError):
            error = out_of_memory()
        else:
            log.error("task %s: internal error\n%s", task_id, traceback.format_exc())
            error = algo_failure(f"{type(exc).__name__}.")
        log.info("task %s: FAILED %s %s", task_id, error.code, error.message)
        if not self.store.fail(task_id, self.worker_id, error.code, error.message):
            log.info("task %s: not ours any more (canceled or taken over); its failure is not recorded",
                     task_id)


class WorkerPool:
    """A process's worker threads, and how they stop: `stop` set, each finishes its task and exits;
    `shutdown()` bounds that by a grace period and hands back what is still running."""

    def __init__(self, workers: list[Worker], threads: list[threading.Thread], stop: threading.Event,
                 hand_back: threading.Event, guard: ThreadGuard | None = None) -> None:
        self.workers, self.threads, self.stop, self.hand_back = workers, threads, stop, hand_back
        self.guard = guard or ThreadGuard(stop)  # restarts a thread that dies (worker/supervise.py)
        self._hurry = threading.Event()

    @property
    def failed(self) -> bool:
        """Whether the worker threads kept dying and the pool gave up (the process should exit non-zero)."""
        return self.guard.fatal is not None

    def alive(self) -> bool:
        return any(t.is_alive() for t in self.threads)

    def hurry(self) -> None:
        """End the grace period now (e.g. a second signal): running tasks are handed back at once."""
        self._hurry.set()

    def shutdown(self, grace_seconds: float, *, stop_seconds: float = 10.0) -> bool:
        """Stop claiming; let running tasks finish for up to `grace_seconds` (less if `hurry()`); then
        stop the rest at their next progress report or check and release them (PENDING again, the
        attempt not counted), waiting up to `stop_seconds` for that. True if every worker stopped; a
        worker stuck past that keeps its lease, which runs out as if the process had died."""
        self.stop.set()
        self._join(time.monotonic() + grace_seconds, until=self._hurry)
        if self.alive():
            log.info("shutting down: handing back the tasks still running")
            self.hand_back.set()
            self._join(time.monotonic() + stop_seconds)
        return not self.alive()

    def _join(self, deadline: float, until: threading.Event | None = None) -> None:
        while self.alive() and time.monotonic() < deadline and not (until is not None and until.is_set()):
            for t in self.threads:
                t.join(min(0.05, max(0.0, deadline - time.monotonic())))


def run_workers(services: Services, engines: EngineSet, count: int, stop: threading.Event, *,
                pipeline: Any = None, on_fatal: Any = None) -> WorkerPool:
    """Start `count` worker threads on one shared pipeline; they stop claiming when `stop` is set, and
    `shutdown()` on the pool returned stops them within a grace period. `pipeline`: instead of
    services.pipeline(engines), e.g. a multi-GPU worker's rank 0 LeaderPipeline (worker.distributed).
    A thread that dies is restarted; if they keep dying, `stop` is set and `on_fatal(why)` called
    (worker/supervise.py); meanwhile /readyz fails (services.local_workers)."""
    pipeline = pipeline if pipeline is not None else services.pipeline(engines)
    s = services.settings
    models = engines.served_models(s.worker_models)  # refused (EngineConfigError) unless configured
    hand_back = threading.Event()
    guard = ThreadGuard(stop, on_fatal)
    if count:
        services.local_workers.append(guard.problem)  # /readyz asks it (api/ops.py)
    workers: list[Worker] = []
    threads = []
    # this process's own data folder (the API's sweeper never sees a worker's own): a killed
    # predecessor's temp files now, then every sweep_seconds, sparing the tasks running here
    try:
        services.sweep_temp_files()
    except Exception:
        log.exception("temp file sweep failed")
    threading.Thread(target=services.run_temp_sweeper, daemon=True, name="temp-sweeper",
                     args=(stop, lambda: {w.task_id for w in workers if w.task_id})).start()
    for i in range(count):
        worker = Worker(services.store, pipeline, lease_seconds=s.lease_seconds, poll_seconds=s.poll_seconds,
                        hand_back=hand_back, registry=services.workers, models=models,
                        max_run_seconds=s.max_run_seconds)
        t = threading.Thread(target=guard.run, args=(worker.run_forever, f"worker-{i}"), daemon=True,
                             name=f"worker-{i}")
        t.start()
        workers.append(worker)
        threads.append(t)
    return WorkerPool(workers, threads, stop, hand_back, guard)
