"""RQ jobs for annotate: each takes an id, calls one service and records the status. Services enqueue
them by dotted path (slmsite.jobs.enqueue_or_fail) after their transaction commits.

retrain_job runs on the `gpu` queue (annotate.retrain does the work; RQ retries a crashed attempt, never
a TrainingError); simulations too; imports, exports and pool refreshes go to `default`.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable
from typing import Any

from django.db import close_old_connections, connection
from rq import get_current_job

from annotate import pool, retrain, services
from annotate.models import BackgroundTask, Export, ImportJob, Simulation

log = logging.getLogger(__name__)


def _fresh_db() -> None:
    """Drops a broken/stale DB connection before a job (not inside a test's transaction)."""
    if not connection.in_atomic_block:
        close_old_connections()


def retrain_job(run_id: int) -> dict[str, Any]:
    _fresh_db()
    job = get_current_job()
    run = retrain.run_start(run_id)
    if run is None:
        return {"skipped": "run is no longer active"}
    try:
        return retrain.run_execute(run, worker=getattr(job, "worker_name", None) or "")
    except Exception as exc:
        retrying = bool(getattr(job, "retries_left", 0)) and retrain.retryable(exc)
        log.warning("retrain run %s failed: %s\n%s", run_id, exc, traceback.format_exc())
        retrain.run_failed(run_id, exc, retrying=retrying)
        if job is not None and not retrying:
            job.retries_left = 0
        raise


def reap_stale_runs_job() -> dict[str, int]:
    """Scheduled (annotate/cron.py, every ANNOTATE_REAP_INTERVAL_S): fails runs whose worker died, whether
    or not anyone looks at them (reads never write), and queues again the pool refreshes that could not be
    queued."""
    _fresh_db()
    out = {"reaped": services.run_reap_stale()}
    requeued = services.pool_refresh_requeue()
    if requeued:
        out["requeued_refreshes"] = requeued
    return out


def refresh_pool_job(project_id: int) -> dict[str, Any]:
    _fresh_db()
    return pool.pool_refresh(project_id=project_id)


def _task(model: type[BackgroundTask], pk: int, work: Callable[[Callable[[float], None]], dict[str, Any]]) -> Any:
    """Runs `work(progress)` for a BackgroundTask row, recording running / succeeded / failed on it."""
    _fresh_db()
    rows = model.objects.filter(pk=pk)
    rows.update(status=BackgroundTask.Status.RUNNING)

    def progress(fraction: float) -> None:
        rows.update(progress=max(0.0, min(1.0, float(fraction))))

    try:
        result = work(progress)
    except Exception as exc:
        rows.update(status=BackgroundTask.Status.FAILED, error=f"{type(exc).__name__}: {exc}")
        raise
    rows.update(status=BackgroundTask.Status.SUCCEEDED, progress=1.0)
    return result


def import_job(import_id: int) -> dict[str, Any]:
    return _task(ImportJob, import_id, lambda progress: services.import_run(import_id=import_id, progress=progress))


def export_job(export_id: int) -> dict[str, Any]:
    return _task(Export, export_id, lambda progress: services.export_run(export_id=export_id, progress=progress))


def simulation_job(sim_id: int) -> dict[str, Any]:
    return _task(Simulation, sim_id, lambda progress: services.simulation_run(sim_id=sim_id, progress=progress))
