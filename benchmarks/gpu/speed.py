"""Stage "speed": the speed table. Random weights at the published shapes (benchmarks/gpu_denoise.py
builds them on the device: no download), stock diffusers and wanserve side by side on the same
modules, then wanserve's speed modes.

Per case, seconds per denoising step are the median of the step-to-step intervals after the first
step (the warm-up: kernel selection): `STEPS_RUN` steps give `STEPS_RUN - 1` timed steps. Full runs
(stock, wanserve, distilled) go through the whole path once with `STEPS_RUN` steps (text and image
encoding, denoising, VAE decode, for wanserve the fit and frame-rate conversion to 30 fps, and the MP4
encoding timed apart) and are extrapolated to 40 and 50 steps; the other modes time steps only (the
render is stopped from the progress callback, as a cancel stops it) and take their fixed costs from
wanserve's full run.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from typing import Any

from common import Context, free, peak_gib, sync

STAGE = "speed"
STEPS_RUN = 4  # steps per timed run: the first is the warm-up, 3 timed
DURATION = 5  # seconds of video
FPS = 30


@dataclasses.dataclass(frozen=True)
class Case:
    model: str  # gpu_denoise.MODELS key
    size: str  # "480p" / "720p"
    paths: tuple[str, ...]  # "stock", "wanserve", then modes


# priority order: what the targets need first, then the other sizes, then the costly compiles
CASES = (
    Case("i2v-14b", "480p", ("stock", "wanserve", "distilled", "nobatch", "cudnn", "fp8", "compile",
                             "fp8+compile")),
    Case("1.3b", "480p", ("stock", "wanserve")),
    Case("5b", "720p", ("stock", "wanserve")),
)
# mode -> engine keys; "rebuild": the mode changes the transformer's modules, so it gets a fresh one
MODES: dict[str, dict[str, Any]] = {
    "wanserve": {},
    "distilled": {"num_inference_steps": 4, "guidance_scale": 1.0},
    "nobatch": {"cfg_batch": False},
    "cudnn": {"attention_backend": "_native_cudnn"},
    "fp8": {"quantize": "fp8", "rebuild": True},
    "compile": {"compile": "regional", "rebuild": True},
    "fp8+compile": {"quantize": "fp8", "compile": "regional", "rebuild": True},
}
FULL_RUN = {"stock", "wanserve", "distilled"}
CUDA_ONLY = {"cudnn", "fp8", "fp8+compile"}
FIXED_S = {"480p": 25.0, "720p": 45.0}  # encoders, VAE encode/decode, 30 fps conversion, MP4 (H200 guess)
BUILD_S = {"i2v-14b": 25.0, "1.3b": 12.0, "5b": 15.0}
COMPILE_S = 75.0  # inductor, one Wan block, cold cache, 16 cores (guess; measured as setup_s)


class _Enough(Exception):
    """Raised from the progress callback once the steps to time have run (as a cancel stops a task)."""


def _gd():
    import gpu_denoise

    return gpu_denoise


def _shape(ctx: Context, case: Case) -> tuple[Any, int, int, int]:
    """(gpu_denoise.ModelCase, width, height, native frames) of a case on this run's device."""
    from wanserve.engines.wan import generation_size, native_frame_count

    gd = _gd()
    mc = gd.tiny_case(gd.MODELS[case.model]) if ctx.tiny else gd.MODELS[case.model]
    w, h = (gd.TINY_SIZES if ctx.tiny else gd.SIZES)[case.size]
    gw, gh = generation_size(w, h, mc.vae.get("scale_factor_spatial", 8) * 2)
    return mc, gw, gh, native_frame_count(DURATION, 24 if mc.ti2v else 16)


_FLOPS: dict[tuple, int] = {}


def _flops(ctx: Context, case: Case) -> int:
    """FLOPs of one guided step (two forwards), counted on the meta device with the exact shapes."""
    key = (case.model, case.size, ctx.tiny)
    if key not in _FLOPS:
        mc, w, h, n = _shape(ctx, case)
        _FLOPS[key] = _gd().step_flops(mc, w, h, n)
    return _FLOPS[key]


def _estimate(ctx: Context, case: Case, path: str, flops: int) -> float:
    keys = MODES.get(path, {})
    guided = keys.get("guidance_scale", 5.0) > 1
    step = ctx.gpu_seconds(flops if guided else flops / 2)
    if "fp8" in path:
        step *= 0.8
    seconds = STEPS_RUN * step + (FIXED_S[case.size] if path in FULL_RUN else 2.0)
    if keys.get("rebuild"):
        seconds += BUILD_S[case.model] / 2
    if "compile" in path:
        seconds += COMPILE_S
    return seconds if not ctx.tiny else 2.0 + (10.0 if "compile" in path else 0.0)


def plan(ctx: Context) -> list[tuple[str, float]]:
    out = []
    for case in CASES:
        flops = _flops(ctx, case)
        out.append((f"{case.model}-{case.size}/build", BUILD_S[case.model] if not ctx.tiny else 3.0))
        out += [(f"{case.model}-{case.size}/{p}", _estimate(ctx, case, p, flops)) for p in case.paths]
    return out


def run(ctx: Context, only: set[str] | None = None) -> None:
    """Every case of CASES in order (or those named in `only`, as "model-size/path" or "model-size")."""
    import torch

    gd = _gd()
    dtype = torch.bfloat16 if ctx.device.type == "cuda" else torch.float32
    for case in CASES:
        label = f"{case.model}-{case.size}"
        paths = [p for p in case.paths if only is None or label in only or f"{label}/{p}" in only]
        if not paths:
            continue
        flops = _flops(ctx, case)
        mc, w, h, n = _shape(ctx, case)
        if not ctx.fits(STAGE, f"{label}/build", BUILD_S[case.model] + _estimate(ctx, case, paths[0], flops)):
            continue
        components: dict[str, Any] | None = None
        with ctx.case(STAGE, f"{label}/build"):
            started = time.monotonic()
            components = gd.build_components(mc, ctx.device, dtype, ctx.tiny, text_layers=24)
            sync(ctx.device)
            params = sum(p.numel() for p in components["transformer"].parameters())
            ctx.record(STAGE, f"{label}/build", seconds=round(time.monotonic() - started, 1),
                       params_b=round(params / 1e9, 3))
        if components is None:
            continue
        base: dict[str, float] = {}  # wanserve's full run: fixed costs for the step-only modes
        fresh = True  # the transformer has not been changed by a mode yet
        for path in paths:
            keys = dict(MODES.get(path, {}))
            rebuild = keys.pop("rebuild", False)
            if ctx.device.type != "cuda" and path in CUDA_ONLY:
                ctx.record(STAGE, f"{label}/{path}", status="skipped", reason="needs a CUDA device")
                continue
            if not ctx.fits(STAGE, f"{label}/{path}", _estimate(ctx, case, path, flops)):
                continue
            with ctx.case(STAGE, f"{label}/{path}"):
                if rebuild and not fresh:
                    components["transformer"] = None
                    free(ctx.device)
                    components["transformer"] = gd.build_components(
                        mc, ctx.device, dtype, ctx.tiny, text_layers=1, only="transformer")["transformer"]
                fresh = fresh and not rebuild
                if path == "stock":
                    fields = _stock(ctx, mc, components, w, h, n)
                else:
                    fields = _engine(ctx, mc, components, w, h, path, keys, base)
                guided = keys.get("guidance_scale", 5.0) > 1
                step_flops = flops if guided else flops // 2
                fields.update(_utilisation(ctx, step_flops, fields["step_s"]),
                              tflop_per_step=step_flops / 1e12, model=mc.title, size=f"{w}x{h}", frames=n,
                              path=path)
                ctx.record(STAGE, f"{label}/{path}", **fields)
            if path == "cudnn" or rebuild:
                fresh = False  # the attention backend or the modules changed: later modes rebuild
        del components
        free(ctx.device)


def _utilisation(ctx: Context, flops: int, step_s: float) -> dict[str, Any]:
    _, peak = _gd().peak_tflops(ctx.device)
    achieved = flops / step_s / 1e12
    out: dict[str, Any] = {"tflops": round(achieved, 1)}
    if peak:
        out["mfu_datasheet"] = round(achieved / peak, 3)
    if ctx.matmul_tflops:
        out["mfu_matmul"] = round(achieved / ctx.matmul_tflops, 3)
    return out


def _extrapolate(full_s: float, steps_run: int, step_s: float, mp4_s: float) -> dict[str, float]:
    return {f"e2e_{n}_s": round(full_s + (n - steps_run) * step_s + mp4_s, 1) for n in (40, 50)}


def _stock(ctx: Context, mc: Any, components: dict[str, Any], w: int, h: int, n: int) -> dict[str, Any]:
    from diffusers import WanImageToVideoPipeline, WanPipeline

    gd = _gd()
    if mc.image_encoder is not None:
        pipe = WanImageToVideoPipeline(**components)
    else:
        pipe = WanPipeline(**{k: v for k, v in components.items() if k not in ("image_encoder",
                                                                                "image_processor")},
                           expand_timesteps=mc.ti2v)
    pipe.set_progress_bar_config(disable=True)
    t = gd.run_stock(pipe, w, h, n, STEPS_RUN, ctx.device, 24 if mc.ti2v else 16)
    return {"step_s": round(t.step_s, 4), "full_s": round(t.full_s, 2), "steps_run": t.steps,
            "mp4_s": round(t.mp4_s, 2), "peak_gib": t.peak_gib, "output_frames": t.frames,
            **_extrapolate(t.full_s, t.steps, t.step_s, t.mp4_s)}


def _engine(ctx: Context, mc: Any, components: dict[str, Any], w: int, h: int, path: str,
            keys: dict[str, Any], base: dict[str, float]) -> dict[str, Any]:
    gd = _gd()
    steps = keys.pop("num_inference_steps", STEPS_RUN if path in FULL_RUN else 50)
    engine, setup_s = _build_engine(ctx, mc, components, steps, keys)
    if path in FULL_RUN:
        t = gd.run_engine(engine, mc, w, h, DURATION, steps, ctx.device)
        timings = {k: round(v, 2) for k, v in engine.last_timings.items() if k.endswith("_s")}
        fields = {"step_s": round(t.step_s, 4), "full_s": round(t.full_s, 2), "steps_run": t.steps,
                  "mp4_s": round(t.mp4_s, 2), "peak_gib": t.peak_gib, "output_frames": t.frames,
                  "setup_s": round(setup_s, 1), **timings}
        if path == "distilled":  # 4 steps is the whole generation: measured end to end
            fields["e2e_4_s"] = round(t.full_s + t.mp4_s, 1)
        else:
            fields.update(_extrapolate(t.full_s, t.steps, t.step_s, t.mp4_s))
            base.update(fixed_s=t.full_s - t.steps * t.step_s, mp4_s=t.mp4_s)
        return fields
    step_s, peak = _time_steps(ctx, engine, mc, w, h)
    fields = {"step_s": round(step_s, 4), "steps_run": STEPS_RUN, "peak_gib": peak,
              "setup_s": round(setup_s, 1)}
    if base:
        fields.update({f"e2e_{n}_s": round(base["fixed_s"] + n * step_s + base["mp4_s"], 1)
                       for n in (40, 50)}, e2e_from="wanserve's fixed costs + steps")
    return fields


def _build_engine(ctx: Context, mc: Any, components: dict[str, Any], steps: int, keys: dict[str, Any]):
    """gpu_denoise.build_engine with arbitrary speed keys."""
    gd = _gd()
    name = "_suite"
    keys = dict(keys)
    backend = keys.pop("attention_backend", None)
    if ctx.device.type != "cuda" and keys.get("compile") == "regional":
        keys["compile"] = "regional-eager"  # inductor on a 2-core CI machine compiles for minutes
    gd.MODE_KEYS[name] = keys
    try:
        return gd.build_engine(mc, components, ctx.device, components["transformer"].dtype, steps, backend,
                               name)
    finally:
        gd.MODE_KEYS.pop(name, None)


def _time_steps(ctx: Context, engine: Any, mc: Any, w: int, h: int) -> tuple[float, float | None]:
    """Seconds per step (median of the intervals after the first step) and peak GiB; the render is stopped
    after STEPS_RUN steps from the progress callback."""
    from wanserve.engines.base import RenderJob

    gd = _gd()
    i2v = mc.image_encoder is not None
    job = RenderJob(kind="i2v" if i2v else "t2v", model=mc.public_model, width=w, height=h,
                    frame_count=DURATION * FPS, prompt="A lighthouse at dawn, waves breaking on the rocks.",
                    seed=1, first_frame=gd.first_frame(w, h) if i2v else None)
    stamps: list[float] = []

    def progress(done: int, total: int) -> None:
        if done >= 1:
            sync(ctx.device)
            stamps.append(time.perf_counter())
            if len(stamps) >= STEPS_RUN:
                raise _Enough()

    free(ctx.device)
    try:
        for _ in engine.render(job, progress):
            break
    except _Enough:
        pass
    gaps = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
    if len(gaps) < STEPS_RUN - 1:
        raise RuntimeError(f"only {len(stamps)} steps were reported")
    return statistics.median(gaps), peak_gib(ctx.device)
