"""Remote chat backends: a model served by another program, relayed with the same events as slm.engine.

Two wire dialects, both server-sent events over one streaming POST:

* TGI / Hugging Face Inference API (`api="tgi"`, CHAT_BACKEND=remote): `{"inputs", "parameters",
  "stream": true}` to `<TGI base>/generate_stream` or `https://api-inference.huggingface.co/models/<id>`;
  lines `data:{"token": {"text", "special"}, "generated_text": null|..., "details": ...}`.
* OpenAI-compatible (`api="completions"` or `"chat"`, CHAT_BACKEND=openai): what vLLM, Ollama, llama.cpp's
  server, TGI's /v1 and LM Studio serve. `/v1/completions` gets the dialogue prompt text,
  `/v1/chat/completions` (for chat-tuned models) gets the turns as `messages`; lines
  `data: {"choices": [{"text" | "delta": {"content"}, "finish_reason"}], "usage"}` ending with
  `data: [DONE]`. Stop strings are applied here, not sent: the reply is cut exactly where the stop string
  starts and the upstream request is closed at once.

`RemoteEngine` has the face of `slm.engine.Engine` (prepare / submit / cancel / stats / close), one I/O
thread per stream. A cancel (stop, socket close) shuts the upstream socket down immediately, even when
the server is stalled between tokens, so the server sees the disconnect and stops generating (vLLM and
Ollama abort a request whose client went away). A read that waits longer than `timeout_s` ends the reply
with `upstream_timeout`; HTTP 429 with `busy` (Retry-After quoted); a prompt over the server's context
with `prompt_too_long`; anything else with `model_unavailable`. The deltas concatenate exactly to the
final text whatever the server sends. The token (optional) goes in `Authorization: Bearer`. No Django.
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from slm.engine import AlreadyStreaming, EngineBusy, EventCallback, ModelUnavailable
from slm.generation import ChatPrompt, GenerationParams, IncrementalDecoder, format_chat_prompt

APIS = ("tgi", "completions", "chat")
MAX_ERROR_BODY = 64 * 1024


@dataclass
class RemoteConfig:
    url: str
    token: str = ""
    timeout_s: float = 60.0  # connect timeout, and the longest wait for the next bytes of a stream
    max_concurrent: int = 8
    queue_size: int = 32
    max_prompt_chars: int = 4000
    name: str = ""  # model ref shown to users; default "remote" (TGI) or "openai:<model>"
    api: str = "tgi"  # tgi | completions | chat
    model: str = ""  # OpenAI `model`; "" = the first model the server lists at /v1/models
    sampling_extras: bool = True  # send top_k / repetition_penalty (vLLM, llama.cpp; api.openai.com rejects them)


# ------------------------------------------------------------------------------------------ TGI wire
def stream_url(url: str) -> str:
    """A TGI base URL gets `/generate_stream`; Inference API model URLs and full paths stay as given."""
    url = url.rstrip("/")
    if url.endswith("/generate_stream") or "/models/" in url:
        return url
    return url + "/generate_stream"


def tgi_parameters(params: GenerationParams) -> dict[str, Any]:
    """TGI's parameter object. TGI rejects neutral values (temperature 0, top_p 1, top_k 0): left out."""
    out: dict[str, Any] = {"max_new_tokens": params.max_new_tokens, "details": True}
    if params.repetition_penalty != 1.0:
        out["repetition_penalty"] = params.repetition_penalty
    if params.stop:
        out["stop"] = list(params.stop)
    if params.greedy:
        out["do_sample"] = False
        return out
    out["do_sample"] = True
    out["temperature"] = params.temperature
    if params.top_k:
        out["top_k"] = params.top_k
    if 0.0 < params.top_p < 1.0:
        out["top_p"] = params.top_p
    if params.seed is not None:
        out["seed"] = params.seed
    return out


# --------------------------------------------------------------------------------------- OpenAI wire
def openai_urls(url: str, api: str) -> tuple[str, str]:
    """(completions or chat-completions URL, models URL) for a base like http://host:8000, …/v1, or a full
    endpoint URL (which then also decides the API)."""
    url = url.rstrip("/")
    for suffix in ("/chat/completions", "/completions"):
        if url.endswith(suffix):
            root = url[: -len(suffix)]
            return url, root + "/models"
    root = url if url.endswith("/v1") else url + "/v1"
    return root + ("/chat/completions" if api == "chat" else "/completions"), root + "/models"


def openai_body(
    prompt: ChatPrompt, params: GenerationParams, model: str, api: str, extras: bool = True
) -> dict[str, Any]:
    """The request body. Greedy is temperature 0; stop strings are applied by the relay, not sent."""
    body: dict[str, Any] = {"model": model, "stream": True, "stream_options": {"include_usage": True}}
    if api == "chat":
        body["messages"] = [
            {"role": "assistant" if role == "agent" else "user", "content": text} for role, text in prompt.turns
        ] or [{"role": "user", "content": prompt.text}]
    else:
        body["prompt"] = prompt.text
    body["max_tokens"] = params.max_new_tokens
    if params.greedy:
        body["temperature"] = 0.0
    else:
        body["temperature"] = params.temperature
        if params.top_p < 1.0:
            body["top_p"] = params.top_p
        if params.seed is not None:
            body["seed"] = params.seed
        if extras and params.top_k:
            body["top_k"] = params.top_k
    if extras and params.repetition_penalty != 1.0:
        body["repetition_penalty"] = params.repetition_penalty
    return body


# ------------------------------------------------------------------------------------------- parsing
def iter_sse(lines: Iterator[bytes]) -> Iterator[dict[str, Any]]:
    """JSON objects of the `data:` lines of a server-sent-events stream, up to `data: [DONE]`."""
    for raw in lines:
        line = raw.decode("utf-8", errors="replace").strip()
        if not line.startswith("data:"):
            continue
        payload = line[5:].strip()
        if payload == "[DONE]":
            return
        if not payload:
            continue
        try:
            obj = json.loads(payload)
        except ValueError:
            continue
        if isinstance(obj, dict):
            yield obj


@dataclass
class Chunk:
    texts: list[str] = field(default_factory=list)
    finish: str | None = None  # eos | length | stop, when the server says the reply is over
    usage: dict[str, int] | None = None
    error: str | None = None


_TGI_FINISH = {"eos_token": "eos", "length": "length", "stop_sequence": "stop"}


def parse_tgi(obj: dict[str, Any]) -> Chunk:
    if "error" in obj and "token" not in obj:
        return Chunk(error=str(obj.get("error")))
    token = obj.get("token") if isinstance(obj.get("token"), dict) else {}
    details = obj.get("details") if isinstance(obj.get("details"), dict) else {}
    chunk = Chunk()
    if token and not token.get("special"):
        chunk.texts.append(str(token.get("text", "")))
    if obj.get("generated_text") is not None or details:
        chunk.finish = _TGI_FINISH.get(str(details.get("finish_reason", "")), "eos")
    return chunk


def _error_text(err: Any) -> str:
    if isinstance(err, dict):
        return str(err.get("message") or err.get("detail") or json.dumps(err)[:500])
    return str(err)


def parse_openai(obj: dict[str, Any]) -> Chunk:
    if obj.get("error") is not None:
        return Chunk(error=_error_text(obj["error"]))
    if obj.get("object") == "error":
        return Chunk(error=_error_text(obj))
    chunk = Chunk()
    usage = obj.get("usage")
    if isinstance(usage, dict):
        chunk.usage = {k: int(v) for k, v in usage.items() if k.endswith("_tokens") and isinstance(v, int | float)}
    choices = obj.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        choice = choices[0]
        delta = choice.get("delta")
        text = delta.get("content") if isinstance(delta, dict) else choice.get("text")
        if isinstance(text, str) and text:
            chunk.texts.append(text)
        finish = choice.get("finish_reason")
        if finish:
            chunk.finish = "length" if finish == "length" else "eos"
    return chunk


# ----------------------------------------------------------------------------------------- transport
class UpstreamError(Exception):
    """A failure talking to the model server, with the error frame's code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class Upstream:
    """One HTTP request whose socket another thread can shut down (`abort`), which unblocks a read that is
    waiting on a stalled server at once. Honours http(s)_proxy / no_proxy like urllib."""

    def __init__(self, url: str, timeout: float) -> None:
        self.url = url
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise UpstreamError("model_unavailable", f"bad model server URL {url!r} (use http:// or https://)")
        self.https = parts.scheme == "https"
        self.host = parts.hostname
        self.port = parts.port or (443 if self.https else 80)
        self.path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        cls = http.client.HTTPSConnection if self.https else http.client.HTTPConnection
        proxy = urllib.request.getproxies().get(parts.scheme)
        if proxy and not urllib.request.proxy_bypass(self.host):
            p = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
            self.conn = cls(p.hostname or "", p.port or 8080, timeout=timeout)
            if self.https:
                self.conn.set_tunnel(self.host, self.port)
            else:
                self.path = url
        else:
            self.conn = cls(self.host, self.port, timeout=timeout)
        self.aborted = False

    def request(self, method: str, body: bytes | None, headers: dict[str, str]) -> http.client.HTTPResponse:
        try:
            self.conn.request(method, self.path, body=body, headers=headers)
            return self.conn.getresponse()
        except TimeoutError as exc:
            raise UpstreamError("upstream_timeout", f"the model server at {self.host}:{self.port} timed out") from exc
        except OSError as exc:
            if self.aborted:
                raise
            raise UpstreamError(
                "model_unavailable", f"cannot reach the model server at {self.host}:{self.port}: {exc}"
            ) from exc

    def abort(self) -> None:
        self.aborted = True
        sock = self.conn.sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        self.conn.close()


def http_failure(status: int, reason: str, body: bytes, retry_after: str | None) -> UpstreamError:
    """The error frame for an HTTP error answer of the model server."""
    text = body.decode("utf-8", errors="replace").strip()
    try:
        obj = json.loads(text)
        if isinstance(obj, dict):
            text = _error_text(obj.get("error", obj) if obj.get("error") is not None else obj)
    except ValueError:
        pass
    text = text[:500] or reason
    if status == 429:
        wait = (
            f"; try again in {retry_after} s"
            if retry_after and retry_after.strip().isdigit()
            else "; try again shortly"
        )
        return UpstreamError("busy", f"the model server is busy (HTTP 429: {text}){wait}")
    if status in (400, 413, 422) and any(w in text.lower() for w in ("context length", "too long", "maximum context")):
        return UpstreamError("prompt_too_long", f"the model server refused the prompt as too long: {text}")
    return UpstreamError("model_unavailable", f"the remote model failed: HTTP {status}: {text}")


# ------------------------------------------------------------------------------------------- engine
class RemoteEngine:
    def __init__(self, cfg: RemoteConfig) -> None:
        if cfg.api not in APIS:
            raise ModelUnavailable(f"unknown remote API {cfg.api!r}: CHAT_REMOTE_API is completions or chat")
        if not cfg.url:
            backend = "remote" if cfg.api == "tgi" else "openai"
            raise ModelUnavailable(f"CHAT_BACKEND is '{backend}' but CHAT_REMOTE_URL is empty")
        self.cfg = cfg
        self._lock = threading.Lock()
        self._slots = threading.Semaphore(cfg.max_concurrent)
        self._cancel: dict[str, threading.Event] = {}
        self._upstreams: dict[str, Upstream] = {}
        self._users: dict[str, str] = {}
        self._threads: dict[str, threading.Thread] = {}
        self._model = cfg.model
        self.model_ref = cfg.name or ("remote" if cfg.api == "tgi" else (f"openai:{cfg.model}" if cfg.model else ""))
        self.closed = False

    # ---- model name (OpenAI servers need one; the first listed is the one vLLM serves)
    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
        if self.cfg.token:
            headers["Authorization"] = f"Bearer {self.cfg.token}"
        return headers

    def upstream_model(self) -> str:
        if self.cfg.api == "tgi" or self._model:
            return self._model
        _, models_url = openai_urls(self.cfg.url, self.cfg.api)
        up = Upstream(models_url, min(self.cfg.timeout_s, 10.0))
        try:
            resp = up.request("GET", None, {**self._headers(), "Accept": "application/json"})
            body = resp.read(1 << 20)
            if resp.status != 200:
                raise http_failure(resp.status, resp.reason, body, resp.getheader("Retry-After"))
            data = json.loads(body).get("data") or []
            model = str(data[0]["id"]) if data and isinstance(data[0], dict) and data[0].get("id") else ""
        except (UpstreamError, OSError, ValueError, AttributeError) as exc:
            raise ModelUnavailable(
                f"could not ask {models_url} which model it serves ({exc}); set CHAT_REMOTE_MODEL"
            ) from exc
        finally:
            up.close()
        if not model:
            raise ModelUnavailable(f"{models_url} lists no model; set CHAT_REMOTE_MODEL")
        with self._lock:
            self._model = model
            if not self.cfg.name:
                self.model_ref = f"openai:{model}"
        return model

    # ---- the Engine face
    def prepare(
        self, history: list[tuple[str, str]], user_text: str, params: GenerationParams
    ) -> tuple[str, ChatPrompt]:
        self.upstream_model()
        # No tokenizer here: characters stand in for tokens against CHAT_MAX_PROMPT_CHARS.
        return self.model_ref, format_chat_prompt(
            history, user_text, lambda text: [0] * len(text), self.cfg.max_prompt_chars, unit="characters"
        )

    def stats(self) -> dict[str, int]:
        with self._lock:
            n = len(self._cancel)
        return {"running": min(n, self.cfg.max_concurrent), "pending": 0, "queued": max(0, n - self.cfg.max_concurrent)}

    def submit(
        self,
        prompt: ChatPrompt,
        params: GenerationParams,
        callback: EventCallback,
        *,
        user_key: str | None = None,
        model_ref: str = "",
    ) -> tuple[str, int]:
        rid = uuid.uuid4().hex
        with self._lock:
            if user_key is not None and user_key in self._users:
                raise AlreadyStreaming("you already have a reply streaming; stop it or wait for it to finish")
            position = max(0, len(self._cancel) + 1 - self.cfg.max_concurrent)
            if position > self.cfg.queue_size:
                raise EngineBusy("the server is busy; try again shortly")
            self._cancel[rid] = threading.Event()
            if user_key is not None:
                self._users[user_key] = rid
            t = threading.Thread(
                target=self._run,
                args=(rid, prompt, params, callback, user_key),
                name=f"chat-remote-{rid[:6]}",
                daemon=True,
            )
            self._threads[rid] = t
        t.start()
        return rid, position

    def cancel(self, rid: str) -> None:
        """Stops a stream now: the upstream socket is shut down even if the server is mid-stall."""
        with self._lock:
            ev = self._cancel.get(rid)
            up = self._upstreams.get(rid)
        if ev is not None:
            ev.set()
        if up is not None:
            up.abort()

    def close(self, timeout: float = 5.0) -> None:
        self.closed = True
        with self._lock:
            rids, threads = list(self._cancel), list(self._threads.values())
        for rid in rids:
            self.cancel(rid)
        for t in threads:
            t.join(timeout)

    def active_ids(self) -> list[str]:
        with self._lock:
            return list(self._cancel)

    # ---- one stream
    def _request(self, prompt: ChatPrompt, params: GenerationParams) -> tuple[str, bytes]:
        if self.cfg.api == "tgi":
            body = {"inputs": prompt.text, "parameters": tgi_parameters(params), "stream": True}
            return stream_url(self.cfg.url), json.dumps(body).encode()
        url, _ = openai_urls(self.cfg.url, self.cfg.api)
        api = "chat" if url.endswith("/chat/completions") else "completions"
        body = openai_body(prompt, params, self.upstream_model(), api, self.cfg.sampling_extras)
        return url, json.dumps(body, ensure_ascii=False).encode()

    def _run(
        self, rid: str, prompt: ChatPrompt, params: GenerationParams, callback: EventCallback, user_key: str | None
    ) -> None:
        cancel = self._cancel[rid]
        submitted = time.perf_counter()
        pieces: list[str] = []
        decoder = IncrementalDecoder(lambda ids: "".join(pieces[i] for i in ids), params.stop)
        parse = parse_tgi if self.cfg.api == "tgi" else parse_openai
        reason, n, t_first, t_last = "length", 0, 0.0, 0.0
        usage: dict[str, int] = {}
        up: Upstream | None = None
        acquired = False
        try:
            while not (acquired := self._slots.acquire(timeout=0.05)):  # a queued request can be cancelled
                if cancel.is_set():
                    break
            if cancel.is_set():
                reason = "cancelled"
            else:
                callback("started", {"model": self.model_ref, "prompt_tokens": 0})
                url, body = self._request(prompt, params)
                up = Upstream(url, self.cfg.timeout_s)
                with self._lock:
                    self._upstreams[rid] = up
                if cancel.is_set():
                    up.abort()
                try:
                    resp = up.request("POST", body, self._headers())
                    if resp.status != 200:
                        raise http_failure(resp.status, resp.reason, resp.read(MAX_ERROR_BODY),
                                           resp.getheader("Retry-After"))  # fmt: skip
                    finished = False
                    for obj in iter_sse(iter(resp.readline, b"")):
                        if cancel.is_set():
                            break
                        chunk = parse(obj)
                        if chunk.error is not None:
                            raise UpstreamError("model_unavailable", f"the remote model failed: {chunk.error}")
                        if chunk.usage:
                            usage = chunk.usage
                        for text in chunk.texts:
                            now = time.perf_counter()
                            t_first = t_first or now
                            t_last = now
                            n += 1
                            pieces.append(text)
                            delta = decoder.push(len(pieces) - 1)
                            if delta:
                                callback("token", {"text": delta})
                            if decoder.stopped:
                                break
                        if decoder.stopped:
                            reason = "stop"
                            break
                        if chunk.finish is not None:
                            reason, finished = chunk.finish, True
                            if self.cfg.api == "tgi":
                                break  # TGI ends with its last token; OpenAI servers may still send usage
                    if cancel.is_set() and reason != "stop":
                        reason = "cancelled"
                    elif not finished and reason != "stop" and self.cfg.api != "tgi":
                        raise UpstreamError(
                            "model_unavailable", "the model server closed the stream before the reply ended"
                        )
                except TimeoutError as exc:
                    if cancel.is_set():
                        reason = "cancelled"
                    else:
                        raise UpstreamError(
                            "upstream_timeout",
                            f"the model server sent nothing for {self.cfg.timeout_s:g} s; the request was cancelled",
                        ) from exc
                except (OSError, http.client.HTTPException, ValueError):
                    if not cancel.is_set():
                        raise
                    reason = "cancelled"  # our own abort broke the read
            tail = decoder.finish()
            if tail:
                callback("token", {"text": tail})
            ttft = (t_first - submitted) * 1000 if t_first else None
            tps = (n - 1) / (t_last - t_first) if n > 1 and t_last > t_first else None
            self._forget(rid, user_key, up, acquired)
            callback(
                "end",
                {
                    "reason": reason,
                    "text": decoder.text,
                    "usage": {
                        "prompt_tokens": usage.get("prompt_tokens", 0),
                        # the server's count when it finished the reply; ours when we cut it (stop, cancel)
                        "completion_tokens": usage.get("completion_tokens", n) if reason in ("eos", "length") else n,
                    },
                    "timing": {"ttft_ms": ttft, "tokens_per_s": tps},
                    "model": self.model_ref,
                    "seed": params.seed,
                },
            )
        except Exception as exc:  # any failure (HTTP, a malformed stream) ends the stream with an error
            self._forget(rid, user_key, up, acquired)
            if isinstance(exc, UpstreamError):
                code, message = exc.code, str(exc)
            elif isinstance(exc, ModelUnavailable):
                code, message = "model_unavailable", str(exc)
            else:
                code, message = "model_unavailable", f"the remote model failed: {type(exc).__name__}: {exc}"
            callback("error", {"code": code, "message": message})

    def _forget(self, rid: str, user_key: str | None, up: Upstream | None, acquired: bool) -> None:
        """Releases the stream's slot and connection once (the end path and the error path both call it)."""
        with self._lock:
            first = self._cancel.pop(rid, None) is not None
            self._threads.pop(rid, None)
            self._upstreams.pop(rid, None)
            if user_key is not None and self._users.get(user_key) == rid:
                self._users.pop(user_key, None)
        if not first:
            return
        if up is not None:
            up.abort()  # never leave the server generating for nobody
            up.close()
        if acquired:
            self._slots.release()
