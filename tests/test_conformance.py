"""Contract section 8: every example request in the seed documents, sent as written (C01-C19),
except that the base URL, the key and the media URLs point at local servers, each run to a
terminal state with its video checked by PyAV; then the derived negative cases N1-N12.

N4 differs on purpose: cancelling a RUNNING task is a wanserve extension (it stops within a
second), so only finished tasks answer UnsupportedOperation."""

from __future__ import annotations

import base64
from http import HTTPStatus

import httpx
import pytest
from dashscope import VideoSynthesis

from .conftest import ASYNC, MediaServer, Server, download, image_bytes, mp3_bytes, probe_video

pytestmark = pytest.mark.slow

RAP_EN = ("A scene of urban fantasy art. A dynamic graffiti art character. A boy made of spray paint comes "
          "to life from a concrete wall. He raps an English song at high speed while striking a classic, "
          "energetic rapper pose. The scene is set under an urban railway bridge at night. The lighting "
          "comes from a single street lamp, creating a cinematic atmosphere full of high energy and amazing "
          "detail. The audio of the video consists entirely of his rap, with no other dialogue or noise.")
RAP_ZH = ("一幅都市奇幻艺术的场景。一个充满动感的涂鸦艺术角色。一个由喷漆所画成的少年,"
          "正从一面混凝土墙上活过来。他一边用极快的语速演唱一首英文rap,一边摆着一个经典的、"
          "充满活力的说唱歌手姿势。场景设定在夜晚一个充满都市感的铁路桥下。灯光来自一盏孤零零的街灯,"
          "营造出电影般的氛围,充满高能量和惊人的细节。视频的音频部分完全由他的rap构成,没有其他对话或杂音。")
TURTLE = "镜头从海龟下方缓缓上移,海龟悠然游动,腹部细节清晰可见。"
CAT = "一只猫在草地上奔跑"
KITTEN_S2 = "写实风格,一只黑色小猫好奇地看向天空,镜头从平视逐渐上升,最后俯拍小猫好奇的眼神。"
KITTEN_S4 = "写实风格,一只小黑猫好奇地仰望天空,镜头从平视角度逐渐升高,最后以俯视角度捕捉到它好奇的眼神。"
MONSTER = "一个可爱且表情有些忧伤的蓝色小怪物站在雨中。镜头缓慢拉近,定格在小怪物抬头仰望天空的瞬间。"
DETECTIVE = ("A thrilling detective chase story with cinematic storytelling. Shot 1 [0–3 s]: Wide shot of a "
             "rainy New York street at night, neon lights flickering, a detective in a black trench coat "
             "walking briskly. Shot 2 [3–6 s]: Medium shot of the detective entering an old building, rain "
             "soaking his coat, the door closing slowly behind him. Shot 3 [6–9 s]: Close-up of the "
             "detective's focused, determined eyes as distant sirens wail and he frowns slightly in "
             "thought. Shot 4 [9–12 s]: Medium shot of the detective moving carefully down a dim hallway, "
             "his flashlight illuminating the path ahead. Shot 5 [12–15 s]: Close-up of the detective "
             "discovering a key clue, his face lighting up with sudden realization.")


@pytest.fixture
def media(media_server: MediaServer, tmp_path) -> dict[str, str]:
    """Local stand-ins for the seeds' media URLs (same names, generated content)."""
    files = {
        "rap.png": image_bytes(1280, 720, seed=1),
        "wan-i2v-haigui.webp": image_bytes(1280, 720, "WEBP", seed=2),
        "wanx-demo-1.png": image_bytes(1024, 768, seed=3),
        "first_frame.png": image_bytes(1280, 720, seed=4),
        "last_frame.png": image_bytes(1280, 720, seed=5),
        "wan-kf2v-blue-1.png": image_bytes(960, 960, seed=6),
        "wan-kf2v-blue-2.png": image_bytes(960, 960, seed=7),
        "rap.mp3": mp3_bytes(8.0),
    }
    urls = {name: media_server.put(name, data) for name, data in files.items()}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        urls["file:" + name] = f"file://{tmp_path / name}"
        mime = "audio/mpeg" if name.endswith("mp3") else f"image/{name.rsplit('.', 1)[1]}"
        urls["data:" + name] = f"data:{mime};base64," + base64.b64encode(data).decode()
    return urls


def check(url: str, size: tuple[int, int], seconds: int, audio: bool) -> None:
    info = probe_video(download(url))
    assert (info.codec, info.pix_fmt, info.fps, info.frames) == ("h264", "yuv420p", 30.0, seconds * 30)
    assert (info.width, info.height) == size
    assert (info.audio_codec == "aac") is audio
    if audio:
        assert abs(info.audio_seconds - seconds) < 0.1


def curl(server: Server, endpoint: str, body: dict) -> dict:
    """What the seeds' curl commands send: the three headers and a JSON body."""
    r = httpx.post(f"{server.api}/services/aigc/{endpoint}/video-synthesis", json=body,
                   headers={**ASYNC, "Authorization": f"Bearer {server.key}",
                            "Content-Type": "application/json"})
    assert r.status_code == 200, r.text
    return server.wait(r.json()["output"]["task_id"])


@pytest.mark.parametrize("form", ["", "file:", "data:"])
def test_c01_flash_with_audio_url_call(dashscope_at: Server, media, form):
    rsp = VideoSynthesis.call(api_key=dashscope_at.key, model="wan2.6-i2v-flash", prompt=RAP_EN,
                              img_url=media[form + "rap.png"], audio_url=media["rap.mp3"], resolution="720P",
                              duration=10, prompt_extend=True, watermark=False, negative_prompt="",
                              seed=12345)
    assert rsp.status_code == HTTPStatus.OK and rsp.output.task_status == "SUCCEEDED", rsp
    assert rsp.output.orig_prompt == RAP_EN and "actual_prompt" not in rsp.output  # wan2.6 never returns it
    assert rsp.usage["SR"] == 720 and rsp.usage["size"] == "1280*720" and rsp.usage["duration"] == 10
    check(rsp.output.video_url, (1280, 720), 10, audio=True)


def test_c02_quickstart_multi_shot_curl(server: Server, media):
    body = curl(server, "video-generation", {"model": "wan2.6-i2v-flash", "input": {
        "prompt": TURTLE, "img_url": media["wan-i2v-haigui.webp"]}, "parameters": {
        "resolution": "720P", "duration": 10, "shot_type": "multi", "prompt_extend": True,
        "watermark": True}})
    assert body["output"]["task_status"] == "SUCCEEDED", body
    check(body["output"]["video_url"], (1280, 720), 10, audio=True)  # flash sounds by default


def test_c03_c04_async_call_and_wait_with_audio(dashscope_at: Server, media):
    for extra in ({"shot_type": "multi"}, {}):
        task = VideoSynthesis.async_call(api_key=dashscope_at.key, model="wan2.6-i2v-flash", prompt=RAP_ZH,
                                         img_url=media["rap.png"], audio_url=media["rap.mp3"],
                                         resolution="720P", duration=10, prompt_extend=True, watermark=True,
                                         seed=12345, **extra)
        assert task.status_code == HTTPStatus.OK
        rsp = VideoSynthesis.wait(task, api_key=dashscope_at.key)
        assert rsp.output.task_status == "SUCCEEDED", rsp
        check(rsp.output.video_url, (1280, 720), 10, audio=True)


def test_c05_c06_wan25_with_and_without_audio_url_curl(server: Server, media):
    for extra in ({"audio_url": media["rap.mp3"]}, {}):
        body = curl(server, "video-generation", {"model": "wan2.5-i2v-preview", "input": {
            "prompt": RAP_ZH, "img_url": media["rap.png"], **extra}, "parameters": {
            "resolution": "480P", "prompt_extend": True, "duration": 10}})
        out = body["output"]
        assert out["task_status"] == "SUCCEEDED", body
        assert out["actual_prompt"] and body["usage"] == {"video_count": 1, "video_duration": 10,
                                                         "video_ratio": "standard"}
        check(out["video_url"], (832, 464), 10, audio=True)


def test_c07_audio_false_is_silent(dashscope_at: Server, media):
    task = VideoSynthesis.async_call(api_key=dashscope_at.key, model="wan2.6-i2v-flash", prompt=CAT,
                                     img_url=media["wanx-demo-1.png"], audio=False, resolution="720P",
                                     duration=5, prompt_extend=True, watermark=True, seed=12345)
    rsp = VideoSynthesis.wait(task, api_key=dashscope_at.key)
    assert rsp.output.task_status == "SUCCEEDED", rsp
    check(rsp.output.video_url, (1104, 816), 5, audio=False)


def test_c08_wan22_plus_silent_curl(server: Server, media):
    body = curl(server, "video-generation", {"model": "wan2.2-i2v-plus", "input": {
        "prompt": CAT, "img_url": media["wanx-demo-1.png"]}, "parameters": {"resolution": "480P",
                                                                              "prompt_extend": True}})
    assert body["output"]["task_status"] == "SUCCEEDED", body
    check(body["output"]["video_url"], (720, 544), 5, audio=False)


def test_c09_template_flying_sdk_and_curl(dashscope_at: Server, media):
    task = VideoSynthesis.async_call(api_key=dashscope_at.key, model="wanx2.1-i2v-turbo",
                                     img_url=media["wanx-demo-1.png"], template="flying", resolution="720P",
                                     watermark=True)
    rsp = VideoSynthesis.wait(task, api_key=dashscope_at.key)
    assert rsp.output.task_status == "SUCCEEDED", rsp
    assert rsp.output.orig_prompt == ""
    assert rsp.usage.video_ratio == "standard" and rsp.usage.video_duration == 5
    check(rsp.output.video_url, (1104, 816), 5, audio=False)
    body = curl(dashscope_at, "video-generation", {"model": "wanx2.1-i2v-turbo", "input": {
        "img_url": media["wanx-demo-1.png"], "template": "flying"}, "parameters": {"resolution": "720P"}})
    assert body["output"]["task_status"] == "SUCCEEDED", body


def test_c10_input_methods_with_chinese_prompt(dashscope_at: Server, media):
    for form in ("", "file:", "data:"):
        rsp = VideoSynthesis.call(api_key=dashscope_at.key, model="wan2.6-i2v-flash", prompt=RAP_ZH,
                                  img_url=media[form + "rap.png"], audio_url=media["rap.mp3"],
                                  resolution="720P", duration=10, prompt_extend=True, watermark=False,
                                  seed=12345)
        assert rsp.output.task_status == "SUCCEEDED", (form, rsp)
        check(rsp.output.video_url, (1280, 720), 10, audio=True)


def test_c11_kf2v_plus_call_and_async(dashscope_at: Server, media):
    for form in ("", "file:", "data:"):
        rsp = VideoSynthesis.call(api_key=dashscope_at.key, model="wanx2.1-kf2v-plus", prompt=KITTEN_S2,
                                  first_frame_url=media[form + "first_frame.png"],
                                  last_frame_url=media[form + "last_frame.png"], resolution="720P",
                                  prompt_extend=True)
        assert rsp.status_code == HTTPStatus.OK and rsp.output.task_status == "SUCCEEDED", rsp
        assert (rsp.usage.video_count == 1 and rsp.usage.video_duration == 5
                and rsp.usage.video_ratio == "standard")
        assert rsp.output.actual_prompt
    check(rsp.output.video_url, (1280, 720), 5, audio=False)
    task = VideoSynthesis.async_call(api_key=dashscope_at.key, model="wanx2.1-kf2v-plus", prompt=KITTEN_S2,
                                     first_frame_url=media["first_frame.png"],
                                     last_frame_url=media["last_frame.png"],
                                     resolution="720P", prompt_extend=True)
    assert VideoSynthesis.fetch(task, api_key=dashscope_at.key).status_code == HTTPStatus.OK
    assert VideoSynthesis.wait(task, api_key=dashscope_at.key).output.task_status == "SUCCEEDED"


def test_c12_list_default_paging(dashscope_at: Server, media):
    VideoSynthesis.async_call(api_key=dashscope_at.key, model="wan2.6-t2v", prompt="x", size="1280*720",
                              duration=2)
    rsp = VideoSynthesis.list(api_key=dashscope_at.key)
    assert rsp.status_code == HTTPStatus.OK
    assert rsp.output["page_no"] == 1 and rsp.output["page_size"] == 10 and rsp.output["total"] == 1


def test_c13_t2v_multi_shot_detective(dashscope_at: Server):
    rsp = VideoSynthesis.call(api_key=dashscope_at.key, model="wan2.6-t2v", prompt=DETECTIVE, size="1280*720",
                              duration=15, shot_type="multi", prompt_extend=True, watermark=True)
    assert rsp.output.task_status == "SUCCEEDED", rsp
    assert rsp.usage["duration"] == 15 and rsp.usage["output_video_duration"] == 15
    assert (rsp.usage["size"] == "1280*720" and rsp.usage["SR"] == 720
            and rsp.usage["input_video_duration"] == 0)
    check(rsp.output.video_url, (1280, 720), 15, audio=True)


def test_c14_wan27_first_and_last_frame_curl(server: Server, media):
    body = curl(server, "video-generation", {"model": "wan2.7-i2v", "input": {"prompt": KITTEN_S4, "media": [
        {"type": "first_frame", "url": media["first_frame.png"]},
        {"type": "last_frame", "url": media["last_frame.png"]}]}, "parameters": {
        "resolution": "720P", "duration": 10, "prompt_extend": False, "watermark": True}})
    assert body["output"]["task_status"] == "SUCCEEDED", body
    assert body["usage"] == {"duration": 10, "input_video_duration": 0, "output_video_duration": 10,
                             "video_count": 1, "SR": 720}
    check(body["output"]["video_url"], (1280, 720), 10, audio=True)


def test_c15_kf2v_flash_curl(server: Server, media):
    body = curl(server, "image2video", {"model": "wan2.2-kf2v-flash", "input": {
        "first_frame_url": media["wan-kf2v-blue-1.png"], "last_frame_url": media["wan-kf2v-blue-2.png"],
        "prompt": MONSTER}, "parameters": {"resolution": "720P", "prompt_extend": True, "watermark": True}})
    assert body["output"]["task_status"] == "SUCCEEDED", body
    check(body["output"]["video_url"], (960, 960), 5, audio=False)


def test_c16_kf2v_flash_duration_5_defaults_to_720p(dashscope_at: Server, media):
    rsp = VideoSynthesis.call(api_key=dashscope_at.key, model="wan2.2-kf2v-flash", prompt=MONSTER,
                              first_frame_url=media["wan-kf2v-blue-1.png"],
                              last_frame_url=media["wan-kf2v-blue-2.png"], duration=5, prompt_extend=True,
                              watermark=True)
    assert rsp.output.task_status == "SUCCEEDED", rsp
    check(rsp.output.video_url, (960, 960), 5, audio=False)


def test_c17_kf2v_flash_async_wait_and_curl(dashscope_at: Server, media):
    task = VideoSynthesis.async_call(api_key=dashscope_at.key, model="wan2.2-kf2v-flash", prompt=KITTEN_S4,
                                     first_frame_url=media["first_frame.png"],
                                     last_frame_url=media["last_frame.png"],
                                     duration=5, prompt_extend=True, watermark=True)
    rsp = VideoSynthesis.wait(task, api_key=dashscope_at.key)
    assert rsp.output.task_status == "SUCCEEDED", rsp
    body = curl(dashscope_at, "image2video", {"model": "wan2.2-kf2v-flash", "input": {
        "first_frame_url": media["first_frame.png"], "last_frame_url": media["last_frame.png"],
        "prompt": KITTEN_S4}, "parameters": {"resolution": "720P", "prompt_extend": True, "watermark": True}})
    assert body["output"]["task_status"] == "SUCCEEDED", body
    check(body["output"]["video_url"], (1280, 720), 5, audio=False)


def test_c18_kf2v_flash_url_and_file_inputs(dashscope_at: Server, media):
    for form in ("", "file:"):
        rsp = VideoSynthesis.call(api_key=dashscope_at.key, model="wan2.2-kf2v-flash", prompt=KITTEN_S4,
                                  first_frame_url=media[form + "first_frame.png"],
                                  last_frame_url=media[form + "last_frame.png"], resolution="720P",
                                  prompt_extend=True)
        assert rsp.output.task_status == "SUCCEEDED", (form, rsp)


def test_c19_query_with_only_authorization(server: Server):
    r = server.create({"model": "wanx2.1-t2v-turbo", "input": {"prompt": "x"},
                       "parameters": {"size": "832*480"}})
    tid = r.json()["output"]["task_id"]
    server.wait(tid)
    q = httpx.get(f"{server.api}/tasks/{tid}", headers={"Authorization": f"Bearer {server.key}"})
    assert q.status_code == 200
    out = q.json()["output"]
    assert out["task_status"] == "SUCCEEDED"
    assert {"task_id", "submit_time", "scheduled_time", "end_time", "video_url", "orig_prompt"} <= set(out)


def _error(r: httpx.Response, status: int, code: str) -> None:
    assert r.status_code == status, r.text
    assert set(r.json()) == {"request_id", "code", "message"} and r.json()["code"] == code


T2V = {"model": "wanx2.1-t2v-turbo", "input": {"prompt": "x"}, "parameters": {"size": "832*480"}}


def test_n1_create_without_async_header_is_403(server: Server):
    r = httpx.post(f"{server.api}/services/aigc/video-generation/video-synthesis", json=T2V,
                   headers={"Authorization": f"Bearer {server.key}"})
    _error(r, 403, "AccessDenied")


def test_n2_bad_key_is_401(server: Server):
    with server.client(key="sk-bad") as c:
        _error(c.post("/services/aigc/video-generation/video-synthesis", json=T2V, headers=ASYNC),
               401, "InvalidApiKey")


def test_n3_random_task_id_is_unknown(server: Server):
    assert server.task("0385dc79-5ff8-4d82-bcb6-xxxxxx")["output"]["task_status"] == "UNKNOWN"


def test_n4_cancel_of_a_finished_task_is_400(server: Server):
    tid = server.create(T2V).json()["output"]["task_id"]
    server.wait(tid)
    with server.client() as c:
        _error(c.post(f"/tasks/{tid}/cancel"), 400, "UnsupportedOperation")


def test_n5_cancel_pending_then_canceled(make_server):
    srv = make_server(workers=0)
    tid = srv.create(T2V).json()["output"]["task_id"]
    with srv.client() as c:
        assert c.post(f"/tasks/{tid}/cancel").status_code == 200
    assert srv.task(tid)["output"]["task_status"] == "CANCELED"


def test_n6_oss_url_without_resolve_header_is_400(server: Server):
    body = {"model": "wan2.2-i2v-flash", "input": {"prompt": "x", "img_url": "oss://dashscope-instant/a/b/c.png"}}
    _error(server.create(body), 400, "InvalidParameter.DataInspection")


def test_n7_unknown_model_is_400_model_not_exist(server: Server):
    r = server.create({**T2V, "model": "wan3-t2v"})
    _error(r, 400, "InvalidParameter")
    assert r.json()["message"].startswith("Model not exist.")


def test_n8_t2v_size_given_as_720p_is_invalid_parameter(server: Server):
    _error(server.create({**T2V, "parameters": {"size": "720P"}}), 400, "InvalidParameter")


def test_n10_create_answers_task_id_and_status(server: Server):
    out = server.create(T2V).json()["output"]
    assert set(out) == {"task_id", "task_status"} and out["task_status"] == "PENDING"


def test_n11_list_is_flat_with_status_and_ms_times(server: Server):
    tid = server.create(T2V).json()["output"]["task_id"]
    server.wait(tid)
    with server.client() as c:
        item = c.get("/tasks/").json()["data"][0]
    assert (item["status"] == "SUCCEEDED" and isinstance(item["gmt_create"], int)
            and isinstance(item["end_time"], int))


def test_n9_an_over_long_prompt_is_truncated_not_refused(server: Server):
    prompt = "猫" * 900
    body = curl(server, "video-generation", {"model": "wanx2.1-t2v-turbo", "input": {"prompt": prompt},
                                             "parameters": {"size": "832*480"}})
    assert body["output"]["orig_prompt"] == "猫" * 800


def test_n12_v2_client_uploads_local_media_for_wan27(server: Server, media):
    from dashscope.v2 import Client

    client = Client(api_key=server.key, base_url=server.api)
    job = client.videos.generate(model="wan2.7-i2v", prompt="p", media=[
        {"type": "first_frame", "url": media["file:first_frame.png"]}], resolution="720P", duration=2,
        parameters={"audio_setting": "auto"})
    assert job.output["task_status"] == "SUCCEEDED"
    check(job.output["video_url"], (1280, 720), 2, audio=True)
