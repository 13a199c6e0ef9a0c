"""Image moves: the i2v Ken Burns camera, the first-to-last-frame flow morph, and the affine/warp/
backdrop helpers the effect templates use too."""

from __future__ import annotations

import math

import cv2
import numpy as np

from ...media.frames import FlowMorph
from ..base import RenderJob
from .common import FrameFn, ease, job_rng, times


def backdrop(img: np.ndarray, dim: float = 0.55) -> np.ndarray:
    """A heavily blurred, darkened copy of `img`, for areas a moving image uncovers."""
    h, w = img.shape[:2]
    sw, sh = max(4, w // 16), max(4, h // 16)
    small = cv2.resize(img, (sw, sh), interpolation=cv2.INTER_AREA)
    small = cv2.GaussianBlur(small, (0, 0), 1.5)
    small = cv2.convertScaleAbs(small, alpha=dim)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


def affine(scale_x: float, scale_y: float, angle_deg: float, src_centre, dst_centre) -> np.ndarray:
    """2x3 matrix mapping source pixels to destination: scale/rotate about src_centre -> dst_centre."""
    a = math.radians(angle_deg)
    c, s = math.cos(a), math.sin(a)
    m = np.array([[c * scale_x, -s * scale_y], [s * scale_x, c * scale_y]], dtype=np.float64)
    sx, sy = src_centre
    dx, dy = dst_centre
    t = np.array([dx, dy]) - m @ np.array([sx, sy])
    return np.hstack([m, t[:, None]]).astype(np.float32)


def warp(img: np.ndarray, m: np.ndarray, under: np.ndarray | None) -> np.ndarray:
    """`img` moved by the affine `m`; uncovered areas show `under` (a backdrop), or a reflection of
    the image when `under` is None."""
    h, w = img.shape[:2]
    if under is None:
        return cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT101)
    out = under.copy()
    cv2.warpAffine(img, m, (w, h), dst=out, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_TRANSPARENT)
    return out


def ken_burns(job: RenderJob, img: np.ndarray) -> FrameFn:
    """i2v: slow zoom in (towards a seeded point) or pull back (onto a blurred backdrop), eased."""
    rng = job_rng(job, "ken-burns")
    h, w = img.shape[:2]
    centre = ((w - 1) / 2, (h - 1) / 2)
    zoom_in = bool(rng.random() < 0.7)
    amount = float(rng.uniform(0.08, 0.18)) if zoom_in else float(rng.uniform(0.06, 0.12))
    angle = float(rng.uniform(0, 2 * math.pi))
    reach = float(rng.uniform(0.4, 1.0))  # how far towards the edge the pan goes, 0..1
    ts = times(job.frame_count)
    if zoom_in:
        end_scale = 1 + amount
        # The visible window stays inside the image: offset <= (1 - 1/s) * size / 2 at every step.
        ox = math.cos(angle) * reach * (w - w / end_scale) / 2
        oy = math.sin(angle) * reach * (h - h / end_scale) / 2
        under = None
    else:
        end_scale = 1 / (1 + amount)
        ox = math.cos(angle) * reach * (w - w * end_scale) / 4
        oy = math.sin(angle) * reach * (h - h * end_scale) / 4
        under = backdrop(img)

    def frame(i: int) -> np.ndarray:
        e = ease(float(ts[i]))
        if e == 0.0:
            return img.copy()
        s = 1 + (end_scale - 1) * e
        src_c = (centre[0] + ox * e, centre[1] + oy * e)
        return warp(img, affine(s, s, 0.0, src_c, centre), under)

    return frame


def flow_morph(job: RenderJob, first: np.ndarray, last: np.ndarray) -> FrameFn:
    """kf2v (or i2v with a last frame): an optical-flow morph from the first image to the last."""
    morph = FlowMorph(first, last)
    ts = times(job.frame_count)
    hold = 0.06  # show each key frame unchanged for the first / last 6% of the video; ease in between

    def frame(i: int) -> np.ndarray:
        t = float(ts[i])
        return morph.frame(ease((t - hold) / (1 - 2 * hold)) if 0 < t < 1 else t)

    return frame
