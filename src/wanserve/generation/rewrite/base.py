"""The Rewriter interface and the chat-model rewriter both backends build on."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

from PIL import Image

Kind = Literal["t2v", "i2v", "kf2v"]


@dataclass(frozen=True)
class Rewrite:
    """A rewritten prompt and, for a multi-shot task, its shots as (text, seconds), in order, whose seconds
    add up to the video's duration."""

    prompt: str
    shots: list[tuple[str, float]] | None = None


class RewriteError(Exception):
    """The rewriter could not give a usable rewrite (unreachable, timed out, unusable reply); the task goes on
    with the caller's prompt. The message says why, in one line."""


class Rewriter(Protocol):
    name: str

    def rewrite(self, kind: Kind, prompt: str, duration: float, shot_type: str,
                image: Image.Image | None = None) -> Rewrite:
        """Raise RewriteError when no usable rewrite comes back."""
        ...


class ChatRewriter:
    """A rewriter over a chat model: the system prompt for the task (prompts.py), the caller's prompt as the
    user message, the reply checked (and for multi-shot, its JSON shot list repaired)."""

    name = "chat"

    def rewrite(self, kind: Kind, prompt: str, duration: float, shot_type: str,
                image: Image.Image | None = None) -> Rewrite:
        from . import prompts  # prompts imports this module's types

        system, user = prompts.messages(kind, prompt, duration, shot_type)
        reply = self.complete(system, user, image)
        return prompts.parse_reply(reply, prompt, duration, shot_type)

    def complete(self, system: str, user: str, image: Image.Image | None) -> str:
        """The model's reply to one system + user exchange; RewriteError when it cannot answer."""
        raise NotImplementedError
