"""t2v: storyboard cards, one per shot of `job.shots` (one shot of the whole prompt when the plan is
empty), each a slowly moving colour gradient under the shot's text, cross-faded at the cuts. A card is
made as the frames reach its shot, so memory does not grow with the number of shots."""

from __future__ import annotations

import math

import cv2
import numpy as np

from ..base import RenderJob, Shot
from .common import FrameFn, job_rng
from .text import Layer, card_text_layer

CROSSFADE_SECONDS = 0.3


class Gradient:
    """A slowly drifting two-colour gradient with a soft glow, computed at 1/16 size and upscaled."""

    def __init__(self, rng: np.random.Generator, width: int, height: int) -> None:
        self.width, self.height = width, height
        gw, gh = max(4, math.ceil(width / 16)), max(4, math.ceil(height / 16))
        gy, gx = np.mgrid[0:gh, 0:gw].astype(np.float32)
        self.u = gx / (gw - 1)
        self.v = gy / (gh - 1) * (gh / gw)
        hue = float(rng.uniform(0, 360))
        hue2 = (hue + float(rng.uniform(40, 140))) % 360
        self.c0 = hsv_to_rgb(hue, float(rng.uniform(0.55, 0.85)), float(rng.uniform(0.30, 0.45)))
        self.c1 = hsv_to_rgb(hue2, float(rng.uniform(0.45, 0.80)), float(rng.uniform(0.50, 0.70)))
        self.angle = float(rng.uniform(0, 2 * math.pi))
        self.spin = float(rng.uniform(0.05, 0.12)) * (1 if rng.random() < 0.5 else -1)  # rad / s
        self.glow = (float(rng.uniform(0.2, 0.8)), float(rng.uniform(0.2, 0.6)))
        self.drift = (float(rng.uniform(-0.06, 0.06)), float(rng.uniform(-0.04, 0.04)))  # per second

    def at(self, seconds: float) -> np.ndarray:
        a = self.angle + self.spin * seconds
        proj = self.u * math.cos(a) + self.v * math.sin(a)
        mix = 0.5 + 0.5 * np.sin(proj * 2.4 + seconds * 0.35)
        gx = self.glow[0] + self.drift[0] * seconds
        gy = self.glow[1] + self.drift[1] * seconds
        glow = np.exp(-((self.u - gx) ** 2 + (self.v - gy) ** 2) * 6.0) * 0.25
        mix = mix[..., None]
        small = self.c0 * (1 - mix) + self.c1 * mix + glow[..., None] * 255
        small = np.clip(small, 0, 255).astype(np.uint8)
        return cv2.resize(small, (self.width, self.height), interpolation=cv2.INTER_LINEAR)


def hsv_to_rgb(h: float, s: float, v: float) -> np.ndarray:
    c = v * s
    x = c * (1 - abs((h / 60) % 2 - 1))
    m = v - c
    r, g, b = [(c, x, 0), (x, c, 0), (0, c, x), (0, x, c), (x, 0, c), (c, 0, x)][int(h // 60) % 6]
    return np.array([(r + m) * 255, (g + m) * 255, (b + m) * 255], dtype=np.float32)


def storyboard(job: RenderJob) -> FrameFn:
    n, fps = job.frame_count, job.fps
    duration = n / fps
    shots = job.shots or (Shot(1, 0.0, float(duration), job.prompt or "(no prompt)"),)
    w, h = job.width, job.height
    # A shot's card (its gradient and full-frame text layer) is made when the frames reach it and
    # dropped once they are past it: memory holds the cards of two or three neighbouring shots, however
    # many the prompt has (each card depends on its shot alone, so the frames are the same).
    cards: dict[int, tuple[Gradient, Layer]] = {}

    def card(k: int) -> tuple[Gradient, Layer]:
        made = cards.get(k)
        if made is None:
            for old in [j for j in cards if abs(j - k) > 1]:
                del cards[old]
            made = cards[k] = (Gradient(job_rng(job, f"card-{k}"), w, h), card_text_layer(shots[k], w, h))
        return made
    # Frame ranges per card: frame i (time i/fps) belongs to the last shot starting at or before it.
    starts = [s.start for s in shots]
    fade = CROSSFADE_SECONDS

    def card_frame(k: int, seconds: float) -> np.ndarray:
        gradient, layer = card(k)
        return layer.over(gradient.at(seconds))

    def frame(i: int) -> np.ndarray:
        sec = i / fps
        k = max(0, sum(1 for s in starts if s <= sec + 1e-9) - 1)
        # Cross-fade around each cut (centred on it) between the neighbouring cards.
        for j in range(1, len(shots)):
            cut = starts[j]
            if cut - fade / 2 <= sec < cut + fade / 2 and 0 < cut < duration:
                mix = (sec - (cut - fade / 2)) / fade
                return cv2.addWeighted(card_frame(j - 1, sec), 1 - mix, card_frame(j, sec), mix, 0)
        return card_frame(k, sec)

    return frame
