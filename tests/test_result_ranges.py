"""Result URLs answer HEAD and byte ranges, so players can seek and downloads can resume."""

from __future__ import annotations

import time

import httpx
import pytest

from wanserve.api.dashscope.files import UNSATISFIABLE, byte_range

CONTENT = bytes(range(256)) * 40  # 10240 bytes, each position recognisable


@pytest.fixture
def result_url(make_server) -> str:
    """A signed URL of a stored 10240-byte result."""
    server = make_server(workers=0)
    storage = server.services.storage
    with storage.temp_result("t") as tmp:
        tmp.write_bytes(CONTENT)
        storage.put_result("t", 1, tmp)
    return storage.result_url("t", 1, server.base, int(time.time()) + 600)


def test_head_answers_the_length_type_and_range_support_without_a_body(result_url):
    r = httpx.head(result_url)
    assert r.status_code == 200
    assert r.headers["content-length"] == str(len(CONTENT))
    assert r.headers["content-type"] == "video/mp4"
    assert r.headers["accept-ranges"] == "bytes"
    assert r.content == b""


def test_head_with_a_forged_signature_is_403_like_get(result_url):
    forged = result_url.replace("Signature=", "Signature=x")
    assert httpx.head(forged).status_code == 403
    assert httpx.get(forged).status_code == 403


def test_a_closed_range_returns_exactly_those_bytes(result_url):
    r = httpx.get(result_url, headers={"Range": "bytes=100-299"})
    assert r.status_code == 206
    assert r.content == CONTENT[100:300]
    assert r.headers["content-range"] == f"bytes 100-299/{len(CONTENT)}"
    assert r.headers["content-length"] == "200"


def test_an_open_range_returns_the_rest_of_the_file(result_url):
    r = httpx.get(result_url, headers={"Range": "bytes=10000-"})
    assert r.status_code == 206
    assert r.content == CONTENT[10000:]


def test_a_suffix_range_returns_the_last_bytes(result_url):
    r = httpx.get(result_url, headers={"Range": "bytes=-300"})
    assert r.status_code == 206
    assert r.content == CONTENT[-300:]
    assert r.headers["content-range"] == f"bytes {len(CONTENT) - 300}-{len(CONTENT) - 1}/{len(CONTENT)}"


def test_a_range_past_the_end_is_416_naming_the_size(result_url):
    r = httpx.get(result_url, headers={"Range": f"bytes={len(CONTENT)}-"})
    assert r.status_code == 416
    assert r.headers["content-range"] == f"bytes */{len(CONTENT)}"


def test_head_with_a_range_answers_its_headers(result_url):
    r = httpx.head(result_url, headers={"Range": "bytes=0-9"})
    assert r.status_code == 206
    assert r.headers["content-length"] == "10" and r.content == b""


def test_a_get_without_range_still_returns_the_whole_file(result_url):
    r = httpx.get(result_url)
    assert r.status_code == 200 and r.content == CONTENT
    assert r.headers["accept-ranges"] == "bytes"


@pytest.mark.parametrize(("header", "expected"), [
    ("bytes=0-0", (0, 0)),
    ("bytes=5-99999", (5, 99)),  # the end is clipped to the file
    ("bytes=-1000", (0, 99)),  # a suffix longer than the file: all of it
    ("bytes=-0", UNSATISFIABLE),
    ("bytes=100-", UNSATISFIABLE),
    ("bytes=9-3", None),  # invalid: ignored, the whole file
    ("bytes=0-1,5-6", None),  # several ranges: ignored
    ("items=0-1", None),
    ("", None),
])
def test_range_headers_are_read_as_rfc_9110_says(header, expected):
    assert byte_range(header, 100) == expected
