"""The wire contract's shapes, status codes and error bodies (contract sections 1, 5, 6)."""

from __future__ import annotations

import json
import uuid

import httpx
from sqlalchemy import func, select

from wanserve.accounts.keys import create_key, revoke_key
from wanserve.tasks.schema import tasks

from .conftest import ASYNC

T2V = {"model": "wanx2.1-t2v-turbo", "input": {"prompt": "a cat"}, "parameters": {"size": "832*480"}}


def task_count(server) -> int:
    with server.services.db.begin() as conn:
        return conn.execute(select(func.count()).select_from(tasks)).scalar_one()


def assert_error(r: httpx.Response, status: int, code: str) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert set(body) == {"request_id", "code", "message"}
    assert body["code"] == code
    assert body["message"]
    return body


def test_create_answers_200_with_task_id_and_pending_status(make_server):
    server = make_server(workers=0)
    r = server.create(T2V)
    assert r.status_code == 200
    body = r.json()
    assert body["output"]["task_status"] == "PENDING"
    uuid.UUID(body["output"]["task_id"])
    assert body["request_id"] and "code" not in body


def test_create_without_async_header_is_403_access_denied_and_creates_nothing(make_server):
    server = make_server(workers=0)
    with server.client() as c:
        r = c.post("/services/aigc/video-generation/video-synthesis", json=T2V)
    assert_error(r, 403, "AccessDenied")
    assert task_count(server) == 0


def test_async_header_with_another_value_counts_as_missing(make_server):
    server = make_server(workers=0)
    r = server.create(T2V, **{"X-DashScope-Async": "disable"})
    assert_error(r, 403, "AccessDenied")


def test_missing_key_is_401_invalid_api_key(make_server):
    server = make_server(workers=0)
    r = httpx.post(server.api + "/services/aigc/video-generation/video-synthesis", json=T2V, headers=ASYNC)
    assert "No API-key" in assert_error(r, 401, "InvalidApiKey")["message"]


def test_wrong_key_is_401_invalid_api_key(make_server):
    server = make_server(workers=0)
    with server.client(key="sk-wrong") as c:
        r = c.get(f"/tasks/{uuid.uuid4()}")
    assert "Invalid API-key" in assert_error(r, 401, "InvalidApiKey")["message"]


def test_revoked_key_is_refused(make_server):
    server = make_server(workers=0)
    key_id, key = create_key(server.services.db, "default")
    revoke_key(server.services.db, key_id)
    with server.client(key=key) as c:
        assert_error(c.get("/tasks"), 401, "InvalidApiKey")


def test_bootstrap_key_from_environment_is_accepted(make_server, monkeypatch):
    monkeypatch.setenv("WANSERVE_API_KEY", "sk-bootstrap-test")
    server = make_server(workers=0, bootstrap_key=None)  # None: read WANSERVE_API_KEY, as `serve` does
    with server.client(key="sk-bootstrap-test") as c:
        assert c.get("/tasks").status_code == 200
    with server.client(key="sk-bootstrap-other") as c:
        assert c.get("/tasks").status_code == 401


def test_malformed_json_is_400_with_clear_message_and_creates_nothing(make_server):
    server = make_server(workers=0)
    with server.client() as c:
        r = c.post("/services/aigc/video-generation/video-synthesis", content=b'{"model": "wan2.6-t2v", ',
                   headers={**ASYNC, "Content-Type": "application/json"})
    assert "json" in assert_error(r, 400, "BadRequest.IllegalInput")["message"].lower()
    assert task_count(server) == 0


def test_unknown_model_is_400_model_not_exist(make_server):
    server = make_server(workers=0)
    r = server.create({"model": "wan9.9-t2v", "input": {"prompt": "x"}})
    assert assert_error(r, 400, "InvalidParameter")["message"].startswith("Model not exist.")
    assert task_count(server) == 0


def test_t2v_size_given_as_tier_is_refused_listing_allowed_sizes(make_server):
    server = make_server(workers=0)
    r = server.create({**T2V, "parameters": {"size": "720P"}})
    assert "size must be in" in assert_error(r, 400, "InvalidParameter")["message"]
    assert task_count(server) == 0


def test_non_kf2v_model_on_image2video_endpoint_is_url_error(make_server):
    server = make_server(workers=0)
    r = server.create(T2V, endpoint="image2video")
    assert "url error" in assert_error(r, 400, "InvalidParameter")["message"]


def test_oss_url_without_resolve_header_is_refused(make_server):
    server = make_server(workers=0)
    body = {"model": "wan2.2-i2v-flash", "input": {"prompt": "x", "img_url": "oss://dashscope-instant/a/b.png"}}
    assert_error(server.create(body), 400, "InvalidParameter.DataInspection")
    assert task_count(server) == 0


def test_unknown_task_answers_200_unknown(make_server):
    server = make_server(workers=0)
    tid = str(uuid.uuid4())
    with server.client() as c:
        r = c.get(f"/tasks/{tid}")
    assert r.status_code == 200
    assert r.json()["output"] == {"task_id": tid, "task_status": "UNKNOWN"}


def test_another_accounts_task_answers_unknown_and_cannot_be_canceled(make_server):
    server = make_server(workers=0)
    tid = server.create(T2V).json()["output"]["task_id"]
    _, other = create_key(server.services.db, "other-team")
    with server.client(key=other) as c:
        assert c.get(f"/tasks/{tid}").json()["output"]["task_status"] == "UNKNOWN"
        assert_error(c.post(f"/tasks/{tid}/cancel"), 400, "UnsupportedOperation")
        assert c.get("/tasks").json()["data"] == []
    assert server.task(tid)["output"]["task_status"] == "PENDING"


def test_keys_of_the_same_account_see_each_others_tasks(make_server):
    server = make_server(workers=0)
    tid = server.create(T2V).json()["output"]["task_id"]
    _, second = create_key(server.services.db, "default")
    with server.client(key=second) as c:
        assert c.get(f"/tasks/{tid}").json()["output"]["task_status"] == "PENDING"


def test_pending_task_shows_submit_time_in_contract_format(make_server):
    server = make_server(workers=0)
    tid = server.create(T2V).json()["output"]["task_id"]
    out = server.task(tid)["output"]
    # the contract's keys, and our extension saying why (no worker runs here: workers=0)
    assert set(out) == {"task_id", "task_status", "submit_time", "wanserve_pending_reason"}
    assert len(out["submit_time"]) == len("2025-09-29 14:18:52.331")


def test_cancel_pending_task_then_query_shows_canceled(make_server):
    server = make_server(workers=0)
    tid = server.create(T2V).json()["output"]["task_id"]
    with server.client() as c:
        r = c.post(f"/tasks/{tid}/cancel")
    assert r.status_code == 200 and set(r.json()) == {"request_id"}
    assert server.task(tid)["output"]["task_status"] == "CANCELED"


def test_cancel_of_finished_task_is_400_unsupported_operation(make_server):
    server = make_server(workers=0)
    tid = server.create(T2V).json()["output"]["task_id"]
    with server.client() as c:
        c.post(f"/tasks/{tid}/cancel")
        assert_error(c.post(f"/tasks/{tid}/cancel"), 400, "UnsupportedOperation")
        assert_error(c.post(f"/tasks/{uuid.uuid4()}/cancel"), 400, "UnsupportedOperation")


def test_list_is_flat_with_status_and_epoch_ms_times(make_server):
    server = make_server(workers=0)
    ids = [server.create(T2V).json()["output"]["task_id"] for _ in range(3)]
    with server.client() as c:
        body = c.get("/tasks", params={"page_no": 1, "page_size": 2}).json()
        slash = c.get("/tasks/").json()
    assert body["total"] == 3 and body["total_page"] == 2 and body["page_size"] == 2
    assert len(body["data"]) == 2 and "output" not in body
    item = body["data"][0]
    assert item["task_id"] == ids[-1]  # newest first
    assert item["status"] == "PENDING" and "task_status" not in item
    assert isinstance(item["gmt_create"], int) and item["gmt_create"] > 1_700_000_000_000
    assert item["model_name"] == "wanx2.1-t2v-turbo"
    assert item["user_api_unique_key"] == "apikey:v1:aigc:video-generation:video-synthesis:wanx2.1-t2v-turbo"
    assert slash["total"] == 3


def test_list_filters_by_status_and_model(make_server):
    server = make_server(workers=0)
    tid = server.create(T2V).json()["output"]["task_id"]
    server.create({**T2V, "model": "wan2.1-t2v-turbo"})
    with server.client() as c:
        c.post(f"/tasks/{tid}/cancel")
        canceled = c.get("/tasks", params={"status": "CANCELED"}).json()
        alias = c.get("/tasks", params={"model_name": "wan2.1-t2v-turbo"}).json()
    assert [d["task_id"] for d in canceled["data"]] == [tid]
    assert alias["total"] == 1


def test_list_refuses_a_window_over_24_hours(make_server):
    server = make_server(workers=0)
    with server.client() as c:
        r = c.get("/tasks", params={"start_time": "20260101000000", "end_time": "20260103000000"})
    assert_error(r, 400, "InvalidParameter")


def test_unknown_route_is_a_dashscope_error_body(make_server):
    server = make_server(workers=0)
    with server.client() as c:
        assert_error(c.get("/no/such/thing"), 404, "NotFound")


def test_rejected_bodies_never_leave_a_task(make_server):
    server = make_server(workers=0)
    bad = [[], "text", {"input": {}}, {"model": "wan2.6-t2v"}, {"model": 5, "input": {}},
           {"model": "wan2.6-t2v", "input": {"prompt": "x"}, "parameters": {"duration": 99}},
           {"model": "wan2.6-t2v", "input": {"prompt": "x"}, "parameters": {"seed": -1}},
           {"model": "wan2.2-i2v-flash", "input": {"prompt": "x"}},
           {"model": "wan2.2-kf2v-flash", "input": {"first_frame_url": "ftp://x/y.png"}}]
    with server.client() as c:
        for body in bad:
            r = c.post("/services/aigc/video-generation/video-synthesis", content=json.dumps(body),
                       headers=ASYNC)
            assert r.status_code == 400, (body, r.text)
            assert set(r.json()) == {"request_id", "code", "message"}
    assert task_count(server) == 0


def test_video_url_with_non_ascii_signature_or_expiry_is_403(make_server):
    server = make_server(workers=0)
    with server.services.storage.temp_result("t") as tmp:
        tmp.write_bytes(b"x")
        server.services.storage.put_result("t", 1, tmp)
    for query in ("Expires=9999999999&Signature=é", "Expires=²&Signature=abc"):
        r = httpx.get(f"{server.base}/files/results/t.mp4?{query}")
        assert_error(r, 403, "AccessDenied")


def test_tasks_past_their_lifetime_are_unknown_and_left_out_of_lists_before_any_sweep(make_server):
    from datetime import datetime, timedelta, timezone

    from sqlalchemy import update

    from wanserve.tasks.db import now_ms

    server = make_server(workers=0)
    old, running = (server.create(T2V).json()["output"]["task_id"] for _ in range(2))
    day_ago = now_ms() - 25 * 3600 * 1000
    with server.services.db.begin() as conn:
        conn.execute(update(tasks).values(submit_ms=day_ago))
        conn.execute(update(tasks).where(tasks.c.id == old).values(status="CANCELED", end_ms=day_ago))
        conn.execute(update(tasks).where(tasks.c.id == running)
                     .values(status="RUNNING", worker_id="w", lease_until_ms=now_ms() + 60_000))
    zone = timezone(timedelta(hours=8))
    window = {"start_time": datetime.fromtimestamp(day_ago / 1000 - 3600, zone).strftime("%Y%m%d%H%M%S"),
              "end_time": datetime.fromtimestamp(day_ago / 1000 + 3600, zone).strftime("%Y%m%d%H%M%S")}
    with server.client() as c:
        body = c.get("/tasks", params=window).json()
    assert body["total"] == 1 and [d["task_id"] for d in body["data"]] == [running]
    assert server.task(old)["output"] == {"task_id": old, "task_status": "UNKNOWN"}
    assert server.task(running)["output"]["task_status"] == "RUNNING"
