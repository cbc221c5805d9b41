from __future__ import annotations

import json
import uuid
from typing import Any

from django.core.management.base import BaseCommand

from annotate import bench
from slmsite.services import user_create


class Command(BaseCommand):
    help = (
        "App-level annotate figures as JSON: next-item query time over a large pool and labels/s of "
        "concurrent annotators with a double-assignment check. Writes bench projects: use a scratch DB."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--pool", type=int, default=100_000)
        parser.add_argument("--annotators", type=int, default=2)
        parser.add_argument("--seconds", type=float, default=10.0)

    def handle(self, *args: Any, **opts: Any) -> None:
        tag = uuid.uuid4().hex[:6]
        users = [
            user_create(username=f"bench-{tag}-{i}", password=uuid.uuid4().hex, annotator=True)
            for i in range(opts["annotators"])
        ]
        out = {
            "query": bench.query_time(opts["pool"], user=users[0]),
            "throughput": bench.annotator_throughput(users, seconds=opts["seconds"]),
        }
        self.stdout.write(json.dumps(out, indent=2))
