"""Workers: retries after a killed worker, cancellation of running tasks, failures that lose nothing,
signed video URLs and expiry."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx
import pytest
from sqlalchemy import update

from wanserve.tasks.db import now_ms
from wanserve.tasks.schema import tasks

from .conftest import Server, image_bytes, stored_results, wait_for

pytestmark = pytest.mark.slow

LONG_T2V = {"model": "wan2.6-t2v",
            "input": {"prompt": "Shot 1 [0-5 s]: a harbour. Shot 2 [5-15 s]: a storm."},
            "parameters": {"size": "1920*1080", "duration": 15, "seed": 1}}
SHORT_T2V = {"model": "wanx2.1-t2v-turbo", "input": {"prompt": "a cat"}, "parameters": {"size": "832*480"}}




def spawn_worker(server: Server, lease: float) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "wanserve.cli", "worker", "--data-dir",
                             str(server.services.settings.data_dir), "--lease-seconds", str(lease)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def test_a_killed_workers_running_task_is_retried_by_another_worker_after_its_lease(make_server):
    server = make_server(workers=0)
    tid = server.create(
        {**LONG_T2V, "parameters": {"size": "1280*720", "duration": 10}}).json()["output"]["task_id"]
    first = spawn_worker(server, lease=2)
    try:
        wait_for(lambda: (t := server.services.store.get(tid))["status"] == "RUNNING" and t["progress"])
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    dead = server.services.store.get(tid)
    assert f":{first.pid}:" in dead["worker_id"]
    second = spawn_worker(server, lease=2)
    try:
        body = server.wait(tid, timeout=120)
    finally:
        second.terminate()
        second.wait()
    assert body["output"]["task_status"] == "SUCCEEDED", body
    task = server.services.store.get(tid)
    assert task["attempts"] == 2
    assert f":{second.pid}:" in task["worker_id"]
    assert task["scheduled_ms"] >= dead["lease_until_ms"]  # only once its lease ran out
    lost = server.services.store.failures(tid)
    assert [(f["attempt"], f["worker_id"]) for f in lost] == [(1, dead["worker_id"])]  # the history keeps it


def test_a_running_task_can_be_canceled_and_its_worker_is_free_within_a_second(make_server):
    server = make_server(workers=1)
    tid = server.create(LONG_T2V).json()["output"]["task_id"]
    wait_for(lambda: server.task(tid)["output"].get("progress"))
    with server.client() as c:
        r = c.post(f"/tasks/{tid}/cancel")
        canceled_at = now_ms()
        assert r.status_code == 200
    nxt = server.create(SHORT_T2V).json()["output"]["task_id"]
    wait_for(lambda: server.services.store.get(nxt)["scheduled_ms"])
    assert server.services.store.get(nxt)["scheduled_ms"] - canceled_at < 1000
    assert server.task(tid)["output"]["task_status"] == "CANCELED"
    assert tid not in stored_results(server.services)


def test_running_task_reports_rising_progress(make_server):
    server = make_server(workers=1)
    tid = server.create(LONG_T2V).json()["output"]["task_id"]
    seen = []
    while (out := server.task(tid)["output"])["task_status"] in ("PENDING", "RUNNING"):
        if "progress" in out:
            seen.append(out["progress"]["done"])
            assert out["scheduled_time"] and out["progress"]["total"] == 450
        time.sleep(0.2)
    assert len(seen) >= 3 and seen == sorted(seen)


def test_an_unreachable_image_fails_the_task_with_a_contract_code(server: Server, media_server):
    tid = server.create({"model": "wan2.2-i2v-flash",
                         "input": {"prompt": "x", "img_url": media_server.base + "/nope.png"},
                         "parameters": {"resolution": "480P"}}).json()["output"]["task_id"]
    out = server.wait(tid)["output"]
    assert out["task_status"] == "FAILED"
    assert out["code"].startswith("InvalidURL") and "404" in out["message"]
    assert out["end_time"] and "video_url" not in out


def test_an_image_below_the_size_limit_fails_naming_the_limit(server: Server, media_server):
    url = media_server.put("tiny.png", image_bytes(200, 200))
    tid = server.create(
        {"model": "wan2.2-i2v-flash", "input": {"prompt": "x", "img_url": url}}).json()["output"]["task_id"]
    out = server.wait(tid)["output"]
    assert out["task_status"] == "FAILED" and out["code"] == "InvalidImageResolution"
    assert "360" in out["message"]


def test_a_corrupt_data_url_image_fails_with_an_image_format_code(server: Server):
    tid = server.create({"model": "wan2.2-i2v-flash", "input": {"prompt": "x",
                         "img_url": "data:image/png;base64,aGVsbG8gd29ybGQ="}}).json()["output"]["task_id"]
    out = server.wait(tid)["output"]
    assert out["task_status"] == "FAILED" and out["code"] == "InvalidImage.FileFormat"


def test_a_failed_task_does_not_block_the_next_one(server: Server):
    bad = server.create({"model": "wan2.2-i2v-flash", "input": {"prompt": "x",
                         "img_url": "data:image/png;base64,aGVsbG8="}}).json()["output"]["task_id"]
    good = server.create(SHORT_T2V).json()["output"]["task_id"]
    assert server.wait(bad)["output"]["task_status"] == "FAILED"
    assert server.wait(good)["output"]["task_status"] == "SUCCEEDED"


def test_video_url_refuses_tampered_and_expired_signatures(server: Server):
    tid = server.create(SHORT_T2V).json()["output"]["task_id"]
    url = server.wait(tid)["output"]["video_url"]
    assert httpx.get(url).status_code == 200
    assert httpx.get(url.replace("Signature=", "Signature=x")).status_code == 403
    expires = int(url.split("Expires=")[1].split("&")[0])
    assert httpx.get(url.replace(f"Expires={expires}", f"Expires={expires + 1}")).status_code == 403
    attempt = server.services.store.get(tid)["result"]["attempt"]
    r = httpx.get(server.services.storage.result_url(tid, attempt, server.base, int(time.time()) - 1))
    assert r.status_code == 403 and r.json()["code"] == "AccessDenied"


def test_video_url_expires_24_hours_after_the_task_ends(server: Server):
    tid = server.create(SHORT_T2V).json()["output"]["task_id"]
    out = server.wait(tid)["output"]
    expires = int(out["video_url"].split("Expires=")[1].split("&")[0])
    end_ms = server.services.store.get(tid)["end_ms"]
    assert expires == end_ms // 1000 + 24 * 3600


def test_sweeper_removes_tasks_and_files_older_than_24_hours(server: Server):
    tid = server.create(SHORT_T2V).json()["output"]["task_id"]
    url = server.wait(tid)["output"]["video_url"]
    with server.services.db.begin() as conn:
        conn.execute(update(tasks).where(tasks.c.id == tid).values(end_ms=now_ms() - 25 * 3600 * 1000))
    assert server.task(tid)["output"] == {"task_id": tid, "task_status": "UNKNOWN"}  # even before the sweep
    server.sweep()
    assert server.services.store.get(tid) is None
    assert tid not in stored_results(server.services)
    assert httpx.get(url).status_code == 404
    assert server.task(tid)["output"]["task_status"] == "UNKNOWN"


def test_worker_process_stops_cleanly_on_sigterm(make_server):
    server = make_server(workers=0)
    proc = spawn_worker(server, lease=5)
    time.sleep(1.5)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 0
    assert os.path.exists(server.services.settings.data_dir / "wanserve.db")


def test_media_urls_on_private_addresses_are_refused_by_default(make_server, media_server):
    server = make_server(workers=1, allow_private_media_urls=False)
    url = media_server.put("i.png", image_bytes(832, 480))
    tid = server.create({"model": "wan2.2-i2v-flash", "input": {"prompt": "x", "img_url": url},
                         "parameters": {"resolution": "480P"}}).json()["output"]["task_id"]
    out = server.wait(tid)["output"]
    assert out["task_status"] == "FAILED" and out["code"] == "InvalidURL"
    assert "WANSERVE_ALLOW_PRIVATE_MEDIA_URLS" in out["message"]
