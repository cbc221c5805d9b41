import json
from typing import Any

from django.core.management.base import BaseCommand

from slmsite.registry import get_registry


class Command(BaseCommand):
    help = "Lists registry models, their versions, key metrics and the live version."

    def handle(self, *args: Any, **opts: Any) -> None:
        reg = get_registry()
        for name in reg.names():
            live = reg.live_version(name)
            self.stdout.write(f"{name} (live: {live or '-'})")
            for mv in reg.versions(name):
                mark = "*" if mv.version == live else " "
                src = mv.metadata.get("source") or {}
                origin = f"  from {src.get('repo')}@{str(src.get('commit'))[:12]}" if src.get("kind") == "hub" else ""
                self.stdout.write(
                    f"  {mark} {mv.version}  {mv.metadata.get('created', '')}  {json.dumps(mv.metrics)[:120]}{origin}"
                )
