"""Regenerate src/wanserve/assets/watermark.png, the "AI生成" label stamped on watermarked videos.

The label is rendered from WenQuanYi Micro Hei (Apache-2.0 / GPL-3.0 dual licence; Debian package
`fonts-wqy-microhei`): white glyphs with a thin dark outline and a soft drop shadow, so it reads on
any background. Only the PNG is committed, never the font. Run from the repository root:

    python scripts/render_watermark.py [--font PATH] [--height 96]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter, ImageFont

LABEL = "AI生成"
DEFAULT_FONT = "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc"
OUT = Path(__file__).resolve().parent.parent / "src" / "wanserve" / "assets" / "watermark.png"


def render(font_path: str, height: int) -> Image.Image:
    """Return the label as RGBA, `height` pixels tall (glyphs plus outline and shadow)."""
    # Render at 4x and scale down once, for smooth edges.
    ss = 4
    size = height * ss
    font = ImageFont.truetype(font_path, size=int(size * 0.8), index=0)
    stroke = max(1, size // 40)
    shadow_dx = shadow_dy = max(1, size // 32)
    blur = size / 28

    left, top, right, bottom = font.getbbox(LABEL, stroke_width=stroke)
    pad = int(blur * 3) + shadow_dx + 2
    w = right - left + 2 * pad
    h = bottom - top + 2 * pad
    origin = (pad - left, pad - top)

    # Shadow: the outlined glyphs in black, offset and blurred.
    shadow = Image.new("L", (w, h), 0)
    ImageDraw.Draw(shadow).text(
        (origin[0] + shadow_dx, origin[1] + shadow_dy), LABEL, font=font, fill=255,
        stroke_width=stroke, stroke_fill=255,
    )
    shadow = shadow.filter(ImageFilter.GaussianBlur(blur)).point(lambda v: v * 150 // 255)
    img = Image.new("RGBA", (w, h), (0, 0, 0, 0))
    img.putalpha(shadow)

    # Glyphs: white fill, thin dark-grey outline.
    glyphs = Image.new("RGBA", (w, h), (0, 0, 0, 0))
    ImageDraw.Draw(glyphs).text(
        origin, LABEL, font=font, fill=(255, 255, 255, 235), stroke_width=stroke,
        stroke_fill=(40, 40, 40, 200),
    )
    img = Image.alpha_composite(img, glyphs)

    # Trim to the visible pixels, then scale to the requested height.
    bbox = img.getchannel("A").point(lambda v: 255 if v > 4 else 0).getbbox()
    if bbox:
        img = img.crop(bbox)
    out_w = max(1, round(img.width * height / img.height))
    return img.resize((out_w, height), Image.Resampling.LANCZOS)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--font", default=DEFAULT_FONT, help="path to WenQuanYi Micro Hei (wqy-microhei.ttc)")
    ap.add_argument("--height", type=int, default=96, help="label height in pixels")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    img = render(args.font, args.height)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    img.save(args.out, optimize=True)
    print(f"wrote {args.out} ({img.width}x{img.height} RGBA)")


if __name__ == "__main__":
    main()
