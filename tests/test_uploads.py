"""Temporary uploads (contract E6/E7): signed policies, the upload itself, oss:// resolution."""

from __future__ import annotations

import time

import httpx
from sqlalchemy import select

from wanserve.accounts.keys import create_key
from wanserve.tasks.schema import uploads

from .conftest import Server, image_bytes


def get_policy(server: Server, key: str | None = None, model: str = "wan2.2-i2v-flash") -> dict:
    with server.client(key) as c:
        r = c.get("/uploads", params={"action": "getPolicy", "model": model})
    assert r.status_code == 200, r.text
    return r.json()["data"]


def post_file(server: Server, policy: dict, name: str, data: bytes, **override: str) -> httpx.Response:
    form = {"OSSAccessKeyId": policy["oss_access_key_id"], "Signature": policy["signature"],
            "policy": policy["policy"], "key": f"{policy['upload_dir']}/{name}",
            "x-oss-object-acl": policy["x_oss_object_acl"],
            "x-oss-forbid-overwrite": policy["x_oss_forbid_overwrite"],
            "success_action_status": "200", "x-oss-content-type": "image/png", **override}
    return httpx.post(policy["upload_host"], data=form, files={"file": (name, data)})


def test_policy_has_every_field_the_sdk_requires_and_a_fresh_directory(make_server):
    server = make_server(workers=0)
    a, b = get_policy(server), get_policy(server)
    for field in ("oss_access_key_id", "signature", "policy", "upload_dir", "x_oss_object_acl",
                  "x_oss_forbid_overwrite", "upload_host"):
        assert a[field]
    assert a["upload_dir"] != b["upload_dir"]
    assert a["upload_host"] == f"{server.api}/uploads" and a["expire_in_seconds"] == 300


def test_policy_needs_a_key_and_a_known_model(make_server):
    server = make_server(workers=0)
    assert httpx.get(f"{server.api}/uploads",
                     params={"action": "getPolicy", "model": "wan2.6-t2v"}).status_code == 401
    with server.client() as c:
        assert c.get("/uploads", params={"action": "getPolicy", "model": "nope"}).status_code == 400


def test_upload_is_stored_for_the_account_and_refuses_overwrite(make_server):
    server = make_server(workers=0)
    policy = get_policy(server)
    assert post_file(server, policy, "a.png", b"png-bytes").status_code == 200
    with server.services.db.begin() as conn:
        row = conn.execute(select(uploads)).mappings().one()
    assert row["key"] == f"{policy['upload_dir']}/a.png" and row["account_id"] == "default"
    assert server.services.storage.read_upload(row["key"], 100) == b"png-bytes"
    assert post_file(server, policy, "a.png", b"other").status_code == 409


def test_tampered_or_expired_policy_is_403(make_server):
    server = make_server(workers=0)
    policy = get_policy(server)
    assert post_file(server, policy, "a.png", b"x", Signature="forged").status_code == 403
    old, sig = server.services.uploads.make_policy("default", "wan2.6-t2v", policy["upload_dir"],
                                                   int(time.time()) - 1, 1000)
    r = post_file(server, {**policy, "policy": old, "signature": sig}, "a.png", b"x")
    assert r.status_code == 403 and "Policy expired" in r.json()["message"]


def test_key_outside_the_policy_directory_is_403(make_server):
    server = make_server(workers=0)
    policy = get_policy(server)
    r = post_file(server, policy, "a.png", b"x", key="dashscope-instant/other/dir/a.png")
    assert r.status_code == 403


def test_oss_url_of_another_accounts_upload_fails_the_task(server: Server):
    _, other = create_key(server.services.db, "other")
    policy = get_policy(server, key=other)
    assert post_file(server, policy, "a.png", image_bytes(640, 480)).status_code == 200
    body = {"model": "wan2.2-i2v-flash", "input": {"prompt": "x", "img_url": f"oss://{policy['upload_dir']}/a.png"},
            "parameters": {"resolution": "480P"}}
    tid = server.create(body, **{"X-DashScope-OssResourceResolve": "enable"}).json()["output"]["task_id"]
    out = server.wait(tid)["output"]
    assert out["task_status"] == "FAILED" and out["code"] == "InvalidParameter.DataInspection"
