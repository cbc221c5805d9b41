"""Dead runs are reaped by a scheduled job (RQ's cron scheduler + the maintenance worker), whether or not
anyone looks; reads (pages, the API) never write."""

from __future__ import annotations

import subprocess
import sys
import uuid
from datetime import timedelta

import pytest
from django.utils import timezone

from annotate import jobs
from annotate.models import TrainingRun
from tests.annotate.conftest import make_project
from tests.stack import ROOT, stack_env, stop, wait_until


def _dead_run(project) -> TrainingRun:  # type: ignore[no-untyped-def]
    long_ago = timezone.now() - timedelta(hours=1)
    return TrainingRun.objects.create(
        project=project, status="running", started_at=long_ago, heartbeat_at=long_ago, created_at=long_ago
    )


def test_the_reaper_is_registered_as_a_periodic_job_on_the_maintenance_queue(settings):
    from django_rq.cron import DjangoCronScheduler

    scheduler = DjangoCronScheduler()
    scheduler.load_config_from_file("slmsite.cron")
    (job,) = [j for j in scheduler.get_jobs() if j.func is jobs.reap_stale_runs_job]
    assert job.queue_name == settings.SLM_MAINTENANCE_QUEUE
    assert job.interval == settings.ANNOTATE_REAP_INTERVAL_S <= settings.ANNOTATE_RUN_STALE_S


@pytest.mark.django_db
def test_reads_never_write_a_dead_run_stays_as_it_is_until_the_reaper_runs(client, admin_user, password):
    project = make_project()
    run = _dead_run(project)
    client.login(username=admin_user.username, password=password)
    for url in (f"/annotate/runs/{run.pk}/", "/annotate/runs/", f"/annotate/p/{project.pk}/", f"/api/runs/{run.pk}"):
        assert client.get(url).status_code == 200, url
        assert TrainingRun.objects.get(pk=run.pk).status == "running", url
    assert jobs.reap_stale_runs_job() == {"reaped": 1}
    run.refresh_from_db()
    assert run.status == "failed" and "stopped responding" in run.error


@pytest.mark.django_db(transaction=True)
def test_a_dead_run_is_failed_by_the_scheduled_job_with_nobody_looking(tmp_path):
    project = make_project()
    run = _dead_run(project)
    env = stack_env(
        SLM_MAINTENANCE_QUEUE=f"test-maint-{uuid.uuid4().hex[:8]}",
        ANNOTATE_REAP_INTERVAL_S="1",
        ANNOTATE_RUN_STALE_S="2",
    )
    procs = []
    with open(tmp_path / "cron.log", "wb") as log:
        try:
            for argv in (["rqcron", "slmsite.cron"], ["rqworker", env["SLM_MAINTENANCE_QUEUE"]]):
                procs.append(
                    subprocess.Popen(
                        [sys.executable, "manage.py", *argv], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
                    )
                )
            wait_until(lambda: TrainingRun.objects.get(pk=run.pk).status == "failed", 60, "the scheduled reaper to run")
        finally:
            stop(*procs)
    assert "live model is unchanged" in TrainingRun.objects.get(pk=run.pk).error


@pytest.mark.django_db
def test_a_pool_refresh_that_could_not_be_queued_is_queued_again_by_the_maintenance_job(monkeypatch):
    """The demo project made by `bootstrap_models --demo` with no queue running (or Redis down for a moment)
    must not keep a never-scored pool and a red error forever."""
    from annotate import services
    from slmsite import jobs as slm_jobs

    project = make_project()
    queued: list[tuple[str, tuple[object, ...]]] = []

    class DownQueue:
        def enqueue(self, func, *args, **kwargs):  # type: ignore[no-untyped-def]
            raise ConnectionError("Error 2 connecting to /tmp/gone/redis.sock")

    class UpQueue:
        def enqueue(self, func, *args, **kwargs):  # type: ignore[no-untyped-def]
            queued.append((func, args))
            return object()

    monkeypatch.setattr(slm_jobs, "get_queue", lambda kind: DownQueue())
    services.enqueue_refresh(project.pk)
    project.refresh_from_db()
    assert project.pool_error.startswith("the pool was not re-scored: could not queue the job")
    assert project.pool_error.endswith("it is queued again once the job queue answers")
    assert jobs.reap_stale_runs_job() == {"reaped": 0, "requeued_refreshes": 1}  # still down: error back
    project.refresh_from_db()
    assert project.pool_error.startswith("the pool was not re-scored") and queued == []
    monkeypatch.setattr(slm_jobs, "get_queue", lambda kind: UpQueue())
    assert jobs.reap_stale_runs_job() == {"reaped": 0, "requeued_refreshes": 1}
    project.refresh_from_db()
    assert project.pool_error == "" and queued == [("annotate.jobs.refresh_pool_job", (project.pk,))]
    assert jobs.reap_stale_runs_job() == {"reaped": 0}  # nothing left to do
