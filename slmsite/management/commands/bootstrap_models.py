from __future__ import annotations

import time
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from slmsite.bootstrap import builders
from slmsite.registry import get_registry


class Command(BaseCommand):
    help = "Builds the default models offline (idempotent: skips models that already have a live version)."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("names", nargs="*", help="builder names (default: SLM_BOOTSTRAP setting, 'all')")
        parser.add_argument("--force", action="store_true", help="build a new version even if one is live")
        parser.add_argument("--list", action="store_true", help="list builders and exit")

    def handle(self, *args: Any, **opts: Any) -> None:
        registry = get_registry()
        available = builders()
        if opts["list"]:
            for b in available:
                live = registry.live_version(b.model_name)
                self.stdout.write(f"{b.name:12s} -> {b.model_name:12s} live={live or '-'}  {b.description}")
            return
        wanted = opts["names"] or list(settings.SLM_BOOTSTRAP)
        if "all" in wanted:
            selected = available
        else:
            known = {b.name: b for b in available}
            unknown = [n for n in wanted if n not in known]
            if unknown:
                raise CommandError(f"unknown builder(s) {unknown}; known: {sorted(known)}")
            selected = [known[n] for n in wanted]
        for b in selected:
            live = registry.live_version(b.model_name)
            if live and not opts["force"]:
                self.stdout.write(f"[{b.name}] {b.model_name}@{live} is live; skipping")
                continue
            started = time.monotonic()
            with tqdm(
                total=100, desc=b.name, unit="%", bar_format="{desc}: {percentage:3.0f}%|{bar}| {postfix}"
            ) as bar:

                def progress(message: str, fraction: float, bar: tqdm = bar) -> None:
                    bar.n = round(100 * max(0.0, min(1.0, fraction)))
                    bar.set_postfix_str(message[:60])
                    bar.refresh()

                b.build(registry, progress)
                progress("done", 1.0)
            live = registry.live_version(b.model_name)
            self.stdout.write(f"[{b.name}] built in {time.monotonic() - started:.0f}s; live: {b.model_name}@{live}")
