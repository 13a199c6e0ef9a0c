"""The public Wan models and what each accepts: one table, checkable line by line against the seeds.

Source: section 3 of ../shared/spec/dashscope-video-api.md (model capability matrix), which
distils the seed documents S0-S4. Where the spec and the seeds disagree the seeds win; the one
such case is wan2.6-t2v's durations (S3 says integer 2-15).

Each row is a `ModelSpec`. Nothing else in wanserve hard-codes a model name: the request layer
reads limits and defaults from here, the API reads the endpoint, `wanserve models` prints it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Endpoint = Literal["video-generation", "image2video"]
Kind = Literal["t2v", "i2v", "kf2v", "wan27"]
# How a model's sound works: "silent" (no audio track); "auto" (sound generated; audio_url replaces
# it); "auto_switch" (like auto, plus parameters.audio=false for a silent video); "media" (wan2.7:
# auto unless a driving_audio item is given).
Audio = Literal["silent", "auto", "auto_switch", "media"]
# Which `usage` keys a SUCCEEDED task reports (contract section 5.2).
UsageFamily = Literal["legacy_size", "legacy_standard", "v26", "v27"]

RESOLUTION_PIXELS = {"480P": 832 * 480, "720P": 1280 * 720, "1080P": 1920 * 1080}

T2V_SIZES = {
    "480P": ("832*480", "480*832", "624*624"),
    "720P": ("1280*720", "720*1280", "960*960", "1088*832", "832*1088"),
    "1080P": ("1920*1080", "1080*1920", "1440*1440", "1632*1248", "1248*1632"),
}

I2V_TEMPLATES = (
    "squish", "rotation", "poke", "inflate", "dissolve", "melt", "icecream", "flying", "rose",
    "crystalrose", "carousel", "singleheart", "dance1", "dance2", "dance3", "dance4", "dance5",
    "mermaid", "graduation", "dragon", "money", "jellyfish", "pupil", "hug", "frenchkiss", "coupleheart",
)
KF2V_TEMPLATES = ("hanfu-1", "hufu-1", "solaron", "magazine", "mech1", "mech2")


@dataclass(frozen=True)
class ModelSpec:
    name: str
    kind: Kind
    endpoint: Endpoint
    resolutions: tuple[str, ...]  # tiers; for t2v, the tiers whose sizes are allowed
    default_resolution: str
    durations: tuple[int, ...]
    default_duration: int
    audio: Audio
    prompt_max: int
    usage: UsageFamily
    default_size: str | None = None  # t2v only
    multi_shot: bool = False  # parameters.shot_type honoured
    templates: tuple[str, ...] = ()
    returns_actual_prompt: bool = False  # output.actual_prompt when prompt_extend is true
    aliases: tuple[str, ...] = ()

    @property
    def sizes(self) -> tuple[str, ...]:
        return tuple(s for tier in self.resolutions for s in T2V_SIZES[tier])

    @property
    def accepts_audio_url(self) -> bool:
        return self.audio in ("auto", "auto_switch")

    @property
    def image_limits(self) -> Literal["legacy", "wan27"]:
        return "wan27" if self.kind == "wan27" else "legacy"


def _range(lo: int, hi: int) -> tuple[int, ...]:
    return tuple(range(lo, hi + 1))


NEG_PROMPT_MAX = 500

MODELS: tuple[ModelSpec, ...] = (
    # Each row lays out the positional fields in the same three groups:
    # ModelSpec(name, kind, endpoint,
    #           tiers, default tier, durations, default duration (s),
    #           audio, prompt max (chars), usage family,
    #           keyword extras: default_size, multi_shot, templates, returns_actual_prompt, aliases)
    ModelSpec("wan2.7-i2v", "wan27", "video-generation",
              ("720P", "1080P"), "1080P", _range(2, 15), 5,
              "media", 5000, "v27",
              aliases=("wan2.7-i2v-2026-04-25",)),
    ModelSpec("wan2.6-t2v", "t2v", "video-generation",
              ("720P", "1080P"), "1080P", _range(2, 15), 5,
              "auto", 1500, "v26",
              default_size="1920*1080", multi_shot=True),
    ModelSpec("wan2.5-t2v-preview", "t2v", "video-generation",
              ("480P", "720P", "1080P"), "1080P", (5, 10), 5,
              "auto", 1500, "legacy_size",
              default_size="1920*1080", returns_actual_prompt=True),
    ModelSpec("wan2.2-t2v-plus", "t2v", "video-generation",
              ("480P", "1080P"), "1080P", (5,), 5,
              "silent", 800, "legacy_size",
              default_size="1920*1080", returns_actual_prompt=True),
    ModelSpec("wanx2.1-t2v-turbo", "t2v", "video-generation",
              ("480P", "720P"), "720P", (5,), 5,
              "silent", 800, "legacy_size",
              default_size="1280*720", returns_actual_prompt=True, aliases=("wan2.1-t2v-turbo",)),
    ModelSpec("wanx2.1-t2v-plus", "t2v", "video-generation",
              ("720P",), "720P", (5,), 5,
              "silent", 800, "legacy_size",
              default_size="1280*720", returns_actual_prompt=True, aliases=("wan2.1-t2v-plus",)),
    ModelSpec("wan2.6-i2v-flash", "i2v", "video-generation",
              ("720P", "1080P"), "1080P", _range(2, 15), 5,
              "auto_switch", 1500, "v26",
              multi_shot=True),
    ModelSpec("wan2.6-i2v", "i2v", "video-generation",
              ("720P", "1080P"), "1080P", _range(2, 15), 5,
              "auto", 1500, "v26",
              multi_shot=True),
    ModelSpec("wan2.6-i2v-us", "i2v", "video-generation",
              ("720P", "1080P"), "1080P", (5, 10, 15), 5,
              "auto", 1500, "v26",
              multi_shot=True),
    ModelSpec("wan2.5-i2v-preview", "i2v", "video-generation",
              ("480P", "720P", "1080P"), "1080P", (5, 10), 5,
              "auto", 1500, "legacy_standard",
              returns_actual_prompt=True),
    ModelSpec("wan2.2-i2v-flash", "i2v", "video-generation",
              ("480P", "720P", "1080P"), "720P", (5,), 5,
              "silent", 800, "legacy_standard",
              returns_actual_prompt=True),
    ModelSpec("wan2.2-i2v-plus", "i2v", "video-generation",
              ("480P", "1080P"), "1080P", (5,), 5,
              "silent", 800, "legacy_standard",
              returns_actual_prompt=True),
    ModelSpec("wanx2.1-i2v-turbo", "i2v", "video-generation",
              ("480P", "720P"), "720P", (3, 4, 5), 5,
              "silent", 800, "legacy_standard",
              templates=I2V_TEMPLATES, returns_actual_prompt=True, aliases=("wan2.1-i2v-turbo",)),
    ModelSpec("wanx2.1-i2v-plus", "i2v", "video-generation",
              ("720P",), "720P", (5,), 5,
              "silent", 800, "legacy_standard",
              templates=I2V_TEMPLATES, returns_actual_prompt=True, aliases=("wan2.1-i2v-plus",)),
    ModelSpec("wan2.2-kf2v-flash", "kf2v", "image2video",
              ("480P", "720P", "1080P"), "720P", (5,), 5,
              "silent", 800, "legacy_standard",
              returns_actual_prompt=True),
    ModelSpec("wanx2.1-kf2v-plus", "kf2v", "image2video",
              ("720P",), "720P", (5,), 5,
              "silent", 800, "legacy_standard",
              templates=KF2V_TEMPLATES, returns_actual_prompt=True, aliases=("wan2.1-kf2v-plus",)),
)

_BY_NAME: dict[str, ModelSpec] = {n: m for m in MODELS for n in (m.name, *m.aliases)}


def find_model(name: str) -> ModelSpec | None:
    """The spec for a public model name or any of its aliases (wanx2.1-*/wan2.1-*, dated snapshots)."""
    return _BY_NAME.get(name)


def canonical_name(name: str) -> str:
    """The catalog's own name for `name` (an alias or dated snapshot folded in); unknown names as they are."""
    spec = _BY_NAME.get(name)
    return spec.name if spec is not None else name


def all_names() -> list[str]:
    return list(_BY_NAME)


def image_output_size(width: int, height: int, resolution: str) -> tuple[int, int]:
    """Output size for an image-driven task: keep the input's aspect ratio, scale to the tier's pixel
    count, floor each side to a multiple of 16 (contract 4.2; reproduces 750x1000 @ 720P -> 816x1104)."""
    scale = (RESOLUTION_PIXELS[resolution] / (width * height)) ** 0.5
    return max(16, 16 * int(width * scale // 16)), max(16, 16 * int(height * scale // 16))


def parse_size(size: str) -> tuple[int, int]:
    w, h = size.split("*")
    return int(w), int(h)


def size_tier(size: str) -> str:
    return next(tier for tier, sizes in T2V_SIZES.items() if size in sizes)
