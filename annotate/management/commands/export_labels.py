from __future__ import annotations

import shutil
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from annotate import jobs
from annotate.management.commands.import_items import _project
from annotate.models import Export


class Command(BaseCommand):
    help = "Exports a project's labels (jsonl, csv or hf = zipped save_to_disk) with annotator, time, agreement."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("project", help="project id or name")
        parser.add_argument("--format", dest="fmt", default="jsonl", choices=[c for c, _ in Export.Format.choices])
        parser.add_argument("--out", help="copy the export here")

    def handle(self, *args: Any, **opts: Any) -> None:
        project = _project(opts["project"])
        exp = Export.objects.create(project=project, fmt=opts["fmt"])
        try:
            result = jobs.export_job(exp.pk)
        except Exception as exc:
            raise CommandError(f"export failed: {exc}") from exc
        path = result["path"]
        if opts.get("out"):
            shutil.copy(path, opts["out"])
            path = opts["out"]
        self.stdout.write(f"{result['rows']} labels -> {path}")
