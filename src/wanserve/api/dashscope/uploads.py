"""Temporary file uploads (contract E6/E7), so the SDK's file:// inputs work.

GET /uploads?action=getPolicy hands out a signed, short-lived policy for a fresh directory; the SDK
then POSTs the file OSS-PostObject-style to `upload_host` (here: POST /api/v1/uploads, no auth, the
policy is the credential) and sends `oss://<key>` in the create request.
"""

from __future__ import annotations

import secrets
import time
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from ...catalog.models import find_model
from ...errors import Code, ServiceError, invalid_parameter
from ..deps import CallerDep, public_base, request_id
from ..deps import services as _services
from .schemas import PolicyResponse, RequestIdOnly, errors

router = APIRouter()


@router.get("/uploads", response_model=PolicyResponse, response_model_exclude_unset=True,
            responses=errors(400, 401))
def get_policy(request: Request, caller: CallerDep, action: str = "", model: str = "") -> dict[str, Any]:
    """An upload policy for one model (valid `expire_in_seconds`); files live 48 h."""
    if action != "getPolicy":
        raise invalid_parameter("action must be getPolicy.")
    if not model or find_model(model) is None:
        raise invalid_parameter(f"model: {model!r} is not a model this server knows; "
                                "pass the model the file is for.")
    s = _services(request).settings
    expires = int(time.time()) + s.upload_policy_seconds
    day = datetime.now(UTC).strftime("%Y-%m-%d")
    upload_dir = f"dashscope-instant/{secrets.token_hex(8)}/{day}/{secrets.token_hex(8)}"
    policy, signature = _services(request).uploads.make_policy(
        caller.account_id, model, upload_dir, expires, s.upload_max_mb * 2**20)
    return {"request_id": request_id(request), "data": {
        "policy": policy, "signature": signature, "upload_dir": upload_dir,
        "upload_host": f"{public_base(request).rstrip('/')}/api/v1/uploads",
        "expire_in_seconds": s.upload_policy_seconds, "max_file_size_mb": s.upload_max_mb,
        "capacity_limit_mb": 999999999, "oss_access_key_id": "wanserve",
        "x_oss_object_acl": "private", "x_oss_forbid_overwrite": "true"}}


@router.post("/uploads", response_model=RequestIdOnly, responses=errors(400, 403, 409))
async def upload(request: Request) -> dict[str, Any]:
    """Receive one file under a policy from GET /uploads (multipart form, `file` last)."""
    services = _services(request)
    form = await request.form(max_files=1, max_fields=20)
    policy, signature, key = (form.get(n) for n in ("policy", "Signature", "key"))
    file = form.get("file")
    if not (isinstance(policy, str) and isinstance(signature, str) and isinstance(key, str)):
        raise invalid_parameter("The form needs the fields policy, Signature and key from GET /uploads, "
                                "then file.")
    if not isinstance(file, UploadFile):
        raise invalid_parameter("The form needs a file field (sent last).")
    doc = services.uploads.open_policy(policy, signature)
    if not key.startswith(doc["dir"] + "/") or key.count("/") != doc["dir"].count("/") + 1:
        raise ServiceError(Code.ACCESS_DENIED, f"key must be {doc['dir']}/<file name>, as the policy allows.")
    data = await file.read(doc["max_bytes"] + 1)
    if len(data) > doc["max_bytes"]:
        raise ServiceError(Code.ENTITY_TOO_LARGE, f"The file is larger than {doc['max_bytes'] // 2**20} MB.")
    await run_in_threadpool(services.uploads.save, key, doc["account"], doc["model"], data)
    return {"request_id": request_id(request)}
