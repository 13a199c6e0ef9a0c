"""The "AI生成" label stamped at the bottom right of watermarked videos.

The label is a bundled RGBA PNG (see `wanserve/assets/README.md`), scaled per frame height and
alpha-blended onto only the small region it covers.
"""

from __future__ import annotations

import functools
import importlib.resources

import numpy as np
from PIL import Image

LABEL_HEIGHT_RATIO = 0.045  # label height as a fraction of the frame height
MARGIN_RATIO = 0.025  # gap to the right and bottom edges, as a fraction of the frame height
MIN_LABEL_HEIGHT = 8


@functools.lru_cache(maxsize=1)
def _asset() -> Image.Image:
    ref = importlib.resources.files("wanserve") / "assets" / "watermark.png"
    with ref.open("rb") as fh:
        img = Image.open(fh)
        img.load()
    return img.convert("RGBA")


@functools.lru_cache(maxsize=16)
def load_label(height_px: int) -> np.ndarray:
    """The label as a read-only uint8 RGBA array `height_px` tall (width keeps the aspect ratio)."""
    if height_px < 1:
        raise ValueError(f"label height must be positive, got {height_px}")
    img = _asset()
    width = max(1, round(img.width * height_px / img.height))
    arr = np.asarray(img.resize((width, height_px), Image.Resampling.LANCZOS), dtype=np.uint8).copy()
    arr.flags.writeable = False
    return arr


def placement(frame_width: int, frame_height: int) -> tuple[int, int, int, int]:
    """(x, y, label_width, label_height) of the label in a frame of that size.

    x and y are even, so the region lines up with 4:2:0 chroma blocks. The label shrinks to fit
    frames too narrow for it.
    """
    label_h = max(MIN_LABEL_HEIGHT, round(frame_height * LABEL_HEIGHT_RATIO))
    margin = max(2, round(frame_height * MARGIN_RATIO))
    label_w = load_label(label_h).shape[1]
    if label_w + 2 * margin > frame_width:  # very narrow frame: shrink the label to fit
        label_h = max(1, int(label_h * (frame_width - 2 * margin) / label_w))
        label_w = load_label(label_h).shape[1]
    x = (frame_width - margin - label_w) & ~1
    y = (frame_height - margin - label_h) & ~1
    return max(0, x), max(0, y), label_w, label_h


@functools.lru_cache(maxsize=16)
def _blend_terms(height_px: int) -> tuple[np.ndarray, np.ndarray]:
    """Premultiplied colour (x255) and inverse alpha, uint16, for integer blending."""
    label = load_label(height_px).astype(np.uint16)
    alpha = label[:, :, 3:4]
    return label[:, :, :3] * alpha, 255 - alpha


def blend_region(region: np.ndarray, height_px: int) -> np.ndarray:
    """Return `region` (uint8 RGB, the label's size) with the label alpha-blended over it."""
    premul, inv_alpha = _blend_terms(height_px)
    out = region.astype(np.uint16) * inv_alpha + premul + 127
    out //= 255
    return out.astype(np.uint8)


def apply_watermark(frame: np.ndarray) -> np.ndarray:
    """Stamp the label at the bottom right of `frame` (uint8 RGB, H x W x 3) in place; return it."""
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        raise ValueError(f"expected a uint8 H x W x 3 frame, got {frame.dtype} {frame.shape}")
    h, w = frame.shape[:2]
    x, y, lw, lh = placement(w, h)
    region = frame[y : y + lh, x : x + lw]
    region[...] = blend_region(region, lh)
    return frame
