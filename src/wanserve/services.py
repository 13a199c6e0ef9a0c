"""The shared handles one process needs (settings, database, task store, files), opened once, and
the generation pipeline built on them."""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

from sqlalchemy import Engine

from .config import Settings
from .engines import EngineSet
from .generation.pipeline import GenerationPipeline
from .generation.rewrite import Rewriter, open_rewriter
from .storage import open_storage
from .storage.base import Storage
from .storage.signing import Signer
from .storage.sweeper import Swept, run_sweeper, run_temp_sweeper, sweep, sweep_temp_files
from .storage.uploads import UploadStore
from .tasks.db import idle_transaction_seconds, migrate, open_engine
from .tasks.quotas import CreateQuotas
from .tasks.store import TaskStore
from .tasks.workers import WorkerRegistry


@dataclass
class Services:
    settings: Settings
    db: Engine
    store: TaskStore
    storage: Storage
    uploads: UploadStore
    workers: WorkerRegistry
    quotas: CreateQuotas = field(init=False)  # [quotas], checked at create (none when absent)
    _rewriter: list[Rewriter | None] = field(default_factory=list, repr=False)  # built once, at first use
    # this process's worker pools' health (worker/supervise.py): each says why it cannot take work, or None;
    # /readyz fails while one does (api/ops.py). Its argument: whether to include the exception's text
    local_workers: list[Callable[[bool], str | None]] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        self.quotas = CreateQuotas(self.db, self.settings.quotas)

    @classmethod
    def open(cls, settings: Settings) -> Services:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        db = open_engine(settings.db_url, idle_transaction_s=idle_transaction_seconds(settings.lease_seconds))
        migrate(db)
        store = TaskStore(db, lease_seconds=settings.lease_seconds, max_attempts=settings.max_attempts,
                          task_ttl_seconds=settings.task_ttl_seconds, quotas=settings.quotas)
        signer = Signer(settings.secret())
        storage = open_storage(settings.storage, settings.data_dir, signer, settings)
        uploads = UploadStore(db, storage, signer, ttl_seconds=settings.upload_ttl_seconds)
        return cls(settings, db, store, storage, uploads, WorkerRegistry(db))

    def pipeline(self, engines: EngineSet) -> GenerationPipeline:
        return GenerationPipeline(engines, self.storage, self.uploads,
                                  allow_private_urls=self.settings.allow_private_media_urls,
                                  rewriter=self.rewriter())

    def rewriter(self) -> Rewriter | None:
        """The prompt rewriter `[prompt_extend]` configures (None: none), built once per process."""
        if not self._rewriter:
            self._rewriter.append(open_rewriter(self.settings.prompt_extend))
        return self._rewriter[0]

    def sweep(self) -> Swept:
        return sweep(self.store, self.uploads, self.storage, self.workers)

    def run_sweeper(self, stop: threading.Event) -> None:
        run_sweeper(self.store, self.uploads, self.storage, self.settings.sweep_seconds, stop, self.workers)

    def sweep_temp_files(self, busy: Collection[str] = ()) -> int:
        """This process's own data folder: temp files of tasks not running (storage/sweeper.py)."""
        return sweep_temp_files(self.store, self.storage, busy)

    def run_temp_sweeper(self, stop: threading.Event, busy: Callable[[], Collection[str]]) -> None:
        run_temp_sweeper(self.store, self.storage, self.settings.sweep_seconds, stop, busy)

    def close(self) -> None:
        self.db.dispose()
