"""The embedded HTTP server: uvicorn for an app, bounded against hostile clients.

`build_server(app, settings)` is the one place a uvicorn.Server is made (`wanserve serve`, the tests'
`running_server`). What it adds to plain uvicorn, each from a setting (docs/deploy.md):

- `header_timeout_seconds`: a connection that has not sent a complete request line and headers this long
  after it opened (or, kept alive, after the first byte of its next request) is answered 408 and closed;
- `body_timeout_seconds`, `body_min_bytes_per_second`: a request body that pauses that long, or that
  averages less than that rate over any such span, is closed (a slow upload cannot hold a connection);
- `max_connections` (connections carrying an event stream not counted: those have their own budget,
  `max_event_streams`, api/streams.py): beyond it, the connections that have waited longest without
  sending a request (slow-headers clients, idle kept-alive ones) are closed to make room, if they have
  waited 0.5 s; otherwise the
  newcomer's request is answered 503 at once (uvicorn's `limit_concurrency`, which counts open connections,
  this one included, and running requests), and a newcomer that sends no request within 1 s is closed;
- `keep_alive_seconds`, `max_header_bytes` (h11's largest incomplete event), `backlog`;
- the soft limit on open files raised to the hard one, so that the cap, not "Too many open files", is what a
  flood of connections meets (where the hard limit is too low for the cap, the cap is lowered, with a
  warning);
- TCP_NODELAY on every accepted connection, whatever made the listening socket (`set_nodelay`);
- repeated log lines (accept errors, refused or timed-out connections, aborted uploads) rate-limited
  (`RateLimitFilter`), so a flood cannot fill the disk with one message.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from ..config import Settings
from .deps import allowed_hosts
from .streams import EventStreams

log = logging.getLogger("wanserve.api.server")

EVICT_AFTER_SECONDS = 0.5  # how long a connection must have waited without a request to be closed for room
OVER_CAP_GRACE_SECONDS = 1.0  # a connection beyond the cap has this long to send its request (for a 503)
FD_RESERVE = 256  # open files kept for the database, workers and media beyond max_connections
_TIMEOUT_RESPONSE = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n"
                     b"content-length: 15\r\nconnection: close\r\n\r\nRequest Timeout")


def build_server(app: Any, settings: Settings, *, log_level: str = "warning") -> uvicorn.Server:
    """A uvicorn.Server for `app` on settings.host:port with the bounds above; `run()` it."""
    cap = settings.max_connections
    files = raise_open_files_limit()
    if files is not None and files < cap + FD_RESERVE:
        cap = max(1, files - FD_RESERVE)  # the cap must bite before "Too many open files" does
        log.warning("the open-files limit (%d) leaves room for %d connections, not max_connections (%d); "
                    "raise the limit (ulimit -n, systemd LimitNOFILE=) to allow more", files, cap,
                    settings.max_connections)
    streams = getattr(getattr(app, "state", None), "event_streams", None)  # api/streams.py: on top of the cap
    if streams is not None and files is not None and files < cap + streams.total + FD_RESERVE:
        streams.total = max(0, files - FD_RESERVE - cap)  # plain requests first
        log.warning("the open-files limit (%d) leaves room for %d event streams, not max_event_streams (%d); "
                    "raise the limit (ulimit -n, systemd LimitNOFILE=) to allow more", files, streams.total,
                    settings.max_event_streams)
    config = uvicorn.Config(
        app, host=settings.host, port=settings.port, log_level=log_level,
        access_log=False,  # api/access.py writes one line per request (wanserve.access), with its route
        # JSON logs: uvicorn's loggers keep no handlers of their own and reach the root's JSON one
        log_config=None if settings.log_format == "json" else uvicorn.config.LOGGING_CONFIG,
        http=_protocol_class(settings, cap, streams),
        ws="none",  # no WebSocket routes: an Upgrade must not hand the connection to an unguarded protocol
        # uvicorn answers 503 from the (cap + 1)th open connection on (the open event streams not counted:
        # _GuardedH11.limit_concurrency)
        limit_concurrency=cap + 1,
        timeout_keep_alive=settings.keep_alive_seconds,  # type: ignore[arg-type]  # a float is fine
        h11_max_incomplete_event_size=settings.max_header_bytes,
        backlog=settings.backlog,
    )
    install_log_limits()  # after uvicorn.Config, which (re)configures uvicorn's loggers
    if not settings.public_base_url:
        log.warning("public_base_url is not set: links (video_url, upload_host) are built from the request's "
                    "Host only when it is one of %s, else from the first; set public_base_url to the address "
                    "clients use", ", ".join(allowed_hosts(settings)) or "(none)")
    return uvicorn.Server(config)


# --------------------------------------------------------------------------------- per-connection deadlines


@dataclass
class _Bounds:
    max_connections: int
    header_timeout: float
    body_timeout: float
    body_min_rate: int
    streams: EventStreams | None = None  # open event streams: their connections sit on top of the cap
    # connections waiting for a request (fresh, or idle after one), oldest first, with the time they began
    waiting: dict[_GuardedH11, float] = field(default_factory=dict)


def _protocol_class(settings: Settings, max_connections: int,
                    streams: EventStreams | None = None) -> type[_GuardedH11]:
    """A _GuardedH11 subclass carrying this server's bounds (uvicorn makes one protocol per connection)."""
    bounds = _Bounds(max_connections, settings.header_timeout_seconds,
                     settings.body_timeout_seconds, settings.body_min_bytes_per_second, streams)
    return type("GuardedH11Protocol", (_GuardedH11,), {"bounds": bounds})


class _GuardedH11(H11Protocol):
    """uvicorn's h11 protocol with a deadline per connection. Hand-written because uvicorn (0.x) bounds only
    the idle time between kept-alive requests: a client that opens a connection and sends nothing, or sends
    its headers or its body a few bytes at a time, holds the connection (and a file descriptor) for as long
    as it likes, and neither uvicorn nor h11 has a setting for it. One asyncio timer per connection, re-armed
    lazily (once per deadline, not once per chunk)."""

    bounds: ClassVar[_Bounds]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._timer: Any = None  # asyncio.TimerHandle
        self._phase = ""  # "headers": waiting for a request; "body": reading one; "": the app has it
        self._fresh = True  # no request yet on this connection
        self._over_cap = False  # opened beyond max_connections, with no idle connection to close for room
        self._partial = False  # headers: some bytes of the request arrived
        self._since = 0.0  # body: start of the current rate window
        self._last = 0.0  # body: when bytes last arrived
        self._window_bytes = 0

    # -- uvicorn's hooks

    def connection_made(self, transport: Any) -> None:  # type: ignore[override]
        set_nodelay(transport)
        super().connection_made(transport)
        if self._counted() > self.bounds.max_connections:
            self._make_room()
            self._over_cap = self._counted() > self.bounds.max_connections
        self._watch()

    def data_received(self, data: bytes) -> None:
        if self._phase == "headers":
            self._partial = True
            if self._timer is None:  # a kept-alive connection: its next request's deadline starts now
                self._arm(self.loop.time() + self.bounds.header_timeout)
        super().data_received(data)
        self._watch()
        if self._phase == "body":  # (with the headers' bytes too when they came in the same read: lenient)
            self._window_bytes += len(data)
            self._last = self.loop.time()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._watch()

    def connection_lost(self, exc: Exception | None) -> None:
        self._unwatch()
        super().connection_lost(exc)

    # -- the cap, event streams apart

    def _counted(self) -> int:
        """The open connections that count against max_connections: all but those carrying an event stream."""
        streams = self.bounds.streams
        return len(self.connections) - (streams.count if streams is not None else 0)

    @property  # type: ignore[override]
    def limit_concurrency(self) -> int:
        """uvicorn's 503 threshold, read at each request: the cap plus one, plus the open event streams (so
        that streams, bounded apart, never take the room plain requests have)."""
        streams = self.bounds.streams
        return self.bounds.max_connections + 1 + (streams.count if streams is not None else 0)

    @limit_concurrency.setter
    def limit_concurrency(self, value: int | None) -> None:
        pass  # uvicorn's __init__ sets it from its config (max_connections + 1); ours is computed

    # -- the deadlines

    def _watch(self) -> None:
        """Follow the client's side of h11's state machine: waiting for headers, sending a body, or done."""
        if self.transport.is_closing():
            self._unwatch()
            return
        state = self.conn.their_state
        now = self.loop.time()
        if state is h11.IDLE:
            if self._phase != "headers":
                self._unwatch()
                self._phase, self._partial = "headers", False
                self.bounds.waiting[self] = now
                if self._fresh:  # kept-alive ones: uvicorn's keep-alive timer until their first byte
                    grace = OVER_CAP_GRACE_SECONDS if self._over_cap else self.bounds.header_timeout
                    self._arm(now + min(grace, self.bounds.header_timeout))
        elif state is h11.SEND_BODY:
            if self._phase != "body":
                self._unwatch()
                self._fresh = False
                self._phase, self._since, self._last, self._window_bytes = "body", now, now, 0
                self._arm(now + self.bounds.body_timeout)
        elif self._phase:
            self._fresh = False
            self._unwatch()

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self.loop.call_at(when, self._expire)

    def _unwatch(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.bounds.waiting.pop(self, None)
        self._phase = ""

    def _expire(self) -> None:
        self._timer = None
        if self.transport.is_closing():
            return
        bounds, now = self.bounds, self.loop.time()
        if self._phase == "headers" and self._over_cap and self._fresh:
            self._close(None, answer=False)  # it would have had a 503; holding it only costs a file
        elif self._phase == "headers":
            self._close("no complete request headers within %g s", bounds.header_timeout,
                        answer=self._partial)
        elif self._phase == "body":
            cycle = self.cycle
            answer = cycle is None or not cycle.response_started
            if cycle is not None and not cycle.response_complete and (
                    self.flow.read_paused or cycle.body or cycle.waiting_for_100_continue):
                # the app has not taken what already arrived: the wait is the server's, not the client's
                self._since, self._last, self._window_bytes = now, now, 0
            elif now - self._last >= bounds.body_timeout - 0.001:
                self._close("request body stalled for %g s", bounds.body_timeout, answer=answer)
                return
            elif now - self._since >= bounds.body_timeout - 0.001:
                if self._window_bytes < bounds.body_min_rate * (now - self._since):
                    self._close("request body slower than %d bytes/s", bounds.body_min_rate, answer=answer)
                    return
                self._since, self._window_bytes = now, 0
            self._arm(min(self._last, self._since) + bounds.body_timeout)

    def _make_room(self) -> None:
        """Over the cap: close the connections that have waited longest for a request (EVICT_AFTER_SECONDS at
        least) until the count is back at the cap. Those that cannot be closed so stay, and uvicorn answers
        their requests 503 (limit_concurrency)."""
        excess = self._counted() - self.bounds.max_connections
        now, victims = self.loop.time(), []
        for connection, since in self.bounds.waiting.items():  # oldest first
            if len(victims) >= excess or now - since < EVICT_AFTER_SECONDS:
                break
            victims.append(connection)
        for victim in victims:
            victim._close(None, answer=False)
        if victims:
            log.info("closed %d connection(s) idle without a request to stay within max_connections (%d)",
                     len(victims), self.bounds.max_connections)

    def _close(self, why: str | None, *args: Any, answer: bool) -> None:
        self._unwatch()
        if why is not None:
            peer = "%s:%d" % self.client if self.client else "?"
            log.info("closed the connection from %s: " + why, peer, *args)
        if answer:  # nothing of a response sent yet: say why, rather than just hang up
            self.transport.write(_TIMEOUT_RESPONSE)
        self.transport.close()
        self.connections.discard(self)  # no longer counts against the cap (uvicorn's connection_lost follows)


def set_nodelay(transport: Any) -> None:
    """TCP_NODELAY on an accepted connection. asyncio sets it only on sockets made with IPPROTO_TCP, and a
    listening socket made with protocol 0 (uvicorn's own, systemd's, `--fd`) hands out connections without
    it: Nagle then holds a response's second write until the client's delayed ACK, ~40 ms a response on a
    kept-alive connection."""
    sock = transport.get_extra_info("socket")
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:  # the peer already gone: nothing to speed up
        pass


# ------------------------------------------------------------------------------------------ the open files


def raise_open_files_limit() -> int | None:
    """Raise this process's soft limit on open files to its hard limit; the soft limit now in effect (None
    where unlimited or the platform has none)."""
    try:
        import resource
    except ImportError:  # not on Windows
        return None
    unlimited = resource.RLIM_INFINITY
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != unlimited:
        for target in (hard, 65536, 10240):  # macOS: an unlimited hard limit, but a kernel cap on soft
            if target != unlimited and target <= soft:
                break
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
                break
            except (ValueError, OSError):
                continue
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return None if soft == resource.RLIM_INFINITY else soft


# ---------------------------------------------------------------------------------------------- quiet logs


class RateLimitFilter(logging.Filter):
    """Lets at most `burst` records with the same logger, level and message (before its arguments are filled
    in) through per `interval` seconds; the first one let through after a drop says how many were dropped."""

    MAX_KEYS = 1024

    def __init__(self, burst: int = 5, interval: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.burst, self.interval, self._clock = burst, interval, clock
        self._lock = threading.Lock()
        self._windows: dict[tuple[str, int, str], list[float]] = {}  # key -> [start, let through, dropped]

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, record.levelno, str(record.msg))
        now = self._clock()
        with self._lock:
            window = self._windows.get(key)
            if window is None or now - window[0] >= self.interval:
                dropped = int(window[2]) if window else 0
                if window is None and len(self._windows) >= self.MAX_KEYS:
                    self._windows.clear()  # many different messages: forget the counts rather than grow
                window = self._windows[key] = [now, 0, 0]
                if dropped:
                    record.msg = f"{record.msg} [{dropped} more like this were dropped]"
            if window[1] >= self.burst:
                window[2] += 1
                return False
            window[1] += 1
            return True

    def reset(self) -> None:
        with self._lock:
            self._windows.clear()


LOG_LIMIT = RateLimitFilter()
# where a flood of connections writes: accept errors ("Too many open files") come from asyncio's exception
# handler, refused and invalid requests from uvicorn, timed-out connections and aborted bodies from us
RATE_LIMITED_LOGGERS = ("asyncio", "uvicorn.error", "wanserve.api", "wanserve.api.server")


def install_log_limits() -> None:
    """Put LOG_LIMIT on the loggers a flood writes to (once; a logger's filters see only its own records)."""
    for name in RATE_LIMITED_LOGGERS:
        logging.getLogger(name).addFilter(LOG_LIMIT)  # addFilter ignores a filter already there
