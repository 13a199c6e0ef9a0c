"""The sound engine slot: generated sound for models that promise it (engines.sound), the start-time
refusal of a real engine that would ship them silent, and the caller's audio reaching the engine."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import wave
from pathlib import Path

import av
import numpy as np
import pytest

from tests.conftest import download, free_port, probe_video, running_server, wav_bytes
from wanserve.catalog.models import find_model
from wanserve.engines import EngineConfigError, EngineSet
from wanserve.engines.base import Shot
from wanserve.engines.sound.placeholder import PlaceholderChord
from wanserve.generation.inputs import Inputs
from wanserve.generation.plan import plan
from wanserve.generation.request import GenerationRequest

RATE = 2000  # the tiny checkpoint's sampling rate; its window is 256 latents * 8 / 2000 Hz = 1.024 s


def build_stable_audio(path: Path) -> Path:
    """A tiny random StableAudioPipeline checkpoint (the component sizes of diffusers' own tests), saved
    as a local diffusers directory. Its scheduler is EDMDPMSolverMultistepScheduler, the deterministic
    parent of the real checkpoint's CosineDPMSolverMultistepScheduler, which needs torchsde."""
    import torch
    from diffusers import (
        AutoencoderOobleck,
        EDMDPMSolverMultistepScheduler,
        StableAudioDiTModel,
        StableAudioPipeline,
    )
    from diffusers.pipelines.stable_audio import StableAudioProjectionModel
    from transformers import T5Config, T5EncoderModel

    from tests.wan_fixtures import build_tokenizer

    torch.manual_seed(0)
    tokenizer = build_tokenizer()
    text_encoder = T5EncoderModel(T5Config(vocab_size=len(tokenizer), d_model=16, d_kv=4, d_ff=32,
                                           num_layers=1, num_heads=4, relative_attention_num_buckets=8,
                                           dropout_rate=0.0))
    transformer = StableAudioDiTModel(sample_size=256, in_channels=3, num_layers=2, attention_head_dim=4,
                                      num_attention_heads=2, num_key_value_attention_heads=2, out_channels=3,
                                      cross_attention_dim=4, time_proj_dim=8, global_states_input_dim=8,
                                      cross_attention_input_dim=4)
    vae = AutoencoderOobleck(encoder_hidden_size=6, downsampling_ratios=[2, 4], decoder_channels=3,
                             decoder_input_channels=3, audio_channels=2, channel_multiples=[2, 4],
                             sampling_rate=RATE)
    projection = StableAudioProjectionModel(text_encoder_dim=16, conditioning_dim=4, min_value=0,
                                            max_value=64)
    scheduler = EDMDPMSolverMultistepScheduler(solver_order=2, prediction_type="v_prediction", sigma_data=1.0,
                                               sigma_schedule="exponential", sigma_min=0.3, sigma_max=500)
    pipe = StableAudioPipeline(vae=vae, text_encoder=text_encoder.eval(), projection_model=projection,
                               tokenizer=tokenizer, transformer=transformer, scheduler=scheduler)
    pipe.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_stable_audio(tmp_path_factory.mktemp("sound") / "stable-audio-tiny")


def stable_audio(checkpoint: Path, **options) -> dict:
    return {"engine": "stable_audio", "checkpoint": str(checkpoint), "num_inference_steps": 3,
            "device": "cpu", **options}


def read_wav(data: bytes) -> tuple[np.ndarray, int, int]:
    with wave.open(io.BytesIO(data)) as w:
        pcm = np.frombuffer(w.readframes(w.getnframes()), "<i2")
        return pcm.reshape(-1, w.getnchannels()), w.getframerate(), w.getnchannels()


def audio_track(data: bytes) -> np.ndarray:
    """The video's audio track decoded to mono float samples."""
    with av.open(io.BytesIO(data)) as container:
        return np.concatenate([f.to_ndarray().mean(axis=0) for f in container.decode(audio=0)])


def test_stable_audio_makes_a_wav_of_the_exact_length_per_seed_and_per_shot(checkpoint: Path):
    sound = EngineSet({"wan2.6-t2v": {"sound": stable_audio(checkpoint)}}).sound_for_model("wan2.6-t2v")
    assert sound is not None and sound.name == "stable_audio"
    one, rate, channels = read_wav(sound.generate("rain on a tin roof", 2.5, seed=1))
    assert (rate, channels, len(one)) == (RATE, 2, 5000)  # 2.5 s in three windows of <= 1.024 s
    assert np.abs(one).mean() > 0
    assert np.array_equal(one, read_wav(sound.generate("rain on a tin roof", 2.5, seed=1))[0])
    assert not np.array_equal(one, read_wav(sound.generate("rain on a tin roof", 2.5, seed=2))[0])
    shots = (Shot(1, 0.0, 1.0, "a dog barks"), Shot(2, 1.0, 2.0, "a bell rings"))
    per_shot, _, _ = read_wav(sound.generate("a dog barks, a bell rings", 2.0, seed=1, shots=shots))
    assert len(per_shot) == 4000
    assert np.abs(per_shot[1990:2010]).max() < np.abs(per_shot).max()  # faded where the shots meet


def test_which_models_get_which_sound(checkpoint: Path):
    es = EngineSet({"wan2.6-t2v": {"engine": "preview", "sound": "silent"},
                    "wan2.5-t2v-preview": {"sound": stable_audio(checkpoint)}})
    assert es.sound_for_model("wan2.6-t2v") is None  # configured silent
    assert es.sound_for_model("wan2.5-t2v-preview").name == "stable_audio"
    assert isinstance(es.sound_for_model("wan2.6-i2v"), PlaceholderChord)  # preview, not configured
    assert isinstance(es.sound_for_model("wan2.7-i2v-2026-04-25"), PlaceholderChord)  # an alias
    assert es.sound_for_model("wanx2.1-t2v-turbo") is None  # its catalog row is silent
    assert es.for_model("wan2.6-t2v").name == "preview"  # the preview engine never saw the sound key


def test_sound_configuration_is_checked_at_start(tmp_path: Path):
    with pytest.raises(EngineConfigError, match=r"'wan2\.6-t2v'.*sound = 'loud' must be \"silent\" or"):
        EngineSet({"wan2.6-t2v": {"sound": "loud"}})
    with pytest.raises(EngineConfigError, match=r"'wan2\.6-t2v'.*sound engine 'audioldm' is unknown"):
        EngineSet({"wan2.6-t2v": {"sound": {"engine": "audioldm"}}})
    with pytest.raises(EngineConfigError, match=r"'wanx2\.1-t2v-turbo'.*makes silent videos"):
        EngineSet({"wanx2.1-t2v-turbo": {"sound": stable_audio(tmp_path)}})
    with pytest.raises(EngineConfigError, match=r"'wan2\.6-t2v'\] sound: unknown keys \['steps'\]"):
        EngineSet({"wan2.6-t2v": {"sound": stable_audio(tmp_path, steps=3)}})
    with pytest.raises(EngineConfigError, match=r"'wan2\.6-t2v'\] sound: checkpoint .*no model_index\.json"):
        EngineSet({"wan2.6-t2v": {"sound": stable_audio(tmp_path / "missing")}})
    (tmp_path / "model_index.json").write_text("{}")
    with pytest.raises(EngineConfigError, match=r"'wan2\.6-t2v'\] sound: num_inference_steps = 0"):
        EngineSet({"wan2.6-t2v": {"sound": stable_audio(tmp_path, num_inference_steps=0)}})
    with pytest.raises(EngineConfigError, match=r"'wan2\.6-t2v'\] sound: cannot load the StableAudio"):
        EngineSet({"wan2.6-t2v": {"sound": stable_audio(tmp_path)}})  # not a real checkpoint


def test_a_real_engine_promising_sound_needs_a_sound_engine_or_silent():
    with pytest.raises(EngineConfigError) as err:
        EngineSet({"wan2.6-i2v": {"engine": "wan", "checkpoint": "/nowhere"}})
    message = str(err.value)
    assert "wan2.6-i2v" in message and 'sound = "silent"' in message and "stable_audio" in message
    assert "\n" not in message


def test_serve_refuses_a_wan_model_promising_sound_without_a_sound_engine(tmp_path: Path):
    config = tmp_path / "wanserve.toml"
    config.write_text('[models."wan2.7-i2v"]\nengine = "wan"\n'
                      'checkpoint = "/models/Wan2.2-I2V-A14B-Diffusers"\n')
    proc = subprocess.run([sys.executable, "-m", "wanserve.cli", "serve", "--config", str(config),
                           "--data-dir", str(tmp_path / "data"), "--port", str(free_port())],
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "WANSERVE_API_KEY": ""})
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("wanserve:")]  # not the log
    assert len(lines) == 1 and lines[0].startswith("wanserve: cannot start: "), proc.stderr
    assert "wan2.7-i2v" in lines[0] and 'sound = "silent"' in lines[0] and "stable_audio" in lines[0]


def test_the_callers_audio_reaches_the_engine_in_the_job():
    spec = find_model("wan2.7-i2v")
    req = GenerationRequest(model=spec.name, requested_model=spec.name, kind="wan27", prompt="p",
                            negative_prompt="", template=None, resolution="720P", size="1280*720", duration=2,
                            prompt_extend=False, shot_type="single", sound="input", watermark=False, seed=1,
                            media=[], resolve_uploads=False)
    audio = wav_bytes(1.0)
    assert plan(req, Inputs(audio=audio)).audio == audio
    assert plan(req, Inputs()).audio is None


@pytest.mark.slow
def test_generated_sound_through_a_task_is_an_aac_track_as_long_as_the_video(checkpoint: Path,
                                                                              tmp_path: Path):
    engines = EngineSet({"wan2.6-t2v": {"engine": "preview", "sound": stable_audio(checkpoint)}})
    with running_server(tmp_path / "data", engines=engines) as server:
        tracks = []
        for seed in (1, 2):
            body = {"model": "wan2.6-t2v", "input": {"prompt": "Waves break on a pebble beach at dusk."},
                    "parameters": {"size": "1280*720", "duration": 2, "seed": seed}}
            task = server.wait(server.create(body).json()["output"]["task_id"])
            assert task["output"]["task_status"] == "SUCCEEDED", task
            data = download(task["output"]["video_url"])
            info = probe_video(data)
            assert info.audio_codec == "aac" and info.frames == 60
            assert abs(info.audio_seconds - 2.0) < 0.05
            tracks.append(audio_track(data))
    a, b = tracks
    assert np.abs(a).mean() > 1e-4 and np.abs(b).mean() > 1e-4
    n = min(len(a), len(b))
    assert np.abs(a[:n] - b[:n]).mean() > 1e-4  # two seeds, two different tracks
