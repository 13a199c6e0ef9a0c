"""Sizes, frame counts and frame-rate conversion: from the contract (size, seconds at 30 fps) to
what a Wan checkpoint generates (its grid, its native fps), and back."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import numpy as np

from ...media.frames import FlowMorph


def generation_size(width: int, height: int, multiple: int) -> tuple[int, int]:
    """The size to generate at: each side of the contract size rounded to the nearest multiple of
    `multiple` (the VAE's spatial scale x the transformer's patch size), which keeps the aspect ratio
    within one grid step. The frames are then fitted to the exact contract size."""
    return (max(multiple, math.floor(width / multiple + 0.5) * multiple),
            max(multiple, math.floor(height / multiple + 0.5) * multiple))


def native_frame_count(seconds: float, native_fps: float, temporal_scale: int = 4) -> int:
    """duration x native fps, rounded to the nearest count the Wan VAE accepts (temporal_scale*k + 1),
    at least temporal_scale + 1 frames."""
    k = math.floor((seconds * native_fps - 1) / temporal_scale + 0.5)
    return max(1, k) * temporal_scale + 1


def retime_positions(native_count: int, out_count: int) -> np.ndarray:
    """Where each output frame lies on the native timeline (0 .. native_count - 1). The first and last
    frames line up (so a last-frame task ends exactly on its last frame); the clip is stretched by at
    most the rounding of the native count to 4k+1 (about 1% at 16 fps)."""
    if out_count <= 1 or native_count <= 1:
        return np.zeros(max(out_count, 0))
    return np.arange(out_count) * (native_count - 1) / (out_count - 1)


def convert_frame_rate(frames: list[np.ndarray], out_count: int,
                       tick: Callable[[], None] | None = None) -> Iterator[np.ndarray]:
    """Exactly `out_count` frames from `frames`, each output frame at its place on the native
    timeline: a native frame where one lies exactly there, else the optical-flow interpolation
    (FlowMorph) between its two neighbours. `tick()` is called before each interpolated pair."""
    return frames_at(frames, retime_positions(len(frames), out_count), tick)


def frames_at(frames: list[np.ndarray], positions: np.ndarray,
              tick: Callable[[], None] | None = None) -> Iterator[np.ndarray]:
    """One frame per position (rising, 0 .. len(frames) - 1) on the native timeline of `frames`:
    the native frame where one lies there, else FlowMorph between its two neighbours."""
    last = len(frames) - 1
    morph, morph_at = None, -1
    for p in positions:
        j = min(math.floor(p + 1e-6), last)
        t = float(p - j)
        if t < 1e-4 or j == last:
            yield frames[j]
            continue
        if t > 1 - 1e-4:
            yield frames[j + 1]
            continue
        if morph_at != j:
            if tick is not None:
                tick()
            morph, morph_at = FlowMorph(frames[j], frames[j + 1]), j
        yield morph.frame(t)
