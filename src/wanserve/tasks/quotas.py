"""Create-side quotas (`[quotas]`): how fast an account (or one of its keys, or one model of it) may
create tasks, and how many may wait PENDING. Absent `[quotas]`: no limits.

Both are counted from the task table, so every API process sharing the database sees the same numbers
and nothing new is stored:

- `rate_per_second` is a token bucket written as a sliding window: at most `burst` creates (one second's
  worth, at least 1) in any `burst / rate` seconds, read as the scope's newest submit times. A refused
  create is not counted; `Retry-After` is when the oldest of those leaves the window.
- `max_queued`: the scope's PENDING tasks; a create beyond that many is refused.

The check and the insert run under one lock per account in this process, so concurrent creates of an
account in one API process never slip past a limit together; several API processes may each let one
through at the same moment (at most one extra create per process).

`running()` counts an account's RUNNING tasks, for the reason a PENDING task waits (the running limits
themselves are the claim's, tasks/store.py).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import ColumnElement, Engine, func, select

from ..catalog.models import canonical_name, find_model
from ..config import QuotaLimits, QuotaSettings
from ..errors import allocation_quota, rate_quota
from .db import now_ms, read
from .schema import tasks
from .states import TaskStatus

T = TypeVar("T")


@dataclass(frozen=True)
class Scope:
    """One set of limits and the tasks they count; `who` and `what` name them in a refusal's message."""

    who: str  # "The account", "The API key <id>"
    limits: QuotaLimits
    where: tuple[ColumnElement[bool], ...]
    what: str = "tasks"  # "tasks", "<model> tasks"


def spellings(model: str) -> list[str]:
    """A model's canonical name and its aliases: the task table keeps the model as the caller spelled it."""
    spec = find_model(model)
    return [model] if spec is None else [spec.name, *spec.aliases]


class CreateQuotas:
    def __init__(self, engine: Engine, settings: QuotaSettings | None) -> None:
        self.engine, self.settings = engine, settings
        self._locks: dict[str, threading.Lock] = {}
        self._locks_lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.settings is not None

    def check(self, account_id: str, api_key_id: str, model: str) -> None:
        """Raise QuotaExceeded (Throttling.RateQuota with a retry time, or Throttling.AllocationQuota) if a
        create by this key of `model` (canonical) would go past a limit now; a read, nothing is counted."""
        for scope in self.scopes(account_id, api_key_id, model):
            self._check_rate(scope)
            self._check_queue(scope)

    def admit(self, account_id: str, api_key_id: str, model: str, create: Callable[[], T]) -> T:
        """`create()` if the quotas allow it now (else QuotaExceeded and nothing is created), checked and
        created under the account's lock in this process."""
        if not self.enabled:
            return create()
        with self._lock(account_id):
            self.check(account_id, api_key_id, model)
            return create()

    def scopes(self, account_id: str, api_key_id: str, model: str) -> list[Scope]:
        """The limits a create answers to: the account's, its key's (`[quotas.keys."id"]`) and the
        account's for the model (`[quotas.models."name"]`), each with the tasks it counts."""
        q = self.settings
        if q is None:
            return []
        account = (tasks.c.account_id == account_id,)
        scopes = [Scope("The account", q.for_account(account_id), account)]
        if api_key_id in q.keys:
            scopes.append(Scope(f"The API key {api_key_id}", q.keys[api_key_id],
                                (*account, tasks.c.api_key_id == api_key_id)))
        limits = model_limits(q, model)
        if limits is not None:
            scopes.append(Scope("The account", limits, (*account, tasks.c.model.in_(spellings(model))),
                                what=f"{model} tasks"))
        return scopes

    def running(self, account_id: str, model: str | None = None) -> int:
        """The account's RUNNING tasks (of `model`, canonical, if given)."""
        where: list[Any] = [tasks.c.account_id == account_id, tasks.c.status == TaskStatus.RUNNING.value]
        if model is not None:
            where.append(tasks.c.model.in_(spellings(model)))
        with read(self.engine) as conn:
            return int(conn.execute(select(func.count()).select_from(tasks).where(*where)).scalar_one())

    def queued_reason(self, account_id: str, model: str) -> str | None:
        """Why a PENDING task of the account waits although a worker serves it: the account (or the account
        for the model, canonical) runs as many tasks as its running limit allows. None: no limit reached."""
        q = self.settings
        if q is None:
            return None
        limit = q.running_limit(account_id)
        if limit and (running := self.running(account_id)) >= limit:
            return f"queued: the account runs {running} tasks, its limit."
        per_model = model_limits(q, model)
        if per_model is not None and per_model.max_running:
            if (running := self.running(account_id, model)) >= per_model.max_running:
                return f"queued: the account runs {running} {model} tasks, its limit for the model."
        return None

    def _check_rate(self, scope: Scope) -> None:
        rate = scope.limits.rate_per_second
        if not rate:
            return
        burst = max(1, math.floor(rate))  # one second's worth, at least 1
        window_ms = burst / rate * 1000
        now = now_ms()
        newest = (select(tasks.c.submit_ms).where(*scope.where, tasks.c.submit_ms > now - window_ms)
                  .order_by(tasks.c.submit_ms.desc()).limit(burst))
        with read(self.engine) as conn:
            recent = list(conn.execute(newest).scalars())
        if len(recent) >= burst:
            raise rate_quota((recent[-1] + window_ms - now) / 1000)

    def _check_queue(self, scope: Scope) -> None:
        limit = scope.limits.max_queued
        if not limit:
            return
        query = (select(func.count()).select_from(tasks)
                 .where(*scope.where, tasks.c.status == TaskStatus.PENDING.value))
        with read(self.engine) as conn:
            pending = int(conn.execute(query).scalar_one())
        if pending >= limit:
            raise allocation_quota(f"{scope.who} has {pending} {scope.what} PENDING, its limit (max_queued); "
                                   "wait for some to start, or cancel some.")

    def _lock(self, account_id: str) -> threading.Lock:
        with self._locks_lock:
            return self._locks.setdefault(account_id, threading.Lock())


def model_limits(settings: QuotaSettings, model: str) -> QuotaLimits | None:
    """The `[quotas.models."..."]` table of `model` (canonical), written under its name or an alias."""
    for name, limits in settings.models.items():
        if canonical_name(name) == model:
            return limits
    return None
