"""Results and uploads as objects in an S3-compatible bucket (AWS S3, MinIO, Ceph RGW, R2, ...), so API
and worker processes on many machines share them without a shared disk.

Keys, under the `s3_prefix`: `results/<task_id>.<attempt>.mp4` (one object per attempt that finished
encoding; `results/<task_id>.mp4` for a result stored before per-attempt files) and `uploads/<key>`.

What stays local: the pipeline encodes into a temp file (`temp_result`) in `<data_dir>/partial/`, and
`put_result` uploads it with boto3's `upload_file` (multipart above 8 MiB); an object appears only when
its upload completes, so readers never see half a video. What can be partial: a killed worker's temp
files, and the multipart uploads it left unfinished (invisible, but billed); `partial_results` lists
both and the sweeper removes (aborts) those of tasks no longer RUNNING.

Links (`s3_links`):

- "redirect" (the default): `video_url` is wanserve's own signed link, the same form as with local
  storage; following it, wanserve checks the signature and expiry, then answers 307 with a presigned S3
  URL minted on the spot and valid for minutes. The link lives exactly as long as the task (24 h after
  it ends), whatever signs the S3 URLs: SigV4 presigned URLs are capped at 7 days and die with the
  temporary credentials that signed them (instance roles, STS: often an hour or a few), which would cut
  a 24 h link short. wanserve also refuses a link once its task expired or the object is gone (a
  DashScope-shaped 403/404 rather than S3's XML), and the bucket stays private. Clients must follow
  redirects (browsers, requests and httpx with follow_redirects do; curl needs -L); ranges and HEAD work
  because each request gets its own presigned URL for its method.
- "direct": `video_url` is the presigned S3 GET URL itself, expiring with the task (as the hosted
  service's OSS links do): clients need reach the bucket's endpoint only, and wanserve serves no
  download traffic at all. Only safe with long-lived keys (`s3_access_key_id`): with temporary
  credentials a link dies when they do.

Either way the endpoint in the S3 URL (`s3_endpoint_url`) must be reachable by the clients.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO, Literal

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from ..config import Settings
from ..errors import ServiceError, invalid_parameter, not_found
from .links import check_result_link, result_link
from .local import _SAFE_SEGMENT, _parse_result_name, _result_name
from .signing import Signer

LinkStyle = Literal["redirect", "direct"]
REDIRECT_SECONDS = 600  # a redirect's presigned URL: long enough to start a download, no longer
PRESIGN_MAX_SECONDS = 7 * 24 * 3600  # SigV4's cap on a presigned URL's lifetime
_MISSING_CODES = {"NoSuchKey", "NoSuchUpload"}  # GetObject's; HeadObject answers a bare 404
_TRANSFER = TransferConfig(multipart_threshold=8 * 2**20, multipart_chunksize=16 * 2**20)


def open_s3(settings: Settings, signer: Signer) -> S3Storage:
    """The S3 storage the `s3_*` settings describe. Credentials: the settings if given, else boto3's
    default chain (environment, shared config files, instance or container role)."""
    if not settings.s3_bucket:
        raise ValueError('storage = "s3" needs s3_bucket (WANSERVE_S3_BUCKET): the bucket to store results '
                         "and uploads in.")
    config = Config(signature_version="s3v4", retries={"mode": "standard"}, max_pool_connections=32,
                    s3={"addressing_style": settings.s3_addressing_style})
    keys: dict[str, str] = {}
    if settings.s3_access_key_id or settings.s3_secret_access_key:
        keys = {"aws_access_key_id": settings.s3_access_key_id,
                "aws_secret_access_key": settings.s3_secret_access_key}
    client = boto3.session.Session().client(  # one client, shared by threads (clients are thread-safe)
        "s3", endpoint_url=settings.s3_endpoint_url or None, region_name=settings.s3_region or None,
        config=config, **keys)
    return S3Storage(client, settings.s3_bucket, settings.s3_prefix, settings.data_dir, signer,
                     links=settings.s3_links)


class S3Storage:
    def __init__(self, client: Any, bucket: str, prefix: str, data_dir: Path, signer: Signer, *,
                 links: LinkStyle = "redirect") -> None:
        self.client, self.bucket, self.signer, self.links = client, bucket, signer, links
        self.prefix = prefix if not prefix or prefix.endswith("/") else prefix + "/"
        self.partial = data_dir / "partial"
        self.partial.mkdir(parents=True, exist_ok=True)

    # -- results ------------------------------------------------------------------------

    def _result_key(self, task_id: str, attempt: int | None) -> str:
        return f"{self.prefix}results/{_result_name(task_id, attempt)}"

    @contextlib.contextmanager
    def temp_result(self, task_id: str) -> Iterator[Path]:
        path = self.partial / f"{task_id}.{uuid.uuid4().hex[:12]}.mp4"
        try:
            yield path
        finally:
            path.unlink(missing_ok=True)

    def put_result(self, task_id: str, attempt: int, source: Path) -> None:
        """Upload, then drop the temp file (as a local move would): the object appears whole or not at
        all, however large (a multipart upload is invisible until completed)."""
        self.client.upload_file(str(source), self.bucket, self._result_key(task_id, attempt),
                                ExtraArgs={"ContentType": "video/mp4"}, Config=_TRANSFER)
        source.unlink(missing_ok=True)

    def remove_result(self, task_id: str) -> None:
        for key in [self._result_key(task_id, None), *self._attempt_keys(task_id)]:
            self.client.delete_object(Bucket=self.bucket, Key=key)

    def _attempt_keys(self, task_id: str) -> Iterator[str]:
        for name in self._result_names(f"{task_id}."):
            if (_parse_result_name(name) or ("", None))[0] == task_id:
                yield f"{self.prefix}results/{name}"

    def remove_attempt(self, task_id: str, attempt: int | None) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._result_key(task_id, attempt))

    def result_files(self) -> Iterator[tuple[str, int | None]]:
        for name in self._result_names(""):
            parsed = _parse_result_name(name)
            if parsed is not None:
                yield parsed

    def _result_names(self, start: str) -> Iterator[str]:
        """Names of the objects directly under results/ that start with `start`."""
        folder = f"{self.prefix}results/"
        for page in self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=folder + start):
            for obj in page.get("Contents", []):
                name = obj["Key"][len(folder):]
                if "/" not in name:
                    yield name

    def partial_results(self) -> Iterator[tuple[str, str]]:
        """This machine's temp results (and the encoder's `.<name>.<hex>.part` files beside them), then the
        bucket's unfinished multipart uploads of results (handle: the JSON [key, upload id])."""
        yield from self.temp_files()
        folder = f"{self.prefix}results/"
        for page in self.client.get_paginator("list_multipart_uploads").paginate(
                Bucket=self.bucket, Prefix=folder):
            for upload in page.get("Uploads", []):
                parsed = _parse_result_name(upload["Key"][len(folder):])
                task_id = parsed[0] if parsed is not None else ""
                yield task_id, json.dumps([upload["Key"], upload["UploadId"]])

    def temp_files(self) -> Iterator[tuple[str, str]]:
        """This machine's temp results and encoder `.part` files (`<data_dir>/partial/`), nothing remote."""
        for p in self.partial.iterdir():
            yield p.name.lstrip(".").split(".", 1)[0], p.name

    def remove_partial(self, handle: str) -> None:
        if _SAFE_SEGMENT.match(handle):  # a local temp file (a JSON handle never matches)
            (self.partial / handle).unlink(missing_ok=True)
            return
        key, upload_id = json.loads(handle)
        try:
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
        except ClientError as exc:
            if _code(exc) != "NoSuchUpload":  # completed or aborted meanwhile: nothing left to do
                raise

    # -- links --------------------------------------------------------------------------

    def result_url(self, task_id: str, attempt: int | None, base_url: str, expires_s: int) -> str:
        if self.links == "direct":
            seconds = min(max(expires_s - int(time.time()), 1), PRESIGN_MAX_SECONDS)
            return self._presign("GET", self._result_key(task_id, attempt), seconds)
        return result_link(self.signer, base_url, _result_name(task_id, attempt), expires_s)

    def result_location(self, name: str, expires: str, signature: str, method: str = "GET") -> str:
        """Where a signed link (`result_url`, "redirect") sends its client: a presigned URL for `method`
        (GET or HEAD) valid for a few minutes, once the link checks out and the object exists."""
        check_result_link(self.signer, name, expires, signature)
        if not _SAFE_SEGMENT.match(name) or _parse_result_name(name) is None:
            raise not_found("Not found! The video has been removed.")
        key = f"{self.prefix}results/{name}"
        try:
            self.client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if _missing(exc):
                raise not_found("Not found! The video has been removed.") from None
            raise
        left = int(expires) - int(time.time())
        return self._presign(method, key, max(1, min(REDIRECT_SECONDS, left)))

    def _presign(self, method: str, key: str, seconds: int) -> str:
        operation = "head_object" if method == "HEAD" else "get_object"
        return self.client.generate_presigned_url(operation, Params={"Bucket": self.bucket, "Key": key},
                                                  ExpiresIn=seconds)

    # -- uploads ------------------------------------------------------------------------

    def _upload_key(self, key: str) -> str:
        """The object key of upload `key`, held to the names local storage accepts, so an upload key
        means the same on every backend."""
        parts = key.split("/")
        if not all(_SAFE_SEGMENT.match(p) and p not in (".", "..") for p in parts):
            raise invalid_parameter(f"Invalid upload key {key!r}: "
                                    "use plain file names (letters, digits, '.', '_', '-').")
        return f"{self.prefix}uploads/{key}"

    def save_upload(self, key: str, data: bytes | BinaryIO) -> None:
        """One PUT (uploads are capped far below S3's 5 GiB single-PUT limit): atomic, and nothing partial
        to clean up if the process dies. boto3 sends a seekable file from its current position; any other
        stream is spooled to disk first, so it can be sized and resent on a retry."""
        object_key = self._upload_key(key)
        if isinstance(data, bytes) or data.seekable():
            self.client.put_object(Bucket=self.bucket, Key=object_key, Body=data)
            return
        with tempfile.TemporaryFile(dir=self.partial) as spool:
            shutil.copyfileobj(data, spool, 1 << 20)
            spool.seek(0)
            self.client.put_object(Bucket=self.bucket, Key=object_key, Body=spool)

    def upload_exists(self, key: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=self._upload_key(key))
        except ClientError as exc:
            if _missing(exc):
                return False
            raise
        return True

    def read_upload(self, key: str, max_bytes: int) -> bytes:
        """A ranged GET of the first max_bytes + 1 bytes: an oversized upload costs no more than that."""
        try:
            obj = self.client.get_object(Bucket=self.bucket, Key=self._upload_key(key),
                                         Range=f"bytes=0-{max_bytes}")
        except ClientError as exc:
            if _code(exc) == "InvalidRange":  # an empty object has no byte 0
                return b""
            if _missing(exc):
                raise FileNotFoundError(key) from None
            raise OSError(f"s3://{self.bucket}/{self._upload_key(key)}: {exc}") from None
        except BotoCoreError as exc:
            raise OSError(f"s3://{self.bucket}: {exc}") from None
        with contextlib.closing(obj["Body"]) as body:
            return body.read(max_bytes + 1)

    def remove_upload(self, key: str) -> None:
        with contextlib.suppress(ServiceError):
            self.client.delete_object(Bucket=self.bucket, Key=self._upload_key(key))

    # -- health -------------------------------------------------------------------------

    def ping(self) -> None:
        """The bucket answers with these credentials, and temp results can be written here."""
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except (ClientError, BotoCoreError) as exc:
            raise OSError(f"S3 bucket {self.bucket!r} is not reachable: {exc}") from None
        if not os.access(self.partial, os.W_OK | os.X_OK):
            raise PermissionError(f"{self.partial} is not writable")


def _missing(exc: ClientError) -> bool:
    """Whether S3 said the object is not there (by HTTP status: HEAD answers carry no error code)."""
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return status == 404 or _code(exc) in _MISSING_CODES


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))
