"""Annotate's periodic jobs (collected by slmsite/cron.py): runs whose worker died are failed by a scheduled
job, whether or not anyone looks at them (reads never write)."""

from django.conf import settings

from annotate import jobs

CRON_JOBS = [
    {
        "func": jobs.reap_stale_runs_job,
        "queue_name": settings.SLM_MAINTENANCE_QUEUE,
        "interval": settings.ANNOTATE_REAP_INTERVAL_S,
        "job_timeout": 300,
        "result_ttl": 600,
        "name": "annotate-reap-stale-runs",
    }
]
