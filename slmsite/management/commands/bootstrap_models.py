from __future__ import annotations

import time
from typing import Any

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from slmsite.bootstrap import StatusWriter, builders
from slmsite.registry import get_registry


class Command(BaseCommand):
    help = "Builds the default models offline (idempotent: skips models that already have a live version)."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("names", nargs="*", help="builder names (default: SLM_BOOTSTRAP setting, 'all')")
        parser.add_argument("--force", action="store_true", help="build a new version even if one is live")
        parser.add_argument("--list", action="store_true", help="list builders and exit")
        parser.add_argument("--demo", action="store_true", help="then create the demo annotate project")

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
        status = StatusWriter(registry, selected)
        failed: list[str] = []
        for b in selected:
            live = registry.live_version(b.model_name)
            if live and not opts["force"]:
                self.stdout.write(f"[{b.name}] {b.model_name}@{live} is live; skipping")
                status.update(b.name, state="skipped", fraction=1.0, force=True)
                continue
            started = time.monotonic()
            status.update(b.name, state="running", message="starting", force=True)
            with tqdm(
                total=100, desc=b.name, unit="%", bar_format="{desc}: {percentage:3.0f}%|{bar}| {postfix}"
            ) as bar:

                def progress(message: str, fraction: float, bar: tqdm = bar, name: str = b.name) -> None:
                    fraction = max(0.0, min(1.0, fraction))
                    bar.n = round(100 * fraction)
                    bar.set_postfix_str(message[:60])
                    bar.refresh()
                    status.update(name, fraction=fraction, message=message[:200])

                try:
                    b.build(registry, progress)
                except Exception as exc:  # the next builder still runs; the status says what went wrong
                    failed.append(b.name)
                    status.update(b.name, state="failed", error=f"{type(exc).__name__}: {exc}"[:500], force=True)
                    self.stderr.write(f"[{b.name}] failed: {type(exc).__name__}: {exc}")
                    continue
                progress("done", 1.0)
            status.update(b.name, state="done", fraction=1.0, force=True)
            live = registry.live_version(b.model_name)
            self.stdout.write(f"[{b.name}] built in {time.monotonic() - started:.0f}s; live: {b.model_name}@{live}")
        if opts["demo"] and not failed:
            call_command("create_demo_project")  # before "done": a client waiting on /healthz finds it
        status.finish("failed" if failed else "done")
        if failed:
            raise CommandError(f"default model build failed: {', '.join(failed)} (see the messages above)")
