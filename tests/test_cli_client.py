"""`wanserve generate` and `wanserve tasks`: the client commands against a real server on loopback, run
in-process (`cli.main`); `--version`; and `serve`'s one-line refusal of a busy port (a subprocess)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import httpx
import pytest

from wanserve import cli
from wanserve.catalog.models import find_model
from wanserve.client import Generation

from .conftest import ASYNC, free_port, image_bytes, probe_video

FAST = ["--model", "wan2.2-t2v-plus", "--size", "832*480", "--poll-seconds", "0.1"]  # silent, 480P: quick


def run(capsys, server, *args: str) -> tuple[int, str, str]:
    """`wanserve ARGS --base-url <server> --api-key <key>`: exit status, stdout, stderr."""
    code = cli.main([*args, "--base-url", server.api, "--api-key", server.key])
    out, err = capsys.readouterr()
    return code, out, err


def test_generate_writes_a_playable_video_and_prints_its_path(make_server, capsys, tmp_path):
    server = make_server()
    dest = tmp_path / "cat.mp4"
    code, out, err = run(capsys, server, "generate", "--prompt", "a cat in the rain", "-o", str(dest), *FAST)
    assert code == 0, err
    assert out.strip() == str(dest)
    video = probe_video(dest.read_bytes())
    assert (video.width, video.height) == (832, 480) and video.frames > 0
    assert "SUCCEEDED" in err and "100%" in err  # the progress bar's last state


def test_generate_without_output_names_the_file_after_the_task(make_server, capsys, tmp_path, monkeypatch):
    server = make_server()
    monkeypatch.chdir(tmp_path)
    code, out, _ = run(capsys, server, "generate", "--prompt", "x", *FAST)
    assert code == 0
    name = out.strip()
    assert name.endswith(".mp4") and (tmp_path / name).is_file()
    assert server.task(name.removesuffix(".mp4"))["output"]["task_status"] == "SUCCEEDED"


def test_generate_uploads_a_local_image_for_an_image_to_video_model(make_server, capsys, tmp_path):
    server = make_server()
    image = tmp_path / "first.png"
    image.write_bytes(image_bytes(640, 360))
    dest = tmp_path / "i2v.mp4"
    code, _, err = run(capsys, server, "generate", "--model", "wan2.2-i2v-flash", "--prompt", "it moves",
                       "--image", str(image), "--resolution", "480P", "--duration", "5",
                       "--poll-seconds", "0.1", "-o", str(dest))
    assert code == 0, err
    assert probe_video(dest.read_bytes()).frames > 0
    with server.client() as c:
        task_id = c.get("/tasks").json()["data"][0]["task_id"]
    assert server.services.store.get(task_id)["request"]["media"][0]["url"].startswith("oss://")


def test_a_failed_task_prints_its_code_and_message_and_exits_1(make_server, capsys, tmp_path):
    server = make_server()
    code, out, err = run(capsys, server, "generate", "--model", "wan2.2-i2v-flash", "--prompt", "x",
                         "--image", "http://127.0.0.1:9/missing.png", "--poll-seconds", "0.1")
    assert code == 1 and out == ""
    last = err.strip().splitlines()[-1]
    assert " FAILED: InvalidURL" in last


def test_an_api_error_is_one_line_with_the_apis_code_and_message(make_server, capsys):
    server = make_server(workers=0)
    code, out, err = run(capsys, server, "generate", "--model", "wan2.6-t2v", "--prompt", "x",
                         "--size", "1*1")
    assert code == 1 and out == ""
    assert err.startswith("wanserve: InvalidParameter: size must be in") and len(err.splitlines()) == 1


def test_a_wrong_key_is_the_apis_invalid_key_error(make_server, capsys):
    server = make_server(workers=0)
    code = cli.main(["tasks", "list", "--base-url", server.api, "--api-key", "sk-wrong"])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("wanserve: InvalidApiKey: ") and len(err.splitlines()) == 1


def test_a_server_that_is_not_running_is_named_with_the_flag_to_fix(capsys):
    url = f"http://127.0.0.1:{free_port()}"
    code = cli.main(["generate", "--model", "wan2.6-t2v", "--prompt", "x", "--base-url", url,
                     "--api-key", "sk-x"])
    assert code == 1
    assert capsys.readouterr().err == (f"wanserve: cannot reach {url}: connection refused; "
                                       "is the server running? (--base-url)\n")


def test_a_flag_the_model_cannot_use_is_refused_before_anything_is_sent(capsys):
    code = cli.main(["generate", "--model", "wan2.6-t2v", "--prompt", "x", "--image", "a.png",
                     "--base-url", f"http://127.0.0.1:{free_port()}", "--api-key", "sk-x"])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("wanserve: --image: wan2.6-t2v makes video from text alone")


def test_the_key_and_address_come_from_the_dashscope_environment(make_server, capsys, monkeypatch):
    server = make_server(workers=0)
    monkeypatch.setenv("DASHSCOPE_HTTP_BASE_URL", server.api)
    monkeypatch.setenv("DASHSCOPE_API_KEY", server.key)
    assert cli.main(["tasks", "list"]) == 0
    assert "page 1 of 1 (0 tasks)" in capsys.readouterr().err


def test_tasks_list_shows_the_tasks_filtered_by_status(make_server, capsys):
    server = make_server(workers=0)
    ids = [server.create({"model": "wan2.6-t2v", "input": {"prompt": "x"}}).json()["output"]["task_id"]
           for _ in range(2)]
    with server.client() as c:
        c.post(f"/tasks/{ids[0]}/cancel")
    code, out, _ = run(capsys, server, "tasks", "list", "--status", "CANCELED")
    assert code == 0
    assert [line.split()[:3] for line in out.splitlines()] == [[ids[0], "CANCELED", "wan2.6-t2v"]]


def test_tasks_show_prints_the_task_as_json(make_server, capsys):
    import json

    server = make_server(workers=0)
    task_id = server.create({"model": "wan2.6-t2v", "input": {"prompt": "x"}}).json()["output"]["task_id"]
    code, out, _ = run(capsys, server, "tasks", "show", task_id)
    assert code == 0
    assert json.loads(out)["output"] == {**json.loads(out)["output"], "task_id": task_id,
                                         "task_status": "PENDING"}


def test_tasks_cancel_cancels_and_watch_reports_it(make_server, capsys):
    server = make_server(workers=0)
    task_id = server.create({"model": "wan2.6-t2v", "input": {"prompt": "x"}}).json()["output"]["task_id"]
    assert run(capsys, server, "tasks", "cancel", task_id)[:2] == (0, f"canceled {task_id}\n")
    code, _, err = run(capsys, server, "tasks", "watch", task_id, "--poll-seconds", "0.1")
    assert code == 1 and err.strip().endswith(f"wanserve: task {task_id} CANCELED")


def test_tasks_watch_follows_a_task_to_its_video_url(make_server, capsys):
    server = make_server()
    task_id = server.create({"model": "wan2.2-t2v-plus", "input": {"prompt": "x"},
                             "parameters": {"size": "832*480"}}).json()["output"]["task_id"]
    code, out, err = run(capsys, server, "tasks", "watch", task_id, "--poll-seconds", "0.1")
    assert code == 0, err
    assert httpx.get(out.strip()).status_code == 200


def test_cancelling_an_ended_task_is_the_apis_error(make_server, capsys):
    server = make_server(workers=0)
    code, _, err = run(capsys, server, "tasks", "cancel", "no-such-task")
    assert code == 1 and err.startswith("wanserve: UnsupportedOperation: ")


def test_version_prints_the_package_version(capsys):
    from importlib.metadata import version

    with pytest.raises(SystemExit) as stop:
        cli.main(["--version"])
    assert stop.value.code == 0
    assert capsys.readouterr().out == f"wanserve {version('wanserve')}\n"


@pytest.mark.parametrize(("kind_model", "fields"), [
    ("wan2.2-kf2v-flash", {"first_frame_url", "last_frame_url"}),
    ("wan2.6-i2v", {"img_url", "audio_url"}),
])
def test_media_go_to_the_fields_the_model_reads(kind_model, fields):
    gen = Generation(kind_model, "p", image="https://x/a.png", last_frame="https://x/b.png"
                     if "kf2v" in kind_model else None, audio=None if "kf2v" in kind_model else "https://x/a.mp3")
    assert set(gen.body(find_model(kind_model))["input"]) == {"prompt", *fields}


def test_wan27_media_go_in_the_media_list():
    gen = Generation("wan2.7-i2v", "p", image="https://x/a.png", audio="https://x/a.mp3")
    assert gen.body(find_model("wan2.7-i2v"))["input"]["media"] == [
        {"type": "first_frame", "url": "https://x/a.png"}, {"type": "driving_audio", "url": "https://x/a.mp3"}]


def test_serve_on_a_busy_port_says_so_in_one_line_before_anything_else(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run([sys.executable, "-m", "wanserve.cli", "serve", "--port", str(port),
                                 "--data-dir", str(tmp_path / "d")], capture_output=True, text=True,
                                timeout=60, env={**os.environ, "WANSERVE_API_KEY": ""})
    assert result.returncode == 2
    assert result.stderr == (f"wanserve: cannot start: port {port} on 127.0.0.1 is already in use; stop the "
                             "other server or pass --port\n")
    assert result.stdout == ""
    assert not (tmp_path / "d").exists()  # nothing was opened


def test_serve_prints_serving_on_once_the_port_answers(tmp_path):
    from .conftest import wait_until_serving

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "wanserve.cli", "serve", "--port", str(port), "--workers",
                             "0", "--data-dir", str(tmp_path / "d")], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "WANSERVE_API_KEY": "sk-t"})
    try:
        first = proc.stdout.readline()
        assert first.startswith(f"wanserve: serving on http://127.0.0.1:{port}/api/v1")
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass  # accepted (queued) at once: the line was printed for a socket already listening
        wait_until_serving(f"http://127.0.0.1:{port}/api/v1", {"Authorization": "Bearer sk-t", **ASYNC}, proc)
    finally:
        proc.terminate()
        proc.wait(30)


def test_an_output_in_a_missing_folder_is_refused_before_a_task_is_made(make_server, capsys, tmp_path):
    server = make_server(workers=0)
    dest = tmp_path / "no" / "such" / "v.mp4"
    code, _, err = run(capsys, server, "generate", "--model", "wan2.6-t2v", "--prompt", "x", "-o", str(dest))
    assert code == 1
    assert err == f"wanserve: -o: {dest.parent}: no such folder\n"
    with server.client() as c:
        assert c.get("/tasks").json()["total"] == 0
