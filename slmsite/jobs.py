"""The one place jobs are put on the RQ queues, and tiny jobs used to check the queue end to end.

Every app enqueues through `enqueue_or_fail`: a job goes to the `gpu` queue (training, simulations) or the
`default` queue (imports, exports, pool refreshes, big predictions), named by the settings SLM_GPU_QUEUE
and SLM_DEFAULT_QUEUE. When Redis is down the job is never run in-process: `on_fail` records the message
on the caller's row (a run or a task is marked failed) and None is returned.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import django_rq
from django.conf import settings
from rq import Queue, Retry
from rq.exceptions import NoSuchJobError
from rq.job import Job

log = logging.getLogger(__name__)

KINDS = ("gpu", "default")


def queue_name(kind: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"unknown queue kind {kind!r}; use one of {KINDS}")
    return str(settings.SLM_GPU_QUEUE if kind == "gpu" else settings.SLM_DEFAULT_QUEUE)


def get_queue(kind: str) -> Queue:
    """The RQ queue for "gpu" or "default" jobs (the connection and default timeout of RQ_QUEUES[kind])."""
    config = settings.RQ_QUEUES.get(kind, {})
    return Queue(
        queue_name(kind),
        connection=django_rq.get_connection(kind),
        default_timeout=config.get("DEFAULT_TIMEOUT"),
    )


def enqueue_or_fail(
    kind: str,
    func: str | Callable[..., Any],
    *args: Any,
    on_fail: Callable[[str], None],
    job_id: str | None = None,
    timeout: int | None = None,
    retries: int = 0,
) -> Job | None:
    """Enqueues `func(*args)` (a callable or its dotted path) on the `kind` queue and returns the job; when
    the queue is unreachable calls `on_fail(message)` and returns None (the job never runs in-process).
    `retries`: RQ re-queues the job at once after an exception, this many times."""
    kwargs: dict[str, Any] = {}
    if job_id:
        kwargs["job_id"] = job_id
    if timeout:
        kwargs["job_timeout"] = timeout
    if retries:
        kwargs["retry"] = Retry(max=retries)
    try:
        return get_queue(kind).enqueue(func, *args, **kwargs)
    except Exception as exc:  # Redis down or refusing: say so on the caller's row
        message = f"could not queue the job: the job queue is unavailable ({type(exc).__name__}: {exc})"
        log.warning("%s (%s%r)", message, getattr(func, "__name__", func), args)
        on_fail(message)
        return None


def job_state(job_id: str) -> str | None:
    """The RQ status of a job ('queued', 'started', 'finished', 'failed', ...), 'missing', or None when
    Redis cannot be asked."""
    try:
        job = Job.fetch(job_id, connection=django_rq.get_connection("gpu"))
    except NoSuchJobError:
        return "missing"
    except Exception:  # Redis unreachable: no verdict
        return None
    status = job.get_status(refresh=True)
    return str(getattr(status, "value", status)) if status is not None else "missing"


def echo_job(value: int) -> dict[str, int]:
    """A tiny job for health checks and tests of the queue itself."""
    return {"value": value, "double": value * 2}
