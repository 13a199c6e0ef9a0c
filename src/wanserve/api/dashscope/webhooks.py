"""Webhooks (an extension, docs/webhooks.md): when a task ends, POST what GET /tasks/{id} would answer to
the URL the client named at create time (X-Wanserve-Callback-Url, or its key's default).

Create side: `callback_for()` picks and checks the URL with the media downloads' SSRF guard (refused as
InvalidParameter unless `allow_private_media_urls`); the task row stores it, due at once.

Delivery side: a `Deliverer` loop (one thread per `wanserve serve`, beside the sweeper) takes due ended
tasks from the store's `WebhookQueue` (one guarded UPDATE each, so deliverers in several processes never
both send), re-checks the address at send time (DNS may have changed; the connection is pinned to the
checked address, no redirects followed), signs the body as Stripe does and logs every attempt. A 2xx ends
it; anything else is retried after 1, 2, 4, ... s (`webhook_backoff_seconds`, capped at 300 s) until
`webhook_retry_seconds` after the task ended, then given up with a log line.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
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

SEND_TIMEOUT_S = 10.0
LEASE_MS = 60_000  # a taken delivery is another deliverer's again after this (ours died mid-send)
BACKOFF_CAP_S = 300.0
BATCH = 50  # deliveries taken per pass
PARALLEL = 8  # of which sent at once (a slow receiver does not hold up the others)


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


class Deliverer:
    """Sends the due webhooks of one process; `run(stop)` loops until `stop` is set."""

    def __init__(self, services: Services, *, poll_seconds: float = 1.0, base: str | None = None) -> None:
        self.services = services
        self.queue = WebhookQueue(services.db)
        self.poll_seconds = poll_seconds
        self.base = base or link_base(services)
        self.backoff_s = services.settings.webhook_backoff_seconds
        self.retry_ms = int(services.settings.webhook_retry_seconds * 1000)

    def run(self, stop: threading.Event) -> None:
        with ThreadPoolExecutor(PARALLEL, thread_name_prefix="webhook") as pool:
            while not stop.is_set():
                try:
                    list(pool.map(self.deliver, self.take_due()))
                except Exception:  # a database hiccup: try again next pass
                    log.exception("webhook pass failed")
                stop.wait(self.poll_seconds)

    def take_due(self) -> list[tuple[Due, int]]:
        """The due deliveries this deliverer won, each with its lease value (for `finish`)."""
        now = now_ms()
        taken = []
        for due in self.queue.due(now, BATCH):
            lease = now + LEASE_MS
            if self.queue.take(due, lease):
                taken.append((due, lease))
        return taken

    def deliver_due(self) -> int:
        """One pass, inline (for tests and `run`): how many attempts were made."""
        taken = self.take_due()
        for item in taken:
            self.deliver(item)
        return len(taken)

    def deliver(self, item: tuple[Due, int]) -> None:
        due, lease = item
        task = self.services.store.get(due.task_id)
        if task is None or not task["callback_url"]:  # expired meanwhile, or nothing to send
            if task is not None:
                self.queue.finish(due.task_id, lease, None)
            return
        body = json.dumps({"request_id": task["request_id"], **query_body(task, self.services, self.base)},
                          ensure_ascii=False, separators=(",", ":")).encode()
        url = task["callback_url"]
        started = now_ms()
        delivery_id, attempt = self.queue.begin_attempt(task["id"], url, started)
        status, error = self._send(url, body, task["id"], task["account_id"], delivery_id)
        ok = status is not None and 200 <= status < 300
        ended = now_ms()
        self.queue.end_attempt(delivery_id, ok=ok, status=status, error=error, duration_ms=ended - started)
        next_due = None if ok else ended + backoff_ms(attempt, self.backoff_s)
        if next_due is not None and next_due > task["end_ms"] + self.retry_ms:
            log.warning("webhook for task %s to %s given up after %d attempts (last: %s)", task["id"], url,
                        attempt, error or f"HTTP {status}")
            next_due = None
        self.queue.finish(task["id"], lease, next_due)

    def _send(self, url: str, body: bytes, task_id: str, account_id: str,
              delivery_id: int) -> tuple[int | None, str | None]:
        """POST once: (the receiver's status, None) or (None or its status, what went wrong)."""
        settings = self.services.settings
        try:
            target, addresses = checked_http_url(url, field="callback URL",
                                                 allow_private=settings.allow_private_media_urls)
        except ServiceError as exc:
            return None, exc.message
        headers = {"Content-Type": "application/json", "User-Agent": "wanserve-webhook/1",
                   "X-Wanserve-Task-Id": task_id, "X-Wanserve-Delivery": str(delivery_id),
                   "X-Wanserve-Signature": signature(webhook_secret(settings.secret(), account_id),
                                                     int(time.time()), body)}
        extensions: dict[str, Any] = {}
        if addresses:  # pin the connection to the checked address; Host and TLS keep the name
            headers["Host"] = target.netloc.decode("ascii")
            if target.scheme == "https":
                extensions["sni_hostname"] = target.raw_host.decode("ascii")
            target = target.copy_with(host=str(addresses[0]))
        try:
            # trust_env=False: an environment proxy would connect for us and defeat the pinning
            with httpx.Client(trust_env=False, follow_redirects=False, timeout=SEND_TIMEOUT_S) as client:
                response = client.post(target, content=body, headers=headers, extensions=extensions)
        except httpx.HTTPError as exc:
            return None, f"{type(exc).__name__}: {exc}"[:500]
        if 200 <= response.status_code < 300:
            return response.status_code, None
        return response.status_code, f"HTTP {response.status_code}"


def run_deliverer(services: Services, stop: threading.Event) -> None:
    """The loop `wanserve serve` runs in a thread beside the sweeper."""
    Deliverer(services).run(stop)
