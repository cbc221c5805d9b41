"""The process-wide chat backends, built from settings and the chat models offered (chat.selectors).

One local engine (slm.engine) per server process serves every local model of the picker (it keeps
several loaded, up to CHAT_MODELS_MEMORY_MB, least recently used unloaded first); each remote model
(an OpenAI-compatible server, or TGI / the HF Inference API) gets its own RemoteEngine. A backend is
handed out for one chat model (`get_backend(entry)`) with the engine's face: prepare / submit / cancel /
stats. Everything starts lazily on first use (the local engine as a spawned child process in the default
"process" mode) and is rebuilt when the settings or the model entry it was built from change (tests point
it at a temporary registry; an admin edits a remote model's URL).
"""

from __future__ import annotations

import atexit
import threading
from typing import Any

from django.conf import settings

from chat.selectors import ChatModelEntry, settings_model
from slm.engine import Engine, EngineConfig, ModelUnavailable
from slm.remote import RemoteConfig, RemoteEngine

_lock = threading.Lock()
_engine: Engine | None = None
_engine_key: tuple[Any, ...] | None = None
_remotes: dict[str, tuple[tuple[Any, ...], RemoteEngine]] = {}


def _local_key() -> tuple[Any, ...]:
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
        settings.CHAT_PREFILL_SHARE,
        settings.CHAT_MODELS_MEMORY_MB,
        settings.SLM_DEVICE,
    )


def _remote_key(entry: ChatModelEntry) -> tuple[Any, ...]:
    return (
        entry.backend,
        entry.url,
        entry.token,
        entry.api,
        entry.source,
        settings.CHAT_REMOTE_TIMEOUT_S,
        settings.CHAT_REMOTE_SAMPLING_EXTRAS,
        settings.CHAT_MAX_BATCH,
        settings.CHAT_QUEUE_SIZE,
        settings.CHAT_MAX_PROMPT_CHARS,
    )


def _build_local() -> Engine:
    cfg = EngineConfig(
        model=settings.CHAT_MODEL,
        registry_root=str(settings.SLM_REGISTRY_DIR),
        precision=settings.CHAT_PRECISION,
        max_batch=settings.CHAT_MAX_BATCH,
        queue_size=settings.CHAT_QUEUE_SIZE,
        device=settings.SLM_DEVICE,
        num_threads=settings.CHAT_ENGINE_THREADS or None,
        step_tokens=settings.CHAT_STEP_TOKENS,
        prefill_share=settings.CHAT_PREFILL_SHARE,
        max_model_bytes=max(0, settings.CHAT_MODELS_MEMORY_MB) * 2**20,
        preload=settings.CHAT_BACKEND == "local",  # CHAT_MODEL is the default model only with the local backend
    )
    return Engine(cfg, mode=settings.CHAT_ENGINE_MODE)


def _build_remote(entry: ChatModelEntry) -> RemoteEngine:
    return RemoteEngine(
        RemoteConfig(
            url=entry.url,
            token=entry.token,
            timeout_s=float(settings.CHAT_REMOTE_TIMEOUT_S),
            max_concurrent=settings.CHAT_MAX_BATCH,
            queue_size=settings.CHAT_QUEUE_SIZE,
            max_prompt_chars=settings.CHAT_MAX_PROMPT_CHARS,
            api=entry.api,  # tgi = TGI / HF Inference API; completions / chat = an OpenAI-compatible server
            model=entry.source,
            sampling_extras=settings.CHAT_REMOTE_SAMPLING_EXTRAS,
        )
    )


def local_engine() -> Engine:
    """The process's local engine for the current settings (rebuilt when they changed)."""
    global _engine, _engine_key
    key = _local_key()
    with _lock:
        if _engine is not None and (_engine_key != key or _engine.closed):
            old, _engine = _engine, None
            old.close()
        if _engine is None:
            _engine = _build_local()
            _engine_key = key
        return _engine


def get_backend(entry: ChatModelEntry | None = None) -> Any:
    """The backend that serves chat model `entry` (default: the model the settings configure): the local
    engine bound to its source, or the RemoteEngine of its server."""
    entry = entry or settings_model()
    if entry.local:
        return local_engine().bind(entry.source)
    if entry.backend not in ("openai", "remote"):
        raise ModelUnavailable(f"unknown chat backend {entry.backend!r} (local, remote or openai)")
    key = _remote_key(entry)
    with _lock:
        held = _remotes.get(entry.name)
        if held is not None and (held[0] != key or held[1].closed):
            del _remotes[entry.name]
            if not held[1].active_ids():  # its running streams (if any) finish on the old settings
                held[1].close()
            held = None
        if held is None:
            held = (key, _build_remote(entry))
            _remotes[entry.name] = held
        return held[1]


def warm() -> None:
    """Starts the local engine (its process loads the default model) ahead of the first message; used
    when the chat page is rendered. Never raises: problems are reported to the first request."""
    if not settings.CHAT_ENGINE_WARM or settings.CHAT_BACKEND != "local":
        return
    try:
        engine = local_engine()
        if not engine.alive():
            engine.start()
    except Exception:  # pragma: no cover - reported on first use
        pass


def peek_backend() -> Engine | None:
    """The local engine if one was built, without building it."""
    return _engine


def shutdown() -> None:
    global _engine, _engine_key
    with _lock:
        old, _engine, _engine_key = _engine, None, None
        remotes = [engine for _, engine in _remotes.values()]
        _remotes.clear()
    if old is not None:
        old.close()
    for remote in remotes:
        remote.close()


atexit.register(shutdown)
