"""Speed settings of the `wan` engine (issue 11): what each key of a [models."..."] table does to the
loaded modules at start, and the batched classifier-free guidance a task runs under.

Numerics-preserving (the same function, evaluated faster):
- `cfg_batch`: guidance's two transformer forwards per step (prompt, negative prompt) run as one
  forward with a batch of two (`GuidanceBatch`); the pipeline still "calls" twice, the second call
  returns the half of the first call's batch it asked for.
- `fuse_qkv`: one matmul for q/k/v (self-attention) and k/v (cross-attention, image k/v); the old
  projections become views of the fused weights, so no memory is added.
- `compile = "regional"`: torch.compile of each repeated transformer block (diffusers'
  `compile_repeated_blocks`), compiled by a warm-up forward at start whose time is logged.
- the VAE on CUDA: cuDNN autotuning and channels-last-3d weights; `vae_tiling = "auto"` decodes in
  tiles only when the whole decode runs out of memory.

Opt-in trade-offs: `quantize = "fp8"` (torchao float8 dynamic activations and weights, Hopper/Ada),
`offload = "group"` (block-by-block streamed offload, checkpoint.py), `cache = "mag"` (config.py), and
`distilled` (a step-distillation LoRA fused into the weights at start).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import torch

from ..base import EngineConfigError

log = logging.getLogger("wanserve.engines.wan")

# "regional-eager": the same regions traced with torch.compile's eager backend, without generating kernels
# (debugging, and CI machines where inductor would compile for minutes)
COMPILE_MODES = ("none", "regional", "regional-eager")
QUANTIZE_MODES = ("none", "fp8")


def attention_backends() -> tuple[str, ...]:
    from diffusers.models.attention_dispatch import AttentionBackendName

    return tuple(b.value for b in AttentionBackendName)


# ==================================================================================================
# start-time set-up (called by LoadedCheckpoint.place, before and after device placement)


def fuse_distilled(pipe: Any, two_experts: bool, lora: str, lora_2: str | None, scale: float,
                   where: str) -> None:
    """Load a step-distillation LoRA (`lora` into the transformer, `lora_2 or lora` into transformer_2),
    fuse it into the weights at `scale`, and drop the adapter: no LoRA cost per step afterwards."""
    try:
        pipe.load_lora_weights(lora, adapter_name="distilled")
        components = ["transformer"]
        if two_experts:
            pipe.load_lora_weights(lora_2 or lora, adapter_name="distilled", load_into_transformer_2=True)
            components.append("transformer_2")
        pipe.fuse_lora(components=components, lora_scale=scale, adapter_names=["distilled"])
        pipe.unload_lora_weights()
    except Exception as exc:
        raise EngineConfigError(f"{where}: distilled: cannot load and fuse the LoRA {lora!r}: "
                                f"{type(exc).__name__}: {exc}") from exc


@torch.no_grad()
def fuse_qkv(transformer: torch.nn.Module) -> int:
    """Fuse the attention projections; the originals become views of the fused weights (no copy kept).
    Returns the number of attention modules fused."""
    count = 0
    for module in transformer.modules():
        if not hasattr(module, "fuse_projections") or not getattr(module, "_supports_qkv_fusion", True):
            continue
        module.fuse_projections()
        groups = [("to_qkv", ("to_q", "to_k", "to_v")), ("to_kv", ("to_k", "to_v")),
                  ("to_added_kv", ("add_k_proj", "add_v_proj"))]
        for fused_name, parts in groups:
            fused = getattr(module, fused_name, None)
            if fused is None:
                continue
            start = 0
            for part in parts:
                linear = getattr(module, part)
                n = linear.weight.shape[0]
                linear.weight.data = fused.weight.data[start:start + n]
                if linear.bias is not None:
                    linear.bias.data = fused.bias.data[start:start + n]
                start += n
        count += 1
    return count


def check_fuse_qkv(transformer: torch.nn.Module, where: str) -> None:
    if not any(hasattr(m, "fuse_projections") for m in transformer.modules()):
        raise EngineConfigError(f"{where}: fuse_qkv = true but {type(transformer).__name__} in this "
                                "diffusers has no fusable attention projections; remove fuse_qkv.")


def check_quantize(mode: str, device: torch.device, where: str) -> None:
    """Refuse fp8 at start unless torchao and a CUDA device of compute capability >= 8.9 are there."""
    if mode == "none":
        return
    missing = []
    if device.type != "cuda":
        missing.append(f"a CUDA device with compute capability >= 8.9 (device is {device})")
    else:
        cap = torch.cuda.get_device_capability(device)
        if cap < (8, 9):
            name = torch.cuda.get_device_name(device)
            missing.append(f"a CUDA device with compute capability >= 8.9 ({name} is {cap[0]}.{cap[1]})")
    try:
        import torchao  # noqa: F401
    except ImportError:
        missing.append("torchao (pip install torchao)")
    if missing:
        raise EngineConfigError(f"{where}: quantize = \"fp8\" needs {' and '.join(missing)}; remove quantize "
                                "or run on an H100/H200/L40S/RTX 4090-class GPU.")


def quantize_fp8(transformer: torch.nn.Module) -> int:
    """torchao float8 dynamic activations + float8 weights (per-row scales) on the Linear layers of the
    transformer blocks whose sizes the fp8 kernels take (multiples of 16); embeddings, the output
    projection and the norms stay in bf16. Returns the number of layers quantized."""
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_

    chosen: list[str] = []

    def pick(module: torch.nn.Module, fqn: str) -> bool:
        ok = (isinstance(module, torch.nn.Linear) and fqn.startswith("blocks.")
              and module.in_features % 16 == 0 and module.out_features % 16 == 0)
        if ok:
            chosen.append(fqn)
        return ok

    quantize_(transformer, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()), filter_fn=pick)
    return len(chosen)


def compile_blocks(transformer: torch.nn.Module, mode: str) -> str:
    """torch.compile each repeated block (`mode` "regional" or "regional-eager"); returns the backend."""
    backend = "eager" if mode == "regional-eager" else "inductor"
    transformer.compile_repeated_blocks(fullgraph=True, backend=backend)
    return backend


@torch.no_grad()
def warm_up(transformer: torch.nn.Module, device: torch.device, dtype: torch.dtype, *, batch: int,
            latent_frames: int, latent_height: int, latent_width: int, expand_timesteps: bool) -> float:
    """One transformer forward on zeros of a task's shape (compiles the blocks); seconds it took."""
    cfg = transformer.config
    x = torch.zeros(batch, cfg.in_channels, latent_frames, latent_height, latent_width, device=device,
                    dtype=dtype)
    p = cfg.patch_size
    tokens = latent_frames // p[0] * (latent_height // p[1]) * (latent_width // p[2])
    timestep = torch.full((batch, tokens) if expand_timesteps else (batch,), 500.0, device=device)
    text = torch.zeros(batch, 512, cfg.text_dim, device=device, dtype=dtype)
    kwargs: dict[str, Any] = {}
    if cfg.image_dim is not None:  # CLIP tokens of the first frame; FLF2V: first and last, as two rows
        rows, seq = (2 * batch, cfg.pos_embed_seq_len // 2) if cfg.pos_embed_seq_len else (batch, 257)
        kwargs["encoder_hidden_states_image"] = torch.zeros(rows, seq, cfg.image_dim, device=device,
                                                            dtype=dtype)
    started = time.monotonic()
    transformer(hidden_states=x, timestep=timestep, encoder_hidden_states=text, return_dict=False, **kwargs)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.monotonic() - started


def tune_vae(vae: torch.nn.Module, device: torch.device) -> None:
    """On CUDA: cuDNN picks the fastest convolution algorithm per shape (once per new shape), and the
    VAE's 3-D convolution weights are channels-last (NDHWC), the layout the fast cuDNN kernels use."""
    if device.type != "cuda":
        return
    torch.backends.cudnn.benchmark = True
    vae.to(memory_format=torch.channels_last_3d)


# ==================================================================================================
# per task: batched classifier-free guidance


class GuidanceBatch:
    """While active, the transformers' forward, called by the pipeline first with the prompt's embeddings
    (`cond`) and then with the negative prompt's (`uncond`) on the same latents and timestep, runs once
    on a batch of two and answers the second call from that batch. Any other call runs as it was.
    With `pipe`, the embeddings are the ones the pipeline's own `encode_prompt` returns during the call
    (handed back in the transformer's dtype, so the pipeline passes these very tensors on)."""

    def __init__(self, transformers: list[torch.nn.Module], cond: torch.Tensor | None = None,
                 uncond: torch.Tensor | None = None, pipe: Any = None) -> None:
        self.transformers, self.pipe = transformers, pipe
        self.cond = self.uncond = self.both = None
        if cond is not None and uncond is not None:
            self._embeddings(cond, uncond)
        self.pending: tuple | None = None
        self.batched = 0  # steps answered from a batch of two
        self._saved: list[tuple[torch.nn.Module, Any]] = []

    def _embeddings(self, cond: torch.Tensor, uncond: torch.Tensor) -> None:
        self.cond, self.uncond = cond, uncond
        self.both = torch.cat([cond, uncond]) if cond.shape == uncond.shape else None

    def _encode_prompt(self, original: Any, *args: Any, **kwargs: Any) -> Any:
        cond, uncond = original(*args, **kwargs)
        if uncond is not None:
            dtype = self.transformers[0].dtype
            cond, uncond = cond.to(dtype), uncond.to(dtype)
            self._embeddings(cond, uncond)
        return cond, uncond

    def __enter__(self) -> GuidanceBatch:
        if self.pipe is not None:
            self._saved.append((self.pipe, self.pipe.__dict__.get("encode_prompt")))
            original_encode = self.pipe.encode_prompt
            self.pipe.encode_prompt = lambda *a, **kw: self._encode_prompt(original_encode, *a, **kw)
        for t in self.transformers:
            self._saved.append((t, t.__dict__.get("forward")))
            original = t.forward
            t.forward = lambda *a, _t=t, _f=original, **kw: self._forward(_t, _f, *a, **kw)
        return self

    def __exit__(self, *exc: object) -> None:
        for i, (obj, own) in enumerate(self._saved):
            name = "encode_prompt" if self.pipe is not None and i == 0 else "forward"
            if own is None:
                obj.__dict__.pop(name, None)
            else:
                setattr(obj, name, own)
        self._saved.clear()
        self.pending = None

    def _forward(self, module: torch.nn.Module, original: Any, *args: Any, **kwargs: Any) -> Any:
        x, ts = kwargs.get("hidden_states"), kwargs.get("timestep")
        text = kwargs.get("encoder_hidden_states")
        if args or x is None or ts is None or self.both is None:
            return original(*args, **kwargs)
        if text is self.cond:
            image = kwargs.get("encoder_hidden_states_image")
            batched = dict(kwargs, hidden_states=torch.cat([x, x]), timestep=torch.cat([ts, ts]),
                           encoder_hidden_states=self.both, return_dict=False)
            if image is not None:
                batched["encoder_hidden_states_image"] = torch.cat([image, image])
            cond_out, uncond_out = original(**batched)[0].chunk(2)
            self.pending = (module, x, ts, uncond_out)
            return _output(cond_out, kwargs)
        pending, self.pending = self.pending, None
        if text is self.uncond and pending is not None and pending[0] is module and pending[1] is x \
                and pending[2] is ts:
            self.batched += 1
            return _output(pending[3], kwargs)
        return original(*args, **kwargs)


def _output(sample: torch.Tensor, kwargs: dict[str, Any]) -> Any:
    if kwargs.get("return_dict", True):
        from diffusers.models.modeling_outputs import Transformer2DModelOutput

        return Transformer2DModelOutput(sample=sample)
    return (sample,)

