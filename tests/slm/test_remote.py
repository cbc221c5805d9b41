"""slm.remote against a stub TGI / HF Inference API server on 127.0.0.1 (never the internet)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from slm.generation import ChatPrompt, GenerationParams
from slm.remote import RemoteConfig, RemoteEngine, stream_url, tgi_parameters


class Stub:
    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.tokens: list[str] = ["Hel", "lo", " 你", "好", " Us", "er:", " more"]
        self.finish = "length"
        self.status = 200
        self.gate: threading.Event | None = None  # when set, each token waits for it (cancel tests)
        self.sent = 0
        self.raw: list[str] | None = None  # when set, these `data:` payloads are sent as they are


@pytest.fixture
def stub() -> Iterator[tuple[Stub, str]]:
    state = Stub()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_POST(self) -> None:  # noqa: N802
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            state.requests.append({"path": self.path, "body": body, "auth": self.headers.get("Authorization")})
            if state.status != 200:
                self.send_response(state.status)
                self.end_headers()
                self.wfile.write(b'{"error": "model is loading"}')
                return
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            if state.raw is not None:
                self.wfile.write("".join(f"data:{line}\n\n" for line in state.raw).encode())
                return
            for i, text in enumerate(state.tokens):
                if state.gate is not None:
                    if not state.gate.wait(10):
                        return
                    state.gate.clear()
                last = i == len(state.tokens) - 1
                event = {
                    "token": {"id": i, "text": text, "logprob": -1.0, "special": False},
                    "generated_text": "".join(state.tokens) if last else None,
                    "details": {"finish_reason": state.finish, "generated_tokens": len(state.tokens)} if last else None,
                }
                try:
                    self.wfile.write(f"data:{json.dumps(event)}\n\n".encode())
                    self.wfile.flush()
                except OSError:
                    return
                state.sent += 1

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state, f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


def run(
    engine: RemoteEngine, params: GenerationParams, prompt: str = "User: hi\nAgent:"
) -> tuple[list[tuple[str, dict[str, Any]]], str]:
    events: list[tuple[str, dict[str, Any]]] = []
    done = threading.Event()

    def cb(kind: str, data: dict[str, Any]) -> None:
        events.append((kind, data))
        if kind in ("end", "error"):
            done.set()

    rid, _ = engine.submit(ChatPrompt(prompt, [], 0, 0), params, cb, user_key="u")
    assert done.wait(20)
    return events, rid


def test_streams_with_token_and_stop_strings(stub: tuple[Stub, str]) -> None:
    state, url = stub
    engine = RemoteEngine(RemoteConfig(url=url, token="hf_secret"))
    params = GenerationParams(max_new_tokens=20, do_sample=True, temperature=0.7, top_p=0.9, seed=5, stop=("User:",))
    events, _ = run(engine, params)
    req = state.requests[0]
    assert req["path"] == "/generate_stream" and req["auth"] == "Bearer hf_secret"
    assert req["body"]["inputs"] == "User: hi\nAgent:" and req["body"]["stream"] is True
    assert req["body"]["parameters"]["seed"] == 5 and req["body"]["parameters"]["stop"] == ["User:"]
    deltas = "".join(d["text"] for k, d in events if k == "token")
    end = events[-1][1]
    assert events[-1][0] == "end" and end["reason"] == "stop"
    assert end["text"] == "Hello 你好 " == deltas
    assert engine.active_ids() == [] and engine._users == {}


def test_without_token_no_auth_header_and_eos(stub: tuple[Stub, str]) -> None:
    state, url = stub
    state.finish = "eos_token"
    state.tokens = ["a", "b"]
    events, _ = run(RemoteEngine(RemoteConfig(url=url + "/generate_stream")), GenerationParams(max_new_tokens=5))
    assert state.requests[0]["auth"] is None
    assert events[-1][1]["reason"] == "eos" and events[-1][1]["text"] == "ab"
    assert events[-1][1]["usage"]["completion_tokens"] == 2


def test_server_error_is_model_unavailable(stub: tuple[Stub, str]) -> None:
    state, url = stub
    state.status = 503
    events, _ = run(RemoteEngine(RemoteConfig(url=url)), GenerationParams())
    assert events[-1][0] == "error" and events[-1][1]["code"] == "model_unavailable"


def test_unreachable_server_is_model_unavailable() -> None:
    events, _ = run(RemoteEngine(RemoteConfig(url="http://127.0.0.1:9", timeout_s=5)), GenerationParams())
    assert events[-1][0] == "error" and events[-1][1]["code"] == "model_unavailable"


def test_cancel_stops_reading(stub: tuple[Stub, str]) -> None:
    state, url = stub
    state.gate = threading.Event()
    engine = RemoteEngine(RemoteConfig(url=url))
    events: list[tuple[str, dict[str, Any]]] = []
    done, first = threading.Event(), threading.Event()

    def cb(kind: str, data: dict[str, Any]) -> None:
        events.append((kind, data))
        if kind == "token":
            first.set()
        if kind in ("end", "error"):
            done.set()

    rid, _ = engine.submit(ChatPrompt("x", [], 0, 0), GenerationParams(max_new_tokens=20), cb)
    state.gate.set()
    assert first.wait(10)
    engine.cancel(rid)
    state.gate.set()  # the next token arrives; the client sees the cancel and hangs up
    assert done.wait(10)
    assert events[-1][1]["reason"] == "cancelled" and events[-1][1]["usage"]["completion_tokens"] == 1
    engine.close()


def test_helpers() -> None:
    assert stream_url("http://h:8080/") == "http://h:8080/generate_stream"
    assert (
        stream_url("https://api-inference.huggingface.co/models/gpt2")
        == "https://api-inference.huggingface.co/models/gpt2"
    )
    greedy = tgi_parameters(GenerationParams(max_new_tokens=9, repetition_penalty=1.2))
    assert greedy == {"max_new_tokens": 9, "details": True, "repetition_penalty": 1.2, "do_sample": False}
    sampled = tgi_parameters(GenerationParams(do_sample=True, temperature=0.5, top_k=0, top_p=1.0))
    assert "top_k" not in sampled and "top_p" not in sampled and sampled["temperature"] == 0.5


@pytest.mark.parametrize(
    "raw",
    [
        ['{"token": "Hel"}', '{"token": {"text": "lo"}, "details": "done"}'],
        ['{"token": {"text": "a"}}', '{"token": {"text": "b"}, "generated_text": "ab", "details": [1]}'],
        ['{"token": {"text": "a", "special": false}, "error": ["x"]}', '{"token": 5, "generated_text": ""}'],
    ],
)
def test_malformed_stream_always_ends(stub: tuple[Stub, str], raw: list[str]) -> None:
    """A server sending odd shapes (token a string, details a list) used to kill the stream's thread:
    no end/error event, and the user's slot (one live stream) was never freed."""
    state, url = stub
    state.raw = raw
    engine = RemoteEngine(RemoteConfig(url=url))
    events, _ = run(engine, GenerationParams(max_new_tokens=5))
    assert events[-1][0] in ("end", "error")
    assert engine.active_ids() == [] and engine._users == {}
