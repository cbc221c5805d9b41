from __future__ import annotations

import socket
from typing import Any

import psutil
from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.utils import timezone
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from slm.registry import RegistryError
from slmsite import bootstrap
from slmsite.registry import get_registry


@login_required
def home(request: HttpRequest) -> HttpResponse:
    reg = get_registry()
    chat_live = reg.live_version("chat")
    sentiment_live = reg.live_version(settings.SENTIMENT_MODEL)
    return render(
        request,
        "home.html",
        {
            "chat_model": f"chat@{chat_live}" if chat_live else None,
            "sentiment_model": f"{settings.SENTIMENT_MODEL}@{sentiment_live}" if sentiment_live else None,
            "builds": [bootstrap.building(reg, name) for name in ("chat", settings.SENTIMENT_MODEL)],
        },
    )


def _pool_use() -> dict[str, Any] | None:
    """This process's PostgreSQL connection pool: bound, open connections, idle ones, waiting requests."""
    pool = getattr(connection, "pool", None)
    if pool is None:
        return None
    stats = pool.get_stats()
    size, idle = stats.get("pool_size", 0), stats.get("pool_available", 0)
    return {
        "max": pool.max_size,
        "min": pool.min_size,
        "open": size,
        "in_use": size - idle,
        "idle": idle,
        "waiting": stats.get("requests_waiting", 0),
        "timeouts": stats.get("requests_errors", 0),
    }


@login_required
@require_GET
def building_status(request: HttpRequest, model: str) -> HttpResponse:
    """The "model building (x%)" banner of one default model (polled while it builds); once the model is
    live, a short "ready" note instead."""
    try:
        state = bootstrap.building(get_registry(), model)
    except RegistryError:
        state = None
    return render(request, "building.html", {"building": state, "ready": model if state is None else ""})


def _check_database() -> dict[str, Any]:
    try:
        with connection.cursor() as cur:
            cur.execute("SELECT 1")
            cur.fetchone()
        out: dict[str, Any] = {"ok": True, "vendor": connection.vendor}
        if (pool := _pool_use()) is not None:
            out["pool"] = pool
        return out
    except Exception as exc:  # pragma: no cover - exercised by the failure test
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}


def _worker_alive(worker: Any, host: str) -> bool:
    """A registered worker counts only while it lives: on this host its pid must exist (a `kill -9` leaves its
    registration behind until the TTL); elsewhere its heartbeat must be within its TTL."""
    if worker.hostname == host and worker.pid:
        try:
            return psutil.Process(worker.pid).status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False
    beat = worker.last_heartbeat
    return beat is not None and (timezone.now() - beat).total_seconds() <= worker.worker_ttl + 60


def _check_redis_and_workers() -> tuple[dict[str, Any], dict[str, Any]]:
    try:
        import django_rq
        from rq import Worker

        conn = django_rq.get_connection("default")
        conn.ping()
        host = socket.gethostname()
        workers = [w for w in Worker.all(connection=conn) if _worker_alive(w, host)]
        queues = {name: len(django_rq.get_queue(name)) for name in settings.RQ_QUEUES}
        info = [
            {"name": w.name, "queues": w.queue_names(), "state": w.get_state(), "pid": w.pid, "host": w.hostname}
            for w in workers
        ]
        return {"ok": True}, {"ok": bool(workers), "count": len(workers), "workers": info, "queued": queues}
    except Exception as exc:
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}, {"ok": False, "count": 0}


@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    """Liveness/readiness as JSON. 200 when the database and Redis answer, 503 otherwise."""
    database = _check_database()
    redis_status, worker = _check_redis_and_workers()
    reg = get_registry()
    models = {name: reg.live_version(name) for name in reg.names()}
    ok = database["ok"] and redis_status["ok"]
    body = {
        "status": "ok" if ok else "error",
        "database": database,
        "redis": redis_status,
        "worker": worker,
        "models": models,
        "bootstrap": _bootstrap_summary(reg),
    }
    return JsonResponse(body, status=200 if ok else 503)


def _bootstrap_summary(reg: Any) -> dict[str, Any] | None:
    """The default-model build `make run` starts beside the site: its state ("running", "done", "failed",
    "stopped") and each model's progress; None when none ever ran here."""
    doc = bootstrap.read_status(reg)
    if doc is None:
        return None
    return {
        "state": doc.get("state"),
        "models": [
            {"model": row["model"], "state": row["state"], "percent": row["percent"], "live": row["live"]}
            for row in bootstrap.overview(reg)
        ],
    }


@require_GET
def metrics(request: HttpRequest) -> HttpResponse:
    """Prometheus text exposition of this process's metrics."""
    return HttpResponse(generate_latest(), content_type=CONTENT_TYPE_LATEST)
