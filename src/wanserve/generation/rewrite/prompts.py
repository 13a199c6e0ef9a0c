"""wanserve's own system prompts for prompt rewriting, in Chinese and English (chosen by the caller's
prompt), and the checks on a model's reply.

Single-shot tasks (t2v, i2v, kf2v) ask for one rewritten prompt as plain text. A multi-shot task asks for
a JSON shot list, {"shots": [{"text": ..., "seconds": ...}, ...]}, whose seconds add up to the video's
duration; `parse_reply` repairs the seconds (missing or non-positive ones share what is left, then all are
scaled to the duration) and composes the prompt the engine gets from the shots.
"""

from __future__ import annotations

import json
import re
from typing import Any

from .base import Kind, Rewrite, RewriteError

MAX_PROMPT_CHARS = 2000  # a longer reply is cut here (the hosted service caps prompts at 800-2000 chars)
MAX_SHOTS = 8

_CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")
_WORD = re.compile(r"[A-Za-z]+")


def is_chinese(text: str) -> bool:
    """Whether a prompt is written in Chinese: at least as many CJK ideographs as Latin words."""
    cjk = len(_CJK.findall(text or ""))
    return cjk > 0 and cjk >= len(_WORD.findall(text or ""))


_EN_COMMON = (
    "Keep everything the user asked for: subjects, their number, actions, text to show, style, camera "
    "wishes. Do not add people, brands or story turns the user did not imply. Write in English, in the "
    "present tense, as one paragraph of 60 to 150 words. Reply with the rewritten prompt only: no title, "
    "no quotes, no explanation."
)
_ZH_COMMON = (
    "保留用户提出的一切：主体及其数量、动作、需要出现的文字、风格和镜头要求。不要加入用户没有暗示的人物、品牌或情节转折。"
    "用中文、现在时，写成一段 80 到 200 字的描述。只回复改写后的提示词：不要标题、引号或解释。"
)

SYSTEM: dict[str, dict[str, str]] = {
    "en": {
        "t2v": (
            "You turn a short request into a detailed prompt for a text-to-video model. Describe the main "
            "subject's look, what it does over the clip, the setting, the lighting and time of day, the "
            "camera (shot size, angle, movement) and the visual style. " + _EN_COMMON
        ),
        "i2v": (
            "You write the prompt for an image-to-video model that animates the given first frame. The "
            "frame already fixes the subject, the setting and the style: do not describe them anew or "
            "change them. Describe the motion: what moves and how, how the camera moves, what changes "
            "over the clip. " + _EN_COMMON
        ),
        "kf2v": (
            "You write the prompt for a video model that moves from a given first frame to a given last "
            "frame. Describe a natural, continuous transition between the two: how the subject and the "
            "camera move to get from the first picture to the last, without cuts. " + _EN_COMMON
        ),
        "multi": (
            "You plan a multi-shot video for a video model. From the user's request write a short "
            "sequence of shots that tells it with cuts between them. Each shot describes its subject, "
            "action, setting and camera in one or two sentences, and repeats the main subject's look so "
            "that it stays the same across shots. Keep everything the user asked for and invent no new "
            "story. Give each shot a length in seconds; the lengths must add up to exactly the duration "
            "given. Use 2 to {max_shots} shots, none shorter than 1 second. Reply with JSON only, in "
            'this form: {{"shots": [{{"text": "...", "seconds": 3}}, ...]}}. Write the texts in English.'
        ),
    },
    "zh": {
        "t2v": (
            "你把用户的简短需求改写成文生视频模型的详细提示词。描述主体的外观、它在片段中的动作、场景、光线与时间、"
            "镜头（景别、角度、运动）以及画面风格。" + _ZH_COMMON
        ),
        "i2v": (
            "你为图生视频模型写提示词，模型会让给定的首帧动起来。首帧已经确定了主体、场景和风格：不要重新描述或改变它们。"
            "描述运动：什么在动、怎样动，镜头如何运动，片段中发生了什么变化。" + _ZH_COMMON
        ),
        "kf2v": (
            "你为首尾帧生视频模型写提示词，视频从给定的首帧过渡到给定的尾帧。描述两者之间自然、连续、不切镜的过渡："
            "主体和镜头如何运动，才能从第一幅画面到达最后一幅画面。" + _ZH_COMMON
        ),
        "multi": (
            "你为视频模型策划一个多镜头视频。根据用户的需求，写出一组用剪切衔接、讲述这件事的镜头。每个镜头用一两句话"
            "描述主体、动作、场景和镜头，并重复主体的外观，使它在各镜头中保持一致。保留用户提出的一切，不要编造新情节。"
            "为每个镜头给出时长（秒），所有时长之和必须正好等于给定的总时长。"
            "使用 2 到 {max_shots} 个镜头，每个不短于 1 秒。"
            '只回复 JSON，格式如下：{{"shots": [{{"text": "……", "seconds": 3}}, ……]}}。镜头描述用中文。'
        ),
    },
}


def language(prompt: str) -> str:
    return "zh" if is_chinese(prompt) else "en"


def messages(kind: Kind, prompt: str, duration: float, shot_type: str) -> tuple[str, str]:
    """The system prompt and the user message for one rewrite."""
    lang = language(prompt)
    if shot_type == "multi":
        system = SYSTEM[lang]["multi"].format(max_shots=max(2, min(MAX_SHOTS, int(duration))))
        seconds = _seconds_text(duration)
        user = (f"总时长：{seconds} 秒\n需求：{prompt}" if lang == "zh"
                else f"Duration: {seconds} seconds\nRequest: {prompt}")
        return system, user
    return SYSTEM[lang][kind], prompt


def parse_reply(reply: str, prompt: str, duration: float, shot_type: str) -> Rewrite:
    """The rewrite a reply gives; RewriteError when it gives none usable."""
    if shot_type == "multi":
        shots = parse_shot_list(reply, duration)
        return Rewrite(compose(shots, language(prompt)), shots)
    text = _strip(reply)
    if not text:
        raise RewriteError("the rewriter's reply was empty")
    return Rewrite(text[:MAX_PROMPT_CHARS])


def parse_shot_list(reply: str, duration: float) -> list[tuple[str, float]]:
    """The (text, seconds) shots of a JSON reply, their seconds repaired to add up to `duration`."""
    data = _json_in(reply)
    items = data.get("shots") if isinstance(data, dict) else data
    if not isinstance(items, list):
        raise RewriteError("the rewriter's reply has no JSON shot list")
    shots: list[tuple[str, float | None]] = []
    for item in items:
        if isinstance(item, str):
            item = {"text": item}
        if not isinstance(item, dict):
            continue
        text = item.get("text") or item.get("description") or item.get("prompt")
        if not isinstance(text, str) or not text.strip():
            continue
        seconds = item.get("seconds", item.get("duration"))
        seconds = float(seconds) if isinstance(seconds, (int, float)) and not isinstance(seconds, bool) \
            and 0 < seconds < 1e6 else None
        shots.append((" ".join(text.split())[:MAX_PROMPT_CHARS], seconds))
    if not shots:
        raise RewriteError("the rewriter's shot list has no usable shot")
    shots = shots[:max(1, min(MAX_SHOTS, int(duration)))]
    return repair_seconds(shots, duration)


def repair_seconds(shots: list[tuple[str, float | None]], duration: float) -> list[tuple[str, float]]:
    """Shots whose seconds add up to `duration`: missing ones share equally what the given ones leave (or
    an equal part if they leave nothing), then all are scaled to the duration."""
    given = sum(s for _, s in shots if s is not None)
    missing = [k for k, (_, s) in enumerate(shots) if s is None]
    if missing:
        left = duration - given
        share = left / len(missing) if left > 0 else duration / len(shots)
        shots = [(t, share if s is None else s) for t, s in shots]
    total = sum(s for _, s in shots if s is not None)
    scale = duration / total
    out = [(t, round((s or 0.0) * scale, 3)) for t, s in shots]
    drift = duration - sum(s for _, s in out)  # rounding: the last shot takes it
    out[-1] = (out[-1][0], round(out[-1][1] + drift, 3))
    return out


def compose(shots: list[tuple[str, float]], lang: str) -> str:
    """The prompt text of a shot list, with the markers generation.shots reads back."""
    parts, start = [], 0.0
    for k, (text, seconds) in enumerate(shots, 1):
        end = start + seconds
        a, b = _seconds_text(start), _seconds_text(end)
        parts.append(f"镜头{k} [{a}-{b}秒]：{text}" if lang == "zh" else f"Shot {k} [{a}-{b} s]: {text}")
        start = end
    return ("" if lang == "zh" else " ").join(parts)


def _seconds_text(value: float) -> str:
    return f"{value:g}" if abs(value - round(value, 2)) < 1e-9 else f"{value:.2f}"


_FENCE = re.compile(r"^```[a-zA-Z]*\s*|\s*```$")
_LABEL = re.compile(r"^(rewritten prompt|prompt|改写后的提示词|提示词)\s*[:：]\s*", re.IGNORECASE)


def _strip(reply: str) -> str:
    text = _FENCE.sub("", (reply or "").strip()).strip()
    text = _LABEL.sub("", text).strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'“”「":
        text = text[1:-1].strip()
    return text


def _json_in(reply: str) -> Any:
    """The first JSON object or array in a reply (a model may wrap it in a fence or a sentence)."""
    text = _FENCE.sub("", (reply or "").strip()).strip()
    decoder = json.JSONDecoder()
    for k, ch in enumerate(text):
        if ch in "{[":
            try:
                return decoder.raw_decode(text, k)[0]
            except ValueError:
                continue
    raise RewriteError("the rewriter's reply is not JSON")
