"""i2v with an effect `template`: a simple visible effect of its own per template name.

`EFFECTS` maps a (normalised) template name to the function that plans its frames; every other
name gets `DEFAULT_EFFECT`, a pulsing zoom and a hue drift chosen from the name itself. Adding an
effect means writing one function and adding one line to the table.
"""

from __future__ import annotations

import functools
import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from ..base import RenderJob
from .camera import affine, backdrop, warp
from .common import FrameFn, ease, job_rng, times


@dataclass
class EffectInput:
    """What every effect starts from. `rng` has already drawn `phase` (so each effect's own draws
    come after it, whether it uses the phase or not)."""

    job: RenderJob
    name: str  # the template name, stripped and lower-cased
    img: np.ndarray  # the first frame, fitted to the output size
    ts: np.ndarray  # normalised time of each frame
    rng: np.random.Generator
    phase: float

    @property
    def h(self) -> int:
        return self.img.shape[0]

    @property
    def w(self) -> int:
        return self.img.shape[1]

    @property
    def centre(self) -> tuple[float, float]:
        return ((self.w - 1) / 2, (self.h - 1) / 2)

    @functools.cached_property
    def backdrop(self) -> np.ndarray:
        return backdrop(self.img)


Effect = Callable[[EffectInput], FrameFn]


def template_plan(job: RenderJob, img: np.ndarray) -> FrameFn:
    """The frame plan of the job's template over `img`."""
    name = (job.template or "").strip().lower()
    rng = job_rng(job, "template:" + name)
    phase = float(rng.uniform(0, 2 * math.pi))
    fx = EffectInput(job, name, img, times(job.frame_count), rng, phase)
    return EFFECTS.get(name, DEFAULT_EFFECT)(fx)


def flying(fx: EffectInput) -> FrameFn:
    """The subject shrinks, rises and sways over a blurred backdrop."""
    img, ts, h, centre, phase, under = fx.img, fx.ts, fx.h, fx.centre, fx.phase, fx.backdrop
    sway = float(fx.rng.uniform(0.02, 0.05)) * fx.w

    def frame(i: int) -> np.ndarray:
        t = float(ts[i])
        s = 1 - 0.28 * ease(t / 0.25)
        rise = 0.22 * h * ease((t - 0.15) / 0.85)
        settle = ease(t / 0.2)  # motion fades in, so the first frame is the image itself
        bob = 0.035 * h * math.sin(2 * math.pi * 2.0 * t + phase) * settle
        dx = sway * math.sin(2 * math.pi * 1.0 * t + phase) * settle
        tilt = 4.0 * math.sin(2 * math.pi * 1.0 * t + phase) * settle
        dst = (centre[0] + dx, centre[1] - rise + bob)
        return warp(img, affine(s, s, tilt, centre, dst), under)

    return frame


def rotation(fx: EffectInput) -> FrameFn:
    """One full turn (seeded direction), shrinking half-way."""
    img, ts, centre, under = fx.img, fx.ts, fx.centre, fx.backdrop
    turns = 1 if fx.rng.random() < 0.5 else -1

    def frame(i: int) -> np.ndarray:
        t = float(ts[i])
        angle = 360.0 * turns * ease(t)
        s = 1 - 0.35 * math.sin(math.pi * t)
        return warp(img, affine(s, s, angle, centre, centre), under)

    return frame


def squish(fx: EffectInput) -> FrameFn:
    """Two squeezes towards the bottom edge."""
    img, ts, under = fx.img, fx.ts, fx.backdrop
    bottom = (fx.centre[0], float(fx.h - 1))

    def frame(i: int) -> np.ndarray:
        t = float(ts[i])
        q = 0.5 - 0.5 * math.cos(2 * math.pi * 2 * t)  # two squeezes
        return warp(img, affine(1 + 0.25 * q, 1 - 0.4 * q, 0.0, bottom, bottom), under)

    return frame


def inflate(fx: EffectInput) -> FrameFn:
    """A bulge: pixels pushed out from the centre, most near the middle, growing with t."""
    img, ts, h, w, centre = fx.img, fx.ts, fx.h, fx.w, fx.centre
    gy, gx = np.mgrid[0:h, 0:w].astype(np.float32)
    nx, ny = (gx - centre[0]) / (w / 2), (gy - centre[1]) / (h / 2)
    r2 = nx * nx + ny * ny
    fall = np.exp(-r2 * 1.5).astype(np.float32)
    disp = np.dstack([(gx - centre[0]) * fall, (gy - centre[1]) * fall]).astype(np.float32)
    grid = np.dstack([gx, gy])
    del gx, gy, nx, ny, r2, fall

    def frame(i: int) -> np.ndarray:
        t = float(ts[i])
        k = 0.45 * ease(t / 0.7) + 0.04 * math.sin(2 * math.pi * 3 * t)
        maps = cv2.scaleAdd(disp, -k, grid)
        s = 1 + 0.12 * ease(t)
        out = cv2.remap(img, maps, None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT101)
        return warp(out, affine(s, 1 + 0.06 * ease(t), 0.0, centre, centre), None)

    return frame


def dissolve(fx: EffectInput) -> FrameFn:
    """The image breaks up into a blurred, darkened copy of itself, grain by grain."""
    return _noise_dissolve(fx, melt=False)


def melt(fx: EffectInput) -> FrameFn:
    """Columns sag downwards by seeded amounts, then partly dissolve."""
    return _noise_dissolve(fx, melt=True)


def _noise_dissolve(fx: EffectInput, melt: bool) -> FrameFn:
    img, ts, h, w = fx.img, fx.ts, fx.h, fx.w
    noise_rng = job_rng(fx.job, "dissolve-noise:" + fx.name)
    coarse = noise_rng.random((max(2, h // 24), max(2, w // 24))).astype(np.float32)
    coarse = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
    grain = noise_rng.random((max(1, h // 2), max(1, w // 2))).astype(np.float32)
    grain = cv2.resize(grain, (w, h), interpolation=cv2.INTER_NEAREST)
    noise = cv2.normalize(0.6 * coarse + 0.4 * grain, None, 0, 254, cv2.NORM_MINMAX).astype(np.uint8)
    blurred = cv2.convertScaleAbs(cv2.GaussianBlur(img, (0, 0), max(2.0, h / 40)), alpha=0.65)
    if melt:
        drip = noise_rng.random(max(2, w // 16)).astype(np.float32)
        drip = cv2.resize(drip[None, :], (w, 1), interpolation=cv2.INTER_CUBIC)[0]
        drip = (0.35 + 0.65 * np.clip(drip, 0, 1)) * (0.6 * h)
        gy, gx = np.mgrid[0:h, 0:w].astype(np.float32)
        ramp = (gy / max(1, h - 1)).astype(np.float32)  # lower rows sag more
        grid_x, grid_y = gx, gy
        sag = (ramp * 0.5 + 0.5) * drip[None, :]
        del gy, gx, ramp

    def frame(i: int) -> np.ndarray:
        t = float(ts[i])
        if melt:
            k = ease(t) ** 1.5
            map_y = cv2.scaleAdd(sag, -k, grid_y)
            out = blurred.copy()
            cv2.remap(img, grid_x, map_y, cv2.INTER_LINEAR, dst=out, borderMode=cv2.BORDER_TRANSPARENT)
            level = round(150 * ease((t - 0.5) / 0.5))  # partly dissolves as it melts
        else:
            out = img.copy()
            level = round(255 * ease((t - 0.1) / 0.8))
        if level > 0:
            mask = cv2.compare(noise, level, cv2.CMP_LT)
            cv2.copyTo(blurred, mask, out)
        return out

    return frame


def _name_rng(name: str) -> np.random.Generator:
    """A generator seeded from the template name alone (the same effect for every job)."""
    digest = hashlib.sha256(name.strip().lower().encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def pulse_and_hue(fx: EffectInput) -> FrameFn:
    """Any other template: a pulsing zoom and a hue drift, both chosen from the template name."""
    img, ts, centre = fx.img, fx.ts, fx.centre
    hr = _name_rng(fx.name)
    pulses = int(hr.integers(1, 4))
    depth = float(hr.uniform(0.05, 0.14))
    hue_total = float(hr.uniform(40, 200)) * (1 if hr.random() < 0.5 else -1)  # in 0..255 hue units
    tilt = float(hr.uniform(-4, 4))

    def frame(i: int) -> np.ndarray:
        t = float(ts[i])
        p = 0.5 - 0.5 * math.cos(2 * math.pi * pulses * t)
        s = 1 + depth * p
        out = warp(img, affine(s, s, tilt * p, centre, centre), None)
        shift = round(hue_total * ease(t)) % 256
        if shift:
            hsv = cv2.cvtColor(out, cv2.COLOR_RGB2HSV_FULL)
            hsv[..., 0] += np.uint8(shift)  # wraps around mod 256, like hue
            out = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB_FULL)
        return out

    return frame


EFFECTS: dict[str, Effect] = {
    "flying": flying,
    "rotation": rotation,
    "squish": squish,
    "inflate": inflate,
    "dissolve": dissolve,
    "melt": melt,
}
DEFAULT_EFFECT: Effect = pulse_and_hue
