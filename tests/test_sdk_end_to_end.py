"""The official `dashscope` SDK as a real client of a running wanserve: only the base URL changes.

Every returned video is downloaded from its signed video_url and opened with PyAV.
"""

from __future__ import annotations

import base64
from http import HTTPStatus

import numpy as np
import pytest
from dashscope import VideoSynthesis

from .conftest import Server, download, image_bytes, probe_video, wav_bytes

pytestmark = pytest.mark.slow


def assert_video(url: str, width: int, height: int, seconds: int, audio: bool | None = None):
    info = probe_video(download(url))
    assert (info.codec, info.pix_fmt, info.fps) == ("h264", "yuv420p", 30.0)
    assert info.frames == seconds * 30
    assert (info.width, info.height) == (width, height)
    if audio is not None:
        assert (info.audio_codec == "aac") is audio
    return info


def test_t2v_call_gives_the_exact_size_at_30_fps(dashscope_at: Server):
    rsp = VideoSynthesis.call(api_key=dashscope_at.key, model="wanx2.1-t2v-turbo",
                              prompt="A kitten in the snow", size="832*480", seed=7)
    assert rsp.status_code == HTTPStatus.OK, rsp
    assert rsp.output.task_status == "SUCCEEDED"
    assert rsp.usage.video_ratio == "832*480" and rsp.usage.video_duration == 5
    assert_video(rsp.output.video_url, 832, 480, 5, audio=False)


def test_i2v_async_call_fetch_and_wait_with_an_http_image(dashscope_at: Server, media_server):
    url = media_server.put("portrait.jpg", image_bytes(750, 1000, "JPEG"))
    task = VideoSynthesis.async_call(api_key=dashscope_at.key, model="wan2.2-i2v-flash",
                                     prompt="a slow push in", img_url=url, resolution="720P")
    assert task.status_code == HTTPStatus.OK and task.output.task_status == "PENDING"
    fetched = VideoSynthesis.fetch(task, api_key=dashscope_at.key)
    assert fetched.status_code == HTTPStatus.OK
    assert fetched.output.task_status in ("PENDING", "RUNNING", "SUCCEEDED")
    done = VideoSynthesis.wait(task, api_key=dashscope_at.key)
    assert done.output.task_status == "SUCCEEDED", done
    assert done.output.submit_time and done.output.scheduled_time and done.output.end_time
    assert_video(done.output.video_url, 816, 1104, 5)  # the contract's documented example


def test_i2v_with_a_local_file_is_uploaded_and_resolved_from_oss(dashscope_at: Server, tmp_path):
    path = tmp_path / "first.png"
    path.write_bytes(image_bytes(960, 540))
    rsp = VideoSynthesis.call(api_key=dashscope_at.key, model="wan2.2-i2v-flash", prompt="waves",
                              img_url=f"file://{path}", resolution="480P")
    assert rsp.output.task_status == "SUCCEEDED", rsp
    assert_video(rsp.output.video_url, 832, 464, 5)


def test_i2v_with_a_data_url(dashscope_at: Server):
    data = "data:image/png;base64," + base64.b64encode(image_bytes(640, 640)).decode()
    rsp = VideoSynthesis.call(api_key=dashscope_at.key, model="wan2.2-i2v-flash", prompt="spin", img_url=data,
                              resolution="480P")
    assert rsp.output.task_status == "SUCCEEDED", rsp
    assert_video(rsp.output.video_url, 624, 624, 5)


@pytest.mark.parametrize("form", ["http", "file", "data"])
def test_first_and_last_frame_with_each_input_form(dashscope_at: Server, media_server, tmp_path, form):
    first, last = image_bytes(800, 600, seed=1), image_bytes(800, 600, seed=2)
    if form == "http":
        urls = media_server.put("f.png", first), media_server.put("l.png", last)
    elif form == "file":
        (tmp_path / "f.png").write_bytes(first)
        (tmp_path / "l.png").write_bytes(last)
        urls = f"file://{tmp_path / 'f.png'}", f"file://{tmp_path / 'l.png'}"
    else:
        urls = tuple("data:image/png;base64," + base64.b64encode(b).decode() for b in (first, last))
    rsp = VideoSynthesis.call(api_key=dashscope_at.key, model="wan2.2-kf2v-flash", prompt="morph",
                              first_frame_url=urls[0], last_frame_url=urls[1], resolution="480P")
    assert rsp.status_code == HTTPStatus.OK and rsp.output.task_status == "SUCCEEDED", rsp
    assert rsp.usage.video_ratio == "standard"
    assert_video(rsp.output.video_url, 720, 544, 5)


def test_cancel_of_a_pending_task_through_the_sdk(make_server):
    import dashscope

    server = make_server(workers=0)
    dashscope.base_http_api_url = server.api
    task = VideoSynthesis.async_call(api_key=server.key, model="wan2.6-t2v", prompt="a lighthouse")
    rsp = VideoSynthesis.cancel(task, api_key=server.key)
    assert rsp.status_code == HTTPStatus.OK
    assert VideoSynthesis.fetch(task, api_key=server.key).output.task_status == "CANCELED"
    again = VideoSynthesis.cancel(task, api_key=server.key)
    assert again.status_code == 400 and again.code == "UnsupportedOperation"


def test_list_through_the_sdk(make_server):
    import dashscope

    server = make_server(workers=0)
    dashscope.base_http_api_url = server.api
    task = VideoSynthesis.async_call(api_key=server.key, model="wan2.6-t2v", prompt="a lighthouse")
    rsp = VideoSynthesis.list(api_key=server.key, page_size=5)
    assert rsp.status_code == HTTPStatus.OK
    assert rsp.output["total"] == 1
    assert rsp.output["data"][0]["task_id"] == task.output.task_id
    assert rsp.output["data"][0]["status"] == "PENDING"


def test_audio_url_is_muxed_as_aac_and_padded_to_the_duration(dashscope_at: Server, media_server):
    img = media_server.put("i.png", image_bytes(832, 480))
    audio = media_server.put("a.wav", wav_bytes(3.2))
    rsp = VideoSynthesis.call(api_key=dashscope_at.key, model="wan2.5-i2v-preview", prompt="rap", img_url=img,
                              audio_url=audio, resolution="480P", duration=5)
    assert rsp.output.task_status == "SUCCEEDED", rsp
    info = assert_video(rsp.output.video_url, 832, 480, 5, audio=True)
    assert abs(info.audio_seconds - 5.0) < 0.1


def test_audio_false_gives_a_silent_video_even_with_audio_url(dashscope_at: Server, media_server):
    img = media_server.put("i.png", image_bytes(1280, 720))
    audio = media_server.put("a.wav", wav_bytes(4))
    rsp = VideoSynthesis.call(api_key=dashscope_at.key, model="wan2.6-i2v-flash", prompt="一只猫在草地上奔跑",
                              img_url=img, audio_url=audio, audio=False, resolution="720P", duration=2)
    assert rsp.output.task_status == "SUCCEEDED", rsp
    assert_video(rsp.output.video_url, 1280, 720, 2, audio=False)


def test_watermark_marks_the_bottom_right_corner_only(dashscope_at: Server, media_server):
    import io

    import av

    img = media_server.put("i.png", image_bytes(832, 480))
    frames = {}
    for watermark in (False, True):
        rsp = VideoSynthesis.call(api_key=dashscope_at.key, model="wan2.2-i2v-flash", prompt="p", img_url=img,
                                  resolution="480P", seed=3, watermark=watermark)
        with av.open(io.BytesIO(download(rsp.output.video_url))) as c:
            frames[watermark] = next(c.decode(video=0)).to_ndarray(format="rgb24").astype(int)
    diff = np.abs(frames[True] - frames[False]).sum(axis=-1)
    h, w = diff.shape
    assert diff[int(h * 0.85):, int(w * 0.75):].mean() > 5
    assert diff[: h // 2, : w // 2].mean() < 1
