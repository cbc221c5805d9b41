"""PostgreSQL under ASGI: daphne's connections stay within the configured pool bound under concurrent
requests and after them (before: every request thread kept its own connection for 60 s, 86 idle ones after
a load test, then "FATAL: sorry, too many clients already")."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from urllib.error import HTTPError
from urllib.request import urlopen

import pytest
from django.db import connection

from tests.stack import ROOT, free_port, stack_env, stop, wait_until

BOUND = 3


def _count(app: str) -> int:
    with connection.cursor() as cur:
        cur.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", [app])
        return int(cur.fetchone()[0])


def _get(url: str) -> int:
    try:
        with urlopen(url, timeout=60) as r:
            r.read()
            return r.status
    except HTTPError as exc:
        return exc.code
    except OSError:  # not listening yet
        return 0


@pytest.mark.django_db
def test_concurrent_asgi_requests_stay_within_the_pool_bound(tmp_path):
    if connection.vendor != "postgresql":
        pytest.skip("PostgreSQL pass only (DATABASE_URL)")
    app = f"slm-pool-{uuid.uuid4().hex[:8]}"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = stack_env(DB_POOL_MAX_SIZE=str(BOUND), DB_POOL_MIN_SIZE="1", DB_APPLICATION_NAME=app)
    log = open(tmp_path / "daphne.log", "wb")
    daphne = subprocess.Popen(
        [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "slmsite.asgi:application"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    peak = 0
    done = threading.Event()

    def watch() -> None:
        nonlocal peak
        while not done.wait(0.02):
            peak = max(peak, _count(app))

    try:
        wait_until(lambda: _get(url + "/healthz") == 200, 60, "daphne to answer")
        watcher = threading.Thread(target=watch)
        watcher.start()
        try:
            with ThreadPoolExecutor(16) as pool:
                codes = list(pool.map(_get, [url + "/healthz"] * 160))
        finally:
            done.set()
            watcher.join()
        assert codes.count(200) == len(codes), sorted(set(codes))
        assert 1 <= peak <= BOUND, peak
        assert _count(app) <= BOUND  # and no idle per-thread connections left behind
        with urlopen(url + "/healthz", timeout=10) as r:
            pool_use = json.loads(r.read())["database"]["pool"]
        assert pool_use["max"] == BOUND and pool_use["open"] <= BOUND and pool_use["waiting"] == 0
    finally:
        stop(daphne)
        log.close()
