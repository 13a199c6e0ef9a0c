"""Expiry: tasks and their videos live 24 h after they end, uploads 48 h (contract section 7)."""

from __future__ import annotations

import logging
import threading

from sqlalchemy import delete

from ..services import Services
from .db import now_ms
from .schema import uploads

log = logging.getLogger("wanserve.sweeper")


def sweep(services: Services) -> tuple[int, int]:
    """Remove expired tasks with their result files, and expired uploads; returns the counts."""
    s = services.settings
    task_ids = services.store.expire(now_ms() - s.task_ttl_seconds * 1000)
    for task_id in task_ids:
        services.storage.remove_result(task_id)
    with services.db.begin() as conn:
        keys = list(conn.execute(delete(uploads).where(uploads.c.created_ms < now_ms() - s.upload_ttl_seconds * 1000)
                                 .returning(uploads.c.key)).scalars())
    for key in keys:
        services.storage.remove_upload(key)
    if task_ids or keys:
        log.info("swept %d expired tasks and %d expired uploads", len(task_ids), len(keys))
    return len(task_ids), len(keys)


def run_sweeper(services: Services, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            sweep(services)
        except Exception:  # keep sweeping next time; a failed sweep loses nothing
            log.exception("sweep failed")
        stop.wait(services.settings.sweep_seconds)
