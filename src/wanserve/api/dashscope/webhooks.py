"""Webhooks (an extension, docs/webhooks.md): when a task ends, POST what GET /tasks/{id} would answer to
the URL the client named at create time (X-Wanserve-Callback-Url, or its key's default).

Create side: `callback_for()` picks and checks the URL with the media downloads' SSRF guard (refused as
InvalidParameter unless `allow_private_media_urls`); the task row stores it, due at once.

Delivery side: a `Deliverer` loop (one thread per `wanserve serve`, beside the sweeper, running its own
event loop) takes due ended tasks from the store's `WebhookQueue` round-robin by account, as slots free up
(`webhook_max_in_flight`, at most `webhook_max_in_flight_per_account` of them for one account; one guarded
UPDATE each, so deliverers in several processes never both send), gives each attempt
`webhook_timeout_seconds` in all, re-checks the address at send time (DNS may have changed; the connection
is pinned to the checked address, no redirects followed), signs the body as Stripe does and logs every
attempt. A 2xx ends it; anything else is retried after 1, 2, 4, ... s (`webhook_backoff_seconds`, capped
at 300 s) until `webhook_retry_seconds` after the task ended, then given up with a log line.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Annotated, Any

import httpx
from fastapi import Header

from ...accounts.callbacks import webhook_secret
from ...accounts.keys import Caller
from ...errors import ServiceError, invalid_parameter
from ...media.fetch import checked_http_url
from ...services import Services
from ...tasks.db import now_ms
from ...tasks.webhooks import Due, WebhookQueue
from ..deps import allowed_hosts
from .views import query_body

log = logging.getLogger("wanserve.webhooks")

CALLBACK_HEADER = "X-Wanserve-Callback-Url"
CallbackHeader = Annotated[
    str | None,
    Header(alias=CALLBACK_HEADER,
           description="Extension: an http(s) URL to POST the task's final state to when it ends (the body "
                       "GET /tasks/{task_id} answers, signed with X-Wanserve-Signature; docs/webhooks.md). "
                       "Default: the API key's callback URL (`wanserve keys callback`), if any."),
]
_PRIVATE_HINT = ("such callback URLs are refused. Use a public URL or, for private deployments, set "
                 "WANSERVE_ALLOW_PRIVATE_MEDIA_URLS=1 or allow_private_media_urls = true in the config file.")

LEASE_MARGIN_S = 60.0  # a taken delivery's lease: the attempt timeout plus this
BACKOFF_CAP_S = 300.0


def callback_for(header: str | None, caller: Caller, allow_private: bool) -> str | None:
    """The create request's callback URL: the header, else the key's default; None for none. Checked by the
    SSRF guard now (blocking: DNS), so a refused URL leaves no task."""
    explicit = header is not None and header.strip() != ""
    url = header.strip() if explicit and header else caller.callback_url
    if not url:
        return None
    field = CALLBACK_HEADER if explicit else "the API key's default callback URL (wanserve keys callback)"
    return check_callback_url(url, field=field, allow_private=allow_private)


def check_callback_url(url: str, *, field: str, allow_private: bool) -> str:
    """`url` if the SSRF guard lets webhooks go there (blocking: DNS); InvalidParameter naming `field`."""
    try:
        checked_http_url(url, field=field, allow_private=allow_private, hint=_PRIVATE_HINT)
    except ServiceError as exc:
        raise invalid_parameter(exc.message) from None
    return url


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """The X-Wanserve-Signature value: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def backoff_ms(attempt: int, base_s: float) -> int:
    """How long after failed attempt number `attempt` (1 for the first) the next one is due."""
    return int(min(base_s * 2 ** (attempt - 1), BACKOFF_CAP_S) * 1000)


def link_base(services: Services) -> str:
    """The base of video_url links sent with no request to take a Host from: `public_base_url`, else this
    server's first allowed host (as GET /tasks/{id} uses for a Host it does not know)."""
    settings = services.settings
    return settings.public_base_url or f"http://{allowed_hosts(settings)[0]}/"


@dataclass
class _Attempt:
    """One attempt being made: the task row, the body and its log row."""

    task: dict[str, Any]
    lease: int
    url: str
    body: bytes
    started: int
    delivery_id: int
    attempt: int


class Deliverer:
    """Sends the due webhooks of one process; `run(stop)` loops until `stop` is set.

    Fair across accounts: at most `webhook_max_in_flight` attempts at once, of them at most
    `webhook_max_in_flight_per_account` for one account, each ended after `webhook_timeout_seconds` whatever
    the receiver does (connect, headers, body: one deadline); due deliveries are taken round-robin by
    account as slots free up (`WebhookQueue.due`), so an account whose receiver never answers holds only its
    own slots, and another account's delivery waits at most one attempt's timeout for a slot."""

    def __init__(self, services: Services, *, poll_seconds: float = 1.0, base: str | None = None) -> None:
        settings = services.settings
        self.services = services
        self.queue = WebhookQueue(services.db)
        self.poll_seconds = poll_seconds
        self.base = base or link_base(services)
        self.backoff_s = settings.webhook_backoff_seconds
        self.retry_ms = int(settings.webhook_retry_seconds * 1000)
        self.timeout_s = settings.webhook_timeout_seconds
        self.parallel = settings.webhook_max_in_flight
        self.per_account = settings.webhook_max_in_flight_per_account
        # a taken delivery is another deliverer's again after this (ours died mid-send): well past a timeout
        self.lease_ms = int((self.timeout_s + LEASE_MARGIN_S) * 1000)
        self._lock = threading.Lock()
        self.in_flight: Counter[str] = Counter()  # account -> attempts this deliverer is making now
        self._freed: asyncio.Event | None = None  # set when an attempt ends (run's loop takes more)

    def run(self, stop: threading.Event) -> None:
        asyncio.run(self._run(stop))

    async def _run(self, stop: threading.Event) -> None:
        loop = asyncio.get_running_loop()
        # database calls and DNS look-ups in threads of our own, enough for every slot
        loop.set_default_executor(ThreadPoolExecutor(self.parallel + 2, thread_name_prefix="webhook"))
        self._freed = freed = asyncio.Event()
        sending: set[asyncio.Task[None]] = set()
        while not stop.is_set():
            freed.clear()
            try:
                for item in await asyncio.to_thread(self.take_due, self.parallel - len(sending)):
                    task = asyncio.create_task(self._deliver(item))
                    sending.add(task)
                    task.add_done_callback(sending.discard)
            except Exception:  # a database hiccup: try again next pass
                log.exception("webhook pass failed")
            try:  # the next pass: when an attempt ends (a slot is free), else after poll_seconds
                await asyncio.wait_for(freed.wait(), self.poll_seconds)
            except TimeoutError:
                pass
        if sending:  # attempts under way end within their timeout; their outcome is recorded
            await asyncio.wait(sending, timeout=self.timeout_s + 5)

    def take_due(self, slots: int | None = None) -> list[tuple[Due, int]]:
        """Due deliveries this deliverer won (at most `slots`, default its free slots), round-robin by account
        and within the per-account limit, each with its lease value (for `finish`); counted in flight."""
        with self._lock:
            held = dict(self.in_flight)
        slots = self.parallel - sum(held.values()) if slots is None else slots
        if slots <= 0:
            return []
        now = now_ms()
        taken: list[tuple[Due, int]] = []
        try:
            for due in self.queue.due(now, slots, per_account=self.per_account, in_flight=held):
                lease = now + self.lease_ms
                if self.queue.take(due, lease):
                    with self._lock:
                        self.in_flight[due.account_id] += 1
                    taken.append((due, lease))
        except Exception:
            if not taken:
                raise
            # what we hold is sent (and counted down) all the same; the rest waits for the next pass
            log.exception("taking due webhooks failed after %d were taken", len(taken))
        return taken

    def deliver_due(self) -> int:
        """One pass, inline (for tests): how many attempts were made."""
        taken = self.take_due()
        for item in taken:
            self.deliver(item)
        return len(taken)

    def deliver(self, item: tuple[Due, int]) -> None:
        """One taken delivery's attempt, inline."""
        asyncio.run(self._deliver(item))

    async def _deliver(self, item: tuple[Due, int]) -> None:
        due, lease = item
        try:
            attempt = await asyncio.to_thread(self._begin, due, lease)
            if attempt is None:
                return
            try:
                async with asyncio.timeout(self.timeout_s):
                    status, error = await self._send(attempt)
            except TimeoutError:
                status, error = None, f"no answer within {self.timeout_s:g} s (webhook_timeout_seconds)"
            await asyncio.to_thread(self._end, attempt, status, error)
        except Exception:  # the database: the lease runs out and the delivery is taken again
            log.exception("webhook attempt for task %s failed", due.task_id)
        finally:
            with self._lock:
                self.in_flight[due.account_id] -= 1
                if self.in_flight[due.account_id] <= 0:
                    del self.in_flight[due.account_id]
            if self._freed is not None:
                self._freed.set()

    def _begin(self, due: Due, lease: int) -> _Attempt | None:
        """Read the task and log the attempt (blocking); None when there is nothing to send."""
        task = self.services.store.get(due.task_id)
        if task is None or not task["callback_url"]:  # expired meanwhile, or nothing to send
            if task is not None:
                self.queue.finish(due.task_id, lease, None)
            return None
        body = json.dumps({"request_id": task["request_id"], **query_body(task, self.services, self.base)},
                          ensure_ascii=False, separators=(",", ":")).encode()
        url = task["callback_url"]
        started = now_ms()
        delivery_id, number = self.queue.begin_attempt(task["id"], url, started)
        return _Attempt(task, lease, url, body, started, delivery_id, number)

    def _end(self, attempt: _Attempt, status: int | None, error: str | None) -> None:
        """Log the attempt's outcome and schedule the next one, or none (blocking)."""
        task = attempt.task
        ok = status is not None and 200 <= status < 300
        ended = now_ms()
        self.queue.end_attempt(attempt.delivery_id, ok=ok, status=status, error=error,
                               duration_ms=ended - attempt.started)
        next_due = None if ok else ended + backoff_ms(attempt.attempt, self.backoff_s)
        if next_due is not None and next_due > task["end_ms"] + self.retry_ms:
            log.warning("webhook for task %s to %s given up after %d attempts (last: %s)", task["id"],
                        attempt.url, attempt.attempt, error or f"HTTP {status}")
            next_due = None
        self.queue.finish(task["id"], attempt.lease, next_due)

    async def _send(self, attempt: _Attempt) -> tuple[int | None, str | None]:
        """POST once: (the receiver's status, None) or (None or its status, what went wrong). The caller
        bounds it with the attempt timeout; the answer's body is never read."""
        settings = self.services.settings
        task_id, account_id = attempt.task["id"], attempt.task["account_id"]
        try:
            target, addresses = await asyncio.to_thread(
                checked_http_url, attempt.url, field="callback URL",
                allow_private=settings.allow_private_media_urls)
        except ServiceError as exc:
            return None, exc.message
        headers = {"Content-Type": "application/json", "User-Agent": "wanserve-webhook/1",
                   "X-Wanserve-Task-Id": task_id, "X-Wanserve-Delivery": str(attempt.delivery_id),
                   "X-Wanserve-Signature": signature(webhook_secret(settings.secret(), account_id),
                                                     int(time.time()), attempt.body)}
        extensions: dict[str, Any] = {}
        if addresses:  # pin the connection to the checked address; Host and TLS keep the name
            headers["Host"] = target.netloc.decode("ascii")
            if target.scheme == "https":
                extensions["sni_hostname"] = target.raw_host.decode("ascii")
            target = target.copy_with(host=str(addresses[0]))
        try:
            # trust_env=False: an environment proxy would connect for us and defeat the pinning
            async with httpx.AsyncClient(trust_env=False, follow_redirects=False, timeout=self.timeout_s) \
                    as client, client.stream("POST", target, content=attempt.body, headers=headers,
                                             extensions=extensions) as response:
                status = response.status_code
        except httpx.HTTPError as exc:
            return None, f"{type(exc).__name__}: {exc}"[:500]
        if 200 <= status < 300:
            return status, None
        return status, f"HTTP {status}"


def run_deliverer(services: Services, stop: threading.Event) -> None:
    """The loop `wanserve serve` runs in a thread beside the sweeper."""
    Deliverer(services).run(stop)
