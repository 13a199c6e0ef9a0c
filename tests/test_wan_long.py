"""The `wan` engine on multi-shot prompts and durations past a checkpoint's native length (issue 8).

Tiny random-weight checkpoints (`wan_fixtures`), `native_fps = 1` and `max_native_frames = 5` so a
5 s segment is 5 native frames: a 15 s task is three chained generations and runs in seconds on a CPU.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("diffusers")

from wanserve.engines import EngineConfigError, EngineSet, RenderJob
from wanserve.errors import TaskCanceled
from wanserve.generation.shots import parse_shots, shot_context

from . import wan_fixtures
from .conftest import image_bytes

FAST = {"num_inference_steps": 2, "native_fps": 1, "max_native_frames": 5}
T2V, I2V = "wanx2.1-t2v-turbo", "wan2.2-i2v-plus"


class Checkpoints:
    def __init__(self, root: Path) -> None:
        self.t2v = wan_fixtures.build_t2v(root / "Wan-T2V-tiny-Diffusers")
        self.i2v = wan_fixtures.build_i2v_two_experts(root / "Wan2.2-I2V-tiny-Diffusers")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Checkpoints:
    return Checkpoints(tmp_path_factory.mktemp("wan-long-checkpoints"))


def wan(checkpoint: Path, **keys: Any) -> dict[str, Any]:
    return {"engine": "wan", "checkpoint": str(checkpoint), **FAST, **keys}


@pytest.fixture(scope="module")
def engines(ckpt: Checkpoints) -> EngineSet:
    return EngineSet({T2V: wan(ckpt.t2v, continue_with=I2V), I2V: wan(ckpt.i2v)})


@pytest.fixture()
def calls(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Every pipeline call: its family, prompt, num_frames and conditioning image."""
    from diffusers import WanImageToVideoPipeline, WanPipeline

    seen: list[dict[str, Any]] = []
    for cls, family in ((WanPipeline, "t2v"), (WanImageToVideoPipeline, "i2v")):
        original = cls.__call__

        def call(self, *args, _original=original, _family=family, **kwargs):
            image = kwargs.get("image")
            seen.append({"family": _family, "prompt": kwargs["prompt"], "num_frames": kwargs["num_frames"],
                         "image": None if image is None else np.asarray(image)})
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(cls, "__call__", call)
    return seen


def record_generations(monkeypatch: pytest.MonkeyPatch, *engines: Any) -> list[list[np.ndarray]]:
    """The decoded native frames of every generation, in order, whichever engine ran it."""
    out: list[list[np.ndarray]] = []
    for engine in engines:
        original = engine.generate

        def generate(plan, progress, offset=0, total=None, _original=original):
            frames = _original(plan, progress, offset=offset, total=total)
            out.append(frames)
            return frames

        monkeypatch.setattr(engine, "generate", generate)
    return out


def picture(width: int = 80, height: int = 60, seed: int = 0):
    from io import BytesIO

    from PIL import Image

    return Image.open(BytesIO(image_bytes(width, height, seed=seed))).convert("RGB")


def task(kind: str, model: str, seconds: int, prompt: str, **kw: Any) -> RenderJob:
    """As generation/plan.py builds it: 30 fps, the shot plan and its shared context."""
    return RenderJob(kind=kind, model=model, width=64, height=48, frame_count=30 * seconds, prompt=prompt,
                     shots=tuple(parse_shots(prompt, seconds)), context=shot_context(prompt), **kw)


def run(engines: EngineSet, job: RenderJob, progress=None) -> np.ndarray:
    return np.stack(list(engines.for_model(job.model).render(job, progress or (lambda d, t: None))))


def test_three_shot_markers_render_three_generations_cut_at_the_planned_frames(engines: EngineSet, calls):
    prompt = ("A red car on a mountain road, cinematic lighting. Shot 1 [0-2 s]: the car drives along "
              "the road. Shot 2 [2-4 s]: close-up of the driver. Shot 3 [4-6 s]: the car in the rain.")
    job = task("t2v", T2V, 6, prompt, seed=3)
    frames = run(engines, job)
    assert frames.shape == (180, 48, 64, 3)
    assert [c["prompt"] for c in calls] == [
        "A red car on a mountain road, cinematic lighting. the car drives along the road.",
        "A red car on a mountain road, cinematic lighting. close-up of the driver.",
        "A red car on a mountain road, cinematic lighting. the car in the rain.",
    ]
    assert all(c["family"] == "t2v" and c["num_frames"] == 5 for c in calls)
    diff = np.abs(np.diff(frames.astype(np.int16), axis=0)).mean(axis=(1, 2, 3))  # diff[i]: frame i -> i+1
    cuts = [59, 119]  # shots start at frames round(2 x 30) = 60 and 120
    others = np.delete(diff, cuts)
    assert diff[cuts].min() > 2 * others.max(), (diff[cuts], others.max())


@pytest.mark.parametrize("seconds,segments", [(10, 2), (15, 3)])
def test_a_long_i2v_task_is_chained_segments_each_from_the_last_frame_of_the_one_before(
        engines: EngineSet, calls, monkeypatch: pytest.MonkeyPatch, seconds: int, segments: int):
    engine = engines.for_model(I2V)
    generated = record_generations(monkeypatch, engine)
    seen: list[tuple[int, int]] = []
    frames = run(engines, task("i2v", I2V, seconds, "a cat walks across the kitchen", first_frame=picture()),
                 lambda d, t: seen.append((d, t)))
    assert frames.shape == (30 * seconds, 48, 64, 3)
    assert len(calls) == segments and all(c["num_frames"] <= 5 for c in calls)
    assert all(c["family"] == "i2v" and c["prompt"] == "a cat walks across the kitchen" for c in calls)
    for k in range(1, segments):  # each later segment starts from the previous one's last frame
        assert np.array_equal(calls[k]["image"], generated[k - 1][-1])
    assert engine.last_timings["segments"] == segments
    total = segments * (2 + 1) + 1  # per segment: 2 steps + the decode; + the last conversion
    dones = [d for d, _ in seen]
    assert {t for _, t in seen} == {total} and dones == sorted(dones) and dones[-1] == total


def test_a_long_t2v_shot_is_continued_by_the_continue_with_model(engines: EngineSet, calls,
                                                                 monkeypatch: pytest.MonkeyPatch):
    generated = record_generations(monkeypatch, engines.for_model(T2V), engines.for_model(I2V))
    frames = run(engines, task("t2v", T2V, 10, "a lighthouse at dawn"))
    assert frames.shape == (300, 48, 64, 3)
    assert [(c["family"], c["num_frames"]) for c in calls] == [("t2v", 5), ("i2v", 5)]
    assert np.array_equal(calls[1]["image"], generated[0][-1])


def test_cancel_during_a_later_segment_stops_it(engines: EngineSet, calls):
    def progress(done: int, total: int) -> None:
        if done == 4:  # the first step of the second segment (units 0-3 are the first segment's)
            raise TaskCanceled("t")

    with pytest.raises(TaskCanceled):
        run(engines, task("i2v", I2V, 10, "x", first_frame=picture()), progress)
    assert len(calls) == 2


def test_continue_with_is_checked_at_start(ckpt: Checkpoints):
    with pytest.raises(EngineConfigError, match=r"'wanx2.1-t2v-turbo'.*'wan2.2-t2v-plus'.*cannot generate"):
        EngineSet({T2V: wan(ckpt.t2v, continue_with="wan2.2-t2v-plus"), "wan2.2-t2v-plus": wan(ckpt.t2v)})
    with pytest.raises(EngineConfigError, match=r"'wanx2.1-t2v-turbo'.*'wan2.2-i2v-plus' is not configured"):
        EngineSet({T2V: wan(ckpt.t2v, continue_with=I2V)})
    with pytest.raises(EngineConfigError, match="max_native_frames"):
        EngineSet({T2V: wan(ckpt.t2v, max_native_frames=80)})


def test_a_first_clip_continuation_moves_the_shot_plan_back_by_the_clip():
    from wanserve.engines.base import Shot
    from wanserve.generation.continuation import Clip, continue_clip

    from .test_wan_engine import _clip

    seen: list[RenderJob] = []

    class Recorder:
        name = "recorder"

        def render(self, job: RenderJob, progress):
            seen.append(job)
            return iter([np.zeros((job.height, job.width, 3), np.uint8)] * job.frame_count)

    shots = (Shot(1, 0.0, 3.0, "a"), Shot(2, 3.0, 6.0, "b"))
    job = RenderJob(kind="i2v", model=I2V, width=64, height=48, frame_count=180, shots=shots)
    frames = list(continue_clip(Recorder(), job, Clip(_clip(), 2.0), lambda d, t: None))
    assert len(frames) == 180
    rest = seen[0]
    assert rest.frame_count == 180 - 60 + 1  # the rest starts on the clip's last frame (output frame 59)
    assert [(s.number, round(s.start * 30) + 59) for s in rest.shots] == [(1, 59), (2, 90)]
