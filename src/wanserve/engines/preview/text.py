"""Text for the storyboard cards: finding a font, wrapping text (Latin words whole, CJK between
characters), and drawing a card's text once as a layer that is then composited over each frame."""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import threading
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..base import Shot

FOOTER_TEXT = "wanserve preview — not AI generated"

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
def get_font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """The font of `find_font()` at `size` px, else Pillow's default font."""
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
class Layer:
    """A pre-rendered RGBA text layer, reduced to what compositing needs."""

    x: int
    y: int
    inv_alpha: np.ndarray  # uint8 (h, w, 3): 255 - alpha
    premul: np.ndarray  # uint8 (h, w, 3): colour * alpha / 255

    def over(self, frame: np.ndarray) -> np.ndarray:
        """Composite the layer onto `frame` in place; returns `frame`."""
        h, w = self.inv_alpha.shape[:2]
        region = frame[self.y : self.y + h, self.x : self.x + w]
        cv2.add(cv2.multiply(region, self.inv_alpha, scale=1 / 255), self.premul, dst=region)
        return frame


def layer_from_rgba(rgba: Image.Image) -> Layer:
    arr = np.asarray(rgba, dtype=np.uint8)
    alpha = arr[..., 3]
    ys, xs = np.nonzero(alpha)
    if len(xs) == 0:
        z = np.zeros((1, 1, 3), np.uint8)
        return Layer(0, 0, z + 255, z)
    x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
    crop = arr[y0:y1, x0:x1].astype(np.uint16)
    a = crop[..., 3:4]
    premul = ((crop[..., :3] * a + 127) // 255).astype(np.uint8)
    inv = np.repeat((255 - a).astype(np.uint8), 3, axis=2)
    return Layer(int(x0), int(y0), np.ascontiguousarray(inv), np.ascontiguousarray(premul))


# FreeType faces (cached in get_font) are not safe to use from two threads at once.
_TEXT_LOCK = threading.Lock()


def card_text_layer(shot: Shot, width: int, height: int) -> Layer:
    """Header, wrapped shot text on a translucent panel, and the footer, as one RGBA layer."""
    with _TEXT_LOCK:
        return layer_from_rgba(draw_card_text(shot, width, height))


def draw_card_text(shot: Shot, width: int, height: int) -> Image.Image:
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

    head_font = get_font(head_size)
    header = f"Shot {shot.number} · {_fmt_seconds(shot.start)}–{_fmt_seconds(shot.end)} s"
    text((margin, margin), header, head_font, (255, 255, 255, 240))
    foot_font = get_font(foot_size)
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
        font = get_font(size)
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
