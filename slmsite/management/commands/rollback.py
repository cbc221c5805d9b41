from typing import Any

from django.core.management.base import BaseCommand, CommandError

from slm.registry import RegistryError
from slmsite.registry import get_registry


class Command(BaseCommand):
    help = "Rolls a model back to the previously live version, or to the version given."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("name")
        parser.add_argument("version", nargs="?")

    def handle(self, *args: Any, **opts: Any) -> None:
        try:
            mv = get_registry().rollback(opts["name"], opts["version"])
        except RegistryError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(f"live: {mv.ref}")
