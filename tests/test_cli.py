"""The `wanserve` command as a user types it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from wanserve.catalog.models import MODELS

from .conftest import ASYNC, free_port, poll_task, wait_until_serving


def wanserve(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "wanserve.cli", *args], capture_output=True, text=True,
                          timeout=120, check=False, env={**os.environ, **(env or {})})


def spawn(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "wanserve.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_until_catching(proc: subprocess.Popen, sig: int, timeout: float = 60) -> None:
    """Wait until `proc` has a handler for `sig` (Linux: the SigCgt mask in /proc/PID/status), i.e. as early
    as a signal can be handled at all."""
    status = Path(f"/proc/{proc.pid}/status")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        fields = dict(line.split(":", 1) for line in status.read_text().splitlines() if ":" in line)
        if int(fields["SigCgt"], 16) & (1 << (sig - 1)):
            return
        time.sleep(0.001)
    raise AssertionError(f"no handler for signal {sig} in time; exit code {proc.poll()}")


needs_proc = pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc/PID/status")


@pytest.mark.parametrize(
    ("text", "key"),
    [('lease_seconds = "30"\n', "lease_seconds"), ('workers = "two"\n', "workers"),
     ("wokers = 2\n", "wokers")],
)
@pytest.mark.parametrize("command", ["serve", "worker", "sweep"])
def test_a_bad_config_file_stops_the_command_with_one_line(tmp_path, text, key, command):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(text)
    result = wanserve(command, "--config", str(cfg), "--data-dir", str(tmp_path / "d"))
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"wanserve: cannot start: {cfg}: {key}: ")
    assert result.stdout == ""


def test_a_bad_environment_value_stops_the_command_with_one_line(tmp_path):
    result = wanserve("keys", "list", "--data-dir", str(tmp_path / "d"), env={"WANSERVE_WORKERS": "two"})
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        'wanserve: cannot start: environment WANSERVE_WORKERS: expected a whole number, got "two"; '
        "set e.g. WANSERVE_WORKERS=1"]


def test_a_missing_config_file_stops_the_command_with_one_line(tmp_path):
    result = wanserve("worker", "--config", str(tmp_path / "nope.toml"), "--data-dir", str(tmp_path / "d"))
    assert result.returncode == 2
    assert len(result.stderr.splitlines()) == 1
    assert result.stderr.startswith(f"wanserve: cannot start: {tmp_path / 'nope.toml'}: cannot read")


@needs_proc
def test_worker_stopped_while_starting_exits_0(tmp_path):
    proc = spawn("worker", "--data-dir", str(tmp_path / "d"))
    try:
        wait_until_catching(proc, signal.SIGTERM)  # the first thing `worker` does; starting takes ~1 s more
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "worker(s) on" not in out  # stopped during start-up, not after
    assert "Traceback" not in err


@needs_proc
def test_serve_stopped_while_starting_exits_0(tmp_path):
    proc = spawn("serve", "--data-dir", str(tmp_path / "d"), "--port", str(free_port()))
    try:
        wait_until_catching(proc, signal.SIGTERM)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "serving on" not in out
    assert "Traceback" not in err


@needs_proc
def test_worker_stopped_once_running_exits_0(tmp_path):
    proc = spawn("worker", "--data-dir", str(tmp_path / "d"))
    try:
        assert "worker(s) on" in proc.stdout.readline()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, err


def test_keys_create_list_and_revoke(tmp_path):
    data = str(tmp_path / "d")
    created = wanserve("keys", "create", "--data-dir", data, "--account", "team-a")
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    assert key.startswith("sk-ws-")
    listed = wanserve("keys", "list", "--data-dir", data).stdout
    key_id = listed.split()[0]
    assert "team-a" in listed and "active" in listed
    assert key not in listed  # the key itself is never shown again
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
