"""slm.remote's OpenAI-compatible dialect against a stub vLLM/Ollama-like server on 127.0.0.1: the request
bodies, streaming with stop strings, usage, chat messages, and every failure mode (429, a stalled stream,
a mid-stream error, a dropped connection, a too-long prompt) plus cancels that reach the server at once."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from slm.engine import ModelUnavailable
from slm.generation import GenerationParams, format_chat_prompt
from slm.remote import RemoteConfig, RemoteEngine, openai_body, openai_urls
from tests.openai_stub import MODEL, OpenAIStub

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def stub() -> Iterator[OpenAIStub]:
    server = OpenAIStub().start()
    yield server
    server.stop()


class Run:
    """One request through a RemoteEngine, its events collected."""

    def __init__(
        self, engine: RemoteEngine, params: GenerationParams, history: Any = (), text: str = "hi", user: str = "u"
    ) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.done = threading.Event()
        self.first = threading.Event()
        _, prompt = engine.prepare(list(history), text, params)
        self.rid, self.position = engine.submit(prompt, params, self._cb, user_key=user)

    def _cb(self, kind: str, data: dict[str, Any]) -> None:
        self.events.append((kind, data))
        if kind == "token":
            self.first.set()
        if kind in ("end", "error"):
            self.done.set()

    def wait(self) -> tuple[str, dict[str, Any]]:
        assert self.done.wait(20)
        return self.events[-1]

    @property
    def text(self) -> str:
        return "".join(d["text"] for k, d in self.events if k == "token")


def engine(stub: OpenAIStub, **kw: Any) -> RemoteEngine:
    return RemoteEngine(RemoteConfig(url=stub.url, api=kw.pop("api", "completions"), **kw))


def test_completions_stream_with_stop_string_and_discovered_model(stub: OpenAIStub) -> None:
    eng = engine(stub, token="sk-local")
    params = GenerationParams(max_new_tokens=20, do_sample=True, temperature=0.7, top_p=0.9, top_k=40, seed=5,
                              repetition_penalty=1.1, stop=("User:",))  # fmt: skip
    kind, end = Run(eng, params).wait()
    assert stub.state.requests[0]["path"] == "/v1/models"  # no CHAT_REMOTE_MODEL: asked once, then remembered
    req = stub.state.requests[1]
    assert req["path"] == "/v1/completions" and req["auth"] == "Bearer sk-local"
    body = req["body"]
    assert body["model"] == MODEL and body["prompt"] == "User: hi\nAgent:" and body["stream"] is True
    assert body["max_tokens"] == 20 and body["temperature"] == 0.7 and body["top_p"] == 0.9 and body["seed"] == 5
    assert body["top_k"] == 40 and body["repetition_penalty"] == 1.1 and "stop" not in body
    assert body["stream_options"] == {"include_usage": True}
    assert kind == "end" and end["reason"] == "stop" and end["model"] == f"openai:{MODEL}"
    assert end["text"] == "Hello 你好 " and end["usage"]["completion_tokens"] == 6
    assert eng.model_ref == f"openai:{MODEL}" and eng.active_ids() == [] and eng._users == {}
    Run(eng, GenerationParams(max_new_tokens=3)).wait()
    assert [r["path"] for r in stub.state.requests].count("/v1/models") == 1


def test_eos_length_and_server_usage(stub: OpenAIStub) -> None:
    stub.state.tokens = ["a", "b", "c"]
    eng = engine(stub, model="my-model", name="vllm-box")
    kind, end = Run(eng, GenerationParams(max_new_tokens=3)).wait()
    assert stub.state.requests[0]["body"]["model"] == "my-model" and stub.state.requests[0]["body"]["temperature"] == 0
    assert end["reason"] == "eos" and end["text"] == "abc" and end["model"] == "vllm-box"
    assert end["usage"] == {"prompt_tokens": 11, "completion_tokens": 3}
    assert end["timing"]["ttft_ms"] > 0
    stub.state.finish = "length"
    assert Run(eng, GenerationParams(max_new_tokens=3)).wait()[1]["reason"] == "length"


def test_chat_completions_send_the_turns_as_messages(stub: OpenAIStub) -> None:
    stub.state.tokens = ["你", "好", "！"]
    eng = engine(stub, api="chat", model=MODEL)
    history = [("user", "hello"), ("agent", "hi, how can I help?")]
    kind, end = Run(eng, GenerationParams(max_new_tokens=8), history, "说中文").wait()
    req = stub.state.requests[0]
    assert req["path"] == "/v1/chat/completions" and "prompt" not in req["body"]
    assert req["body"]["messages"] == [
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": "hi, how can I help?"},
        {"role": "user", "content": "说中文"},
    ]
    assert kind == "end" and end["text"] == "你好！" and end["reason"] == "eos"


def test_429_is_busy_with_retry_after(stub: OpenAIStub) -> None:
    stub.state.status = 429
    kind, err = Run(engine(stub, model=MODEL), GenerationParams()).wait()
    assert kind == "error" and err["code"] == "busy"
    assert "429" in err["message"] and "try again in 7 s" in err["message"]
    assert len(stub.state.requests) == 1  # no silent retries piling onto a saturated server


def test_context_length_400_is_prompt_too_long_and_500_model_unavailable(stub: OpenAIStub) -> None:
    stub.state.status = 400
    kind, err = Run(engine(stub, model=MODEL), GenerationParams()).wait()
    assert err["code"] == "prompt_too_long" and "maximum context length" in err["message"]
    stub.state.status = 500
    kind, err = Run(engine(stub, model=MODEL), GenerationParams()).wait()
    assert err["code"] == "model_unavailable" and "HTTP 500" in err["message"]


def test_stalled_stream_times_out_and_the_server_sees_the_disconnect(stub: OpenAIStub) -> None:
    stub.state.stall_after = 2
    eng = engine(stub, model=MODEL, timeout_s=0.5)
    run = Run(eng, GenerationParams(max_new_tokens=20))
    kind, err = run.wait()
    assert kind == "error" and err["code"] == "upstream_timeout" and "0.5 s" in err["message"]
    assert run.text == "Hello"  # what arrived before the stall was streamed
    assert stub.state.disconnected.wait(5)
    assert eng.active_ids() == [] and eng._users == {}


@pytest.mark.parametrize("api", ["completions", "chat"])
def test_cancel_during_a_stall_closes_the_upstream_request_at_once(stub: OpenAIStub, api: str) -> None:
    stub.state.stall_after = 1
    eng = engine(stub, model=MODEL, api=api, timeout_s=30)
    run = Run(eng, GenerationParams(max_new_tokens=20))
    assert run.first.wait(10) and stub.state.stalled.wait(10)
    t0 = time.monotonic()
    eng.cancel(run.rid)
    kind, end = run.wait()
    assert time.monotonic() - t0 < 2  # not the 30 s read timeout
    assert kind == "end" and end["reason"] == "cancelled" and end["text"] == "Hel"
    assert end["usage"]["completion_tokens"] == 1
    assert stub.state.disconnected.wait(5)


def test_mid_stream_error_and_dropped_connection_end_with_errors(stub: OpenAIStub) -> None:
    stub.state.error_after = 2
    kind, err = Run(engine(stub, model=MODEL), GenerationParams()).wait()
    assert kind == "error" and err["code"] == "model_unavailable" and "CUDA out of memory" in err["message"]
    stub.state.error_after, stub.state.drop_after = None, 3
    eng = engine(stub, model=MODEL)
    kind, err = Run(eng, GenerationParams()).wait()
    assert kind == "error" and "closed the stream" in err["message"]
    assert eng.active_ids() == [] and eng._users == {}


def test_a_queued_request_is_cancelled_without_reaching_the_server(stub: OpenAIStub) -> None:
    stub.state.stall_after = 1
    eng = engine(stub, model=MODEL, max_concurrent=1)
    first = Run(eng, GenerationParams())
    assert stub.state.stalled.wait(10)
    second = Run(eng, GenerationParams(), user="another user")
    assert second.position == 1
    eng.cancel(second.rid)
    assert second.wait()[1]["reason"] == "cancelled"
    assert len([r for r in stub.state.requests if r["path"] == "/v1/completions"]) == 1
    eng.cancel(first.rid)
    assert first.wait()[1]["reason"] == "cancelled"
    eng.close()


def test_unreachable_server_or_no_model_listed_is_model_unavailable(stub: OpenAIStub) -> None:
    stub.state.models = []
    with pytest.raises(ModelUnavailable, match="CHAT_REMOTE_MODEL"):
        engine(stub).prepare([], "hi", GenerationParams())
    eng = RemoteEngine(RemoteConfig(url="http://127.0.0.1:9/v1", api="completions", model="m", timeout_s=5))
    kind, err = Run(eng, GenerationParams()).wait()
    assert kind == "error" and err["code"] == "model_unavailable" and "cannot reach" in err["message"]
    with pytest.raises(ModelUnavailable, match="CHAT_REMOTE_URL is empty"):
        RemoteEngine(RemoteConfig(url="", api="chat"))
    with pytest.raises(ModelUnavailable, match="CHAT_REMOTE_API"):
        RemoteEngine(RemoteConfig(url="http://x", api="responses"))


def test_urls_and_greedy_body() -> None:
    assert openai_urls("http://h:8000", "completions") == ("http://h:8000/v1/completions", "http://h:8000/v1/models")
    assert openai_urls("http://h:11434/v1/", "chat") == (
        "http://h:11434/v1/chat/completions",
        "http://h:11434/v1/models",
    )
    assert openai_urls("http://h/v1/chat/completions", "completions")[0] == "http://h/v1/chat/completions"
    prompt = format_chat_prompt([], "hi", lambda t: [0] * len(t), 100)
    greedy = openai_body(prompt, GenerationParams(max_new_tokens=4, top_k=40, top_p=0.5), "m", "completions")
    assert greedy["temperature"] == 0.0 and "top_p" not in greedy and "top_k" not in greedy and "seed" not in greedy
    plain = openai_body(prompt, GenerationParams(do_sample=True, top_k=40, repetition_penalty=1.2), "m", "chat", False)
    assert "top_k" not in plain and "repetition_penalty" not in plain and plain["messages"][0]["content"] == "hi"
