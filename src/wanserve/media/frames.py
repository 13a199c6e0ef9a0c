"""Frames shared by every engine: fitting an image to the output size, and optical-flow morphing.

`FlowMorph` is the motion-compensated in-betweening used by the preview engine's first-to-last-frame
morph and by the wan engine's conversion from the model's native frame rate to 30 fps.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import cv2
import numpy as np
from PIL import Image


def fit_image(image: Image.Image | np.ndarray, width: int, height: int) -> np.ndarray:
    """Scale `image` to cover width x height and centre-crop; return uint8 RGB (height, width, 3)."""
    if isinstance(image, Image.Image):
        if image.mode != "RGB":
            if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
                rgba = image.convert("RGBA")
                canvas = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
                image = Image.alpha_composite(canvas, rgba).convert("RGB")
            else:
                image = image.convert("RGB")
        arr = np.asarray(image, dtype=np.uint8)
    else:
        arr = np.asarray(image, dtype=np.uint8)
        if arr.ndim == 2:
            arr = cv2.cvtColor(arr, cv2.COLOR_GRAY2RGB)
    ih, iw = arr.shape[:2]
    if (iw, ih) == (width, height):
        return np.ascontiguousarray(arr).copy()
    scale = max(width / iw, height / ih)
    sw = max(width, round(iw * scale))
    sh = max(height, round(ih * scale))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    resized = cv2.resize(arr, (sw, sh), interpolation=interp)
    x0 = (sw - width) // 2
    y0 = (sh - height) // 2
    return np.ascontiguousarray(resized[y0 : y0 + height, x0 : x0 + width])





def _dis() -> cv2.DISOpticalFlow:
    return cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)


def _fit_within(w: int, h: int, longest: int) -> tuple[int, int]:
    s = min(1.0, longest / max(w, h))
    return max(8, round(w * s)), max(8, round(h * s))


def _fill(num: np.ndarray, den: np.ndarray, cover: np.ndarray) -> np.ndarray:
    """Push-pull hole filling: num/den where `cover` is high, smoothly filled from coarser levels elsewhere.

    num: (h, w, C) weighted sums; den: (h, w) their weights; cover: (h, w) 0..1 how well covered.
    """
    levels = [(num, den, cover)]
    while min(levels[-1][1].shape) > 2:
        n, d, c = levels[-1]
        size = ((d.shape[1] + 1) // 2, (d.shape[0] + 1) // 2)
        levels.append(tuple(cv2.resize(x, size, interpolation=cv2.INTER_AREA) for x in (n, d, c)))
    value = None
    for n, d, c in reversed(levels):
        safe = np.maximum(d, 1e-12)[..., None]
        own = n / safe
        if value is None:
            value = own
            continue
        up = cv2.resize(value, (d.shape[1], d.shape[0]), interpolation=cv2.INTER_LINEAR)
        if up.ndim == 2:
            up = up[..., None]
        a = np.clip(c * 2.0, 0.0, 1.0)[..., None]
        value = a * own + (1 - a) * up
    return value.astype(np.float32)


class FlowMorph:
    """Optical-flow morph between two same-size uint8 RGB images.

    Dense flow is computed once both ways (DIS, on downscaled grey copies), checked for forward /
    backward consistency, and cleaned. `frame(t)` then moves the pixels of `a` forward by t * flow
    and those of `b` backward by (1 - t) * flow_back (forward splatting at low resolution, where
    faster-moving pixels win, holes filled push-pull; the result is upscaled and applied with
    cv2.remap) and blends the two, weighted by t and by which image actually covers each pixel.
    frame(0) is exactly `a` and frame(1) exactly `b`. Use it for morphs and frame interpolation.
    """

    def __init__(self, a: np.ndarray, b: np.ndarray, *, flow_size: int = 512, splat_size: int = 320) -> None:
        if a.shape != b.shape or a.ndim != 3 or a.shape[2] != 3:
            raise ValueError(f"FlowMorph needs two RGB images of the same shape, got {a.shape} and {b.shape}")
        self.a = np.ascontiguousarray(a, dtype=np.uint8)
        self.b = np.ascontiguousarray(b, dtype=np.uint8)
        h, w = a.shape[:2]
        self.h, self.w = h, w

        fw, fh = _fit_within(w, h, flow_size)
        ga = cv2.cvtColor(cv2.resize(self.a, (fw, fh), interpolation=cv2.INTER_AREA), cv2.COLOR_RGB2GRAY)
        gb = cv2.cvtColor(cv2.resize(self.b, (fw, fh), interpolation=cv2.INTER_AREA), cv2.COLOR_RGB2GRAY)
        dis = _dis()
        f_ab = dis.calc(ga, gb, None)
        f_ba = dis.calc(gb, ga, None)
        f_ab, conf_ab = self._clean(f_ab, f_ba)
        f_ba, conf_ba = self._clean(f_ba, f_ab)
        # Images that do not correspond (low consistency everywhere) degrade towards a crossfade.
        trust = float(np.clip((0.5 * (conf_ab.mean() + conf_ba.mean()) - 0.15) / 0.35, 0.0, 1.0))
        f_ab *= trust
        f_ba *= trust

        sw, sh = _fit_within(w, h, splat_size)
        sw, sh = min(sw, fw), min(sh, fh)
        self.sw, self.sh = sw, sh
        ratio = np.array([sw / fw, sh / fh], dtype=np.float32)
        self._sides = [self._side(cv2.resize(f, (sw, sh), interpolation=cv2.INTER_AREA) * ratio)
                       for f in (f_ab, f_ba)]
        gy, gx = np.mgrid[0:sh, 0:sw].astype(np.float32)
        self._gx, self._gy = gx.ravel(), gy.ravel()
        # Low-res displacement -> full-res pixels.
        self._up = np.array([w / sw, h / sh], dtype=np.float32)
        fy, fx = np.mgrid[0:h, 0:w].astype(np.float32)
        self._grid = np.dstack([fx, fy])

    @staticmethod
    def _clean(f: np.ndarray, back: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Replace flow that fails the forward/backward check with flow filled in from its neighbours."""
        h, w = f.shape[:2]
        gy, gx = np.mgrid[0:h, 0:w].astype(np.float32)
        back_at = cv2.remap(back, gx + f[..., 0], gy + f[..., 1], cv2.INTER_LINEAR,
                            borderMode=cv2.BORDER_REPLICATE)
        err = np.linalg.norm(f + back_at, axis=2)
        tol = 1.0 + 0.1 * np.linalg.norm(f, axis=2)
        conf = (1.0 / (1.0 + (err / tol) ** 2)).astype(np.float32)
        filled = _fill(f * conf[..., None], conf, conf)
        return (conf[..., None] * f + (1 - conf[..., None]) * filled).astype(np.float32), conf

    def _side(self, flow: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Per-pixel splatting terms for one image: flow, importance-weighted flow, importance."""
        mag = np.linalg.norm(flow, axis=2)
        imp = np.exp(np.minimum(mag / 1.5, 30.0)).astype(np.float32).ravel()
        fx, fy = flow[..., 0].ravel().copy(), flow[..., 1].ravel().copy()
        return fx, fy, imp, np.stack([fx * imp, fy * imp])

    def _displacement(self, side: int, s: float) -> tuple[np.ndarray, np.ndarray]:
        """Where each pixel at time s came from, as a low-res displacement (sh, sw, 2), and coverage."""
        fx, fy, imp, weighted = self._sides[side]
        sw, sh = self.sw, self.sh
        ix = np.rint(self._gx + s * fx).astype(np.int32)
        iy = np.rint(self._gy + s * fy).astype(np.int32)
        ok = (ix >= 0) & (ix < sw) & (iy >= 0) & (iy < sh)
        idx = (iy * sw + ix)[ok]
        n = sw * sh
        den = np.bincount(idx, weights=imp[ok], minlength=n).astype(np.float32).reshape(sh, sw)
        numx = np.bincount(idx, weights=weighted[0][ok], minlength=n).astype(np.float32).reshape(sh, sw)
        numy = np.bincount(idx, weights=weighted[1][ok], minlength=n).astype(np.float32).reshape(sh, sw)
        cover = np.minimum(np.bincount(idx, minlength=n).astype(np.float32).reshape(sh, sw), 1.0)
        disp = _fill(np.dstack([numx, numy]) * s, den, cover)
        cover = cv2.GaussianBlur(cover, (5, 5), 0)
        return disp, cover

    def _warped(self, img: np.ndarray, disp: np.ndarray) -> np.ndarray:
        full = cv2.resize(disp * self._up, (self.w, self.h), interpolation=cv2.INTER_LINEAR)
        # Fixed-point maps: converting once and remapping is cheaper than remapping with float maps.
        map1, map2 = cv2.convertMaps(cv2.subtract(self._grid, full), None, cv2.CV_16SC2)
        return cv2.remap(img, map1, map2, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)

    def frame(self, t: float) -> np.ndarray:
        """The morph at time t in [0, 1] as a new uint8 RGB array."""
        t = float(min(1.0, max(0.0, t)))
        if t == 0.0:
            return self.a.copy()
        if t == 1.0:
            return self.b.copy()
        disp_a, cov_a = self._displacement(0, t)
        disp_b, cov_b = self._displacement(1, 1.0 - t)
        wa = (1.0 - t) * (cov_a + 0.02)
        wb = t * (cov_b + 0.02)
        weight_a = cv2.resize(wa / (wa + wb), (self.w, self.h), interpolation=cv2.INTER_LINEAR)
        weight_b = 1.0 - weight_a
        out_a = self._warped(self.a, disp_a)
        out_b = self._warped(self.b, disp_b)
        return cv2.blendLinear(out_a, out_b, weight_a, weight_b)


def flow_interpolate(a: np.ndarray, b: np.ndarray, ts: Sequence[float]) -> Iterator[np.ndarray]:
    """Frames between `a` (t=0) and `b` (t=1) at each time in `ts`, by optical-flow morphing."""
    morph = FlowMorph(a, b)
    for t in ts:
        yield morph.frame(t)

