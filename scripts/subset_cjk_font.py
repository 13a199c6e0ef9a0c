"""Regenerate src/wanserve/assets/NotoSansCJKsc-Subset.otf, the font the preview engine falls back to for
CJK text on its storyboard cards, and OFL.txt, its licence, beside it.

The source is the Simplified Chinese face of Noto Sans CJK (SIL Open Font License 1.1; Debian package
`fonts-noto-cjk`, /usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc). The whole face is 16 MB, so it
is cut down to what prompts mostly use: ASCII, Latin-1, general and CJK punctuation, full-width forms, the
3755 level-1 hanzi of GB2312 (the common ones) and every CJK character found in the repository's text
files (sample prompts, docs, tests). Hinting, vertical metrics and layout features are dropped: the cards
are drawn horizontally at display sizes, where none of them shows. Needs fontTools (a dev tool, not a
runtime dependency: `pip install fonttools`). Run from the repository root:

    python scripts/subset_cjk_font.py [--font PATH] [--face-index 2]
"""

from __future__ import annotations

import argparse
import re
import subprocess
from pathlib import Path

from fontTools import subset
from fontTools.ttLib import TTCollection

ROOT = Path(__file__).resolve().parent.parent
ASSETS = ROOT / "src" / "wanserve" / "assets"
OUT = ASSETS / "NotoSansCJKsc-Subset.otf"
LICENSE_OUT = ASSETS / "OFL.txt"
DEFAULT_FONT = "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc"
DEBIAN_COPYRIGHT = "/usr/share/doc/fonts-noto-cjk/copyright"
SC_FACE = "Noto Sans CJK SC"

# ASCII, Latin-1, general punctuation, CJK symbols and punctuation, full-width and half-width forms
RANGES = ((0x20, 0x7E), (0xA0, 0xFF), (0x2000, 0x206F), (0x2190, 0x2193), (0x3000, 0x303F),
          (0xFF00, 0xFFEF))
_CJK = re.compile(r"[\u3000-\u303f\u3400-\u4dbf\u4e00-\u9fff\uff00-\uffef]")
_TEXT_SUFFIXES = {".py", ".md", ".toml", ".json", ".txt", ".html", ".js"}


def gb2312_level1() -> list[str]:
    """The 3755 level-1 hanzi of GB2312: rows 0xB0-0xD7, cells 0xA1-0xFE (row 0xD7 ends at 0xF9)."""
    chars = []
    for row in range(0xB0, 0xD8):
        last = 0xF9 if row == 0xD7 else 0xFE
        chars.extend(bytes([row, cell]).decode("gb2312") for cell in range(0xA1, last + 1))
    return chars


def repository_cjk() -> set[str]:
    """The CJK characters in the repository's tracked text files (sample prompts, docs, tests)."""
    names = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True)
    found: set[str] = set()
    for name in names.stdout.splitlines():
        path = ROOT / name
        if path.suffix in _TEXT_SUFFIXES and path.is_file():
            found.update(_CJK.findall(path.read_text(encoding="utf-8", errors="ignore")))
    return found


def wanted() -> list[int]:
    codepoints = {cp for lo, hi in RANGES for cp in range(lo, hi + 1)}
    codepoints.update(ord(ch) for ch in gb2312_level1())
    codepoints.update(ord(ch) for ch in repository_cjk())
    return sorted(codepoints)


def subset_face(collection: str, face_index: int | None, out: Path) -> str:
    """Write the subset of the SC face to `out`; returns the face's copyright line."""
    fonts = TTCollection(collection).fonts
    if face_index is None:
        face_index = next(i for i, f in enumerate(fonts) if f["name"].getDebugName(4) == SC_FACE)
    font = fonts[face_index]
    options = subset.Options()
    options.layout_features = []  # no ligatures, vertical forms or locl: the cards are plain horizontal text
    options.hinting = False
    options.desubroutinize = False
    options.notdef_outline = True
    options.name_IDs = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 12, 13, 14]  # keep the copyright and licence
    options.drop_tables += ["BASE", "VORG", "vhea", "vmtx", "GPOS", "GSUB", "GDEF"]
    subsetter = subset.Subsetter(options)
    subsetter.populate(unicodes=wanted())
    subsetter.subset(font)
    font.recalcTimestamp = False  # keep the source's date: the same input gives the same bytes
    font.save(out)
    return font["name"].getDebugName(0) or ""


def license_text(copyright_line: str) -> str:
    """The OFL 1.1 text as Debian ships it with the font, under the font's own copyright line."""
    lines = Path(DEBIAN_COPYRIGHT).read_text(encoding="utf-8").splitlines()
    start = len(lines) - lines[::-1].index("License: SIL-1.1")  # the stand-alone licence paragraph
    body = []
    for line in lines[start:]:
        if not line.startswith(" "):
            break
        body.append("" if line.strip() == "." else line[1:])
    header = (f"{OUT.name}: a subset of {SC_FACE} (Noto CJK, https://github.com/notofonts/noto-cjk), "
              f"made by scripts/subset_cjk_font.py.\n{copyright_line}\n\n"
              "This Font Software is licensed under the SIL Open Font License, Version 1.1.\n\n")
    return header + "\n".join(body).strip() + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--font", default=DEFAULT_FONT, help="the Noto Sans CJK collection (.ttc)")
    parser.add_argument("--face-index", type=int, help=f"the face in the collection (default: {SC_FACE})")
    args = parser.parse_args()
    copyright_line = subset_face(args.font, args.face_index, OUT)
    LICENSE_OUT.write_text(license_text(copyright_line), encoding="utf-8")
    size_mb = OUT.stat().st_size / 1e6
    print(f"wrote {OUT.relative_to(ROOT)} ({size_mb:.2f} MB) and {LICENSE_OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
