"""The process-wide chat backend, built from settings: the local engine (slm.engine) or a remote one.

One engine per server process serves every socket. It starts lazily on first use (a spawned child
process in the default "process" mode) and is rebuilt when the settings it was built from change
(tests point it at a temporary registry).
"""

from __future__ import annotations

import atexit
import threading
from typing import Any

from django.conf import settings

from slm.engine import Engine, EngineConfig, ModelUnavailable
from slm.remote import RemoteConfig, RemoteEngine

_lock = threading.Lock()
_backend: Any = None
_key: tuple[Any, ...] | None = None


def _settings_key() -> tuple[Any, ...]:
    return (
        settings.CHAT_BACKEND,
        settings.CHAT_MODEL,
        str(settings.SLM_REGISTRY_DIR),
        settings.CHAT_PRECISION,
        settings.CHAT_MAX_BATCH,
        settings.CHAT_QUEUE_SIZE,
        settings.CHAT_ENGINE_MODE,
        settings.CHAT_ENGINE_THREADS,
        settings.CHAT_STEP_TOKENS,
        settings.CHAT_REMOTE_URL,
        settings.CHAT_REMOTE_TOKEN,
        settings.CHAT_REMOTE_API,
        settings.CHAT_REMOTE_MODEL,
        settings.CHAT_REMOTE_TIMEOUT_S,
        settings.CHAT_REMOTE_SAMPLING_EXTRAS,
        settings.SLM_DEVICE,
    )


def _build() -> Any:
    if settings.CHAT_BACKEND in ("remote", "openai"):
        return RemoteEngine(
            RemoteConfig(
                url=settings.CHAT_REMOTE_URL,
                token=settings.CHAT_REMOTE_TOKEN,
                timeout_s=float(settings.CHAT_REMOTE_TIMEOUT_S),
                max_concurrent=settings.CHAT_MAX_BATCH,
                queue_size=settings.CHAT_QUEUE_SIZE,
                max_prompt_chars=settings.CHAT_MAX_PROMPT_CHARS,
                # remote = TGI / HF Inference API; openai = /v1/completions or /v1/chat/completions
                api="tgi" if settings.CHAT_BACKEND == "remote" else settings.CHAT_REMOTE_API,
                model=settings.CHAT_REMOTE_MODEL,
                sampling_extras=settings.CHAT_REMOTE_SAMPLING_EXTRAS,
            )
        )
    if settings.CHAT_BACKEND != "local":
        raise ModelUnavailable(f"unknown CHAT_BACKEND {settings.CHAT_BACKEND!r} (local, remote or openai)")
    cfg = EngineConfig(
        model=settings.CHAT_MODEL,
        registry_root=str(settings.SLM_REGISTRY_DIR),
        precision=settings.CHAT_PRECISION,
        max_batch=settings.CHAT_MAX_BATCH,
        queue_size=settings.CHAT_QUEUE_SIZE,
        device=settings.SLM_DEVICE,
        num_threads=settings.CHAT_ENGINE_THREADS or None,
        step_tokens=settings.CHAT_STEP_TOKENS,
    )
    return Engine(cfg, mode=settings.CHAT_ENGINE_MODE)


def get_backend() -> Any:
    """The chat backend for the current settings (Engine, or RemoteEngine for CHAT_BACKEND remote/openai)."""
    global _backend, _key
    key = _settings_key()
    with _lock:
        if _backend is not None and (_key != key or _backend.closed):
            old, _backend = _backend, None
            old.close()
        if _backend is None:
            _backend = _build()
            _key = key
        return _backend


def warm() -> None:
    """Starts the local engine (its process loads the model) ahead of the first message; used when the
    chat page is rendered. Never raises: problems are reported to the first request."""
    if not settings.CHAT_ENGINE_WARM or settings.CHAT_BACKEND != "local":
        return
    try:
        backend = get_backend()
        if not backend.alive():
            backend.start()
    except Exception:  # pragma: no cover - reported on first use
        pass


def peek_backend() -> Any:
    """The backend if one was built, without building it."""
    return _backend


def shutdown() -> None:
    global _backend, _key
    with _lock:
        old, _backend, _key = _backend, None, None
    if old is not None:
        old.close()


atexit.register(shutdown)
