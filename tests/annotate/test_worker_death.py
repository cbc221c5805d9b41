"""A retrain whose RQ worker is killed (kill -9 of the worker, not its process group) stops before it
registers or promotes anything, and the scheduled reaper (not a page view) fails it."""

from __future__ import annotations

import signal

import psutil
import pytest
from django.conf import settings as dj_settings

from annotate import services
from annotate.models import TrainingRun
from tests.annotate.test_retrain import paused_run
from tests.slmsite.test_worker import start_worker
from tests.stack import pid_alive, stack_env, wait_until


@pytest.mark.django_db(transaction=True)
def test_a_retrain_whose_worker_is_killed_stops_before_registering(
    registry, admin_user, annotator_user, queues, settings, tmp_path
):
    """The training process of a killed worker stops: nothing registered, nothing promoted, and the run does
    not end 'succeeded' (before: the orphaned horse finished and promoted)."""
    live0, project, pause, run = paused_run(registry, admin_user, annotator_user, tmp_path)
    env = stack_env(
        SLM_GPU_QUEUE=queues["gpu"],
        SLM_DEFAULT_QUEUE=queues["default"],
        ANNOTATE_TRAIN_PAUSE_FILE=str(pause),
        ANNOTATE_RUN_HEARTBEAT_S="0.2",
    )
    with open(tmp_path / "worker.log", "wb") as log:
        proc = start_worker(queues["gpu"], env, log)
        try:
            wait_until(lambda: "waiting" in TrainingRun.objects.get(pk=run.pk).log, 60, "the worker to start the run")
            horses = [p.pid for p in psutil.Process(proc.pid).children()]
            proc.send_signal(signal.SIGKILL)  # the worker only, not its process group
            proc.wait(10)
            pause.unlink()  # a surviving horse would now train, register and promote
            for pid in horses:
                wait_until(lambda pid=pid: not pid_alive(pid), 15, "the training process to stop")
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
    assert TrainingRun.objects.get(pk=run.pk).status == "running"  # until the reaper sees the silence
    assert [v.version for v in registry.versions("sentiment")] == [live0.version]
    assert registry.live_version("sentiment") == live0.version
    settings.ANNOTATE_RUN_STALE_S = 0
    assert services.run_reap_stale(project=project) == 1
    assert TrainingRun.objects.get(pk=run.pk).status == "failed"
    assert dj_settings.RQ["WORKER_CLASS"] == "slmsite.worker.Worker"
