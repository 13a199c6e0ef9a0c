"""Create-side quotas (`[quotas]`): the hosted service's 429s, Retry-After, and nothing left behind by a
refused create; why a task waits at its account's running limit."""

from __future__ import annotations

import base64
import time
from typing import Any

from sqlalchemy import func, select

from wanserve.accounts.keys import BOOTSTRAP_KEY_ID
from wanserve.tasks.schema import uploads

from .conftest import ASYNC, Server, image_bytes, wait_for

T2V = {"model": "wanx2.1-t2v-turbo", "input": {"prompt": "a cat"}, "parameters": {"size": "832*480"}}
LONG = {"model": "wan2.6-t2v", "input": {"prompt": "a storm over a harbour"},
        "parameters": {"size": "1920*1080", "duration": 15}}
RATE_MESSAGE = "Requests rate limit exceeded, please try again later."
ALLOCATION_MESSAGE = "Allocated quota exceeded, please increase your quota limit."


def i2v_inline() -> dict[str, Any]:
    url = "data:image/png;base64," + base64.b64encode(image_bytes(480, 480)).decode()
    return {"model": "wan2.2-i2v-flash", "input": {"prompt": "a cat", "img_url": url}}


def listed(server: Server) -> list[str]:
    with server.client() as c:
        return [t["task_id"] for t in c.get("/tasks").json()["data"]]


def stored_uploads(server: Server) -> int:
    with server.services.db.connect() as conn:
        return conn.execute(select(func.count()).select_from(uploads)).scalar_one()


def test_a_create_past_the_rate_is_a_429_rate_quota_with_retry_after_and_leaves_nothing(make_server):
    server = make_server(workers=0, quotas={"rate_per_second": 1})
    first = server.create(T2V)
    assert first.status_code == 200
    refused = server.create(i2v_inline())  # inline media too: none of it may be stored
    assert refused.status_code == 429
    body = refused.json()
    assert body["code"] == "Throttling.RateQuota" and body["message"] == RATE_MESSAGE
    assert body["request_id"] and body["request_id"] != first.json()["request_id"]
    assert refused.headers["Retry-After"] == "1"
    assert listed(server) == [first.json()["output"]["task_id"]]
    assert stored_uploads(server) == 0
    time.sleep(int(refused.headers["Retry-After"]))
    assert server.create(i2v_inline()).status_code == 200  # the bucket refilled
    assert stored_uploads(server) == 1


def test_a_retry_under_an_idempotency_key_gets_its_task_back_even_at_the_limits(make_server):
    server = make_server(workers=0, quotas={"rate_per_second": 1, "max_queued": 1})
    first = server.create(T2V, **{"X-Idempotency-Key": "order-7"})
    assert first.status_code == 200
    retry = server.create(T2V, **{"X-Idempotency-Key": "order-7"})  # the response was lost: sent again
    assert retry.status_code == 200, retry.text
    assert retry.json()["output"]["task_id"] == first.json()["output"]["task_id"]
    assert server.create(T2V).status_code == 429  # a new task is still refused
    assert listed(server) == [first.json()["output"]["task_id"]]


def test_the_rate_allows_a_burst_of_one_seconds_worth(make_server):
    server = make_server(workers=0, quotas={"rate_per_second": 3})
    assert [server.create(T2V).status_code for _ in range(4)] == [200, 200, 200, 429]


def test_a_create_beyond_max_queued_is_a_429_allocation_quota_until_one_leaves_the_queue(make_server):
    server = make_server(workers=0, quotas={"max_queued": 2})
    ids = [server.create(T2V).json()["output"]["task_id"] for _ in range(2)]
    refused = server.create(T2V)
    assert refused.status_code == 429
    body = refused.json()
    assert body["code"] == "Throttling.AllocationQuota" and body["message"].startswith(ALLOCATION_MESSAGE)
    assert "2 tasks PENDING" in body["message"] and "Retry-After" not in refused.headers
    assert sorted(listed(server)) == sorted(ids)
    with server.client() as c:
        assert c.post(f"/tasks/{ids[0]}/cancel").status_code == 200
    assert server.create(T2V).status_code == 200


def test_a_key_limit_narrows_that_key_only(make_server):
    server = make_server(workers=0, bootstrap_key="sk-bootstrap-test",
                         quotas={"keys": {BOOTSTRAP_KEY_ID: {"rate_per_second": 1}}})
    with server.client("sk-bootstrap-test") as c:
        statuses = [c.post("/services/aigc/video-generation/video-synthesis", json=T2V, headers=ASYNC)
                    for _ in range(2)]
    assert statuses[0].status_code == 200
    refused = statuses[1]
    assert refused.status_code == 429 and refused.json()["code"] == "Throttling.RateQuota"
    assert server.create(T2V).status_code == 200  # the account's other key is not limited
    assert server.create(T2V).status_code == 200


def test_a_model_limit_counts_that_model_of_the_account_under_any_of_its_names(make_server):
    server = make_server(workers=0, quotas={"models": {"wanx2.1-t2v-turbo": {"max_queued": 1}}})
    assert server.create(T2V).status_code == 200
    refused = server.create({**T2V, "model": "wan2.1-t2v-turbo"})  # its alias
    assert refused.status_code == 429 and "wanx2.1-t2v-turbo tasks PENDING" in refused.json()["message"]
    assert server.create({**LONG, "parameters": {"duration": 5}}).status_code == 200  # another model


def test_without_quotas_nothing_is_limited(make_server):
    server = make_server(workers=0)
    assert all(server.create(T2V).status_code == 200 for _ in range(5))


def test_a_task_held_by_its_accounts_running_limit_says_so(make_server):
    server = make_server(workers=2, quotas={"max_running": 1})
    running = server.create(LONG).json()["output"]["task_id"]
    wait_for(lambda: server.task(running)["output"]["task_status"] == "RUNNING")
    waiting = server.create(T2V).json()["output"]["task_id"]
    out = server.task(waiting)["output"]
    assert out["task_status"] == "PENDING"
    assert out["wanserve_pending_reason"] == "queued: the account runs 1 tasks, its limit."
    with server.client() as c:  # free the worker's CPU for the tests after this one
        c.post(f"/tasks/{running}/cancel")
