"""What wanserve tells Prometheus (docs/deploy.md, Monitoring).

Two kinds of metric, kept apart on purpose:

- observed in this process (histograms: time in queue, run time, seconds per denoising step, engine load
  time, HTTP latency) live in `REGISTRY`, a registry of our own rather than prometheus_client's global one, so
  that nothing another library registers globally ends up on our page, and so tests may run several
  servers in one process (the histograms are the process's, whichever server observed them);
- read from the database at scrape time (tasks by model and status, queue depth, live workers) come from a
  `StateCollector`, built per app on that app's own database (`registry_for`), so two apps in one process
  never report each other's tasks. It is given plain functions, not the task store: this module is the
  bottom layer (stdlib and prometheus_client only) so that every layer may observe into it.

A separate `wanserve worker` process serves `REGISTRY` with `serve_process_metrics` (`--metrics-port`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily, Metric

log = logging.getLogger("wanserve.metrics")

REGISTRY = CollectorRegistry()
ProcessCollector(registry=REGISTRY)  # CPU, memory and open files of this process (Linux)
PlatformCollector(registry=REGISTRY)
GCCollector(registry=REGISTRY)

# a task waits from seconds (an idle worker) to hours (a deep queue); a run takes seconds (preview) to hours
_LONG = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 10800)

TASK_QUEUE_SECONDS = Histogram(
    "wanserve_task_queue_seconds", "Time from a task's submission to the claim that starts an attempt.",
    ["model"], buckets=_LONG, registry=REGISTRY)
TASK_RUN_SECONDS = Histogram(
    "wanserve_task_run_seconds", "Time one attempt ran on a worker, from its claim to its outcome.",
    ["model", "outcome"], buckets=_LONG, registry=REGISTRY)
STEP_SECONDS = Histogram(
    "wanserve_step_seconds", "Seconds per step of a running task's progress (a denoising step of the wan "
    "engine, a few frames of the preview), averaged over each progress report.",
    ["model"], buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 40, 80), registry=REGISTRY)
ENGINE_LOAD_SECONDS = Histogram(
    "wanserve_engine_load_seconds", "Time to load an engine's models (checkpoints) as a process starts.",
    ["engine"], buckets=(0.01, 0.1, 1, 5, 15, 30, 60, 120, 300, 600), registry=REGISTRY)
HTTP_REQUEST_SECONDS = Histogram(
    "wanserve_http_request_duration_seconds", "HTTP request latency, first byte in to last byte out, by the "
    "route's path template (not the raw path: task ids would make a series each).",
    ["method", "route", "status"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30), registry=REGISTRY)


class StepTimer:
    """Turns a task's progress reports (done, total) into STEP_SECONDS observations: the time since the
    previous report divided by the steps it advanced. A report that starts a new count (a different total,
    or fewer done: the prompt rewrite's 0/1, then the engine's steps) only sets the baseline, so the
    set-up before the first step is never counted as a step."""

    def __init__(self, model: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.model, self._clock = model, clock
        self._last: tuple[int, int, float] | None = None  # (done, total, when)

    def report(self, done: int, total: int) -> None:
        now, last = self._clock(), self._last
        self._last = (done, total, now)
        if last is not None and last[1] == total and done > last[0]:
            STEP_SECONDS.labels(self.model).observe((now - last[2]) / (done - last[0]))


# ------------------------------------------------------------------------------------- read at scrape time


Counts = Mapping[tuple[str, str], int]  # (model, status) -> tasks


class StateCollector:
    """The database's view, read at each scrape: `task_counts()` gives {(model, status): n}, `workers()`
    the registry's rows (dicts with id, host, last_seen_ms) and `live_workers()` those still beating. A
    database that cannot be read makes `wanserve_database_up` 0 rather than failing the scrape."""

    def __init__(self, task_counts: Callable[[], Counts], workers: Callable[[], list[dict[str, Any]]],
                 live_workers: Callable[[], list[dict[str, Any]]], pending: str = "PENDING") -> None:
        self.task_counts, self.workers, self.live_workers, self.pending = \
            task_counts, workers, live_workers, pending

    def describe(self) -> Iterable[Metric]:
        return []  # the series depend on the data; nothing to check for duplicates at registration

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("wanserve_database_up", "1 if the last scrape could read the database.")
        try:
            counts, rows, live = self.task_counts(), self.workers(), self.live_workers()
        except Exception as exc:  # noqa: BLE001 - a scrape must answer even when the database does not
            log.warning("metrics: cannot read the database: %s", type(exc).__name__)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        tasks = GaugeMetricFamily("wanserve_tasks", "Tasks in the database by model and status (tasks are "
                                  "removed task_ttl_seconds after they end).", labels=["model", "status"])
        queued: dict[str, int] = {}
        for (model, status), n in sorted(counts.items()):
            tasks.add_metric([model, status], n)
            if status == self.pending:
                queued[model] = queued.get(model, 0) + n
        yield tasks
        yield GaugeMetricFamily("wanserve_queue_depth", "Tasks waiting for a worker (PENDING).",
                                value=sum(queued.values()))
        by_model = GaugeMetricFamily("wanserve_queue_depth_by_model", "PENDING tasks per model.",
                                     labels=["model"])
        for model, n in sorted(queued.items()):
            by_model.add_metric([model], n)
        yield by_model
        yield GaugeMetricFamily("wanserve_workers_live", "Workers whose last beat is recent (the registry's "
                                "live_seconds).", value=len(live))
        seen = GaugeMetricFamily("wanserve_worker_last_seen_seconds", "Seconds since each registered "
                                 "worker's last beat (a stopped one grows until the registry prunes it).",
                                 labels=["worker", "host"])
        now_ms = time.time() * 1000
        for row in rows:
            seen.add_metric([str(row["id"]), str(row.get("host", ""))],
                            max(0.0, (now_ms - row["last_seen_ms"]) / 1000))
        yield seen


class _Forward:
    """Puts another registry's metrics on a page (the process's REGISTRY beside an app's StateCollector)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def collect(self) -> Iterator[Metric]:
        return self.registry.collect()


def registry_for(state: StateCollector) -> CollectorRegistry:
    """One app's page: this process's observations and that app's database view."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Forward(REGISTRY))  # type: ignore[arg-type]  # a collector needs only collect()
    registry.register(state)  # type: ignore[arg-type]
    return registry


def serve_process_metrics(port: int, host: str = "127.0.0.1") -> None:
    """Serve REGISTRY on http://host:port/ from a background thread (a `wanserve worker` process)."""
    start_http_server(port, addr=host, registry=REGISTRY)
