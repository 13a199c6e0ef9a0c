"""Workers with their own data folders clean up after themselves (issue 18, item 5).

The documented many-machine layout: S3 storage, one API process, and workers that each have their own
data dir. A killed worker leaves temp results and encoder `.part` files in *its* `partial/` folder, which
the API's sweeper never sees; each worker process sweeps its own folder at start and every
`sweep_seconds`, sparing the files of tasks still RUNNING (anywhere) and of the tasks it runs itself.
"""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path

from wanserve.config import Settings
from wanserve.engines import EngineSet
from wanserve.services import Services
from wanserve.worker.runner import run_workers

from .conftest import running_server, wait_for

BODY = {"model": "wanx2.1-t2v-turbo", "input": {"prompt": "a lighthouse in a storm"},
        "parameters": {"size": "832*480", "seed": 3}}


def leftovers(folder: Path, task_id: str) -> list[Path]:
    """What a worker SIGKILLed while encoding `task_id` leaves: its temp result and the encoder's `.part`."""
    name = f"{task_id}.{uuid.uuid4().hex[:12]}.mp4"
    paths = [folder / name, folder / f".{name}.{uuid.uuid4().hex[:12]}.part"]
    for p in paths:
        p.write_bytes(b"\0" * 1024)
    return paths


def parts(*roots: Path) -> list[Path]:
    return [p for root in roots for p in root.rglob("*") if p.name.endswith(".part")]


def test_a_worker_with_its_own_data_folder_sweeps_its_temp_files(tmp_path, s3):
    db = f"sqlite:///{tmp_path / 'tasks.db'}"
    api_dir, worker_dir = tmp_path / "api", tmp_path / "worker"
    with running_server(api_dir, workers=0, database_url=db, **s3) as server:
        ws = Services.open(Settings(data_dir=worker_dir, database_url=db, poll_seconds=0.05,
                                    sweep_seconds=0.2, **s3))
        partial = worker_dir / "partial"
        store = ws.store
        # before the worker starts: the leftovers of an attempt killed on this machine, of a task that then
        # failed elsewhere, of one whose row expired, and of one still RUNNING on another worker
        ended = store.create(account_id="default", api_key_id="k", request_id="r", model=BODY["model"],
                             endpoint="video-generation", request=BODY)["id"]
        time.sleep(0.002)  # claimed in submit order
        running = store.create(account_id="default", api_key_id="k", request_id="r", model=BODY["model"],
                               endpoint="video-generation", request=BODY)["id"]
        assert store.claim("dead-worker") is not None and store.claim("other-worker") is not None
        store.fail(ended, "dead-worker", "InternalError", "killed")
        dead = leftovers(partial, ended) + leftovers(partial, str(uuid.uuid4()))
        live_elsewhere = leftovers(partial, running)
        # the ownership rule: a task this process runs keeps its files whatever the database says
        mine = leftovers(partial, ended)
        assert ws.sweep_temp_files(busy={ended}) == 2  # the unknown task's two files only
        assert all(p.exists() for p in mine) and all(p.exists() for p in live_elsewhere)
        for p in mine:
            p.unlink()

        stop = threading.Event()
        try:
            run_workers(ws, EngineSet(ws.settings.models), 1, stop)
            dead += leftovers(partial, ended)  # swept at start
            # periodically too: an attempt that lost its task while this process runs
            wait_for(lambda: not any(p.exists() for p in dead), timeout=10)
            assert all(p.exists() for p in live_elsewhere)  # RUNNING elsewhere: kept
            store.fail(running, "other-worker", "InternalError", "gave up")
            wait_for(lambda: not any(p.exists() for p in live_elsewhere), timeout=10)

            # real tasks through the API, run by the worker in its own folder: nothing partial stays
            ids = [server.create({**BODY, "parameters": {**BODY["parameters"], "seed": i}})
                   .json()["output"]["task_id"] for i in range(2)]
            for task_id in ids:
                assert server.wait(task_id, timeout=120)["output"]["task_status"] == "SUCCEEDED"
            wait_for(lambda: parts(api_dir, worker_dir) == [] and list(partial.iterdir()) == [], timeout=10)
        finally:
            stop.set()
            ws.close()
