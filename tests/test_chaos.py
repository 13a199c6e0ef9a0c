"""Chaos: nothing is lost when workers are SIGKILLed and the API restarts.

PostgreSQL and S3 (moto's server) on loopback, one API process (`serve --workers 0`) and three worker
processes serving overlapping model sets (`worker --models`). 200 tasks of three models from three
accounts are submitted (with idempotency keys, so a create retried across an API restart is one
task), some are canceled while PENDING and some while RUNNING; every few seconds a random worker is
SIGKILLed and started again, and the API process is restarted twice (once killed, once stopped).

After the queue drains: every task is terminal, every SUCCEEDED task's video_url gives a decodable
video, every attempt ran on a worker that serves the task's model, and after one sweep no orphaned
object or partial file is left and no result object was ever written twice (the bucket is
versioned: every key has exactly one version).
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import boto3
import httpx
import pytest
from sqlalchemy import select

from wanserve.accounts.keys import create_key
from wanserve.config import load_settings
from wanserve.services import Services
from wanserve.tasks.schema import task_failures, tasks
from wanserve.tasks.states import TERMINAL

from .conftest import ASYNC, _postgres_url, free_port, probe_video, wait_until_serving

pytestmark = pytest.mark.slow

MODELS = {
    "wanx2.1-t2v-turbo": {"size": "832*480"},
    "wan2.2-t2v-plus": {"size": "832*480"},
    "wan2.6-t2v": {"size": "1280*720", "duration": 2},
}
WORKER_MODELS = [("wanx2.1-t2v-turbo", "wan2.2-t2v-plus"), ("wan2.2-t2v-plus", "wan2.6-t2v"),
                 ("wanx2.1-t2v-turbo", "wan2.6-t2v")]
ACCOUNTS = ("alice", "bob", "carol")
N_TASKS = 200
BOOT_KEY = "sk-chaos-boot"


@dataclass
class Fleet:
    """The processes of the run, and what each worker process served (by pid)."""

    config: Path
    data: Path
    log: Path
    port: int
    api: subprocess.Popen | None = None
    workers: list[subprocess.Popen] = field(default_factory=list)
    models_by_pid: dict[int, tuple[str, ...]] = field(default_factory=dict)

    def _start(self, *args: str) -> subprocess.Popen:
        env = {**os.environ, "WANSERVE_API_KEY": BOOT_KEY, "WANSERVE_SHUTDOWN_GRACE_SECONDS": "1"}
        with self.log.open("a") as out:
            argv = [sys.executable, "-m", "wanserve.cli", *args, "--config", str(self.config)]
            return subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)

    def start_api(self) -> None:
        self.api = self._start("serve", "--workers", "0", "--port", str(self.port))
        wait_until_serving(f"http://127.0.0.1:{self.port}/api/v1", {"Authorization": f"Bearer {BOOT_KEY}"},
                           self.api)

    def start_worker(self, i: int) -> None:
        proc = self._start("worker", "--workers", "1", "--models", ",".join(WORKER_MODELS[i]))
        self.models_by_pid[proc.pid] = WORKER_MODELS[i]
        if i < len(self.workers):
            self.workers[i] = proc
        else:
            self.workers.append(proc)

    def kill_worker(self, i: int) -> None:
        self.workers[i].send_signal(signal.SIGKILL)
        self.workers[i].wait()

    def restart_api(self, sig: int) -> None:
        assert self.api is not None
        self.api.send_signal(sig)
        self.api.wait(30)
        self.start_api()

    def stop_all(self) -> None:
        for proc in [self.api, *self.workers]:
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in [self.api, *self.workers]:
            if proc is not None:
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


@contextlib.contextmanager
def fleet(tmp_path: Path, db_url: str, s3_url: str, bucket: str) -> Iterator[Fleet]:
    data = tmp_path / "data"
    config = tmp_path / "wanserve.toml"
    model_tables = "\n".join(f'[models."{m}"]\nengine = "preview"\n' for m in MODELS)
    config.write_text(f"""
data_dir = "{data}"
database_url = "{db_url}"
storage = "s3"
s3_bucket = "{bucket}"
s3_endpoint_url = "{s3_url}"
s3_region = "us-east-1"
s3_access_key_id = "testing"
s3_secret_access_key = "testing"
lease_seconds = 3.0
poll_seconds = 0.2
public_base_url = "http://127.0.0.1:0"
{model_tables}""")
    port = free_port()
    text = config.read_text().replace("http://127.0.0.1:0", f"http://127.0.0.1:{port}")
    config.write_text(text)
    f = Fleet(config, data, tmp_path / "fleet.log", port)
    try:
        yield f
    finally:
        f.stop_all()


def body(rng: random.Random, i: int) -> dict:
    model = list(MODELS)[i % len(MODELS)]
    return {"model": model, "input": {"prompt": f"chaos task {i}: a lighthouse in a storm"},
            "parameters": {**MODELS[model], "seed": i, "watermark": rng.random() < 0.2}}


class Client:
    """Creates and cancels through whichever API process is up, retrying across restarts."""

    def __init__(self, base: str, keys: dict[str, str]) -> None:
        self.base, self.keys = base, keys

    def call(self, method: str, path: str, account: str, **kw) -> httpx.Response:
        deadline = time.monotonic() + 60
        while True:
            try:
                headers = {"Authorization": f"Bearer {self.keys[account]}", **kw.get("headers", {})}
                r = httpx.request(method, self.base + path, timeout=30, headers=headers,
                                  **{k: v for k, v in kw.items() if k != "headers"})
                if r.status_code < 500:
                    return r
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"{method} {path}: the API stayed down"
            time.sleep(0.2)


def test_nothing_is_lost_when_workers_are_killed_and_the_api_restarts(tmp_path, moto_endpoint):
    rng = random.Random(12)
    bucket = f"chaos-{uuid.uuid4().hex[:8]}"
    s3 = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1", aws_access_key_id="testing",
                      aws_secret_access_key="testing")
    s3.create_bucket(Bucket=bucket)
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    started = time.monotonic()
    with contextlib.contextmanager(_postgres_url)() as db_url, \
            fleet(tmp_path, db_url, moto_endpoint, bucket) as f:
        settings = load_settings(f.config)
        services = Services.open(settings)
        keys = {a: create_key(services.db, a)[1] for a in ACCOUNTS}
        f.start_api()
        for i in range(len(WORKER_MODELS)):
            f.start_worker(i)
        client = Client(f"http://127.0.0.1:{f.port}/api/v1", keys)
        ids: dict[int, tuple[str, str]] = {}  # submission index -> (task id, account)
        canceled_pending: list[str] = []
        done_submitting = threading.Event()

        def submit() -> None:
            for i in range(N_TASKS):
                account = ACCOUNTS[i % len(ACCOUNTS)]
                r = client.call("POST", "/services/aigc/video-generation/video-synthesis", account,
                                json=body(rng, i), headers={**ASYNC, "X-Idempotency-Key": f"chaos-{i}"})
                assert r.status_code == 200, r.text
                ids[i] = (r.json()["output"]["task_id"], account)
                if i % 20 == 7:  # cancel while PENDING (most likely still is)
                    client.call("POST", f"/tasks/{ids[i][0]}/cancel", account)
                    canceled_pending.append(ids[i][0])
                time.sleep(0.02)
            done_submitting.set()

        submitter = threading.Thread(target=submit, daemon=True)
        submitter.start()
        kills, api_restarts, canceled_running = 0, 0, 0
        next_kill = time.monotonic() + 3
        while not done_submitting.is_set() or kills < 8:
            time.sleep(0.3)
            if time.monotonic() >= next_kill:
                i = rng.randrange(len(f.workers))
                f.kill_worker(i)
                f.start_worker(i)
                kills += 1
                next_kill = time.monotonic() + rng.uniform(2, 4)
                if kills in (3, 6):  # the API too: killed once, stopped once
                    f.restart_api(signal.SIGKILL if kills == 3 else signal.SIGTERM)
                    api_restarts += 1
            if canceled_running < 10:  # cancel a RUNNING task now and then
                with services.db.connect() as conn:
                    row = conn.execute(select(tasks.c.id, tasks.c.account_id)
                                       .where(tasks.c.status == "RUNNING").limit(1)).first()
                if row is not None and client.call("POST", f"/tasks/{row.id}/cancel", row.account_id) \
                        .status_code == 200:
                    canceled_running += 1
        submitter.join(60)
        assert len(ids) == N_TASKS

        # the drain: every task terminal
        deadline = time.monotonic() + 180
        while True:
            with services.db.connect() as conn:
                rows = conn.execute(select(tasks)).mappings().all()
            open_ = [r for r in rows if r["status"] not in TERMINAL]
            if not open_:
                break
            assert time.monotonic() < deadline, (f"{len(open_)} tasks still open: "
                                                 f"{Counter(r['status'] for r in open_)}\n"
                                                 f"{f.log.read_text()[-4000:]}")
            time.sleep(0.5)
        drained_s = time.monotonic() - started
        by_id = {r["id"]: r for r in rows}
        assert len(by_id) == N_TASKS  # one task per submission, retries across restarts included
        assert {tid for tid, _ in ids.values()} == set(by_id)
        statuses = Counter(r["status"] for r in rows)

        # every SUCCEEDED task has a decodable video behind its link
        for tid, account in ids.values():
            if by_id[tid]["status"] != "SUCCEEDED":
                continue
            out = client.call("GET", f"/tasks/{tid}", account).json()["output"]
            video = httpx.get(out["video_url"], follow_redirects=True, timeout=30)
            assert video.status_code == 200, (tid, video.status_code)
            assert probe_video(video.content).frames > 0

        # every attempt ran on a worker that serves the task's model
        with services.db.connect() as conn:
            failures = conn.execute(select(task_failures)).mappings().all()
        ran_on = [(by_id[r["task_id"]]["model"], r["worker_id"]) for r in failures if r["worker_id"]]
        ran_on += [(r["model"], r["worker_id"]) for r in rows if r["worker_id"]]
        for model, worker_id in ran_on:
            pid = int(worker_id.split(":")[1])
            assert model in f.models_by_pid[pid], (model, worker_id, f.models_by_pid[pid])

        # after one sweep: no orphaned object, no partial file, and no object ever written twice
        f.stop_all()
        services.sweep()
        versions = s3.list_object_versions(Bucket=bucket)
        live = {v["Key"] for v in versions.get("Versions", []) if v["IsLatest"]} - \
            {m["Key"] for m in versions.get("DeleteMarkers", []) if m["IsLatest"]}
        written = Counter(v["Key"] for v in versions.get("Versions", []))
        assert [k for k, n in written.items() if n > 1] == []
        result_tasks = Counter(key.rsplit("/", 1)[-1].split(".")[0] for key in live
                               if "/results/" in f"/{key}")
        succeeded = {tid for tid, r in by_id.items() if r["status"] == "SUCCEEDED"}
        assert set(result_tasks) == succeeded and set(result_tasks.values()) <= {1}
        assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
        assert [p for p in f.data.rglob("*") if p.name.endswith(".part")] == []
        services.close()
    print(f"\nchaos: {N_TASKS} tasks in {drained_s:.0f} s, {dict(statuses)}; {kills} workers killed, "
          f"{api_restarts} API restarts, {len(canceled_pending)} canceled while PENDING, {canceled_running} "
          f"while RUNNING, {len(failures)} lost or failed attempts")
