"""Event streams (GET /tasks/{id}/events) are bounded per key, per account and in all, apart from the
connections plain requests use: one account's streams never lock other clients out."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx

from wanserve.accounts.keys import create_key

from .conftest import ASYNC, wait_for

T2V = {"model": "wanx2.1-t2v-turbo", "input": {"prompt": "a cat"}, "parameters": {"size": "832*480"}}


@contextlib.contextmanager
def stream(server, task_id: str, key: str) -> Iterator[httpx.Response]:
    """One event stream on its own connection, its first line read (the stream is open and counted)."""
    with httpx.Client(base_url=server.api, headers={"Authorization": f"Bearer {key}"}, timeout=10) as c, \
            c.stream("GET", f"/tasks/{task_id}/events") as r:
        lines = r.iter_lines()  # kept while the stream is held: dropping it would close the connection
        if r.status_code == 200:
            assert next(lines) == "event: task"
        else:
            r.read()
        yield r


def pending_task(server, key: str) -> str:
    with server.client(key) as c:
        r = c.post("/services/aigc/video-generation/video-synthesis", json=T2V, headers=ASYNC)
    assert r.status_code == 200, r.text
    return r.json()["output"]["task_id"]


def assert_throttled(r: httpx.Response, limit: str) -> None:
    assert r.status_code == 429, r.text
    body = r.json()
    assert body["code"] == "Throttling" and limit in body["message"] and body["request_id"]
    assert int(r.headers["Retry-After"]) >= 1


def test_a_keys_stream_beyond_its_limit_is_429_throttling_with_retry_after(make_server):
    server = make_server(workers=0, max_event_streams_per_key=2, max_event_streams_per_account=3)
    _, other_key = create_key(server.services.db, "default")  # a second key of the same account
    tid = pending_task(server, server.key)
    with contextlib.ExitStack() as held:
        first = held.enter_context(stream(server, tid, server.key))
        assert held.enter_context(stream(server, tid, server.key)).status_code == 200
        with stream(server, tid, server.key) as third:
            assert_throttled(third, "max_event_streams_per_key")
        assert held.enter_context(stream(server, tid, other_key)).status_code == 200  # the account's third
        with stream(server, tid, other_key) as fourth:
            assert_throttled(fourth, "max_event_streams_per_account")
        with server.client() as c:  # plain requests of the same key are not limited by its streams
            assert c.get(f"/tasks/{tid}").status_code == 200
        first.close()  # a stream that ends gives its place back

        def reopened() -> bool:
            with stream(server, tid, other_key) as r:
                return r.status_code == 200

        wait_for(reopened, timeout=10, every=0.1)


def test_an_unknown_task_does_not_keep_a_place(make_server):
    server = make_server(workers=0, max_event_streams_per_key=1)
    for _ in range(3):
        with stream(server, "no-such-task", server.key) as r:
            assert r.status_code == 404
    tid = pending_task(server, server.key)
    with stream(server, tid, server.key) as r:
        assert r.status_code == 200


def test_the_servers_streams_beyond_max_event_streams_are_429(make_server):
    server = make_server(workers=0, max_event_streams=2)
    _, other = create_key(server.services.db, "other")
    tids = [pending_task(server, server.key), pending_task(server, other)]
    with stream(server, tids[0], server.key), stream(server, tids[1], other):
        with stream(server, tids[0], server.key) as r:
            assert_throttled(r, "max_event_streams")


def test_a_key_holding_its_streams_leaves_gets_and_creates_of_others_prompt(make_server):
    """More streams than max_connections, all of one key: another account's GETs and creates, each on a
    new connection and several at once, still answer 200 promptly (streams have their own budget)."""
    cap, streams = 8, 12
    server = make_server(workers=0, max_connections=cap, max_event_streams=streams,
                         max_event_streams_per_key=streams, max_event_streams_per_account=streams)
    _, other = create_key(server.services.db, "other")
    tid = pending_task(server, server.key)
    mine = pending_task(server, other)
    with contextlib.ExitStack() as held:
        for _ in range(streams):
            assert held.enter_context(stream(server, tid, server.key)).status_code == 200
        with stream(server, tid, server.key) as r:
            assert_throttled(r, "max_event_streams_per_key")

        def request(i: int) -> tuple[int, float]:
            start = time.monotonic()
            with server.client(other) as c:  # a new connection each time
                if i % 2:
                    r = c.post("/services/aigc/video-generation/video-synthesis", json=T2V, headers=ASYNC)
                else:
                    r = c.get(f"/tasks/{mine}")
            return r.status_code, time.monotonic() - start

        with ThreadPoolExecutor(cap - 2) as pool:
            answers = list(pool.map(request, range(4 * cap)))
        assert [status for status, _ in answers] == [200] * len(answers)
        assert max(seconds for _, seconds in answers) < 2.0
