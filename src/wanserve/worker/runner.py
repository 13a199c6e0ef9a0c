"""A worker: claim a task, run it, record the outcome; report progress and honour cancellation.

While a task runs, a keeper thread renews its lease every `heartbeat_s` and writes the latest
progress. When the renewal matches no row the task was canceled (or, after a long stall, taken
over by another worker): the keeper raises a flag, and the engine's next progress report raises
TaskCanceled / LeaseLost, so a running task stops within about a quarter second plus one frame.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import traceback
import uuid
from pathlib import Path
from typing import Any

from sqlalchemy import select

from ..catalog.models import find_model, image_output_size, parse_size
from ..engines import EngineSet, RenderJob
from ..errors import Code, LeaseLost, ServiceError, TaskCanceled
from ..media.audio import ambient_wav
from ..media.clip import WAN27_CLIP_LIMITS, ClipInfo, check_clip
from ..media.fetch import OssResolver, fetch_media
from ..media.inputs import (
    LEGACY_AUDIO_LIMITS,
    LEGACY_IMAGE_LIMITS,
    WAN27_AUDIO_LIMITS,
    WAN27_IMAGE_LIMITS,
    check_audio,
    load_image,
)
from ..media.video import encode_mp4
from ..generation.request import GenerationRequest
from ..services import Services
from ..tasks.db import now_ms
from ..tasks.schema import tasks, uploads
from ..tasks.store import CANCELED, Claimed

log = logging.getLogger("wanserve.worker")
FPS = 30


def new_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class _Keeper(threading.Thread):
    """Renews one task's lease and publishes its progress until stopped."""

    def __init__(self, services: Services, task_id: str, worker_id: str, interval: float) -> None:
        super().__init__(daemon=True, name=f"keeper-{task_id[:8]}")
        self.services, self.task_id, self.worker_id, self.interval = services, task_id, worker_id, interval
        self.progress: dict[str, Any] | None = None
        self.lost: type[Exception] | None = None
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(self.interval):
            if not self.beat():
                return

    def beat(self) -> bool:
        try:
            if self.services.store.heartbeat(self.task_id, self.worker_id, self.progress):
                return True
        except Exception:  # a database hiccup: keep the task, try again next beat
            log.exception("heartbeat failed for %s", self.task_id)
            return True
        self.lost = TaskCanceled if self.services.store.status(self.task_id) == CANCELED else LeaseLost
        return False

    def check(self) -> None:
        if self.lost is not None:
            raise self.lost(self.task_id)


class Worker:
    def __init__(self, services: Services, engines: EngineSet, worker_id: str | None = None) -> None:
        self.services = services
        self.engines = engines
        self.worker_id = worker_id or new_worker_id()
        settings = services.settings
        self.heartbeat_s = min(0.25, settings.lease_seconds / 3)

    def run_forever(self, stop: threading.Event) -> None:
        log.info("worker %s started", self.worker_id)
        while not stop.is_set():
            try:
                ran = self.run_once()
            except Exception:  # never let one bad claim kill the worker
                log.exception("worker loop error")
                ran = False
            if not ran:
                stop.wait(self.services.settings.poll_seconds)

    def run_once(self) -> bool:
        claimed = self.services.store.claim(self.worker_id)
        if claimed is None:
            return False
        self.run_task(claimed)
        return True

    def run_task(self, claimed: Claimed) -> None:
        store, task_id = self.services.store, claimed.id
        log.info("task %s: attempt %d on %s", task_id, claimed.attempts, self.worker_id)
        keeper = _Keeper(self.services, task_id, self.worker_id, self.heartbeat_s)
        keeper.start()
        out = self.services.storage.result_path(task_id)
        try:
            req = GenerationRequest.model_validate(claimed.request)
            result = self._generate(req, task_id, out, keeper)
            keeper.check()
            if not store.succeed(task_id, self.worker_id, result):
                out.unlink(missing_ok=True)  # canceled or taken over at the last moment
            else:
                log.info("task %s: SUCCEEDED", task_id)
        except TaskCanceled:
            log.info("task %s: canceled while running", task_id)
            out.unlink(missing_ok=True)
        except LeaseLost:
            log.warning("task %s: lease lost; another worker owns it now", task_id)
        except ServiceError as exc:
            log.info("task %s: FAILED %s %s", task_id, exc.code, exc.message)
            store.fail(task_id, self.worker_id, exc.code, exc.message)
        except MemoryError:
            store.fail(task_id, self.worker_id, "InternalError.Algo",
                       "inference internal error: out of memory. Try a lower resolution or a shorter duration.")
        except Exception as exc:  # noqa: BLE001 - any engine failure must end the task FAILED, not the worker
            log.error("task %s: internal error\n%s", task_id, traceback.format_exc())
            store.fail(task_id, self.worker_id, "InternalError.Algo",
                       f"inference internal error: {type(exc).__name__}.")
        finally:
            keeper.done.set()

    # -- the generation itself ------------------------------------------------------------

    def _generate(self, req: GenerationRequest, task_id: str, out: Path, keeper: _Keeper) -> dict[str, Any]:
        spec = find_model(req.model)
        assert spec is not None
        images: dict[str, Any] = {}
        audio: bytes | None = None
        clip: bytes | None = None
        clip_info: ClipInfo | None = None
        image_limits = WAN27_IMAGE_LIMITS if spec.image_limits == "wan27" else LEGACY_IMAGE_LIMITS
        audio_limits = WAN27_AUDIO_LIMITS if spec.kind == "wan27" else LEGACY_AUDIO_LIMITS
        max_bytes = {"audio": audio_limits.max_bytes, "first_clip": WAN27_CLIP_LIMITS.max_bytes}
        for media in req.media:
            data = fetch_media(media.url, field=media.field, max_bytes=max_bytes.get(media.role, image_limits.max_bytes),
                               oss_resolver=self._oss_resolver(task_id) if req.resolve_uploads else None,
                               allow_private=self.services.settings.allow_private_media_urls)
            keeper.check()
            if media.role == "audio":
                check_audio(data, audio_limits, field=media.field)
                audio = data
            elif media.role == "first_clip":
                clip, clip_info = data, check_clip(data, WAN27_CLIP_LIMITS, field=media.field)
                if clip_info.seconds >= req.duration:
                    raise ServiceError(Code.INVALID_PARAMETER, f"parameters.duration ({req.duration} s) is the length of "
                                       f"the whole output and must exceed the first_clip ({clip_info.seconds:.1f} s).")
            else:
                images[media.role] = load_image(data, image_limits, field=media.field)

        if req.size is not None:
            width, height = parse_size(req.size)
        else:  # the first frame's (or, for a continuation, the clip's) aspect ratio at the tier's pixels
            source = clip_info or images["first_frame"]
            width, height = image_output_size(source.width, source.height, req.resolution)
        frame_count = req.duration * FPS
        if req.sound == "generate":
            audio = ambient_wav(req.duration, req.seed)
        job = RenderJob(
            kind="t2v" if req.kind == "t2v" else ("kf2v" if "last_frame" in images else "i2v"),
            model=req.model, width=width, height=height, frame_count=frame_count, fps=FPS, seed=req.seed,
            prompt=req.prompt, negative_prompt=req.negative_prompt, template=req.template,
            shot_type=req.shot_type, first_frame=images.get("first_frame"), last_frame=images.get("last_frame"),
            first_clip=clip, first_clip_seconds=clip_info.seconds if clip_info else 0.0)

        started = time.monotonic()

        def progress(done: int, total: int) -> None:
            keeper.check()
            elapsed = time.monotonic() - started
            eta = elapsed / done * (total - done) if done else None
            keeper.progress = {"done": done, "total": total, "percent": round(100 * done / max(total, 1), 1),
                               "eta_seconds": None if eta is None else round(eta, 1)}

        engine = self.engines.for_model(req.model)
        encode_mp4(engine.render(job, progress), out, width=width, height=height, fps=FPS,
                   frame_count=frame_count, audio=audio, watermark=req.watermark)
        return {"usage": _usage(spec.usage, req, width, height, clip_info.seconds if clip_info else 0.0),
                "actual_prompt": req.prompt if (spec.returns_actual_prompt and req.prompt_extend) else None,
                "width": width, "height": height, "engine": engine.name}

    def _oss_resolver(self, task_id: str) -> OssResolver:
        """oss:// keys resolve only to live uploads of the task's own account."""
        services = self.services

        def resolve(key: str) -> Path:
            fresh = now_ms() - services.settings.upload_ttl_seconds * 1000
            query = (select(uploads.c.key).join(tasks, tasks.c.account_id == uploads.c.account_id)
                     .where(tasks.c.id == task_id, uploads.c.key == key, uploads.c.created_ms > fresh))
            with services.db.begin() as conn:
                row = conn.execute(query).first()
            if row is None:
                raise ServiceError(Code.DATA_INSPECTION,
                                   f"Unable to download the media resource oss://{key}: it was not uploaded by "
                                   "this account or has expired (uploads live 48 hours). Upload it again.")
            return services.storage.upload_path(key)

        return resolve


def _usage(family: str, req: GenerationRequest, width: int, height: int, clip_seconds: float) -> dict[str, Any]:
    """Billing keys per model family (contract 5.2). A continuation bills the whole output; its input
    clip's length is reported as input_video_duration."""
    tier = int(req.resolution.rstrip("P"))
    if family == "legacy_size":
        return {"video_count": 1, "video_duration": req.duration, "video_ratio": f"{width}*{height}"}
    if family == "legacy_standard":
        return {"video_count": 1, "video_duration": req.duration, "video_ratio": "standard"}
    clip = round(clip_seconds, 2) if clip_seconds else 0
    usage = {"duration": req.duration, "input_video_duration": clip, "output_video_duration": req.duration - clip,
             "video_count": 1, "SR": tier}
    if family == "v26":
        usage["size"] = f"{width}*{height}"
    return usage


def run_workers(services: Services, engines: EngineSet, count: int, stop: threading.Event) -> list[threading.Thread]:
    threads = []
    for i in range(count):
        worker = Worker(services, engines)
        t = threading.Thread(target=worker.run_forever, args=(stop,), daemon=True, name=f"worker-{i}")
        t.start()
        threads.append(t)
    return threads
