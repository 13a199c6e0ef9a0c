"""The worker registry: every worker process says who it is (host, pid, the models it serves, its GPUs),
beats while alive, and deregisters when it stops cleanly. A worker is live while its last beat is
younger than `live_seconds`; a SIGKILLed worker simply stops beating and drops out of `live()`, and
`prune()` deletes rows dead for long. `wanserve workers`, `/readyz`, the metrics and the routing reason
on a PENDING task all read it.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable
from typing import Any

from sqlalchemy import Engine, delete, insert, select, update

from .db import now_ms, read, write
from .schema import workers

ALL_MODELS = "*"
DEFAULT_LIVE_SECONDS = 15.0


class WorkerRegistry:
    def __init__(self, engine: Engine, *, live_seconds: float = DEFAULT_LIVE_SECONDS) -> None:
        self.engine = engine
        self.live_ms = int(live_seconds * 1000)

    def register(self, worker_id: str, models: Iterable[str], *, gpus: str = "") -> None:
        """Add (or refresh) this worker's row; `models` are canonical names, or ["*"] for every model."""
        now = now_ms()
        row = {"id": worker_id, "host": socket.gethostname(), "pid": os.getpid(),
               "models": sorted(set(models)), "gpus": gpus, "started_ms": now, "last_seen_ms": now,
               "state": "idle", "task_id": None}
        with write(self.engine) as conn:
            conn.execute(delete(workers).where(workers.c.id == worker_id))
            conn.execute(insert(workers).values(**row))

    def beat(self, worker_id: str, *, state: str | None = None, task_id: str | None = None,
             set_task: bool = False) -> bool:
        """Mark the worker seen now (and optionally its state / current task). False: its row is gone
        (pruned after a long stall): the caller registers again."""
        values: dict[str, Any] = {"last_seen_ms": now_ms()}
        if state is not None:
            values["state"] = state
        if set_task:
            values["task_id"] = task_id
        with write(self.engine) as conn:
            stmt = update(workers).where(workers.c.id == worker_id).values(**values)
            return conn.execute(stmt).rowcount == 1

    def deregister(self, worker_id: str) -> None:
        with write(self.engine) as conn:
            conn.execute(delete(workers).where(workers.c.id == worker_id))

    def live(self) -> list[dict[str, Any]]:
        """The live workers, oldest first."""
        query = (select(workers).where(workers.c.last_seen_ms >= now_ms() - self.live_ms)
                 .order_by(workers.c.started_ms, workers.c.id))
        with read(self.engine) as conn:
            return [dict(r) for r in conn.execute(query).mappings()]

    def all(self) -> list[dict[str, Any]]:
        with read(self.engine) as conn:
            return [dict(r) for r in conn.execute(select(workers).order_by(workers.c.started_ms)).mappings()]

    def serving(self, model: str) -> bool:
        """Whether a live worker serves `model` (a canonical name)."""
        return any(ALL_MODELS in w["models"] or model in w["models"] for w in self.live())

    def prune(self, older_than_seconds: float = 3600.0) -> int:
        """Delete rows of workers not seen for `older_than_seconds` (killed, never deregistered)."""
        cutoff = now_ms() - int(older_than_seconds * 1000)
        with write(self.engine) as conn:
            return conn.execute(delete(workers).where(workers.c.last_seen_ms < cutoff)).rowcount
