"""slmsite.worker: what an RQ worker forks (work horse, scheduler) dies with it, and a job whose worker died
registers and promotes nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid

import psutil
import pytest

from slmsite import worker
from slmsite.registry import get_registry
from tests.stack import ROOT, pid_alive, stack_env, wait_until

WORKER = """
import django
django.setup()
import django_rq
from rq import Queue
from slmsite.worker import Worker
conn = django_rq.get_connection("default")
Worker([Queue(%r, connection=conn)], connection=conn).work(with_scheduler=True)
"""


def start_worker(queue: str, env: dict[str, str], log) -> subprocess.Popen[bytes]:  # type: ignore[no-untyped-def]
    """Our worker class with its scheduler, as `manage.py rqworker ... --with-scheduler` runs it."""
    return subprocess.Popen(
        [sys.executable, "-c", WORKER % queue],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def test_the_configured_worker_class_is_ours():
    from django_rq.workers import get_worker_class

    assert get_worker_class() is worker.Worker


def test_kill_9_of_the_worker_takes_its_work_horse_and_scheduler_with_it(tmp_path):
    import django_rq
    from rq import Queue

    queue = f"test-horse-{uuid.uuid4().hex[:8]}"
    pidfile, release = tmp_path / "horse.pid", tmp_path / "release"
    Queue(queue, connection=django_rq.get_connection("default")).enqueue(
        "tests.slmsite.worker_jobs.hold_job", str(pidfile), str(release), job_timeout=120
    )
    with open(tmp_path / "worker.log", "wb") as log:
        proc = start_worker(queue, stack_env(), log)
        try:
            wait_until(lambda: pidfile.exists() and pidfile.read_text(), 60, "the work horse to start the job")
            horse = int(pidfile.read_text())
            children = {p.pid for p in psutil.Process(proc.pid).children()}
            assert horse in children and len(children) == 2, children  # the horse and the scheduler
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            for pid in children:
                wait_until(lambda pid=pid: not pid_alive(pid), 15, f"child {pid} of the killed worker to die")
        finally:
            release.write_text("go")
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)


def test_a_job_whose_worker_died_cannot_register_or_promote(registry, monkeypatch):
    reg = get_registry()
    reg.create_version("m", lambda p: (p / "w.txt").write_text("x"), {})
    monkeypatch.setattr(worker, "_parent_pid", os.getppid() + 10_000_000)  # "forked by a process now gone"
    with pytest.raises(worker.WorkerGone):
        reg.create_version("m", lambda p: (p / "w.txt").write_text("y"), {})
    with pytest.raises(worker.WorkerGone):
        reg.promote("m", "v0001")
    assert [v.version for v in reg.versions("m")] == ["v0001"]
    assert reg.live_version("m") is None
    assert not [p for p in (registry.root / "m").iterdir() if p.name.startswith(".tmp-")]


def test_ensure_worker_alive_is_quiet_outside_a_work_horse_and_under_a_live_worker(monkeypatch):
    worker.ensure_worker_alive()  # not forked by a worker
    monkeypatch.setattr(worker, "_parent_pid", os.getppid())
    worker.ensure_worker_alive()
