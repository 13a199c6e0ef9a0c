"""Worker threads that die are restarted, a few times; past that the process stops.

A worker thread's loop catches what one task or claim raises, so a thread ends only for a fault of its own
(an exception outside the loop's guard, a bug). `ThreadGuard.run` is each worker thread's target: it runs the
loop again after RESTART_DELAY_S, and while it waits the pool is unhealthy, so `/readyz` fails its workers
check (api/ops.py asks `problem()` through `Services.local_workers`). When the pool's threads have died more
than MAX_RESTARTS times within WINDOW_S it gives up: it sets `stop` (the other workers stop claiming) and
calls `on_fatal`, which stops the process (`serve` ends its HTTP server and exits 1): never a server that
accepts work nobody runs.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger("wanserve.worker")


class ThreadGuard:
    RESTART_DELAY_S = 1.0
    MAX_RESTARTS = 3
    WINDOW_S = 600.0

    def __init__(self, stop: threading.Event, on_fatal: Callable[[str], None] | None = None) -> None:
        self.stop, self.on_fatal = stop, on_fatal
        self.fatal: str | None = None  # set once the guard gave up: why, with details
        self._down: dict[str, str] = {}  # thread name -> why it died, until it is running again
        self._deaths: list[float] = []
        self._lock = threading.Lock()

    def run(self, loop: Callable[[threading.Event], None], name: str) -> None:
        """Run `loop(stop)` until it returns (stop set); restart it when it raises, within the budget."""
        while True:
            try:
                loop(self.stop)
                return
            except BaseException as exc:  # noqa: BLE001 - whatever ended the thread, say so and restart
                why = _why(exc)
                log.error("worker thread %s stopped: %s", name, why, exc_info=exc)
            if self.stop.is_set():  # the process is stopping anyway: nothing to restart or give up
                return
            now = time.monotonic()
            with self._lock:
                self._down[name] = why
                self._deaths = [t for t in self._deaths if now - t < self.WINDOW_S] + [now]
                if len(self._deaths) > self.MAX_RESTARTS and self.fatal is None:
                    self.fatal = (f"worker threads stopped {len(self._deaths)} times in "
                                  f"{self.WINDOW_S:g} s, the last {name}: {why}")
                fatal = self.fatal
            if fatal is not None:
                log.critical("%s; stopping the process", fatal)
                self.stop.set()
                if self.on_fatal is not None:
                    self.on_fatal(fatal)
                return
            if self.stop.wait(self.RESTART_DELAY_S):
                return
            log.warning("worker thread %s: restarting", name)
            with self._lock:
                self._down.pop(name, None)

    def problem(self, details: bool = False) -> str | None:
        """Why the pool is not fit to take work (a worker thread down, or given up), else None; the
        exception's text only with `details` (it may name hosts, paths, buckets)."""
        with self._lock:
            if self.fatal is not None:
                return f"{self.fatal if details else 'worker threads kept stopping'}; the process is stopping"
            if not self._down:
                return None
            name, why = next(iter(self._down.items()))
        return f"worker thread {name} stopped{f' ({why})' if details else ''}; restarting it"


def _why(exc: BaseException) -> str:
    first = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
    return f"{type(exc).__name__}: {first}"[:300] if first else type(exc).__name__
