"""A stub OpenAI-compatible server on 127.0.0.1 that streams like vLLM / Ollama (tests and bench/remote.py).

POST /v1/completions and /v1/chat/completions with `"stream": true` answer HTTP/1.1, chunked,
`text/event-stream`: one `data: {...}` event per token (chat: a first role-only delta), a finish chunk,
a usage chunk when `stream_options.include_usage` is asked, then `data: [DONE]`. GET /v1/models lists
`stub-model`. Behaviours for tests, set on `StubState`:
  status         answer with this HTTP status and an OpenAI error body (429 adds Retry-After: 7)
  stall_after    stop sending after this many tokens and hold the connection open (no bytes) until the
                 client goes away or `release` is set; `disconnected` is set when the client closed
  error_after    after this many tokens send `data: {"error": {...}}` (vLLM's mid-stream error)
  drop_after     after this many tokens close the connection without a finish or [DONE]
  delay_s        pause between tokens (bench pacing)
  stamp          each token's text is the wall-clock time it was sent ("1712345678.123456;"), so a
                 client can measure per-token latency (bench/remote.py)
Every request is recorded (path, JSON body, Authorization header).
"""

from __future__ import annotations

import json
import select
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

MODEL = "stub-model"


@dataclass
class StubState:
    tokens: list[str] = field(default_factory=lambda: ["Hel", "lo", " 你", "好", " Us", "er:", " more"])
    finish: str = "stop"  # finish_reason after the last token: "stop" (eos) or "length"
    status: int = 200
    stall_after: int | None = None
    error_after: int | None = None
    drop_after: int | None = None
    delay_s: float = 0.0
    stamp: bool = False
    tokens_from_request: bool = False  # send exactly `max_tokens` tokens (bench)
    models: list[str] = field(default_factory=lambda: [MODEL])
    requests: list[dict[str, Any]] = field(default_factory=list)
    sent: int = 0
    release: threading.Event = field(default_factory=threading.Event)
    stalled: threading.Event = field(default_factory=threading.Event)
    disconnected: threading.Event = field(default_factory=threading.Event)
    finished: threading.Event = field(default_factory=threading.Event)  # a stream was written to its end


def _client_gone(sock: socket.socket) -> bool:
    readable, _, _ = select.select([sock], [], [], 0.02)
    if not readable:
        return False
    try:
        return sock.recv(1, socket.MSG_PEEK) == b""
    except OSError:
        return True


class OpenAIStub:
    def __init__(self, state: StubState | None = None, port: int = 0) -> None:
        self.state = state or StubState()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                stub._models(self)

            def do_POST(self) -> None:  # noqa: N802
                stub._complete(self)

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}"

    def start(self) -> OpenAIStub:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.state.release.set()
        self.server.shutdown()
        self.server.server_close()

    # ------------------------------------------------------------------------------------ handlers
    @staticmethod
    def _json(h: BaseHTTPRequestHandler, status: int, obj: Any, headers: dict[str, str] | None = None) -> None:
        body = json.dumps(obj).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(body)

    def _models(self, h: BaseHTTPRequestHandler) -> None:
        if h.path.rstrip("/") != "/v1/models":
            return self._json(h, 404, {"error": {"message": f"no route {h.path}"}})
        self.state.requests.append({"path": h.path, "body": None, "auth": h.headers.get("Authorization")})
        self._json(h, 200, {"object": "list", "data": [{"id": m, "object": "model"} for m in self.state.models]})

    def _complete(self, h: BaseHTTPRequestHandler) -> None:
        st = self.state
        body = json.loads(h.rfile.read(int(h.headers.get("Content-Length") or 0)) or b"{}")
        st.requests.append({"path": h.path, "body": body, "auth": h.headers.get("Authorization")})
        chat = h.path.endswith("/chat/completions")
        if h.path not in ("/v1/completions", "/v1/chat/completions"):
            return self._json(h, 404, {"error": {"message": f"no route {h.path}"}})
        if st.status != 200:
            message = {429: "Too many requests: the server is at capacity", 400: "This model's maximum context "
                       "length is 2048 tokens. However, you requested 5000 tokens"}.get(st.status, "internal error")  # fmt: skip
            headers = {"Retry-After": "7"} if st.status == 429 else {}
            return self._json(h, st.status, {"object": "error", "message": message, "code": st.status}, headers)
        h.send_response(200)
        h.send_header("Content-Type", "text/event-stream")
        h.send_header("Cache-Control", "no-cache")
        h.send_header("Transfer-Encoding", "chunked")
        h.end_headers()
        created = int(time.time())

        def event(payload: Any) -> None:
            data = b"data: " + (payload if isinstance(payload, bytes) else json.dumps(payload).encode()) + b"\n\n"
            h.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            h.wfile.flush()

        def chunk(text: str | None, finish: str | None = None) -> dict[str, Any]:
            if chat:
                delta = {"role": "assistant", "content": ""} if text is None else ({"content": text} if text else {})
                choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": finish}
            else:
                choice = {"index": 0, "text": text or "", "finish_reason": finish, "logprobs": None}
            return {"id": "cmpl-stub", "object": "chat.completion.chunk" if chat else "text_completion",
                    "created": created, "model": body.get("model"), "choices": [choice]}  # fmt: skip

        try:
            if chat:
                event(chunk(None))
            tokens = ["x"] * int(body.get("max_tokens") or 16) if st.tokens_from_request else st.tokens
            for i, text in enumerate(tokens):
                if st.stall_after is not None and i >= st.stall_after:
                    st.stalled.set()
                    deadline = time.monotonic() + 30
                    while not st.release.is_set() and time.monotonic() < deadline:
                        if _client_gone(h.connection):
                            st.disconnected.set()
                            return
                    if not st.release.is_set():
                        return
                if st.error_after is not None and i >= st.error_after:
                    event({"error": {"object": "error", "message": "CUDA out of memory", "type": "InternalError"}})
                    return
                if st.drop_after is not None and i >= st.drop_after:
                    h.close_connection = True
                    h.wfile.write(b"0\r\n\r\n")
                    return
                if st.delay_s:
                    time.sleep(st.delay_s)
                event(chunk(f"{time.time():.6f};" if st.stamp else text))
                st.sent += 1
            event(chunk("", st.finish))
            if (body.get("stream_options") or {}).get("include_usage"):
                usage = {"prompt_tokens": 11, "completion_tokens": len(tokens), "total_tokens": 11 + len(tokens)}
                event({"id": "cmpl-stub", "object": "text_completion", "created": created, "model": body.get("model"),
                       "choices": [], "usage": usage})  # fmt: skip
            event(b"[DONE]")
            h.wfile.write(b"0\r\n\r\n")
            h.wfile.flush()
            st.finished.set()
        except OSError:  # the client went away mid-stream (a cancel): what vLLM sees as a disconnect
            st.disconnected.set()


def main() -> None:
    """`python -m tests.openai_stub --port P [--stamp] [--delay-ms D]`: a stub in its own process (bench)."""
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--delay-ms", type=float, default=0.0)
    ap.add_argument("--stamp", action="store_true")
    args = ap.parse_args()
    state = StubState(delay_s=args.delay_ms / 1000, stamp=args.stamp, tokens_from_request=True)
    stub = OpenAIStub(state, port=args.port)
    print(f"listening {stub.url}", flush=True)
    stub.server.serve_forever()


if __name__ == "__main__":
    main()
