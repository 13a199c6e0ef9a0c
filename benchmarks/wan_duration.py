"""Wall time per output second of the `wan` engine at 5, 10 and 15 s (issue 8): is the cost linear?

    python benchmarks/wan_duration.py [--shots 1] [--steps 4] [--size 64x48] [--repeat 2]

Builds the tiny random-weight checkpoints of tests/wan_fixtures.py (a Wan2.1-style T2V checkpoint and
a Wan2.2-style two-expert I2V checkpoint) in a temporary directory, configures the T2V one with
`continue_with` the I2V one, both at their defaults (16 fps, max_native_frames 81), and renders a t2v
task of each duration with the same number of shot markers through `WanEngine.render` (fit, segment
chaining, frame-rate conversion to 30 fps included). A shot longer than 81 native frames (about 5 s)
is generated as chained segments, so 15 s should cost about 3x 5 s: the target is a 15 s / 5 s wall
time ratio of at most 3.3. Prints one row per duration (best of --repeat) and the ratio.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))


def prompt_for(shots: int, seconds: int) -> str:
    if shots <= 1:
        return "A red car drives along a mountain road in the rain, cinematic lighting."
    step = seconds / shots
    parts = [f"Shot {k + 1} [{k * step:g}-{(k + 1) * step:g} s]: the car, view {k + 1}."
             for k in range(shots)]
    return "A red car on a mountain road in the rain. " + " ".join(parts)


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        return next((line.split(":", 1)[1].strip() for line in out.splitlines() if "Model name" in line), "?")
    except OSError:
        return "?"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shots", type=int, default=1)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--size", default="64x48")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--durations", default="5,10,15")
    parser.add_argument("--kind", choices=("i2v", "t2v"), default="i2v",
                        help="i2v: every generation on the I2V checkpoint; t2v: the first of each shot on "
                             "the T2V one, its later segments on the I2V one (continue_with)")
    args = parser.parse_args()

    import torch
    from PIL import Image
    from tests import wan_fixtures

    from wanserve.engines import EngineSet, RenderJob
    from wanserve.generation.shots import parse_shots, shot_context

    width, height = (int(v) for v in args.size.split("x"))
    print(f"# nproc {os.cpu_count()}, {cpu_model()}, torch {torch.__version__} ({torch.get_num_threads()} "
          f"threads); tiny checkpoints, {args.kind}, {args.steps} steps, {width}x{height}, "
          f"{args.shots} shot(s)")
    with tempfile.TemporaryDirectory() as tmp:
        t2v = wan_fixtures.build_t2v(Path(tmp) / "t2v")
        i2v = wan_fixtures.build_i2v_two_experts(Path(tmp) / "i2v")
        engines = EngineSet({
            "wanx2.1-t2v-turbo": {"engine": "wan", "checkpoint": str(t2v), "num_inference_steps": args.steps,
                                  "continue_with": "wan2.2-i2v-plus"},
            "wan2.2-i2v-plus": {"engine": "wan", "checkpoint": str(i2v), "num_inference_steps": args.steps},
        })
        model = "wanx2.1-t2v-turbo" if args.kind == "t2v" else "wan2.2-i2v-plus"
        engine = engines.for_model(model)
        image = Image.fromarray(((torch.arange(width * height * 3) * 7919) % 251).numpy()
                                .astype("uint8").reshape(height, width, 3))

        def make_job(seconds: int) -> RenderJob:
            prompt = prompt_for(args.shots, seconds)
            return RenderJob(kind=args.kind, model=model, width=width, height=height,
                             frame_count=30 * seconds, prompt=prompt, seed=1,
                             shots=tuple(parse_shots(prompt, seconds)), context=shot_context(prompt),
                             first_frame=image if args.kind == "i2v" else None)

        def render(seconds: int) -> tuple[float, dict]:
            job = make_job(seconds)
            started = time.perf_counter()
            n = sum(1 for _ in engine.render(job, lambda d, t: None))
            wall = time.perf_counter() - started
            assert n == job.frame_count, (n, job.frame_count)
            return wall, dict(engine.last_timings)

        render(1)  # warm-up
        rows = {}
        print("| seconds | output frames | generations | native frames / generation | wall s | s per output "
              "second | denoise s | decode s | interpolate s |")
        print("|---|---|---|---|---|---|---|---|---|")
        for seconds in (int(s) for s in args.durations.split(",")):
            wall, timings = min((render(seconds) for _ in range(args.repeat)), key=lambda r: r[0])
            segments = engine.segments(make_job(seconds))
            natives = ",".join(str(s.native_frames) for s in segments)
            rows[seconds] = wall
            print(f"| {seconds} | {30 * seconds} | {len(segments)} | {natives} | {wall:.2f} | "
                  f"{wall / seconds:.3f} | {timings['denoise_s']:.2f} | {timings['decode_s']:.2f} | "
                  f"{timings['interpolate_s']:.2f} |")
        if 5 in rows and 15 in rows:
            ratio = rows[15] / rows[5]
            verdict = "met" if ratio <= 3.3 else "MISSED"
            print(f"\n15 s / 5 s wall time ratio: {ratio:.2f} (target <= 3.3: {verdict})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
