"""Prompt rewriting (prompt_extend): an OpenAI-compatible loopback server the tests start, and a tiny
random-weight Qwen2 causal LM built offline for the transformers backend."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import free_port
from wanserve.config import PromptExtendSettings, Settings, SettingsError, load_settings
from wanserve.generation.inputs import Inputs
from wanserve.generation.pipeline import GenerationPipeline
from wanserve.generation.plan import plan
from wanserve.generation.request import GenerationRequest
from wanserve.generation.rewrite import Rewrite, RewriteError, open_rewriter, prompts
from wanserve.generation.rewrite.local import LocalRewriter
from wanserve.generation.rewrite.openai import OpenAIRewriter


class FakeLLM:
    """POST /v1/chat/completions on loopback: records each request, answers `reply` after `delay` s."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.reply, self.delay, self.status = "A rewritten prompt.", 0.0, 200
        llm = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                llm.requests.append({"path": self.path, "auth": self.headers.get("Authorization"),
                                     "body": body})
                time.sleep(llm.delay)
                data = json.dumps({"choices": [{"index": 0, "message": {"role": "assistant",
                                                                        "content": llm.reply}}]}).encode()
                try:
                    self.send_response(llm.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:
                    pass  # the client gave up (timeout test)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def llm():
    server = FakeLLM()
    yield server
    server.close()


def _request(**kw: Any) -> GenerationRequest:
    values: dict[str, Any] = dict(model="wan2.6-t2v", requested_model="wan2.6-t2v", kind="t2v",
                                  prompt="a cat", negative_prompt="", template=None, resolution="720P",
                                  size="1280*720", duration=6, prompt_extend=True, shot_type="multi",
                                  sound="none", watermark=False, seed=1, media=[], resolve_uploads=False)
    values.update(kw)
    return GenerationRequest(**values)


class _Ctx:
    def __init__(self) -> None:
        self.progress_calls: list[tuple[int, int]] = []

    def check(self) -> None:
        pass

    def progress(self, done: int, total: int) -> None:
        self.progress_calls.append((done, total))


def _pipeline(rewriter: Any) -> GenerationPipeline:
    return GenerationPipeline(None, None, None, rewriter=rewriter)  # type: ignore[arg-type]


def _facts(server: Any, task_id: str) -> dict[str, Any]:
    return server.services.store.get(task_id)["result"]


# ------------------------------------------------------------------------------------- end to end (openai)


def test_rewrite_is_sent_with_the_system_prompt_and_shown_as_actual_prompt(make_server, llm, monkeypatch):
    monkeypatch.setenv("TEST_LLM_KEY", "sk-test")
    llm.reply = "```\nA fluffy grey cat stretches on a sunlit windowsill, slow dolly in.\n```"
    server = make_server(prompt_extend={"base_url": llm.url, "model": "qwen-test",
                                        "api_key_env": "TEST_LLM_KEY"})
    rsp = server.create({"model": "wanx2.1-t2v-turbo", "input": {"prompt": "a cat"},
                         "parameters": {"size": "832*480"}})
    body = server.wait(rsp.json()["output"]["task_id"])
    out = body["output"]
    assert out["task_status"] == "SUCCEEDED", body
    assert out["orig_prompt"] == "a cat"
    assert out["actual_prompt"] == "A fluffy grey cat stretches on a sunlit windowsill, slow dolly in."
    [sent] = llm.requests
    assert sent["path"] == "/v1/chat/completions" and sent["auth"] == "Bearer sk-test"
    assert sent["body"]["model"] == "qwen-test" and "temperature" in sent["body"]
    assert sent["body"]["messages"] == [{"role": "system", "content": prompts.SYSTEM["en"]["t2v"]},
                                        {"role": "user", "content": "a cat"}]
    facts = _facts(server, out["task_id"])
    assert facts["prompt"] == out["actual_prompt"]
    assert facts["prompt_extend"]["used"] is True and facts["prompt_extend"]["backend"] == "openai"


def test_prompt_extend_false_sends_nothing(make_server, llm):
    server = make_server(prompt_extend={"base_url": llm.url, "model": "qwen-test"})
    rsp = server.create({"model": "wanx2.1-t2v-turbo", "input": {"prompt": "a cat"},
                         "parameters": {"size": "832*480", "prompt_extend": False}})
    body = server.wait(rsp.json()["output"]["task_id"])
    assert body["output"]["task_status"] == "SUCCEEDED" and "actual_prompt" not in body["output"]
    assert llm.requests == []
    assert _facts(server, body["output"]["task_id"])["prompt_extend"] == {"used": False,
                                                                          "reason": "not requested"}


def test_multi_shot_json_becomes_the_shot_plan(make_server, llm):
    llm.reply = ('Here is the plan: {"shots": [{"text": "A detective enters a smoky bar.", "seconds": 1}, '
                 '{"text": "He orders a whisky.", "seconds": 1}, {"text": "Close-up on his eyes."}]}')
    server = make_server(prompt_extend={"base_url": llm.url, "model": "qwen-test"})
    rsp = server.create({"model": "wan2.6-t2v", "input": {"prompt": "A detective in a bar."},
                         "parameters": {"size": "1280*720", "duration": 3, "shot_type": "multi"}})
    body = server.wait(rsp.json()["output"]["task_id"])
    out = body["output"]
    assert out["task_status"] == "SUCCEEDED", body
    assert "actual_prompt" not in out  # wan2.6 does not return it (contract: wan2.5 and older)
    system = llm.requests[0]["body"]["messages"][0]["content"]
    assert '"shots"' in system and "add up" in system
    assert llm.requests[0]["body"]["messages"][1]["content"] == \
        "Duration: 3 seconds\nRequest: A detective in a bar."
    facts = _facts(server, out["task_id"])
    assert facts["prompt_extend"]["shots"] == 3
    assert facts["prompt"] == ("Shot 1 [0-1 s]: A detective enters a smoky bar. Shot 2 [1-2 s]: He orders a "
                               "whisky. Shot 3 [2-3 s]: Close-up on his eyes.")


@pytest.mark.parametrize("trouble", ["down", "slow", "error"])
def test_a_failing_rewriter_never_fails_the_task(make_server, llm, trouble):
    url = f"http://127.0.0.1:{free_port()}/v1" if trouble == "down" else llm.url
    llm.delay = 1.5 if trouble == "slow" else 0.0
    llm.status = 500 if trouble == "error" else 200
    server = make_server(prompt_extend={"base_url": url, "model": "qwen-test", "timeout_seconds": 0.5})
    rsp = server.create({"model": "wanx2.1-t2v-turbo", "input": {"prompt": "a cat"},
                         "parameters": {"size": "832*480"}})
    body = server.wait(rsp.json()["output"]["task_id"])
    out = body["output"]
    assert out["task_status"] == "SUCCEEDED", body
    assert out["actual_prompt"] == "a cat"
    facts = _facts(server, out["task_id"])["prompt_extend"]
    assert facts["used"] is False
    assert {"down": "unreachable", "slow": "within 0.5 s", "error": "HTTP 500"}[trouble] in facts["reason"]


# ------------------------------------------------------------------------------------------ the plan step


def test_plan_takes_the_rewriters_shots_with_cumulative_times():
    rewrite = Rewrite("Shot 1 [0-2 s]: a. Shot 2 [2-6 s]: b.", [("a.", 2.0), ("b.", 4.0)])
    job = plan(_request(), Inputs(), rewrite)
    assert [(s.number, s.start, s.end, s.text) for s in job.shots] == [(1, 0.0, 2.0, "a."),
                                                                       (2, 2.0, 6.0, "b.")]
    assert job.prompt == rewrite.prompt
    single = plan(_request(shot_type="single"), Inputs(), Rewrite("one long prompt", None))
    assert [s.text for s in single.shots] == ["one long prompt"]


def test_explicit_markers_in_the_prompt_win():
    req = _request(prompt="Shot 1 [0-3 s]: a dog runs. Shot 2 [3-6 s]: it sleeps.")
    job = plan(req, Inputs(), Rewrite("x", [("other", 6.0)]))
    assert [s.text for s in job.shots] == ["a dog runs.", "it sleeps."]

    class Never:
        name = "never"

        def rewrite(self, *args: Any, **kw: Any) -> Rewrite:
            raise AssertionError("not called for a prompt with its own shots")

    rewrite, facts = _pipeline(Never()).extend_prompt(req, Inputs(), _Ctx())
    assert rewrite is None and facts == {"used": False, "reason": "the prompt writes its own shots"}


def test_progress_and_a_crashing_rewriter():
    class Crash:
        name = "crash"

        def rewrite(self, *args: Any, **kw: Any) -> Rewrite:
            raise KeyError("bug")

    ctx = _Ctx()
    rewrite, facts = _pipeline(Crash()).extend_prompt(_request(), Inputs(), ctx)
    assert rewrite is None and facts == {"used": False, "reason": "the rewriter failed (KeyError)"}
    assert ctx.progress_calls == [(0, 1)]
    rewrite, facts = _pipeline(None).extend_prompt(_request(), Inputs(), ctx)
    assert rewrite is None and facts["reason"] == "no rewriter configured"


# -------------------------------------------------------------------------------------------- the prompts


def test_language_and_system_prompts():
    assert prompts.is_chinese("一只小猫在草地上奔跑") and not prompts.is_chinese("a cat on the grass")
    assert not prompts.is_chinese("A rap video, lyrics 你好 in the corner")
    system, user = prompts.messages("i2v", "小猫在跑", 5, "single")
    assert system == prompts.SYSTEM["zh"]["i2v"] and user == "小猫在跑"
    system, user = prompts.messages("kf2v", "a cat", 5, "single")
    assert system == prompts.SYSTEM["en"]["kf2v"]
    system, user = prompts.messages("t2v", "一个侦探走进酒吧", 10, "multi")
    assert "JSON" in system and "10 个镜头" not in system and user.startswith("总时长：10 秒")


def test_shot_durations_are_repaired_to_the_duration():
    shots = prompts.parse_shot_list('{"shots": [{"text": "a", "seconds": 2}, {"text": "b", "seconds": 0}, '
                                    '{"text": "c", "seconds": "x"}, {"text": "", "seconds": 3}, 7]}', 10)
    assert [t for t, _ in shots] == ["a", "b", "c"]
    assert shots == [("a", 2.0), ("b", 4.0), ("c", 4.0)]
    scaled = prompts.parse_shot_list('[{"text": "a", "seconds": 10}, {"text": "b", "seconds": 30}]', 8)
    assert scaled == [("a", 2.0), ("b", 6.0)]
    assert sum(s for _, s in prompts.parse_shot_list(
        json.dumps({"shots": [{"text": str(k), "seconds": 1} for k in range(3)]}), 5)) == pytest.approx(5)
    for garbage in ("no json here", '{"shots": []}', '{"shots": "a"}', "{broken"):
        with pytest.raises(RewriteError):
            prompts.parse_shot_list(garbage, 5)
    composed = prompts.compose([("一只猫", 2.0), ("它睡了", 3.0)], "zh")
    assert composed == "镜头1 [0-2秒]：一只猫镜头2 [2-5秒]：它睡了"


def test_openai_rewriter_sends_the_first_frame_only_when_told(llm):
    from PIL import Image

    image = Image.new("RGB", (64, 48), (200, 10, 10))
    OpenAIRewriter(llm.url, "vl", send_images=True).rewrite("i2v", "a cat", 5, "single", image=image)
    OpenAIRewriter(llm.url, "txt").rewrite("i2v", "a cat", 5, "single", image=image)
    with_image, text_only = (r["body"]["messages"][1]["content"] for r in llm.requests)
    assert with_image[0] == {"type": "text", "text": "a cat"}
    assert with_image[1]["image_url"]["url"].startswith("data:image/jpeg;base64,")
    assert text_only == "a cat"


# ---------------------------------------------------------------------------------------------- settings


def test_settings_table(tmp_path: Path, monkeypatch):
    assert Settings().prompt_extend is None
    config = tmp_path / "wanserve.toml"
    config.write_text('[prompt_extend]\nbackend = "transformers"\nmodel_path = "/models/qwen"\n'
                      "max_new_tokens = 64\n")
    pe = load_settings(config).prompt_extend
    assert pe is not None and pe.model_path == Path("/models/qwen") and pe.timeout_seconds == 30
    config.write_text('[prompt_extend]\nbackend = "openai"\nbase_url = "http://x/v1"\n')
    with pytest.raises(SettingsError, match="needs base_url and model"):
        load_settings(config)
    config.write_text('[prompt_extend]\nbackend = "openai"\nbase_url = "http://x/v1"\nmodel = "m"\n'
                      "modle = 1\n")
    with pytest.raises(SettingsError, match="prompt_extend.modle: unknown key"):
        load_settings(config)
    monkeypatch.setenv("TEST_LLM_KEY", "sk-1")
    pe = PromptExtendSettings(base_url="http://x/v1", model="m", api_key_env="TEST_LLM_KEY")
    assert pe.api_key() == "sk-1"
    rewriter = open_rewriter(pe)
    assert isinstance(rewriter, OpenAIRewriter) and rewriter.api_key == "sk-1"
    assert open_rewriter(None) is None


# ---------------------------------------------------------------------------- the local transformers backend


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight Qwen2 causal LM of a few thousand parameters with a Unigram tokenizer trained here
    and a chat template, saved as a local model directory."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from tests.wan_fixtures import build_tokenizer

    path = tmp_path_factory.mktemp("tiny-qwen2")
    tokenizer = build_tokenizer()
    tokenizer.chat_template = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                               "{% if add_generation_prompt %}assistant: {% endif %}")
    tokenizer.save_pretrained(path)
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=4096,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                         tie_word_embeddings=True)
    Qwen2ForCausalLM(config).save_pretrained(path)
    return path


def test_local_rewriter_runs_a_tiny_model(tiny_lm: Path):
    rewriter = open_rewriter(PromptExtendSettings(backend="transformers", model_path=str(tiny_lm),
                                                  max_new_tokens=6))
    assert isinstance(rewriter, LocalRewriter)
    system, user = prompts.messages("t2v", "A cat walks across a sunny kitchen floor.", 5, "single")
    reply = rewriter.complete(system, user, None)
    assert isinstance(reply, str)
    # multi-shot: its gibberish is no JSON shot list, so the plan falls back to the prompt's sentences
    req = _request(prompt="A lighthouse at dawn. Waves break on the rocks. Seagulls circle overhead.")
    rewrite, facts = _pipeline(rewriter).extend_prompt(req, Inputs(), _Ctx())
    assert rewrite is None and facts["used"] is False and "JSON" in facts["reason"]
    job = plan(req, Inputs(), rewrite)
    assert [s.text for s in job.shots] == ["A lighthouse at dawn.", "Waves break on the rocks.",
                                           "Seagulls circle overhead."]


def test_local_rewriter_with_a_missing_model_dir_is_a_rewrite_error(tmp_path: Path):
    with pytest.raises(RewriteError, match="local rewriter failed"):
        LocalRewriter(tmp_path / "absent").rewrite("t2v", "a cat", 5, "single")
