"""encode_mp4 / audio_duration: what the encoded MP4 must look like."""

from __future__ import annotations

import io
import wave
from pathlib import Path

import av
import numpy as np
import pytest

from wanserve.errors import ServiceError, TaskCanceled
from wanserve.media.video import audio_duration, encode_mp4
from wanserve.media.watermark import placement

W, H, FPS = 256, 144, 30


def frames(n: int, width: int = W, height: int = H) -> list[np.ndarray]:
    """Smooth colour gradients, brightening a little in every frame."""
    y, x = np.mgrid[0:height, 0:width]
    out = []
    for i in range(n):
        r = x * 180 // max(1, width - 1) + i % 70
        g = y * 180 // max(1, height - 1) + i % 70
        b = np.full_like(r, 40 + 2 * (i % 70))
        out.append(np.dstack([r, g, b]).astype(np.uint8))
    return out


def wav_bytes(seconds: float, rate: int = 22050, channels: int = 1) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    tone = (np.sin(2 * np.pi * 440 * t) * 10000).astype(np.int16)
    data = np.repeat(tone[:, None], channels, axis=1)
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(data.tobytes())
    return buf.getvalue()


def mp3_bytes(seconds: float, rate: int = 44100) -> bytes:
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp3") as c:
        s = c.add_stream("libmp3lame", rate=rate)
        s.layout = "mono"
        s.format = "fltp"
        n = int(seconds * rate)
        samples = (np.sin(2 * np.pi * 330 * np.arange(n) / rate) * 0.3).astype(np.float32)
        for k in range(0, n, 1152):
            frame = av.AudioFrame.from_ndarray(samples[None, k : k + 1152], format="fltp", layout="mono")
            frame.sample_rate = rate
            frame.pts = k
            c.mux(s.encode(frame))
        c.mux(s.encode(None))
    return buf.getvalue()


def encode(path: Path, n: int = 30, **kw) -> Path:
    width, height = kw.pop("width", W), kw.pop("height", H)
    encode_mp4(iter(kw.pop("frames", None) or frames(n, width, height)), path, width=width, height=height,
               fps=FPS, frame_count=n, **kw)
    return path


def decode_video(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def mad(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(int) - b.astype(int)).mean())


def stream_seconds(stream) -> float:
    return float(stream.duration * stream.time_base)


def test_encoded_video_is_h264_yuv420p_at_constant_30fps_with_requested_size_and_frame_count(tmp_path):
    path = encode(tmp_path / "v.mp4", n=45)
    with av.open(str(path)) as c:
        v = c.streams.video[0]
        assert v.codec_context.name == "h264"
        assert v.codec_context.pix_fmt == "yuv420p"
        assert v.average_rate == 30
        assert v.frames == 45
        assert (v.codec_context.width, v.codec_context.height) == (W, H)
        assert stream_seconds(v) == pytest.approx(45 / 30, abs=1e-3)
        assert not c.streams.audio
    decoded = decode_video(path)
    assert len(decoded) == 45
    assert decoded[0].shape == (H, W, 3)


def test_encoded_frames_look_like_the_input(tmp_path):
    src = frames(10)
    decoded = decode_video(encode(tmp_path / "v.mp4", n=10, frames=src))
    for a, b in zip(src, decoded, strict=True):
        assert np.abs(a.astype(int) - b.astype(int)).mean() < 6


def test_full_hd_1920x1080_encodes_although_1080_is_not_a_multiple_of_16(tmp_path):
    path = encode(tmp_path / "hd.mp4", n=3, width=1920, height=1080)
    decoded = decode_video(path)
    assert len(decoded) == 3
    assert decoded[0].shape == (1080, 1920, 3)


def test_audio_longer_than_the_video_is_cut_to_the_video_duration(tmp_path):
    path = encode(tmp_path / "a.mp4", n=30, audio=wav_bytes(3.0))
    with av.open(str(path)) as c:
        a = c.streams.audio[0]
        assert a.codec_context.name == "aac"
        assert a.codec_context.channels == 2
        assert stream_seconds(a) == pytest.approx(1.0, abs=0.05)


def test_audio_shorter_than_the_video_is_padded_with_silence_to_the_video_duration(tmp_path):
    path = encode(tmp_path / "a.mp4", n=60, audio=wav_bytes(0.5, rate=48000, channels=2))
    with av.open(str(path)) as c:
        a = c.streams.audio[0]
        assert a.codec_context.name == "aac"
        assert stream_seconds(a) == pytest.approx(2.0, abs=0.05)
    with av.open(str(path)) as c:
        tail = np.concatenate([f.to_ndarray() for f in c.decode(audio=0)], axis=1)[:, -a.rate // 2 :]
    assert np.abs(tail).max() < 0.01  # the padding is silence


def test_mp3_audio_is_accepted(tmp_path):
    path = encode(tmp_path / "a.mp4", n=30, audio=mp3_bytes(1.5))
    with av.open(str(path)) as c:
        assert stream_seconds(c.streams.audio[0]) == pytest.approx(1.0, abs=0.05)


def test_watermark_changes_the_bottom_right_corner_and_not_the_top_left(tmp_path):
    src = frames(5)
    plain = decode_video(encode(tmp_path / "plain.mp4", n=5, frames=src))
    marked = decode_video(encode(tmp_path / "marked.mp4", n=5, frames=src, watermark=True))
    x, y, w, h = placement(W, H)
    assert x > W * 0.6 and y > H * 0.8  # the label sits at the bottom right
    corner = np.s_[y : y + h, x : x + w]
    top_left = np.s_[: H // 2, : W // 2]
    for s, p, m in zip(src, plain, marked, strict=True):
        # Compared with the source: only the encoder's small error, except where the label is.
        assert mad(p[corner], s[corner]) < 3
        assert mad(m[corner], s[corner]) > 15
        assert mad(m[top_left], s[top_left]) < 3
        assert mad(p[corner], m[corner]) > 15


def test_watermark_does_not_modify_the_callers_frames(tmp_path):
    src = frames(3)
    before = [f.copy() for f in src]
    encode(tmp_path / "v.mp4", n=3, frames=src, watermark=True)
    assert all(np.array_equal(a, b) for a, b in zip(src, before, strict=True))


@pytest.mark.parametrize("given", [29, 31])
def test_a_frame_count_other_than_announced_raises_and_leaves_no_file(tmp_path, given):
    path = tmp_path / "v.mp4"
    with pytest.raises(ValueError):
        encode_mp4(iter(frames(given)), path, width=W, height=H, fps=FPS, frame_count=30)
    assert list(tmp_path.iterdir()) == []


def test_a_frame_of_the_wrong_shape_raises_value_error(tmp_path):
    bad = frames(3)
    bad[1] = bad[1][:, :-2]
    with pytest.raises(ValueError):
        encode_mp4(iter(bad), tmp_path / "v.mp4", width=W, height=H, fps=FPS, frame_count=3)
    assert list(tmp_path.iterdir()) == []


def test_undecodable_audio_raises_invalid_file_format(tmp_path):
    with pytest.raises(ServiceError) as err:
        encode(tmp_path / "v.mp4", n=3, audio=b"this is not audio at all" * 100)
    assert err.value.code == "InvalidFile.Format"
    assert list(tmp_path.iterdir()) == []


def test_an_error_from_the_frame_source_propagates_and_leaves_no_file(tmp_path):
    def source():
        yield from frames(10)
        raise TaskCanceled()

    path = tmp_path / "v.mp4"
    with pytest.raises(TaskCanceled):
        encode_mp4(source(), path, width=W, height=H, fps=FPS, frame_count=30)
    assert list(tmp_path.iterdir()) == []


def test_a_failed_encode_leaves_an_existing_file_untouched(tmp_path):
    path = tmp_path / "v.mp4"
    path.write_bytes(b"old")
    with pytest.raises(ValueError):
        encode_mp4(iter(frames(2)), path, width=W, height=H, fps=FPS, frame_count=30)
    assert path.read_bytes() == b"old"
    assert list(tmp_path.iterdir()) == [path]


def test_audio_duration_measures_wav_and_mp3(tmp_path):
    assert audio_duration(wav_bytes(2.5)) == pytest.approx(2.5, abs=0.01)
    assert audio_duration(mp3_bytes(3.0)) == pytest.approx(3.0, abs=0.1)


def test_audio_duration_of_garbage_raises_invalid_file_format():
    with pytest.raises(ServiceError) as err:
        audio_duration(b"\x00\x01garbage" * 50)
    assert err.value.code == "InvalidFile.Format"
