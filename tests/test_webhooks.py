"""Webhooks: a task created with a callback URL is POSTed, signed, to that URL once it ends."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import http.server
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from wanserve.accounts.callbacks import set_key_callback, webhook_secret
from wanserve.accounts.keys import create_key
from wanserve.api.dashscope.webhooks import Deliverer
from wanserve.cli import main
from wanserve.config import Settings
from wanserve.services import Services
from wanserve.tasks.webhooks import WebhookQueue

from .conftest import ASYNC, free_port, wait_for, wait_until_serving

T2V = {"model": "wanx2.1-t2v-turbo", "input": {"prompt": "a cat"}, "parameters": {"size": "832*480"}}
CALLBACK = "X-Wanserve-Callback-Url"


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> dict[str, Any]:
        return json.loads(self.body)


@dataclass
class Receiver:
    """A loopback webhook receiver: records each POST and answers the next scripted status (then 200)."""

    url: str
    answers: list[int] = field(default_factory=list)
    received: list[Received] = field(default_factory=list)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    lock = threading.Lock()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            body = self.rfile.read(int(self.headers["Content-Length"]))
            with lock:
                state.received.append(Received(dict(self.headers), body))
                status = state.answers.pop(0) if state.answers else 200
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state = Receiver(f"http://127.0.0.1:{httpd.server_address[1]}/hook")
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield state
    httpd.shutdown()


def deliver_in_background(server) -> Deliverer:
    """What `wanserve serve` runs beside the sweeper, polling fast; it stops with the server."""
    deliverer = Deliverer(server.services, poll_seconds=0.05)
    threading.Thread(target=deliverer.run, args=(server.stop,), daemon=True).start()
    return deliverer


def verify(secret: str, headers: dict[str, str], body: bytes, tolerance_s: int = 300) -> bool:
    """The receiver's check, as docs/webhooks.md shows it."""
    parts = dict(item.split("=", 1) for item in headers["X-Wanserve-Signature"].split(","))
    expected = hmac.new(secret.encode(), f"{parts['t']}.".encode() + body, hashlib.sha256).hexdigest()
    return abs(time.time() - int(parts["t"])) <= tolerance_s and hmac.compare_digest(expected, parts["v1"])


def deliveries(server, task_id: str) -> list[dict[str, Any]]:
    return WebhookQueue(server.services.db).deliveries(task_id)


def test_a_finished_task_gets_exactly_one_signed_delivery_of_its_query_body(make_server, receiver):
    server = make_server(workers=1)
    deliver_in_background(server)
    tid = server.create(T2V, **{CALLBACK: receiver.url}).json()["output"]["task_id"]
    server.wait(tid)
    wait_for(lambda: receiver.received)
    time.sleep(0.5)  # several more passes: nothing more is sent
    [got] = receiver.received
    secret = webhook_secret(server.services.settings.secret(), "default")
    assert verify(secret, got.headers, got.body)
    assert got.headers["X-Wanserve-Task-Id"] == tid
    assert got.json["output"] == server.task(tid)["output"]  # what GET answers, video_url included
    [row] = deliveries(server, tid)
    assert (row["ok"], row["status_code"], row["attempt"]) == (1, 200, 1)
    assert got.headers["X-Wanserve-Delivery"] == str(row["id"])
    assert server.services.store.get(tid)["callback_due_ms"] is None


def test_a_failing_receiver_is_retried_with_backoff_until_it_answers_2xx(make_server, receiver):
    receiver.answers[:] = [500, 500]
    server = make_server(workers=0, webhook_backoff_seconds=0.1)
    deliver_in_background(server)
    tid = server.create(T2V, **{CALLBACK: receiver.url}).json()["output"]["task_id"]
    with server.client() as c:
        c.post(f"/tasks/{tid}/cancel")
    wait_for(lambda: len(receiver.received) == 3)
    rows = wait_for(lambda: (rows := deliveries(server, tid)) and rows[-1]["ok"] and rows)
    assert [(r["attempt"], r["status_code"], r["ok"]) for r in rows] == [
        (1, 500, 0), (2, 500, 0), (3, 200, 1)]
    at = [r["at_ms"] for r in rows]
    assert at[1] - at[0] >= 100 and at[2] - at[1] >= 200  # the backoff doubles: 0.1 s, then 0.2 s
    time.sleep(0.5)
    assert len(receiver.received) == 3


def test_a_receiver_that_keeps_failing_is_given_up_after_the_retry_window(make_server, receiver):
    receiver.answers[:] = [503] * 100
    server = make_server(workers=0, webhook_backoff_seconds=0.1, webhook_retry_seconds=0.5)
    deliver_in_background(server)
    tid = server.create(T2V, **{CALLBACK: receiver.url}).json()["output"]["task_id"]
    with server.client() as c:
        c.post(f"/tasks/{tid}/cancel")
    wait_for(lambda: server.services.store.get(tid)["callback_due_ms"] is None, timeout=10)
    rows = deliveries(server, tid)
    assert 2 <= len(rows) <= 4 and not any(r["ok"] for r in rows)  # 0.1, 0.2, 0.4 s apart, within 0.5 s
    time.sleep(0.5)
    assert len(deliveries(server, tid)) == len(rows) == len(receiver.received)


def test_a_canceled_task_gets_its_delivery_too(make_server, receiver):
    server = make_server(workers=0)
    deliver_in_background(server)
    tid = server.create(T2V, **{CALLBACK: receiver.url}).json()["output"]["task_id"]
    time.sleep(0.3)
    assert receiver.received == []  # nothing is sent before the task ends
    with server.client() as c:
        assert c.post(f"/tasks/{tid}/cancel").status_code == 200
    wait_for(lambda: receiver.received)
    assert receiver.received[0].json["output"]["task_status"] == "CANCELED"


def test_the_keys_default_callback_url_is_used_without_the_header(make_server, receiver):
    server = make_server(workers=0)
    deliver_in_background(server)
    key_id, key = create_key(server.services.db, "acme")
    assert set_key_callback(server.services.db, key_id, receiver.url) == "acme"
    with server.client(key) as c:
        tid = c.post("/services/aigc/video-generation/video-synthesis", json=T2V,
                     headers={"X-DashScope-Async": "enable"}).json()["output"]["task_id"]
        c.post(f"/tasks/{tid}/cancel")
    got = wait_for(lambda: receiver.received)[0]
    assert got.headers["X-Wanserve-Task-Id"] == tid
    assert verify(webhook_secret(server.services.settings.secret(), "acme"), got.headers, got.body)
    assert not verify(webhook_secret(server.services.settings.secret(), "default"), got.headers, got.body)


def task_count(server) -> int:
    with server.client() as c:
        return c.get("/tasks").json()["total"]


def test_a_callback_url_to_a_private_address_is_refused_and_creates_no_task(make_server):
    server = make_server(workers=0, allow_private_media_urls=False)
    r = server.create(T2V, **{CALLBACK: "http://127.0.0.1:9/hook"})
    assert r.status_code == 400 and r.json()["code"] == "InvalidParameter"
    assert CALLBACK in r.json()["message"] and "allow_private_media_urls" in r.json()["message"]
    assert task_count(server) == 0


def test_a_keys_private_default_callback_url_is_refused_too(make_server):
    server = make_server(workers=0, allow_private_media_urls=False)
    key_id, key = create_key(server.services.db, "default")
    set_key_callback(server.services.db, key_id, "http://10.0.0.1/hook")
    with server.client(key) as c:
        r = c.post("/services/aigc/video-generation/video-synthesis", json=T2V,
                   headers={"X-DashScope-Async": "enable"})
    assert r.status_code == 400 and "default callback URL" in r.json()["message"]
    assert task_count(server) == 0


def test_a_callback_url_that_is_not_http_is_refused(make_server):
    server = make_server(workers=0)
    r = server.create(T2V, **{CALLBACK: "ftp://example.com/hook"})
    assert r.status_code == 400 and r.json()["code"] == "InvalidParameter"
    assert task_count(server) == 0


def ended_task(services: Services, url: str, account: str = "default") -> str:
    row = services.store.create(account_id=account, api_key_id="k", request_id="r", model="wanx2.1-t2v-turbo",
                                endpoint="video-generation", request={}, callback_url=url)
    assert services.store.cancel(row["id"], account)
    return row["id"]


def test_the_address_is_checked_again_when_sending(tmp_path: Path, receiver):
    """A URL accepted at create time (private URLs allowed then) is not sent to once they are refused."""
    services = Services.open(Settings(data_dir=tmp_path, allow_private_media_urls=False))
    try:
        tid = ended_task(services, receiver.url)
        assert Deliverer(services).deliver_due() == 1
        [row] = WebhookQueue(services.db).deliveries(tid)
        assert row["ok"] == 0 and "private or loopback" in row["error"] and receiver.received == []
    finally:
        services.close()


def test_concurrent_deliverers_send_each_delivery_once(tmp_path: Path, db_url: str, receiver):
    services = Services.open(Settings(data_dir=tmp_path, database_url=db_url, allow_private_media_urls=True))
    try:
        ids = {ended_task(services, receiver.url) for _ in range(10)}
        deliverers = [Deliverer(services) for _ in range(4)]  # as if in four API processes
        start = threading.Barrier(len(deliverers))

        def passes(deliverer: Deliverer) -> None:
            start.wait()
            for _ in range(5):
                deliverer.deliver_due()

        threads = [threading.Thread(target=passes, args=(d,)) for d in deliverers]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert sorted(r.headers["X-Wanserve-Task-Id"] for r in receiver.received) == sorted(ids)
        assert all(len(WebhookQueue(services.db).deliveries(tid)) == 1 for tid in ids)
    finally:
        services.close()


def test_keys_callback_sets_the_default_and_prints_the_signing_secret(tmp_path: Path, capsys):
    services = Services.open(Settings(data_dir=tmp_path))
    key_id, _ = create_key(services.db, "acme")
    secret = webhook_secret(services.settings.secret(), "acme")
    services.close()
    data = ["--data-dir", str(tmp_path)]
    assert main(["keys", "callback", key_id, "https://93.184.215.14/hook", *data]) == 0  # a public address
    assert capsys.readouterr().out.strip() == secret
    assert main(["keys", "webhook-secret", "--account", "acme", *data]) == 0
    assert capsys.readouterr().out.strip() == secret
    assert main(["keys", "callback", key_id, "--clear", *data]) == 0
    assert main(["keys", "callback", key_id, "http://127.0.0.1/hook", *data]) == 2  # private: refused
    assert "allow_private_media_urls" in capsys.readouterr().err


@pytest.mark.slow
def test_serve_delivers_webhooks_and_ends_open_event_streams_when_stopped(tmp_path: Path, receiver):
    """`wanserve serve` runs the deliverer; a SIGTERM ends a stream still watching a PENDING task."""
    port = free_port()
    env = {**os.environ, "WANSERVE_API_KEY": "sk-hooks", "WANSERVE_WORKERS": "0",
           "WANSERVE_ALLOW_PRIVATE_MEDIA_URLS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "wanserve.cli", "serve", "--port", str(port), "--data-dir",
                             str(tmp_path / "data")], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    api, headers = f"http://127.0.0.1:{port}/api/v1", {"Authorization": "Bearer sk-hooks"}
    try:
        wait_until_serving(api, headers, proc)
        create = f"{api}/services/aigc/video-generation/video-synthesis"
        ended = httpx.post(create, json=T2V, headers={**headers, **ASYNC, CALLBACK: receiver.url})
        httpx.post(f"{api}/tasks/{ended.json()['output']['task_id']}/cancel", headers=headers)
        wait_for(lambda: receiver.received, timeout=10)
        watched = httpx.post(create, json=T2V, headers={**headers, **ASYNC}).json()["output"]["task_id"]
        with httpx.stream("GET", f"{api}/tasks/{watched}/events", headers=headers, timeout=5) as r:
            lines = r.iter_lines()
            assert next(lines) == "event: task"
            proc.terminate()
            stopped = time.monotonic()
            assert all(not line.startswith("event:") for line in lines)  # the stream ends, no more events
        assert proc.wait(timeout=10) == 0 and time.monotonic() - stopped < 5
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=20)


@dataclass
class DeadReceiver:
    """A loopback receiver that accepts each connection and never answers (until the sender hangs up)."""

    url: str
    accepted: int = 0
    open: int = 0
    most_open: int = 0


@pytest.fixture
def dead_receiver() -> Iterator[DeadReceiver]:
    listener = socket.create_server(("127.0.0.1", 0))
    state = DeadReceiver(f"http://127.0.0.1:{listener.getsockname()[1]}/hook")
    lock = threading.Lock()
    conns: list[socket.socket] = []

    def hold(conn: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while conn.recv(65536):  # read the request, answer nothing; ends when the sender gives up
                pass
        with lock:
            state.open -= 1

    def accept() -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = listener.accept()
                with lock:
                    conns.append(conn)
                    state.accepted += 1
                    state.open += 1
                    state.most_open = max(state.most_open, state.open)
                threading.Thread(target=hold, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    yield state
    listener.close()
    for conn in conns:
        conn.close()


@pytest.mark.parametrize("parallel", [2, 8])
def test_an_account_whose_receiver_hangs_delays_another_accounts_webhook_by_one_timeout_at_most(
        tmp_path: Path, db_url: str, receiver, dead_receiver, parallel: int):
    """Account A's 40 ended tasks point at a receiver that accepts and hangs; account B's one task, ended
    while A's attempts hang, is delivered within one attempt timeout (plus slack): A holds at most its
    per-account slots, and when A holds them all (parallel 2) B gets the first one that frees up."""
    timeout_s, per_account = 1.0, 2
    services = Services.open(Settings(
        data_dir=tmp_path, database_url=db_url, allow_private_media_urls=True,
        webhook_timeout_seconds=timeout_s, webhook_max_in_flight=parallel,
        webhook_max_in_flight_per_account=per_account))
    stop = threading.Event()
    deliverer = Deliverer(services, poll_seconds=0.05)
    thread = threading.Thread(target=deliverer.run, args=(stop,), daemon=True)
    try:
        hung = [ended_task(services, dead_receiver.url, "a") for _ in range(40)]
        thread.start()
        wait_for(lambda: dead_receiver.open >= per_account, timeout=10)  # A's attempts are hanging
        time.sleep(0.2)
        ended = time.monotonic()
        tid = ended_task(services, receiver.url, "b")
        wait_for(lambda: receiver.received, timeout=60)
        waited = time.monotonic() - ended
        assert waited < timeout_s + 1.0, f"B's webhook waited {waited:.1f} s behind A's dead receiver"
        assert receiver.received[0].headers["X-Wanserve-Task-Id"] == tid
        assert dead_receiver.most_open <= per_account  # A never held more than its share
        queue = WebhookQueue(services.db)
        row = wait_for(lambda: [r for tid in hung for r in queue.deliveries(tid)
                                if r["error"] != "in flight"])[0]
        assert row["ok"] == 0 and "webhook_timeout_seconds" in row["error"]
        assert row["duration_ms"] < (timeout_s + 1.0) * 1000  # one deadline for the whole attempt
    finally:
        stop.set()
        thread.join(10)
        services.close()

