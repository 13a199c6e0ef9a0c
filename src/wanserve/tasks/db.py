"""Opening the database, its two kinds of transaction, and bringing its schema up to date (Alembic,
run in-process).

Transactions: `read(engine)` for statements that only read, `write(engine)` (or plain
`engine.begin()`) for anything that writes. On SQLite a write transaction takes the write lock at
BEGIN (BEGIN IMMEDIATE); a read transaction is a deferred BEGIN that, in WAL mode, reads a snapshot
and never waits for a writer, so authentication and task polls are not queued behind the workers'
heartbeats. On PostgreSQL both are ordinary transactions.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.resources import files

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, create_engine, event

# A connection execution option: set (by `read`) when a transaction will only read.
READ_ONLY = "wanserve_read_only"


def now_ms() -> int:
    return int(time.time() * 1000)


def idle_transaction_seconds(lease_seconds: float) -> float:
    """How long PostgreSQL lets a session sit idle inside a transaction before it ends the session (and
    its locks): half a lease, between 1 and 10 s. Every transaction here is a few statements long, so
    only a process that stopped mid-transaction (SIGSTOP, a debugger, a frozen VM) gets there, and
    then its row locks must not outlive its lease: a claim skips locked rows (SKIP LOCKED), so a task
    whose worker was stopped inside a heartbeat would otherwise never be taken over."""
    return max(1.0, min(10.0, lease_seconds / 2))


def open_engine(url: str, *, idle_transaction_s: float = 10.0) -> Engine:
    """An engine on `url`. PostgreSQL: sessions idle in a transaction for `idle_transaction_s` are ended
    by the server (`idle_in_transaction_session_timeout`; see idle_transaction_seconds). SQLite has no
    such guard: a process stopped while it holds the write lock holds up every writer until it goes on."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # WAL: readers never block the writer
            dbapi_conn.isolation_level = None  # let SQLAlchemy's "begin" event below own BEGIN
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn):
            if conn.get_execution_options().get(READ_ONLY):
                conn.exec_driver_sql("BEGIN")  # deferred: a WAL snapshot, no lock to wait for
            else:
                # Writes take the write lock at BEGIN: transactions are a statement or two long, and
                # this way two processes never deadlock upgrading a read lock (or fail with
                # SQLITE_BUSY_SNAPSHOT), and migrations serialise.
                conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    idle_ms = max(1, round(idle_transaction_s * 1000))
    return create_engine(url, pool_pre_ping=True,
                         connect_args={"options": f"-c idle_in_transaction_session_timeout={idle_ms}"})


@contextmanager
def read(engine: Engine) -> Iterator[Connection]:
    """A transaction that only reads (never takes SQLite's write lock); a write in it is a bug, and
    on SQLite may fail with "database is locked" instead of waiting."""
    with engine.connect() as conn:
        conn = conn.execution_options(**{READ_ONLY: True})
        with conn.begin():
            yield conn


@contextmanager
def write(engine: Engine) -> Iterator[Connection]:
    """A transaction that writes (on SQLite: BEGIN IMMEDIATE, waiting up to the busy timeout)."""
    with engine.begin() as conn:
        yield conn


def migrate(engine: Engine) -> None:
    cfg = Config()
    cfg.set_main_option("script_location", str(files("wanserve.tasks") / "migrations"))
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":  # several processes may start at once
            conn.exec_driver_sql("SELECT pg_advisory_xact_lock(774411)")
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
