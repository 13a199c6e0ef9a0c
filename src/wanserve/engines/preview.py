"""The deterministic CPU preview engine.

This engine is NOT a generative model and never claims to be one. It turns a request into a real,
watchable video with classic image processing, so the whole service (API, queue, worker, storage,
encoding) can run end to end on any machine, and so a client can see what its request asked for:

- i2v (first frame): a slow Ken Burns camera move over the image (zoom in or pull back, with a pan).
- kf2v, or i2v with first and last frame: an optical-flow morph from the first image to the last
  (`media.frames.FlowMorph`, which the wan engine also uses for frame interpolation).
- i2v with an effect `template`: a simple visible effect of its own per template name.
- t2v: storyboard cards showing the prompt, one per shot, over slowly moving colour gradients, each
  with the footer "wanserve preview — not AI generated".

Output is deterministic: the same job (inputs and seed) gives the same bytes of frames on the same
machine. Randomness comes only from `numpy.random.default_rng` seeded from `job.seed`.
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
import re
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from wanserve.engines.base import Progress, RenderJob, Shot
from wanserve.media.clip import clip_frames
from wanserve.media.frames import FlowMorph, fit_image

FrameFn = Callable[[int], np.ndarray]

PROGRESS_EVERY = 5  # frames between progress() calls
CROSSFADE_SECONDS = 0.3
FOOTER_TEXT = "wanserve preview — not AI generated"


# ==================================================================================================
# the engine


class PreviewEngine:
    """Deterministic, non-AI preview renderer (see the module docstring)."""

    name = "preview"

    def render(self, job: RenderJob, progress: Progress) -> Iterator[np.ndarray]:
        """Yield exactly `job.frame_count` uint8 RGB frames of shape (job.height, job.width, 3).

        `progress(done, total)` is called with 0 once set-up is done, then every few frames and with
        (total, total) before the last frame is yielded; whatever it raises (TaskCanceled,
        LeaseLost) propagates and ends the generator.
        """
        total = job.frame_count
        if job.first_clip is not None:
            yield from _continuation(job, progress)
            return
        _check_job(job)
        make = _plan(job)
        progress(0, total)
        for i in range(total):
            frame = make(i)
            _report(progress, i + 1, total)
            yield frame


def _report(progress: Progress, done: int, total: int) -> None:
    if done % PROGRESS_EVERY == 0 or done == total:
        progress(done, total)


def _continuation(job: RenderJob, progress: Progress) -> Iterator[np.ndarray]:
    """wan2.7 first_clip: the clip itself (at the output's size and rate), then a camera move from
    its last frame, or a flow morph to the last frame when one is given, up to the full duration."""
    total = job.frame_count
    n_clip = max(1, min(total - 1, round(job.first_clip_seconds * job.fps)))
    progress(0, total)
    last = None
    for i, raw in enumerate(clip_frames(job.first_clip, job.fps, n_clip)):
        last = fit_image(raw, job.width, job.height)
        _report(progress, i + 1, total)
        yield last
    if last is None:
        raise ValueError("the first clip has no frames")
    rest = replace(job, kind="kf2v" if job.last_frame is not None else "i2v", first_frame=Image.fromarray(last),
                   first_clip=None, frame_count=total - n_clip)
    make = _plan(rest)
    for j in range(rest.frame_count):
        frame = make(j)
        _report(progress, n_clip + j + 1, total)
        yield frame


def _check_job(job: RenderJob) -> None:
    if job.width <= 0 or job.height <= 0:
        raise ValueError(f"invalid output size {job.width}x{job.height}")
    if job.frame_count <= 0 or job.fps <= 0:
        raise ValueError(f"invalid frame_count={job.frame_count} / fps={job.fps}")
    if job.kind in ("i2v", "kf2v") and job.first_frame is None:
        raise ValueError(f"a {job.kind} job needs first_frame")
    if job.kind == "kf2v" and job.last_frame is None and not job.template:
        raise ValueError("a kf2v job needs last_frame")


def _plan(job: RenderJob) -> FrameFn:
    """Do the per-job precomputation and return the function that makes frame i."""
    if job.kind == "t2v" or job.first_frame is None:
        return _storyboard(job)
    first = fit_image(job.first_frame, job.width, job.height)
    if job.template:
        return _template(job, first)
    if job.last_frame is not None:
        last = fit_image(job.last_frame, job.width, job.height)
        return _morph(job, first, last)
    return _ken_burns(job, first)


def _rng(job: RenderJob, salt: str) -> np.random.Generator:
    """A generator seeded from the job seed and a purpose, so each use gets its own stream."""
    salt_int = int.from_bytes(hashlib.sha256(salt.encode()).digest()[:8], "little")
    return np.random.default_rng([int(job.seed) & 0xFFFFFFFFFFFFFFFF, salt_int])


def _times(n: int) -> np.ndarray:
    """Normalised time of each frame: 0 for the first, 1 for the last."""
    if n == 1:
        return np.zeros(1)
    return np.arange(n) / (n - 1)


def ease(t: float) -> float:
    """Ease-in-out (cosine) on [0, 1]."""
    t = min(1.0, max(0.0, t))
    return 0.5 - 0.5 * math.cos(math.pi * t)


# ==================================================================================================
# images


def _backdrop(img: np.ndarray, dim: float = 0.55) -> np.ndarray:
    """A heavily blurred, darkened copy of `img`, for areas a moving image uncovers."""
    h, w = img.shape[:2]
    sw, sh = max(4, w // 16), max(4, h // 16)
    small = cv2.resize(img, (sw, sh), interpolation=cv2.INTER_AREA)
    small = cv2.GaussianBlur(small, (0, 0), 1.5)
    small = cv2.convertScaleAbs(small, alpha=dim)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


def _affine(scale_x: float, scale_y: float, angle_deg: float, src_centre, dst_centre) -> np.ndarray:
    """2x3 matrix mapping source pixels to destination: scale/rotate about src_centre -> dst_centre."""
    a = math.radians(angle_deg)
    c, s = math.cos(a), math.sin(a)
    m = np.array([[c * scale_x, -s * scale_y], [s * scale_x, c * scale_y]], dtype=np.float64)
    sx, sy = src_centre
    dx, dy = dst_centre
    t = np.array([dx, dy]) - m @ np.array([sx, sy])
    return np.hstack([m, t[:, None]]).astype(np.float32)


def _warp(img: np.ndarray, m: np.ndarray, backdrop: np.ndarray | None) -> np.ndarray:
    h, w = img.shape[:2]
    if backdrop is None:
        return cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT101)
    out = backdrop.copy()
    cv2.warpAffine(img, m, (w, h), dst=out, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_TRANSPARENT)
    return out


# ==================================================================================================
# i2v: Ken Burns


def _ken_burns(job: RenderJob, img: np.ndarray) -> FrameFn:
    """Slow zoom in (towards a seeded point) or pull back (onto a blurred backdrop), eased."""
    rng = _rng(job, "ken-burns")
    h, w = img.shape[:2]
    centre = ((w - 1) / 2, (h - 1) / 2)
    zoom_in = bool(rng.random() < 0.7)
    amount = float(rng.uniform(0.08, 0.18)) if zoom_in else float(rng.uniform(0.06, 0.12))
    angle = float(rng.uniform(0, 2 * math.pi))
    reach = float(rng.uniform(0.4, 1.0))  # how far towards the edge the pan goes, 0..1
    ts = _times(job.frame_count)
    if zoom_in:
        end_scale = 1 + amount
        # The visible window stays inside the image: offset <= (1 - 1/s) * size / 2 at every step.
        ox = math.cos(angle) * reach * (w - w / end_scale) / 2
        oy = math.sin(angle) * reach * (h - h / end_scale) / 2
        backdrop = None
    else:
        end_scale = 1 / (1 + amount)
        ox = math.cos(angle) * reach * (w - w * end_scale) / 4
        oy = math.sin(angle) * reach * (h - h * end_scale) / 4
        backdrop = _backdrop(img)

    def frame(i: int) -> np.ndarray:
        e = ease(float(ts[i]))
        if e == 0.0:
            return img.copy()
        s = 1 + (end_scale - 1) * e
        src_c = (centre[0] + ox * e, centre[1] + oy * e)
        return _warp(img, _affine(s, s, 0.0, src_c, centre), backdrop)

    return frame


# ==================================================================================================
# kf2v: optical-flow morph


def _morph(job: RenderJob, first: np.ndarray, last: np.ndarray) -> FrameFn:
    morph = FlowMorph(first, last)
    ts = _times(job.frame_count)
    hold = 0.06  # show each key frame unchanged for the first / last 6% of the video; ease in between

    def frame(i: int) -> np.ndarray:
        t = float(ts[i])
        return morph.frame(ease((t - hold) / (1 - 2 * hold)) if 0 < t < 1 else t)

    return frame


# ==================================================================================================
# i2v with an effect template


def _template_hash(name: str) -> np.random.Generator:
    digest = hashlib.sha256(name.strip().lower().encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def _template(job: RenderJob, img: np.ndarray) -> FrameFn:
    name = (job.template or "").strip().lower()
    h, w = img.shape[:2]
    centre = ((w - 1) / 2, (h - 1) / 2)
    ts = _times(job.frame_count)
    rng = _rng(job, "template:" + name)
    phase = float(rng.uniform(0, 2 * math.pi))
    backdrop = _backdrop(img)

    if name == "flying":
        sway = float(rng.uniform(0.02, 0.05)) * w

        def frame(i: int) -> np.ndarray:
            t = float(ts[i])
            s = 1 - 0.28 * ease(t / 0.25)
            rise = 0.22 * h * ease((t - 0.15) / 0.85)
            settle = ease(t / 0.2)  # motion fades in, so the first frame is the image itself
            bob = 0.035 * h * math.sin(2 * math.pi * 2.0 * t + phase) * settle
            dx = sway * math.sin(2 * math.pi * 1.0 * t + phase) * settle
            tilt = 4.0 * math.sin(2 * math.pi * 1.0 * t + phase) * settle
            dst = (centre[0] + dx, centre[1] - rise + bob)
            return _warp(img, _affine(s, s, tilt, centre, dst), backdrop)

        return frame

    if name == "rotation":
        turns = 1 if rng.random() < 0.5 else -1

        def frame(i: int) -> np.ndarray:
            t = float(ts[i])
            angle = 360.0 * turns * ease(t)
            s = 1 - 0.35 * math.sin(math.pi * t)
            return _warp(img, _affine(s, s, angle, centre, centre), backdrop)

        return frame

    if name == "squish":
        bottom = (centre[0], float(h - 1))

        def frame(i: int) -> np.ndarray:
            t = float(ts[i])
            q = 0.5 - 0.5 * math.cos(2 * math.pi * 2 * t)  # two squeezes
            return _warp(img, _affine(1 + 0.25 * q, 1 - 0.4 * q, 0.0, bottom, bottom), backdrop)

        return frame

    if name == "inflate":
        # A bulge: pixels pushed out from the centre, most near the middle, growing with t.
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
            return _warp(out, _affine(s, 1 + 0.06 * ease(t), 0.0, centre, centre), None)

        return frame

    if name in ("dissolve", "melt"):
        noise_rng = _rng(job, "dissolve-noise:" + name)
        coarse = noise_rng.random((max(2, h // 24), max(2, w // 24))).astype(np.float32)
        coarse = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
        grain = noise_rng.random((max(1, h // 2), max(1, w // 2))).astype(np.float32)
        grain = cv2.resize(grain, (w, h), interpolation=cv2.INTER_NEAREST)
        noise = cv2.normalize(0.6 * coarse + 0.4 * grain, None, 0, 254, cv2.NORM_MINMAX).astype(np.uint8)
        blurred = cv2.convertScaleAbs(cv2.GaussianBlur(img, (0, 0), max(2.0, h / 40)), alpha=0.65)
        melt = name == "melt"
        if melt:
            drip = noise_rng.random(max(2, w // 16)).astype(np.float32)
            drip = cv2.resize(drip[None, :], (w, 1), interpolation=cv2.INTER_CUBIC)[0]
            drip = (0.35 + 0.65 * np.clip(drip, 0, 1)) * (0.6 * h)
            gy, gx = np.mgrid[0:h, 0:w].astype(np.float32)
            ramp = (gy / max(1, h - 1)).astype(np.float32)  # lower rows sag more
            grid_x, grid_y = gx, gy
            sag = (ramp * 0.5 + 0.5) * drip[None, :]
            del gy, gx, ramp
            melt_bg = blurred

        def frame(i: int) -> np.ndarray:
            t = float(ts[i])
            if melt:
                k = ease(t) ** 1.5
                map_y = cv2.scaleAdd(sag, -k, grid_y)
                out = melt_bg.copy()
                cv2.remap(img, grid_x, map_y, cv2.INTER_LINEAR, dst=out, borderMode=cv2.BORDER_TRANSPARENT)
                level = round(150 * ease((t - 0.5) / 0.5))  # partly dissolves as it melts
                target = melt_bg
            else:
                out = img.copy()
                level = round(255 * ease((t - 0.1) / 0.8))
                target = blurred
            if level > 0:
                mask = cv2.compare(noise, level, cv2.CMP_LT)
                cv2.copyTo(target, mask, out)
            return out

        return frame

    # Any other template: a pulsing zoom and a hue drift, both chosen from the template name.
    hr = _template_hash(name)
    pulses = int(hr.integers(1, 4))
    depth = float(hr.uniform(0.05, 0.14))
    hue_total = float(hr.uniform(40, 200)) * (1 if hr.random() < 0.5 else -1)  # in 0..255 hue units
    tilt = float(hr.uniform(-4, 4))

    def frame(i: int) -> np.ndarray:
        t = float(ts[i])
        p = 0.5 - 0.5 * math.cos(2 * math.pi * pulses * t)
        s = 1 + depth * p
        out = _warp(img, _affine(s, s, tilt * p, centre, centre), None)
        shift = round(hue_total * ease(t)) % 256
        if shift:
            hsv = cv2.cvtColor(out, cv2.COLOR_RGB2HSV_FULL)
            hsv[..., 0] += np.uint8(shift)  # wraps around mod 256, like hue
            out = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB_FULL)
        return out

    return frame


# ==================================================================================================
# t2v: storyboard cards



_FONT_CANDIDATES = (
    "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/noto-cjk/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/truetype/droid/DroidSansFallbackFull.ttf",
)
_FALLBACK_FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"


@functools.lru_cache(maxsize=1)
def find_font() -> str | None:
    """Path of a CJK-capable font if the system has one, else DejaVuSans, else None."""
    for path in _FONT_CANDIDATES:
        if os.path.isfile(path):
            return path
    if shutil.which("fc-match"):
        try:
            out = subprocess.run(
                ["fc-match", "-f", "%{file}", "sans-serif:lang=zh-cn"],
                capture_output=True, text=True, timeout=5, check=False,
            ).stdout.strip()
            if out and os.path.isfile(out) and out.lower().endswith((".ttf", ".ttc", ".otf", ".otc")):
                return out
        except (OSError, subprocess.SubprocessError):
            pass
    if os.path.isfile(_FALLBACK_FONT):
        return _FALLBACK_FONT
    return None


@functools.lru_cache(maxsize=32)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    size = max(6, int(size))
    path = find_font()
    if path:
        try:
            return ImageFont.truetype(path, size=size)
        except OSError:
            pass
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


_TOKEN = re.compile(r"[A-Za-z0-9\u00C0-\u024F'’_\-]+[.,!?;:%)\]”\"]*|\s+|.", re.DOTALL)
_NO_LINE_START = set("，。！？、；：）》」』】,.!?;:)]”’…")


def _text_width(font, s: str) -> float:
    return font.getlength(s)


def wrap_text(text: str, font, max_width: float) -> list[str]:
    """Greedy line wrapping: Latin words stay whole, CJK breaks between characters."""
    lines: list[str] = []
    for para in text.split("\n"):
        line = ""
        for tok in _TOKEN.findall(para):
            if tok.isspace():
                if line:
                    line += " "
                continue
            cand = line + tok
            if _text_width(font, cand.rstrip()) <= max_width or not line.strip() or tok[0] in _NO_LINE_START:
                if not line.strip() and _text_width(font, tok) > max_width:
                    # A word wider than the line: break it by characters.
                    for ch in tok:
                        if line and _text_width(font, line + ch) > max_width:
                            lines.append(line.rstrip())
                            line = ""
                        line += ch
                else:
                    line = cand
            else:
                lines.append(line.rstrip())
                line = tok
        lines.append(line.rstrip())
    while lines and not lines[-1]:
        lines.pop()
    return lines or [""]


def _fmt_seconds(x: float) -> str:
    return f"{round(x, 1):g}"


@dataclass
class _Layer:
    """A pre-rendered RGBA text layer, reduced to what compositing needs."""

    x: int
    y: int
    inv_alpha: np.ndarray  # uint8 (h, w, 3): 255 - alpha
    premul: np.ndarray  # uint8 (h, w, 3): colour * alpha / 255

    def over(self, frame: np.ndarray) -> np.ndarray:
        h, w = self.inv_alpha.shape[:2]
        region = frame[self.y : self.y + h, self.x : self.x + w]
        cv2.add(cv2.multiply(region, self.inv_alpha, scale=1 / 255), self.premul, dst=region)
        return frame


def _layer_from_rgba(rgba: Image.Image) -> _Layer:
    arr = np.asarray(rgba, dtype=np.uint8)
    alpha = arr[..., 3]
    ys, xs = np.nonzero(alpha)
    if len(xs) == 0:
        z = np.zeros((1, 1, 3), np.uint8)
        return _Layer(0, 0, z + 255, z)
    x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
    crop = arr[y0:y1, x0:x1].astype(np.uint16)
    a = crop[..., 3:4]
    premul = ((crop[..., :3] * a + 127) // 255).astype(np.uint8)
    inv = np.repeat((255 - a).astype(np.uint8), 3, axis=2)
    return _Layer(int(x0), int(y0), np.ascontiguousarray(inv), np.ascontiguousarray(premul))


_TEXT_LOCK = threading.Lock()  # FreeType faces (cached in _font) are not safe to use from two threads at once


def _render_card_text(shot: Shot, width: int, height: int) -> _Layer:
    """Header, wrapped shot text on a translucent panel, and the footer, as one RGBA layer."""
    with _TEXT_LOCK:
        return _layer_from_rgba(_draw_card_text(shot, width, height))


def _draw_card_text(shot: Shot, width: int, height: int) -> Image.Image:
    img = Image.new("RGBA", (width, height), (0, 0, 0, 0))
    draw = ImageDraw.Draw(img)
    short = min(width, height)
    margin = max(4, round(short * 0.06))
    head_size = max(8, round(short * 0.065))
    foot_size = max(6, round(short * 0.036))
    shadow = max(1, round(short / 360))

    def text(xy, s, font, fill, anchor="la"):
        draw.text((xy[0] + shadow, xy[1] + shadow), s, font=font, fill=(0, 0, 0, 150), anchor=anchor)
        draw.text(xy, s, font=font, fill=fill, anchor=anchor)

    head_font = _font(head_size)
    header = f"Shot {shot.number} · {_fmt_seconds(shot.start)}–{_fmt_seconds(shot.end)} s"
    text((margin, margin), header, head_font, (255, 255, 255, 240))
    foot_font = _font(foot_size)
    text((margin, height - margin), FOOTER_TEXT, foot_font, (255, 255, 255, 200), anchor="ld")

    # Body: the largest font (down to a floor) at which the wrapped text fits the body box.
    top = margin + round(head_size * 1.6)
    bottom = height - margin - round(foot_size * 1.8)
    pad = max(3, round(short * 0.025))
    box_w = width - 2 * margin - 2 * pad
    box_h = max(1, bottom - top - 2 * pad)
    size = max(8, round(short * 0.075))
    floor = max(7, round(short * 0.035))
    while True:
        font = _font(size)
        line_h = round(size * 1.35)
        lines = wrap_text(shot.text, font, box_w)
        if len(lines) * line_h <= box_h or size <= floor:
            break
        size = max(floor, int(size * 0.9))
    max_lines = max(1, box_h // line_h)
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        last = lines[-1]
        while last and _text_width(font, last + "…") > box_w:
            last = last[:-1]
        lines[-1] = last + "…"
    block_h = len(lines) * line_h
    block_w = max(_text_width(font, ln) for ln in lines)
    y = top + pad + max(0, (box_h - block_h) // 2)
    cx = width // 2
    draw.rounded_rectangle(
        (cx - block_w / 2 - pad * 2, y - pad, cx + block_w / 2 + pad * 2, y + block_h + pad),
        radius=pad * 2, fill=(0, 0, 0, 96),
    )
    for k, ln in enumerate(lines):
        text((cx, y + k * line_h + (line_h - size) // 2), ln, font, (255, 255, 255, 255), anchor="ma")
    return img


class _Gradient:
    """A slowly drifting two-colour gradient with a soft glow, computed at 1/16 size and upscaled."""

    def __init__(self, rng: np.random.Generator, width: int, height: int) -> None:
        self.width, self.height = width, height
        gw, gh = max(4, math.ceil(width / 16)), max(4, math.ceil(height / 16))
        gy, gx = np.mgrid[0:gh, 0:gw].astype(np.float32)
        self.u = gx / (gw - 1)
        self.v = gy / (gh - 1) * (gh / gw)
        hue = float(rng.uniform(0, 360))
        hue2 = (hue + float(rng.uniform(40, 140))) % 360
        self.c0 = _hsv_to_rgb(hue, float(rng.uniform(0.55, 0.85)), float(rng.uniform(0.30, 0.45)))
        self.c1 = _hsv_to_rgb(hue2, float(rng.uniform(0.45, 0.80)), float(rng.uniform(0.50, 0.70)))
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


def _hsv_to_rgb(h: float, s: float, v: float) -> np.ndarray:
    c = v * s
    x = c * (1 - abs((h / 60) % 2 - 1))
    m = v - c
    r, g, b = [(c, x, 0), (x, c, 0), (0, c, x), (0, x, c), (x, 0, c), (c, 0, x)][int(h // 60) % 6]
    return np.array([(r + m) * 255, (g + m) * 255, (b + m) * 255], dtype=np.float32)


def _storyboard(job: RenderJob) -> FrameFn:
    n, fps = job.frame_count, job.fps
    duration = n / fps
    shots = job.shots or (Shot(1, 0.0, float(duration), job.prompt or "(no prompt)"),)
    w, h = job.width, job.height
    cards = [(_Gradient(_rng(job, f"card-{k}"), w, h), _render_card_text(shot, w, h))
             for k, shot in enumerate(shots)]
    # Frame ranges per card: frame i (time i/fps) belongs to the last shot starting at or before it.
    starts = [s.start for s in shots]
    fade = CROSSFADE_SECONDS

    def card_frame(k: int, seconds: float) -> np.ndarray:
        gradient, layer = cards[k]
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
