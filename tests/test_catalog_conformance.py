"""The model catalog against the contract, model by model (contract sections 2, 3, 4, 5.2).

The expected table below is transcribed by hand from section 3 of the contract and the seed
documents, so a reader can check each line against them; the tests then hold the catalog
(`wanserve.catalog.models.MODELS`) and the running server to it:
- the catalog itself, line by line;
- at the HTTP level, for every model: defaults filled, one allowed and one refused value for the
  resolution (or t2v size) and for the duration (refused: 400 InvalidParameter naming the allowed
  values, no task created);
- the rendered output, for every model: H.264, 30 fps, duration*30 frames, the contract's size
  (t2v: exactly `size`; image-driven: the floor-16 rule of section 4.2, computed here), `usage`
  keys by family (5.2) and `actual_prompt` only for wan2.5 and older;
- the normalisation rules of section 2, one test each.

HTTP-level tests share one worker-less server per module (nothing is rendered, nothing fetched);
the output tests share one two-worker server that renders one small task per model in parallel.
"""

from __future__ import annotations

import functools
import http.server
import math
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from wanserve.catalog.models import MODELS, image_output_size
from wanserve.tasks.schema import tasks

from .conftest import MediaServer, Probe, Server, download, image_bytes, probe_video, running_server


def _ints(lo: int, hi: int) -> tuple[int, ...]:
    return tuple(range(lo, hi + 1))


# -- the contract, transcribed --------------------------------------------------------------------

# Contract 4.1: the t2v `size` enumerations per tier.
T2V_SIZES = {
    "480P": ("832*480", "480*832", "624*624"),
    "720P": ("1280*720", "720*1280", "960*960", "1088*832", "832*1088"),
    "1080P": ("1920*1080", "1080*1920", "1440*1440", "1632*1248", "1248*1632"),
}
# Contract 4.2: target pixel count per tier for image-driven models.
TIER_PIXELS = {"480P": 832 * 480, "720P": 1280 * 720, "1080P": 1920 * 1080}

VG, I2V_EP = "video-generation", "image2video"


@dataclass(frozen=True)
class Row:
    """One line of the contract's section-3 table (plus the 5.2 usage family it reports)."""

    name: str
    endpoint: str  # create endpoint (1.1)
    kind: str  # t2v | i2v (first frame) | kf2v (first+last frame) | wan27 (media array)
    tiers: tuple[str, ...]  # resolution tiers; for t2v the tiers whose sizes are allowed
    default_tier: str
    durations: tuple[int, ...]
    default_duration: int
    # silent: never sound; auto: generated sound, audio_url replaces it; auto_switch: auto plus
    # parameters.audio=false for silence (wan2.6-i2v-flash only); media: auto unless driving_audio.
    audio: str
    prompt_max: int
    default_size: str | None  # t2v only (2.3)
    multi_shot: bool  # parameters.shot_type honoured (wan2.6 only)
    templates: bool  # input.template supported
    usage: str  # 5.2 family: legacy_size | legacy_standard | v26 | v27
    actual_prompt: bool  # output.actual_prompt with prompt_extend=true (wan2.5 and older)
    aliases: tuple[str, ...] = ()


S2_15 = _ints(2, 15)  # wan2.6-t2v: seed S3 ("整数时长(2–15 秒)") wins over the 2025-12 doc's 5/10/15
CONTRACT: tuple[Row, ...] = (
    #   name                  endpoint kind     tiers                       default  durations     dflt
    #   audio          prompt size         multi  tmpl   usage              actual
    Row("wan2.7-i2v",         VG,      "wan27", ("720P", "1080P"),          "1080P", S2_15,        5,
        "media",       5000,  None,        False, False, "v27",             False,
        aliases=("wan2.7-i2v-2026-04-25",)),
    Row("wan2.6-t2v",         VG,      "t2v",   ("720P", "1080P"),          "1080P", S2_15,        5,
        "auto",        1500,  "1920*1080", True,  False, "v26",             False),
    Row("wan2.5-t2v-preview", VG,      "t2v",   ("480P", "720P", "1080P"),  "1080P", (5, 10),      5,
        "auto",        1500,  "1920*1080", False, False, "legacy_size",     True),
    Row("wan2.2-t2v-plus",    VG,      "t2v",   ("480P", "1080P"),          "1080P", (5,),         5,
        "silent",       800,  "1920*1080", False, False, "legacy_size",     True),
    Row("wanx2.1-t2v-turbo",  VG,      "t2v",   ("480P", "720P"),           "720P",  (5,),         5,
        "silent",       800,  "1280*720",  False, False, "legacy_size",     True,
        aliases=("wan2.1-t2v-turbo",)),
    Row("wanx2.1-t2v-plus",   VG,      "t2v",   ("720P",),                  "720P",  (5,),         5,
        "silent",       800,  "1280*720",  False, False, "legacy_size",     True,
        aliases=("wan2.1-t2v-plus",)),
    Row("wan2.6-i2v-flash",   VG,      "i2v",   ("720P", "1080P"),          "1080P", S2_15,        5,
        "auto_switch", 1500,  None,        True,  False, "v26",             False),
    Row("wan2.6-i2v",         VG,      "i2v",   ("720P", "1080P"),          "1080P", S2_15,        5,
        "auto",        1500,  None,        True,  False, "v26",             False),
    Row("wan2.6-i2v-us",      VG,      "i2v",   ("720P", "1080P"),          "1080P", (5, 10, 15),  5,
        "auto",        1500,  None,        True,  False, "v26",             False),
    Row("wan2.5-i2v-preview", VG,      "i2v",   ("480P", "720P", "1080P"),  "1080P", (5, 10),      5,
        "auto",        1500,  None,        False, False, "legacy_standard", True),
    Row("wan2.2-i2v-flash",   VG,      "i2v",   ("480P", "720P", "1080P"),  "720P",  (5,),         5,
        "silent",       800,  None,        False, False, "legacy_standard", True),
    Row("wan2.2-i2v-plus",    VG,      "i2v",   ("480P", "1080P"),          "1080P", (5,),         5,
        "silent",       800,  None,        False, False, "legacy_standard", True),
    Row("wanx2.1-i2v-turbo",  VG,      "i2v",   ("480P", "720P"),           "720P",  (3, 4, 5),    5,
        "silent",       800,  None,        False, True,  "legacy_standard", True,
        aliases=("wan2.1-i2v-turbo",)),
    Row("wanx2.1-i2v-plus",   VG,      "i2v",   ("720P",),                  "720P",  (5,),         5,
        "silent",       800,  None,        False, True,  "legacy_standard", True,
        aliases=("wan2.1-i2v-plus",)),
    Row("wan2.2-kf2v-flash",  I2V_EP,  "kf2v",  ("480P", "720P", "1080P"),  "720P",  (5,),         5,
        "silent",       800,  None,        False, False, "legacy_standard", True),
    Row("wanx2.1-kf2v-plus",  I2V_EP,  "kf2v",  ("720P",),                  "720P",  (5,),         5,
        "silent",       800,  None,        False, True,  "legacy_standard", True,
        aliases=("wan2.1-kf2v-plus",)),
)  # fmt: skip
BY_NAME = {r.name: r for r in CONTRACT}
CATALOG_NAMES = [m.name for m in MODELS]
ALIASES = [(alias, r.name) for r in CONTRACT for alias in r.aliases]


def row(name: str) -> Row:
    """The contract line for a model name or one of its aliases."""
    name = dict(ALIASES).get(name, name)
    if name not in BY_NAME:
        pytest.fail(f"{name} is in the catalog but not in the contract's section-3 table")
    return BY_NAME[name]


def catalog_line(name: str) -> Row:
    m = next(m for m in MODELS if m.name == name)
    return Row(m.name, m.endpoint, m.kind, m.resolutions, m.default_resolution, m.durations,
               m.default_duration, m.audio, m.prompt_max, m.default_size, m.multi_shot, bool(m.templates),
               m.usage, m.returns_actual_prompt, m.aliases)


def allowed_sizes(r: Row) -> tuple[str, ...]:
    return tuple(s for tier in r.tiers for s in T2V_SIZES[tier])


def tier_of(size: str) -> str:
    return next(t for t, sizes in T2V_SIZES.items() if size in sizes)


def area(size: str) -> int:
    w, h = size.split("*")
    return int(w) * int(h)


def lowest_tier(r: Row) -> str:
    return min(r.tiers, key=TIER_PIXELS.__getitem__)


def smallest_size(r: Row) -> str:
    return min(allowed_sizes(r), key=area)


def expected_image_output(width: int, height: int, tier: str) -> tuple[int, int]:
    """Contract 4.2, written out: scale to the tier's pixel count, floor each side to a multiple of 16."""
    s = math.sqrt(TIER_PIXELS[tier] / (width * height))
    return 16 * math.floor(width * s / 16), 16 * math.floor(height * s / 16)


# -- servers ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server without workers: tasks stay PENDING, media URLs are never fetched."""
    with running_server(tmp_path_factory.mktemp("data"), workers=0) as server:
        yield server


def task_count(server: Server) -> int:
    with server.services.db.begin() as conn:
        return conn.execute(select(func.count()).select_from(tasks)).scalar_one()


def stored(server: Server, r: httpx.Response) -> dict[str, Any]:
    """The normalised request stored with the task a 200 create made."""
    assert r.status_code == 200, r.text
    return server.services.store.get(r.json()["output"]["task_id"])["request"]


def refused(server: Server, body: dict[str, Any], endpoint: str = VG, code: str = "InvalidParameter") -> str:
    """Posts `body`, expects a 400 with `code` and no task created; returns the message."""
    before = task_count(server)
    r = server.create(body, endpoint=endpoint)
    assert r.status_code == 400, r.text
    err = r.json()
    assert set(err) == {"request_id", "code", "message"} and err["code"] == code, err
    assert task_count(server) == before
    return err["message"]


IMG, IMG2 = "https://example.com/first.png", "https://example.com/last.png"
AUDIO = "https://example.com/voice.mp3"


def minimal_body(name: str, **parameters: Any) -> dict[str, Any]:
    """The smallest valid body for a model, per its kind."""
    inp: dict[str, Any] = {
        "t2v": {"prompt": "a cat"},
        "i2v": {"prompt": "a cat", "img_url": IMG},
        "kf2v": {"first_frame_url": IMG, "last_frame_url": IMG2},
        "wan27": {"prompt": "a cat", "media": [{"type": "first_frame", "url": IMG}]},
    }[row(name).kind]
    body: dict[str, Any] = {"model": name, "input": dict(inp)}
    if parameters:
        body["parameters"] = parameters
    return body


def endpoint_of(name: str) -> str:
    return row(name).endpoint


def names_durations(message: str, durations: tuple[int, ...]) -> bool:
    """The message names the allowed durations: every value, or both ends of a long integer range."""
    shown = (durations[0], durations[-1]) if durations == _ints(durations[0], durations[-1]) and len(
        durations) > 3 else durations
    return all(re.search(rf"(?<!\d){d}(?!\d)", message) for d in shown)


# -- 1. the catalog is the contract's table -----------------------------------------------------


def test_catalog_has_exactly_the_contract_models():
    assert sorted(CATALOG_NAMES) == sorted(BY_NAME)
    assert len(CATALOG_NAMES) == len(set(CATALOG_NAMES))


@pytest.mark.parametrize("name", list(BY_NAME))
def test_catalog_line_matches_contract_table(name):
    assert name in CATALOG_NAMES, f"{name} missing from the catalog"
    assert catalog_line(name) == BY_NAME[name]


@pytest.mark.parametrize("name", [r.name for r in CONTRACT if r.kind == "t2v"])
def test_t2v_sizes_are_the_contract_enumerations_of_the_allowed_tiers(name):
    spec = next(m for m in MODELS if m.name == name)
    assert spec.sizes == allowed_sizes(BY_NAME[name])
    assert BY_NAME[name].default_size in spec.sizes


def test_template_models_offer_the_seed_effects():
    by = {m.name: m for m in MODELS}
    assert "flying" in by["wanx2.1-i2v-turbo"].templates  # S1 effects example
    assert "flying" in by["wanx2.1-i2v-plus"].templates
    assert "hanfu-1" in by["wanx2.1-kf2v-plus"].templates  # S2


# -- 2. every model over HTTP: defaults, allowed and refused values ------------------------------


@pytest.mark.parametrize("name", CATALOG_NAMES)
def test_defaults_are_filled(api, name):
    r = row(name)
    req = stored(api, api.create(minimal_body(name), endpoint=r.endpoint))
    assert req["model"] == name and req["kind"] == r.kind
    assert req["duration"] == r.default_duration
    if r.kind == "t2v":
        assert req["size"] == r.default_size and req["resolution"] == tier_of(r.default_size)
    else:
        assert req["resolution"] == r.default_tier and req["size"] is None
    assert req["prompt_extend"] is True and req["watermark"] is False and req["shot_type"] == "single"
    assert req["sound"] == ("none" if r.audio == "silent" else "generate")
    assert 0 <= req["seed"] <= 2147483647


@pytest.mark.parametrize("name", CATALOG_NAMES)
def test_lowest_resolution_or_smallest_size_is_accepted(api, name):
    r = row(name)
    if r.kind == "t2v":
        size = smallest_size(r)
        req = stored(api, api.create(minimal_body(name, size=size), endpoint=r.endpoint))
        assert (req["size"], req["resolution"]) == (size, tier_of(size))
    else:
        tier = lowest_tier(r)
        req = stored(api, api.create(minimal_body(name, resolution=tier), endpoint=r.endpoint))
        assert req["resolution"] == tier


@pytest.mark.parametrize("name", CATALOG_NAMES)
def test_resolution_or_size_outside_the_model_list_is_refused_naming_the_allowed_values(api, name):
    r = row(name)
    if r.kind == "t2v":
        # a real size of a tier the model lacks, else (all tiers allowed) a size of no tier at all
        outside = [s for tier, sizes in T2V_SIZES.items() if tier not in r.tiers for s in sizes]
        message = refused(api, minimal_body(name, size=(outside or ["1000*1000"])[0]), r.endpoint)
        assert all(s in message for s in allowed_sizes(r)), message
    else:
        outside = [t for t in TIER_PIXELS if t not in r.tiers]
        message = refused(api, minimal_body(name, resolution=(outside or ["2160P"])[0]), r.endpoint)
        assert all(t in message for t in r.tiers), message


@pytest.mark.parametrize("name", CATALOG_NAMES)
def test_shortest_duration_is_accepted(api, name):
    r = row(name)
    req = stored(api, api.create(minimal_body(name, duration=min(r.durations)), endpoint=r.endpoint))
    assert req["duration"] == min(r.durations)


@pytest.mark.parametrize("name", CATALOG_NAMES)
def test_duration_outside_the_model_list_is_refused_naming_the_allowed_values(api, name):
    r = row(name)
    bad = next(d for d in (6, 16, 1, 11) if d not in r.durations)
    message = refused(api, minimal_body(name, duration=bad), r.endpoint)
    assert names_durations(message, r.durations), message


@pytest.mark.parametrize(("alias", "canonical"), ALIASES)
def test_alias_is_accepted_and_normalised_to_the_catalog_name(api, alias, canonical):
    body = {**minimal_body(canonical), "model": alias}
    r = api.create(body, endpoint=endpoint_of(canonical))
    req = stored(api, r)
    assert req["model"] == canonical and req["requested_model"] == alias
    assert api.services.store.get(r.json()["output"]["task_id"])["model"] == alias  # listed as spelled


# -- 3. rendered output, one small task per model ------------------------------------------------

FIRST_W, FIRST_H = 750, 1000  # the contract's 4.2 example input (3:4)
LAST_W, LAST_H = 1000, 750  # kf2v: the last frame may differ; the first decides the size
PROMPT = "一只小黑猫好奇地仰望天空 / a small black cat looks up at the sky"


@dataclass
class Rendered:
    row: Row
    duration: int
    tier: str
    size: tuple[int, int]  # what the contract says the output must be
    prompt_extend: bool
    body: dict[str, Any]  # the task query's body
    probe: Probe | None


def render_plan(row_: Row) -> tuple[dict[str, Any], int, str, tuple[int, int]]:
    """The cheapest task for a model: shortest duration, lowest tier / smallest size."""
    duration = min(row_.durations)
    if row_.kind == "t2v":
        size = smallest_size(row_)
        w, h = size.split("*")
        return {"size": size, "duration": duration}, duration, tier_of(size), (int(w), int(h))
    tier = lowest_tier(row_)
    return ({"resolution": tier, "duration": duration}, duration, tier,
            expected_image_output(FIRST_W, FIRST_H, tier))


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MediaServer]:
    root = tmp_path_factory.mktemp("media")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a, **k: None  # type: ignore[method-assign]
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield MediaServer(root, f"http://127.0.0.1:{httpd.server_address[1]}")
    httpd.shutdown()


EXTRA_NO_EXTEND = "wanx2.1-i2v-turbo"  # one more legacy task, with prompt_extend false


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory, media: MediaServer) -> Iterator[dict[str, Rendered]]:
    """Submits one task per catalog model (plus one with prompt_extend false) to a two-worker server
    at once, waits for all, and probes each video once."""
    first = media.put("first.png", image_bytes(FIRST_W, FIRST_H, seed=11))
    last = media.put("last.png", image_bytes(LAST_W, LAST_H, seed=12))
    inputs = {
        "t2v": {"prompt": PROMPT},
        "i2v": {"prompt": PROMPT, "img_url": first},
        "kf2v": {"prompt": PROMPT, "first_frame_url": first, "last_frame_url": last},
        "wan27": {"prompt": PROMPT, "media": [{"type": "first_frame", "url": first}]},
    }
    plans = [(name, True) for name in CATALOG_NAMES] + [(EXTRA_NO_EXTEND, False)]
    with running_server(tmp_path_factory.mktemp("data"), workers=2) as server:
        submitted = []
        for name, extend in plans:
            r = row(name)
            params, duration, tier, size = render_plan(r)
            body = {"model": name, "input": inputs[r.kind], "parameters": {**params, "prompt_extend": extend}}
            resp = server.create(body, endpoint=r.endpoint)
            assert resp.status_code == 200, resp.text
            submitted.append((name, extend, duration, tier, size, resp.json()["output"]["task_id"]))
        results: dict[str, Rendered] = {}
        for name, extend, duration, tier, size, task_id in submitted:
            body = server.wait(task_id, timeout=180)
            ok = body["output"]["task_status"] == "SUCCEEDED"
            probe = probe_video(download(body["output"]["video_url"])) if ok else None
            key = name if extend else f"{name}+no-extend"
            results[key] = Rendered(row(name), duration, tier, size, extend, body, probe)
        yield results


def succeeded(rendered: dict[str, Rendered], key: str) -> Rendered:
    result = rendered[key]
    assert result.body["output"]["task_status"] == "SUCCEEDED", result.body
    return result


@pytest.mark.slow
@pytest.mark.parametrize("name", CATALOG_NAMES)
def test_output_is_h264_30fps_with_duration_times_30_frames(rendered, name):
    result = succeeded(rendered, name)
    assert result.probe is not None
    assert (result.probe.codec, result.probe.fps) == ("h264", 30.0)
    assert result.probe.frames == result.duration * 30


@pytest.mark.slow
@pytest.mark.parametrize("name", CATALOG_NAMES)
def test_output_size_is_the_contract_size(rendered, name):
    """t2v: exactly `size`; image-driven: the first frame scaled to the tier, floored to 16 (4.2)."""
    result = succeeded(rendered, name)
    assert result.probe is not None
    assert (result.probe.width, result.probe.height) == result.size


@pytest.mark.slow
@pytest.mark.parametrize("name", CATALOG_NAMES)
def test_output_has_sound_unless_the_model_is_silent(rendered, name):
    result = succeeded(rendered, name)
    assert result.probe is not None
    has_audio = result.probe.audio_codec is not None
    assert has_audio is (result.row.audio != "silent")
    if has_audio:
        assert result.probe.audio_seconds == pytest.approx(result.duration, abs=0.1)


def expected_usage(result: Rendered) -> dict[str, Any]:
    """Contract 5.2, by family."""
    d, (w, h) = result.duration, result.size
    family = result.row.usage
    if family == "legacy_size":  # wan2.5 and older t2v
        return {"video_count": 1, "video_duration": d, "video_ratio": f"{w}*{h}"}
    if family == "legacy_standard":  # kf2v, wanx2.1 i2v (and the other pre-2.6 i2v models)
        return {"video_count": 1, "video_duration": d, "video_ratio": "standard"}
    usage = {"duration": d, "input_video_duration": 0, "output_video_duration": d, "video_count": 1,
             "SR": int(result.tier.rstrip("P"))}
    if family == "v26":
        usage["size"] = f"{w}*{h}"
    return usage


@pytest.mark.slow
@pytest.mark.parametrize("name", CATALOG_NAMES)
def test_usage_keys_follow_the_model_family(rendered, name):
    result = succeeded(rendered, name)
    assert result.body["usage"] == expected_usage(result)
    if "SR" in result.body["usage"]:
        assert type(result.body["usage"]["SR"]) is int  # an integer for Wan (5.2)


@pytest.mark.slow
@pytest.mark.parametrize("name", CATALOG_NAMES)
def test_actual_prompt_only_for_wan25_and_older_with_prompt_extend(rendered, name):
    result = succeeded(rendered, name)
    out = result.body["output"]
    assert out["orig_prompt"] == PROMPT
    if result.row.actual_prompt:
        assert isinstance(out.get("actual_prompt"), str) and out["actual_prompt"]
    else:
        assert "actual_prompt" not in out


@pytest.mark.slow
def test_no_actual_prompt_without_prompt_extend(rendered):
    out = succeeded(rendered, f"{EXTRA_NO_EXTEND}+no-extend").body["output"]
    assert "actual_prompt" not in out and out["orig_prompt"] == PROMPT


def test_floor16_rule_reproduces_the_documented_example():
    """The test's own transcription of 4.2 must reproduce the spec's examples before it judges anything."""
    assert expected_image_output(750, 1000, "720P") == (816, 1104)
    assert expected_image_output(1280, 720, "720P") == (1280, 720)
    assert expected_image_output(1000, 1000, "480P") == (624, 624)
    assert expected_image_output(1920, 1080, "1080P") == (1920, 1072)


@pytest.mark.parametrize("tier", list(TIER_PIXELS))
@pytest.mark.parametrize(("width", "height"), [(750, 1000), (1000, 750), (1280, 720), (720, 1280),
                                               (1024, 768), (2000, 360), (360, 2000), (999, 1001),
                                               (240, 1920), (8000, 1000)])
def test_image_driven_size_for_every_tier_follows_the_floor16_rule(tier, width, height):
    """The tiers and aspect ratios the render tests do not reach, checked on the sizing function."""
    assert image_output_size(width, height, tier) == expected_image_output(width, height, tier)


# -- 4. normalisation rules (contract section 2) -------------------------------------------------

LIMIT_MODELS = [("wan2.7-i2v", 5000), ("wan2.6-t2v", 1500), ("wan2.6-i2v-flash", 1500),
                ("wan2.5-t2v-preview", 1500), ("wan2.5-i2v-preview", 1500), ("wan2.2-t2v-plus", 800),
                ("wanx2.1-i2v-turbo", 800), ("wan2.2-kf2v-flash", 800)]


@pytest.mark.parametrize(("name", "limit"), LIMIT_MODELS)
def test_prompt_over_the_family_limit_is_truncated_counting_chinese_characters_as_one(api, name, limit):
    prompt = ("猫" * (limit - 3)) + "abcdefgh"  # crosses the limit inside the Latin tail
    body = minimal_body(name)
    body["input"]["prompt"] = prompt
    req = stored(api, api.create(body, endpoint=endpoint_of(name)))
    # N9: the stored prompt, which the task query shows as orig_prompt, is the truncated text
    assert req["prompt"] == prompt[:limit] and len(req["prompt"]) == limit


@pytest.mark.parametrize(("name", "limit"), LIMIT_MODELS[:3])
def test_prompt_at_exactly_the_limit_is_kept_whole(api, name, limit):
    body = minimal_body(name)
    body["input"]["prompt"] = "字" * limit
    assert stored(api, api.create(body, endpoint=endpoint_of(name)))["prompt"] == "字" * limit


def test_negative_prompt_is_truncated_at_500_characters(api):
    body = minimal_body("wan2.6-t2v")
    body["input"]["negative_prompt"] = "模糊" * 300
    assert stored(api, api.create(body))["negative_prompt"] == ("模糊" * 300)[:500]


WAN26 = [r.name for r in CONTRACT if r.multi_shot]


@pytest.mark.parametrize("name", WAN26)
def test_multi_shot_is_kept_on_wan26_with_prompt_extend(api, name):
    req = stored(api, api.create(minimal_body(name, shot_type="multi", prompt_extend=True)))
    assert req["shot_type"] == "multi"


@pytest.mark.parametrize("name", WAN26)
def test_multi_shot_becomes_single_on_wan26_without_prompt_extend(api, name):
    req = stored(api, api.create(minimal_body(name, shot_type="multi", prompt_extend=False)))
    assert req["shot_type"] == "single" and req["prompt_extend"] is False


@pytest.mark.parametrize("name", [n for n in CATALOG_NAMES if n not in WAN26])
def test_multi_shot_becomes_single_on_models_other_than_wan26(api, name):
    req = stored(api, api.create(minimal_body(name, shot_type="multi", prompt_extend=True),
                                 endpoint=endpoint_of(name)))
    assert req["shot_type"] == "single"


def test_shot_type_outside_single_and_multi_is_refused(api):
    assert "shot_type" in refused(api, minimal_body("wan2.6-t2v", shot_type="triple"))


def test_audio_false_on_wan26_i2v_flash_drops_audio_url(api):
    body = minimal_body("wan2.6-i2v-flash", audio=False)
    body["input"]["audio_url"] = AUDIO
    req = stored(api, api.create(body))
    assert req["sound"] == "none"
    assert [m["role"] for m in req["media"]] == ["first_frame"]


def test_audio_url_on_wan26_i2v_flash_is_used_when_audio_is_not_false(api):
    body = minimal_body("wan2.6-i2v-flash")
    body["input"]["audio_url"] = AUDIO
    req = stored(api, api.create(body))
    assert req["sound"] == "input"
    assert {"role": "audio", "url": AUDIO, "field": "input.audio_url"} in req["media"]


@pytest.mark.parametrize("name", ["wan2.6-i2v", "wan2.5-i2v-preview", "wan2.6-t2v"])
def test_audio_false_is_ignored_by_models_other_than_wan26_i2v_flash(api, name):
    body = minimal_body(name, audio=False)
    body["input"]["audio_url"] = AUDIO
    assert stored(api, api.create(body))["sound"] == "input"


@pytest.mark.parametrize("name", ["wan2.2-i2v-flash", "wanx2.1-t2v-turbo"])
def test_audio_url_is_ignored_by_silent_models(api, name):
    body = minimal_body(name)
    body["input"]["audio_url"] = AUDIO
    req = stored(api, api.create(body))
    assert req["sound"] == "none" and all(m["role"] != "audio" for m in req["media"])


@pytest.mark.parametrize(("name", "template"), [("wanx2.1-i2v-turbo", "flying"),
                                                ("wanx2.1-i2v-plus", "flying"),
                                                ("wan2.1-i2v-turbo", "rose")])
def test_template_task_ignores_the_prompt(api, name, template):
    body = minimal_body(name)
    body["input"].update(template=template, prompt="this prompt must be ignored")
    req = stored(api, api.create(body))
    assert req["template"] == template and req["prompt"] == ""


def test_kf2v_template_needs_only_the_first_frame(api):
    body = {"model": "wanx2.1-kf2v-plus", "input": {"template": "hanfu-1", "first_frame_url": IMG}}
    req = stored(api, api.create(body, endpoint=I2V_EP))
    assert req["template"] == "hanfu-1" and [m["role"] for m in req["media"]] == ["first_frame"]


def test_unknown_template_is_refused(api):
    body = minimal_body("wanx2.1-i2v-turbo")
    body["input"]["template"] = "no-such-effect"
    assert "no-such-effect" in refused(api, body)


def test_template_on_a_model_without_templates_is_refused(api):
    body = minimal_body("wan2.6-i2v")
    body["input"]["template"] = "flying"
    refused(api, body)


@pytest.mark.parametrize("seed", [-1, 2147483648, 10**20])
def test_seed_out_of_range_is_refused(api, seed):
    assert "seed" in refused(api, minimal_body("wan2.6-t2v", seed=seed))


@pytest.mark.parametrize("seed", [0, 12345, 2147483647])
def test_seed_in_range_is_kept(api, seed):
    assert stored(api, api.create(minimal_body("wan2.6-t2v", seed=seed)))["seed"] == seed


@pytest.mark.parametrize(("name", "given", "kept"), [("wan2.6-i2v", "720p", "720P"),
                                                     ("wan2.2-kf2v-flash", "480p", "480P"),
                                                     ("wan2.7-i2v", "1080p", "1080P")])
def test_lowercase_resolution_is_accepted(api, name, given, kept):
    req = stored(api, api.create(minimal_body(name, resolution=given), endpoint=endpoint_of(name)))
    assert req["resolution"] == kept


# Contract Appendix A: the 1.x SDK's wire bodies, with its injected keys (extend_prompt, function,
# prompt: null with a template).
SDK_BODIES = {
    "C13 t2v": (VG, {"model": "wan2.6-t2v",
                     "parameters": {"size": "1280*720", "duration": 15, "prompt_extend": True,
                                    "watermark": True, "shot_type": "multi"},
                     "input": {"prompt": "a detective", "extend_prompt": True,
                               "function": "video-synthesis"}}),
    "C09 template": (VG, {"model": "wanx2.1-i2v-turbo",
                          "parameters": {"watermark": True, "resolution": "720P"},
                          "input": {"prompt": None, "extend_prompt": True, "template": "flying",
                                    "function": "video-synthesis", "img_url": IMG}}),
    "C11 kf2v": (I2V_EP, {"model": "wanx2.1-kf2v-plus",
                          "parameters": {"prompt_extend": True, "resolution": "720P"},
                          "input": {"prompt": "a kitten", "extend_prompt": True,
                                    "function": "video-synthesis",
                                    "first_frame_url": IMG, "last_frame_url": IMG2}}),
    "C07 silent flash": (VG, {"model": "wan2.6-i2v-flash", "parameters": {
        "audio": False, "duration": 5, "seed": 12345, "prompt_extend": True, "watermark": True,
        "resolution": "720P"},
        "input": {"prompt": "一只猫在草地上奔跑", "extend_prompt": True, "function": "video-synthesis",
                  "img_url": IMG}}),
    "v2 wan2.7": (VG, {"model": "wan2.7-i2v", "input": {"prompt": "p", "media": [
        {"type": "first_frame", "url": IMG}, {"type": "last_frame", "url": IMG2}]},
        "parameters": {"audio_setting": "auto", "duration": 5, "resolution": "720P"}}),
}


@pytest.mark.parametrize("case", list(SDK_BODIES))
def test_sdk_wire_bodies_with_injected_keys_are_accepted(api, case):
    endpoint, body = SDK_BODIES[case]
    stored(api, api.create(body, endpoint=endpoint))


def test_template_call_with_null_prompt_stores_empty_prompt(api):
    endpoint, body = SDK_BODIES["C09 template"]
    req = stored(api, api.create(body, endpoint=endpoint))
    assert req["prompt"] == "" and req["template"] == "flying"


def test_unknown_input_and_parameters_keys_are_ignored(api):
    body = minimal_body("wan2.6-i2v", resolution="720P", no_such_parameter={"x": [1, 2]}, ratio="16:9")
    body["input"].update(no_such_input="?", reference_urls=["https://example.com/r.png"])
    body["unknown_top_level"] = True
    req = stored(api, api.create(body))
    assert req["resolution"] == "720P" and "no_such_input" not in req and "no_such_parameter" not in req


def media_items(*types: str) -> list[dict[str, str]]:
    urls = {"first_frame": IMG, "last_frame": IMG2, "driving_audio": AUDIO,
            "first_clip": "https://example.com/clip.mp4"}
    return [{"type": t, "url": urls.get(t, "https://example.com/x.bin")} for t in types]


def wan27(*types: str) -> dict[str, Any]:
    return {"model": "wan2.7-i2v", "input": {"prompt": "a cat", "media": media_items(*types)}}


WAN27_ACCEPTED = {
    ("first_frame",): ["first_frame"],
    ("first_frame", "driving_audio"): ["first_frame", "audio"],
    ("first_frame", "last_frame"): ["first_frame", "last_frame"],
    ("first_frame", "last_frame", "driving_audio"): ["first_frame", "last_frame", "audio"],
    ("last_frame", "first_frame"): ["last_frame", "first_frame"],  # order within media does not matter
    ("first_clip",): ["first_clip"],
    ("first_clip", "last_frame"): ["first_clip", "last_frame"],
}


@pytest.mark.parametrize("types", list(WAN27_ACCEPTED), ids="+".join)
def test_wan27_allowed_media_combination_is_accepted(api, types):
    req = stored(api, api.create(wan27(*types)))
    assert [m["role"] for m in req["media"]] == WAN27_ACCEPTED[types]
    assert req["sound"] == ("input" if "driving_audio" in types else "generate")
    assert req["kind"] == "wan27"


@pytest.mark.parametrize("types", [("last_frame",), ("first_frame", "first_frame"), ("driving_audio",),
                                   ("first_frame", "reference_image"), ("first_frame", "first_clip"),
                                   ("last_frame", "driving_audio"), ()], ids=lambda t: "+".join(t) or "empty")
def test_wan27_disallowed_media_combination_is_refused(api, types):
    refused(api, wan27(*types))


def test_wan27_without_media_is_refused(api):
    refused(api, {"model": "wan2.7-i2v", "input": {"prompt": "a cat", "img_url": IMG}})


@pytest.mark.parametrize("name", [r.name for r in CONTRACT if r.kind == "kf2v"] + ["wan2.1-kf2v-plus"])
def test_kf2v_model_on_the_video_generation_endpoint_is_accepted(api, name):
    """The v2 SDK client posts every model to video-generation (1.1)."""
    req = stored(api, api.create(minimal_body(name), endpoint=VG))
    assert req["kind"] == "kf2v"


@pytest.mark.parametrize("name", [n for n in CATALOG_NAMES if row(n).kind != "kf2v"])
def test_non_kf2v_model_on_the_image2video_endpoint_is_url_error(api, name):
    assert "url error" in refused(api, minimal_body(name), endpoint=I2V_EP)


@pytest.mark.parametrize("name", ["wan2.6-i2v", "wan2.2-kf2v-flash"])
def test_image_driven_model_without_its_first_frame_is_refused(api, name):
    body = minimal_body(name)
    body["input"].pop("img_url", None)
    body["input"].pop("first_frame_url", None)
    refused(api, body, endpoint=endpoint_of(name))


def test_unknown_model_is_refused_as_model_not_exist(api):
    assert refused(api, {"model": "wan2.6-t2v-ultra",
                         "input": {"prompt": "x"}}).startswith("Model not exist.")


def test_t2v_without_prompt_is_refused(api):
    refused(api, {"model": "wan2.6-t2v", "input": {"prompt": None}})
