"""Periodic jobs: the config module of `manage.py rqcron slmsite.cron` (RQ's CronScheduler, started by
`serve`). Each installed app may have a `cron.py` whose CRON_JOBS lists keyword arguments of
`rq.cron.register` (func, queue_name, interval or cron, ...); the project collects them without importing any
app by name. The jobs land on SLM_MAINTENANCE_QUEUE, whose own worker is never busy with a training run."""

from __future__ import annotations

from importlib import import_module
from importlib.util import find_spec
from typing import Any

from django.apps import apps
from rq import cron


def app_cron_jobs() -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for app in apps.get_app_configs():
        name = f"{app.name}.cron"
        if find_spec(name) is not None:
            found.extend(getattr(import_module(name), "CRON_JOBS", []))
    return found


for _entry in app_cron_jobs():
    cron.register(**_entry)
