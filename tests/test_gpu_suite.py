"""The GPU suite (benchmarks/gpu/suite.py) runs every stage on the CPU with tiny configs, so a stage that
breaks fails CI long before a GPU is lent; `--plan` prints estimates within run.sh's budget."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("diffusers")

REPO = Path(__file__).resolve().parents[1]
SUITE = REPO / "benchmarks" / "gpu" / "suite.py"
STAGES = ("ceilings", "correctness", "service", "speed")


def run_suite(*args: str, timeout: float) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, str(SUITE), *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=REPO)


@pytest.mark.slow
def test_every_stage_runs_on_the_cpu_with_tiny_configs(tmp_path: Path):
    proc = run_suite("--device", "cpu", "--tiny", "--budget-s", "600", "--out", str(tmp_path), timeout=600)
    lines = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    broken = [r for r in lines if r["status"] in ("error", "fail")]
    assert proc.returncode == 0 and not broken, (broken, proc.stdout[-4000:], proc.stderr[-4000:])
    for stage in STAGES:  # each stage ran to its end and recorded results of its own
        assert any(r["stage"] == stage and r["case"] == "stage" for r in lines), stage
        assert sum(1 for r in lines if r["stage"] == stage and r["status"] == "ok") >= 2, stage
    # CUDA-only modes say why they did not run; nothing else is skipped on the CPU
    skipped = [r for r in lines if r["status"] == "skipped"]
    assert skipped and all(r["reason"] == "needs a CUDA device" for r in skipped), skipped
    speed = {r["case"]: r for r in lines if r["stage"] == "speed" and r["status"] == "ok"}
    for case in ("i2v-14b-480p/stock", "i2v-14b-480p/wanserve", "1.3b-480p/wanserve", "5b-720p/wanserve"):
        assert speed[case]["step_s"] > 0 and speed[case]["e2e_50_s"] > 0, case
    assert speed["i2v-14b-480p/wanserve"]["output_frames"] == 150  # 5 s at 30 fps
    assert proc.stdout.rstrip().splitlines()[-1].startswith("=")  # the table is the last thing printed


def test_a_stage_that_raises_is_recorded_and_fails_the_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture):
    """An exception becomes an "error" line with its traceback, the next stage still runs, the table still
    prints, and the exit status is 1."""
    monkeypatch.syspath_prepend(str(SUITE.parent))
    import correctness
    import suite

    def broken(ctx) -> None:
        raise RuntimeError("the stage broke")

    monkeypatch.setattr(correctness, "run", broken)
    assert suite.main(["--device", "cpu", "--tiny", "--stages", "correctness,ceilings", "--out",
                       str(tmp_path)]) == 1
    lines = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    error = next(r for r in lines if r["status"] == "error")
    assert error["stage"] == "correctness" and "the stage broke" in error["error"] and error["traceback"]
    assert any(r["stage"] == "ceilings" and r["status"] == "ok" for r in lines)
    assert "ERROR   correctness/stage: RuntimeError: the stage broke" in capsys.readouterr().out


def test_cases_beyond_the_budget_are_skipped_saying_why(tmp_path: Path):
    proc = run_suite("--device", "cpu", "--tiny", "--budget-s", "0.001", "--out", str(tmp_path), timeout=300)
    lines = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert proc.returncode == 0, proc.stderr[-2000:]  # nothing ran, so nothing broke
    assert {r["stage"] for r in lines} == set(STAGES)
    assert all(r["status"] == "skipped" and "exceeds the 0 s of budget left" in r["reason"] for r in lines)


def test_the_plan_fits_run_sh_and_names_every_stage():
    """run.sh must end within 480 s on an H200 (a second call then fits the same 15-minute lease)."""
    proc = run_suite("--plan", "--budget-s", "450", timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for stage in STAGES:
        assert f"  {stage} " in proc.stdout
    whole = float(proc.stdout.split("run.sh about ")[1].split()[0])
    assert 0 < whole <= 480, proc.stdout
