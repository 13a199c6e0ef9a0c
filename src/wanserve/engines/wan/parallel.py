"""Context-parallel denoising over the ranks of a multi-GPU worker (diffusers' `enable_parallelism`).

A worker started as several ranks (worker/distributed.py) has joined its process group before the
engines load; a checkpoint loaded then splits each denoising step's token sequence over the ranks:
Ulysses (an all-to-all per attention layer, heads split over the ranks: needs heads % ranks == 0) or
Ring (key/value blocks passed round the ranks). Every rank runs the whole pipeline on the same inputs and
seed, so each sees the same latents; only the transformer's work is divided. The `parallel` key of a
[models."..."] table picks the mode: "auto" (Ulysses where the heads divide evenly, else Ring), "ulysses",
"ring", or "none" (every rank denoises the whole sequence: no speed-up, for debugging).

Not combined with `offload` or `cache` (a cache decides per rank whether to skip a step; on split
sequences the ranks could decide differently and stop matching their collectives): both refused at start.
The token count of a generation (latent frames x (height/16) x (width/16)) must divide by the ranks; the
Wan sizes do (480P, 720P, 1080P at 81 frames on 2, 4, 8 ranks).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import torch

from ..base import EngineConfigError

log = logging.getLogger("wanserve.engines.wan")

PARALLEL_MODES = ("auto", "ulysses", "ring", "none")


def group_size() -> int:
    """The number of ranks this process denoises with (1 outside a multi-GPU worker)."""
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def resolve_mode(mode: str, heads: int, world: int, where: str) -> str:
    """The context-parallel mode for `world` ranks: "none" for one rank; "auto" -> "ulysses" where the
    attention heads divide evenly over the ranks, else "ring"."""
    if world <= 1 or mode == "none":
        return "none"
    if mode == "auto":
        return "ulysses" if heads % world == 0 else "ring"
    if mode == "ulysses" and heads % world:
        raise EngineConfigError(f"{where}: parallel = \"ulysses\" needs the attention heads ({heads}) to "
                                f"divide by the ranks ({world}); use parallel = \"ring\" or \"auto\".")
    return mode


def enable_context_parallel(transformers: list[Any], mode: str, *, offload: str, cache: Any,
                            where: str) -> str:
    """Split the transformers' attention over this process group's ranks; the mode used ("none" outside
    a multi-GPU worker). Called after the transformers are on their device."""
    world = group_size()
    if world <= 1:
        return "none"
    heads = int(transformers[0].config.num_attention_heads)
    mode = resolve_mode(mode, heads, world, where)
    if mode == "none":
        return mode
    if offload != "none":
        raise EngineConfigError(f"{where}: offload = {offload!r} cannot be combined with a {world}-GPU "
                                "worker's context parallelism; set offload = \"none\" (each GPU holds "
                                "the model) or parallel = \"none\".")
    if cache:
        raise EngineConfigError(f"{where}: cache cannot be combined with a {world}-GPU worker's context "
                                "parallelism (each rank would decide its own cache hits); remove cache or "
                                "set parallel = \"none\".")
    from diffusers import ContextParallelConfig

    with _cpu_device_count():
        for t in transformers:
            config = (ContextParallelConfig(ulysses_degree=world) if mode == "ulysses"
                      else ContextParallelConfig(ring_degree=world))
            t.enable_parallelism(config=config)
    log.info("wan: context parallelism: %s over %d ranks (%d attention heads)", mode, world, heads)
    return mode


@contextlib.contextmanager
def _cpu_device_count() -> Iterator[None]:
    """diffusers (0.42) places a rank on `rank % torch.accelerator.device_count()`, which divides by zero
    in a process without an accelerator; there, for this call only, count the CPU as one device (the
    mesh is then a CPU/gloo mesh, which runs Ulysses and Ring attention). With GPUs nothing changes."""
    accelerator = getattr(torch, "accelerator", None)
    if accelerator is None or accelerator.device_count() > 0:
        yield
        return
    original = accelerator.device_count
    accelerator.device_count = lambda: 1
    try:
        yield
    finally:
        accelerator.device_count = original


def is_follower() -> bool:
    """True on the ranks other than 0: their decoded frames are dropped (rank 0 encodes the result)."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_rank() != 0
