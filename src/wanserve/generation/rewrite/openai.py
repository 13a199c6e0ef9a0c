"""The rewriter over an OpenAI-compatible chat completions server (vLLM, llama.cpp, Ollama, DashScope's
compatible mode...): POST {base_url}/chat/completions."""

from __future__ import annotations

import base64
import io
from typing import Any

import httpx
from PIL import Image

from .base import ChatRewriter, RewriteError


class OpenAIRewriter(ChatRewriter):
    name = "openai"

    def __init__(self, base_url: str, model: str, *, api_key: str = "", timeout: float = 30.0,
                 temperature: float = 0.2, send_images: bool = False) -> None:
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model, self.api_key, self.timeout, self.temperature = model, api_key, timeout, temperature
        self.send_images = send_images  # the server's model reads images (OpenAI's image_url parts)

    def complete(self, system: str, user: str, image: Image.Image | None) -> str:
        content: Any = user
        if image is not None and self.send_images:
            content = [{"type": "text", "text": user},
                       {"type": "image_url", "image_url": {"url": _data_url(image)}}]
        body = {"model": self.model, "temperature": self.temperature,
                "messages": [{"role": "system", "content": system}, {"role": "user", "content": content}]}
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        try:
            # trust_env off: the rewriter's address is configured, never a proxy from the environment
            with httpx.Client(timeout=self.timeout, trust_env=False) as client:
                response = client.post(self.url, json=body, headers=headers)
        except httpx.TimeoutException:
            raise RewriteError(f"the rewriter did not answer within {self.timeout:g} s") from None
        except httpx.HTTPError as exc:
            raise RewriteError(f"the rewriter is unreachable ({type(exc).__name__})") from None
        if response.status_code != 200:
            raise RewriteError(f"the rewriter answered HTTP {response.status_code}")
        try:
            text = response.json()["choices"][0]["message"]["content"]
        except (ValueError, LookupError, TypeError):
            raise RewriteError("the rewriter's answer is not a chat completion") from None
        if not isinstance(text, str):
            raise RewriteError("the rewriter's answer has no text")
        return text


def _data_url(image: Image.Image) -> str:
    image = image.convert("RGB")
    image.thumbnail((1024, 1024))
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=90)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()
