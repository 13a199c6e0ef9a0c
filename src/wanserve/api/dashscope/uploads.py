"""Temporary file uploads (contract E6/E7), so the SDK's file:// inputs work.

GET /uploads?action=getPolicy hands out a signed, short-lived policy for a fresh directory; the SDK
then POSTs the file OSS-PostObject-style to `upload_host` (here: POST /api/v1/uploads, no auth, the
policy is the credential) and sends `oss://<key>` in the create request.
"""

from __future__ import annotations

import secrets
import time
from datetime import UTC, datetime
from tempfile import SpooledTemporaryFile
from typing import Any

from fastapi import APIRouter, Request
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.concurrency import run_in_threadpool

from ...catalog.models import find_model
from ...errors import Code, ServiceError, invalid_parameter
from ...storage.uploads import UploadStore
from ..bodies import close_connection, declared_length
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
    """Receive one file under a policy from GET /uploads (multipart form: the fields policy, Signature and
    key first, `file` last). The policy is checked as soon as the file part begins, so a bad or expired
    policy, a wrong key or a declared size over the policy's limit is refused before the file is read;
    the file is then counted while it arrives and refused as soon as it passes the limit."""
    services = _services(request)
    try:
        form = _PolicyFirstForm(request, services.uploads)
        key, doc, file = await form.read()
        with file:
            await run_in_threadpool(services.uploads.save, key, doc["account"], doc["model"], file)
    except BaseException:
        close_connection(request)  # the rest of the body may be unread: do not drain it
        raise
    return {"request_id": request_id(request)}


# The form is parsed with python-multipart's streaming MultipartParser, the parser Starlette's own form
# parsing is built on (same maintainers, kept current with Starlette). Starlette's `request.form()` only
# returns once the whole body has been read and spooled, so it cannot refuse a bad policy before the file
# arrives; the push parser hands over each header and each piece of data as it arrives.
FIELD_MAX_BYTES = 8 * 2**10  # one form field (policy, Signature, key, ...): a few hundred bytes in practice
MAX_FIELDS = 20
FORM_ALLOWANCE = 64 * 2**10  # the fields and boundaries around the file, beyond the policy's file limit
_SPOOL_BYTES = 2**20  # the file is kept in memory up to this, then in a temporary file
_NEEDS_FIELDS = "The form needs the fields policy, Signature and key from GET /uploads, then file."


class _PolicyFirstForm:
    """One upload form read from the request stream: fields, then the policy check, then the file."""

    def __init__(self, request: Request, store: UploadStore) -> None:
        self.request, self.store = request, store
        self.events: list[tuple[str, bytes]] = []
        self.fields: dict[str, str] = {}
        self.part_headers: dict[bytes, bytes] = {}
        self.header_name = self.header_value = b""
        self.part_name: str | None = None
        self.part_data = bytearray()
        self.in_file = self.file_done = False
        self.key = ""
        self.doc: dict[str, Any] | None = None
        self.file: SpooledTemporaryFile[bytes] | None = None
        self.file_size = 0
        self.declared: int | None = None  # the request's Content-Length

    async def read(self) -> tuple[str, dict[str, Any], SpooledTemporaryFile[bytes]]:
        ctype, params = parse_options_header(self.request.headers.get("content-type"))
        if ctype != b"multipart/form-data" or not params.get(b"boundary"):
            raise invalid_parameter("The upload must be a multipart/form-data form. " + _NEEDS_FIELDS)
        self.declared = declared_length(self.request)
        callbacks = {name: self._event(name) for name in (
            "on_part_begin", "on_part_data", "on_part_end", "on_header_field", "on_header_value",
            "on_header_end", "on_headers_finished")}
        try:
            parser = MultipartParser(params[b"boundary"], callbacks)  # type: ignore[arg-type]
            total = 0
            async for chunk in self.request.stream():  # a chunk is at most what one socket read returns
                parser.write(chunk)
                await self._handle_events()
                total += len(chunk)
                if self.doc is None and total > FORM_ALLOWANCE:
                    raise invalid_parameter(f"{_NEEDS_FIELDS} They must come first, within the first "
                                            f"{FORM_ALLOWANCE // 1024} KB of the form.")
                if self.doc is not None and total > self.doc["max_bytes"] + FORM_ALLOWANCE:
                    raise self._too_large()
            parser.finalize()
            await self._handle_events()
        except FormParserError:
            self._close()
            raise invalid_parameter("The upload is not a valid multipart/form-data body. "
                                    + _NEEDS_FIELDS) from None
        except BaseException:
            self._close()
            raise
        if self.file is None or not self.file_done or self.doc is None:
            self._close()
            raise invalid_parameter("The form needs a file field (sent last).")
        self.file.seek(0)
        return self.key, self.doc, self.file

    def _event(self, name: str) -> Any:
        if name in ("on_part_data", "on_header_field", "on_header_value"):
            return lambda data, start, end: self.events.append((name, data[start:end]))
        return lambda: self.events.append((name, b""))

    async def _handle_events(self) -> None:
        events, self.events = self.events, []
        for name, data in events:
            if name == "on_part_begin":
                self.part_headers, self.part_name, self.part_data = {}, None, bytearray()
            elif name == "on_header_field":
                self.header_name += data
            elif name == "on_header_value":
                self.header_value += data
            elif name == "on_header_end":
                self.part_headers[self.header_name.strip().lower()] = self.header_value.strip()
                self.header_name = self.header_value = b""
            elif name == "on_headers_finished":
                self._begin_part()
            elif name == "on_part_data":
                await self._part_data(data)
            elif name == "on_part_end":
                if self.in_file:
                    self.in_file, self.file_done = False, True
                elif self.part_name is not None and self.part_name not in self.fields:
                    self.fields[self.part_name] = self.part_data.decode("utf-8", "replace")

    def _begin_part(self) -> None:
        _, options = parse_options_header(self.part_headers.get(b"content-disposition"))
        name = options.get(b"name")
        if name is None:
            raise invalid_parameter('Each form part needs a Content-Disposition header with a "name".')
        self.part_name = name.decode("utf-8", "replace")
        if self.part_name != "file" and b"filename" not in options:
            if len(self.fields) >= MAX_FIELDS:
                raise invalid_parameter(f"The form has more than {MAX_FIELDS} fields. " + _NEEDS_FIELDS)
            return
        if self.part_name != "file" or self.file is not None:
            raise invalid_parameter("The form takes one file, in the field named file (sent last).")
        self._check_policy()
        self.in_file = True
        self.file = SpooledTemporaryFile(max_size=_SPOOL_BYTES)

    def _check_policy(self) -> None:
        """Everything the policy decides, before a byte of the file is read."""
        policy, signature, key = (self.fields.get(n) for n in ("policy", "Signature", "key"))
        if policy is None or signature is None or key is None:
            raise invalid_parameter(_NEEDS_FIELDS)
        doc = self.store.open_policy(policy, signature)
        if not key.startswith(doc["dir"] + "/") or key.count("/") != doc["dir"].count("/") + 1:
            raise ServiceError(Code.ACCESS_DENIED,
                               f"key must be {doc['dir']}/<file name>, as the policy allows.")
        self.key, self.doc = key, doc
        part_length = self.part_headers.get(b"content-length", b"").strip()
        if part_length.isdigit() and int(part_length) > doc["max_bytes"]:
            raise self._too_large()
        if self.declared is not None and self.declared > doc["max_bytes"] + FORM_ALLOWANCE:
            raise self._too_large()

    async def _part_data(self, data: bytes) -> None:
        if self.in_file:
            assert self.file is not None and self.doc is not None
            self.file_size += len(data)
            if self.file_size > self.doc["max_bytes"]:
                raise self._too_large()
            await run_in_threadpool(self.file.write, data)
        elif not self.file_done:
            if len(self.part_data) + len(data) > FIELD_MAX_BYTES:
                raise invalid_parameter(f"The form field {self.part_name!r} is longer than "
                                        f"{FIELD_MAX_BYTES // 1024} KB. " + _NEEDS_FIELDS)
            self.part_data += data

    def _too_large(self) -> ServiceError:
        assert self.doc is not None
        return ServiceError(Code.ENTITY_TOO_LARGE,
                            f"The file is larger than {self.doc['max_bytes'] // 2**20} MB, the limit of "
                            "this policy. Send a smaller file.")

    def _close(self) -> None:
        if self.file is not None:
            self.file.close()
