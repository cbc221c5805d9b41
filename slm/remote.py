"""Remote chat backend: Hugging Face Inference API / text-generation-inference (TGI) token streaming.

Both speak the same server-sent-events stream: POST a JSON body {"inputs", "parameters", "stream": true}
to `<TGI base>/generate_stream` or `https://api-inference.huggingface.co/models/<id>`, get lines
`data:{"token": {"text": ..., "special": bool}, "generated_text": null|..., "details": ...}`. The token
(optional) goes in `Authorization: Bearer`. `RemoteEngine` has the same face as `slm.engine.Engine`
(prepare / submit / cancel / stats / close) with one I/O thread per stream; stop strings are applied
here too, so the deltas concatenate exactly to the final text whatever the server does with them.
No Django here.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from slm.engine import AlreadyStreaming, EngineBusy, EventCallback, ModelUnavailable
from slm.generation import ChatPrompt, GenerationParams, IncrementalDecoder, format_chat_prompt


@dataclass
class RemoteConfig:
    url: str
    token: str = ""
    timeout_s: float = 60.0
    max_concurrent: int = 8
    queue_size: int = 32
    max_prompt_chars: int = 4000
    name: str = "remote"


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


def iter_sse(lines: Iterator[bytes]) -> Iterator[dict[str, Any]]:
    """JSON objects of the `data:` lines of a server-sent-events stream."""
    for raw in lines:
        line = raw.decode("utf-8", errors="replace").strip()
        if not line.startswith("data:"):
            continue
        payload = line[5:].strip()
        if not payload or payload == "[DONE]":
            continue
        try:
            obj = json.loads(payload)
        except ValueError:
            continue
        if isinstance(obj, dict):
            yield obj


_FINISH = {"eos_token": "eos", "length": "length", "stop_sequence": "stop"}


class RemoteEngine:
    def __init__(self, cfg: RemoteConfig) -> None:
        if not cfg.url:
            raise ModelUnavailable("CHAT_BACKEND is 'remote' but CHAT_REMOTE_URL is empty")
        self.cfg = cfg
        self._lock = threading.Lock()
        self._slots = threading.Semaphore(cfg.max_concurrent)
        self._cancel: dict[str, threading.Event] = {}
        self._users: dict[str, str] = {}
        self._threads: dict[str, threading.Thread] = {}
        self.model_ref = cfg.name
        self.closed = False

    def prepare(
        self, history: list[tuple[str, str]], user_text: str, params: GenerationParams
    ) -> tuple[str, ChatPrompt]:
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
        with self._lock:
            ev = self._cancel.get(rid)
        if ev is not None:
            ev.set()

    def close(self, timeout: float = 5.0) -> None:
        self.closed = True
        with self._lock:
            events, threads = list(self._cancel.values()), list(self._threads.values())
        for ev in events:
            ev.set()
        for t in threads:
            t.join(timeout)

    def active_ids(self) -> list[str]:
        with self._lock:
            return list(self._cancel)

    def _run(
        self, rid: str, prompt: ChatPrompt, params: GenerationParams, callback: EventCallback, user_key: str | None
    ) -> None:
        cancel = self._cancel[rid]
        submitted = time.perf_counter()
        pieces: list[str] = []
        decoder = IncrementalDecoder(lambda ids: "".join(pieces[i] for i in ids), params.stop)
        reason, n, t_first, t_last = "length", 0, 0.0, 0.0
        try:
            with self._slots:
                if cancel.is_set():
                    reason = "cancelled"
                else:
                    callback("started", {"model": self.model_ref, "prompt_tokens": 0})
                    body = json.dumps({"inputs": prompt.text, "parameters": tgi_parameters(params), "stream": True})
                    headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
                    if self.cfg.token:
                        headers["Authorization"] = f"Bearer {self.cfg.token}"
                    req = urllib.request.Request(stream_url(self.cfg.url), body.encode(), headers, method="POST")
                    with urllib.request.urlopen(req, timeout=self.cfg.timeout_s) as resp:
                        for obj in iter_sse(iter(resp.readline, b"")):
                            if cancel.is_set():
                                reason = "cancelled"
                                break
                            if "error" in obj and "token" not in obj:
                                raise ModelUnavailable(str(obj.get("error")))
                            token = obj.get("token") if isinstance(obj.get("token"), dict) else {}
                            details = obj.get("details") if isinstance(obj.get("details"), dict) else {}
                            if token and not token.get("special"):
                                now = time.perf_counter()
                                t_first = t_first or now
                                t_last = now
                                n += 1
                                pieces.append(str(token.get("text", "")))
                                delta = decoder.push(len(pieces) - 1)
                                if delta:
                                    callback("token", {"text": delta})
                                if decoder.stopped:
                                    reason = "stop"
                                    break
                            if obj.get("generated_text") is not None or details:
                                reason = _FINISH.get(str(details.get("finish_reason", "")), "eos")
                                break
            tail = decoder.finish()
            if tail:
                callback("token", {"text": tail})
            ttft = (t_first - submitted) * 1000 if t_first else None
            tps = (n - 1) / (t_last - t_first) if n > 1 and t_last > t_first else None
            self._forget(rid, user_key)
            callback(
                "end",
                {
                    "reason": reason,
                    "text": decoder.text,
                    "usage": {"prompt_tokens": 0, "completion_tokens": n},
                    "timing": {"ttft_ms": ttft, "tokens_per_s": tps},
                    "model": self.model_ref,
                    "seed": params.seed,
                },
            )
        except Exception as exc:  # any failure (HTTP, a malformed stream) ends the stream with an error
            self._forget(rid, user_key)
            detail = exc.reason if isinstance(exc, urllib.error.URLError) else exc
            callback("error", {"code": "model_unavailable", "message": f"the remote model failed: {detail}"})

    def _forget(self, rid: str, user_key: str | None) -> None:
        with self._lock:
            self._cancel.pop(rid, None)
            self._threads.pop(rid, None)
            if user_key is not None and self._users.get(user_key) == rid:
                self._users.pop(user_key, None)
