"""Benchmark: denoising speed of the `wan` engine against a stock diffusers pipeline, on a GPU.

    python benchmarks/gpu_denoise.py                       # T2V-1.3B, TI2V-5B, I2V-14B at 480P, 720P (CUDA)
    python benchmarks/gpu_denoise.py --mode default,nobatch,compile,fp8,cache,distilled   # speed modes
    python benchmarks/gpu_denoise.py --models 1.3b --sizes 480p --full-steps 50
    python benchmarks/gpu_denoise.py --count-only          # FLOPs per step of the full-size models (no GPU)
    python benchmarks/gpu_denoise.py --tiny --device cpu   # the whole benchmark on tiny configs (no GPU)

No downloaded weights: the full-size transformers (Wan2.1 T2V-1.3B and 14B, Wan2.2 TI2V-5B, with
their published configs), a UMT5-XXL-shaped text encoder and the Wan2.1 / Wan2.2 VAEs are built
on the meta device (accelerate's init_empty_weights), materialised on the GPU with `to_empty` and
filled with random values; a tokenizer is trained here on a few sentences. Random weights cost the
same time as real ones.

For each model and size, one run does, in order:
1. a warm-up generation (2 steps) through each path;
2. the wanserve engine (`WanEngine.render`, as a worker calls it: generation at the model's native
   frame rate, decode, fit to the exact size, flow interpolation to 30 fps) with `--full-steps`
   denoising steps;
3. a stock `WanPipeline(...)(prompt, height, width, num_frames, num_inference_steps)` with default
   settings (guidance 5.0, output_type "np") on the same modules and the same frame count.
It prints seconds per denoising step (median of the step-to-step intervals), the full-generation
time (measured, and extrapolated to `--steps` steps), the end-to-end time of a `--duration` video
(text and image encoding, denoising, VAE decode, frame-rate conversion and the MP4 encoding, with
`--steps` steps), the ratio engine / stock, peak GPU memory, and model FLOP utilisation: the FLOPs of
one step, counted with torch.utils.flop_counter on a meta-device copy of the transformer with the
step's exact input shapes (two forwards with classifier-free guidance, one without), divided by the
measured step time and by (a) the GPU's datasheet dense BF16 peak and (b) a BF16 matmul ceiling
measured in the same run (8192^3 matmuls; 1024^3 float32 on the CPU).

`--mode` runs the engine once per speed mode, each on freshly built modules (the modes change them):
default (the engine's defaults: batched guidance), nobatch (cfg_batch = false: two forwards per step,
the pre-issue-11 engine), compile (compile = "regional"; its warm-up time is printed), fp8
(quantize = "fp8"; skipped with the reason where torchao or an sm_89+ GPU is missing), fuse (fuse_qkv),
cache (cache first_block 0.05: random weights make its hit rate meaningless, so this times the
hooks' overhead only), distilled (4 steps, guidance_scale 1.0: the cost of a step-distilled checkpoint
or fused LoRA, no guidance forward).
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import itertools
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

FPS = 30
SIZES = {"480p": (832, 480), "720p": (1280, 720)}
TINY_SIZES = {"480p": (160, 96), "720p": (224, 128)}  # --tiny: the same code path, CPU-sized

# Dense BF16 tensor-core peak (TFLOP/s, no sparsity) by device name; the first match wins.
PEAK_BF16_TFLOPS = (
    ("H200 NVL", 835.0),
    ("H200", 989.4),
    ("GH200", 989.4),
    ("H100 NVL", 835.0),
    ("H100 PCIe", 756.0),
    ("H100", 989.4),  # SXM ("NVIDIA H100 80GB HBM3")
    ("A100", 312.0),
    ("L40S", 362.0),
)

_WAN_TRANSFORMER = {
    "patch_size": (1, 2, 2), "attention_head_dim": 128, "text_dim": 4096, "freq_dim": 256,
    "cross_attn_norm": True, "qk_norm": "rms_norm_across_heads", "eps": 1e-6, "rope_max_seq_len": 1024,
}


@dataclasses.dataclass(frozen=True)
class ModelCase:
    key: str
    title: str
    transformer: dict[str, Any]
    vae: dict[str, Any]
    ti2v: bool  # Wan2.2 TI2V-5B: expand_timesteps, 24 fps, 16x VAE
    public_model: str  # the catalog model the engine serves it as (t2v, or i2v when image_encoder)
    image_encoder: dict[str, Any] | None = None  # CLIPVisionConfig: an image-conditioned (Wan2.1 I2V) case


WAN21_VAE: dict[str, Any] = {}  # AutoencoderKLWan defaults are the Wan2.1 VAE
WAN22_VAE = {
    "base_dim": 160, "decoder_base_dim": 256, "z_dim": 48, "dim_mult": [1, 2, 4, 4], "num_res_blocks": 2,
    "temperal_downsample": [False, True, True], "is_residual": True, "in_channels": 12, "out_channels": 12,
    "patch_size": 2, "scale_factor_spatial": 16, "scale_factor_temporal": 4, "latents_mean": [0.0] * 48,
    "latents_std": [1.0] * 48,
}

MODELS = {
    "1.3b": ModelCase("1.3b", "Wan2.1 T2V-1.3B",
                      dict(_WAN_TRANSFORMER, num_attention_heads=12, ffn_dim=8960, num_layers=30,
                           in_channels=16, out_channels=16), WAN21_VAE, False, "wanx2.1-t2v-turbo"),
    "14b": ModelCase("14b", "Wan2.1 T2V-14B (= one A14B expert)",
                     dict(_WAN_TRANSFORMER, num_attention_heads=40, ffn_dim=13824, num_layers=40,
                          in_channels=16, out_channels=16), WAN21_VAE, False, "wanx2.1-t2v-plus"),
    "5b": ModelCase("5b", "Wan2.2 TI2V-5B",
                    dict(_WAN_TRANSFORMER, num_attention_heads=24, ffn_dim=14336, num_layers=30,
                         in_channels=48, out_channels=48), WAN22_VAE, True, "wan2.2-t2v-plus"),
    # Wan2.1-I2V-14B-480P: 36 input channels (noise + encoded first frame + mask), CLIP ViT-H/14 image tokens
    # (257 x 1280) through added k/v projections in every cross-attention
    "i2v-14b": ModelCase("i2v-14b", "Wan2.1 I2V-14B-480P",
                         dict(_WAN_TRANSFORMER, num_attention_heads=40, ffn_dim=13824, num_layers=40,
                              in_channels=36, out_channels=16, image_dim=1280, added_kv_proj_dim=5120),
                         WAN21_VAE, False, "wanx2.1-i2v-plus",
                         {"hidden_size": 1280, "intermediate_size": 5120, "projection_dim": 1024,
                          "num_hidden_layers": 32, "num_attention_heads": 16, "image_size": 224,
                          "patch_size": 14, "hidden_act": "gelu"}),
}
DEFAULT_MODELS = "1.3b,5b,i2v-14b"
MODES = ("default", "nobatch", "compile", "fp8", "fuse", "cache", "distilled")

TINY_TRANSFORMER = {
    "patch_size": (1, 2, 2), "num_attention_heads": 2, "attention_head_dim": 12, "text_dim": 32,
    "freq_dim": 32, "ffn_dim": 32, "num_layers": 2, "cross_attn_norm": True,
    "qk_norm": "rms_norm_across_heads", "rope_max_seq_len": 1024,
}
TINY_VAE = {"base_dim": 3, "z_dim": 16, "dim_mult": [1, 1, 1, 1], "num_res_blocks": 1,
            "temperal_downsample": [False, True, True]}
TINY_VAE_22 = {**WAN22_VAE, "base_dim": 4, "decoder_base_dim": 4, "dim_mult": [1, 1, 1, 1],
               "num_res_blocks": 1}


def tiny_case(case: ModelCase) -> ModelCase:
    ch = 48 if case.ti2v else 16
    transformer = dict(TINY_TRANSFORMER, in_channels=ch, out_channels=ch)
    encoder = None
    if case.image_encoder is not None:
        transformer.update(in_channels=36, image_dim=16, added_kv_proj_dim=24)
        encoder = {"hidden_size": 16, "intermediate_size": 32, "projection_dim": 16, "num_hidden_layers": 2,
                   "num_attention_heads": 2, "image_size": 32, "patch_size": 8}
    return dataclasses.replace(case, title=case.title + " [tiny config]", transformer=transformer,
                               vae=TINY_VAE_22 if case.ti2v else TINY_VAE, image_encoder=encoder)


# ==================================================================================================
# building random-weight components


def train_tokenizer():
    """A small T5-style (Unigram) tokenizer trained on a few sentences: no download."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = ["A lighthouse at dawn, waves breaking on the rocks.",
              "A cat walks across a sunny kitchen floor.",
              "A red car drives along a mountain road in the rain.",
              "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作",
              "画面，静止，整体发灰，最差质量，低质量，JPEG压缩残留，丑陋的，残缺的，多余的手指，杂乱的背景，倒着走"]
    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.train_from_iterator(corpus * 8, trainer=trainers.UnigramTrainer(
        vocab_size=300, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>", show_progress=False))
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>",
                                   unk_token="<unk>", model_max_length=512)


def random_module(factory, device, dtype, keep_fp32: tuple[str, ...] = ()):
    """Build on the meta device, materialise on `device` (uninitialised), fill with random values.
    Non-persistent buffers (rotary tables) are computed at construction, so they are kept."""
    import torch
    from accelerate import init_empty_weights

    with init_empty_weights():
        module = factory()
    buffers = {name: buf.clone() for name, buf in module.named_buffers() if buf.device.type != "meta"}
    # cast while still on the meta device: a 14B transformer is materialised once, in bf16 (28 GB), not
    # in float32 first (56 GB)
    module = module.to(dtype)
    for name, sub in module.named_modules():  # as from_pretrained(torch_dtype=...) keeps them
        if any(k in name.split(".") for k in keep_fp32):
            sub.float()
    module = module.to_empty(device=device)
    for name, buf in buffers.items():
        owner, _, attr = name.rpartition(".")
        # as from_pretrained(torch_dtype=...) casts them (rotary tables included)
        buf = buf.to(device, dtype) if buf.is_floating_point() else buf.to(device)
        (module.get_submodule(owner) if owner else module)._buffers[attr] = buf
    gen = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.ndim >= 2:
                p.normal_(0.0, 0.02, generator=gen)
            elif name.endswith("bias"):
                p.zero_()
            elif "scale_shift_table" in name or "pos_embed" in name:
                p.normal_(0.0, 0.02, generator=gen)
            else:
                p.fill_(1.0)
    return module.eval().requires_grad_(False)


def build_components(case: ModelCase, device, dtype, tiny: bool, text_layers: int,
                     only: str | None = None) -> dict[str, Any]:
    """Random-weight components of `case` on `device`; `only="transformer"`: just a fresh transformer."""
    import torch
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    keep = tuple(WanTransformer3DModel._keep_in_fp32_modules)
    if only == "transformer":
        return {"transformer": random_module(lambda: WanTransformer3DModel(**case.transformer), device, dtype,
                                              keep)}
    tokenizer = train_tokenizer()
    if tiny:
        t5 = UMT5Config(vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=4,
                        relative_attention_num_buckets=8, dropout_rate=0.0)
    else:  # UMT5-XXL's shape (its 256k-token embedding replaced by the small trained vocabulary)
        t5 = UMT5Config(vocab_size=len(tokenizer), d_model=4096, d_kv=64, d_ff=10240, num_layers=text_layers,
                        num_heads=64, relative_attention_num_buckets=32, relative_attention_max_distance=128,
                        dropout_rate=0.0, feed_forward_proj="gated-gelu")
    image: dict[str, Any] = {}
    if case.image_encoder is not None:
        from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

        size = case.image_encoder["image_size"]
        clip = CLIPVisionConfig(**case.image_encoder)
        image = {"image_encoder": random_module(lambda: CLIPVisionModel(clip), device, torch.float32),
                 "image_processor": CLIPImageProcessor(size={"shortest_edge": size},
                                                       crop_size={"height": size, "width": size})}
    return {
        **image,
        "tokenizer": tokenizer,
        "text_encoder": random_module(lambda: UMT5EncoderModel(t5), device, dtype),
        "vae": random_module(lambda: AutoencoderKLWan(**case.vae), device, torch.float32),
        "scheduler": UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                             num_train_timesteps=1000,
                                             flow_shift=3.0 if not case.ti2v else 5.0),
        "transformer": random_module(lambda: WanTransformer3DModel(**case.transformer), device, dtype, keep),
    }


# ==================================================================================================
# FLOPs


def step_flops(case: ModelCase, width: int, height: int, num_frames: int, cfg: bool = True) -> int:
    """FLOPs of one denoising step: the transformer forward(s), counted on a meta-device copy with
    the step's exact shapes (the attention is counted as the matmuls it is)."""
    import torch
    from diffusers import WanTransformer3DModel
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        transformer = WanTransformer3DModel(**case.transformer)
    spatial = case.vae.get("scale_factor_spatial", 8)
    lat = (1, case.transformer["in_channels"], (num_frames - 1) // 4 + 1, height // spatial, width // spatial)
    tokens = lat[2] * (lat[3] // 2) * (lat[4] // 2)
    timestep = torch.empty((1, tokens) if case.ti2v else (1,), device="meta")
    x = torch.empty(lat, device="meta")
    text = torch.empty((1, 512, case.transformer["text_dim"]), device="meta")
    extra = {}
    if case.transformer.get("image_dim"):  # the CLIP tokens of the first frame (257 for ViT-H/14 at 224)
        enc = case.image_encoder or {"image_size": 224, "patch_size": 14}
        tokens_img = (enc["image_size"] // enc["patch_size"]) ** 2 + 1
        extra["encoder_hidden_states_image"] = torch.empty((1, tokens_img, case.transformer["image_dim"]),
                                                           device="meta")
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        transformer(hidden_states=x, timestep=timestep, encoder_hidden_states=text, return_dict=False,
                    **extra)
    return counter.get_total_flops() * (2 if cfg else 1)


def peak_tflops(device) -> tuple[str, float | None]:
    import torch

    if device.type != "cuda":
        return str(device), None
    name = torch.cuda.get_device_name(device)
    for key, tflops in PEAK_BF16_TFLOPS:
        if key in name:
            return name, tflops
    return name, None


def matmul_ceiling_tflops(device, dtype) -> float:
    """The dense matmul rate this device reaches here: the median of 8192^3 (BF16 on a GPU) or 1024^3
    (the CPU, float32) matmuls: a practical ceiling next to the datasheet peak."""
    import torch

    n = 8192 if device.type == "cuda" else 1024
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    times = []
    for i in range(13):
        _sync(device)
        started = time.perf_counter()
        for _ in range(4):
            a @ b
        _sync(device)
        if i >= 3:  # the first runs pick the kernels
            times.append((time.perf_counter() - started) / 4)
    return 2 * n**3 / statistics.median(times) / 1e12


# ==================================================================================================
# timing


@dataclasses.dataclass
class Timing:
    step_s: float
    full_s: float
    frames: int
    peak_gib: float | None
    mp4_s: float = 0.0  # encoding the frames to an MP4 (part of the end-to-end time)
    steps: int = 0


def encode_seconds(frames: list, fps: int) -> float:
    """Time the service's MP4 encoding of `frames` (H.264, as a finished task is stored)."""
    import tempfile

    from wanserve.media.video import encode_mp4

    h, w = frames[0].shape[:2]
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        encode_mp4(iter(frames), Path(tmp) / "out.mp4", width=w, height=h, fps=fps, frame_count=len(frames))
        return time.perf_counter() - started


def first_frame(width: int, height: int):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8))


def _median_step(stamps: list[float]) -> float:
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    return statistics.median(gaps) if gaps else float("nan")


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak(device) -> float | None:
    import torch

    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def run_engine(engine, case: ModelCase, width: int, height: int, seconds: int, steps: int, device) -> Timing:
    import dataclasses as dc

    from wanserve.engines.base import RenderJob

    engine.cfg = dc.replace(engine.cfg, num_inference_steps=steps)
    i2v = case.image_encoder is not None
    job = RenderJob(kind="i2v" if i2v else "t2v", model=case.public_model, width=width, height=height,
                    frame_count=seconds * FPS, prompt="A lighthouse at dawn, waves breaking on the rocks.",
                    seed=1, first_frame=first_frame(width, height) if i2v else None)
    stamps: list[float] = []

    def progress(done: int, total: int) -> None:
        if 1 <= done <= steps:
            _sync(device)
            stamps.append(time.perf_counter())

    _reset_peak(device)
    _sync(device)
    started = time.perf_counter()
    frames = list(engine.render(job, progress))
    _sync(device)
    full = time.perf_counter() - started
    return Timing(_median_step(stamps), full, len(frames), _peak(device), encode_seconds(frames, FPS), steps)


def run_stock(pipe, width: int, height: int, num_frames: int, steps: int, device, fps: int = 16) -> Timing:
    import torch

    stamps: list[float] = []

    def on_step_end(p, i, t, kwargs):
        _sync(device)
        stamps.append(time.perf_counter())
        return {}

    _reset_peak(device)
    _sync(device)
    started = time.perf_counter()
    i2v = "image" in inspect.signature(pipe.__call__).parameters
    image = {"image": first_frame(width, height)} if i2v else {}
    out = pipe(prompt="A lighthouse at dawn, waves breaking on the rocks.", height=height, width=width,
               num_frames=num_frames, num_inference_steps=steps,
               generator=torch.Generator(device).manual_seed(1), callback_on_step_end=on_step_end, **image)
    _sync(device)
    full = time.perf_counter() - started
    frames = [(f * 255).round().astype("uint8") for f in out.frames[0]]  # the np output, as an exporter does
    return Timing(_median_step(stamps), full, len(frames), _peak(device), encode_seconds(frames, fps), steps)


MODE_KEYS: dict[str, dict[str, Any]] = {
    "default": {},
    "nobatch": {"cfg_batch": False},
    "compile": {"compile": "regional"},
    "fp8": {"quantize": "fp8"},
    "fuse": {"fuse_qkv": True},
    "cache": {"cache": (("threshold", 0.05), ("type", "first_block"))},
    "distilled": {"num_inference_steps": 4, "guidance_scale": 1.0},
}


def build_engine(case: ModelCase, components: dict[str, Any], device, dtype, steps: int,
                 attention_backend: str | None, mode: str = "default"):
    """The engine over `components` with the speed keys of `mode`; (engine, set-up seconds), where the
    set-up includes fusing, quantizing, and the compile warm-up."""
    from wanserve.engines.wan import LoadedCheckpoint, WanEngine, WanModelConfig
    from wanserve.engines.wan.speed import check_quantize

    i2v = case.image_encoder is not None
    index = {"_class_name": "WanImageToVideoPipeline" if i2v else "WanPipeline",
             "expand_timesteps": case.ti2v, "boundary_ratio": None}
    parts = {"tokenizer": ("transformers", "PreTrainedTokenizerFast"),
             "text_encoder": ("transformers", "UMT5EncoderModel"),
             "vae": ("diffusers", "AutoencoderKLWan"),
             "scheduler": ("diffusers", "UniPCMultistepScheduler"),
             "transformer": ("diffusers", "WanTransformer3DModel")}
    if i2v:
        parts.update(image_encoder=("transformers", "CLIPVisionModel"),
                     image_processor=("transformers", "CLIPImageProcessor"))
    for name, (lib, cls) in parts.items():
        index[name] = [lib, cls]
    keys = dict(MODE_KEYS[mode])
    keys.setdefault("num_inference_steps", steps)
    cfg = WanModelConfig(model=case.public_model, checkpoint=Path(f"<random {case.title}>"),
                         device=str(device), attention_backend=attention_backend, **keys)
    check_quantize(cfg.quantize, device, f"--mode {mode}")
    started = time.perf_counter()
    loaded = LoadedCheckpoint(cfg.checkpoint, index, components, device, dtype)
    loaded.place(attention_backend, cfg.cache, speed=cfg)
    _sync(device)
    return WanEngine(cfg, loaded), time.perf_counter() - started


# ==================================================================================================


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default=DEFAULT_MODELS, help="comma list of: " + ", ".join(MODELS))
    p.add_argument("--mode", default="default",
                   help="comma list of engine speed modes: " + ", ".join(MODES) + " (default: default)")
    p.add_argument("--sizes", default="480p,720p", help="comma list of: " + ", ".join(SIZES))
    p.add_argument("--duration", type=int, default=5, help="seconds of video (default 5)")
    p.add_argument("--steps", type=int, default=50, help="denoising steps of a real generation (default 50)")
    p.add_argument("--full-steps", type=int, default=8,
                   help="steps actually run per full generation (default 8); "
                        "the time at --steps is extrapolated")
    p.add_argument("--device", default="cuda", help="cuda (default), cuda:N, or cpu (with --tiny)")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    p.add_argument("--attention-backend", default=None,
                   help="the engine's attention_backend setting (default: none)")
    p.add_argument("--text-layers", type=int, default=24,
                   help="UMT5-XXL layers to build (default 24, the full 24)")
    p.add_argument("--tiny", action="store_true",
                   help="tiny configs at small sizes: exercises the whole run on CPU")
    p.add_argument("--count-only", action="store_true",
                   help="only count FLOPs per step (meta device; no GPU)")
    p.add_argument("--peak-tflops", type=float, default=None, help="override the GPU's peak BF16 TFLOP/s")
    args = p.parse_args(argv)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    args.sizes = [s.strip().lower() for s in args.sizes.split(",") if s.strip()]
    args.modes = [m.strip() for m in args.mode.split(",") if m.strip()]
    for m in args.modes:
        if m not in MODES:
            p.error(f"unknown mode {m!r}; choose from {', '.join(MODES)}")
    for m in args.models:
        if m not in MODELS:
            p.error(f"unknown model {m!r}; choose from {', '.join(MODELS)}")
    for s in args.sizes:
        if s not in SIZES:
            p.error(f"unknown size {s!r}; choose from {', '.join(SIZES)}")
    if args.full_steps < 2 or args.steps < 2:
        p.error("--steps and --full-steps must be at least 2 (a step time needs two steps)")
    return args


def plan_cases(args: argparse.Namespace) -> list[tuple[ModelCase, str, int, int, int]]:
    """(model case, size label, width, height, native frame count) for each run."""
    from wanserve.engines.wan import generation_size, native_frame_count

    out = []
    for key in args.models:
        case = tiny_case(MODELS[key]) if args.tiny else MODELS[key]
        spatial = case.vae.get("scale_factor_spatial", 8)
        fps = 24 if case.ti2v else 16
        for size in args.sizes:
            w, h = (TINY_SIZES if args.tiny else SIZES)[size]
            gw, gh = generation_size(w, h, spatial * 2)
            out.append((case, size, gw, gh, native_frame_count(args.duration, fps)))
    return out


def count_only(args: argparse.Namespace) -> int:
    print("FLOPs per denoising step (two transformer forwards, classifier-free guidance), "
          f"{args.duration} s clips")
    print(f"{'model':<42} {'size':>9} {'frames':>6} {'TFLOP/step':>11} {'PFLOP/gen':>10} "
          f"{'ideal s/step H100 SXM':>22}")
    for case, _, w, h, n in plan_cases(args):
        f = step_flops(case, w, h, n)
        print(f"{case.title:<42} {f'{w}x{h}':>9} {n:>6} {f / 1e12:>11.1f} {f * args.steps / 1e15:>10.1f} "
              f"{f / 989.4e12:>22.2f}", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        import diffusers
        import torch
    except ImportError as exc:
        print(f"gpu_denoise: needs the wan extra (pip install -e '.[wan]'): {exc}")
        return 0
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()  # random_module's dtype casts are deliberate
    if args.count_only:
        return count_only(args)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_denoise: no CUDA device is available here, so there is nothing to time. "
              "Run it on a GPU machine; `--count-only` counts FLOPs and `--tiny --device cpu` exercises the "
              "whole benchmark on tiny configs without a GPU.")
        return 0
    if device.type == "cpu" and not args.tiny:
        print("gpu_denoise: full-size models on the CPU would take hours; use --tiny with --device cpu.")
        return 0
    dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[args.dtype]
    if device.type == "cpu":
        dtype = torch.float32
    gpu, peak = peak_tflops(device)
    peak = args.peak_tflops or peak
    peak_text = f"{peak:.0f} TFLOP/s" if peak else "unknown (use --peak-tflops)"
    ceiling = matmul_ceiling_tflops(device, dtype)
    print(f"device: {gpu}; peak dense BF16: {peak_text}; measured matmul ceiling "
          f"({'8192' if device.type == 'cuda' else '1024'}^3, {str(dtype).removeprefix('torch.')}): "
          f"{ceiling:.1f} TFLOP/s; torch {torch.__version__}, diffusers {diffusers.__version__}; "
          f"dtype {dtype}; "
          f"{args.duration} s clips, "
          f"full generation with {args.full_steps} steps, extrapolated to {args.steps}; modes {args.modes}")
    header = (f"{'model':<44} {'size':>9} {'path':<17} {'s/step':>8} {'full s':>8} {f'@{args.steps} s':>9} "
              f"{'e2e s':>8} {'frames':>6} {'peak GiB':>8} {'MFU':>6} {'MFU/mm':>6}")
    print(header, flush=True)
    from wanserve.engines.base import EngineConfigError

    def report(case, w, h, path: str, t: Timing, flops: int, target_steps: int) -> None:
        at_steps = t.full_s + (target_steps - t.steps) * t.step_s
        mfu = flops / t.step_s / (peak * 1e12) if peak and t.step_s > 0 else None
        mfu_mm = flops / t.step_s / (ceiling * 1e12) if t.step_s > 0 else None
        print(f"{case.title:<44} {f'{w}x{h}':>9} {path:<17} {t.step_s:>8.3f} {t.full_s:>8.1f} "
              f"{at_steps:>9.1f} "
              f"{at_steps + t.mp4_s:>8.1f} {t.frames:>6} "
              f"{f'{t.peak_gib:.1f}' if t.peak_gib is not None else 'n/a':>8} "
              f"{f'{100 * mfu:.1f}%' if mfu is not None else 'n/a':>6} "
              f"{f'{100 * mfu_mm:.1f}%' if mfu_mm is not None else 'n/a':>6}", flush=True)

    for case, label, w, h, n in plan_cases(args):
        from diffusers import WanImageToVideoPipeline, WanPipeline

        flops = step_flops(case, w, h, n)  # with guidance: two forwards
        fps = 24 if case.ti2v else 16
        # stock diffusers first, on pristine modules (the speed modes change them)
        components = build_components(case, device, dtype, args.tiny, args.text_layers)
        if case.image_encoder is not None:
            stock = WanImageToVideoPipeline(**components)
        else:
            stock = WanPipeline(**components, expand_timesteps=case.ti2v)
        stock.set_progress_bar_config(disable=True)
        run_stock(stock, w, h, 5, 2, device, fps)  # warm-up (and, on CUDA, kernel selection)
        s = run_stock(stock, w, h, n, args.full_steps, device, fps)
        report(case, w, h, "stock", s, flops, args.steps)
        del stock
        for k, mode in enumerate(args.modes):
            if k:
                del components
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                components = build_components(case, device, dtype, args.tiny, args.text_layers)
            try:
                engine, setup_s = build_engine(case, components, device, dtype, args.full_steps,
                                               args.attention_backend, mode)
            except EngineConfigError as exc:
                print(f"{case.title:<44} {f'{w}x{h}':>9} engine:{mode:<10} skipped: {exc}", flush=True)
                continue
            steps = engine.cfg.num_inference_steps if mode == "distilled" else args.full_steps
            run_engine(engine, case, w, h, 1, 2, device)  # warm-up
            e = run_engine(engine, case, w, h, args.duration, steps, device)
            guided = engine.cfg.guidance_scale is None or engine.cfg.guidance_scale > 1
            report(case, w, h, "engine" if mode == "default" else f"engine:{mode}", e,
                   flops if guided else flops // 2, steps if mode == "distilled" else args.steps)
            print(f"{'':<44} {label:>9} ratio engine/stock ({mode}): {e.step_s / s.step_s:.3f} per step, "
                  f"{e.full_s / s.full_s:.3f} full; set-up {setup_s:.1f} s "
                  "(fuse, quantize, compile warm-up); "
                  f"{flops / 1e12:.4g} TFLOP/step counted with guidance", flush=True)
            del engine
        del components
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
