"""Tests for wanserve.media.inputs: image and audio sniffing and limits. All inputs are built in code."""

from __future__ import annotations

import io
import math
import struct
import zlib

import av
import numpy as np
import pytest
from PIL import Image, ImageFile

from wanserve.api.dashscope.errors import http_status
from wanserve.errors import ServiceError
from wanserve.media.audio import wav_bytes
from wanserve.media.inputs import (
    LEGACY_AUDIO_LIMITS,
    LEGACY_IMAGE_LIMITS,
    WAN27_AUDIO_LIMITS,
    WAN27_IMAGE_LIMITS,
    AudioLimits,
    ImageLimits,
    check_audio,
    load_image,
    sniff_audio_format,
)

from .conftest import mp3_bytes

# --------------------------------------------------------------------------------------------- image builders


def encode(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def rgb(width: int = 400, height: int = 400) -> Image.Image:
    arr = np.zeros((height, width, 3), dtype=np.uint8)
    arr[..., 0] = np.linspace(0, 255, width, dtype=np.uint8)[None, :]
    arr[..., 1] = 128
    return Image.fromarray(arr, "RGB")


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_with_header_only(width: int, height: int) -> bytes:
    """A tiny PNG whose IHDR (with a correct CRC) claims width x height RGB pixels."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 16)
    return (
        b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")
    )


def load(data: bytes, limits: ImageLimits = LEGACY_IMAGE_LIMITS) -> Image.Image:
    return load_image(data, limits, field="img_url")


def refused(data: bytes, limits: ImageLimits = LEGACY_IMAGE_LIMITS) -> ServiceError:
    with pytest.raises(ServiceError) as info:
        load(data, limits)
    assert http_status(info.value.code) == 400
    assert info.value.message.startswith("img_url: ")
    return info.value


# -------------------------------------------------------------------------------------------- images: formats


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "BMP", "WEBP"])
def test_allowed_image_formats_load_as_rgb_with_their_size(fmt):
    img = load(encode(rgb(640, 480), fmt))
    assert img.mode == "RGB"
    assert img.size == (640, 480)


def test_pixels_survive_loading():
    source = rgb(400, 380)
    img = load(encode(source, "PNG"))
    assert np.array_equal(np.asarray(img), np.asarray(source))


def test_exif_orientation_is_applied():
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed
    img = load(encode(rgb(600, 400), "JPEG", exif=exif.tobytes()))
    assert img.size == (400, 600)


def test_greyscale_and_palette_images_without_transparency_become_rgb():
    assert load(encode(rgb().convert("L"), "PNG")).mode == "RGB"
    assert load(encode(rgb().convert("P"), "PNG")).mode == "RGB"


def test_sixteen_bit_png_is_scaled_to_eight_bits():
    arr = np.full((400, 400), 65535, dtype=np.uint16)
    arr[:, :200] = 0
    img = load(encode(Image.fromarray(arr), "PNG"))
    pixels = np.asarray(img)
    assert pixels[0, 0].tolist() == [0, 0, 0]
    assert pixels[0, 399].tolist() == [255, 255, 255]


def test_cmyk_jpeg_becomes_rgb():
    assert load(encode(rgb().convert("CMYK"), "JPEG")).mode == "RGB"


def test_gif_is_refused_with_the_allowed_formats():
    err = refused(encode(rgb(), "GIF"))
    assert err.code == "InvalidImage.FileFormat"
    assert "GIF" in err.message
    assert "Allowed formats: JPEG, PNG, BMP, WEBP" in err.message


def test_tiff_is_refused():
    err = refused(encode(rgb(), "TIFF"))
    assert err.code == "InvalidImage.FileFormat"
    assert "TIFF" in err.message


def test_svg_is_refused():
    svg = (b'<svg xmlns="http://www.w3.org/2000/svg" width="400" height="400">'
           b'<rect width="400" height="400"/></svg>')
    err = refused(svg)
    assert err.code == "InvalidImage.FileFormat"
    assert "SVG" in err.message


def test_text_is_refused():
    assert refused(b"hello, this is not an image\n").code == "InvalidImage.FileFormat"


def test_empty_data_is_refused():
    assert refused(b"").code == "InvalidImage.FileFormat"


def test_truncated_jpeg_is_refused():
    data = encode(rgb(800, 600), "JPEG", quality=95)
    err = refused(data[: len(data) // 2])
    assert err.code == "InvalidImage.FileFormat"
    assert "truncated" in err.message


def test_png_with_garbage_after_its_signature_is_refused():
    assert refused(b"\x89PNG\r\n\x1a\n" + b"\x00garbage" * 20).code == "InvalidImage.FileFormat"


# ---------------------------------------------------------------------------------------------- images: alpha


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_png_with_alpha_channel_is_refused(mode):
    err = refused(encode(rgb().convert(mode), "PNG"))
    assert err.code == "InvalidImage.FileFormat"
    assert "alpha" in err.message and "transparency" in err.message


def test_palette_png_with_transparency_is_refused():
    img = rgb().convert("P")
    err = refused(encode(img, "PNG", transparency=0))
    assert err.code == "InvalidImage.FileFormat"
    assert "alpha" in err.message


def test_webp_with_alpha_is_refused():
    img = rgb().convert("RGBA")
    img.putalpha(128)
    err = refused(encode(img, "WEBP", lossless=True))
    assert err.code == "InvalidImage.FileFormat"


# ----------------------------------------------------------------------------------------------- images: size


def test_too_small_image_is_refused_with_its_size_and_the_range():
    err = refused(encode(rgb(300, 200), "PNG"))
    assert err.code == "InvalidImageResolution"
    assert "300x200 px" in err.message
    assert "between 360 and 2000 px" in err.message
    assert "larger" in err.message


def test_too_large_image_is_refused():
    err = refused(encode(rgb(2001, 400), "PNG"))
    assert err.code == "InvalidImageResolution"
    assert "2001x400" in err.message


def test_sides_on_the_bounds_are_accepted():
    assert load(encode(rgb(360, 2000), "JPEG")).size == (360, 2000)


def test_wan27_limits_accept_small_sides_that_legacy_refuses():
    data = encode(rgb(240, 300), "PNG")
    assert load(data, WAN27_IMAGE_LIMITS).size == (240, 300)
    assert refused(data, LEGACY_IMAGE_LIMITS).code == "InvalidImageResolution"


def test_aspect_ratio_beyond_8_to_1_is_refused():
    err = refused(encode(rgb(2000, 240), "PNG"), WAN27_IMAGE_LIMITS)
    assert err.code == "InvalidImageResolution"
    assert "1:8" in err.message and "8:1" in err.message


def test_aspect_ratio_beyond_1_to_8_is_refused():
    assert refused(encode(rgb(240, 2000), "PNG"), WAN27_IMAGE_LIMITS).code == "InvalidImageResolution"


def test_aspect_ratio_of_exactly_8_to_1_is_accepted():
    assert load(encode(rgb(1920, 240), "PNG"), WAN27_IMAGE_LIMITS).size == (1920, 240)


def test_image_over_the_byte_limit_is_refused():
    data = encode(rgb(400, 400), "BMP")
    err = refused(data, ImageLimits(1, 2000, len(data) - 1))
    assert err.code == "InvalidFile.Size"
    assert "MB" in err.message


def test_decompression_bomb_header_is_refused_without_decoding(monkeypatch):
    def no_decoding(self):
        raise AssertionError("the image must not be decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    err = refused(png_with_header_only(100_000, 100_000), WAN27_IMAGE_LIMITS)
    assert err.code == "InvalidImageResolution"


def test_oversized_header_below_pillows_bomb_limit_is_refused_before_decoding(monkeypatch):
    def no_decoding(self):
        raise AssertionError("the image must not be decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    err = refused(png_with_header_only(9000, 3000), WAN27_IMAGE_LIMITS)
    assert err.code == "InvalidImageResolution"
    assert "9000x3000" in err.message


def test_crafted_header_helper_makes_a_png_pillow_reads():
    with Image.open(io.BytesIO(png_with_header_only(500, 400))) as img:
        assert img.size == (500, 400)


# --------------------------------------------------------------------------------------------- audio builders


def wav_sine(seconds: float, rate: int = 8000) -> bytes:
    n = round(seconds * rate)
    return wav_bytes((np.sin(2 * math.pi * 440 * np.arange(n) / rate) * 12000).astype("<i2"), rate)


def mp3_codec() -> str | None:
    for name in ("libmp3lame", "mp3"):
        if name in av.codecs_available:
            try:
                av.codec.Codec(name, "w")  # "mp3" is usually a decoder only
            except av.codec.codec.UnknownCodecError:
                continue
            return name
    return None


def mp3_sine(seconds: float, *, id3: bool = True) -> bytes:
    if mp3_codec() != "libmp3lame":
        pytest.skip("PyAV has no libmp3lame encoder")
    return mp3_bytes(seconds, 440.0, id3=id3)


def audio_refused(data: bytes, limits: AudioLimits = LEGACY_AUDIO_LIMITS) -> ServiceError:
    with pytest.raises(ServiceError) as info:
        check_audio(data, limits, field="audio_url")
    assert http_status(info.value.code) == 400
    assert info.value.message.startswith("audio_url: ")
    return info.value


# ----------------------------------------------------------------------------------------------- audio


def test_wav_duration_is_returned():
    assert check_audio(wav_sine(5), LEGACY_AUDIO_LIMITS, field="audio_url") == pytest.approx(5.0, abs=0.01)


def test_mp3_with_id3_tag_duration_is_returned():
    data = mp3_sine(5)
    assert data[:3] == b"ID3"
    assert check_audio(data, LEGACY_AUDIO_LIMITS, field="audio_url") == pytest.approx(5.0, abs=0.1)


def test_mp3_starting_with_a_frame_sync_is_accepted():
    data = mp3_sine(4, id3=False)
    assert data[0] == 0xFF and data[1] & 0xE0 == 0xE0
    assert check_audio(data, LEGACY_AUDIO_LIMITS, field="audio_url") == pytest.approx(4.0, abs=0.1)


def test_audio_shorter_than_the_minimum_is_refused_with_the_measured_duration():
    err = audio_refused(wav_sine(1.5))
    assert err.code == "InvalidFile.Duration"
    assert "1.50 s" in err.message
    assert "3-30 s" in err.message


def test_audio_longer_than_the_maximum_is_refused():
    err = audio_refused(wav_sine(31))
    assert err.code == "InvalidFile.Duration"
    assert "31.00 s" in err.message
    assert "longer than 30s" in err.message


def test_long_mp3_is_refused():
    assert audio_refused(mp3_sine(32)).code == "InvalidFile.Duration"


def test_wan27_accepts_two_and_a_half_seconds_that_legacy_refuses():
    data = wav_sine(2.5)
    assert check_audio(data, WAN27_AUDIO_LIMITS, field="media[1].url") == pytest.approx(2.5, abs=0.01)
    assert audio_refused(data, LEGACY_AUDIO_LIMITS).code == "InvalidFile.Duration"


def test_audio_on_the_duration_bounds_is_accepted():
    assert check_audio(wav_sine(3), LEGACY_AUDIO_LIMITS, field="audio_url") == pytest.approx(3.0)
    assert check_audio(wav_sine(30), LEGACY_AUDIO_LIMITS, field="audio_url") == pytest.approx(30.0)


def test_audio_over_15_mb_is_refused():
    data = b"RIFF" + b"\x00\x00\x00\x00" + b"WAVE" + b"\x00" * (15 * 2**20)
    err = audio_refused(data)
    assert err.code == "InvalidFile.Size"
    assert "File size is larger than 15MB." in err.message


@pytest.mark.parametrize(
    "data",
    [
        b"OggS\x00\x02" + b"\x00" * 100,
        b"fLaC\x00\x00\x00\x22" + b"\x00" * 100,
        b"\xff\xf1\x50\x80" + b"\x00" * 100,  # AAC ADTS
        b"hello, not audio",
        b"",
    ],
    ids=["ogg", "flac", "aac-adts", "text", "empty"],
)
def test_non_wav_mp3_audio_is_refused_with_the_allowed_types(data):
    err = audio_refused(data)
    assert err.code == "InvalidFile.Format"
    assert "File type is not supported. Allowed types are: .wav, .mp3." in err.message


def test_wav_header_with_garbage_is_refused_as_undecodable():
    err = audio_refused(b"RIFF\x24\x00\x00\x00WAVEjunk" + b"\x13" * 400)
    assert err.code == "InvalidFile.Format"


def test_mp3_sync_followed_by_garbage_is_refused():
    assert audio_refused(b"\xff\xfb\x90\x00" + b"\x00" * 64).code == "InvalidFile.Format"


def test_audio_format_is_sniffed_from_bytes():
    assert sniff_audio_format(wav_sine(0.1)) == "wav"
    assert sniff_audio_format(b"ID3\x04\x00") == "mp3"
    assert sniff_audio_format(b"\xff\xfb\x90\x00") == "mp3"
    assert sniff_audio_format(b"\xff\xf1\x50\x80") is None
