"""What every stage of the GPU suite shares: the run's context (device, budget, ceilings) and the
results file, one JSON line per result written the moment it is known, so a run cut short still
returns what it measured.

A stage is a function `run(ctx)` that records results through `ctx.record(...)`; before each case
it asks `ctx.fits(stage, case, estimate_s)`, which records a "skipped" line (saying why) when the
estimate exceeds the budget left. `ctx.case(...)` wraps one case: an exception becomes an "error"
line with its traceback's tail, and the suite goes on to the next case.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]

# Dense BF16 ceilings used by --plan before any measurement: the lent H200 measured 769-798 TFLOP/s on
# an 8192^3 bf16 matmul and ~4.3 TB/s on a device-to-device copy (the device tool's KINDS.md, 2026-11).
PLAN_MATMUL_TFLOPS = 790.0
PLAN_COPY_TBPS = 4.3
# The share of the matmul ceiling a whole Wan transformer step reaches in eager PyTorch with SDPA's flash
# kernel (published: stock diffusers I2V-14B 480P guided 9.77 s/step on an H100 = 3.37 PFLOP / 9.77 s
# = 345 TFLOP/s, ~44 % of 790): the estimates' efficiency for un-tuned paths.
PLAN_EFFICIENCY = 0.44


@dataclasses.dataclass
class Context:
    device: Any  # torch.device
    tiny: bool
    out: Path
    budget_s: float
    started: float = dataclasses.field(default_factory=time.monotonic)
    matmul_tflops: float | None = None  # measured in this run (stage "ceilings")
    copy_tbps: float | None = None
    results: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    scratch: Path | None = None  # a working folder for checkpoints and servers (not returned)

    # -- budget -------------------------------------------------------------------------------------

    def left(self) -> float:
        return self.budget_s - (time.monotonic() - self.started)

    def fits(self, stage: str, case: str, estimate_s: float) -> bool:
        """True if `estimate_s` fits the budget left; otherwise records why the case is skipped."""
        left = self.left()
        if estimate_s <= left:
            return True
        self.record(stage, case, status="skipped",
                    reason=f"estimate {estimate_s:.0f} s exceeds the {max(left, 0):.0f} s of budget left")
        return False

    def gpu_seconds(self, flops: float, efficiency: float = PLAN_EFFICIENCY) -> float:
        """Seconds `flops` of transformer work take at `efficiency` of the matmul ceiling (measured in
        this run where it was, else the plan's)."""
        if self.device.type != "cuda":
            return flops / 50e9  # a CPU core pair in float32: only the tiny configs ever run there
        return flops / ((self.matmul_tflops or PLAN_MATMUL_TFLOPS) * 1e12 * efficiency)

    # -- results ------------------------------------------------------------------------------------

    def record(self, stage: str, case: str, status: str = "ok", **fields: Any) -> dict[str, Any]:
        line = {"stage": stage, "case": case, "status": status,
                "t_s": round(time.monotonic() - self.started, 1), **fields}
        self.results.append(line)
        self.out.mkdir(parents=True, exist_ok=True)
        with open(self.out / "results.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(line, default=_json_default, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        print(f"[{line['t_s']:>6.1f} s] {stage}/{case}: {status} "
              + " ".join(f"{k}={_short(v)}" for k, v in fields.items()), flush=True)
        return line

    @contextlib.contextmanager
    def case(self, stage: str, case: str) -> Iterator[None]:
        """Runs one case; an exception is recorded as an "error" line and does not stop the suite."""
        try:
            yield
        except Exception as exc:  # a broken case is a result, not the end of the run
            tail = "".join(traceback.format_exception(exc))[-2500:]
            self.record(stage, case, status="error", error=f"{type(exc).__name__}: {exc}"[:500],
                        traceback=tail)

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [r for r in self.results if r["status"] in ("error", "fail")]


def check(ctx: Context, stage: str, case: str, ok: bool, **fields: Any) -> bool:
    """Record a pass/fail check: status "ok" or "fail"."""
    ctx.record(stage, case, status="ok" if ok else "fail", **fields)
    return ok


def sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free(device: Any) -> None:
    import gc

    import torch

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: Any) -> float | None:
    import torch

    return round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item"):
        return value.item()
    return repr(value)


def _short(value: Any) -> str:
    text = f"{value:.4g}" if isinstance(value, float) else str(value)
    return text if len(text) <= 120 else text[:117] + "..."
