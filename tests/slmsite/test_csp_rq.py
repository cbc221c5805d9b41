"""The django-rq admin works under the CSP: the policy's one script hash is exactly the inline script of
the installed django-rq's job-list templates (a django-rq upgrade that changes it fails here)."""

from __future__ import annotations

import base64
import hashlib
import re
from pathlib import Path

import django_rq
from django.conf import settings


def test_csp_hash_matches_django_rq_inline_script() -> None:
    folder = Path(django_rq.__file__).parent / "templates" / "django_rq"
    hashes = set()
    for template in folder.glob("*.html"):
        for body in re.findall(r"<script[^>]*>(.*?)</script>", template.read_text(), re.S):
            if body.strip():
                digest = base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()
                hashes.add(f"'sha256-{digest}'")
    assert hashes == {settings.DJANGO_RQ_ADMIN_SCRIPT_HASH}
    assert settings.DJANGO_RQ_ADMIN_SCRIPT_HASH in settings.CONTENT_SECURITY_POLICY


def test_rq_admin_page_carries_the_policy(client, admin_user, password) -> None:  # type: ignore[no-untyped-def]
    client.login(username=admin_user.username, password=password)
    r = client.get("/admin/django-rq/queues/0/")
    assert r.status_code == 200 and ".actions();" in r.content.decode()
    assert settings.DJANGO_RQ_ADMIN_SCRIPT_HASH in r["Content-Security-Policy"]
