"""Stage "service": `wanserve serve` on the suite's device with `engine = "wan"` models, driven over HTTP
as the DashScope SDK drives it (the same paths, headers and bodies):

- a random-weight Wan2.1-T2V-1.3B at full size (on CUDA; a tiny one on the CPU), written with the
  pipeline's `save_pretrained` and loaded back by the server's real loading code, and a tiny two-expert
  I2V checkpoint;
- a t2v 832*480 5 s task and an i2v 480P 5 s task SUCCEED with progress that only rises; each MP4
  decodes to exactly 150 frames at the contract size;
- a RUNNING task canceled stops within 2 s (one denoising step of the 1.3B is ~1-2 s);
- the step-time histogram of /metrics has counted the steps.
"""

from __future__ import annotations

import base64
import io
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from common import REPO, Context, check, free

STAGE = "service"
T2V, SLOW_T2V, I2V = "wanx2.1-t2v-turbo", "wan2.2-t2v-plus", "wan2.2-i2v-plus"
KEY = "sk-gpu-suite"
CREATE = "/services/aigc/video-generation/video-synthesis"
I2V_IMAGE = (640, 480)


def plan(ctx: Context) -> list[tuple[str, float]]:
    if ctx.device.type != "cuda":
        return [("checkpoints", 4), ("start", 15), ("t2v-832x480-5s", 15), ("i2v-480p", 15),
                ("cancel-running", 5), ("metrics-step-histogram", 1)]
    # 1.3B transformer (2.6 GB) + 24-layer UMT5-XXL (9 GB) built in bf16 and saved: ~20 s of writes; the
    # server's start: imports and loading them back ~20 s; a 5 s task: 4 steps x ~1.6 s, the VAE decode of
    # 81 frames, the optical-flow conversion to 150 frames and the MP4 ~15 s
    return [("checkpoints", 30), ("start", 30), ("t2v-832x480-5s", 20), ("i2v-480p", 15),
            ("cancel-running", 8), ("metrics-step-histogram", 1)]


def run(ctx: Context) -> None:
    estimates = dict(plan(ctx))
    root = (ctx.scratch or ctx.out) / "service"
    if not ctx.fits(STAGE, "checkpoints", sum(estimates.values())):
        return
    paths: dict[str, Path] = {}
    with ctx.case(STAGE, "checkpoints"):
        started = time.monotonic()
        paths = checkpoints(ctx, root)
        ctx.record(STAGE, "checkpoints", seconds=round(time.monotonic() - started, 1),
                   t2v="full-size Wan2.1-T2V-1.3B (random)" if ctx.device.type == "cuda" else "tiny")
    if not paths:
        return
    api = None
    proc = None
    log = root / "server.log"
    try:
        with ctx.case(STAGE, "start"):
            started = time.monotonic()
            proc, api = start_server(ctx, root, paths, log)
            ctx.record(STAGE, "start", seconds=round(time.monotonic() - started, 1))
        if api is None:
            return
        from wanserve.catalog.models import image_output_size

        for case, body, size in (("t2v-832x480-5s", t2v_body(), (832, 480)),
                                 ("i2v-480p", i2v_body(), image_output_size(*I2V_IMAGE, "480P"))):
            if ctx.fits(STAGE, case, estimates[case]):
                with ctx.case(STAGE, case):
                    succeed(ctx, api, case, body, size)
        if ctx.fits(STAGE, "cancel-running", estimates["cancel-running"]):
            with ctx.case(STAGE, "cancel-running"):
                cancel_running(ctx, api)
        with ctx.case(STAGE, "metrics-step-histogram"):
            metrics(ctx, api)
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        if ctx.failed and log.exists():
            ctx.record(STAGE, "server-log", status="info", tail=log.read_text(errors="replace")[-3000:])
        free(ctx.device)


# ==================================================================================================


def checkpoints(ctx: Context, root: Path) -> dict[str, Path]:
    from tests import wan_fixtures

    paths = {"i2v": wan_fixtures.build_i2v_two_experts(root / "i2v")}
    if ctx.device.type != "cuda":
        paths["t2v"] = wan_fixtures.build_t2v(root / "t2v")
        return paths
    import gpu_denoise
    import torch
    from diffusers import WanPipeline

    components = gpu_denoise.build_components(gpu_denoise.MODELS["1.3b"], ctx.device, torch.bfloat16,
                                              tiny=False, text_layers=24)
    WanPipeline(**components).save_pretrained(root / "t2v-1.3b")
    del components
    free(ctx.device)
    paths["t2v"] = root / "t2v-1.3b"
    return paths


def config_text(ctx: Context, paths: dict[str, Path]) -> str:
    cuda = ctx.device.type == "cuda"
    # on the CPU, 1 native fps: 5 native frames per 5 s clip keep the tiny decode cheap; the output is
    # still 150 frames at 30 fps
    fast = "num_inference_steps = 4" if cuda else "num_inference_steps = 2\nnative_fps = 1"
    slow = "num_inference_steps = 50" if cuda else "num_inference_steps = 40\nnative_fps = 1"
    device = f'device = "{ctx.device}"'
    return (f'workers = 1\n'
            f'[models."{T2V}"]\nengine = "wan"\ncheckpoint = "{paths["t2v"]}"\n{device}\n{fast}\n'
            f'[models."{SLOW_T2V}"]\nengine = "wan"\ncheckpoint = "{paths["t2v"]}"\n{device}\n{slow}\n'
            f'[models."{I2V}"]\nengine = "wan"\ncheckpoint = "{paths["i2v"]}"\n{device}\n{fast}\n')


def start_server(ctx: Context, root: Path, paths: dict[str, Path], log: Path) -> tuple[Any, str]:
    import httpx

    config = root / "wanserve.toml"
    config.write_text(config_text(ctx, paths))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "WANSERVE_API_KEY": KEY,
           "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "wanserve", "serve", "--config", str(config), "--port",
                                 str(port), "--data-dir", str(root / "data")], env=env, stdout=out,
                                stderr=subprocess.STDOUT)
    api = f"http://127.0.0.1:{port}/api/v1"
    deadline = time.monotonic() + _wait_s(ctx, 240)
    while True:
        try:
            httpx.get(f"{api}/tasks", headers=headers(), timeout=5)
            return proc, api
        except httpx.TransportError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start (exit {proc.poll()}): "
                                   f"{log.read_text(errors='replace')[-1500:]}") from None
            time.sleep(0.25)


def _wait_s(ctx: Context, most: float) -> float:
    """How long to wait for the server: never past the suite's budget (30 s of slack), never over `most`."""
    return max(30.0, min(most, ctx.left() + 30.0))


def headers(**extra: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEY}", **extra}


def t2v_body(model: str = T2V) -> dict[str, Any]:
    return {"model": model, "input": {"prompt": "A lighthouse at dawn, waves breaking on the rocks."},
            "parameters": {"size": "832*480", "duration": 5, "seed": 3}}


def i2v_body() -> dict[str, Any]:
    """A 4:3 picture inline as a data: URL: the 480P output keeps the image's aspect (I2V_SIZE)."""
    import numpy as np
    from PIL import Image

    w, h = I2V_IMAGE
    y, x = np.mgrid[0:h, 0:w]
    picture = np.stack([x * 255 // (w - 1), y * 255 // (h - 1), np.full_like(x, 90)], axis=-1)
    picture = picture.astype(np.uint8)
    picture[(x - w // 2) ** 2 + (y - h // 2) ** 2 < (h // 5) ** 2] = 240  # a shape: structure to move
    buf = io.BytesIO()
    Image.fromarray(picture).save(buf, "PNG")
    url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    return {"model": I2V, "input": {"prompt": "The camera slowly pushes in.", "img_url": url},
            "parameters": {"resolution": "480P", "duration": 5, "seed": 5}}


def create(api: str, body: dict[str, Any]) -> str:
    import httpx

    r = httpx.post(api + CREATE, headers=headers(**{"X-DashScope-Async": "enable"}), json=body, timeout=60)
    if r.status_code != 200:
        raise RuntimeError(f"create answered {r.status_code}: {r.text[:500]}")
    return r.json()["output"]["task_id"]


def get(api: str, task_id: str) -> dict[str, Any]:
    import httpx

    return httpx.get(f"{api}/tasks/{task_id}", headers=headers(), timeout=30).json()["output"]


def succeed(ctx: Context, api: str, case: str, body: dict[str, Any], expected: tuple[int, int]) -> None:
    import av
    import httpx

    started, limit = time.monotonic(), _wait_s(ctx, 600)
    task_id = create(api, body)
    seen: list[int] = []
    while (out := get(api, task_id))["task_status"] in ("PENDING", "RUNNING"):
        done = (out.get("progress") or {}).get("done")
        if done is not None and (not seen or seen[-1] != done):
            seen.append(done)
        if time.monotonic() - started > limit:
            raise RuntimeError(f"task {task_id} still {out['task_status']} after {limit:.0f} s")
        time.sleep(0.1)
    wall = time.monotonic() - started
    if out["task_status"] != "SUCCEEDED":
        raise RuntimeError(f"task {task_id} ended {out['task_status']}: {out.get('message')}")
    data = httpx.get(out["video_url"], timeout=120).content
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        size = (stream.codec_context.width, stream.codec_context.height)
        frames = sum(1 for _ in container.decode(video=0))
    rising = all(b > a for a, b in zip(seen, seen[1:], strict=False))
    # on the CPU the tiny steps may all end between two polls: one value seen is enough there
    enough = len(seen) >= (2 if ctx.device.type == "cuda" else 1)
    check(ctx, STAGE, case, frames == 150 and size == tuple(expected) and rising and enough,
          frames=frames, size=list(size), expected=list(expected), progress_seen=seen[:40], rising=rising,
          seconds=round(wall, 1), mp4_bytes=len(data))


def cancel_running(ctx: Context, api: str) -> None:
    """Cancel a task of the 50-step model once a step is done. GET shows CANCELED at once (the row
    changes); the worker stops at its next step end, seen as the run-time histogram's "canceled" sample.
    Both within the bound."""
    import httpx

    before = _canceled_runs(api)
    task_id = create(api, t2v_body(SLOW_T2V))
    deadline = time.monotonic() + _wait_s(ctx, 300)
    while True:
        out = get(api, task_id)
        if out["task_status"] == "RUNNING" and (out.get("progress") or {}).get("done", 0) >= 1:
            break
        if out["task_status"] not in ("PENDING", "RUNNING") or time.monotonic() > deadline:
            raise RuntimeError(f"task {task_id} never ran a step: {out}")
        time.sleep(0.05)
    done_at_cancel = out["progress"]["done"]
    started = time.monotonic()
    r = httpx.post(f"{api}/tasks/{task_id}/cancel", headers=headers(), timeout=30)
    while (out := get(api, task_id))["task_status"] == "RUNNING" and time.monotonic() - started < 60:
        time.sleep(0.05)
    canceled = time.monotonic() - started
    bound = 2.0 if ctx.device.type == "cuda" else 10.0
    while _canceled_runs(api) <= before and time.monotonic() - started < bound + 30:
        time.sleep(0.05)
    stopped = time.monotonic() - started
    check(ctx, STAGE, "cancel-running", out["task_status"] == "CANCELED" and max(canceled, stopped) <= bound,
          task_status=out["task_status"], canceled_s=round(canceled, 2), worker_stopped_s=round(stopped, 2),
          bound_s=bound, cancel_http=r.status_code, done_at_cancel=done_at_cancel)


def _samples(api: str, name: str) -> dict[str, float]:
    """`name`'s samples on /metrics by label set, e.g. {'model="x",outcome="canceled"': 1.0}."""
    import httpx

    text = httpx.get(api.removesuffix("/api/v1") + "/metrics", timeout=30).text
    return {line.split("{")[1].split("}")[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
            if line.startswith(name + "{")}


def _canceled_runs(api: str) -> float:
    return sum(v for k, v in _samples(api, "wanserve_task_run_seconds_count").items()
               if SLOW_T2V in k and 'outcome="canceled"' in k)


def metrics(ctx: Context, api: str) -> None:
    counts = _samples(api, "wanserve_step_seconds_count")
    steps = sum(v for k, v in counts.items() if T2V in k or I2V in k)
    check(ctx, STAGE, "metrics-step-histogram", steps > 0, step_counts=counts)
