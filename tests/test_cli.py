"""The `wanserve` command as a user types it."""

from __future__ import annotations

import os
import subprocess
import sys

import httpx
import pytest

from wanserve.catalog.models import MODELS

from .conftest import ASYNC, free_port, poll_task, wait_until_serving


def wanserve(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "wanserve.cli", *args], capture_output=True, text=True,
                          timeout=120, check=False, env={**os.environ, **(env or {})})


def test_keys_create_list_and_revoke(tmp_path):
    data = str(tmp_path / "d")
    created = wanserve("keys", "create", "--data-dir", data, "--account", "team-a")
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    assert key.startswith("sk-ws-")
    listed = wanserve("keys", "list", "--data-dir", data).stdout
    key_id = listed.split()[0]
    assert "team-a" in listed and "active" in listed and key not in listed  # the key itself is never shown again
    assert wanserve("keys", "revoke", key_id, "--data-dir", data).returncode == 0
    assert "revoked" in wanserve("keys", "list", "--data-dir", data).stdout
    assert wanserve("keys", "revoke", key_id, "--data-dir", data).returncode == 1


def test_models_prints_every_catalog_model_and_alias():
    out = wanserve("models").stdout
    for m in MODELS:
        assert m.name in out
        for alias in m.aliases:
            assert alias in out


@pytest.mark.slow
def test_serve_starts_a_working_server_with_embedded_defaults(tmp_path):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "wanserve.cli", "serve", "--port", str(port), "--data-dir",
                             str(tmp_path / "data")], env={**os.environ, "WANSERVE_API_KEY": "sk-readme"},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        api = f"http://127.0.0.1:{port}/api/v1"
        headers = {"Authorization": "Bearer sk-readme"}
        wait_until_serving(api, headers, proc)
        r = httpx.post(f"{api}/services/aigc/video-generation/video-synthesis", headers={**headers, **ASYNC},
                       json={"model": "wanx2.1-t2v-turbo", "input": {"prompt": "hello"},
                             "parameters": {"size": "832*480"}})
        out = poll_task(api, headers, r.json()["output"]["task_id"], timeout=60)
        assert out["task_status"] == "SUCCEEDED"
        assert httpx.get(out["video_url"]).status_code == 200
    finally:
        proc.terminate()
        output = proc.communicate(timeout=20)[0]
    assert f"http://127.0.0.1:{port}/api/v1" in output and "WANSERVE_API_KEY" in output
