"""Text for the storyboard cards: finding a font, wrapping text (Latin words whole, CJK between
characters), and drawing a card's text once as a layer that is then composited over each frame.

Characters the system font lacks (a Chinese prompt on a machine with only DejaVu) are drawn with the
bundled CJK subset (assets/NotoSansCJKsc-Subset.otf), never as empty boxes; text the system font covers is
drawn exactly as before."""

from __future__ import annotations

import functools
import importlib.resources
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
# Noto Sans CJK SC cut to GB2312 level 1 and punctuation (scripts/subset_cjk_font.py; SIL OFL 1.1)
BUNDLED_FONT = str(importlib.resources.files("wanserve") / "assets" / "NotoSansCJKsc-Subset.otf")


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
    """The font of `find_font()` at `size` px, else the bundled CJK font, else Pillow's default font."""
    size = max(6, int(size))
    for path in (find_font(), BUNDLED_FONT):
        if path:
            try:
                return ImageFont.truetype(path, size=size)
            except OSError:
                pass
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


@functools.lru_cache(maxsize=32)
def _bundled_font(size: int) -> ImageFont.FreeTypeFont | None:
    try:
        return ImageFont.truetype(BUNDLED_FONT, size=max(6, int(size)))
    except OSError:
        return None


def get_fonts(size: int) -> FontChain:
    """`get_font(size)` with the bundled CJK font behind it for the characters it lacks."""
    primary = get_font(size)
    fallback = _bundled_font(size)
    if fallback is None or getattr(primary, "path", None) == BUNDLED_FONT:
        return FontChain((primary,))
    return FontChain((primary, fallback))


_MISSING = "\U0010ffff"  # a noncharacter: no font maps it, so it renders as the font's .notdef glyph


@functools.lru_cache(maxsize=8192)
def _glyph(font: ImageFont.FreeTypeFont, ch: str) -> tuple:
    mask, offset = font.getmask2(ch, mode="L")
    return mask.size, offset, bytes(mask), font.getlength(ch)


def has_glyph(font: ImageFont.FreeTypeFont | ImageFont.ImageFont, ch: str) -> bool:
    """Whether `font` draws `ch` as itself rather than as its .notdef box (Pillow exposes no cmap, so the
    two renderings are compared). Fonts that are not FreeType fonts are taken at their word."""
    if not isinstance(font, ImageFont.FreeTypeFont) or ch.isspace():
        return True
    return _glyph(font, ch) != _glyph(font, _MISSING)


@dataclass(frozen=True)
class FontChain:
    """Fonts tried in order per character: each run of text is drawn with the first font that has glyphs
    for it (the first font where none has). Duck-types `getlength`, so `wrap_text` measures with it."""

    fonts: tuple[ImageFont.FreeTypeFont | ImageFont.ImageFont, ...]

    @property
    def primary(self) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
        return self.fonts[0]

    def runs(self, s: str) -> list[tuple[ImageFont.FreeTypeFont | ImageFont.ImageFont, str]]:
        """`s` cut into (font, text) runs; white space stays in the run it is in."""
        out: list[tuple[ImageFont.FreeTypeFont | ImageFont.ImageFont, str]] = []
        for ch in s:
            if ch.isspace() and out:
                font = out[-1][0]
            else:
                font = next((f for f in self.fonts if has_glyph(f, ch)), self.primary)
            if out and out[-1][0] is font:
                out[-1] = (font, out[-1][1] + ch)
            else:
                out.append((font, ch))
        return out

    def getlength(self, s: str) -> float:
        return sum(font.getlength(part) for font, part in self.runs(s))

    def draw(self, draw: ImageDraw.ImageDraw, xy: tuple[float, float], s: str, fill: tuple,
             anchor: str = "la") -> None:
        """`draw.text` with the chain. Text the primary font covers is one plain `draw.text` call (the same
        pixels as before fallbacks existed); mixed runs share the primary font's baseline."""
        runs = self.runs(s)
        if len(runs) <= 1 and (not runs or runs[0][0] is self.primary):
            draw.text(xy, s, font=self.primary, fill=fill, anchor=anchor)
            return
        x, y = xy
        if anchor[0] == "m":
            x -= self.getlength(s) / 2
        elif anchor[0] == "r":
            x -= self.getlength(s)
        ascent, descent = self.primary.getmetrics() if hasattr(self.primary, "getmetrics") else (0, 0)
        y += {"a": ascent, "d": -descent, "m": (ascent - descent) / 2}.get(anchor[1], 0)
        for font, part in runs:
            draw.text((x, y), part, font=font, fill=fill, anchor="ls")
            x += font.getlength(part)


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

    def text(xy, s, font: FontChain, fill, anchor="la"):
        font.draw(draw, (xy[0] + shadow, xy[1] + shadow), s, fill=(0, 0, 0, 150), anchor=anchor)
        font.draw(draw, xy, s, fill=fill, anchor=anchor)

    head_font = get_fonts(head_size)
    header = f"Shot {shot.number} · {_fmt_seconds(shot.start)}–{_fmt_seconds(shot.end)} s"
    text((margin, margin), header, head_font, (255, 255, 255, 240))
    foot_font = get_fonts(foot_size)
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
        font = get_fonts(size)
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
