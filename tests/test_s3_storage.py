"""S3 storage (issue #12): what only S3 has (the Storage contract both backends keep is in
tests/test_storage.py), then wanserve end to end on S3: results, links, uploads, the sweeper."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import update

from wanserve.config import Settings
from wanserve.services import Services
from wanserve.tasks.db import now_ms
from wanserve.tasks.schema import tasks, uploads

from .conftest import S3_PREFIX, Server, image_bytes, probe_video, s3_client, stored_results
from .test_storage import new_task, partial_ids, put
from .test_uploads import get_policy, post_file

SHORT_T2V = {"model": "wanx2.1-t2v-turbo", "input": {"prompt": "a cat"}, "parameters": {"size": "832*480"}}


def keys(settings: dict[str, Any], under: str = "") -> set[str]:
    listing = s3_client(settings).list_objects_v2(Bucket=settings["s3_bucket"], Prefix=S3_PREFIX + under)
    return {obj["Key"][len(S3_PREFIX):] for obj in listing.get("Contents", [])}


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
    obj = s3_client(s3).get_object(Bucket=s3["s3_bucket"], Key=f"{S3_PREFIX}results/big.1.mp4")
    assert obj["Body"].read() == data and obj["ContentType"] == "video/mp4"


def test_an_unfinished_multipart_upload_is_aborted_once_its_task_is_not_running(s3_services, s3):
    running, dead = new_task(s3_services), new_task(s3_services)
    assert s3_services.store.claim("w").id == running
    bucket = s3_client(s3)
    for task_id in (running, dead):  # what a worker killed in the middle of put_result leaves
        bucket.create_multipart_upload(Bucket=s3["s3_bucket"], Key=f"{S3_PREFIX}results/{task_id}.1.mp4")
    assert partial_ids(s3_services) == {running, dead}
    assert s3_services.sweep().orphans == 1
    left = bucket.list_multipart_uploads(Bucket=s3["s3_bucket"]).get("Uploads", [])
    assert [u["Key"] for u in left] == [f"{S3_PREFIX}results/{running}.1.mp4"]


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
    s3_client(s3).delete_object(Bucket=s3["s3_bucket"], Key=f"{S3_PREFIX}results/{tid}.1.mp4")
    gone = httpx.get(url)
    assert gone.status_code == 404 and gone.json()["code"] == "NotFound"


def test_direct_links_are_presigned_s3_urls_that_last_as_long_as_the_task(make_server, s3):
    server: Server = make_server(workers=1, **s3, s3_links="direct")
    tid = server.create(SHORT_T2V).json()["output"]["task_id"]
    url = server.wait(tid)["output"]["video_url"]
    assert url.startswith(f"{s3['s3_endpoint_url']}/{s3['s3_bucket']}/{S3_PREFIX}results/{tid}.1.mp4?")
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
    s3_client(s3).put_object(Bucket=s3["s3_bucket"], Key=f"{S3_PREFIX}results/{orphan}.1.mp4", Body=b"x")
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
