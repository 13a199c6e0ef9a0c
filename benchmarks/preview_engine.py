"""Benchmark: PreviewEngine + encode_mp4, wall time against video length.

    python benchmarks/preview_engine.py [--out DIR] [--keep]

Builds synthetic input images, renders and encodes each case the way the worker does (frames
streamed straight from the engine into the encoder) and prints a table. A realtime factor above 1
means the video is produced faster than it plays. The target machine has 2 CPU cores.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from wanserve.engines.base import RenderJob
from wanserve.engines.preview import PreviewEngine
from wanserve.generation.shots import parse_shots
from wanserve.media.video import encode_mp4

FPS = 30


def synthetic_image(width: int = 1920, height: int = 1080, *, seed: int = 0, shift: int = 0) -> Image.Image:
    """A photo-like test picture: gradient sky, textured ground, shapes, fine noise."""
    rng = np.random.default_rng(seed)
    y = np.mgrid[0:height, 0:width][0].astype(np.float32)
    sky = np.dstack([60 + 80 * y / height, 110 + 60 * y / height, 200 - 40 * y / height])
    texture = cv2.resize(rng.random((height // 8, width // 8)).astype(np.float32), (width, height),
                         interpolation=cv2.INTER_CUBIC)
    ground = np.dstack([70 + 60 * texture, 120 + 70 * texture, 50 + 30 * texture])
    horizon = (y > height * 0.55)[..., None]
    img = np.where(horizon, ground, sky)
    img += rng.normal(0, 6, img.shape).astype(np.float32)  # sensor-like grain: real work for x264
    pil = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    d = ImageDraw.Draw(pil)
    for k in range(8):
        cx = int(width * (0.08 + 0.11 * k)) + shift
        cy = int(height * (0.62 + 0.05 * (k % 3)))
        r = int(height * (0.04 + 0.01 * (k % 4)))
        d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=(200 - 15 * k, 60 + 20 * k, 40 + 25 * k))
    d.rectangle((width * 0.4 + shift, height * 0.25, width * 0.55 + shift, height * 0.5), fill=(240, 220, 90))
    d.polygon([(width * 0.7, height * 0.55), (width * 0.8, height * 0.2), (width * 0.9, height * 0.55)],
              fill=(90, 90, 110))
    return pil


def cases() -> list[tuple[str, RenderJob]]:
    first = synthetic_image()
    last = synthetic_image(seed=0, shift=140)
    prompt = (
        "Shot 1 [0-2 s]: A lighthouse on a cliff at dusk, waves crashing below. "
        "Shot 2 [2-4 s]: Close-up of the lamp turning on, warm light sweeping the fog. "
        "Shot 3 [4-5 s]: 镜头拉远，海面上的渔船缓缓驶回港口。"
    )
    return [
        ("i2v 5s 720P (1280x720)", RenderJob("i2v", "bench", 1280, 720, 5 * FPS, seed=7, first_frame=first)),
        ("i2v 10s 1080P (1920x1072)", RenderJob("i2v", "bench", 1920, 1072, 10 * FPS, seed=7,
                                                first_frame=first)),
        ("kf2v 5s 720P (1280x720)", RenderJob("kf2v", "bench", 1280, 720, 5 * FPS, seed=7, first_frame=first,
                                              last_frame=last)),
        ("t2v 5s 720P (1280x720)", RenderJob("t2v", "bench", 1280, 720, 5 * FPS, seed=7, prompt=prompt,
                                             shot_type="multi",
                                             shots=tuple(parse_shots(prompt, 5, "multi")))),
        ("i2v template 5s 720P", RenderJob("i2v", "bench", 1280, 720, 5 * FPS, seed=7, template="inflate",
                                           first_frame=first)),
    ]


def run(out_dir: Path, keep: bool, watermark: bool) -> bool:
    engine = PreviewEngine()
    print(f"CPU cores: {os.cpu_count()}   watermark: {watermark}")
    header = f"{'case':<28} {'frames':>6} {'video s':>8} {'wall s':>7} {'realtime x':>10}"
    print(header)
    print("-" * len(header))
    all_ok = True
    for name, job in cases():
        path = out_dir / (name.split(" (")[0].replace(" ", "_") + ".mp4")
        t0 = time.perf_counter()
        encode_mp4(
            engine.render(job, lambda done, total: None), path, width=job.width, height=job.height,
            fps=job.fps, frame_count=job.frame_count, watermark=watermark,
        )
        wall = time.perf_counter() - t0
        video = job.frame_count / job.fps
        factor = video / wall
        all_ok &= factor > 1
        print(f"{name:<28} {job.frame_count:>6} {video:>8.1f} {wall:>7.2f} {factor:>10.2f}", flush=True)
        if not keep:
            path.unlink()
    if keep:
        print(f"videos kept in {out_dir}")
    return all_ok


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, help="directory for the videos (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the encoded videos")
    ap.add_argument("--no-watermark", action="store_true", help="encode without the AI生成 label")
    args = ap.parse_args()
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        ok = run(args.out, args.keep, not args.no_watermark)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            ok = run(Path(tmp), False, not args.no_watermark)
    if not ok:
        print("some case was slower than real time")
        sys.exit(1)


if __name__ == "__main__":
    main()
