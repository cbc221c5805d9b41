"""Django-side access to the slm model registry configured in settings."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from django.conf import settings

from slm.registry import Registry


@lru_cache(maxsize=8)
def _registry(root: str) -> Registry:
    return Registry(Path(root))


def get_registry() -> Registry:
    return _registry(str(settings.SLM_REGISTRY_DIR))
