"""The GPU proof: wanserve end to end on CUDA and the speed table, in one call that fits a short lease.

    python benchmarks/gpu/suite.py --budget-s 450 --out "$OUT"      # on a GPU machine (benchmarks/gpu/run.sh)
    python benchmarks/gpu/suite.py --plan                          # each stage's estimated GPU seconds
    python benchmarks/gpu/suite.py --device cpu --tiny --out /tmp/r # every stage on tiny configs (CI)
    python benchmarks/gpu/suite.py --stages speed --cases i2v-14b-480p/compile   # a second run's leftovers

Stages, in priority order (docs/deploy.md "Check a GPU machine"; estimates in benchmarks/NOTES.md):
  ceilings     a bf16 8192^3 matmul and a device-to-device copy: the ceilings the table divides by
  correctness  tiny checkpoints of every layout through WanEngine; batched guidance; each speed mode; cancel
  service      `wanserve serve` on a saved full-size random T2V-1.3B and a tiny I2V, over HTTP
  speed        I2V-14B 480P stock vs wanserve and its modes; T2V-1.3B 480P; TI2V-5B 720P

Each result is one JSON line appended to OUT/results.jsonl the moment it is known; a stage (or a case)
whose estimate exceeds the budget left is skipped, saying so. The table prints last. The exit status
is 1 if any check failed or any case raised.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
for p in (HERE, REPO / "benchmarks", REPO, REPO / "src"):  # stage modules, gpu_denoise, tests, wanserve
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

import correctness  # noqa: E402
import service  # noqa: E402
import speed  # noqa: E402
from common import PLAN_COPY_TBPS, PLAN_MATMUL_TFLOPS, Context, sync  # noqa: E402
from table import print_table  # noqa: E402

STAGES = {"ceilings": None, "correctness": correctness, "service": service, "speed": speed}


def ceilings_plan(ctx: Context) -> list[tuple[str, float]]:
    return [("matmul-bf16", 3.0), ("copy", 1.0)]


def ceilings(ctx: Context) -> None:
    """The bf16 matmul rate (gpu_denoise's 8192^3, median of 10 after warm-up) and device copy bandwidth
    (bytes read + written), measured here: the table's MFU and the estimates divide by these."""
    import gpu_denoise
    import torch

    dtype = torch.bfloat16 if ctx.device.type == "cuda" else torch.float32
    with ctx.case("ceilings", "matmul-bf16"):
        ctx.matmul_tflops = gpu_denoise.matmul_ceiling_tflops(ctx.device, dtype)
        name, peak = gpu_denoise.peak_tflops(ctx.device)
        ctx.record("ceilings", "matmul-bf16", tflops=round(ctx.matmul_tflops, 1), device_name=name,
                   datasheet_tflops=peak, dtype=str(dtype))
    with ctx.case("ceilings", "copy"):
        n = (1 << 30) if ctx.device.type == "cuda" else (1 << 24)  # 2 GiB of bf16 on a GPU
        src = torch.randn(n, device=ctx.device, dtype=torch.bfloat16)
        dst = torch.empty_like(src)
        times = []
        for i in range(8):
            sync(ctx.device)
            started = time.perf_counter()
            dst.copy_(src)
            sync(ctx.device)
            if i >= 2:
                times.append(time.perf_counter() - started)
        ctx.copy_tbps = 2 * src.numel() * src.element_size() / statistics.median(times) / 1e12
        ctx.record("ceilings", "copy", tbps=round(ctx.copy_tbps, 2), gib=round(2 * n / 2**30, 2))
        del src, dst


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda", help="cuda (default), cuda:N, or cpu (with --tiny)")
    p.add_argument("--tiny", action="store_true", help="tiny configs at small sizes (the CPU check in CI)")
    p.add_argument("--budget-s", type=float, default=450.0, help="seconds for all stages (default 450)")
    p.add_argument("--out", type=Path, default=Path("gpu-results"), help="where results.jsonl goes")
    p.add_argument("--scratch", type=Path, default=None,
                   help="working folder for checkpoints and servers (default: a temporary folder)")
    p.add_argument("--stages", default=",".join(STAGES), help="comma list of: " + ", ".join(STAGES))
    p.add_argument("--cases", default=None,
                   help="speed: only these, comma list of model-size or model-size/path "
                        "(e.g. i2v-14b-480p/fp8)")
    p.add_argument("--plan", action="store_true", help="print each stage's estimated seconds and exit")
    args = p.parse_args(argv)
    args.stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    for s in args.stages:
        if s not in STAGES:
            p.error(f"unknown stage {s!r}; choose from {', '.join(STAGES)}")
    args.cases = {c.strip() for c in args.cases.split(",") if c.strip()} if args.cases else None
    return args


def stage_plan(name: str, ctx: Context) -> list[tuple[str, float]]:
    return ceilings_plan(ctx) if name == "ceilings" else STAGES[name].plan(ctx)


RUN_SH_OVERHEAD_S = 30.0  # run.sh before the suite: installing the wheels, nvidia-smi, imports


def print_plan(args: argparse.Namespace, ctx: Context) -> float:
    """Each case's estimate, and whether the budget would keep it (cases are skipped in order once they
    no longer fit, as the run does); returns the estimated seconds of the whole run.sh."""
    ceiling = ctx.matmul_tflops or PLAN_MATMUL_TFLOPS
    print(f"plan on {ctx.device}{' (tiny)' if ctx.tiny else ''}: matmul ceiling {ceiling:.0f} TFLOP/s, copy "
          f"{ctx.copy_tbps or PLAN_COPY_TBPS:.1f} TB/s; budget {args.budget_s:.0f} s")
    total = kept = 0.0
    for name in args.stages:
        cases = stage_plan(name, ctx)
        seconds = sum(s for _, s in cases)
        total += seconds
        print(f"  {name:<12} {seconds:>7.0f} s")
        for case, s in cases:
            runs = kept + s <= args.budget_s
            kept += s if runs else 0.0
            print(f"      {case:<36} {s:>7.1f} s  {'runs' if runs else 'skipped: over budget'}")
    whole = kept + RUN_SH_OVERHEAD_S
    print(f"  {'total':<12} {total:>7.0f} s of cases; the budget keeps {kept:.0f} s; "
          f"run.sh about {whole:.0f} s")
    return whole


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()  # random weights cast on purpose: no dtype warnings per module
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available() and not args.plan:
        print("suite: no CUDA device here; use --device cpu --tiny for the CPU check, --plan for estimates.")
        return 2
    scratch = args.scratch or Path(tempfile.mkdtemp(prefix="wanserve-gpu-"))
    ctx = Context(device=device, tiny=args.tiny or device.type == "cpu", out=args.out, budget_s=args.budget_s,
                  scratch=scratch)
    if args.plan:
        print_plan(args, ctx)
        return 0
    try:
        for name in args.stages:
            first = stage_plan(name, ctx)[0]
            if not ctx.fits(name, first[0], first[1]):
                continue
            started = time.monotonic()
            with ctx.case(name, "stage"):  # a stage that raises outside its cases: recorded, next stage
                if name == "ceilings":
                    ceilings(ctx)
                elif name == "speed":
                    speed.run(ctx, only=args.cases)
                else:
                    STAGES[name].run(ctx)
                ctx.record(name, "stage", seconds=round(time.monotonic() - started, 1))
    finally:
        if args.scratch is None:
            shutil.rmtree(scratch, ignore_errors=True)
        print_table(ctx)
    return 1 if ctx.failed else 0


if __name__ == "__main__":
    sys.exit(main())
