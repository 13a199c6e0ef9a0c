"""Expiry and clean-up: tasks and their videos live 24 h after they end, uploads 48 h (contract
section 7), and files nothing refers to any more (a killed worker's partial results, a result whose
task row is gone, the result files of an ended task's attempts other than the one it published) are
removed. Rows of worker processes not heard from for an hour (killed, never deregistered) leave the
worker registry too."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Collection
from dataclasses import dataclass

from ..tasks.states import TERMINAL, TaskStatus
from ..tasks.store import TaskStore
from ..tasks.workers import WorkerRegistry
from .base import Storage, published_attempt
from .uploads import UploadStore

log = logging.getLogger("wanserve.sweeper")


@dataclass(frozen=True)
class Swept:
    tasks: int
    uploads: int
    orphans: int


def sweep(store: TaskStore, uploads: UploadStore, storage: Storage,
          registry: WorkerRegistry | None = None) -> Swept:
    if registry is not None:
        registry.prune()
    task_ids = store.expire()
    for task_id in task_ids:
        storage.remove_result(task_id)
    keys = uploads.expire()
    orphans = sweep_orphans(store, storage)
    if task_ids or keys or orphans:
        log.info("swept %d expired tasks, %d expired uploads, %d orphaned files",
                 len(task_ids), len(keys), orphans)
    return Swept(len(task_ids), len(keys), orphans)


def sweep_orphans(store: TaskStore, storage: Storage) -> int:
    """Remove partial results of tasks no longer RUNNING (their worker died or gave up), result files
    whose task row no longer exists, and an ended task's result files other than the one its facts
    publish (attempts that finished encoding but lost the task). Ended is final, so a file kept or
    removed here cannot become the published one later; a running task's files are all kept."""
    partials = list(storage.partial_results())
    statuses = store.statuses({task_id for task_id, _ in partials})
    removed = 0
    for task_id, handle in partials:
        if statuses.get(task_id) != TaskStatus.RUNNING:
            storage.remove_partial(handle)
            removed += 1
    files = list(storage.result_files())
    outcomes = store.outcomes({task_id for task_id, _ in files})
    for task_id, attempt in files:
        outcome = outcomes.get(task_id)
        if outcome is not None:
            status, result = outcome
            if status not in TERMINAL:
                continue
            if status == TaskStatus.SUCCEEDED and result is not None and published_attempt(result) == attempt:
                continue
        storage.remove_attempt(task_id, attempt)
        removed += 1
    return removed


def sweep_temp_files(store: TaskStore, storage: Storage, busy: Collection[str] = ()) -> int:
    """A worker's sweep of its own data folder (`<data_dir>/partial/`), which the API's sweeper never sees
    when each worker has its own: remove the temp results and encoder `.part` files of tasks that are not
    RUNNING (a killed worker's leftovers, the attempts it lost). Files of the tasks in `busy` (the ones this
    process is running now) and of every RUNNING task (another process sharing the folder may be writing
    them) are kept; a file written after the listing is not looked at."""
    temps = [(task_id, handle) for task_id, handle in storage.temp_files() if task_id not in busy]
    if not temps:
        return 0
    statuses = store.statuses({task_id for task_id, _ in temps})
    removed = 0
    for task_id, handle in temps:
        if statuses.get(task_id) != TaskStatus.RUNNING and task_id not in busy:
            storage.remove_partial(handle)
            removed += 1
    if removed:
        log.info("swept %d temp files of tasks no longer running", removed)
    return removed


def run_temp_sweeper(store: TaskStore, storage: Storage, every_s: float, stop: threading.Event,
                     busy: Callable[[], Collection[str]]) -> None:
    """`sweep_temp_files` every `every_s` until `stop` (a worker process's own sweeper)."""
    while not stop.wait(every_s):
        try:
            sweep_temp_files(store, storage, busy())
        except Exception:  # next time; a failed sweep loses nothing
            log.exception("temp file sweep failed")


def run_sweeper(store: TaskStore, uploads: UploadStore, storage: Storage, every_s: float,
                stop: threading.Event, registry: WorkerRegistry | None = None) -> None:
    while not stop.is_set():
        try:
            sweep(store, uploads, storage, registry)
        except Exception:  # keep sweeping next time; a failed sweep loses nothing
            log.exception("sweep failed")
        stop.wait(every_s)
