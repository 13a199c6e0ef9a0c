"""Issue 8's hosted features through the real command: `wanserve serve --config` in a subprocess, tiny
random-weight checkpoints built offline here (Wan t2v, Wan i2v, Stable Audio), a loopback
OpenAI-compatible server for `[prompt_extend]`, and the outputs downloaded and decoded with PyAV.

`native_fps = 1`, `max_native_frames = 5` and 2 denoising steps keep every pipeline call at 5 native
frames; the server's log (one "wan: call k/n" line per pipeline call) shows what each call was asked.
"""

from __future__ import annotations

import base64
import io
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import httpx
import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("diffusers")

from wanserve.generation.rewrite import prompts

from . import wan_fixtures
from .conftest import ASYNC, download, free_port, image_bytes, poll_task, probe_video, wait_until_serving
from .test_prompt_extend import FakeLLM
from .test_sound_engine import audio_track, build_stable_audio

pytestmark = pytest.mark.slow

T2V, I2V = "wan2.6-t2v", "wan2.6-i2v"
KEY = "sk-wan-test"
CALL = re.compile(r"wan: call (\d+)/(\d+): (\S+) (\w+), (\d+) native frames, prompt '(.*)'$")


@dataclass
class Serve:
    api: str
    log: Path
    llm: FakeLLM
    proc: subprocess.Popen

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {KEY}"}

    def run(self, body: dict[str, Any], timeout: float = 300) -> tuple[dict[str, Any], bytes, list[tuple]]:
        """Submit a task, wait for it; its output, the video's bytes and the pipeline calls it logged."""
        start = self.log.stat().st_size
        r = httpx.post(f"{self.api}/services/aigc/video-generation/video-synthesis",
                       headers={**self.headers, **ASYNC}, json=body, timeout=60)
        assert r.status_code == 200, r.text
        out = poll_task(self.api, self.headers, r.json()["output"]["task_id"], timeout=timeout)
        assert out["task_status"] == "SUCCEEDED", (out, self.tail())
        with self.log.open("rb") as f:
            f.seek(start)
            lines = f.read().decode(errors="replace").splitlines()
        calls = [m.groups() for line in lines if (m := CALL.search(line))]
        return out, download(out["video_url"]), calls

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


@pytest.fixture(scope="module")
def serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serve]:
    root = tmp_path_factory.mktemp("hosted-serve")
    t2v = wan_fixtures.build_t2v(root / "Wan-T2V-tiny-Diffusers")
    i2v = wan_fixtures.build_i2v_two_experts(root / "Wan2.2-I2V-tiny-Diffusers")
    audio = build_stable_audio(root / "stable-audio-tiny")
    llm = FakeLLM()
    fast = "num_inference_steps = 2\nnative_fps = 1\nmax_native_frames = 5\n"
    config = root / "wanserve.toml"
    config.write_text(
        "workers = 1\nallow_private_media_urls = true\n"
        f'[prompt_extend]\nbackend = "openai"\nbase_url = "{llm.url}"\nmodel = "qwen-test"\n'
        "timeout_seconds = 5\n"
        f'[models."{T2V}"]\nengine = "wan"\ncheckpoint = "{t2v}"\n{fast}'
        f'[models."{T2V}".sound]\nengine = "stable_audio"\ncheckpoint = "{audio}"\n'
        'num_inference_steps = 3\ndevice = "cpu"\n'
        f'[models."{I2V}"]\nengine = "wan"\ncheckpoint = "{i2v}"\n{fast}sound = "silent"\n')
    port = free_port()
    log = root / "serve.log"
    with log.open("wb") as sink:
        args = ["serve", "--config", str(config), "--host", "127.0.0.1", "--port", str(port),
                "--data-dir", str(root / "data")]
        proc = subprocess.Popen([sys.executable, "-m", "wanserve.cli", *args],
                                env={**os.environ, "WANSERVE_API_KEY": KEY}, stdout=sink,
                                stderr=subprocess.STDOUT)
    server = Serve(f"http://127.0.0.1:{port}/api/v1", log, llm, proc)
    try:
        wait_until_serving(server.api, server.headers, proc, timeout=180)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        llm.close()


def frames_of(data: bytes) -> np.ndarray:
    with av.open(io.BytesIO(data)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def assert_cuts_at(data: bytes, cut_frames: list[int]) -> None:
    """The frame-to-frame difference spikes where each shot starts and nowhere else as strongly."""
    frames = frames_of(data)
    diff = np.abs(np.diff(frames.astype(np.int16), axis=0)).mean(axis=(1, 2, 3))  # diff[i]: frame i -> i+1
    cuts = [c - 1 for c in cut_frames]
    others = np.delete(diff, cuts)
    assert diff[cuts].min() > 2 * others.max(), (diff[cuts], others.max(), int(np.argmax(others)))


def data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


# ------------------------------------------------------------------------------------------ multi-shot


def test_three_shot_markers_cut_at_the_planned_frames_each_shot_with_its_own_prompt(serve: Serve):
    prompt = ("A red car on a mountain road. Shot 1 [0-1 s]: the car drives along the road. "
              "Shot 2 [1-3 s]: close-up of the driver. Shot 3 [3-4 s]: the car in the rain.")
    out, data, calls = serve.run({"model": T2V, "input": {"prompt": prompt},
                                  "parameters": {"size": "1280*720", "duration": 4, "seed": 3,
                                                 "prompt_extend": False}})
    video = probe_video(data)
    assert (video.width, video.height, video.fps, video.frames) == (1280, 720, 30.0, 120)
    assert_cuts_at(data, [30, 90])  # round(1 x 30), round(3 x 30)
    assert [c[:5] for c in calls] == [(str(k), "3", T2V, "t2v", "5") for k in (1, 2, 3)]
    assert [c[5] for c in calls] == ["A red car on a mountain road. the car drives along the road.",
                                     "A red car on a mountain road. close-up of the driver.",
                                     "A red car on a mountain road. the car in the rain."]
    assert serve.llm.requests == []  # prompt_extend false


# ------------------------------------------------------------------------------------------ long i2v


@pytest.mark.parametrize("seconds,segments", [(10, 2), (15, 3)])
def test_a_long_i2v_task_is_chained_generations_of_at_most_max_native_frames(serve: Serve, seconds: int,
                                                                             segments: int):
    body = {"model": I2V, "input": {"prompt": "a cat walks across the kitchen",
                                    "img_url": data_url(image_bytes(480, 360, seed=5))},
            "parameters": {"resolution": "720P", "duration": seconds, "seed": 7, "prompt_extend": False}}
    out, data, calls = serve.run(body)
    video = probe_video(data)
    assert video.frames == 30 * seconds and video.fps == 30.0
    assert abs(video.width / video.height - 4 / 3) < 0.02
    assert len(calls) == segments, calls
    assert all(c[1] == str(segments) and c[2] == I2V and c[3] == "i2v" for c in calls)
    assert all(int(c[4]) <= 5 for c in calls)
    assert all(c[5] == "a cat walks across the kitchen" for c in calls)


# ------------------------------------------------------------------------------------------ prompt_extend


def test_a_multi_shot_rewrite_sends_the_system_prompt_and_cuts_at_the_shot_lists_times(serve: Serve):
    serve.llm.requests.clear()
    serve.llm.reply = ('{"shots": [{"text": "A detective enters a smoky bar.", "seconds": 1}, '
                       '{"text": "He orders a whisky.", "seconds": 2}, {"text": "Close-up on his eyes.", '
                       '"seconds": 1}]}')
    out, data, calls = serve.run({"model": T2V, "input": {"prompt": "A detective in a bar."},
                                  "parameters": {"size": "1280*720", "duration": 4, "seed": 4,
                                                 "shot_type": "multi"}})
    [sent] = serve.llm.requests
    assert sent["path"] == "/v1/chat/completions" and sent["body"]["model"] == "qwen-test"
    system, user = prompts.messages("t2v", "A detective in a bar.", 4, "multi")
    assert sent["body"]["messages"] == [{"role": "system", "content": system},
                                        {"role": "user", "content": user}]
    assert "A detective in a bar." in user
    assert probe_video(data).frames == 120
    assert_cuts_at(data, [30, 90])
    assert [c[5] for c in calls] == ["A detective enters a smoky bar.", "He orders a whisky.",
                                     "Close-up on his eyes."]


# ------------------------------------------------------------------------------------------ sound


def test_generated_sound_is_an_aac_track_as_long_as_the_video_and_differs_by_seed(serve: Serve):
    tracks = []
    for seed in (1, 2):
        out, data, calls = serve.run({"model": T2V, "input": {"prompt": "Waves break on a pebble beach."},
                                      "parameters": {"size": "1280*720", "duration": 2, "seed": seed,
                                                     "prompt_extend": False}})
        info = probe_video(data)
        assert info.audio_codec == "aac" and info.frames == 60, info
        assert abs(info.audio_seconds - info.frames / info.fps) < 0.05, info
        tracks.append(audio_track(data))
    a, b = tracks
    assert np.abs(a).mean() > 1e-4 and np.abs(b).mean() > 1e-4
    n = min(len(a), len(b))
    assert np.abs(a[:n] - b[:n]).mean() > 1e-4  # two seeds, two different tracks


# ------------------------------------------------------------------------------------------ LLM down (last:
# it stops the loopback LLM)


def test_with_the_llm_server_stopped_a_task_still_succeeds_with_the_original_prompt(serve: Serve):
    serve.llm.close()
    out, data, calls = serve.run({"model": T2V, "input": {"prompt": "a cat on a sunny windowsill"},
                                  "parameters": {"size": "1280*720", "duration": 2, "seed": 5}})
    assert probe_video(data).frames == 60
    assert [c[5] for c in calls] == ["a cat on a sunny windowsill"]
