"""The rewriter over a local transformers model: a causal LM (`model_path`, e.g. a Qwen2.5 Instruct
directory) loaded with local_files_only at its first call, greedy decoding with its chat template.

`vision_model_path` (an image-text-to-text model, e.g. Qwen2.5-VL) is used for image-driven tasks when set;
that path is untested (no tiny offline vision-language model in the tests)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from PIL import Image

from .base import ChatRewriter, RewriteError


class LocalRewriter(ChatRewriter):
    name = "transformers"

    def __init__(self, model_path: Path, *, vision_model_path: Path | None = None, max_new_tokens: int = 512,
                 device: str = "cpu") -> None:
        self.model_path, self.vision_model_path = Path(model_path), vision_model_path
        self.max_new_tokens, self.device = max_new_tokens, device
        self._lock = threading.Lock()  # one generation at a time; loads once
        self._text: tuple[Any, Any] | None = None
        self._vision: tuple[Any, Any] | None = None

    def complete(self, system: str, user: str, image: Image.Image | None) -> str:
        try:
            with self._lock:
                if image is not None and self.vision_model_path is not None:
                    return self._complete_vision(system, user, image)
                return self._complete_text(system, user)
        except RewriteError:
            raise
        except Exception as exc:  # a broken model directory or generation: the task goes on unrewritten
            raise RewriteError(f"the local rewriter failed ({type(exc).__name__}: {exc})"[:300]) from None

    def _complete_text(self, system: str, user: str) -> str:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if self._text is None:
            tokenizer = AutoTokenizer.from_pretrained(self.model_path, local_files_only=True)
            model = AutoModelForCausalLM.from_pretrained(self.model_path, local_files_only=True)
            self._text = (tokenizer, model.to(self.device).eval())
        tokenizer, model = self._text
        chat = [{"role": "system", "content": system}, {"role": "user", "content": user}]
        ids = tokenizer.apply_chat_template(chat, add_generation_prompt=True, return_tensors="pt",
                                            return_dict=True)
        ids = {k: v.to(self.device) for k, v in ids.items()}
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        with torch.inference_mode():
            out = model.generate(**ids, max_new_tokens=self.max_new_tokens, do_sample=False, pad_token_id=pad)
        return tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)

    def _complete_vision(self, system: str, user: str, image: Image.Image) -> str:
        """Untested: an AutoModelForImageTextToText with its processor's chat template."""
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        if self._vision is None:
            processor = AutoProcessor.from_pretrained(self.vision_model_path, local_files_only=True)
            model = AutoModelForImageTextToText.from_pretrained(self.vision_model_path, local_files_only=True)
            self._vision = (processor, model.to(self.device).eval())
        processor, model = self._vision
        chat = [{"role": "system", "content": [{"type": "text", "text": system}]},
                {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": user}]}]
        text = processor.apply_chat_template(chat, add_generation_prompt=True)
        inputs = processor(text=[text], images=[image.convert("RGB")], return_tensors="pt").to(self.device)
        with torch.inference_mode():
            out = model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        return processor.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)[0]
