"""The worker registry: live workers are the ones that beat recently; dead rows are pruned."""

from __future__ import annotations

from sqlalchemy import update

from wanserve.tasks.db import migrate, now_ms, open_engine, write
from wanserve.tasks.schema import workers
from wanserve.tasks.workers import ALL_MODELS, WorkerRegistry


def registry(db_url: str) -> WorkerRegistry:
    engine = open_engine(db_url)
    migrate(engine)
    return WorkerRegistry(engine, live_seconds=5)


def age(reg: WorkerRegistry, worker_id: str, seconds: float) -> None:
    with write(reg.engine) as conn:
        conn.execute(update(workers).where(workers.c.id == worker_id)
                     .values(last_seen_ms=now_ms() - int(seconds * 1000)))


def test_a_registered_worker_is_live_and_serves_its_models(db_url):
    reg = registry(db_url)
    reg.register("w1", ["wan2.6-t2v", "wan2.6-t2v", "wanx2.1-t2v-turbo"], gpus="0,1")
    [row] = reg.live()
    assert (row["id"], row["models"], row["gpus"], row["state"]) == \
        ("w1", ["wan2.6-t2v", "wanx2.1-t2v-turbo"], "0,1", "idle")
    assert reg.serving("wan2.6-t2v") and not reg.serving("wan2.2-t2v-plus")


def test_a_worker_that_stopped_beating_is_not_live_and_serves_nothing(db_url):
    reg = registry(db_url)
    reg.register("w1", [ALL_MODELS])
    age(reg, "w1", 6)
    assert reg.live() == [] and not reg.serving("wan2.6-t2v")
    assert reg.beat("w1", state="busy", task_id="t1", set_task=True)
    assert [(w["state"], w["task_id"]) for w in reg.live()] == [("busy", "t1")]


def test_beat_reports_a_pruned_row_and_prune_keeps_recent_ones(db_url):
    reg = registry(db_url)
    reg.register("old", [ALL_MODELS])
    reg.register("new", [ALL_MODELS])
    age(reg, "old", 7200)
    assert reg.prune(older_than_seconds=3600) == 1
    assert [w["id"] for w in reg.all()] == ["new"]
    assert not reg.beat("old")  # the caller registers again


def test_deregister_removes_the_row(db_url):
    reg = registry(db_url)
    reg.register("w1", [ALL_MODELS])
    reg.deregister("w1")
    assert reg.all() == []
