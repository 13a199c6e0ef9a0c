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


def open_engine(url: str) -> Engine:
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
    return create_engine(url, pool_pre_ping=True)


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
