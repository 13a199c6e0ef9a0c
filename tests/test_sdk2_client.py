"""The dashscope 2.x client (`dashscope.Client(...).videos.jobs`) as a real client of a running wanserve.

The 2.x client talks to the same endpoints as 1.x (`GET /tasks`, `GET /tasks/{id}`,
`POST /tasks/{id}/cancel`) but parses every list item from `tasks[]` into its pydantic `Job` model,
which wants the task-query shape (`task_id`, `task_status`, string times) rather than the
contract's `data[]` items (`status`, epoch-ms integer times).
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator

import dashscope
import httpx
import pydantic
import pytest
from dashscope.v2.errors import BadRequestError
from dashscope.v2.resources._jobs import JobList

from wanserve.api.dashscope.schemas import ListResponse
from wanserve.engines import EngineSet
from wanserve.worker.runner import run_workers

from .conftest import Server

T2V = {"model": "wanx2.1-t2v-turbo", "input": {"prompt": "a cat"}, "parameters": {"size": "832*480"}}


@pytest.fixture
def sdk2(monkeypatch: pytest.MonkeyPatch) -> Iterator:
    """Build a 2.x client for a server: explicit base URL (the native `/api/v1` root) and key, nothing
    read from the environment or a config file that could point it elsewhere."""
    for var in ("DASHSCOPE_API_KEY", "DASHSCOPE_BASE_URL", "DASHSCOPE_HTTP_BASE_URL", "DASHSCOPE_WORKSPACE",
                "DASHSCOPE_REGION", "DASHSCOPE_PROTOCOL", "DASHSCOPE_CONFIG"):
        monkeypatch.delenv(var, raising=False)
    clients: list[dashscope.Client] = []

    def make(server: Server) -> dashscope.Client:
        client = dashscope.Client(api_key=server.key, base_url=server.api, timeout=60, max_retries=0)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


def task_id(server: Server, body: dict) -> str:
    r = server.create(body)
    assert r.status_code == 200, r.text
    return r.json()["output"]["task_id"]


def run_to_the_end(server: Server, *ids: str) -> None:
    """Run one worker until the given tasks finish, then stop it, so later tasks stay PENDING."""
    stop = threading.Event()
    threads = run_workers(server.services, EngineSet(server.services.settings.models), 1, stop).threads
    try:
        for tid in ids:
            server.wait(tid)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert not any(t.is_alive() for t in threads)


def test_list_parses_finished_and_pending_tasks_with_task_query_times(make_server, media_server, sdk2):
    server = make_server(workers=0)
    done = task_id(server, T2V)
    missing = f"{media_server.base}/missing.png"  # the worker's fetch gets a 404: the task FAILS
    failed = task_id(server, {"model": "wan2.2-i2v-flash", "input": {"prompt": "waves", "img_url": missing},
                              "parameters": {"resolution": "480P"}})
    run_to_the_end(server, done, failed)
    pending = task_id(server, T2V)
    query = {tid: server.task(tid)["output"] for tid in (done, failed, pending)}
    assert [query[t]["task_status"] for t in (done, failed, pending)] == ["SUCCEEDED", "FAILED", "PENDING"]

    page = sdk2(server).videos.jobs.list()

    assert isinstance(page, JobList)
    assert (page.total, page.page_no, page.page_size) == (3, 1, 10)
    assert [job.task_id for job in page.tasks] == [pending, failed, done]  # newest first, as data[]
    jobs = {job.task_id: job for job in page.tasks}
    for tid, out in query.items():
        job = jobs[tid]
        assert job.status == out["task_status"]
        # the same strings GET /tasks/{id} shows
        assert job.submitted_at == out["submit_time"]
        assert job.scheduled_at == out.get("scheduled_time")
        assert job.finished_at == out.get("end_time")
        assert job.model_name == ("wan2.2-i2v-flash" if tid == failed else "wanx2.1-t2v-turbo")
    assert jobs[done].succeeded and jobs[done].finished and not jobs[done].is_error
    assert jobs[done].scheduled_at and jobs[done].finished_at
    assert len(jobs[done].finished_at) == len("2025-09-29 14:18:52.331")
    # a FAILED task on the page is data, not an exception: its code and message ride along
    assert jobs[failed].finished and jobs[failed].is_error
    assert (jobs[failed].code, jobs[failed].message) == (query[failed]["code"], query[failed]["message"])
    assert not jobs[pending].finished
    assert jobs[pending].scheduled_at is None and jobs[pending].finished_at is None

    # the 2.x client's filters are query parameters the endpoint understands
    only_pending = sdk2(server).videos.jobs.list(status="PENDING", model_name="wanx2.1-t2v-turbo")
    assert [(j.task_id, j.status) for j in only_pending.tasks] == [(pending, "PENDING")]
    assert [j.task_id for j in sdk2(server).videos.jobs.list(page_no=2, page_size=2).tasks] == [done]


def test_data_keeps_the_contract_shape_and_only_tasks_has_the_sdk_shape(make_server):
    server = make_server(workers=0)
    done = task_id(server, T2V)
    run_to_the_end(server, done)
    with server.client() as c:
        body = c.get("/tasks").json()
    ListResponse.model_validate(body)
    [item] = body["data"]
    assert item["status"] == "SUCCEEDED" and "task_status" not in item
    assert isinstance(item["gmt_create"], int) and isinstance(item["end_time"], int)
    [sdk_item] = body["tasks"]
    assert sdk_item["task_id"] == item["task_id"] == done
    assert sdk_item["task_status"] == "SUCCEEDED"
    out = server.task(done)["output"]
    assert {k: sdk_item[k] for k in ("submit_time", "scheduled_time", "end_time")} == {
        k: out[k] for k in ("submit_time", "scheduled_time", "end_time")}
    # what the 2.x client did with the old mirror of data[]: an integer end_time is no Job time
    with pytest.raises(pydantic.ValidationError, match=r"tasks\.0\.end_time"):
        JobList.from_payload({**body, "tasks": body["data"]})


def test_cancel_of_a_pending_task_and_then_again(make_server, sdk2):
    server = make_server(workers=0)
    tid = task_id(server, T2V)
    jobs = sdk2(server).videos.jobs

    canceled = jobs.cancel(tid)
    # the contract's cancel answers only {"request_id"}, so the Job the client builds from it is empty
    assert canceled.request_id and not canceled.is_error
    assert (canceled.task_id, canceled.status) == ("", "")
    assert server.task(tid)["output"]["task_status"] == "CANCELED"
    assert jobs.fetch(tid).status == "CANCELED"
    assert [(j.task_id, j.status) for j in jobs.list().tasks] == [(tid, "CANCELED")]
    assert jobs.list().tasks[0].finished_at

    with pytest.raises(BadRequestError) as err:
        jobs.cancel(tid)
    assert err.value.status_code == 400 and err.value.code == "UnsupportedOperation"
    assert "PENDING" in err.value.message
    with pytest.raises(BadRequestError):
        jobs.cancel(str(uuid.uuid4()))


def test_create_fetch_and_wait_through_the_client(make_server, sdk2):
    server = make_server(workers=1)
    jobs = sdk2(server).videos.jobs

    job = jobs.create(model="wanx2.1-t2v-turbo", prompt="a kitten in the snow", size="832*480", seed=7)
    assert job.task_id and job.status == "PENDING"
    fetched = jobs.fetch(job.task_id)
    assert fetched.task_id == job.task_id and fetched.submitted_at
    done = jobs.wait(job, poll_interval=0.1, max_interval=0.5, timeout=120)
    assert done.succeeded and done.scheduled_at and done.finished_at
    assert done.output["orig_prompt"] == "a kitten in the snow"
    assert httpx.get(done.video_url, timeout=60).status_code == 200
    assert done.usage is not None

    unknown = jobs.fetch(str(uuid.uuid4()))
    assert unknown.status == "UNKNOWN" and unknown.finished
