"""The wan engine's speed keys (issue 11) on tiny random-weight checkpoints, on the CPU, in float32:
batched guidance computes what two forwards compute, fused projections what unfused ones do, each
opt-in mode loads and renders the contract's frames, and every bad value is refused at start.
Nothing here is timed (the GPU figures come from benchmarks/gpu_denoise.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("diffusers")

import torch

from wanserve.engines import EngineConfigError, EngineSet, RenderJob
from wanserve.engines.wan.speed import GuidanceBatch, fuse_qkv

from . import wan_fixtures

MODEL = "wanx2.1-t2v-turbo"


class Tiny:
    def __init__(self, root: Path) -> None:
        self.t2v = wan_fixtures.build_t2v(root / "t2v-2-blocks", layers=2)
        self.lora = wan_fixtures.build_lora(self.t2v, root / "loras" / "distilled")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Tiny:
    return Tiny(tmp_path_factory.mktemp("wan-speed"))


@pytest.fixture(scope="module")
def plain(tiny: Tiny) -> np.ndarray:
    """The video with default settings (cfg_batch "auto": batched), for the numerics-preserving modes."""
    return render(EngineSet({MODEL: wan(tiny.t2v)}))


def wan(checkpoint: Path, **keys: Any) -> dict[str, Any]:
    # 4 native fps: 5 native frames for a 1 s clip (the decode stays cheap)
    return {"engine": "wan", "checkpoint": str(checkpoint), "num_inference_steps": 3, "native_fps": 4,
            **keys}


def render(es: EngineSet, seed: int = 7) -> np.ndarray:
    j = RenderJob(kind="t2v", model=MODEL, width=100, height=60, frame_count=30, prompt="A cat walks.",
                  seed=seed)
    return np.stack(list(es.for_model(MODEL).render(j, lambda done, total: None)))


def block_calls(es: EngineSet) -> list[int]:
    """Counts the real transformer forwards (the first block runs once per forward, batched or not)."""
    calls: list[int] = []
    transformer = es.for_model(MODEL).loaded.components["transformer"]
    transformer.blocks[0].register_forward_pre_hook(lambda mod, args: calls.append(1))
    return calls


# ==================================================================================================
# numerics: the same function


@pytest.mark.parametrize("layout", ["t2v", "ti2v", "image"])
def test_batched_guidance_equals_two_forwards(layout: str):
    torch.manual_seed(0)
    image = layout == "image"
    channels = 36 if image else 16
    transformer = wan_fixtures.tiny_transformer(
        channels, image_dim=wan_fixtures.CLIP_DIM if image else None,
        pos_embed_seq_len=2 * wan_fixtures.CLIP_TOKENS if image else None, layers=2)
    x = torch.randn(1, channels, 2, 8, 8)
    ts = torch.full((1, 2 * 4 * 4), 700.0) if layout == "ti2v" else torch.tensor([700.0])
    cond, uncond = torch.randn(1, 512, wan_fixtures.TEXT_DIM), torch.randn(1, 512, wan_fixtures.TEXT_DIM)
    # FLF2V: the first and the last frame's CLIP tokens, as two rows per sample
    extra = {"encoder_hidden_states_image": torch.randn(2, wan_fixtures.CLIP_TOKENS, wan_fixtures.CLIP_DIM)} \
        if image else {}
    with torch.no_grad():
        expected = [transformer(hidden_states=x, timestep=ts, encoder_hidden_states=e, return_dict=False,
                                **extra)[0] for e in (cond, uncond)]
        calls: list[int] = []
        transformer.blocks[0].register_forward_pre_hook(lambda mod, args: calls.append(args[0].shape[0]))
        with GuidanceBatch([transformer], cond, uncond) as batch:
            got = [transformer(hidden_states=x, timestep=ts, encoder_hidden_states=e, return_dict=False,
                               **extra)[0] for e in (cond, uncond)]
        assert "forward" not in transformer.__dict__  # the module is as it was
    assert calls == [2] and batch.batched == 1  # one forward, on a batch of two
    # float32 on the CPU: equal to rounding (bf16 on a GPU: within ~1e-2 relative, the bf16 matmul noise)
    for e, g in zip(expected, got, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5)


def test_fused_projections_compute_what_the_unfused_ones_do():
    torch.manual_seed(1)
    transformer = wan_fixtures.tiny_transformer(36, image_dim=wan_fixtures.CLIP_DIM,
                                                pos_embed_seq_len=2 * wan_fixtures.CLIP_TOKENS)
    inputs = {"hidden_states": torch.randn(1, 36, 2, 8, 8), "timestep": torch.tensor([300.0]),
              "encoder_hidden_states": torch.randn(1, 512, wan_fixtures.TEXT_DIM),
              "encoder_hidden_states_image": torch.randn(2, wan_fixtures.CLIP_TOKENS, wan_fixtures.CLIP_DIM)}
    n_params = sum(p.numel() for p in transformer.parameters())
    with torch.no_grad():
        before = transformer(**inputs, return_dict=False)[0]
        assert fuse_qkv(transformer) == 2  # self- and cross-attention of the block
        after = transformer(**inputs, return_dict=False)[0]
    attn = transformer.blocks[0].attn1
    assert attn.fused_projections and attn.to_q.weight.data_ptr() == attn.to_qkv.weight.data_ptr()  # a view
    assert transformer.blocks[0].attn2.to_added_kv is not None
    added = sum(p.numel() for n, p in transformer.named_parameters() if "to_qkv" in n or "to_kv" in n
                or "to_added_kv" in n)
    assert sum(p.numel() for p in transformer.parameters()) == n_params + added  # listed, but views
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)


def test_cfg_batch_renders_the_same_video_with_one_forward_per_step(tiny: Tiny):
    batched = EngineSet({MODEL: wan(tiny.t2v, cfg_batch=True)})
    calls = block_calls(batched)
    a = render(batched)
    assert len(calls) == 3  # 3 steps, one (batched) forward each
    unbatched = EngineSet({MODEL: wan(tiny.t2v, cfg_batch=False)})
    calls = block_calls(unbatched)
    b = render(unbatched)
    assert len(calls) == 6
    assert a.shape == b.shape == (30, 60, 100, 3)
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 1  # uint8 frames: equal up to rounding


def test_guidance_scale_one_makes_no_negative_prompt_forward(tiny: Tiny):
    es = EngineSet({MODEL: wan(tiny.t2v, guidance_scale=1.0)})
    calls = block_calls(es)
    assert render(es).shape == (30, 60, 100, 3)
    assert len(calls) == 3


# ==================================================================================================
# each mode loads and renders


MODES = {
    # Inductor on a 2-core CI machine compiles for minutes: the eager backend traces the same regions.
    "compile": {"compile": "regional-eager"},
    "fuse_qkv": {"fuse_qkv": True},
    "vae_tiling": {"vae_tiling": True},
    "attention_backend": {"attention_backend": "native"},
    "mag_calibrate": {"cache": {"type": "mag", "calibrate": True}},
    "mag": {"cache": {"type": "mag", "mag_ratios": [1.0, 1.0, 0.99, 0.98, 0.97, 0.95], "threshold": 0.5,
                      "retention_ratio": 0.0}},
    "distilled": {"distilled": {"scale": 1.0}, "num_inference_steps": 4, "guidance_scale": 1.0},
}


@pytest.mark.parametrize("mode", list(MODES))
def test_each_speed_mode_loads_and_renders_the_contract_frames(tiny: Tiny, plain: np.ndarray, mode: str,
                                                               monkeypatch: pytest.MonkeyPatch):
    keys = {k: dict(v) if isinstance(v, dict) else v for k, v in MODES[mode].items()}
    if "distilled" in keys:
        keys["distilled"]["lora"] = str(tiny.lora)
    es = EngineSet({MODEL: wan(tiny.t2v, **keys)})
    frames = render(es)
    assert frames.shape == (30, 60, 100, 3)
    # a second task: the cache state reset, the compiled blocks reused
    assert frames.shape == render(es, seed=8).shape
    if mode in ("compile", "fuse_qkv", "attention_backend"):  # numerics-preserving
        assert np.abs(frames.astype(int) - plain.astype(int)).max() <= 1
    if mode == "distilled":  # fused into the weights: no adapter left, other weights
        loaded = es.for_model(MODEL).loaded
        assert not loaded.adapters and not any("lora" in n for n, _ in
                                               loaded.components["transformer"].named_parameters())
        assert not np.array_equal(frames, render(EngineSet({MODEL: wan(tiny.t2v, num_inference_steps=4,
                                                                          guidance_scale=1.0)})))


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
@pytest.mark.parametrize("keys,message", [
    ({"quantize": "fp8"}, r"quantize = \"fp8\" needs a CUDA device with compute capability >= 8\.9"),
    ({"offload": "group"}, r"offload = 'group' needs a CUDA device"),
])
def test_cuda_only_modes_are_refused_at_start_on_the_cpu(tiny: Tiny, keys: dict, message: str):
    with pytest.raises(EngineConfigError, match=message) as info:
        EngineSet({MODEL: wan(tiny.t2v, **keys)})
    assert "\n" not in str(info.value)


# ==================================================================================================
# bad values: refused at start, in one line naming the key


@pytest.mark.parametrize("keys,message", [
    ({"cfg_batch": "yes"}, r"cfg_batch = 'yes' must be true, false or \"auto\""),
    ({"compile": "max-autotune"},
     r"compile = 'max-autotune' must be one of \['none', 'regional', 'regional-eager'\]"),
    ({"fuse_qkv": "true"}, r"fuse_qkv = 'true' must be true or false"),
    ({"vae_tiling": "sometimes"}, r"vae_tiling = 'sometimes' must be true, false or \"auto\""),
    ({"quantize": "int4"}, r"quantize = 'int4' must be one of \['none', 'fp8'\]"),
    ({"offload": "disk"}, r"offload = 'disk' must be one of .*'group'"),
    ({"attention_backend": "fastest"}, r"attention_backend = 'fastest' must be one of the diffusers"),
    ({"cache": "teacache"}, r"cache type 'teacache' must be one of .*'mag'"),
    ({"cache": "mag"}, r"cache type \"mag\" needs mag_ratios"),
    ({"cache": {"type": "mag", "ratios": [1.0]}}, r"cache type \"mag\" has no options \['ratios'\]"),
    ({"distilled": {"path": "/x"}}, r"distilled: unknown keys \['path'\]"),
    ({"distilled": {"lora": "/nowhere.safetensors"}}, r"distilled: LoRA file '/nowhere\.safetensors' does"),
    ({"distilled": "fast"}, r"distilled = 'fast' must be a table"),
    ({"cfg_batch": True, "cache": "taylorseer"}, r"cfg_batch = true cannot be combined with cache"),
    ({"compile": "regional", "cache": "taylorseer"}, r"compile = 'regional' cannot be combined with cache"),
])
def test_bad_speed_settings_are_refused_at_start_in_one_line(tiny: Tiny, keys: dict, message: str):
    with pytest.raises(EngineConfigError, match=message) as info:
        EngineSet({MODEL: wan(tiny.t2v, **keys)})
    assert "\n" not in str(info.value) and "[models.'wanx2.1-t2v-turbo']" in str(info.value)
