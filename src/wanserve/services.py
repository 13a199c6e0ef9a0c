"""The shared handles one process needs (settings, database, task store, files), opened once."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine

from .config import Settings
from .storage.local import LocalStorage
from .tasks.db import migrate, open_engine
from .tasks.store import TaskStore


@dataclass
class Services:
    settings: Settings
    db: Engine
    store: TaskStore
    storage: LocalStorage

    @classmethod
    def open(cls, settings: Settings) -> Services:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        db = open_engine(settings.db_url)
        migrate(db)
        store = TaskStore(db, lease_seconds=settings.lease_seconds, max_attempts=settings.max_attempts)
        return cls(settings, db, store, LocalStorage(settings.data_dir, settings.secret()))

    def close(self) -> None:
        self.db.dispose()
