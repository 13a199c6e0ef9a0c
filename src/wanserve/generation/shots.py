"""The shot plan of a prompt: which text each shot shows, and when it starts and ends.

Every engine gets the same plan (the pipeline computes it once, `RenderJob.shots`): the preview
draws one storyboard card per shot; a real engine renders one generation per shot.
"""

from __future__ import annotations

import itertools
import re

from ..engines.base import Shot

_NUM = r"\d+(?:\.\d+)?"
_CN_DIGITS = "零一二三四五六七八九十"
_RANGE = (
    rf"[\[\(（【]\s*(?P<a>{_NUM})\s*(?:s|秒|secs?)?\s*[-–—~～至到]\s*(?P<b>{_NUM})\s*"
    rf"(?:s|秒|secs?|seconds?)?\s*[\]\)）】]"
)


def _range(suffix: str) -> str:
    return _RANGE.replace("?P<a>", f"?P<a{suffix}>").replace("?P<b>", f"?P<b{suffix}>")


_SHOT_MARK = re.compile(
    rf"(?:\bshot\s*#?\s*(?P<en>\d+)\s*(?:{_RANGE}\s*[:：]?|[:：])"  # Shot 1 [0-3 s]:  /  Shot 1:
    rf"|第\s*(?P<cn1>\d+|[{_CN_DIGITS}]+)\s*个?\s*镜头\s*(?:{_range('1')})?\s*[:：]?"  # 第1个镜头[0-3秒]
    rf"|镜头\s*(?P<cn2>\d+|[{_CN_DIGITS}]+)\s*(?:{_range('2')})?\s*[:：]?)",  # 镜头1 [0-3秒]：
    re.IGNORECASE,
)
_SENTENCE_END = re.compile(r"(?<=[。！？；!?;])\s*|(?<=[.])\s+")


def _cn_number(s: str) -> int:
    if s.isdigit():
        return int(s)
    digits = {c: i for i, c in enumerate(_CN_DIGITS)}
    if s == "十":
        return 10
    if s.startswith("十"):
        return 10 + digits.get(s[1:], 0)
    if "十" in s:
        tens, _, ones = s.partition("十")
        return digits.get(tens, 1) * 10 + (digits.get(ones, 0) if ones else 0)
    return digits.get(s, 0)


def _clean_text(s: str) -> str:
    """Collapse whitespace; drop separators left around a marker (keep sentence-final punctuation)."""
    s = re.sub(r"\s+", " ", s).strip()
    s = s.lstrip(" ,，;；:：.。、-—")
    return s.rstrip(" ,，;；:：、-—")


def parse_shots(prompt: str, duration: float, shot_type: str = "single") -> list[Shot]:
    """Split a prompt into timed shots.

    Recognises markers such as "Shot 1 [0-3 s]:", "Shot 2:", "镜头1 [0-3秒]：" and "第1个镜头[0-3秒]".
    Time ranges are honoured (each shot runs until the next one starts) and scaled to `duration`
    when they do not fit it; shots without usable ranges share the video equally. Without markers
    the whole prompt is one shot, or for shot_type "multi" its sentences are spread over 2-3 shots.
    """
    prompt = prompt or ""
    marks = list(_SHOT_MARK.finditer(prompt))
    if marks:
        preamble = _clean_text(prompt[: marks[0].start()])
        texts, numbers, ranges = [], [], []
        for k, m in enumerate(marks):
            end = marks[k + 1].start() if k + 1 < len(marks) else len(prompt)
            texts.append(_clean_text(prompt[m.end() : end]))
            number = m.group("en") or m.group("cn1") or m.group("cn2")
            numbers.append(_cn_number(number) or k + 1)
            a = m.group("a") or m.group("a1") or m.group("a2")
            b = m.group("b") or m.group("b1") or m.group("b2")
            ranges.append((float(a), float(b)) if a is not None and b is not None else None)
        if preamble:
            texts[0] = _join(preamble, texts[0])
        starts = _shot_starts(ranges, duration)
        shots = []
        for k in range(len(marks)):
            end = starts[k + 1] if k + 1 < len(marks) else float(duration)
            shots.append(Shot(numbers[k], starts[k], end, texts[k] or "(no description)"))
        return shots

    text = _clean_text(prompt) or "(no prompt)"
    if shot_type == "multi":
        sentences = [s.strip() for s in _SENTENCE_END.split(prompt) if s and s.strip()]
        if len(sentences) >= 2:
            groups = _group_sentences(sentences, min(3, len(sentences)))
            cut = duration / len(groups)
            return [Shot(k + 1, k * cut, (k + 1) * cut if k + 1 < len(groups) else float(duration), g)
                    for k, g in enumerate(groups)]
    return [Shot(1, 0.0, float(duration), text)]


def shot_context(prompt: str) -> str:
    """The text every shot shares: what comes before the first shot marker (subject, setting, style),
    cleaned as the shots' texts are; empty when the prompt has no markers or nothing before them."""
    mark = _SHOT_MARK.search(prompt or "")
    return _clean_text(prompt[: mark.start()]) if mark else ""


def has_shot_markers(prompt: str) -> bool:
    """Whether the prompt writes its own shots ("Shot 1:", "镜头1：", ...): they win over a rewriter's."""
    return _SHOT_MARK.search(prompt or "") is not None


def timed_shots(shots: list[tuple[str, float]], duration: float) -> list[Shot]:
    """A shot list as (text, seconds) in order, as Shots with cumulative start and end; the last shot
    ends at `duration`."""
    out, start = [], 0.0
    for k, (text, seconds) in enumerate(shots):
        end = float(duration) if k + 1 == len(shots) else min(start + seconds, float(duration))
        out.append(Shot(k + 1, start, end, text))
        start = end
    return out


def _join(a: str, b: str) -> str:
    """Join two pieces of prompt text; no space between CJK pieces."""
    if not a or not b:
        return a or b
    if re.search(r"[\u3000-\u9fff\uff00-\uffef]$", a) or re.match(r"[\u3000-\u9fff\uff00-\uffef]", b):
        return a + b
    return f"{a} {b}"


def _shot_starts(ranges: list[tuple[float, float] | None], duration: float) -> list[float]:
    n = len(ranges)
    equal = [duration * k / n for k in range(n)]
    if any(r is None or r[1] <= r[0] for r in ranges):
        return equal
    starts = [r[0] for r in ranges]
    if any(b < a for a, b in itertools.pairwise(starts)):
        return equal
    last_end = ranges[-1][1]
    scale = duration / last_end if last_end > 0 else 1.0
    if abs(last_end - duration) < 1e-6:
        scale = 1.0
    out = [0.0] + [s * scale for s in starts[1:]]
    return [min(s, duration) for s in out]


def _group_sentences(sentences: list[str], k: int) -> list[str]:
    total = sum(len(s) for s in sentences)
    groups: list[list[str]] = [[]]
    acc = 0
    for idx, s in enumerate(sentences):
        remaining_sentences = len(sentences) - idx
        remaining_groups = k - len(groups)
        full = acc >= total * len(groups) / k or remaining_sentences <= remaining_groups
        if groups[-1] and full and len(groups) < k:
            groups.append([])
        groups[-1].append(s)
        acc += len(s)
    out = []
    for g in groups:
        text = ""
        for sentence in g:
            text = _join(text, sentence)
        if text:
            out.append(text)
    return out

