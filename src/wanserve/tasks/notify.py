"""Waking idle workers without polling (PostgreSQL): create() and release() send `NOTIFY wanserve_tasks`
with the task's routing model in the transaction that queues it (delivered at commit, dropped on
rollback), and each idle worker thread waits on its own LISTEN connection instead of sleeping. Polling
stays, as the fallback (a lost lease sends nothing; a LISTEN connection may drop) and on SQLite, which
has no notifications: there a wait is a plain sleep.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Collection

from sqlalchemy import Connection, Engine, func, select

CHANNEL = "wanserve_tasks"
# an idle wait looks at its stop event this often, so a worker told to stop exits about as fast as before
STOP_CHECK_SECONDS = 0.1
# after a wake, what is already queued on the connection is read (and dropped) within this
DRAIN_SECONDS = 0.001

log = logging.getLogger("wanserve.tasks.notify")


def announce(conn: Connection, route_model: str) -> None:
    """Tell listening workers (at this transaction's commit) that a task of `route_model` is queued."""
    if conn.dialect.name == "postgresql":
        conn.execute(select(func.pg_notify(CHANNEL, route_model)))


def _sleep(seconds: float, stop: threading.Event | None) -> None:
    if stop is not None:
        stop.wait(seconds)
    elif seconds > 0:
        time.sleep(seconds)


class Listener:
    """One LISTEN connection (psycopg, autocommit); used by one thread at a time."""

    def __init__(self, conninfo: str) -> None:
        import psycopg  # the `postgres` extra; only a PostgreSQL store gets here

        self.conn = psycopg.connect(conninfo, autocommit=True)
        self.conn.execute(f"LISTEN {CHANNEL}")

    def wait(self, timeout: float, served: Collection[str] | None, stop: threading.Event | None) -> bool:
        """Until a notification for a served model (True), `stop`, or `timeout` (False). Everything
        already queued on the connection is drained at a wake, so a burst of creates wakes us once."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0 and not (stop is not None and stop.is_set()):
            notes = list(self.conn.notifies(timeout=min(left, STOP_CHECK_SECONDS), stop_after=1))
            if any(served is None or note.payload in served for note in notes):
                # (not from inside notifies(): its generator holds the connection's lock until closed)
                list(self.conn.notifies(timeout=DRAIN_SECONDS))
                return True
        return False

    def close(self) -> None:
        self.conn.close()


class Waiters:
    """Each thread's Listener, opened at its first wait; on SQLite (or when a LISTEN connection cannot
    be had) a wait sleeps, which is the poll the notification replaces."""

    def __init__(self, engine: Engine) -> None:
        self.conninfo = (engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
                         if engine.dialect.name == "postgresql" else None)
        self._local = threading.local()
        self._errors: tuple[type[Exception], ...] = ()
        if self.conninfo is not None:
            import psycopg

            self._errors = (psycopg.Error,)

    def wait(self, timeout: float, served: Collection[str] | None, stop: threading.Event | None) -> bool:
        listener = self._listener()
        if listener is None:
            _sleep(timeout, stop)
            return False
        started = time.monotonic()
        try:
            return listener.wait(timeout, served, stop)
        except self._errors:  # the connection dropped: poll this time, reconnect at the next wait
            log.warning("LISTEN connection lost; polling until it is back")
            self.close_thread()
            _sleep(timeout - (time.monotonic() - started), stop)
            return False

    def _listener(self) -> Listener | None:
        if self.conninfo is None:
            return None
        listener = getattr(self._local, "listener", None)
        if listener is None:
            try:
                listener = self._local.listener = Listener(self.conninfo)
            except self._errors:
                log.warning("could not LISTEN for new tasks; polling instead", exc_info=True)
                return None
        return listener

    def close_thread(self) -> None:
        """Close the calling thread's LISTEN connection (a worker thread as it stops)."""
        listener = getattr(self._local, "listener", None)
        self._local.listener = None
        if listener is not None:
            try:
                listener.close()
            except self._errors:
                pass
