"""Prompt rewriting (`prompt_extend`): an LLM turns the caller's prompt into a richer one, and for a
wan2.6 multi-shot task into a timed shot list.

`open_rewriter(settings.prompt_extend)` builds the configured backend once per process (None: no
rewriter, prompts pass through unchanged). The pipeline calls `rewrite()` before it plans; a rewriter that
fails or times out raises `RewriteError` and the task goes on with the caller's own prompt.
"""

from __future__ import annotations

from ...config import PromptExtendSettings
from .base import ChatRewriter, Rewrite, RewriteError, Rewriter


def open_rewriter(settings: PromptExtendSettings | None) -> Rewriter | None:
    """The rewriter `[prompt_extend]` configures, or None. Nothing is loaded or contacted here: the
    transformers backend loads its model at its first call."""
    if settings is None:
        return None
    if settings.backend == "openai":
        from .openai import OpenAIRewriter

        return OpenAIRewriter(settings.base_url, settings.model, api_key=settings.api_key(),
                              timeout=settings.timeout_seconds, temperature=settings.temperature,
                              send_images=settings.send_images)
    from .local import LocalRewriter

    assert settings.model_path is not None  # PromptExtendSettings requires it for this backend
    return LocalRewriter(settings.model_path, vision_model_path=settings.vision_model_path,
                         max_new_tokens=settings.max_new_tokens, device=settings.device)


__all__ = ["ChatRewriter", "Rewrite", "RewriteError", "Rewriter", "open_rewriter"]
