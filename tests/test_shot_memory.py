"""A worker's peak memory does not grow with the number of shots (issue 18, item 7).

A legal 1,500-character prompt with 108 shot markers took a worker to 1.2 GB at 1080P (7.5 MB a shot):
the preview storyboard built every shot's card (a full-frame text layer and its gradient) before the
first frame. Cards are now made as the frames reach their shot and dropped once past it, so frames
stream into the encoder shot by shot. Measured with tracemalloc (numpy and OpenCV arrays are traced) at
a small size, rendering and encoding as the worker does.
"""

from __future__ import annotations

import hashlib
import tracemalloc

from wanserve.engines.base import RenderJob
from wanserve.engines.preview import PreviewEngine, plan
from wanserve.generation.shots import parse_shots
from wanserve.media.video import encode_mp4

W, H, FPS, SECONDS = 320, 240, 30, 5


def prompt(n: int) -> str:
    return " ".join(f"Shot {k + 1}: a lighthouse keeper climbs the stairs, scene {k + 1}." for k in range(n))


def job(shots: int) -> RenderJob:
    text = prompt(shots)
    return RenderJob(kind="t2v", model="wan2.6-t2v", width=W, height=H, frame_count=FPS * SECONDS, fps=FPS,
                     seed=7, prompt=text, shots=tuple(parse_shots(text, SECONDS)))


def peak_render_and_encode(shots: int, tmp_path) -> int:
    j = job(shots)
    assert len(j.shots) == shots
    tracemalloc.start()
    try:
        frames = PreviewEngine().render(j, lambda done, total: None)
        encode_mp4(frames, tmp_path / f"{shots}.mp4", width=W, height=H, fps=FPS, frame_count=j.frame_count)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_peak_memory_does_not_grow_with_the_number_of_shots(tmp_path):
    few = peak_render_and_encode(2, tmp_path)
    many = peak_render_and_encode(108, tmp_path)
    frame = W * H * 3
    # today's main held two full-frame arrays per shot (~50 MB here); bounded: a few frames' worth more
    assert many < few + 8 * frame, (f"peak {many / 1e6:.1f} MB with 108 shots against {few / 1e6:.1f} MB "
                                    f"with 2 ({(many - few) / 106 / 1e3:.0f} kB a shot)")


def test_cards_made_as_needed_render_the_same_frames():
    """A shot's card is made when a frame needs it and dropped past it: frames asked for in any order
    (back to front here, so every card is made again) are the same as in order."""
    j = job(12)
    forward = plan(j)
    ahead = [hashlib.sha256(forward(i).tobytes()).hexdigest() for i in range(j.frame_count)]
    backward = plan(j)
    back = [hashlib.sha256(backward(i).tobytes()).hexdigest() for i in reversed(range(j.frame_count))]
    assert ahead == back[::-1]
