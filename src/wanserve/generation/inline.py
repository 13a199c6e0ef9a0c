"""Inline media out of the task row: at create, each `data:` URL of a request becomes an upload of the
caller's account (`inline/<id>/<role>`), and the stored request names that upload instead of carrying
the bytes, so a task row stays small whatever the input.

The worker reads such an upload for the task's own account whether or not the request allowed oss://
references (`MediaInput.upload_key`, `inputs.fetch_inputs`). A data: URL that cannot be decoded (not
base64, or larger than the model takes for its role) is not stored: the input keeps the error the
fetch gives, and the task fails with it when it runs, as it always has (create refuses only what the
body's form shows wrong; media problems end the task FAILED).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping

from ..catalog.models import find_model
from ..errors import ServiceError
from ..media.fetch import LargeDataUrl, decode_data_url, url_form
from ..storage.uploads import UploadStore
from .inputs import max_bytes_for
from .request import GenerationRequest, MediaError, MediaInput

INLINE_PREFIX = "inline"
_HEAD_MAX = 100  # characters of a data: URL's head (data:<mime>;base64,) kept in the row


def store_inline_media(
        req: GenerationRequest, uploads: UploadStore, account_id: str,
        large: Mapping[str, LargeDataUrl] | None = None) -> tuple[GenerationRequest, list[str]]:
    """`req` with its data: URLs stored as uploads of `account_id`, and the keys stored (for
    `remove_inline_media` if the create does not go through). Nothing is left stored if it raises. `large`:
    the data: URLs the body reader kept out of the body (api/bodies.py), by the placeholder that names
    each in `req`; they are decoded from their pieces straight to a file."""
    if not any(url_form(m.url) == "data" for m in req.media):
        return req, []
    spec = find_model(req.model)
    assert spec is not None, req.model  # the normaliser stored a canonical catalog name
    stored: list[str] = []
    media: list[MediaInput] = []
    try:
        for item in req.media:
            if url_form(item.url) != "data":
                media.append(item)
                continue
            head = item.url[: item.url.find(",") + 1][:_HEAD_MAX]  # the normaliser stripped the URL
            big = (large or {}).get(item.url)
            try:
                limit = max_bytes_for(spec, item.role)
                data = (big.decode(field=item.field, max_bytes=limit) if big is not None
                        else decode_data_url(item.url, field=item.field, max_bytes=limit))
            except ServiceError as exc:
                media.append(item.model_copy(update={
                    "url": head, "error": MediaError(code=exc.code.value, message=exc.message)}))
                continue
            key = f"{INLINE_PREFIX}/{uuid.uuid4().hex}/{item.role}"
            try:
                uploads.save(key, account_id, req.model, data)
            finally:
                if not isinstance(data, bytes):
                    data.close()
            stored.append(key)
            media.append(item.model_copy(update={"url": head, "upload_key": key}))
    except BaseException:
        uploads.remove(stored)
        raise
    return req.model_copy(update={"media": media}), stored


def remove_inline_media(uploads: UploadStore, keys: list[str]) -> None:
    """Remove what `store_inline_media` stored, for a create that did not go through."""
    uploads.remove(keys)
