"""Fixtures that build real things: a running wanserve on a loopback port, a local media server,
and input images and audio generated in code. No network beyond loopback."""

from __future__ import annotations

import contextlib
import functools
import http.server
import io
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import httpx
import numpy as np
import pytest
from PIL import Image
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError

from wanserve.accounts.keys import create_key
from wanserve.api.app import create_app
from wanserve.api.server import build_server
from wanserve.config import Settings
from wanserve.engines import EngineSet
from wanserve.media.audio import wav_bytes as pcm_wav
from wanserve.services import Services
from wanserve.tasks.db import migrate, open_engine
from wanserve.tasks.store import TaskStore
from wanserve.worker.runner import run_workers

ASYNC = {"X-DashScope-Async": "enable"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    base: str  # http://127.0.0.1:PORT
    key: str
    services: Services
    stop: threading.Event

    @property
    def api(self) -> str:
        return self.base + "/api/v1"

    def client(self, key: str | None = None) -> httpx.Client:
        return httpx.Client(base_url=self.api, headers={"Authorization": f"Bearer {key or self.key}"},
                            timeout=60)

    def create(self, body: dict[str, Any], endpoint: str = "video-generation",
               **headers: str) -> httpx.Response:
        with self.client() as c:
            return c.post(f"/services/aigc/{endpoint}/video-synthesis", json=body,
                          headers={**ASYNC, **headers})

    def task(self, task_id: str) -> dict[str, Any]:
        with self.client() as c:
            return c.get(f"/tasks/{task_id}").json()

    def wait(self, task_id: str, timeout: float = 120) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            body = self.task(task_id)
            if body["output"]["task_status"] in ("SUCCEEDED", "FAILED", "CANCELED", "UNKNOWN"):
                return body
            time.sleep(0.1)
        raise AssertionError(f"task {task_id} did not finish in {timeout} s: {body}")

    def sweep(self) -> None:
        self.services.sweep()


@contextlib.contextmanager
def running_server(data_dir: Path, workers: int = 1, *, engines: EngineSet | None = None,
                   bootstrap_key: str | None = "", **overrides: Any) -> Iterator[Server]:
    """The one way tests start wanserve: services on `data_dir`, `workers` worker threads, the API on a
    free loopback port, and a key of account "default". bootstrap_key None: the key in
    WANSERVE_API_KEY, as `serve` reads it."""
    # the media fixtures are on loopback; links are built for the address the tests use
    overrides = {"allow_private_media_urls": True, "host": "127.0.0.1", "port": free_port(), **overrides}
    if bootstrap_key is not None:
        overrides["api_key"] = bootstrap_key
    settings = Settings(data_dir=data_dir, workers=workers, poll_seconds=0.05, **overrides)
    services = Services.open(settings)
    _, key = create_key(services.db, "default")
    stop = threading.Event()
    run_workers(services, engines or EngineSet(settings.models), workers, stop)
    server = build_server(create_app(services), settings, log_level="critical")
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    try:
        yield Server(f"http://127.0.0.1:{server.config.port}", key, services, stop)
    finally:
        stop.set()
        server.should_exit = True
        thread.join(5)
        services.close()


@pytest.fixture
def make_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    """make_server(workers=1, **settings) -> a running Server, stopped after the test."""
    with contextlib.ExitStack() as stack:
        yield lambda workers=1, **kw: stack.enter_context(
            running_server(tmp_path_factory.mktemp("data"), workers, **kw))


@pytest.fixture
def server(make_server) -> Server:
    return make_server(workers=2)


@pytest.fixture
def dashscope_at(server: Server) -> Iterator[Server]:
    """The official SDK pointed at the test server (only the base URL changes)."""
    import dashscope

    old = dashscope.base_http_api_url
    dashscope.base_http_api_url = server.api
    yield server
    dashscope.base_http_api_url = old


# -- local media server -------------------------------------------------------------------------


@dataclass
class MediaServer:
    root: Path
    base: str

    def put(self, name: str, data: bytes) -> str:
        (self.root / name).write_bytes(data)
        return f"{self.base}/{name}"


@pytest.fixture
def media_server(tmp_path: Path) -> Iterator[MediaServer]:
    root = tmp_path / "media"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a, **k: None  # type: ignore[method-assign]
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield MediaServer(root, f"http://127.0.0.1:{httpd.server_address[1]}")
    httpd.shutdown()


# -- inputs built in code -----------------------------------------------------------------------


def image_bytes(width: int, height: int, fmt: str = "PNG", seed: int = 0) -> bytes:
    """A picture with structure (gradient, shapes) so motion and morphs are visible."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    arr = np.stack([(x * 255 // max(width - 1, 1)), (y * 255 // max(height - 1, 1)),
                    np.full_like(x, int(rng.integers(0, 255)))], axis=-1).astype(np.uint8)
    cx, cy, r = (int(rng.integers(width // 4, 3 * width // 4)),
                 int(rng.integers(height // 4, 3 * height // 4)),
                 min(width, height) // 6)
    arr[(x - cx) ** 2 + (y - cy) ** 2 < r * r] = (240, 240, 240)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, fmt)
    return buf.getvalue()


def wav_bytes(seconds: float, rate: int = 22050, freq: float = 440.0) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    return pcm_wav((np.sin(2 * np.pi * freq * t) * 12000).astype(np.int16), rate)


@dataclass
class Probe:
    codec: str
    pix_fmt: str
    fps: float
    frames: int
    width: int
    height: int
    audio_codec: str | None
    audio_seconds: float | None


def probe_video(data: bytes) -> Probe:
    """Open a video with PyAV and count what is really in it (frames are decoded, not trusted)."""
    with av.open(io.BytesIO(data)) as container:
        v = container.streams.video[0]
        a = container.streams.audio[0] if container.streams.audio else None
        frames = sum(1 for _ in container.decode(video=0))
        audio_seconds = None
        if a is not None:
            container.seek(0)
            samples = sum(f.samples for f in container.decode(audio=0))
            audio_seconds = samples / a.rate
        return Probe(v.codec_context.name, v.codec_context.pix_fmt, float(v.average_rate), frames,
                     v.codec_context.width, v.codec_context.height, a.codec_context.name if a else None,
                     audio_seconds)


def wait_until_serving(api: str, headers: dict[str, str], proc: Any, timeout: float = 60) -> None:
    """Wait for a `wanserve serve` subprocess to answer on `api`."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            httpx.get(f"{api}/tasks", headers=headers)
            return
        except httpx.TransportError:
            assert time.monotonic() < deadline and proc.poll() is None, "server did not start"
            time.sleep(0.2)


def poll_task(api: str, headers: dict[str, str], task_id: str, timeout: float) -> dict[str, Any]:
    """GET /tasks/{id} until it leaves PENDING/RUNNING; returns its output."""
    deadline = time.monotonic() + timeout
    while (out := httpx.get(f"{api}/tasks/{task_id}", headers=headers).json()["output"])["task_status"] in (
            "PENDING", "RUNNING"):
        assert time.monotonic() < deadline, out
        time.sleep(0.3)
    return out


def download(url: str) -> bytes:
    r = httpx.get(url, timeout=60)
    assert r.status_code == 200, r.text
    return r.content


@pytest.fixture(autouse=True, scope="session")
def _no_proxies() -> Iterator[None]:
    """Loopback only: make sure no proxy settings send test traffic anywhere else."""
    with contextlib.ExitStack():
        for var in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy"):
            os.environ.pop(var, None)
        os.environ["NO_PROXY"] = "127.0.0.1,localhost"
        yield


def mp3_bytes(seconds: float, freq: float = 330.0, *, id3: bool = True) -> bytes:
    """An MP3 (libmp3lame through PyAV) of a sine tone, with or without an ID3 tag."""
    rate = 44100
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp3", options={} if id3 else {"id3v2_version": "0"}) as out:
        stream = out.add_stream("libmp3lame", rate=rate)
        stream.layout = "mono"
        t = np.arange(int(seconds * rate)) / rate
        pcm = (np.sin(2 * np.pi * freq * t) * 0.4).astype(np.float32)
        for start in range(0, len(pcm), 1152):
            chunk = pcm[start:start + 1152]
            frame = av.AudioFrame.from_ndarray(chunk[None, :], format="fltp", layout="mono")
            frame.sample_rate = rate
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return buf.getvalue()


# -- databases ----------------------------------------------------------------------------------

PG_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


def _postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database on the local server, dropped afterwards (if a test has not dropped it
    itself)."""
    name = f"wanserve_test_{uuid.uuid4().hex[:8]}"
    admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except OperationalError as exc:  # pragma: no cover - CI machines run PostgreSQL locally
        pytest.skip(f"PostgreSQL not reachable at {PG_ADMIN}: {exc}")
    yield PG_ADMIN.rsplit("/", 1)[0] + f"/{name}"
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'tasks.db'}"
    else:
        yield from _postgres_url()


@pytest.fixture
def store(db_url) -> Iterator[TaskStore]:
    """A migrated task store on each database, with a short lease (0.3 s) and two attempts a task."""
    engine = open_engine(db_url)
    migrate(engine)
    yield TaskStore(engine, lease_seconds=0.3, max_attempts=2)
    engine.dispose()


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database (the test is skipped where no server answers)."""
    yield from _postgres_url()


def wait_for(predicate, timeout: float = 60, every: float = 0.02):
    """Poll `predicate` until it returns something truthy; returns that."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError("condition not met in time")


def stored_results(services: Services) -> set[str]:
    """Ids of the tasks that have a result file in storage (any attempt)."""
    return {task_id for task_id, _ in services.storage.result_files()}


# -- S3 -----------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """A real S3 endpoint on loopback (moto's server in a thread), for the whole session; tests make their
    own buckets."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


S3_PREFIX = "wanserve/"


def s3_client(settings: dict[str, Any]) -> Any:
    """A client of our own, to look into a bucket behind wanserve's back."""
    import boto3

    return boto3.client("s3", endpoint_url=settings["s3_endpoint_url"], region_name="us-east-1",
                        aws_access_key_id="testing", aws_secret_access_key="testing")


@pytest.fixture
def s3(moto_endpoint: str) -> dict[str, Any]:
    """The settings of a fresh, empty bucket on the endpoint."""
    settings = {"storage": "s3", "s3_bucket": f"wanserve-{uuid.uuid4().hex[:12]}",
                "s3_endpoint_url": moto_endpoint, "s3_region": "us-east-1", "s3_prefix": S3_PREFIX,
                "s3_access_key_id": "testing", "s3_secret_access_key": "testing"}
    s3_client(settings).create_bucket(Bucket=settings["s3_bucket"])
    return settings
