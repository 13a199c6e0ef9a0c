"""Stage "correctness": the `wan` engine on the suite's device, on tiny random-weight checkpoints of
every layout it serves, through the same `EngineSet` a worker builds (real loading code, real
render path):

- each layout (Wan2.1 T2V, Wan2.2 two-expert I2V, Wan2.1 FLF2V with CLIP, Wan2.2 TI2V for text and
  image) renders the contract's frame count at the exact size;
- batched guidance computes what two forwards compute, within bf16 tolerance on the GPU;
- each speed mode loads and renders (regional compile with inductor, fused projections, fp8 through
  torchao, the mag cache calibrated and with ratios, a fused distillation LoRA, group offload,
  cuDNN attention);
- a cancel raised from the progress callback during denoising stops the task within one step, and
  the checkpoint serves the next task.

Checkpoints are tiny (2 heads of 64: width 128, so fp8 has layers to quantize), so the stage costs
start-up and compile time, not arithmetic.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from common import Context, check, free

STAGE = "correctness"
T2V, I2V, KF2V, TI2V_T, TI2V_I = ("wanx2.1-t2v-turbo", "wan2.2-i2v-plus", "wan2.2-kf2v-flash",
                                  "wan2.2-t2v-plus", "wan2.2-i2v-flash")
FRAMES, WIDTH, HEIGHT = 30, 100, 60  # 1 s of output: 30 frames at 30 fps

# mode -> the [models."..."] keys it sets; a CUDA-only mode is skipped (and says so) on the CPU
MODES: dict[str, dict[str, Any]] = {
    "compile": {"compile": "regional"},
    "fuse_qkv": {"fuse_qkv": True},
    "fp8": {"quantize": "fp8"},
    "mag_calibrate": {"cache": {"type": "mag", "calibrate": True}},
    "mag": {"cache": {"type": "mag", "mag_ratios": [1.0, 1.0, 0.99, 0.98, 0.97, 0.95], "threshold": 0.5,
                      "retention_ratio": 0.0}},
    "distilled": {"distilled": {"scale": 1.0}, "num_inference_steps": 4, "guidance_scale": 1.0},
    "offload_group": {"offload": "group"},
    "cudnn_attention": {"attention_backend": "_native_cudnn"},
}
CUDA_ONLY = {"fp8", "offload_group", "cudnn_attention"}
PRESERVING = {"compile", "fuse_qkv", "cudnn_attention"}  # the same function: the video barely moves


def plan(ctx: Context) -> list[tuple[str, float]]:
    # Mostly fixed costs: imports and CUDA start (~10 s), 4 tiny checkpoints saved (~3 s), ~1-2 s per tiny
    # render (the interpolation to 30 fps runs on the CPU); inductor compiling one block cold ~40 s.
    if ctx.device.type != "cuda":
        return [("checkpoints", 8), ("layouts", 20), ("guidance-batch", 2)] + \
               [(f"mode-{m}", 4) for m in MODES] + [("cancel", 3)]
    return [("checkpoints", 15), ("layouts", 12), ("guidance-batch", 3)] + \
           [(f"mode-{m}", 45 if m == "compile" else 6) for m in MODES] + [("cancel", 4)]


def run(ctx: Context) -> None:
    from tests import wan_fixtures

    estimates = dict(plan(ctx))
    root = (ctx.scratch or ctx.out) / "correctness"
    ckpt: dict[str, Path] = {}
    if not ctx.fits(STAGE, "checkpoints", estimates["checkpoints"]):
        return
    with ctx.case(STAGE, "checkpoints"):
        started = time.monotonic()
        ckpt = {"t2v": wan_fixtures.build_t2v(root / "t2v", layers=2, head_dim=64),
                "i2v": wan_fixtures.build_i2v_two_experts(root / "i2v"),
                "flf2v": wan_fixtures.build_flf2v(root / "flf2v"),
                "ti2v": wan_fixtures.build_ti2v(root / "ti2v")}
        ckpt["lora"] = wan_fixtures.build_lora(ckpt["t2v"], root / "lora")
        ctx.record(STAGE, "checkpoints", seconds=round(time.monotonic() - started, 1))
    if not ckpt:
        return
    if ctx.fits(STAGE, "layouts", estimates["layouts"]):
        with ctx.case(STAGE, "layouts"):
            layouts(ctx, ckpt)
    if ctx.fits(STAGE, "guidance-batch", estimates["guidance-batch"]):
        with ctx.case(STAGE, "guidance-batch"):
            guidance_batch(ctx)
    plain = None
    for mode, keys in MODES.items():
        case = f"mode-{mode}"
        if mode in CUDA_ONLY and ctx.device.type != "cuda":
            ctx.record(STAGE, case, status="skipped", reason="needs a CUDA device")
            continue
        if not ctx.fits(STAGE, case, estimates[case]):
            continue
        with ctx.case(STAGE, case):
            if plain is None:
                plain = render_one(engine_set(ctx, T2V, ckpt["t2v"]), T2V)
            speed_mode(ctx, ckpt, mode, keys, plain)
    if ctx.fits(STAGE, "cancel", estimates["cancel"]):
        with ctx.case(STAGE, "cancel"):
            cancel(ctx, ckpt)
    free(ctx.device)


# ==================================================================================================


def wan(ctx: Context, checkpoint: Path, **keys: Any) -> dict[str, Any]:
    # 4 native fps: 5 native frames for a 1 s clip; the output is still 30 frames at the contract size
    return {"engine": "wan", "checkpoint": str(checkpoint), "device": str(ctx.device),
            "num_inference_steps": 3, "native_fps": 4, **keys}


def engine_set(ctx: Context, model: str, checkpoint: Path, **keys: Any) -> Any:
    from wanserve.engines import EngineSet

    return EngineSet({model: wan(ctx, checkpoint, **keys)})


def render_one(es: Any, model: str, kind: str = "t2v", seed: int = 7, progress: Any = None) -> Any:
    import numpy as np

    from wanserve.engines import RenderJob

    image = last = None
    if kind in ("i2v", "kf2v"):
        rng = np.random.default_rng(seed)
        image = rng.integers(0, 255, (HEIGHT, WIDTH, 3), dtype=np.uint8)
        last = rng.integers(0, 255, (HEIGHT, WIDTH, 3), dtype=np.uint8) if kind == "kf2v" else None
    job = RenderJob(kind=kind, model=model, width=WIDTH, height=HEIGHT, frame_count=FRAMES,
                    prompt="A cat walks across a sunny kitchen floor.", seed=seed, first_frame=_pil(image),
                    last_frame=_pil(last))
    return np.stack(list(es.for_model(model).render(job, progress or (lambda done, total: None))))


def _pil(array: Any) -> Any:
    if array is None:
        return None
    from PIL import Image

    return Image.fromarray(array)


def layouts(ctx: Context, ckpt: dict[str, Path]) -> None:
    from wanserve.engines import EngineSet

    cases = [("t2v", T2V, "t2v", {T2V: wan(ctx, ckpt["t2v"])}),
             ("i2v-two-experts", I2V, "i2v", {I2V: wan(ctx, ckpt["i2v"])}),
             ("flf2v-clip", KF2V, "kf2v", {KF2V: wan(ctx, ckpt["flf2v"])}),
             ("ti2v-text", TI2V_T, "t2v", {TI2V_T: wan(ctx, ckpt["ti2v"]), TI2V_I: wan(ctx, ckpt["ti2v"])}),
             ("ti2v-image", TI2V_I, "i2v", None)]
    es = None
    for name, model, kind, models in cases:
        es = EngineSet(models) if models is not None else es
        started = time.monotonic()
        frames = render_one(es, model, kind)
        check(ctx, STAGE, f"layout-{name}", frames.shape == (FRAMES, HEIGHT, WIDTH, 3),
              shape=list(frames.shape), expected=[FRAMES, HEIGHT, WIDTH, 3],
              seconds=round(time.monotonic() - started, 2))


def guidance_batch(ctx: Context) -> None:
    """GuidanceBatch's one forward on a batch of two against two forwards, in the device's dtype."""
    import torch
    from tests import wan_fixtures

    from wanserve.engines.wan.speed import GuidanceBatch

    dtype = torch.bfloat16 if ctx.device.type == "cuda" else torch.float32
    torch.manual_seed(0)
    transformer = wan_fixtures.tiny_transformer(layers=2, head_dim=64).to(ctx.device, dtype)
    x = torch.randn(1, 16, 3, 16, 16, device=ctx.device, dtype=dtype)
    ts = torch.tensor([700.0], device=ctx.device)
    cond, uncond = (torch.randn(1, 512, wan_fixtures.TEXT_DIM, device=ctx.device, dtype=dtype) for _ in "ab")
    with torch.no_grad():
        expected = [transformer(hidden_states=x, timestep=ts, encoder_hidden_states=e, return_dict=False)[0]
                    for e in (cond, uncond)]
        with GuidanceBatch([transformer], cond, uncond) as batch:
            got = [transformer(hidden_states=x, timestep=ts, encoder_hidden_states=e, return_dict=False)[0]
                   for e in (cond, uncond)]
    errors = [float((g.float() - e.float()).norm() / e.float().norm())
              for g, e in zip(got, expected, strict=True)]
    bound = 1e-2 if dtype == torch.bfloat16 else 1e-5
    check(ctx, STAGE, "guidance-batch-equals-two-forwards", batch.batched == 1 and max(errors) <= bound,
          relative_error=max(errors), bound=bound, dtype=str(dtype), batched_steps=batch.batched)


def speed_mode(ctx: Context, ckpt: dict[str, Path], mode: str, keys: dict[str, Any], plain: Any) -> None:
    import numpy as np

    keys = {k: dict(v) if isinstance(v, dict) else v for k, v in keys.items()}
    if "distilled" in keys:
        keys["distilled"]["lora"] = str(ckpt["lora"])
    if mode == "compile" and ctx.device.type != "cuda":
        keys["compile"] = "regional-eager"  # inductor on a 2-core CI machine compiles for minutes
    started = time.monotonic()
    es = engine_set(ctx, T2V, ckpt["t2v"], **keys)
    setup = time.monotonic() - started
    frames = render_one(es, T2V)
    again = render_one(es, T2V, seed=8)  # a second task: cache state reset, compiled blocks reused
    fields: dict[str, Any] = {"setup_s": round(setup, 2), "shape": list(frames.shape)}
    ok = frames.shape == again.shape == (FRAMES, HEIGHT, WIDTH, 3)
    if mode in PRESERVING:
        diff = np.abs(frames.astype(int) - plain.astype(int))
        fields.update(max_abs_diff=int(diff.max()), mean_abs_diff=round(float(diff.mean()), 3))
        ok = ok and float(diff.mean()) <= 4.0  # uint8; bf16 kernels differ in rounding only
    if mode == "fp8":
        import torch

        # torchao swaps a quantized Linear's weight for a tensor subclass (Float8Tensor, or an
        # AffineQuantizedTensor with a float8 layout in older releases)
        transformer = es.for_model(T2V).loaded.components["transformer"]
        kinds = [type(m.weight).__name__ for m in transformer.modules() if isinstance(m, torch.nn.Linear)
                 and type(m.weight) not in (torch.Tensor, torch.nn.Parameter)]
        fields.update(fp8_layers=len(kinds), weight_types=sorted(set(kinds)))
        ok = ok and len(kinds) > 0
    check(ctx, STAGE, f"mode-{mode}", ok, **fields)
    del es
    free(ctx.device)


def cancel(ctx: Context, ckpt: dict[str, Path]) -> None:
    """A cancel seen at the end of step 2 of 20 leaves the pipeline before step 3's transformer runs."""
    from wanserve.errors import TaskCanceled

    es = engine_set(ctx, T2V, ckpt["t2v"], num_inference_steps=20)
    transformer = es.for_model(T2V).loaded.components["transformer"]
    forwards: list[float] = []
    transformer.blocks[0].register_forward_pre_hook(lambda mod, args: forwards.append(time.monotonic()))
    canceled_at: list[int] = []

    def progress(done: int, total: int) -> None:
        if done == 2 and not canceled_at:
            canceled_at.append(len(forwards))
            raise TaskCanceled()

    raised = False
    try:
        render_one(es, T2V, progress=progress)
    except TaskCanceled:
        raised = True
    after = len(forwards) - canceled_at[0] if canceled_at else None
    frames = render_one(es, T2V)  # the lock is free and the pipeline usable again
    check(ctx, STAGE, "cancel-within-one-step", raised and after == 0 and frames.shape[0] == FRAMES,
          forwards_after_cancel=after, raised=raised)
