"""GET /api/v1/tasks/{task_id}/events: a task's status and progress as Server-Sent Events."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx

from wanserve.accounts.keys import create_key
from wanserve.api.dashscope import events
from wanserve.engines import EngineSet
from wanserve.worker.runner import run_workers

MEDIUM_T2V = {"model": "wan2.6-t2v", "input": {"prompt": "a harbour at dawn"},
              "parameters": {"size": "1280*720", "duration": 5, "seed": 2}}
SHORT_T2V = {"model": "wanx2.1-t2v-turbo", "input": {"prompt": "a cat"}, "parameters": {"size": "832*480"}}


def read_stream(response: httpx.Response) -> Iterator[tuple[str, Any]]:
    """("task", the JSON body) for each event and ("ping", None) for each keep-alive comment, as they come."""
    event, data = None, None
    for line in response.iter_lines():
        if line.startswith(": "):
            yield "ping", None
        elif line.startswith("event: "):
            event = line[len("event: "):]
        elif line.startswith("data: "):
            data = json.loads(line[len("data: "):])
        elif line == "" and event is not None:
            yield event, data
            event, data = None, None


def start_workers(server) -> None:
    run_workers(server.services, EngineSet(server.services.settings.models), 1, server.stop)


def test_a_stream_follows_a_task_from_pending_to_succeeded_with_rising_progress(make_server):
    server = make_server(workers=0)  # the worker starts once the stream has shown PENDING
    tid = server.create(MEDIUM_T2V).json()["output"]["task_id"]
    seen: list[dict[str, Any]] = []
    with server.client() as c, c.stream("GET", f"/tasks/{tid}/events") as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        for kind, body in read_stream(r):
            if kind == "task":
                seen.append(body)
                if len(seen) == 1:
                    start_workers(server)
    statuses = [b["output"]["task_status"] for b in seen]
    assert statuses[0] == "PENDING" and statuses[-1] == "SUCCEEDED"
    assert set(statuses[1:-1]) == {"RUNNING"}
    done = [b["output"]["progress"]["done"] for b in seen if "progress" in b["output"]]
    assert len(done) >= 3 and done == sorted(done) and len(set(done)) == len(done)
    final = {k: v for k, v in server.task(tid).items() if k != "request_id"}
    assert {k: v for k, v in seen[-1].items() if k != "request_id"} == final  # GET's own body


def test_a_finished_task_streams_its_one_event_and_the_stream_ends(make_server):
    server = make_server(workers=1)
    tid = server.create(SHORT_T2V).json()["output"]["task_id"]
    server.wait(tid)
    with server.client() as c, c.stream("GET", f"/tasks/{tid}/events") as r:
        received = list(read_stream(r))
    assert [(kind, body["output"]["task_status"]) for kind, body in received] == [("task", "SUCCEEDED")]
    assert received[0][1]["output"]["video_url"] == server.task(tid)["output"]["video_url"]


def test_a_canceled_task_ends_its_stream_with_the_canceled_event(make_server):
    server = make_server(workers=0)
    tid = server.create(SHORT_T2V).json()["output"]["task_id"]
    with server.client() as c, c.stream("GET", f"/tasks/{tid}/events") as r:
        stream = read_stream(r)
        assert next(stream)[1]["output"]["task_status"] == "PENDING"
        assert c.post(f"/tasks/{tid}/cancel").status_code == 200
        assert [body["output"]["task_status"] for _, body in stream] == ["CANCELED"]


def test_another_accounts_task_is_404_and_streams_nothing(make_server):
    server = make_server(workers=0)
    tid = server.create(SHORT_T2V).json()["output"]["task_id"]
    _, other = create_key(server.services.db, "other")
    with server.client(other) as c, c.stream("GET", f"/tasks/{tid}/events") as r:
        text = r.read().decode()
    assert r.status_code == 404 and r.headers["content-type"] == "application/json"
    assert json.loads(text)["code"] == "NotFound" and "event:" not in text


def test_an_unknown_task_is_404(make_server):
    server = make_server(workers=0)
    with server.client() as c:
        r = c.get("/tasks/00000000-0000-0000-0000-000000000000/events")
    assert r.status_code == 404 and r.json()["code"] == "NotFound"


def test_a_stream_needs_a_key(make_server):
    server = make_server(workers=0)
    tid = server.create(SHORT_T2V).json()["output"]["task_id"]
    r = httpx.get(f"{server.api}/tasks/{tid}/events")
    assert r.status_code == 401 and r.json()["code"] == "InvalidApiKey"


def test_a_quiet_stream_sends_ping_comments(make_server, monkeypatch):
    monkeypatch.setattr(events, "PING_SECONDS", 0.2)
    server = make_server(workers=0)
    tid = server.create(SHORT_T2V).json()["output"]["task_id"]
    with server.client() as c, c.stream("GET", f"/tasks/{tid}/events") as r:
        stream = read_stream(r)
        assert next(stream)[0] == "task"
        assert [next(stream)[0], next(stream)[0]] == ["ping", "ping"]


def test_a_stream_stops_reading_the_task_when_its_client_leaves(make_server):
    server = make_server(workers=0)
    tid = server.create(SHORT_T2V).json()["output"]["task_id"]
    store, reads, lock = server.services.store, [0], threading.Lock()
    original = store.get

    def counting_get(task_id, *args, **kwargs):
        if task_id == tid:
            with lock:
                reads[0] += 1
        return original(task_id, *args, **kwargs)

    store.get = counting_get  # type: ignore[method-assign]
    with server.client() as c, c.stream("GET", f"/tasks/{tid}/events") as r:
        next(read_stream(r))
    time.sleep(1.0)  # the stream notices at its next poll
    before = reads[0]
    time.sleep(4 * events.POLL_SECONDS)
    assert reads[0] == before
