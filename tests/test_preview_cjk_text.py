"""Storyboard-card text: CJK characters are drawn from the bundled font when the system font lacks them."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from wanserve.engines.base import Shot
from wanserve.engines.preview import text

DEJAVU = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"  # a system font without CJK glyphs
CHINESE = "镜头1：山水之间，一只猫走过城市。"
HANZI = "山水猫城雨夜"


def _clear_caches() -> None:
    for cached in (text.get_font, text._bundled_font, text._glyph):
        cached.cache_clear()


@pytest.fixture
def latin_only_system_font(monkeypatch):
    """The machine's font is DejaVu Sans (Latin, Greek, Cyrillic; no hanzi), as on a bare server."""
    if not os.path.isfile(DEJAVU):
        pytest.skip("DejaVu Sans is not installed")
    monkeypatch.setattr(text, "find_font", lambda: DEJAVU)
    _clear_caches()
    yield
    _clear_caches()


def drop_bundled_font(monkeypatch) -> None:
    """Cards drawn as before the bundled font existed: the system font alone."""
    monkeypatch.setattr(text, "BUNDLED_FONT", "/nonexistent/font.otf")
    _clear_caches()


@pytest.fixture
def no_bundled_font(monkeypatch):
    drop_bundled_font(monkeypatch)


def card(prompt: str, width: int = 640, height: int = 360) -> np.ndarray:
    return np.asarray(text.draw_card_text(Shot(1, 0.0, 3.0, prompt), width, height), dtype=np.int16)


def glyph_bitmap(ch: str, size: int = 32) -> bytes:
    img = Image.new("L", (size * 2, size * 2), 0)
    text.get_fonts(size).draw(ImageDraw.Draw(img), (4, 4), ch, fill=255)
    return img.tobytes()


def test_a_chinese_card_over_a_latin_only_system_font_differs_from_its_tofu_rendering(
        latin_only_system_font, monkeypatch):
    drawn = card(CHINESE)
    drop_bundled_font(monkeypatch)
    tofu = card(CHINESE)
    changed = np.abs(drawn[..., 3] - tofu[..., 3]) > 64
    assert changed.mean() > 0.01  # whole glyph shapes, not a few edge pixels


def test_distinct_hanzi_get_distinct_glyph_bitmaps(latin_only_system_font):
    bitmaps = {glyph_bitmap(ch) for ch in HANZI}
    assert len(bitmaps) == len(HANZI)


def test_without_the_bundled_font_every_hanzi_is_the_same_box(latin_only_system_font, no_bundled_font):
    """The premise of the tests above: a font lacking hanzi draws all of them alike."""
    assert len({glyph_bitmap(ch) for ch in HANZI}) == 1


def test_text_the_system_font_covers_is_drawn_exactly_as_without_the_fallback(
        latin_only_system_font, monkeypatch):
    prompt = "A cat walks through a rainy city at night — neon, puddles, 24 fps…"
    with_fallback = card(prompt)
    drop_bundled_font(monkeypatch)
    assert np.array_equal(with_fallback, card(prompt))


def test_mixed_latin_and_hanzi_measure_as_the_sum_of_their_runs(latin_only_system_font):
    fonts = text.get_fonts(24)
    assert [f is fonts.primary for f, _ in fonts.runs("Shot 1 山水 ok")] == [True, False, True]
    latin, cjk = fonts.fonts
    assert fonts.getlength("ab山") == pytest.approx(latin.getlength("ab") + cjk.getlength("山"))


def test_with_no_system_font_the_bundled_font_draws_everything(monkeypatch):
    monkeypatch.setattr(text, "find_font", lambda: None)
    _clear_caches()
    try:
        fonts = text.get_fonts(24)
        assert fonts.primary.path == text.BUNDLED_FONT and len(fonts.fonts) == 1
        assert all(text.has_glyph(fonts.primary, ch) for ch in HANZI + "Ab1")
    finally:
        _clear_caches()


def test_the_bundled_font_covers_gb2312_level_1_and_fullwidth_punctuation():
    from PIL import ImageFont

    font = ImageFont.truetype(text.BUNDLED_FONT, 10)
    level1 = [bytes([row, cell]).decode("gb2312") for row in range(0xB0, 0xD8)
              for cell in range(0xA1, 0xFA if row == 0xD7 else 0xFF)]
    assert len(level1) == 3755
    punctuation = list("，。！？、；：（）《》「」【】…—·")
    missing = [ch for ch in level1 + punctuation if not text.has_glyph(font, ch)]
    assert missing == []


def test_the_bundled_font_is_small_and_ships_with_its_licence():
    font = Path(text.BUNDLED_FONT)
    assert font.stat().st_size < 1_500_000
    assert "SIL OPEN FONT LICENSE Version 1.1" in (font.parent / "OFL.txt").read_text(encoding="utf-8")
