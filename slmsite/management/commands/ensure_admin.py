from typing import Any

from django.core.management.base import BaseCommand

from slmsite.services import admin_ensure


class Command(BaseCommand):
    help = "Creates an admin (superuser) if none exists. Uses SLM_ADMIN_USERNAME/SLM_ADMIN_PASSWORD or generates a password and prints it once."

    def handle(self, *args: Any, **opts: Any) -> None:
        from django.conf import settings

        created, generated = admin_ensure()
        if not created:
            self.stdout.write("admin account exists")
        elif generated:
            self.stdout.write(
                self.style.WARNING(f"created admin login: {settings.SLM_ADMIN_USERNAME} / {generated}  (shown once)")
            )
        else:
            self.stdout.write(f"created admin login: {settings.SLM_ADMIN_USERNAME} (password from SLM_ADMIN_PASSWORD)")
