"""`manage.py serve` keeps the stack up: a worker killed with -9 is restarted (the site never went down), and
stopping serve stops every child."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.request import urlopen

import psutil
import pytest

from tests.stack import ROOT, free_port, pid_alive, stack_env, wait_until


def _health(url: str) -> dict | None:  # type: ignore[type-arg]
    try:
        with urlopen(url + "/healthz", timeout=2) as r:
            return json.loads(r.read())
    except Exception:
        return None


def _status(url: str) -> int | None:
    try:
        with urlopen(url, timeout=5) as r:
            return int(r.status)
    except Exception:
        return None


def _gpu_workers(url: str) -> list[int]:
    body = _health(url) or {}
    return [w["pid"] for w in body.get("worker", {}).get("workers", []) if "gpu" in w["queues"]]


@contextmanager
def _serve(tmp_path: Path, *args: str, **env: str) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """`manage.py serve` on a free port with its own var dir and maintenance queue: (url, process); killed on
    the way out if a test left it running."""
    port = free_port()
    full_env = stack_env(
        SLM_VAR_DIR=str(tmp_path / "var"),
        SLM_MAINTENANCE_QUEUE=f"test-maint-{uuid.uuid4().hex[:8]}",
        CHAT_ENGINE_MODE="thread",
        **env,
    )
    with open(tmp_path / "serve.log", "wb") as log:
        serve = subprocess.Popen(
            [sys.executable, "manage.py", "serve", *args, "--port", str(port)],
            cwd=ROOT,
            env=full_env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            yield f"http://127.0.0.1:{port}", serve
        finally:
            if serve.poll() is None:
                serve.kill()
                serve.wait(10)


@pytest.mark.django_db(transaction=True)
def test_serve_restarts_a_killed_worker_and_stops_all_children(tmp_path):
    with _serve(tmp_path, "--no-bootstrap", SLM_RESTART_BACKOFF_S="0.2") as (url, serve):
        wait_until(lambda: _gpu_workers(url), 300, "serve to come up with a worker")
        (first,) = _gpu_workers(url)
        children = {p.pid for p in psutil.Process(serve.pid).children()}
        assert first in children and len(children) == 4  # worker, cron, maintenance worker, daphne
        # past the start-up window (a child dying at once is a configuration error that stops the stack)
        wait_until(lambda: time.time() - psutil.Process(first).create_time() > 3.5, 10, "the worker to settle")
        psutil.Process(first).send_signal(signal.SIGKILL)
        wait_until(lambda: (pids := _gpu_workers(url)) and first not in pids, 180, "a restarted worker")
        assert serve.poll() is None  # the stack did not stop
        assert _health(url)["status"] == "ok"
        children = {p.pid for p in psutil.Process(serve.pid).children()}
        assert len(children) == 4 and first not in children
        serve.send_signal(signal.SIGTERM)
        serve.wait(60)
        for pid in children:
            wait_until(lambda pid=pid: not pid_alive(pid), 20, f"child {pid} to stop")
    out = (tmp_path / "serve.log").read_text(errors="replace")
    assert "died with signal SIGKILL; restarting it" in out


@pytest.mark.django_db(transaction=True)
def _cmdline(p: psutil.Process) -> str:
    try:
        return " ".join(p.cmdline())
    except psutil.Error:  # a child that just ended (a zombie until serve reaps it)
        return ""


def test_a_first_run_answers_at_once_while_the_default_models_build(tmp_path):
    """#13.8: on a fresh machine the default models take minutes to build; the site answers meanwhile and
    /healthz says what is building. Stopping serve mid-build stops the builder too (the status says so)."""
    started = time.monotonic()
    with _serve(tmp_path, "--no-worker") as (url, serve):
        # the site answers within a minute (it used to wait minutes for the models)...
        wait_until(lambda: _status(url + "/accounts/login/") == 200, 60, "the login page")
        assert time.monotonic() - started < 60
        # ...while the builder runs beside it (it imports torch first: slower on a loaded machine)
        wait_until(lambda: ((_health(url) or {}).get("bootstrap") or {}).get("state") == "running", 180, "building")
        body = _health(url)
        assert body is not None and body["status"] == "ok"
        models = {m["model"]: m for m in body["bootstrap"]["models"]}
        assert {"chat", "sentiment"} <= set(models) and not any(m["live"] for m in models.values())
        builder = [p for p in psutil.Process(serve.pid).children() if "bootstrap_models" in _cmdline(p)]
        assert len(builder) == 1
        serve.send_signal(signal.SIGTERM)
        serve.wait(60)
        wait_until(lambda: not pid_alive(builder[0].pid), 20, "the builder to stop")
    out = (tmp_path / "serve.log").read_text(errors="replace")
    assert "slm is up" in out and "default models building in the background (chat, sentiment)" in out
