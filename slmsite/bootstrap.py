"""Default-model builders. Each app registers one in its `bootstrap.py` module:

    from slmsite.bootstrap import Builder, register
    register(Builder(name="chat", model_name="chat", build=build_default_chat, order=20))

`manage.py bootstrap_models` discovers these modules, skips builders whose model already has a live
version (idempotent), and runs the rest with a progress bar. A builder must work offline, register at
least one version and make one live.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from django.utils.module_loading import autodiscover_modules

from slm.registry import Registry

Progress = Callable[[str, float], None]  # (message, fraction done 0..1)


@dataclass(frozen=True)
class Builder:
    name: str
    model_name: str
    build: Callable[[Registry, Progress], None]
    order: int = 100
    description: str = ""


_BUILDERS: dict[str, Builder] = {}


def register(builder: Builder) -> Builder:
    _BUILDERS[builder.name] = builder
    return builder


def builders() -> list[Builder]:
    autodiscover_modules("bootstrap")
    return sorted(_BUILDERS.values(), key=lambda b: (b.order, b.name))
