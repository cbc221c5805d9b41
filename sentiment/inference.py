"""The sentiment app's classifier service: one `slm.classify.serving.InferenceService` per (registry,
model name) per process, configured from settings (batch size, wait, version cache). The serving core
(micro-batching, LRU of pinned versions, hot swap) lives in `slm.classify.serving`."""

from __future__ import annotations

import os
import threading

from django.conf import settings

from slm.classify.base import load_classifier
from slm.classify.serving import (
    InferenceError,
    InferenceService,
    MicroBatcher,
    ModelUnavailable,
    PredictResult,
    UnknownVersion,
    default_loader,
)
from slmsite.registry import get_registry

__all__ = [
    "InferenceError",
    "InferenceService",
    "MicroBatcher",
    "ModelUnavailable",
    "PredictResult",
    "UnknownVersion",
    "default_loader",
    "get_service",
    "load_classifier",
    "reset_services",
]

# ---------------------------------------------------------------------------------------------- per process
_services: dict[tuple[str, str, int], InferenceService] = {}
_services_lock = threading.Lock()


def get_service(name: str | None = None) -> InferenceService:
    """The process-wide service for the configured registry and model name (settings.SENTIMENT_MODEL)."""
    registry = get_registry()
    name = name or settings.SENTIMENT_MODEL
    key = (str(registry.root), name, os.getpid())
    service = _services.get(key)
    if service is not None:
        return service
    with _services_lock:
        service = _services.get(key)
        if service is None:
            service = InferenceService(
                registry,
                name,
                loader=default_loader,
                batch_size=settings.SENTIMENT_BATCH_SIZE,
                wait_ms=settings.SENTIMENT_BATCH_WAIT_MS,
                cache_size=settings.SENTIMENT_VERSION_CACHE,
            )
            _services[key] = service
        return service


def reset_services() -> None:
    """Stops and forgets every service of this process (tests)."""
    with _services_lock:
        for service in _services.values():
            service.close()
        _services.clear()
