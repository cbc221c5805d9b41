from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from annotate import io, services
from annotate.models import Project


class Command(BaseCommand):
    help = "Imports a CSV/TSV/JSONL file or a Hugging Face save_to_disk directory into a project's pool."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("project", help="project id or name")
        parser.add_argument("path")
        parser.add_argument("--text-field", default="text")
        parser.add_argument("--label-field", default="label")

    def handle(self, *args: Any, **opts: Any) -> None:
        project = _project(opts["project"])
        path = Path(opts["path"])
        if not path.exists():
            raise CommandError(f"{path} does not exist")
        try:
            rows, _total = io.read_rows(path, opts["text_field"], opts["label_field"])
            report = services.items_add(project=project, rows=rows)
        except (ValueError, OSError) as exc:
            raise CommandError(str(exc)) from exc
        services.enqueue_refresh(project.pk)
        self.stdout.write(
            f"{report.n_input} rows: +{report.added} items, {report.duplicates} duplicates, {report.empty} empty, "
            f"{report.gold} gold, {report.unknown_labels} unknown labels"
        )


def _project(ref: str) -> Project:
    project = Project.objects.filter(pk=int(ref)).first() if ref.isdigit() else Project.objects.filter(name=ref).first()
    if project is None:
        raise CommandError(f"no project {ref!r}")
    return project
