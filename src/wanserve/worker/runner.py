"""A worker: claim a task, keep its lease, run the generation pipeline, record the outcome.

While a task runs, a keeper thread renews its lease every `heartbeat_s` and writes the latest
progress. When the renewal matches no row the task was canceled (or, after a long stall, taken
over by another worker): the keeper raises a flag, and the pipeline's next progress report or
check raises TaskCanceled / LeaseLost, so a running task stops within about a quarter second.
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
from ..errors import LeaseLost, ServiceError, TaskCanceled, algo_failure, out_of_memory
from ..generation.pipeline import GenerationPipeline
from ..generation.request import GenerationRequest
from ..services import Services
from ..tasks.states import TaskStatus
from ..tasks.store import Claimed, TaskStore

log = logging.getLogger("wanserve.worker")


def new_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class Keeper(threading.Thread):
    """Renews one task's lease and publishes its progress until stopped; the pipeline's TaskContext."""

    def __init__(self, store: TaskStore, task_id: str, worker_id: str, interval: float) -> None:
        super().__init__(daemon=True, name=f"keeper-{task_id[:8]}")
        self.store, self.task_id, self.worker_id, self.interval = store, task_id, worker_id, interval
        self.latest: dict[str, Any] | None = None
        self.lost: type[Exception] | None = None
        self.done = threading.Event()
        self.started_at = time.monotonic()

    def run(self) -> None:
        while not self.done.wait(self.interval) and self.beat():
            pass

    def beat(self) -> bool:
        try:
            if self.store.heartbeat(self.task_id, self.worker_id, self.latest):
                return True
        except Exception:  # a database hiccup: keep the task, try again next beat
            log.exception("heartbeat failed for %s", self.task_id)
            return True
        self.lost = TaskCanceled if self.store.status(self.task_id) == TaskStatus.CANCELED else LeaseLost
        return False

    def check(self) -> None:
        if self.lost is not None:
            raise self.lost(self.task_id)

    def progress(self, done: int, total: int) -> None:
        self.check()
        elapsed = time.monotonic() - self.started_at
        eta = elapsed / done * (total - done) if done else None
        self.latest = {"done": done, "total": total, "percent": round(100 * done / max(total, 1), 1),
                       "eta_seconds": None if eta is None else round(eta, 1)}


class Worker:
    def __init__(self, store: TaskStore, pipeline: GenerationPipeline, *, lease_seconds: float,
                 poll_seconds: float, worker_id: str | None = None) -> None:
        self.store, self.pipeline, self.poll_seconds = store, pipeline, poll_seconds
        self.worker_id = worker_id or new_worker_id()
        self.heartbeat_s = min(0.25, lease_seconds / 3)

    def run_forever(self, stop: threading.Event) -> None:
        log.info("worker %s started", self.worker_id)
        while not stop.is_set():
            try:
                ran = self.run_once()
            except Exception:  # never let one bad claim kill the worker
                log.exception("worker loop error")
                ran = False
            if not ran:
                stop.wait(self.poll_seconds)

    def run_once(self) -> bool:
        claimed = self.store.claim(self.worker_id)
        if claimed is None:
            return False
        self.run_task(claimed)
        return True

    def run_task(self, claimed: Claimed) -> None:
        task_id = claimed.id
        log.info("task %s: attempt %d on %s", task_id, claimed.attempts, self.worker_id)
        keeper = Keeper(self.store, task_id, self.worker_id, self.heartbeat_s)
        keeper.start()
        try:
            req = GenerationRequest.model_validate(claimed.request)
            facts = self.pipeline(task_id, claimed.account_id, req, keeper)
            keeper.check()
            if self.store.succeed(task_id, self.worker_id, facts):
                log.info("task %s: SUCCEEDED", task_id)
            else:  # canceled or taken over at the last moment
                self.pipeline.discard(task_id)
        except TaskCanceled:
            log.info("task %s: canceled while running", task_id)
            self.pipeline.discard(task_id)
        except LeaseLost:
            log.warning("task %s: lease lost; another worker owns it now", task_id)
        except Exception as exc:  # noqa: BLE001 - any failure must end the task FAILED, not the worker
            self.record_failure(task_id, exc)
        finally:
            keeper.done.set()

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


def run_workers(services: Services, engines: EngineSet, count: int,
                stop: threading.Event) -> list[threading.Thread]:
    """Start `count` worker threads on one shared pipeline; they stop when `stop` is set."""
    pipeline = services.pipeline(engines)
    s = services.settings
    threads = []
    for i in range(count):
        worker = Worker(services.store, pipeline, lease_seconds=s.lease_seconds, poll_seconds=s.poll_seconds)
        t = threading.Thread(target=worker.run_forever, args=(stop,), daemon=True, name=f"worker-{i}")
        t.start()
        threads.append(t)
    return threads
