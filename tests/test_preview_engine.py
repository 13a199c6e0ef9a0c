"""PreviewEngine: the deterministic, non-AI CPU engine."""

from __future__ import annotations

import itertools

import cv2
import numpy as np
import pytest
from PIL import Image

from wanserve.engines import EngineSet
from wanserve.engines.base import RenderJob
from wanserve.engines.preview import EFFECTS, PreviewEngine, text
from wanserve.errors import TaskCanceled
from wanserve.generation.shots import parse_shots
from wanserve.media.frames import FlowMorph, fit_image, flow_interpolate

W, H = 256, 144


def picture(width: int = 320, height: int = 180, seed: int = 0) -> Image.Image:
    """A smooth textured picture with a few bright shapes."""
    rng = np.random.default_rng(seed)
    base = cv2.resize(rng.integers(20, 200, (9, 16, 3), dtype=np.uint8), (width, height),
                      interpolation=cv2.INTER_CUBIC)
    base[height // 4 : height // 2, width // 5 : width // 3] = (250, 240, 60)
    cv2.circle(base, (width * 2 // 3, height * 2 // 3), height // 6, (30, 90, 250), -1)
    return Image.fromarray(base)


def square_scene(x: int) -> np.ndarray:
    """A bright textured 40x40 square at column x over a dark textured background (W x H)."""
    rng = np.random.default_rng(3)
    bg = cv2.resize(rng.integers(20, 110, (18, 32, 3), dtype=np.uint8), (W, H), interpolation=cv2.INTER_CUBIC)
    square = cv2.resize(rng.integers(180, 256, (10, 10, 3), dtype=np.uint8), (40, 40),
                        interpolation=cv2.INTER_NEAREST)
    bg[52:92, x : x + 40] = square
    return bg


def job(kind: str = "i2v", n: int = 20, **kw) -> RenderJob:
    """A job of `n` frames at 30 fps. `multi_shot=True`: the shot plan of the prompt, as the pipeline
    computes it (generation.shots), so the storyboard shows one card per shot."""
    if kw.pop("multi_shot", False):
        kw["shots"] = tuple(parse_shots(kw["prompt"], n / 30, kw.get("shot_type", "single")))
    if kind in ("i2v", "kf2v"):
        kw.setdefault("first_frame", picture())
    if kind == "kf2v":
        kw.setdefault("last_frame", picture(seed=1))
    return RenderJob(kind=kind, model="test", width=kw.pop("width", W), height=kw.pop("height", H),
                     frame_count=n, **kw)


def render(j: RenderJob) -> list[np.ndarray]:
    return list(PreviewEngine().render(j, lambda done, total: None))


def mad(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference of two frames."""
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


@pytest.mark.parametrize(
    "j",
    [
        job("t2v", prompt="A red fox runs through snow."),
        job("i2v"),
        job("kf2v"),
        job("i2v", template="flying"),
        job("t2v", n=7, width=320, height=240, prompt="镜头1 [0-3秒]：山。镜头2 [3-5秒]：水。",
            multi_shot=True),
    ],
    ids=["t2v", "i2v", "kf2v", "template", "t2v-odd-count"],
)
def test_each_kind_yields_exactly_frame_count_uint8_rgb_frames_of_the_job_size(j):
    frames = render(j)
    assert len(frames) == j.frame_count
    for f in frames:
        assert f.shape == (j.height, j.width, 3)
        assert f.dtype == np.uint8
        assert f.flags.c_contiguous


def test_the_registry_serves_unconfigured_and_preview_configured_models_with_the_preview_engine():
    assert isinstance(EngineSet().for_model("wan2.6-t2v"), PreviewEngine)
    assert isinstance(EngineSet({}).for_model("not-a-model"), PreviewEngine)
    configured = EngineSet({"wan2.6-t2v": {"engine": "preview"}, "wan2.2-i2v-plus": {}})
    assert isinstance(configured.for_model("wan2.6-t2v"), PreviewEngine)
    assert isinstance(configured.for_model("wan2.2-i2v-plus"), PreviewEngine)  # engine defaults to preview


def test_same_seed_and_inputs_give_identical_frames():
    a, b = render(job("i2v", seed=42)), render(job("i2v", seed=42))
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("kind", ["t2v", "kf2v"])
def test_other_kinds_are_deterministic_too(kind):
    a = render(job(kind, seed=5, prompt="Shot 1 [0-1 s]: a. Shot 2 [1-2 s]: b.", multi_shot=True))
    b = render(job(kind, seed=5, prompt="Shot 1 [0-1 s]: a. Shot 2 [1-2 s]: b.", multi_shot=True))
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def test_different_seeds_give_different_camera_moves():
    a, b = render(job("i2v", seed=1)), render(job("i2v", seed=2))
    assert mad(a[-1], b[-1]) > 1


def test_i2v_starts_on_the_input_image_and_then_moves():
    pic = picture(400, 225)  # 16:9 like the output, larger
    frames = render(job("i2v", first_frame=pic, seed=3))
    expected = fit_image(pic, W, H)
    assert mad(frames[0], expected) < 2
    assert mad(frames[-1], expected) > 2


def test_fit_image_scales_to_cover_and_centre_crops():
    img = np.zeros((100, 300, 3), np.uint8)
    img[:, 100:200] = 255  # a white middle third
    out = fit_image(Image.fromarray(img), 100, 100)
    assert out.shape == (100, 100, 3)
    assert out.mean() > 250  # only the middle third is left


@pytest.mark.parametrize(("kind", "n"), [("kf2v", 15), ("i2v", 10)])
def test_a_first_and_last_frame_job_starts_on_the_first_image_and_ends_on_the_last(kind, n):
    first, last = picture(seed=1), picture(seed=2)
    frames = render(job(kind, first_frame=first, last_frame=last, n=n))
    assert mad(frames[0], fit_image(first, W, H)) < 1
    assert mad(frames[-1], fit_image(last, W, H)) < 1


def test_kf2v_moves_content_along_the_flow_instead_of_crossfading():
    a, b = square_scene(50), square_scene(90)
    frames = render(job("kf2v", first_frame=Image.fromarray(a), last_frame=Image.fromarray(b), n=31))
    mid = frames[15]  # t = 0.5
    crossfade = cv2.addWeighted(a, 0.5, b, 0.5, 0)

    def square_at(frame, x):  # mean brightness inside a 40x40 square at column x
        return frame[54:90, x + 2 : x + 38].mean()

    # The morph has one bright square half-way (x=70); a crossfade has two half-bright squares.
    assert square_at(mid, 70) > 190
    assert square_at(crossfade, 70) < 160
    # The area the square has left by then is background again in the morph, not half-bright.
    assert mid[54:90, 52:68].mean() < 100 < crossfade[54:90, 52:68].mean()


def test_flow_morph_reproduces_its_endpoints_exactly_and_is_reusable_for_interpolation():
    a, b = square_scene(50), square_scene(70)
    morph = FlowMorph(a, b)
    assert np.array_equal(morph.frame(0.0), a)
    assert np.array_equal(morph.frame(1.0), b)
    inbetween = list(flow_interpolate(a, b, [0.25, 0.5, 0.75]))
    assert len(inbetween) == 3
    assert all(f.shape == a.shape and f.dtype == np.uint8 for f in inbetween)


def test_t2v_shows_a_different_card_during_each_shots_time_range():
    prompt = ("Shot 1 [0-1 s]: A quiet harbour at dawn. Shot 2 [1-2 s]: Gulls take off. "
              "Shot 3 [2-3 s]: The sun rises.")
    frames = render(job("t2v", n=90, prompt=prompt, seed=9, multi_shot=True))
    one, two, three = frames[15], frames[45], frames[75]  # the middle of each shot
    assert mad(one, two) > 10 and mad(two, three) > 10 and mad(one, three) > 10
    # Within a shot the card changes only slowly (a drifting background).
    assert 0 < mad(frames[5], frames[20]) < 10


def test_t2v_background_moves_so_a_single_card_is_still_video():
    frames = render(job("t2v", n=60, prompt="Just one shot."))
    assert mad(frames[0], frames[-1]) > 0.5


def test_t2v_renders_with_the_default_font_when_no_system_font_is_found(monkeypatch):
    monkeypatch.setattr(text, "find_font", lambda: None)
    text.get_font.cache_clear()
    try:
        frames = render(job("t2v", n=3, prompt="没有字体也不能失败 — no font must not fail"))
    finally:
        text.get_font.cache_clear()
    assert len(frames) == 3


@pytest.mark.parametrize(
    ("prompt", "duration", "expected"),
    [
        ("Shot 1 [0-3 s]: wide. Shot 2 [3-6s]: close.", 6, [(1, 0, 3, "wide."), (2, 3, 6, "close.")]),
        ("镜头1 [0-3秒]：山。镜头2 [3-5秒]：水。", 5, [(1, 0, 3, "山。"), (2, 3, 5, "水。")]),
        ("第1个镜头[0-2秒] 全景：城市。第2个镜头[2-4秒] 特写：猫。", 4,
         [(1, 0, 2, "全景：城市。"), (2, 2, 4, "特写：猫。")]),
        # ranges that do not fit the video are scaled to it
        ("Shot 1 [0-5 s]: a. Shot 2 [5-10 s]: b.", 5, [(1, 0, 2.5, "a."), (2, 2.5, 5, "b.")]),
        # markers without ranges share the video equally
        ("Shot 1: a. Shot 2: b.", 4, [(1, 0, 2, "a."), (2, 2, 4, "b.")]),
        ("No markers here.", 5, [(1, 0, 5, "No markers here.")]),
    ],
)
def test_parse_shots_splits_prompts_at_shot_markers(prompt, duration, expected):
    shots = parse_shots(prompt, duration)
    assert [(s.number, s.start, s.end, s.text) for s in shots] == [
        (n, pytest.approx(a), pytest.approx(b), t) for n, a, b, t in expected
    ]


def test_multi_shot_without_markers_spreads_sentences_over_two_or_three_cards():
    prompt = "A cat wakes up. It stretches. It jumps on the table. It knocks over a glass."
    shots = parse_shots(prompt, 6, "multi")
    assert 2 <= len(shots) <= 3
    assert shots[0].start == 0 and shots[-1].end == 6
    assert " ".join(s.text for s in shots) == prompt


def test_templates_differ_from_each_other_and_from_plain_i2v():
    names = [*EFFECTS, "hanfu-1", "some-new-effect"]  # every effect of the table, and the default for others
    plain = render(job("i2v", n=12, seed=0))
    results = {name: render(job("i2v", n=12, seed=0, template=name)) for name in names}
    for name, frames in results.items():
        assert mad(frames[6], plain[6]) > 3, name
        assert max(mad(f, frames[0]) for f in frames) > 3, f"{name} does not move"
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert mad(results[a][6], results[b][6]) > 3, (a, b)


def test_progress_is_reported_with_rising_counts_up_to_the_total():
    calls = []
    frames = list(PreviewEngine().render(job("i2v", n=23), lambda done, total: calls.append((done, total))))
    assert len(frames) == 23
    assert calls[0] == (0, 23) and calls[-1] == (23, 23)
    assert all(total == 23 for _, total in calls)
    counts = [done for done, _ in calls]
    assert counts == sorted(counts) and len(set(counts)) == len(counts)
    assert max(b - a for a, b in itertools.pairwise(counts)) <= 5


def test_task_canceled_raised_by_progress_stops_the_generator():
    def progress(done, total):
        if done >= 10:
            raise TaskCanceled()

    gen = PreviewEngine().render(job("i2v", n=30), progress)
    got = 0
    with pytest.raises(TaskCanceled):
        for _ in gen:
            got += 1
    assert got < 30
    with pytest.raises(StopIteration):
        next(gen)


def test_an_image_job_without_an_image_is_rejected():
    with pytest.raises(ValueError):
        render(RenderJob(kind="i2v", model="test", width=W, height=H, frame_count=5))
