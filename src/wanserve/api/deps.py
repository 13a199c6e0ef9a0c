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
from ..config import Settings
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
    """The base URL links (video_url, upload_host) are built on: `public_base_url` when set; else this
    request's scheme and Host if that Host is an allowed one, else the first allowed host. A client's made-up
    Host (`Host: evil.example`) never becomes a link another client follows."""
    settings = services(request).settings
    if settings.public_base_url:
        return settings.public_base_url
    scheme = request.scope.get("scheme", "http")
    server = request.scope.get("server") or (None, None)
    allowed = [_without_default_port(host, scheme) for host in allowed_hosts(settings, server[1])]
    host = _without_default_port(request.headers.get("host", ""), scheme)
    return f"{scheme}://{host if host in allowed else allowed[0]}{request.scope.get('root_path', '')}/"


_ANY_ADDRESS = ("", "0.0.0.0", "::", "[::]")


def allowed_hosts(settings: Settings, port: int | None = None) -> list[str]:
    """The Host headers links may be built on: `allowed_hosts`, else this server's own host:port and its
    localhost, 127.0.0.1 and [::1] forms (`port`: the one really listened on, for `port = 0`)."""
    if settings.allowed_hosts:
        return list(settings.allowed_hosts)
    port = settings.port or port
    own = settings.host.strip().lower()
    names = dict.fromkeys([*([] if own in _ANY_ADDRESS else [own]), "localhost", "127.0.0.1", "::1"])
    return [f"{f'[{name}]' if ':' in name and not name.startswith('[') else name}{f':{port}' if port else ''}"
            for name in names]


def _without_default_port(host: str, scheme: str) -> str:
    """`host` lower-cased, without the scheme's default port: "a.example:80" and "a.example" are one host."""
    host = host.strip().lower()
    default = ":443" if scheme == "https" else ":80"
    return host.removesuffix(default)


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
