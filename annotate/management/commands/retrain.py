from __future__ import annotations

import time
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from annotate import services
from annotate.management.commands.import_items import _project
from annotate.models import TrainingRun


class Command(BaseCommand):
    help = "Queues a retrain of a project's model on the gpu queue (one per project); --wait follows it."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("project", help="project id or name")
        parser.add_argument("--wait", action="store_true", help="wait for the run to finish")
        parser.add_argument("--timeout", type=float, default=3600)

    def handle(self, *args: Any, **opts: Any) -> None:
        project = _project(opts["project"])
        run, created = services.run_trigger(project=project, trigger="command")
        self.stdout.write(f"run #{run.pk} {'queued' if created else 'already ' + run.status}")
        if not opts["wait"]:
            return
        deadline = time.monotonic() + opts["timeout"]
        last = ""
        while time.monotonic() < deadline:
            services.run_reap_stale(project=project)
            run = TrainingRun.objects.get(pk=run.pk)
            line = f"{run.status} {100 * run.progress:.0f}%"
            if line != last:
                self.stdout.write(line)
                last = line
            if not run.is_active:
                if run.status == "failed":
                    raise CommandError(run.error)
                self.stdout.write(f"version {run.version}: {run.decision} (gold metrics {run.metrics.get('gold', {})})")
                return
            time.sleep(1)
        raise CommandError("timed out waiting for the run")
