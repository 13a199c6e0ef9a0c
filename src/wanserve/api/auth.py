"""Bearer-key authentication: each key belongs to an account; a task is visible to its account only."""

from __future__ import annotations

from typing import Annotated

from fastapi import Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from ..accounts.keys import Caller, authenticate
from ..errors import ServiceError

_bearer = HTTPBearer(auto_error=False, description="An API key from `wanserve keys create`")


async def require_caller(request: Request,
                         credentials: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)]) -> Caller:
    key = credentials.credentials if credentials else ""
    if not key.strip():
        raise ServiceError("InvalidApiKey", "No API-key provided. Send the header Authorization: Bearer <key>; "
                           "create a key with `wanserve keys create`.", 401)
    app = request.app
    caller = await run_in_threadpool(authenticate, app.state.services.db, key.strip(), app.state.bootstrap_key)
    if caller is None:
        raise ServiceError("InvalidApiKey", "Invalid API-key provided. Check the key, or create one with "
                           "`wanserve keys create`.", 401)
    return caller
