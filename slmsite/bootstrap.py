"""Default-model builders. Each app registers one in its `bootstrap.py` module:

    from slmsite.bootstrap import Builder, register
    register(Builder(name="chat", model_name="chat", build=build_default_chat, order=20))

`manage.py bootstrap_models` discovers these modules, skips builders whose model already has a live
version (idempotent), and runs the rest with a progress bar. A builder must work offline, register at
least one version and make one live.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


# ------------------------------------------------------------------------------------------ status
# `bootstrap_models` writes its progress to <registry>/.bootstrap-status.json (atomically, a few times a
# second at most); the pages read it to say "model building (43%)" until the model is live. The web
# process and the builder only share the registry directory, so this works across processes and hosts.
STATUS_FILE = ".bootstrap-status.json"
STATUS_EVERY_S = 0.5


def status_path(registry: Registry) -> Path:
    return Path(registry.root) / STATUS_FILE


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class StatusWriter:
    """The builder side: one JSON document with a row per selected builder."""

    def __init__(self, registry: Registry, selected: list[Builder]) -> None:
        self.path = status_path(registry)
        self._last = 0.0
        self.doc: dict[str, Any] = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.time(),
            "updated": time.time(),
            "state": "running",
            "builders": [
                {"name": b.name, "model": b.model_name, "state": "waiting", "fraction": 0.0, "message": "", "error": ""}
                for b in selected
            ],
        }
        self.write(force=True)

    def _row(self, name: str) -> dict[str, Any]:
        return next(r for r in self.doc["builders"] if r["name"] == name)

    def update(self, name: str, *, force: bool = False, **fields: Any) -> None:
        row = self._row(name)
        if "fraction" in fields:  # throttled, but every 5% step is written (a fast stage is still seen)
            force = force or int(20 * float(fields["fraction"])) != int(20 * float(row.get("fraction") or 0.0))
        row.update(fields)
        self.write(force=force)

    def finish(self, state: str) -> None:
        self.doc["state"] = state
        self.write(force=True)

    def write(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < STATUS_EVERY_S:
            return
        self._last = now
        self.doc["updated"] = time.time()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.doc))
        os.replace(tmp, self.path)


def read_status(registry: Registry) -> dict[str, Any] | None:
    """The last status written, with "running" turned into "stopped" when the builder process on this host
    is gone (killed mid-build); None when no bootstrap ever ran here."""
    try:
        doc = json.loads(status_path(registry).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("builders"), list):
        return None
    if doc.get("state") == "running" and doc.get("host") == socket.gethostname():
        if not _pid_alive(int(doc.get("pid") or 0)):
            doc["state"] = "stopped"
    return doc


def building(registry: Registry, model_name: str) -> dict[str, Any] | None:
    """{"percent", "message", "state"} while a bootstrap is building `model_name` and it has no live
    version yet (state "waiting" = queued behind another model, "running"); None otherwise. A build that
    failed or stopped is reported once as such ("failed"/"stopped") so the page can say so."""
    if registry.live_version(model_name):
        return None
    doc = read_status(registry)
    if doc is None:
        return None
    row = next((r for r in doc["builders"] if r.get("model") == model_name), None)
    if row is None or row.get("state") in ("done", "skipped"):
        return None
    state = str(row.get("state"))
    if doc.get("state") in ("stopped", "failed") and state in ("waiting", "running"):
        state = str(doc["state"])
    return {
        "name": row.get("name"),
        "model": model_name,
        "state": state,
        "percent": int(100 * float(row.get("fraction") or 0.0)),
        "message": str(row.get("message") or ""),
        "error": str(row.get("error") or ""),
    }


def overview(registry: Registry) -> list[dict[str, Any]]:
    """Every builder of the last bootstrap with its state and progress (the home page's list)."""
    doc = read_status(registry)
    if doc is None:
        return []
    rows = []
    for row in doc["builders"]:
        state = str(row.get("state"))
        if doc.get("state") in ("stopped", "failed") and state in ("waiting", "running"):
            state = str(doc["state"])
        live = registry.live_version(str(row.get("model")))
        rows.append({**row, "state": state, "percent": int(100 * float(row.get("fraction") or 0.0)), "live": live})
    return rows
