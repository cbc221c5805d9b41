from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from slm.hub import HubError, pull_model
from slmsite.registry import get_registry


class Command(BaseCommand):
    help = (
        "Downloads a model from the Hugging Face hub (HF_ENDPOINT, HF_TOKEN) at a pinned revision and registers it "
        "as a new registry version with its provenance: pull_model <hub id> [--revision R] [--as NAME]."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("repo_id", help="hub id, e.g. gpt2 or uer/gpt2-chinese-cluecorpussmall")
        parser.add_argument("--revision", default=None, help="branch, tag or commit (default: main)")
        parser.add_argument("--as", dest="name", default=None, help="registry name (default: the id's last part)")
        live = parser.add_mutually_exclusive_group()
        live.add_argument("--promote", dest="promote", action="store_true", default=None, help="make it live")
        live.add_argument(
            "--no-promote", dest="promote", action="store_false", help="never make it live (even as first version)"
        )

    def handle(self, *args: Any, **opts: Any) -> None:
        repo_id = opts["repo_id"]
        try:
            result = pull_model(
                repo_id, registry=get_registry(), name=opts["name"], revision=opts["revision"], promote=opts["promote"]
            )
        except HubError as exc:
            raise CommandError(str(exc)) from exc
        mv = result.version
        src = mv.metadata.get("source") or {}
        live = get_registry().live_version(mv.name)
        state = "live" if live == mv.version else f"not live; live is {live or 'none'}"
        verb = "pulled" if result.created else "already registered"
        self.stdout.write(
            f"{verb} {repo_id} @ {src.get('revision')} (commit {src.get('commit')}) -> {mv.ref} ({state})\n"
            f"  license: {src.get('license') or 'unknown (read the model card)'}\n"
            f"  path: {mv.path}"
        )
        for note in result.notes:
            self.stdout.write(f"  note: {note}")
        if mv.metadata.get("task") == "text-generation":
            if mv.name == "chat" or mv.name == str(settings.CHAT_MODEL).removeprefix("registry:"):
                self.stdout.write("  chat serves this name: the live version is picked up without a restart")
            else:
                self.stdout.write(f"  chat with it: CHAT_MODEL=registry:{mv.name}")
        if live != mv.version:
            self.stdout.write(f"  make it live: python manage.py promote {mv.name} {mv.version}")
