"""Operations routes: /metrics (Prometheus), /healthz (the process is up), /readyz (it can do its work).

None takes an API key: a scraper or a load balancer's probe has none. They belong on an internal network,
or behind the reverse proxy that keeps them from the internet (docs/deploy.md, Monitoring). They are left
out of the OpenAPI schema: they are not part of the DashScope API.

/readyz checks, concurrently, each within READY_TIMEOUT_SECONDS: the database answers `SELECT 1`, storage
can store (`Storage.ping`), at least one worker is live in the registry and none of this process's worker
threads is down (worker/supervise.py). The body names the failed checks; why a check raised (a driver's
message, an S3 endpoint or bucket, a path) is logged, and shown in the body only with `readyz_details`,
since probes take no key. Each check runs on a daemon
thread of its own rather than the request thread pool, so a database that hangs can neither starve the API
of threads nor keep the process from exiting; while CHECKS_IN_FLIGHT of one kind still hang, a further
probe fails that check at once instead of starting another thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import Engine, text

from ..catalog.models import canonical_name
from ..metrics import StateCollector, registry_for
from ..services import Services
from ..tasks.states import TaskStatus
from .access import AccessLog
from .deps import services

READY_TIMEOUT_SECONDS = 2.0
CHECKS_IN_FLIGHT = 2  # per check and app: threads still waiting on a hung database or volume
CHECKS = ("database", "storage", "workers")

router = APIRouter(include_in_schema=False, tags=["operations"])
log = logging.getLogger("wanserve.api")


def include(app: FastAPI) -> None:
    """Add the routes, the access-log and latency middleware, and this app's metrics page."""
    app.include_router(router)
    app.add_middleware(AccessLog)
    app.state.metrics_registry = registry_for(state_collector(app.state.services))
    app.state.readyz_slots = {name: threading.BoundedSemaphore(CHECKS_IN_FLIGHT) for name in CHECKS}


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is up and serving HTTP; nothing else is checked (a liveness probe)."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(request: Request) -> JSONResponse:
    """200 when every check passes, else 503; either way each check's result (a readiness probe)."""
    svc, slots = services(request), request.app.state.readyz_slots
    details = svc.settings.readyz_details
    runs = {"database": lambda: _database(svc.db), "storage": lambda: _storage(svc),
            "workers": lambda: _workers(svc, details)}
    results = await asyncio.gather(*(_run(name, runs[name], slots[name], details) for name in CHECKS))
    checks = dict(zip(CHECKS, results, strict=True))
    failed = [name for name, result in checks.items() if not result["ok"]]
    body = {"status": "unavailable" if failed else "ok", "failed": failed, "checks": checks}
    return JSONResponse(body, status_code=503 if failed else 200)


@router.get("/metrics")
def metrics(request: Request) -> Response:
    """This process's histograms and the database's counts, in Prometheus's text format. Plain `def`: the
    counts are read from the database on FastAPI's thread pool."""
    return Response(generate_latest(request.app.state.metrics_registry), media_type=CONTENT_TYPE_LATEST)


# ------------------------------------------------------------------------------------------------ metrics


def state_collector(svc: Services) -> StateCollector:
    """The database view of `svc`: task counts by canonical model (aliases folded in) and status, and the
    worker registry."""

    def counts() -> dict[tuple[str, str], int]:
        folded: dict[tuple[str, str], int] = {}
        for (model, status), n in svc.store.counts().items():
            key = (canonical_name(model), status)
            folded[key] = folded.get(key, 0) + n
        return folded

    return StateCollector(counts, svc.workers.all, svc.workers.live, pending=TaskStatus.PENDING.value)


# ------------------------------------------------------------------------------------------------- checks


def _database(db: Engine) -> dict[str, Any]:
    with db.connect() as conn:
        conn.execute(text("SELECT 1")).scalar_one()
    return {"ok": True}


def _storage(svc: Services) -> dict[str, Any]:
    svc.storage.ping()
    return {"ok": True}


def _workers(svc: Services, details: bool) -> dict[str, Any]:
    for problem in (health(details) for health in svc.local_workers):
        if problem:  # this process's worker threads: one died (restarting), or they kept dying
            return {"ok": False, "error": problem}
    live = len(svc.workers.live())
    if not live:
        return {"ok": False, "live": 0, "error": "no live worker: start `wanserve worker`, or `wanserve "
                "serve` with --workers 1 or more"}
    return {"ok": True, "live": live}


async def _run(name: str, check: Callable[[], dict[str, Any]], slots: threading.BoundedSemaphore,
               details: bool = False) -> dict[str, Any]:
    """`check()` on a daemon thread, within READY_TIMEOUT_SECONDS; an exception or the timeout is a
    failed check saying why (an exception's message only with `details`; it is logged either way).
    `slots`: how many of this check may still hang before probes stop starting threads for it."""
    if not slots.acquire(blocking=False):
        return {"ok": False, "error": f"earlier checks have not answered in {READY_TIMEOUT_SECONDS:g} s"}
    loop = asyncio.get_running_loop()
    future: asyncio.Future[dict[str, Any]] = loop.create_future()

    def settle(result: dict[str, Any]) -> None:
        if not future.done():  # not after the timeout
            future.set_result(result)

    def target() -> None:
        try:
            result = check()
        except Exception as exc:  # noqa: BLE001 - any failure is the check's answer
            why = _why(exc)
            log.warning("readyz: the %s check failed: %s", name, why)
            result = {"ok": False, "error": why if details else f"{type(exc).__name__} (the reason is in "
                      "the server log; readyz_details = true shows it here)"}
        finally:
            slots.release()
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile (the server stopped)
            loop.call_soon_threadsafe(settle, result)

    threading.Thread(target=target, daemon=True, name=f"readyz-{name}").start()
    try:
        return await asyncio.wait_for(future, READY_TIMEOUT_SECONDS)
    except TimeoutError:
        return {"ok": False, "error": f"no answer within {READY_TIMEOUT_SECONDS:g} s"}


def _why(exc: BaseException) -> str:
    """The exception's type and the first line of its message, bounded (driver messages run long)."""
    first = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
    return f"{type(exc).__name__}: {first}"[:300] if first else type(exc).__name__
