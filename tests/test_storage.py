"""The Storage contract, on local disk and on a real S3 endpoint (moto's server on loopback, one bucket per
test): results and their temp files, attempts, uploads, signed result links, the orphan sweep, ping."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from wanserve.config import Settings
from wanserve.errors import ServiceError
from wanserve.services import Services
from wanserve.storage.links import check_result_link
from wanserve.storage.s3 import S3Storage
from wanserve.storage.signing import Signer

from .conftest import S3_PREFIX


@pytest.fixture(params=["local", "s3"])
def services(request, tmp_path) -> Iterator[Services]:
    extra = request.getfixturevalue("s3") if request.param == "s3" else {}
    svc = Services.open(Settings(data_dir=tmp_path, **extra))
    yield svc
    svc.close()


def new_task(services: Services) -> str:
    return services.store.create(account_id="a", api_key_id="k", request_id="r", model="wan2.6-t2v",
                                 endpoint="video-generation", request={})["id"]


def put(services: Services, task_id: str, attempt: int | None, data: bytes = b"video") -> None:
    if attempt is None:  # a result stored before per-attempt files: <task_id>.mp4, written behind its back
        storage = services.storage
        if isinstance(storage, S3Storage):
            key = f"{S3_PREFIX}results/{task_id}.mp4"
            storage.client.put_object(Bucket=storage.bucket, Key=key, Body=data)
        else:
            (services.settings.data_dir / "results" / f"{task_id}.mp4").write_bytes(data)
        return
    with services.storage.temp_result(task_id) as tmp:
        tmp.write_bytes(data)
        services.storage.put_result(task_id, attempt, tmp)


def partial_ids(services: Services) -> set[str]:
    return {task_id for task_id, _ in services.storage.partial_results()}


def test_a_result_is_stored_from_its_temp_file_which_is_then_gone(services):
    with services.storage.temp_result("t1") as tmp:
        tmp.write_bytes(b"video")
        assert partial_ids(services) == {"t1"}
        services.storage.put_result("t1", 1, tmp)
        assert not tmp.exists()
    assert set(services.storage.result_files()) == {("t1", 1)} and partial_ids(services) == set()


def test_a_failed_encode_leaves_nothing_behind(services):
    with pytest.raises(RuntimeError), services.storage.temp_result("t1") as tmp:
        tmp.write_bytes(b"half a video")
        raise RuntimeError("encoder died")
    assert partial_ids(services) == set() and set(services.storage.result_files()) == set()


def test_each_attempt_has_its_own_file_and_removing_the_result_removes_them_all(services):
    for attempt in (1, 2, None):
        put(services, "t1", attempt)
    put(services, "t10", 1)  # a task id that starts with another's
    assert set(services.storage.result_files()) == {("t1", 1), ("t1", 2), ("t1", None), ("t10", 1)}
    services.storage.remove_attempt("t1", 1)
    assert set(services.storage.result_files()) == {("t1", 2), ("t1", None), ("t10", 1)}
    services.storage.remove_result("t1")
    assert set(services.storage.result_files()) == {("t10", 1)}
    services.storage.remove_result("t1")  # removing what is gone is no error


def test_uploads_are_saved_read_back_at_most_one_byte_over_the_limit_and_removed(services, tmp_path):
    storage = services.storage
    storage.save_upload("dir/a/b.png", b"0123456789")
    with (tmp_path / "c.bin").open("w+b") as fh:  # a file is stored from its current position
        fh.write(b"skip:file-bytes")
        fh.seek(len(b"skip:"))
        storage.save_upload("dir/a/c.bin", fh)
    storage.save_upload("dir/a/empty", b"")
    assert storage.upload_exists("dir/a/b.png") and not storage.upload_exists("dir/a/none")
    assert storage.read_upload("dir/a/b.png", 100) == b"0123456789"
    assert storage.read_upload("dir/a/b.png", 4) == b"01234"  # max_bytes + 1: the caller sees it is too big
    assert storage.read_upload("dir/a/c.bin", 100) == b"file-bytes"
    assert storage.read_upload("dir/a/empty", 100) == b""
    storage.remove_upload("dir/a/b.png")
    assert not storage.upload_exists("dir/a/b.png")
    with pytest.raises(OSError):
        storage.read_upload("dir/a/b.png", 100)
    storage.remove_upload("dir/a/b.png")  # gone already: no error


@pytest.mark.parametrize("key", ["../escape", "a/../../b", "a//b", "a b", ""])
def test_an_upload_key_that_is_not_plain_names_is_refused(services, key):
    with pytest.raises(ServiceError):
        services.storage.save_upload(key, b"x")


def test_a_result_link_has_one_form_and_holds_for_its_file_until_it_expires(services):
    """One link form whichever backend (S3's "redirect" links): clients and the route see no difference
    until they follow it."""
    signer = Signer(services.settings.secret())
    for attempt, name in ((2, "t.2.mp4"), (None, "t.mp4")):
        url = services.storage.result_url("t", attempt, "http://h/", 2_000_000_000)
        assert url.startswith(f"http://h/files/results/{name}?Expires=2000000000&Signature=")
        params = httpx.URL(url).params
        check_result_link(signer, name, params["Expires"], params["Signature"])
        with pytest.raises(ServiceError, match="signature does not match"):
            check_result_link(signer, "u.mp4", params["Expires"], params["Signature"])
    past = httpx.URL(services.storage.result_url("t", 1, "http://h", int(time.time()) - 1)).params
    with pytest.raises(ServiceError, match="expired"):
        check_result_link(signer, "t.1.mp4", past["Expires"], past["Signature"])


def test_sweep_removes_a_dead_workers_temp_file_but_not_a_running_tasks(services):
    running, dead = new_task(services), new_task(services)
    assert services.store.claim("w1").id == running
    with services.storage.temp_result(running) as mine, services.storage.temp_result(dead) as leftover:
        mine.write_bytes(b"being written")
        leftover.write_bytes(b"a killed worker's")
        assert services.sweep().orphans == 1
        assert mine.exists() and not leftover.exists()


def test_sweep_keeps_the_published_file_and_removes_orphans_and_other_attempts_once_the_task_ended(services):
    won, canceled, legacy = new_task(services), new_task(services), new_task(services)
    assert services.store.claim("w").id == won
    put(services, won, 1, b"lost attempt")
    put(services, won, 2, b"winning attempt")
    put(services, canceled, 1)
    put(services, "no-such-task", 1)
    assert services.sweep().orphans == 1  # the task row is gone; a running or pending task's files all stay
    assert services.store.succeed(won, "w", {"attempt": 2})
    assert services.store.cancel(canceled, "a")
    assert services.store.claim("w").id == legacy
    assert services.store.succeed(legacy, "w", {"width": 832})  # stored before per-attempt files
    put(services, legacy, None)
    assert services.sweep().orphans == 2
    assert set(services.storage.result_files()) == {(won, 2), (legacy, None)}
    assert services.sweep().orphans == 0


def test_storage_answers_its_ping(services):
    services.storage.ping()
