"""The suite's closing table (only the end of the output comes back from a GPU machine): the ceilings,
a line per speed case, the wanserve/stock ratios, and every check that did not pass.

    python benchmarks/gpu/table.py results.jsonl [more.jsonl ...]   # the speed rows as a Markdown table
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from common import Context


def _f(value: Any, fmt: str = ".2f") -> str:
    return "-" if value is None else format(value, fmt) if isinstance(value, (int, float)) else str(value)


def print_table(ctx: Context) -> None:
    rows = ctx.results
    print("\n" + "=" * 110)
    for r in rows:
        if r["stage"] == "ceilings" and r["status"] == "ok" and r["case"] != "stage":
            text = (f"{r.get('tflops')} TFLOP/s bf16 matmul ({r.get('device_name')}, datasheet "
                    f"{r.get('datasheet_tflops')})") if r["case"] == "matmul-bf16" else \
                f"{r.get('tbps')} TB/s copy"
            print(f"ceiling: {text}")
    speed = [r for r in rows if r["stage"] == "speed" and r["status"] == "ok" and "step_s" in r]
    if speed:
        print(f"{'model':<30} {'size':>9} {'path':<12} {'s/step':>8} {'TFLOP/s':>8} {'MFU mm':>7} "
              f"{'MFU ds':>7} {'e2e@40':>7} {'e2e@50':>7} {'e2e 4st':>7} {'peak GiB':>8} {'setup s':>7}")
        for r in speed:
            print(f"{r['model'][:30]:<30} {r['size']:>9} {r['path']:<12} {_f(r['step_s'], '.3f'):>8} "
                  f"{_f(r.get('tflops'), '.0f'):>8} {_f(r.get('mfu_matmul'), '.1%'):>7} "
                  f"{_f(r.get('mfu_datasheet'), '.1%'):>7} {_f(r.get('e2e_40_s'), '.1f'):>7} "
                  f"{_f(r.get('e2e_50_s'), '.1f'):>7} {_f(r.get('e2e_4_s'), '.1f'):>7} "
                  f"{_f(r.get('peak_gib'), '.1f'):>8} {_f(r.get('setup_s'), '.1f'):>7}")
        stock = {r["case"].split("/")[0]: r for r in speed if r["path"] == "stock"}
        for r in speed:
            base = stock.get(r["case"].split("/")[0])
            if base and r["path"] != "stock":
                print(f"  {r['case']}: {base['step_s'] / r['step_s']:.2f}x stock per step")
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    print("results: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    for r in rows:
        if r["status"] in ("fail", "error", "skipped"):
            detail = r.get("error") or r.get("reason") or {k: v for k, v in r.items()
                                                            if k not in ("stage", "case", "status", "t_s")}
            print(f"  {r['status'].upper():<7} {r['stage']}/{r['case']}: {str(detail)[:300]}")
    print("=" * 110, flush=True)


def markdown(rows: list[dict[str, Any]]) -> str:
    """The speed rows of results files as the Markdown table docs/wan-engine.md shows."""
    out = ["| model | size | path | s/step | TFLOP/s | MFU (matmul) | MFU (datasheet) | e2e 40 steps s | "
           "e2e 50 steps s | peak GiB | set-up s |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["stage"] != "speed" or r["status"] != "ok" or "step_s" not in r:
            continue
        e40 = _f(r.get("e2e_40_s"), ".1f") if "e2e_4_s" not in r else f"{r['e2e_4_s']:.1f} (4 steps)"
        cells = [r["model"], r["size"], r["path"], f"{r['step_s']:.3f}", _f(r.get("tflops"), ".0f"),
                 _f(r.get("mfu_matmul"), ".1%"), _f(r.get("mfu_datasheet"), ".1%"), e40,
                 _f(r.get("e2e_50_s"), ".1f"), _f(r.get("peak_gib"), ".1f"), _f(r.get("setup_s"), ".1f")]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


if __name__ == "__main__":
    lines = [json.loads(line) for f in sys.argv[1:] for line in Path(f).read_text().splitlines()
             if line.strip()]
    print(markdown(lines))
