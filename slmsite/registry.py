"""Django-side access to the slm model registry configured in settings."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from django.conf import settings

from slm.registry import Registry
from slmsite.worker import ensure_worker_alive


@lru_cache(maxsize=8)
def _registry(root: str) -> Registry:
    # In an RQ work horse whose worker has died, nothing is registered or promoted (WorkerGone).
    return Registry(Path(root), before_write=ensure_worker_alive)


def get_registry() -> Registry:
    return _registry(str(settings.SLM_REGISTRY_DIR))
