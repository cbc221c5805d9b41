from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from slm.hub import HubError, pull_dataset


class Command(BaseCommand):
    help = (
        "Downloads a dataset from the Hugging Face hub (HF_ENDPOINT, HF_TOKEN) at a pinned revision and stores it "
        "under SLM_DATA_CACHE_DIR/hub/ with its provenance: pull_dataset <hub id> [--revision R]."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("repo_id", help="dataset id on the hub, e.g. lansinuote/ChnSentiCorp")
        parser.add_argument("--revision", default=None, help="branch, tag or commit (default: main)")

    def handle(self, *args: Any, **opts: Any) -> None:
        try:
            result = pull_dataset(opts["repo_id"], root=settings.SLM_DATA_CACHE_DIR, revision=opts["revision"])
        except HubError as exc:
            raise CommandError(str(exc)) from exc
        prov = result.provenance
        verb = "pulled" if result.created else "already pulled"
        self.stdout.write(
            f"{verb} dataset {prov['repo']} @ {prov['revision']} (commit {prov['commit']})\n"
            f"  license: {prov.get('license') or 'unknown (read the dataset card)'}\n"
            f"  path: {result.path / 'data'} (datasets.load_from_disk)"
        )
        for split, rows in prov.get("splits", {}).items():
            cols = ", ".join(prov.get("columns", {}).get(split, []))
            self.stdout.write(f"  {split}: {rows} rows ({cols})")
