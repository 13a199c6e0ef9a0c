"""The `wan` engine: open Wan checkpoints through diffusers, behind the same API.

Everything runs offline on a CPU. `wan_fixtures` builds tiny random-weight checkpoints in the
diffusers layout (locally trained tokenizer, tiny UMT5, tiny VAE, tiny transformers; a Wan2.1 T2V
layout, a Wan2.2 two-expert I2V layout, a Wan2.1 first-last-frame layout with a CLIP image encoder)
and a LoRA adapter; the engine loads them with its real loading code. A 480P task costs seconds
here only because the API tests set `native_fps = 1` (5 native frames); the one test at the
default 16 fps (81 frames, about 80 s on two cores, mostly the VAE decode) is marked slow.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("diffusers")

import torch

from wanserve.engines import EngineConfigError, EngineSet, RenderJob
from wanserve.engines.preview import PreviewEngine
from wanserve.engines.wan import (
    WAN_DEFAULT_NEGATIVE_PROMPT,
    convert_frame_rate,
    generation_size,
    native_frame_count,
    retime_positions,
)
from wanserve.errors import ServiceError, TaskCanceled

from . import wan_fixtures
from .conftest import (
    ASYNC,
    Server,
    download,
    free_port,
    image_bytes,
    poll_task,
    probe_video,
    running_server,
    stored_results,
    wait_until_serving,
)

# ==================================================================================================
# fixtures: tiny checkpoints (built once), engines loaded from them, a server that serves them


class Checkpoints:
    def __init__(self, root: Path) -> None:
        self.t2v = wan_fixtures.build_t2v(root / "Wan-T2V-tiny-Diffusers")
        self.i2v = wan_fixtures.build_i2v_two_experts(root / "Wan2.2-I2V-tiny-Diffusers")
        self.flf2v = wan_fixtures.build_flf2v(root / "Wan2.1-FLF2V-tiny-Diffusers")
        self.lora = wan_fixtures.build_lora(self.i2v, root / "loras" / "flying")


@pytest.fixture(scope="session")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Checkpoints:
    return Checkpoints(tmp_path_factory.mktemp("wan-checkpoints"))


def wan(checkpoint: Path, **keys: Any) -> dict[str, Any]:
    return {"engine": "wan", "checkpoint": str(checkpoint), **keys}


@pytest.fixture(scope="module")
def engines(ckpt: Checkpoints) -> EngineSet:
    """Engine-level tests: small jobs straight into render()."""
    return EngineSet({
        "wanx2.1-t2v-turbo": wan(ckpt.t2v, num_inference_steps=3),
        "wan2.2-i2v-plus": wan(ckpt.i2v, num_inference_steps=4),
        "wanx2.1-i2v-turbo": wan(ckpt.i2v, num_inference_steps=4, templates={
            "flying": {"lora": str(ckpt.lora), "prompt": "The subject floats up into the air.",
                       "scale": 1.0}}),
        "wan2.2-kf2v-flash": wan(ckpt.flf2v, num_inference_steps=2),
        "wan2.7-i2v": wan(ckpt.i2v, num_inference_steps=2, sound="silent"),  # promises sound: say silent
    })


SLOW_T2V = "wan2.2-t2v-plus"  # the t2v checkpoint again, with many steps: for progress and cancel


@pytest.fixture(scope="module")
def wan_server(ckpt: Checkpoints, tmp_path_factory: pytest.TempPathFactory):
    """A real server (API + one worker) whose EngineSet is built from the settings' models table."""
    fast = {"num_inference_steps": 2, "native_fps": 1}  # 5 native frames per 5 s clip
    models = {
        "wanx2.1-t2v-turbo": wan(ckpt.t2v, **fast),
        SLOW_T2V: wan(ckpt.t2v, num_inference_steps=40, native_fps=1),
        "wan2.2-i2v-plus": wan(ckpt.i2v, **fast),
        "wan2.1-i2v-turbo": wan(ckpt.i2v, **fast, templates={  # an alias of wanx2.1-i2v-turbo
            "flying": {"lora": str(ckpt.lora), "prompt": "The subject floats up into the air."}}),
        "wan2.2-kf2v-flash": wan(ckpt.flf2v, **fast),
    }
    engine_set = EngineSet(models)
    data = tmp_path_factory.mktemp("wan-data")
    with running_server(data, workers=1, engines=engine_set, models=models) as server:
        yield server, engine_set


def job(kind: str, model: str, width: int = 100, height: int = 60, seconds: int = 1, **kw: Any) -> RenderJob:
    return RenderJob(kind=kind, model=model, width=width, height=height, frame_count=30 * seconds, **kw)


def picture(width: int = 120, height: int = 80, seed: int = 0):
    from io import BytesIO

    from PIL import Image

    return Image.open(BytesIO(image_bytes(width, height, seed=seed))).convert("RGB")


def render(engines: EngineSet, j: RenderJob, progress=None) -> np.ndarray:
    return np.stack(list(engines.for_model(j.model).render(j, progress or (lambda done, total: None))))


def count_calls(module: torch.nn.Module, calls: list, action=None):
    """Record each forward call of `module` (and run `action` first, which may raise or sleep)."""

    def hook(mod, args, kwargs):
        calls.append(time.monotonic())
        if action is not None:
            action()

    return module.register_forward_pre_hook(hook, with_kwargs=True)


# ==================================================================================================
# request -> pipeline: the pure rules


def test_generation_size_is_the_contract_size_on_the_vae_times_patch_grid():
    assert generation_size(832, 480, 16) == (832, 480)  # Wan2.1/2.2 A14B: 8 x 2
    assert generation_size(816, 1104, 16) == (816, 1104)
    assert generation_size(1280, 720, 32) == (1280, 736)  # TI2V-5B: 16 x 2; nearest multiple per side
    assert generation_size(100, 60, 16) == (96, 64)
    assert generation_size(8, 8, 16) == (16, 16)


def test_native_frame_count_is_duration_times_native_fps_rounded_to_4k_plus_1():
    assert native_frame_count(5, 16) == 81  # Wan2.1 / Wan2.2 A14B default
    assert native_frame_count(3, 16) == 49
    assert native_frame_count(10, 16) == 161
    assert native_frame_count(5, 24) == 121  # TI2V-5B default
    assert native_frame_count(5, 1) == 5
    assert native_frame_count(1, 1) == 5  # at least one latent step of motion
    assert all((native_frame_count(s, f) - 1) % 4 == 0 for s in range(1, 16) for f in (8, 15, 16, 24))


def test_frame_rate_conversion_gives_exactly_the_contract_frame_count_with_ends_aligned():
    for native, out in ((81, 150), (49, 90), (5, 150), (121, 150), (161, 300)):
        pos = retime_positions(native, out)
        assert len(pos) == out and pos[0] == 0 and pos[-1] == native - 1 and np.all(np.diff(pos) > 0)
    frames = [np.full((16, 24, 3), 20 * i, np.uint8) for i in range(5)]
    out = list(convert_frame_rate(frames, 13))
    assert len(out) == 13 and all(f.shape == (16, 24, 3) and f.dtype == np.uint8 for f in out)
    assert np.array_equal(out[0], frames[0]) and np.array_equal(out[-1], frames[-1])
    assert np.array_equal(out[3], frames[1])  # positions 0, 1/3, 2/3, 1, ...: native frames where they fall


def test_frame_rate_conversion_interpolates_motion_instead_of_repeating_frames():
    """A textured square moving 24 px between two native frames: the in-between frame shows it
    half-way, at full contrast (a repeat would show it at an end; a cross-fade, twice at half)."""
    rng = np.random.default_rng(0)
    background = (rng.random((120, 200, 3)) * 60).astype(np.uint8)
    texture = (150 + rng.random((40, 40, 3)) * 100).astype(np.uint8)

    def at(x: int) -> np.ndarray:
        f = background.copy()
        f[40:80, x:x + 40] = texture
        return f

    mid = list(convert_frame_rate([at(60), at(84)], 3))[1]
    bright = mid.astype(int).sum(axis=2) > 3 * 120
    cols = np.nonzero(bright.sum(axis=0) > 20)[0]
    assert abs((cols.min() + cols.max()) / 2 - (72 + 19.5)) <= 3, (cols.min(), cols.max())
    assert not np.array_equal(mid, at(60)) and not np.array_equal(mid, at(84))


def test_plan_uses_wan_default_negative_prompt_and_template_prompt(engines: EngineSet):
    plain = engines.for_model("wanx2.1-t2v-turbo").plan(job("t2v", "wanx2.1-t2v-turbo", prompt="a cat"))
    assert plain.negative_prompt == WAN_DEFAULT_NEGATIVE_PROMPT and plain.prompt == "a cat"
    assert WAN_DEFAULT_NEGATIVE_PROMPT.startswith("色调艳丽，过曝，静态")
    assert WAN_DEFAULT_NEGATIVE_PROMPT.endswith("倒着走")
    own = engines.for_model("wanx2.1-t2v-turbo").plan(job("t2v", "wanx2.1-t2v-turbo", negative_prompt="blur"))
    assert own.negative_prompt == "blur"
    tpl = engines.for_model("wanx2.1-i2v-turbo").plan(
        job("i2v", "wanx2.1-i2v-turbo", template="flying", prompt="ignored", first_frame=picture()))
    assert tpl.prompt == "The subject floats up into the air." and tpl.adapter is not None
    assert (tpl.width, tpl.height, tpl.num_frames, tpl.steps) == (96, 64, 17, 4)


# ==================================================================================================
# the engine on small jobs


@pytest.mark.parametrize("model,kind", [("wanx2.1-t2v-turbo", "t2v"), ("wan2.2-i2v-plus", "i2v"),
                                        ("wan2.2-kf2v-flash", "kf2v")])
def test_render_yields_exactly_the_contract_frames(engines: EngineSet, model: str, kind: str):
    images = {} if kind == "t2v" else {"first_frame": picture(seed=1)}
    if kind == "kf2v":
        images["last_frame"] = picture(seed=2)
    frames = render(engines, job(kind, model, width=100, height=60, seconds=2, prompt="a cat", **images))
    assert frames.shape == (2 * 30, 60, 100, 3) and frames.dtype == np.uint8  # 2 s at 30 fps, exactly 100x60


def test_same_seed_same_video_other_seed_other_video(engines: EngineSet):
    a = render(engines, job("t2v", "wanx2.1-t2v-turbo", seed=7, prompt="a cat"))
    b = render(engines, job("t2v", "wanx2.1-t2v-turbo", seed=7, prompt="a cat"))
    c = render(engines, job("t2v", "wanx2.1-t2v-turbo", seed=8, prompt="a cat"))
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_two_expert_checkpoint_runs_both_experts(engines: EngineSet):
    loaded = engines.for_model("wan2.2-i2v-plus").loaded
    high, low = [], []
    handles = [count_calls(loaded.components["transformer"], high),
               count_calls(loaded.components["transformer_2"], low)]
    try:
        render(engines, job("i2v", "wan2.2-i2v-plus", first_frame=picture(), prompt="a cat"))
    finally:
        for h in handles:
            h.remove()
    assert high and low  # 4 steps, boundary 0.9: the high-noise expert first, then the low-noise one
    assert len(high) + len(low) == 4 * 2  # two forwards (conditional, unconditional) per step


def test_first_last_frame_checkpoint_encodes_both_frames(engines: EngineSet):
    encoder = engines.for_model("wan2.2-kf2v-flash").loaded.components["image_encoder"]
    batches = []
    handle = encoder.register_forward_pre_hook(lambda m, a, k: batches.append(k["pixel_values"].shape[0]),
                                               with_kwargs=True)
    try:
        frames = render(engines, job("kf2v", "wan2.2-kf2v-flash", first_frame=picture(seed=1),
                                     last_frame=picture(seed=2), prompt="x"))
    finally:
        handle.remove()
    assert batches == [2] and len(frames) == 30


def test_a_lora_template_changes_the_output_and_is_switched_off_afterwards(engines: EngineSet):
    first = picture(seed=3)
    plain = job("i2v", "wanx2.1-i2v-turbo", seed=5, first_frame=first,
                prompt="The subject floats up into the air.")
    templated = replace(plain, template="flying", prompt="")
    before = render(engines, plain)
    with_lora = render(engines, templated)
    after = render(engines, plain)
    assert not np.array_equal(before, with_lora)
    assert np.array_equal(before, after)  # same seed and prompt: only the adapter differed


def test_progress_counts_denoising_steps_then_decode_and_interpolation(engines: EngineSet):
    seen: list[tuple[int, int]] = []
    render(engines, job("t2v", "wanx2.1-t2v-turbo", prompt="x"),
           lambda done, total: seen.append((done, total)))
    dones = [d for d, _ in seen]
    assert {t for _, t in seen} == {3 + 2} and dones == sorted(dones)
    assert dones[0] == 0 and dones[-1] == 5 and {1, 2, 3, 4} <= set(dones)


def test_cancel_from_progress_stops_within_the_step_and_skips_the_decode(engines: EngineSet):
    engine = engines.for_model("wan2.2-i2v-plus")
    forwards, decodes = [], []
    handles = [count_calls(engine.loaded.components["transformer"], forwards),
               count_calls(engine.loaded.components["transformer_2"], forwards),
               count_calls(engine.loaded.components["vae"].decoder, decodes)]

    def progress(done: int, total: int) -> None:
        if done == 2:
            raise TaskCanceled("t")

    try:
        with pytest.raises(TaskCanceled):
            list(engine.render(job("i2v", "wan2.2-i2v-plus", first_frame=picture(), prompt="x"), progress))
    finally:
        for h in handles:
            h.remove()
    assert len(forwards) == 2 * 2 and decodes == []  # two steps of four, then nothing
    assert len(render(engines, job("i2v", "wan2.2-i2v-plus", first_frame=picture(), prompt="x"))) == 30


def test_out_of_memory_fails_with_internal_error_and_the_next_render_works(engines: EngineSet):
    transformer = engines.for_model("wanx2.1-t2v-turbo").loaded.components["transformer"]

    def oom() -> None:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    handle = count_calls(transformer, [], oom)
    try:
        with pytest.raises(ServiceError) as err:
            render(engines, job("t2v", "wanx2.1-t2v-turbo", prompt="x"))
    finally:
        handle.remove()
    assert err.value.code == "InternalError.Algo"
    assert "out of memory" in err.value.message
    assert "lower resolution or a shorter duration" in err.value.message
    assert len(render(engines, job("t2v", "wanx2.1-t2v-turbo", prompt="x"))) == 30


def _clip(seconds: float = 2.0, fps: int = 24, width: int = 120, height: int = 80) -> bytes:
    import io

    import av

    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(round(seconds * fps)):
            rgb = np.asarray(picture(width, height, seed=9)).copy()
            rgb[:, (2 * i) % width] = 255  # a moving line
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return buf.getvalue()


def test_a_wan27_continuation_starts_with_the_clip_and_continues_from_its_last_frame(engines: EngineSet):
    from wanserve.generation.continuation import Clip, continue_clip
    from wanserve.media.clip import clip_frames
    from wanserve.media.frames import fit_image

    clip = _clip()
    engine = engines.for_model("wan2.7-i2v")
    rest = job("i2v", "wan2.7-i2v", seconds=3, prompt="the line keeps moving")
    frames = np.stack(list(continue_clip(engine, rest, Clip(clip, 2.0), lambda done, total: None)))
    expected = [fit_image(f, 100, 60) for f in clip_frames(clip, 30, 60)]
    assert frames.shape == (90, 60, 100, 3)
    assert all(np.array_equal(a, b) for a, b in zip(frames[:60], expected, strict=True))


def test_a_template_not_configured_fails_the_task_clearly(engines: EngineSet):
    with pytest.raises(ServiceError, match="template 'rose' is not set up"):
        render(engines, job("i2v", "wanx2.1-i2v-turbo", template="rose", first_frame=picture()))


@pytest.mark.parametrize("cache", ["taylorseer", {"type": "first_block", "threshold": 0.05}])
def test_cache_option_loads_and_renders(tmp_path: Path, cache):
    # first_block needs a head and a tail
    two_blocks = wan_fixtures.build_t2v(tmp_path / "t2v-2-blocks", layers=2)
    es = EngineSet({"wanx2.1-t2v-turbo": wan(two_blocks, num_inference_steps=6, cache=cache)})
    assert len(render(es, job("t2v", "wanx2.1-t2v-turbo", prompt="x"))) == 30
    # the cache state is reset between tasks
    assert len(render(es, job("t2v", "wanx2.1-t2v-turbo", prompt="x"))) == 30


# ==================================================================================================
# configuration and start-up


def test_a_ti2v_checkpoint_serves_text_and_image_models_at_24_fps(tmp_path: Path):
    ti2v = wan_fixtures.build_ti2v(tmp_path / "Wan2.2-TI2V-tiny-Diffusers")
    es = EngineSet({"wan2.2-t2v-plus": wan(ti2v, num_inference_steps=2),
                    "wan2.2-i2v-flash": wan(ti2v, num_inference_steps=2)})
    t2v, i2v = es.for_model("wan2.2-t2v-plus"), es.for_model("wan2.2-i2v-flash")
    assert t2v.loaded is i2v.loaded and set(t2v.loaded.pipelines) == {"t2v", "i2v"}
    plan = i2v.plan(job("i2v", "wan2.2-i2v-flash", width=100, height=60, first_frame=picture()))
    assert (plan.width, plan.height, plan.native_fps, plan.num_frames) == (96, 64, 24.0, 25)  # 16 x 2 grid
    assert render(es, job("t2v", "wan2.2-t2v-plus", prompt="x")).shape == (30, 60, 100, 3)
    i2v_frames = render(es, job("i2v", "wan2.2-i2v-flash", first_frame=picture(), prompt="x"))
    assert i2v_frames.shape == (30, 60, 100, 3)
    with pytest.raises(EngineConfigError, match="cannot do kf2v"):
        EngineSet({"wan2.2-kf2v-flash": wan(ti2v)})


def test_flow_shift_is_set_per_model_on_a_shared_scheduler(ckpt: Checkpoints):
    es = EngineSet({"wanx2.1-t2v-turbo": wan(ckpt.t2v, num_inference_steps=2, flow_shift=5.0),
                    "wan2.2-t2v-plus": wan(ckpt.t2v, num_inference_steps=2)})
    pipe = es.for_model("wanx2.1-t2v-turbo").loaded.pipelines["t2v"]
    render(es, job("t2v", "wanx2.1-t2v-turbo", prompt="x"))
    assert pipe.scheduler.config.flow_shift == 5.0
    render(es, job("t2v", "wan2.2-t2v-plus", prompt="x"))
    assert pipe.scheduler.config.flow_shift == 3.0  # the checkpoint's own


def test_models_sharing_a_checkpoint_share_one_loaded_pipeline(engines: EngineSet):
    assert engines.for_model("wan2.2-i2v-plus").loaded is engines.for_model("wanx2.1-i2v-turbo").loaded
    assert engines.for_model("wan2.1-i2v-turbo") is engines.for_model("wanx2.1-i2v-turbo")  # alias
    assert isinstance(engines.for_model("wan2.6-t2v"), PreviewEngine)  # not configured: the preview engine


def test_a_missing_checkpoint_fails_at_start_naming_model_and_path(tmp_path: Path):
    missing = tmp_path / "nowhere"
    with pytest.raises(EngineConfigError, match=r"wanx2\.1-t2v-turbo.*nowhere.*not a directory"):
        EngineSet({"wanx2.1-t2v-turbo": wan(missing)})
    (tmp_path / "empty").mkdir()
    with pytest.raises(EngineConfigError, match=r"wanx2\.1-t2v-turbo.*empty.*no model_index\.json"):
        EngineSet({"wanx2.1-t2v-turbo": wan(tmp_path / "empty")})


def test_a_broken_component_fails_at_start_naming_model_component_and_path(ckpt: Checkpoints, tmp_path: Path):
    broken = shutil.copytree(ckpt.t2v, tmp_path / "broken")
    (broken / "transformer" / "diffusion_pytorch_model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(EngineConfigError, match=r"wanx2\.1-t2v-turbo.*broken.*component 'transformer'"):
        EngineSet({"wanx2.1-t2v-turbo": wan(broken)})
    shutil.rmtree(broken / "vae")
    with pytest.raises(EngineConfigError, match=r"component 'vae'.*missing"):
        EngineSet({"wanx2.1-t2v-turbo": wan(broken)})


def test_a_checkpoint_of_the_wrong_kind_fails_at_start(ckpt: Checkpoints):
    with pytest.raises(EngineConfigError,
                       match=r"wanx2\.1-t2v-turbo.*\(t2v\) cannot be served.*cannot do t2v"):
        EngineSet({"wanx2.1-t2v-turbo": wan(ckpt.i2v)})
    with pytest.raises(EngineConfigError, match=r"wan2\.2-i2v-plus.*cannot do i2v"):
        EngineSet({"wan2.2-i2v-plus": wan(ckpt.flf2v)})  # FLF2V needs both frames


@pytest.mark.parametrize("table,message", [
    ({"num_inference_step": 4}, r"unknown keys \['num_inference_step'\]"),
    ({"dtype": "fp8"}, r"dtype = 'fp8' must be one of"),
    ({"offload": "disk"}, r"offload = 'disk' must be one of"),
    ({"num_inference_steps": "50"}, r"num_inference_steps = '50' must be"),
    ({"templates": {"rose": {"lora": "/x.safetensors", "prompt": "p"}}}, r"has no template 'rose'"),
    ({"guidance_scale_2": 3.0}, r"guidance_scale_2 needs a two-expert checkpoint"),
    ({"offload": "model", "device": "cpu"}, r"needs a CUDA device"),
])
def test_configuration_mistakes_fail_at_start(ckpt: Checkpoints, table: dict, message: str):
    with pytest.raises(EngineConfigError, match=message):
        EngineSet({"wanx2.1-t2v-turbo": wan(ckpt.t2v, **table)})


def test_template_configuration_is_checked_at_start(ckpt: Checkpoints, tmp_path: Path):
    with pytest.raises(EngineConfigError, match=r"LoRA file .*nope\.safetensors.* does not exist"):
        EngineSet({"wanx2.1-i2v-turbo": wan(ckpt.i2v, templates={
            "flying": {"lora": str(tmp_path / "nope.safetensors"), "prompt": "p"}})})
    with pytest.raises(EngineConfigError, match=r"prompt = .* is required"):
        EngineSet({"wanx2.1-i2v-turbo": wan(ckpt.i2v, templates={"flying": {"lora": str(ckpt.lora)}})})
    (tmp_path / "bad.safetensors").write_bytes(b"garbage")
    with pytest.raises(EngineConfigError, match=r"cannot load the LoRA adapter .*bad\.safetensors"):
        EngineSet({"wanx2.1-i2v-turbo": wan(ckpt.i2v, templates={
            "flying": {"lora": str(tmp_path / "bad.safetensors"), "prompt": "p"}})})


def test_unknown_models_and_engines_fail_at_start():
    with pytest.raises(EngineConfigError, match="not a public model"):
        EngineSet({"wan9-t2v": {"engine": "preview"}})
    with pytest.raises(EngineConfigError, match="engine 'comfy' is unknown"):
        EngineSet({"wan2.6-t2v": {"engine": "comfy"}})
    with pytest.raises(EngineConfigError, match="not used by the preview engine"):
        EngineSet({"wan2.6-t2v": {"engine": "preview", "checkpoint": "/x"}})


def test_the_preview_engine_and_base_install_never_import_torch():
    code = ("import sys; from wanserve.engines import EngineSet; "
            "e = EngineSet({'wan2.6-t2v': {'engine': 'preview'}}); e.for_model('wan2.6-t2v'); "
            "import wanserve.worker.runner, wanserve.api.app; "
            "print(sorted(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# ==================================================================================================
# through the API (in-process server built from the settings' models table)


def _i2v_body(model: str, url: str, **params: Any) -> dict[str, Any]:
    return {"model": model, "input": {"prompt": "a cat turns its head", "img_url": url},
            "parameters": {"resolution": "480P", "seed": 11, **params}}


def _succeeded_video(server: Server, tid: str) -> tuple[dict, Any]:
    body = server.wait(tid, timeout=180)
    assert body["output"]["task_status"] == "SUCCEEDED", body
    return body, probe_video(download(body["output"]["video_url"]))


@pytest.mark.slow
def test_api_i2v_on_a_two_expert_checkpoint_succeeds_with_the_contract_video(wan_server, media_server):
    server, _ = wan_server
    url = media_server.put("first.png", image_bytes(832, 480, seed=4))
    tid = server.create(_i2v_body("wan2.2-i2v-plus", url)).json()["output"]["task_id"]
    _, video = _succeeded_video(server, tid)
    assert (video.width, video.height, video.fps, video.frames) == (832, 480, 30.0, 150)


@pytest.mark.slow
def test_api_first_and_last_frame_task_succeeds_with_the_contract_video(wan_server, media_server):
    server, _ = wan_server
    first = media_server.put("a.png", image_bytes(832, 480, seed=5))
    last = media_server.put("b.png", image_bytes(832, 480, seed=6))
    r = server.create({"model": "wan2.2-kf2v-flash", "input": {"prompt": "morph", "first_frame_url": first,
                                                               "last_frame_url": last},
                       "parameters": {"resolution": "480P"}}, endpoint="image2video")
    _, video = _succeeded_video(server, r.json()["output"]["task_id"])
    assert (video.width, video.height, video.fps, video.frames) == (832, 480, 30.0, 150)


@pytest.mark.slow
def test_api_template_task_succeeds_through_the_lora_adapter(wan_server, media_server):
    server, _ = wan_server
    url = media_server.put("pet.png", image_bytes(832, 480, seed=7))
    r = server.create({"model": "wanx2.1-i2v-turbo", "input": {"img_url": url, "template": "flying"},
                       "parameters": {"resolution": "480P", "duration": 3}})
    body, video = _succeeded_video(server, r.json()["output"]["task_id"])
    assert (video.width, video.height, video.fps, video.frames) == (832, 480, 30.0, 90)
    assert body["output"].get("task_status") == "SUCCEEDED"


@pytest.mark.slow
def test_api_progress_rises_monotonically_over_the_denoising_steps(wan_server):
    server, engine_set = wan_server
    transformer = engine_set.for_model(SLOW_T2V).loaded.components["transformer"]
    handle = count_calls(transformer, [], lambda: time.sleep(0.05))
    try:
        tid = server.create({"model": SLOW_T2V, "input": {"prompt": "a lighthouse"},
                             "parameters": {"size": "832*480"}}).json()["output"]["task_id"]
        seen: list[dict] = []
        while (out := server.task(tid)["output"])["task_status"] in ("PENDING", "RUNNING"):
            if "progress" in out:
                seen.append(out["progress"])
            time.sleep(0.1)
    finally:
        handle.remove()
    assert out["task_status"] == "SUCCEEDED"
    dones = [p["done"] for p in seen]
    assert len(set(dones)) >= 5 and dones == sorted(dones)
    assert {p["total"] for p in seen} == {40 + 2}
    assert all(0 <= p["percent"] <= 100 for p in seen) and any(p["eta_seconds"] for p in seen)


@pytest.mark.slow
def test_api_cancel_of_a_running_task_stops_it_within_one_denoising_step(wan_server):
    server, engine_set = wan_server
    loaded = engine_set.for_model(SLOW_T2V).loaded
    forwards, decodes = [], []
    handles = [count_calls(loaded.components["transformer"], forwards, lambda: time.sleep(0.25)),
               count_calls(loaded.components["vae"].decoder, decodes)]
    try:
        tid = server.create({"model": SLOW_T2V, "input": {"prompt": "a lighthouse"},
                             "parameters": {"size": "832*480"}}).json()["output"]["task_id"]
        deadline = time.monotonic() + 60
        while (server.task(tid)["output"].get("progress") or {}).get("done", 0) < 2:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        with server.client() as c:
            assert c.post(f"/tasks/{tid}/cancel").status_code == 200
        at_cancel = len(forwards)
        assert server.wait(tid)["output"]["task_status"] == "CANCELED"
        time.sleep(1.5)  # a step takes 0.5 s here: anything still running would show up
        after = len(forwards) - at_cancel
    finally:
        for h in handles:
            h.remove()
    # the step in flight finishes, plus at most one more begun before the worker's next heartbeat
    # (every 0.25 s) saw the cancel; 2 forwards (conditional + unconditional) per step
    assert after <= 2 * 2, after
    assert len(forwards) < 40 * 2 and decodes == []
    assert tid not in stored_results(server.services)


@pytest.mark.slow
def test_api_out_of_memory_fails_the_task_and_the_next_task_succeeds(wan_server):
    server, engine_set = wan_server
    transformer = engine_set.for_model("wanx2.1-t2v-turbo").loaded.components["transformer"]

    def oom() -> None:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    body = {"model": "wanx2.1-t2v-turbo", "input": {"prompt": "a lighthouse"},
            "parameters": {"size": "832*480"}}
    handle = count_calls(transformer, [], oom)
    try:
        failed = server.wait(server.create(body).json()["output"]["task_id"], timeout=120)
    finally:
        handle.remove()
    assert failed["output"]["task_status"] == "FAILED"
    assert failed["output"]["code"] == "InternalError.Algo"
    message = failed["output"]["message"]
    assert "out of GPU memory" in message or "out of memory" in message
    _, video = _succeeded_video(server, server.create(body).json()["output"]["task_id"])
    assert (video.width, video.height, video.frames) == (832, 480, 150)


# ==================================================================================================
# the real command: wanserve serve --config FILE


def _serve(config: Path, data: Path, port: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "wanserve.cli", "serve", "--config", str(config), "--port",
                             str(port), "--data-dir", str(data)],
                            env={**os.environ, "WANSERVE_API_KEY": "sk-wan-test"},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_serve_with_a_broken_checkpoint_refuses_to_start_naming_model_and_path(tmp_path: Path):
    config = tmp_path / "wanserve.toml"
    config.write_text(f'[models."wanx2.1-t2v-turbo"]\nengine = "wan"\n'
                      f'checkpoint = "{tmp_path / "no-such-ckpt"}"\n')
    proc = _serve(config, tmp_path / "data", free_port())
    output = proc.communicate(timeout=120)[0]
    assert proc.returncode != 0
    assert "wanx2.1-t2v-turbo" in output and str(tmp_path / "no-such-ckpt") in output
    assert "not a directory" in output
    assert "serving on" not in output


@pytest.mark.slow
def test_serve_with_a_wan_config_generates_a_480p_t2v_video_at_default_settings(ckpt: Checkpoints,
                                                                                 tmp_path: Path):
    """The real command, the real loading code, the model's native 16 fps (81 frames, about 80 s
    on two CPU cores, most of it the VAE decode), interpolated to 150 frames at 30 fps."""
    import httpx

    config = tmp_path / "wanserve.toml"
    config.write_text(f'workers = 1\n[models."wanx2.1-t2v-turbo"]\nengine = "wan"\n'
                      f'checkpoint = "{ckpt.t2v}"\nnum_inference_steps = 2\n')
    port = free_port()
    proc = _serve(config, tmp_path / "data", port)
    api = f"http://127.0.0.1:{port}/api/v1"
    headers = {"Authorization": "Bearer sk-wan-test"}
    try:
        wait_until_serving(api, headers, proc, timeout=120)
        r = httpx.post(f"{api}/services/aigc/video-generation/video-synthesis", headers={**headers, **ASYNC},
                       json={"model": "wanx2.1-t2v-turbo", "input": {"prompt": "A lighthouse at dawn"},
                             "parameters": {"size": "832*480", "seed": 3}})
        out = poll_task(api, headers, r.json()["output"]["task_id"], timeout=400)
        assert out["task_status"] == "SUCCEEDED", out
        video = probe_video(download(out["video_url"]))
        assert (video.width, video.height, video.fps, video.frames) == (832, 480, 30.0, 150)
    finally:
        proc.terminate()
        output = proc.communicate(timeout=30)[0]
    assert "wan: loaded wanx2.1-t2v-turbo from " + str(ckpt.t2v) in output
    assert " s: WanPipeline" in output and "RSS" in output  # load time and memory are logged
    assert "832x480, 81 frames: 2 steps" in output  # generated at 16 fps natively


# ==================================================================================================
# the GPU benchmark's CPU-safe parts (it has no GPU here, but must not be dead code)

BENCHMARK = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu_denoise.py"


def _benchmark(*args: str) -> str:
    done = subprocess.run([sys.executable, str(BENCHMARK), *args], capture_output=True, text=True,
                          timeout=300, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_gpu_benchmark_without_cuda_exits_cleanly_saying_why():
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    out = _benchmark("--models", "1.3b", "--sizes", "480p")
    assert "no CUDA device is available" in out and "--tiny --device cpu" in out


def test_gpu_benchmark_counts_full_size_flops_on_the_meta_device():
    out = _benchmark("--count-only", "--models", "1.3b", "--sizes", "480p")
    row = next(line for line in out.splitlines() if line.startswith("Wan2.1 T2V-1.3B"))
    tflop_per_step = float(row.split()[4])
    # two forwards of ~1.4B parameters over 21 x 30 x 52 = 32760 tokens plus 30 layers of attention
    tokens, dim, layers = 21 * 30 * 52, 1536, 30
    estimate = 2 * (2 * 1.3e9 * tokens + 4 * tokens**2 * dim * layers) / 1e12
    assert abs(tflop_per_step - estimate) / estimate < 0.1, (tflop_per_step, estimate)


def test_gpu_benchmark_runs_end_to_end_on_tiny_configs_on_the_cpu():
    out = _benchmark("--tiny", "--device", "cpu", "--models", "5b", "--sizes", "480p", "--duration", "1",
                     "--full-steps", "2")
    assert "engine" in out and "stock" in out and "ratio engine/stock" in out
