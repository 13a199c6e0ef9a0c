"""Random and hostile requests against one running server (contract sections 2, 5.7, 6).

Whatever arrives, the API answers 200 or a 4xx, never a 5xx; every error is exactly the contract's
error body {request_id, code, message} with no Python internals in it; a 200 create is
{request_id, output: {task_id, task_status: PENDING}} and stores exactly one task, an error stores
none; an accepted body is stored only with values its model allows.

One worker-less server serves the whole module (nothing is rendered or fetched). The tests at the
end pin inputs that once gave 500s.
"""

from __future__ import annotations

import json
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from wanserve.catalog.models import (
    I2V_TEMPLATES,
    KF2V_TEMPLATES,
    NEG_PROMPT_MAX,
    T2V_SIZES,
    all_names,
    find_model,
)
from wanserve.tasks.schema import tasks

from .conftest import ASYNC, Server, running_server

FUZZ = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
ENDPOINTS = ("video-generation", "image2video")
TRACEBACK_MARKERS = ("Traceback", 'File "', '.py"')


# -- one server for the module --------------------------------------------------------------------


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """conftest's running_server(workers=0), built once for the module."""
    with running_server(tmp_path_factory.mktemp("data"), workers=0) as server:
        yield server


@pytest.fixture(scope="module")
def client(api: Server) -> Iterator[httpx.Client]:
    with api.client() as c:
        yield c


def task_count(server: Server) -> int:
    with server.services.db.begin() as conn:
        return conn.execute(select(func.count()).select_from(tasks)).scalar_one()


# -- strategies -------------------------------------------------------------------------------------

texts = st.one_of(
    st.text(max_size=40),  # any unicode but lone surrogates, control characters included
    st.text(st.characters(max_codepoint=0x1F), max_size=8),  # control characters only
    st.sampled_from(["", " ", "null", "true", "{}", "<script>", "'; DROP TABLE tasks; --", "../../etc/passwd",
                     "\u202e", "\ufeff", "猫" * 30, "Traceback"]),
)
scalars = st.one_of(
    st.none(), st.booleans(),
    st.integers(), st.integers(min_value=-(2**200), max_value=2**200),  # huge, but under 4300 digits
    st.sampled_from([2**31, 2**53 + 1, 2**63, 2**64, -(2**63) - 1]),
    st.floats(allow_nan=False, allow_infinity=False),
    texts,
)
json_values = st.recursive(
    scalars, lambda kids: st.lists(kids, max_size=4) | st.dictionaries(texts, kids, max_size=4),
    max_leaves=12)


def maybe(plausible: st.SearchStrategy) -> st.SearchStrategy:
    """Mostly a plausible value for a known key, sometimes any JSON value at all."""
    return st.one_of(plausible, plausible, json_values)


ALL_SIZES = [s for sizes in T2V_SIZES.values() for s in sizes]
urls = st.one_of(
    st.sampled_from(["https://example.com/a.png", "http://127.0.0.1:1/x.png", "http://",
                     "https://example.com/a.mp3", "data:image/png;base64,iVBORw0KGgo=",
                     "data:image/png,notbase64", "oss://dashscope-instant/a/b.png",
                     "file:///etc/passwd", "ftp://example.com/a.png", "", "   ",
                     " https://example.com/a.png ", "javascript:alert(1)", "HTTP://EXAMPLE.COM/A.PNG"]),
    texts,
)
media_item = st.fixed_dictionaries({}, optional={
    "type": maybe(st.sampled_from(["first_frame", "last_frame", "driving_audio", "first_clip",
                                   "reference_image", "video", "link", "FIRST_FRAME", ""])),
    "url": maybe(urls),
})
# For each known key: a mutation, mostly plausible, sometimes any JSON value at all.
INPUT_MUTATIONS = {
    "prompt": maybe(st.one_of(st.text(max_size=60), st.text(max_size=6000))),
    "negative_prompt": maybe(st.text(max_size=600)),
    "img_url": maybe(urls), "audio_url": maybe(urls),
    "first_frame_url": maybe(urls), "last_frame_url": maybe(urls),
    "template": maybe(st.sampled_from([*I2V_TEMPLATES[:4], *KF2V_TEMPLATES[:2], "nope", ""])),
    "media": maybe(st.lists(maybe(media_item), max_size=4)),
    "extend_prompt": maybe(st.booleans()),
    "function": maybe(st.just("video-synthesis")),
    "junk": json_values,
}
PARAMETER_MUTATIONS = {
    "size": maybe(st.sampled_from([*ALL_SIZES, "720P", "1280x720", "1280*720 ", "0*0", "-1*-1", ""])),
    "resolution": maybe(st.sampled_from(["480P", "720P", "1080P", "720p", "1080p", "2160P", " 720P", ""])),
    "duration": maybe(st.one_of(st.integers(-3, 20), st.sampled_from([5.0, 5.5, 2**40, -(2**40)]))),
    "prompt_extend": maybe(st.booleans()), "watermark": maybe(st.booleans()), "audio": maybe(st.booleans()),
    "shot_type": maybe(st.sampled_from(["single", "multi", "MULTI", "triple", ""])),
    "seed": maybe(st.one_of(st.integers(-10, 2**31 + 10), st.integers())),
    "ratio": maybe(st.sampled_from(["16:9", "1:1", "0:0"])),
    "junk": json_values,
}
junk_models = st.one_of(
    st.sampled_from(["", "wan2.6", "WAN2.6-T2V", "wan2.6-t2v ", "wanx-kf2v", "kf2v",
                     "wan2.7-i2v-2099-01-01"]),
    json_values,
)
DELETE = object()


@st.composite
def request_bodies(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    """(endpoint, body): a valid body for a random catalog model (any spelling), then 0-3 mutations,
    each replacing, adding or deleting one known key (or the model, input, parameters themselves)."""
    name = draw(st.sampled_from(all_names()))
    spec = find_model(name)
    assert spec is not None
    image = "https://example.com/first.png"
    inp: dict[str, Any] = {"prompt": draw(st.text(min_size=1, max_size=80))}
    params: dict[str, Any] = {"duration": draw(st.sampled_from(spec.durations))}
    if spec.kind == "t2v":
        params["size"] = draw(st.sampled_from(spec.sizes))
    else:
        params["resolution"] = draw(st.sampled_from(spec.resolutions))
    if spec.kind == "i2v":
        inp["img_url"] = image
    elif spec.kind == "kf2v":
        inp.update(first_frame_url=image, last_frame_url="https://example.com/last.png")
    elif spec.kind == "wan27":  # the media array is its own little language: fuzz it more often
        inp["media"] = draw(st.one_of(st.just([{"type": "first_frame", "url": image}]),
                                      st.lists(maybe(media_item), min_size=1, max_size=3)))
    if spec.templates and draw(st.booleans()):
        inp["template"] = draw(st.sampled_from(spec.templates))
    if spec.accepts_audio_url and draw(st.booleans()):
        inp["audio_url"] = "https://example.com/voice.mp3"
    params.update(draw(st.fixed_dictionaries({}, optional={
        "prompt_extend": st.booleans(), "watermark": st.booleans(), "seed": st.integers(0, 2147483647),
        "shot_type": st.sampled_from(["single", "multi"]), "audio": st.booleans()})))
    body: dict[str, Any] = {"model": name, "input": inp, "parameters": params}
    for _ in range(draw(st.integers(0, 3))):
        where = draw(st.sampled_from(["input"] * 4 + ["parameters"] * 4 + ["model", "whole", "top"]))
        if where in ("input", "parameters"):
            target = body.get(where)
            if not isinstance(target, dict):
                continue
            mutations = INPUT_MUTATIONS if where == "input" else PARAMETER_MUTATIONS
            key = draw(st.sampled_from(list(mutations)))
            value = draw(st.one_of(st.just(DELETE), mutations[key]))
            if value is DELETE:
                target.pop(key, None)
            else:
                target[key] = value
        elif where == "model":
            body["model"] = draw(junk_models)
        elif where == "whole":
            part = draw(st.sampled_from(["model", "input", "parameters"]))
            value = draw(st.one_of(st.just(DELETE), json_values))
            if value is DELETE:
                body.pop(part, None)
            else:
                body[part] = value
        else:
            body[draw(texts)] = draw(json_values)
    right = "image2video" if spec.kind == "kf2v" else "video-generation"
    endpoint = draw(st.sampled_from([right, right, right, *ENDPOINTS]))
    return endpoint, body


content_types = st.sampled_from(["application/json", "application/json; charset=utf-8", "text/plain",
                                 "application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
                                 "application/octet-stream", None])


def encode(body: Any, ascii_only: bool) -> bytes:
    return json.dumps(body, ensure_ascii=ascii_only, allow_nan=False).encode("utf-8")


def mangled(args: tuple[Any, int, str]) -> bytes:
    """A real-looking body cut short or with a stray character: almost JSON."""
    body, cut, junk = args
    raw = encode(body, True)
    cut %= len(raw) + 1
    return raw[:cut] + junk.encode("utf-8") + raw[cut + 1:]


raw_bodies = st.one_of(
    st.binary(max_size=300),
    st.text(max_size=80).map(lambda t: t.encode("utf-8")),
    st.tuples(request_bodies().map(lambda eb: eb[1]), st.integers(min_value=0),
              st.sampled_from(["", "}", "{", ",", '"', "\\", "\x00", "]"]))
    .map(mangled),
    st.sampled_from([b"", b"null", b"[]", b"{}", b"0", b'"x"', b"NaN", b"Infinity", b"\xef\xbb\xbf{}",
                     b'{"model": "wan2.6-t2v", "model": 1}', "{}".encode("utf-16"), b"\xff\xfe\x00\x00"]),
)


# -- the properties ---------------------------------------------------------------------------------


def assert_error_body(r: httpx.Response, sent: bytes = b"") -> dict[str, Any]:
    """A contract error body; no Python internals in the message (unless the caller sent that text)."""
    assert 400 <= r.status_code < 500, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json"), r.headers
    body = r.json()
    assert isinstance(body, dict) and set(body) == {"request_id", "code", "message"}, body
    assert all(isinstance(v, str) for v in body.values()), body
    assert body["code"] and body["request_id"], body
    echoed = sent.decode("utf-8", "replace") + urllib.parse.unquote_plus(str(r.request.url))
    assert not any(m in body["message"] and m not in echoed for m in TRACEBACK_MARKERS), body
    return body


def post_create(server: Server, client: httpx.Client, endpoint: str, raw: bytes, content_type: str | None,
                oss: bool = False) -> httpx.Response:
    """Posts a create and checks the properties every create answer must have; returns the answer."""
    headers = dict(ASYNC)
    if content_type is not None:
        headers["Content-Type"] = content_type
    if oss:
        headers["X-DashScope-OssResourceResolve"] = "enable"
    before = task_count(server)
    r = client.post(f"/services/aigc/{endpoint}/video-synthesis", content=raw, headers=headers)
    after = task_count(server)
    try:
        label = r.json().get("code", "PENDING") if r.status_code < 500 else "server error"
    except ValueError:
        label = "not JSON"
    event(f"create {r.status_code} {label}")  # distribution: pytest --hypothesis-show-statistics
    if r.status_code == 200:
        body = r.json()
        assert set(body) == {"request_id", "output"}, body
        assert (set(body["output"]) == {"task_id", "task_status"}
                and body["output"]["task_status"] == "PENDING")
        uuid.UUID(body["output"]["task_id"])
        assert after == before + 1
    else:
        assert_error_body(r, raw)
        assert after == before
    return r


@FUZZ
@given(body=json_values, endpoint=st.sampled_from(ENDPOINTS), content_type=content_types,
       ascii_only=st.booleans())
def test_arbitrary_json_body_is_answered_200_or_4xx_with_a_contract_body(api, client, body, endpoint,
                                                                        content_type, ascii_only):
    post_create(api, client, endpoint, encode(body, ascii_only), content_type)


@FUZZ
@given(case=request_bodies(), content_type=content_types, ascii_only=st.booleans(), oss=st.booleans())
def test_request_shaped_body_with_mutated_fields_is_answered_200_or_4xx(api, client, case, content_type,
                                                                       ascii_only, oss):
    endpoint, body = case
    post_create(api, client, endpoint, encode(body, ascii_only), content_type, oss)


@FUZZ
@given(case=request_bodies())
def test_accepted_body_is_stored_with_values_its_model_allows(api, client, case):
    endpoint, body = case
    r = post_create(api, client, endpoint, encode(body, True), "application/json")
    if r.status_code != 200:
        return
    req = api.services.store.get(r.json()["output"]["task_id"])["request"]
    spec = find_model(body["model"])
    assert spec is not None and req["model"] == spec.name and req["requested_model"] == body["model"]
    assert endpoint == "video-generation" or spec.endpoint == "image2video"
    assert req["resolution"] in spec.resolutions and req["duration"] in spec.durations
    assert req["size"] in spec.sizes if spec.kind == "t2v" else req["size"] is None
    assert len(req["prompt"]) <= spec.prompt_max and len(req["negative_prompt"]) <= NEG_PROMPT_MAX
    assert 0 <= req["seed"] <= 2147483647
    assert req["shot_type"] == "single" or (spec.multi_shot and req["prompt_extend"])
    assert req["template"] is None or req["template"] in spec.templates
    assert req["sound"] == "none" or spec.audio != "silent"


@FUZZ
@given(raw=raw_bodies, endpoint=st.sampled_from(ENDPOINTS), content_type=content_types)
def test_raw_bytes_body_is_answered_200_or_4xx_with_a_contract_body(api, client, raw, endpoint, content_type):
    post_create(api, client, endpoint, raw, content_type)


list_ints = st.one_of(st.integers(-5, 120), st.integers(),
                      st.sampled_from(["", "1.5", "0x10", "1e3", " 1", "一"]), st.text(max_size=8))
list_times = st.one_of(
    st.text(max_size=16),
    st.integers(0, 10**14 - 1).map(lambda n: f"{n:014d}"),
    st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30))
    .map(lambda d: d.strftime("%Y%m%d%H%M%S")),
)
list_params = st.fixed_dictionaries({}, optional={
    "page_no": list_ints, "page_size": list_ints,
    "status": st.one_of(
        st.sampled_from(["PENDING", "running", "SUCCEEDED", "FAILED", "CANCELED", "UNKNOWN", ""]),
        st.text(max_size=10)),
    "start_time": list_times, "end_time": list_times, "model_name": st.text(max_size=20),
    "task_id": st.text(max_size=40),
})


@FUZZ
@given(params=list_params)
def test_task_list_with_random_query_is_answered_200_or_4xx(client, params):
    r = client.get("/tasks", params=params)
    if r.status_code == 200:
        body = r.json()
        assert isinstance(body["data"], list) and body["total"] >= 0 and "output" not in body
    else:
        assert_error_body(r)


@FUZZ
@given(task_id=st.text(min_size=1, max_size=120))
def test_task_query_with_random_id_is_200_unknown_or_4xx(client, task_id):
    assume(task_id not in (".", ".."))  # dot segments are resolved by the client into other paths
    r = client.get("/tasks/" + urllib.parse.quote(task_id, safe=""))
    assert r.status_code < 500, r.text
    if r.status_code == 200 and "/" not in task_id:
        assert r.json()["output"] == {"task_id": task_id, "task_status": "UNKNOWN"}
    elif r.status_code >= 400:
        assert_error_body(r)


@FUZZ
@given(task_id=st.text(min_size=1, max_size=120))
def test_cancel_with_random_id_is_a_4xx(client, task_id):
    assume(task_id not in (".", ".."))
    r = client.post("/tasks/" + urllib.parse.quote(task_id, safe="") + "/cancel")
    assert r.status_code < 500, r.text
    if r.status_code >= 400:
        assert_error_body(r)
    else:  # only a redirect, for ids the router reads as another path
        assert "/" in task_id and r.status_code in (301, 302, 307, 308), (r.status_code, r.text)


@pytest.mark.parametrize("params", [{"page_no": 2**63}, {"page_no": 10**20},
                                    {"page_no": 2**57, "page_size": 100}],
                         ids=["2^63", "1e20", "2^57x100"])
def test_task_list_with_a_page_beyond_64_bit_offsets_is_not_a_server_error(client, params):
    """SQLite offsets are 64-bit; a larger page must not reach the database (regression, bd98e09)."""
    r = client.get("/tasks", params=params)
    if r.status_code == 200:
        assert r.json()["data"] == []
    else:
        assert_error_body(r)


# -- regressions: inputs that once gave 500s ---------------------------------------------------------


def raw_create(client: httpx.Client, raw: bytes, endpoint: str = "video-generation") -> httpx.Response:
    return client.post(f"/services/aigc/{endpoint}/video-synthesis", content=raw,
                       headers={**ASYNC, "Content-Type": "application/json"})


@pytest.mark.parametrize("media_type", [[], ["first_frame"], {}, {"a": 1}], ids=repr)
def test_wan27_media_item_with_a_list_or_object_type_is_400(api, client, media_type):
    body = {"model": "wan2.7-i2v", "input": {"prompt": "x", "media": [{"type": media_type,
                                                                          "url": "https://example.com/a.png"}]}}
    before = task_count(api)
    body_ = assert_error_body(raw_create(client, encode(body, True)))
    assert body_["code"] == "InvalidParameter" and task_count(api) == before


@pytest.mark.parametrize("key", ["duration", "seed"])
@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity", "1e400", "-1e400"])
def test_non_finite_number_for_an_integer_parameter_is_400(api, client, key, number):
    raw = '{"model": "wan2.6-t2v", "input": {"prompt": "x"}, "parameters": {"KEY": NUMBER}}'
    raw = raw.replace("KEY", key).replace("NUMBER", number).encode()
    before = task_count(api)
    assert_error_body(raw_create(client, raw))
    assert task_count(api) == before


@pytest.mark.parametrize("where", ["model", "seed", "junk"])
def test_integer_literal_over_4300_digits_is_400(api, client, where):
    raw = {"model": '{"model": BIG}',
           "seed": '{"model": "wan2.6-t2v", "input": {"prompt": "x"}, "parameters": {"seed": BIG}}',
           "junk": '{"model": "wan2.6-t2v", "input": {"prompt": "x", "junk": BIG}}'}[where]
    before = task_count(api)
    assert_error_body(raw_create(client, raw.replace("BIG", "9" * 5000).encode()))
    assert task_count(api) == before


def test_deeply_nested_json_body_is_not_a_server_error(api, client):
    depth = 100_000
    raw = ('{"model": "wan2.6-t2v", "input": {"prompt": "x", "junk": '
           + "[" * depth + "]" * depth + "}}").encode()
    r = raw_create(client, raw)
    assert r.status_code < 500, r.text


@pytest.mark.slow
def test_prompt_with_a_lone_surrogate_is_refused_or_stays_readable(make_server):
    srv = make_server(workers=1)
    raw = (b'{"model": "wanx2.1-t2v-turbo", "input": {"prompt": "a cat \\ud800"}, '
           b'"parameters": {"size": "832*480"}}')
    with srv.client() as c:
        r = raw_create(c, raw)
        if r.status_code != 200:
            assert_error_body(r)
            return
        task_id = r.json()["output"]["task_id"]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            r = c.get(f"/tasks/{task_id}")
            assert r.status_code == 200, r.text
            if r.json()["output"]["task_status"] in ("SUCCEEDED", "FAILED"):
                return
            time.sleep(0.1)
        pytest.fail("task did not finish")

