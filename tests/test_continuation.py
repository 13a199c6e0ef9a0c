"""wan2.7 `first_clip`: the output starts with the clip and continues it to the full duration."""

from __future__ import annotations

import io

import av
import numpy as np
import pytest

from wanserve.errors import ServiceError
from wanserve.media.clip import WAN27_CLIP_LIMITS, check_clip, clip_frames

from .conftest import Server, download, image_bytes, probe_video


def clip_bytes(seconds: float, width: int = 640, height: int = 360, fps: int = 24) -> bytes:
    """An H.264 MP4 whose colour changes every frame, so frames can be told apart."""
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(round(seconds * fps)):
            arr = np.zeros((height, width, 3), np.uint8)
            arr[..., 0] = min(i * 5, 255)
            arr[: height // 2, : width // 2] = 255
            for packet in stream.encode(av.VideoFrame.from_ndarray(arr, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return buf.getvalue()


def test_a_valid_clip_reports_its_size_and_length():
    info = check_clip(clip_bytes(3), WAN27_CLIP_LIMITS, field="media[0].url")
    assert (info.width, info.height) == (640, 360) and abs(info.seconds - 3) < 0.1


@pytest.mark.parametrize(("data", "code"), [
    (clip_bytes(1), "InvalidFile.Duration"),
    (clip_bytes(2.5, 200, 200), "InvalidFile.Resolution"),
    (image_bytes(640, 360), "InvalidFile.Format"),
    (b"\x00\x00\x00\x18ftypisom" + b"\x00" * 100, "InvalidFile.Format"),
])
def test_clips_outside_the_limits_are_refused_with_a_contract_code(data, code):
    with pytest.raises(ServiceError) as err:
        check_clip(data, WAN27_CLIP_LIMITS, field="media[0].url")
    assert err.value.code == code


def test_clip_frames_are_resampled_to_the_output_rate():
    frames = list(clip_frames(clip_bytes(2, fps=24), 30, 60))
    assert len(frames) == 60
    reds = [int(f[-1, -1, 0]) for f in frames]
    assert reds == sorted(reds) and len(set(reds)) >= 40  # time order kept; 48 source frames spread over 60


@pytest.mark.slow
def test_wan27_continuation_starts_with_the_clip_and_lasts_the_whole_duration(server: Server, media_server):
    url = media_server.put("clip.mp4", clip_bytes(3))
    body = {"model": "wan2.7-i2v",
            "input": {"prompt": "continue", "media": [{"type": "first_clip", "url": url}]},
            "parameters": {"resolution": "720P", "duration": 5}}
    done = server.wait(server.create(body).json()["output"]["task_id"])
    assert done["output"]["task_status"] == "SUCCEEDED", done
    assert done["usage"]["input_video_duration"] == 3 and done["usage"]["duration"] == 5
    data = download(done["output"]["video_url"])
    info = probe_video(data)
    assert (info.width, info.height, info.frames, info.fps) == (1280, 720, 150, 30.0)
    with av.open(io.BytesIO(data)) as c:
        first = next(c.decode(video=0)).to_ndarray(format="rgb24")
    assert first[:300, :600].mean() > 240 and first[-100:, -100:, 1].mean() < 20  # the clip's first frame


@pytest.mark.slow
def test_a_clip_as_long_as_the_duration_fails_the_task(server: Server, media_server):
    url = media_server.put("clip.mp4", clip_bytes(4))
    body = {"model": "wan2.7-i2v", "input": {"media": [{"type": "first_clip", "url": url}]},
            "parameters": {"resolution": "720P", "duration": 3}}
    out = server.wait(server.create(body).json()["output"]["task_id"])["output"]
    assert (out["task_status"] == "FAILED" and out["code"] == "InvalidParameter"
            and "first_clip" in out["message"])
