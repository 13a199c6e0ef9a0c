"""wanserve's own signed result links, `<base>/files/results/<name>?Expires=...&Signature=...`, for
backends that do not hand out their own.

`LocalStorage` and `S3Storage` ("redirect" links) both sign with these, so a link's form does not depend
on where the file lives and a deployment can move between backends without changing what clients see.
"""

from __future__ import annotations

import time

from ..errors import access_denied
from .signing import Signer

RESULTS_ROUTE = "/files/results"  # the API route that serves a result behind its signed link


def _signed_text(name: str, expires: str) -> str:
    return f"results/{name}\n{expires}"


def result_link(signer: Signer, base_url: str, name: str, expires_s: int) -> str:
    """The link that grants GET on result file `name` until `expires_s` (epoch seconds)."""
    signature = signer.sign(_signed_text(name, str(expires_s)))
    return f"{base_url.rstrip('/')}{RESULTS_ROUTE}/{name}?Expires={expires_s}&Signature={signature}"


def check_result_link(signer: Signer, name: str, expires: str, signature: str) -> None:
    """AccessDenied unless the link was signed here for `name` and has not expired: a link is checked
    before anything is looked up, so a forged one learns nothing about what exists."""
    if not (expires.isascii() and expires.isdigit()
            and signer.verify(_signed_text(name, expires), signature)):
        raise access_denied("The URL signature does not match; use the video_url exactly as the task "
                            "query returned it.")
    if int(expires) < time.time():
        raise access_denied("Request has expired: video URLs are valid for 24 hours after the task ends.")
