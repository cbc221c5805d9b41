from typing import Any

from django.core.management.base import BaseCommand

from slmsite.services import user_create


class Command(BaseCommand):
    help = "Creates a user; --annotator adds the annotator group, --admin makes them staff."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("username")
        parser.add_argument("password")
        parser.add_argument("--annotator", action="store_true")
        parser.add_argument("--admin", action="store_true")

    def handle(self, *args: Any, **opts: Any) -> None:
        user = user_create(
            username=opts["username"], password=opts["password"], annotator=opts["annotator"], admin=opts["admin"]
        )
        self.stdout.write(f"created {user.username}")
