"""Local storage behind the Storage protocol: results, partial results and the orphan sweep."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from wanserve.config import Settings
from wanserve.services import Services

from .conftest import stored_results


@pytest.fixture
def services(tmp_path) -> Iterator[Services]:
    svc = Services.open(Settings(data_dir=tmp_path))
    yield svc
    svc.close()


def new_task(services: Services) -> str:
    return services.store.create(account_id="a", api_key_id="k", request_id="r", model="wan2.6-t2v",
                                 endpoint="video-generation", request={})["id"]


def partial_ids(services: Services) -> set[str]:
    return {task_id for task_id, _ in services.storage.partial_results()}


def test_a_result_is_stored_from_its_temp_file_and_the_temp_file_is_gone(services):
    with services.storage.temp_result("t1") as tmp:
        tmp.write_bytes(b"video")
        assert partial_ids(services) == {"t1"}
        services.storage.put_result("t1", 1, tmp)
    assert stored_results(services) == {"t1"} and partial_ids(services) == set()
    assert set(services.storage.result_files()) == {("t1", 1)}


def test_a_failed_encode_leaves_no_partial_file(services):
    with pytest.raises(RuntimeError), services.storage.temp_result("t1") as tmp:
        tmp.write_bytes(b"half a video")
        raise RuntimeError("encoder died")
    assert partial_ids(services) == set()


def test_sweep_removes_a_dead_workers_partial_file_but_not_a_running_tasks(services):
    running, dead = new_task(services), new_task(services)
    claimed = services.store.claim("w1")
    assert claimed is not None and claimed.id == running
    with services.storage.temp_result(running) as mine, services.storage.temp_result(dead) as leftover:
        mine.write_bytes(b"being written")
        leftover.write_bytes(b"a killed worker's")
        assert services.sweep().orphans == 1
        assert mine.exists() and not leftover.exists()


def test_sweep_removes_results_whose_task_is_gone(services):
    kept = new_task(services)
    for task_id in (kept, "no-such-task"):
        with services.storage.temp_result(task_id) as tmp:
            tmp.write_bytes(b"video")
            services.storage.put_result(task_id, 1, tmp)
    assert services.sweep().orphans == 1
    assert stored_results(services) == {kept}


def put(services: Services, task_id: str, attempt: int | None, data: bytes = b"video") -> None:
    with services.storage.temp_result(task_id) as tmp:
        tmp.write_bytes(data)
        if attempt is None:  # a result stored before per-attempt files: results/<task_id>.mp4
            tmp.replace(services.settings.data_dir / "results" / f"{task_id}.mp4")
        else:
            services.storage.put_result(task_id, attempt, tmp)


def test_each_attempt_has_its_own_file_and_expiry_removes_them_all(services):
    for attempt in (1, 2, None):
        put(services, "t1", attempt)
    put(services, "t10", 1)  # a task id that starts with another's
    assert set(services.storage.result_files()) == {("t1", 1), ("t1", 2), ("t1", None), ("t10", 1)}
    services.storage.remove_attempt("t1", 1)
    assert set(services.storage.result_files()) == {("t1", 2), ("t1", None), ("t10", 1)}
    services.storage.remove_result("t1")
    assert set(services.storage.result_files()) == {("t10", 1)}


def test_sweep_keeps_the_published_file_and_removes_other_attempts_once_the_task_ended(services):
    won, canceled, legacy = new_task(services), new_task(services), new_task(services)
    assert services.store.claim("w").id == won
    put(services, won, 1, b"lost attempt")
    put(services, won, 2, b"winning attempt")
    put(services, canceled, 1)
    assert services.sweep().orphans == 0  # running or pending: any attempt may still be published
    assert services.store.succeed(won, "w", {"attempt": 2})
    assert services.store.cancel(canceled, "a")
    assert services.store.claim("w").id == legacy
    assert services.store.succeed(legacy, "w", {"width": 832})  # stored before per-attempt files
    put(services, legacy, None)
    assert services.sweep().orphans == 2
    assert set(services.storage.result_files()) == {(won, 2), (legacy, None)}
    assert services.sweep().orphans == 0
