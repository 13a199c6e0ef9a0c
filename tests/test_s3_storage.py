"""S3 storage (issue #12): the Storage contract on local disk and on a real S3 endpoint (moto's server on
loopback, one bucket per test), then wanserve end to end on S3: results, links, uploads, the sweeper."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
from moto.server import ThreadedMotoServer
from sqlalchemy import update

from wanserve.config import Settings
from wanserve.errors import ServiceError
from wanserve.services import Services
from wanserve.storage.local import LocalStorage
from wanserve.storage.s3 import S3Storage
from wanserve.storage.signing import Signer
from wanserve.tasks.db import now_ms
from wanserve.tasks.schema import tasks, uploads

from .conftest import Server, free_port, image_bytes, probe_video, stored_results
from .test_uploads import get_policy, post_file

SHORT_T2V = {"model": "wanx2.1-t2v-turbo", "input": {"prompt": "a cat"}, "parameters": {"size": "832*480"}}
PREFIX = "wanserve/"


# -- an S3 endpoint on loopback ---------------------------------------------------------------------


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """moto's S3 server in a thread on a free loopback port, shared by the session (buckets are not)."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3(s3_endpoint: str) -> dict[str, Any]:
    """The settings of a fresh, empty bucket on the endpoint."""
    settings = {"storage": "s3", "s3_bucket": f"wanserve-{uuid.uuid4().hex[:12]}",
                "s3_endpoint_url": s3_endpoint, "s3_region": "us-east-1", "s3_prefix": PREFIX,
                "s3_access_key_id": "testing", "s3_secret_access_key": "testing"}
    client(settings).create_bucket(Bucket=settings["s3_bucket"])
    return settings


def client(settings: dict[str, Any]) -> Any:
    """A client of our own, to look into the bucket behind wanserve's back."""
    return boto3.client("s3", endpoint_url=settings["s3_endpoint_url"], region_name="us-east-1",
                        aws_access_key_id="testing", aws_secret_access_key="testing")


def keys(settings: dict[str, Any], under: str = "") -> set[str]:
    listing = client(settings).list_objects_v2(Bucket=settings["s3_bucket"], Prefix=PREFIX + under)
    return {obj["Key"][len(PREFIX):] for obj in listing.get("Contents", [])}


# -- the Storage contract, on each backend --------------------------------------------------------


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
            storage.client.put_object(Bucket=storage.bucket, Key=f"{PREFIX}results/{task_id}.mp4", Body=data)
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


def test_sweep_removes_a_dead_workers_temp_file_but_not_a_running_tasks(services):
    running, dead = new_task(services), new_task(services)
    assert services.store.claim("w1").id == running
    with services.storage.temp_result(running) as mine, services.storage.temp_result(dead) as leftover:
        mine.write_bytes(b"being written")
        leftover.write_bytes(b"a killed worker's")
        assert services.sweep().orphans == 1
        assert mine.exists() and not leftover.exists()


def test_sweep_keeps_the_published_file_and_removes_orphans_and_lost_attempts(services):
    won = new_task(services)
    assert services.store.claim("w").id == won
    put(services, won, 1, b"lost attempt")
    put(services, won, 2, b"winning attempt")
    put(services, "no-such-task", 1)
    assert services.sweep().orphans == 1  # the task row is gone; a running task's files all stay
    assert services.store.succeed(won, "w", {"attempt": 2})
    assert services.sweep().orphans == 1
    assert set(services.storage.result_files()) == {(won, 2)}


def test_storage_answers_its_ping(services):
    services.storage.ping()


# -- what only S3 has -------------------------------------------------------------------------------


@pytest.fixture
def s3_services(s3, tmp_path) -> Iterator[Services]:
    svc = Services.open(Settings(data_dir=tmp_path, **s3))
    yield svc
    svc.close()


def test_objects_live_under_the_prefix_and_nothing_under_the_data_dir(s3_services, s3):
    put(s3_services, "t1", 3)
    s3_services.storage.save_upload("d/x.png", b"png")
    assert keys(s3) == {"results/t1.3.mp4", "uploads/d/x.png"}
    data_dir = s3_services.settings.data_dir
    assert [p for p in data_dir.rglob("*") if p.is_file() and p.suffix in (".mp4", ".png")] == []


def test_a_large_result_goes_up_in_parts_and_arrives_whole(s3_services, s3):
    data = os.urandom(9 * 2**20)  # above the 8 MiB multipart threshold
    put(s3_services, "big", 1, data)
    obj = client(s3).get_object(Bucket=s3["s3_bucket"], Key=f"{PREFIX}results/big.1.mp4")
    assert obj["Body"].read() == data and obj["ContentType"] == "video/mp4"


def test_an_unfinished_multipart_upload_is_aborted_once_its_task_is_not_running(s3_services, s3):
    running, dead = new_task(s3_services), new_task(s3_services)
    assert s3_services.store.claim("w").id == running
    bucket = client(s3)
    for task_id in (running, dead):  # what a worker killed in the middle of put_result leaves
        bucket.create_multipart_upload(Bucket=s3["s3_bucket"], Key=f"{PREFIX}results/{task_id}.1.mp4")
    assert partial_ids(s3_services) == {running, dead}
    assert s3_services.sweep().orphans == 1
    left = bucket.list_multipart_uploads(Bucket=s3["s3_bucket"]).get("Uploads", [])
    assert [u["Key"] for u in left] == [f"{PREFIX}results/{running}.1.mp4"]


def test_a_redirect_link_has_the_local_form_for_the_same_signer(s3_services, tmp_path):
    """One link form whichever backend: clients and the route see no difference until they follow it."""
    signer = Signer(b"k")
    s3_storage = s3_services.storage
    assert isinstance(s3_storage, S3Storage)
    s3_storage.signer = signer
    local = LocalStorage(tmp_path / "local", signer)
    for attempt in (2, None):
        assert s3_storage.result_url("t", attempt, "http://h/", 2_000_000_000) == \
            local.result_url("t", attempt, "http://h/", 2_000_000_000)


def test_ping_fails_with_the_reason_when_the_bucket_is_not_there(s3, tmp_path):
    svc = Services.open(Settings(data_dir=tmp_path, **{**s3, "s3_bucket": "no-such-bucket-here"}))
    with pytest.raises(OSError, match="no-such-bucket-here"):
        svc.storage.ping()
    svc.close()


def test_s3_without_a_bucket_is_refused_at_start(tmp_path):
    with pytest.raises(ValueError, match="s3_bucket"):
        Services.open(Settings(data_dir=tmp_path, storage="s3"))


# -- wanserve on S3, end to end --------------------------------------------------------------------


def follow(url: str, **headers: str) -> httpx.Response:
    return httpx.get(url, headers=headers, follow_redirects=True, timeout=60)


def test_a_task_on_s3_stores_its_video_as_an_object_behind_a_redirecting_link(make_server, s3):
    server: Server = make_server(workers=1, **s3)
    tid = server.create(SHORT_T2V).json()["output"]["task_id"]
    url = server.wait(tid)["output"]["video_url"]
    assert url.startswith(f"{server.base}/files/results/{tid}.1.mp4?Expires=")
    first = httpx.get(url)
    assert first.status_code == 307 and first.headers["location"].startswith(s3["s3_endpoint_url"])
    video = follow(url)
    assert video.status_code == 200 and probe_video(video.content).frames > 0
    ranged = follow(url, Range="bytes=0-99")  # players seek: S3 answers ranges itself
    assert ranged.status_code == 206 and ranged.content == video.content[:100]
    head = httpx.head(url, follow_redirects=True)  # a HEAD is sent on to a URL presigned for HEAD
    assert head.status_code == 200 and int(head.headers["content-length"]) == len(video.content)
    assert keys(s3, "results/") == {f"results/{tid}.1.mp4"}
    assert not list(server.services.settings.data_dir.rglob("*.mp4"))
    tampered = url.replace("Expires=", "Expires=1")
    assert httpx.get(tampered).status_code == 403
    client(s3).delete_object(Bucket=s3["s3_bucket"], Key=f"{PREFIX}results/{tid}.1.mp4")
    gone = httpx.get(url)
    assert gone.status_code == 404 and gone.json()["code"] == "NotFound"


def test_direct_links_are_presigned_s3_urls_that_last_as_long_as_the_task(make_server, s3):
    server: Server = make_server(workers=1, **s3, s3_links="direct")
    tid = server.create(SHORT_T2V).json()["output"]["task_id"]
    url = server.wait(tid)["output"]["video_url"]
    assert url.startswith(f"{s3['s3_endpoint_url']}/{s3['s3_bucket']}/{PREFIX}results/{tid}.1.mp4?")
    expires_in = int(httpx.URL(url).params["X-Amz-Expires"])
    assert 24 * 3600 - 60 < expires_in <= 24 * 3600
    assert probe_video(httpx.get(url).content).frames > 0


def test_the_sdk_upload_flow_stores_the_file_as_an_object_and_oss_urls_read_it(make_server, s3):
    server: Server = make_server(workers=1, **s3)
    policy = get_policy(server)
    assert post_file(server, policy, "a.png", image_bytes(640, 480)).status_code == 200
    key = f"{policy['upload_dir']}/a.png"
    assert keys(s3, "uploads/") == {f"uploads/{key}"}
    assert post_file(server, policy, "a.png", b"other").status_code == 409  # no overwrite, as on OSS
    body = {"model": "wan2.2-i2v-flash", "input": {"prompt": "x", "img_url": f"oss://{key}"},
            "parameters": {"resolution": "480P"}}
    tid = server.create(body, **{"X-DashScope-OssResourceResolve": "enable"}).json()["output"]["task_id"]
    out = server.wait(tid)["output"]
    assert out["task_status"] == "SUCCEEDED", out
    assert probe_video(follow(out["video_url"]).content).width > 0


def test_the_sweeper_removes_expired_results_expired_uploads_and_orphan_objects(make_server, s3):
    server: Server = make_server(workers=2, **s3)
    kept, expired = (server.create(SHORT_T2V).json()["output"]["task_id"] for _ in range(2))
    for tid in (kept, expired):
        assert server.wait(tid)["output"]["task_status"] == "SUCCEEDED"
    policy = get_policy(server)
    assert post_file(server, policy, "old.png", b"png").status_code == 200
    orphan = str(uuid.uuid4())  # a result object whose task row is gone
    client(s3).put_object(Bucket=s3["s3_bucket"], Key=f"{PREFIX}results/{orphan}.1.mp4", Body=b"x")
    long_ago = now_ms() - 49 * 3600 * 1000
    with server.services.db.begin() as conn:
        conn.execute(update(tasks).where(tasks.c.id == expired).values(end_ms=long_ago))
        conn.execute(update(uploads).values(created_ms=long_ago))
    swept = server.services.sweep()
    assert (swept.tasks, swept.uploads, swept.orphans) == (1, 1, 1)
    assert keys(s3) == {f"results/{kept}.1.mp4"}
    assert stored_results(server.services) == {kept}


def test_settings_name_every_s3_option_and_the_docs_explain_each(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("WANSERVE_S3_LINKS", "direct")
    settings = Settings(data_dir=tmp_path, storage="s3", s3_bucket="b")
    assert settings.storage == "s3" and settings.s3_links == "direct"
    documented = (Path(__file__).parents[1] / "docs" / "deploy.md").read_text()
    for name in Settings.model_fields:
        if name.startswith("s3_"):
            assert f"`{name}`" in documented, name
