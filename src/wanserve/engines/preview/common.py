"""What every preview frame plan shares: the frame function type, seeded randomness, the timeline."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable

import numpy as np

from ..base import RenderJob

FrameFn = Callable[[int], np.ndarray]  # frame index -> uint8 RGB frame


def job_rng(job: RenderJob, salt: str) -> np.random.Generator:
    """A generator seeded from the job seed and a purpose, so each use gets its own stream."""
    salt_int = int.from_bytes(hashlib.sha256(salt.encode()).digest()[:8], "little")
    return np.random.default_rng([int(job.seed) & 0xFFFFFFFFFFFFFFFF, salt_int])


def times(n: int) -> np.ndarray:
    """Normalised time of each frame: 0 for the first, 1 for the last."""
    if n == 1:
        return np.zeros(1)
    return np.arange(n) / (n - 1)


def ease(t: float) -> float:
    """Ease-in-out (cosine) on [0, 1]."""
    t = min(1.0, max(0.0, t))
    return 0.5 - 0.5 * math.cos(math.pi * t)
