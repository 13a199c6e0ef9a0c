"""Bounded input (issue 10, hostile clients): create bodies and uploads are refused while they are read,
never held whole; inline data: media leaves the task row and becomes an upload of the caller's account.

Byte counts are taken on the client: each body comes from a generator that counts what httpx pulled from
it. The client's socket send buffer is kept small (64 KiB) so that what was pulled is what the server
read, plus at most a few hundred KB in kernel buffers, not whatever the loopback buffers can absorb.
"""

from __future__ import annotations

import base64
import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from wanserve.catalog.models import NEG_PROMPT_MAX, all_names, find_model
from wanserve.config import Settings, SettingsError
from wanserve.media.clip import WAN27_CLIP_LIMITS
from wanserve.media.inputs import WAN27_IMAGE_LIMITS
from wanserve.tasks.schema import tasks, uploads

from .conftest import ASYNC, Server, image_bytes

MB = 2**20
CHUNK = b"\0" * (64 * 1024)
SMALL_SEND_BUFFER = [(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)]


class Counted:
    """A request body of `size` bytes (after `head`, before `tail`) from one reused chunk, counting
    what was pulled from it."""

    def __init__(self, size: int, head: bytes = b"", tail: bytes = b"") -> None:
        self.size, self.head, self.tail, self.pulled = size, head, tail, 0

    @property
    def length(self) -> int:
        return len(self.head) + self.size + len(self.tail)

    def __iter__(self) -> Iterator[bytes]:
        self.pulled += len(self.head)
        yield self.head
        sent = 0
        while sent < self.size:
            piece = CHUNK[: min(len(CHUNK), self.size - sent)]
            sent += len(piece)
            self.pulled += len(piece)
            yield piece
        self.pulled += len(self.tail)
        yield self.tail


def post(url: str, body: Counted, *, declare_length: bool, headers: dict[str, str]) -> httpx.Response:
    if declare_length:
        headers = {**headers, "Content-Length": str(body.length)}
    transport = httpx.HTTPTransport(socket_options=SMALL_SEND_BUFFER)
    with httpx.Client(transport=transport, timeout=30) as client:
        return client.post(url, content=iter(body), headers=headers)


def memory_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(field)


def reset_peak_memory() -> bool:
    """Reset VmHWM (the peak resident set) to the current one; False where the kernel does not allow it."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def count(server: Server, table) -> int:
    with server.services.db.begin() as conn:
        return conn.execute(select(func.count()).select_from(table)).scalar_one()


def upload_files(server: Server) -> list[Path]:
    return [p for p in (server.services.settings.data_dir / "uploads").rglob("*") if p.is_file()]


# -- the create body --------------------------------------------------------------------------------


def test_the_default_body_limit_fits_the_largest_legal_request_and_must_be_positive():
    # wan2.7 takes a first_clip and a last_frame together: both inline is the largest legal body
    largest_media = WAN27_CLIP_LIMITS.max_bytes + WAN27_IMAGE_LIMITS.max_bytes
    prompts = max(find_model(n).prompt_max for n in all_names()) + NEG_PROMPT_MAX  # type: ignore[union-attr]
    largest = -(-largest_media // 3) * 4 + prompts * 12 + 4096  # base64; worst-case JSON escapes; the rest
    assert largest <= Settings().max_body_mb * MB < largest + 2 * MB
    with pytest.raises(SettingsError, match="max_body_mb: must be greater than 0"):
        Settings(max_body_mb=0)


@pytest.mark.parametrize("declare_length", [True, False], ids=["content-length", "chunked"])
def test_a_20_mb_create_body_over_the_limit_is_refused_without_being_held(make_server, declare_length):
    server = make_server(workers=0, max_body_mb=1)
    url = f"{server.api}/services/aigc/video-generation/video-synthesis"
    headers = {**ASYNC, "Authorization": f"Bearer {server.key}", "Content-Type": "application/json"}
    warm = Counted(10, b'{"model": "', b'"}')  # a small refused body first, so the path is warm
    assert post(url, warm, declare_length=declare_length, headers=headers).status_code == 400
    rss_before = memory_kb("VmRSS")
    peak_measured = reset_peak_memory()

    body = Counted(20 * MB, b'{"model": "wan2.6-t2v", "input": {"prompt": "', b'"}}')
    r = post(url, body, declare_length=declare_length, headers=headers)

    grown_kb = (memory_kb("VmHWM") if peak_measured else memory_kb("VmRSS")) - rss_before
    print(f"\n{'declared' if declare_length else 'chunked'} 20 MB body: pulled {body.pulled / MB:.2f} MB, "
          f"{'peak' if peak_measured else 'resident'} memory grew {grown_kb / 1024:.1f} MB")
    assert r.status_code == 400, r.text
    assert r.json()["code"] == "EntityTooLarge" and "1 MB" in r.json()["message"]
    assert "oss://" in r.json()["message"] and r.headers.get("connection") == "close"
    assert grown_kb < 5 * 1024
    assert body.pulled < (1 if declare_length else 2.5) * MB  # chunked: the 1 MB cap, then refused
    assert count(server, tasks) == 0


def test_a_body_under_the_limit_is_still_accepted(make_server):
    server = make_server(workers=0, max_body_mb=1)
    r = server.create({"model": "wan2.6-t2v", "input": {"prompt": "x" * (900 * 1024)}})
    assert r.status_code == 200, r.text


def test_an_over_long_http_url_is_refused_at_create(make_server):
    server = make_server(workers=0)
    r = server.create({"model": "wan2.2-i2v-flash",
                       "input": {"prompt": "x", "img_url": "https://example.com/" + "a" * 20000}})
    assert r.status_code == 400 and "the limit is 16384" in r.json()["message"]


# -- uploads ----------------------------------------------------------------------------------------


def policy_of(server: Server, model: str = "wan2.2-i2v-flash") -> dict:
    with server.client() as c:
        return c.get("/uploads", params={"action": "getPolicy", "model": model}).json()["data"]


def upload_body(fields: dict[str, str], size: int, part_headers: str = "") -> tuple[Counted, dict[str, str]]:
    boundary = "wanserve-hostile-boundary"
    head = "".join(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'
                   for name, value in fields.items())
    head += (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.bin"\r\n'
             f"{part_headers}Content-Type: application/octet-stream\r\n\r\n")
    body = Counted(size, head.encode(), f"\r\n--{boundary}--\r\n".encode())
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def form_fields(policy: dict, **override: str) -> dict[str, str]:
    return {"OSSAccessKeyId": "wanserve", "Signature": policy["signature"], "policy": policy["policy"],
            "key": f"{policy['upload_dir']}/big.bin", "x-oss-object-acl": "private",
            "x-oss-forbid-overwrite": "true", "success_action_status": "200", **override}


@pytest.mark.parametrize("declare_length", [True, False], ids=["content-length", "chunked"])
def test_an_unauthenticated_200_mb_upload_with_a_bogus_policy_is_refused_before_1_mb_is_read(
        make_server, declare_length):
    server = make_server(workers=0)
    body, headers = upload_body({"OSSAccessKeyId": "wanserve", "Signature": "forged", "policy": "e30",
                                 "key": "dashscope-instant/x/y/big.bin"}, 200 * MB)
    r = post(f"{server.api}/uploads", body, declare_length=declare_length, headers=headers)
    print(f"\nbogus policy, 200 MB file: pulled {body.pulled / 1024:.0f} KB")
    assert r.status_code == 403 and r.json()["code"] == "AccessDenied", r.text
    assert body.pulled < MB
    assert count(server, uploads) == 0 and upload_files(server) == []


def test_an_expired_policy_or_a_key_outside_it_is_refused_before_the_file_is_read(make_server):
    server = make_server(workers=0)
    policy = policy_of(server)
    old, sig = server.services.uploads.make_policy("default", "wan2.6-t2v", policy["upload_dir"], 1, MB)
    for fields in (form_fields({**policy, "policy": old, "signature": sig}),
                   form_fields(policy, key="dashscope-instant/elsewhere/d/big.bin")):
        body, headers = upload_body(fields, 200 * MB)
        r = post(f"{server.api}/uploads", body, declare_length=True, headers=headers)
        assert r.status_code == 403 and body.pulled < MB, (r.text, body.pulled)


def test_a_declared_size_over_the_policy_limit_is_refused_before_the_file_is_read(make_server):
    server = make_server(workers=0, upload_max_mb=1)
    policy = policy_of(server)
    for part_headers, declare_length in (("", True), (f"Content-Length: {50 * MB}\r\n", False)):
        body, headers = upload_body(form_fields(policy), 50 * MB, part_headers)
        r = post(f"{server.api}/uploads", body, declare_length=declare_length, headers=headers)
        assert r.status_code == 400 and r.json()["code"] == "EntityTooLarge", r.text
        assert "1 MB" in r.json()["message"] and body.pulled < MB
    assert count(server, uploads) == 0 and upload_files(server) == []


def test_an_undeclared_file_over_the_limit_is_refused_while_it_is_read(make_server):
    server = make_server(workers=0, upload_max_mb=1)
    body, headers = upload_body(form_fields(policy_of(server)), 50 * MB)
    r = post(f"{server.api}/uploads", body, declare_length=False, headers=headers)
    assert r.status_code == 400 and r.json()["code"] == "EntityTooLarge", r.text
    assert body.pulled < 2.5 * MB  # the 1 MB limit, then refused
    assert count(server, uploads) == 0 and upload_files(server) == []


def test_a_file_at_the_limit_is_stored_and_fields_must_come_first(make_server):
    server = make_server(workers=0, upload_max_mb=1)
    policy = policy_of(server)
    body, headers = upload_body(form_fields(policy), MB)
    r = post(f"{server.api}/uploads", body, declare_length=False, headers=headers)
    assert r.status_code == 200, r.text
    key = f"{policy['upload_dir']}/big.bin"
    assert len(server.services.storage.read_upload(key, 2 * MB)) == MB
    with server.services.db.begin() as conn:
        assert conn.execute(select(uploads.c.size).where(uploads.c.key == key)).scalar_one() == MB

    fields = form_fields(policy_of(server))  # the file first, the policy after it: refused at the file
    boundary = "b"
    form = (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a"\r\n\r\nxyz\r\n'
            + "".join(f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'
                      for k, v in fields.items()) + f"--{boundary}--\r\n")
    r = httpx.post(f"{server.api}/uploads", content=form.encode(),
                   headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert r.status_code == 400 and "policy, Signature and key" in r.json()["message"]
    r = httpx.post(f"{server.api}/uploads", content=b"not a form", headers={"Content-Type": "text/plain"})
    assert r.status_code == 400 and r.json()["code"] == "InvalidParameter"


# -- inline media -----------------------------------------------------------------------------------


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def stored_row(server: Server, task_id: str) -> tuple[dict, int]:
    """The task's stored request and the size of the whole row as the database keeps it."""
    with server.services.db.begin() as conn:
        row = conn.execute(select(tasks).where(tasks.c.id == task_id)).mappings().one()
        request_chars = conn.execute(select(func.length(tasks.c.request))
                                     .where(tasks.c.id == task_id)).scalar_one()
    size = len(json.dumps(dict(row), default=str))
    return row["request"], max(size, request_chars)


def test_a_10_mb_data_image_leaves_the_row_small_and_becomes_an_upload_of_the_caller(make_server):
    server = make_server(workers=0)
    data = os.urandom(10 * MB)
    r = server.create({"model": "wan2.7-i2v", "input": {"prompt": "x", "media": [
        {"type": "first_frame", "url": data_url(data)}]}})
    assert r.status_code == 200, r.text
    request, row_size = stored_row(server, r.json()["output"]["task_id"])
    print(f"\n10 MB data: image: task row {row_size} bytes")
    assert row_size < 64 * 1024
    media = request["media"][0]
    assert media["url"] == "data:image/png;base64," and media["upload_key"].startswith("inline/")
    with server.services.db.begin() as conn:
        up = conn.execute(select(uploads)).mappings().one()
    assert (up["key"], up["account_id"], up["model"], up["size"]) == (
        media["upload_key"], "default", "wan2.7-i2v", len(data))
    assert server.services.storage.read_upload(up["key"], 20 * MB) == data


def test_an_inline_image_is_read_for_its_own_account_without_the_oss_header(make_server):
    server = make_server(workers=1)
    r = server.create({"model": "wan2.2-i2v-flash", "input": {"prompt": "spin",
                       "img_url": data_url(image_bytes(640, 480))}, "parameters": {"resolution": "480P"}})
    out = server.wait(r.json()["output"]["task_id"])["output"]
    assert out["task_status"] == "SUCCEEDED", out


@pytest.mark.parametrize("case", ["created", "invalid-json"])
def test_a_large_create_body_is_held_about_once_and_nothing_stays_after(make_server, case):
    """A create body was joined from its pieces, decoded to a string, parsed, dumped twice and its data: URL
    copied and decoded again: 4x its size at the peak (a 150 MiB body: 729 MB of RSS). Its large data: URLs
    now stay as the pieces they arrived in and are decoded straight to a file."""
    import gc
    import tracemalloc

    server = make_server(workers=0)
    block = b"QUJD" * 16384  # 64 KiB of base64, sent 384 times: a 24 MiB first_clip (under its 100 MiB)
    head, tail = json.dumps({"model": "wan2.7-i2v", "input": {"prompt": "continue", "media": [
        {"type": "first_clip", "url": "data:video/mp4;base64,@"}]}}).encode().split(b"@")
    pieces = [head] + [block] * 384 + ([tail] if case == "created" else [])
    length = sum(len(p) for p in pieces)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        r = httpx.post(f"{server.api}/services/aigc/video-generation/video-synthesis", content=iter(pieces),
                       headers={**ASYNC, "Authorization": f"Bearer {server.key}",
                                "Content-Length": str(length)}, timeout=60)
        peak = tracemalloc.get_traced_memory()[1] - before
        gc.collect()
        after = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    print(f"\n{length / MB:.0f} MB create body ({case}): peak {peak / MB:.1f} MB, "
          f"held after {after / MB:.2f} MB")
    if case == "created":
        assert r.status_code == 200, r.text
        with server.services.db.begin() as conn:
            up = conn.execute(select(uploads)).mappings().one()
        assert up["size"] == 384 * 49152
        assert server.services.storage.read_upload(up["key"], 20 * MB)[:6] == b"ABCABC"
    else:
        assert r.status_code == 400 and r.json()["code"] == "BadRequest.IllegalInput", r.text
    assert peak < 1.5 * length + 4 * MB
    assert after < 2 * MB  # none of the body (a few first-request caches)


@pytest.mark.parametrize(("url", "code", "words"), [
    ("data:image/png;base64,not*valid*base64!!", "InvalidParameter", "does not contain valid base64"),
    (data_url(b"\0" * (11 * MB)), "InvalidFile.Size", "larger than 10 MB"),
    ("data:image/png;base64,aGVsbG8gd29ybGQ=", "InvalidImage.FileFormat", ""),
], ids=["not-base64", "too-big", "not-an-image"])
def test_a_bad_data_url_still_fails_the_task_with_its_code_and_the_row_stays_small(make_server, url, code,
                                                                                      words):
    server = make_server(workers=1)
    r = server.create({"model": "wan2.2-i2v-flash", "input": {"prompt": "x", "img_url": url}})
    assert r.status_code == 200, r.text
    task_id = r.json()["output"]["task_id"]
    assert stored_row(server, task_id)[1] < 64 * 1024
    out = server.wait(task_id)["output"]
    assert out["task_status"] == "FAILED" and out["code"] == code and words in out["message"], out
    assert out["message"].startswith("input.img_url") or code == "InvalidImage.FileFormat"


def test_a_data_url_without_base64_is_still_refused_at_create(make_server):
    server = make_server(workers=0)
    r = server.create({"model": "wan2.2-i2v-flash",
                       "input": {"prompt": "x", "img_url": "data:image/png,abc"}})
    assert r.status_code == 400
    assert "a data: URL must look like data:<mime>;base64,<data>" in r.json()["message"]
    assert count(server, uploads) == 0


def test_no_upload_is_left_behind_when_the_create_fails_after_storing_it(make_server, monkeypatch):
    server = make_server(workers=0)

    def refuse(**_: object) -> None:
        raise RuntimeError("the database went away")

    monkeypatch.setattr(server.services.store, "create", refuse)
    r = server.create({"model": "wan2.2-i2v-flash", "input": {"prompt": "x",
                       "img_url": data_url(image_bytes(640, 480))}})
    assert r.status_code == 500
    assert count(server, uploads) == 0 and upload_files(server) == []


def test_an_idempotent_replay_keeps_only_the_first_tasks_inline_upload(make_server):
    server = make_server(workers=0)
    body = {"model": "wan2.2-i2v-flash", "input": {"prompt": "x", "img_url": data_url(image_bytes(640, 480))}}
    first = server.create(body, **{"X-Idempotency-Key": "k1"}).json()["output"]["task_id"]
    again = server.create(body, **{"X-Idempotency-Key": "k1"}).json()["output"]["task_id"]
    assert first == again and count(server, uploads) == 1 and len(upload_files(server)) == 1
