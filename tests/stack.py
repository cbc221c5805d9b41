"""Helpers for tests that start real processes (daphne, RQ workers, `serve`) against the test database."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


def listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def stop(*procs: subprocess.Popen[bytes], timeout: float = 30) -> None:
    """SIGTERM, then SIGKILL for what is still running after `timeout` seconds."""
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(10)


def pid_alive(pid: int) -> bool:
    """True while `pid` runs (a zombie counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def db_env() -> dict[str, str]:
    """Environment that points a subprocess at the test database (SQLite file or PostgreSQL)."""
    from django.db import connection

    sd = connection.settings_dict
    if connection.vendor == "sqlite":
        return {"SQLITE_PATH": str(sd["NAME"])}
    pw = f":{sd['PASSWORD']}" if sd.get("PASSWORD") else ""
    host = sd.get("HOST") or "127.0.0.1"
    return {"DATABASE_URL": f"postgres://{sd.get('USER') or ''}{pw}@{host}:{sd.get('PORT') or 5432}/{sd['NAME']}"}


def stack_env(**extra: str) -> dict[str, str]:
    """Environment for a subprocess of the stack: test settings, the test DB, Redis and registry."""
    from django.conf import settings

    return {
        **os.environ,
        **db_env(),
        "DJANGO_SETTINGS_MODULE": "slmsite.settings.test",
        "REDIS_URL": settings.REDIS_URL,
        "SLM_TEST_VAR_DIR": str(settings.TEST_VAR_DIR),
        "SLM_REGISTRY_DIR": str(settings.SLM_REGISTRY_DIR),
        "SLM_TEST_REGISTRY_DIR": str(settings.SLM_REGISTRY_DIR),  # the test's registry (e.g. the fixture's)
        "PYTHONUNBUFFERED": "1",
        **extra,
    }
