"""Dependencies every API flavour shares: the process's services, the caller, the request id.

A flavour's routes take these as FastAPI dependencies; no router imports another's private helpers.
"""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from ..accounts.keys import Caller, authenticate
from ..errors import Code, ServiceError
from ..services import Services

_bearer = HTTPBearer(auto_error=False, description="An API key from `wanserve keys create`")


def services(request: Request) -> Services:
    return request.app.state.services


def request_id(request: Request) -> str:
    """One id per HTTP request, made on first use; error bodies and task rows carry the same one."""
    rid = getattr(request.state, "request_id", None)
    if rid is None:
        rid = request.state.request_id = str(uuid.uuid4())
    return rid


def public_base(request: Request) -> str:
    """The base URL links are built on: the configured one, else this request's."""
    return services(request).settings.public_base_url or str(request.base_url)


async def require_caller(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
) -> Caller:
    """Bearer-key authentication: each key belongs to an account; a task is visible to its account only."""
    key = credentials.credentials if credentials else ""
    if not key.strip():
        raise ServiceError(Code.INVALID_API_KEY, "No API-key provided. Send the header Authorization: Bearer "
                           "<key>; create a key with `wanserve keys create`.")
    svc = services(request)
    caller = await run_in_threadpool(authenticate, svc.db, key.strip(), svc.settings.api_key or None)
    if caller is None:
        raise ServiceError(Code.INVALID_API_KEY,
                           "Invalid API-key provided. Check the key, or create one with "
                           "`wanserve keys create`.")
    return caller


CallerDep = Annotated[Caller, Depends(require_caller)]
ServicesDep = Annotated[Services, Depends(services)]
