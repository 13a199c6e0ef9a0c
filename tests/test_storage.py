"""Local storage behind the Storage protocol: results, partial results and the orphan sweep."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from wanserve.config import Settings
from wanserve.services import Services


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
        services.storage.put_result("t1", tmp)
    assert set(services.storage.result_ids()) == {"t1"} and partial_ids(services) == set()


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
            services.storage.put_result(task_id, tmp)
    assert services.sweep().orphans == 1
    assert set(services.storage.result_ids()) == {kept}
