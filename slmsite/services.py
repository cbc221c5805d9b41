from __future__ import annotations

import secrets

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db import transaction
from django.utils import timezone

from slmsite.models import ApiToken, hash_token


@transaction.atomic
def api_token_create(*, user, name: str = "default") -> str:  # type: ignore[no-untyped-def]
    """Creates a token and returns the raw value (shown once; only its hash is stored)."""
    raw = ApiToken.generate()
    ApiToken.objects.create(user=user, name=name, key_hash=hash_token(raw), prefix=raw[4:12])
    return raw


def api_token_authenticate(*, raw: str):  # type: ignore[no-untyped-def]
    token = ApiToken.objects.select_related("user").filter(key_hash=hash_token(raw)).first()
    if token is None or not token.user.is_active:
        return None
    now = timezone.now()
    # At most one write a minute per token: a DB write on every API call serialises busy clients on SQLite.
    if token.last_used is None or (now - token.last_used).total_seconds() > 60:
        ApiToken.objects.filter(pk=token.pk).update(last_used=now)
    return token.user


@transaction.atomic
def admin_ensure(
    *, username: str | None = None, password: str | None = None, email: str | None = None
) -> tuple[bool, str | None]:
    """Creates a superuser if no superuser exists.

    Returns (created, password): the password is returned only when it was generated here, so
    the caller can print it once.
    """
    User = get_user_model()
    if User.objects.filter(is_superuser=True).exists():
        return False, None
    username = username or settings.SLM_ADMIN_USERNAME
    given = password or settings.SLM_ADMIN_PASSWORD
    generated = None if given else secrets.token_urlsafe(12)
    User.objects.create_superuser(
        username=username, email=email or settings.SLM_ADMIN_EMAIL, password=given or generated
    )
    return True, generated


@transaction.atomic
def user_create(*, username: str, password: str, annotator: bool = False, admin: bool = False):  # type: ignore[no-untyped-def]
    User = get_user_model()
    user = User.objects.create_user(username=username, password=password, is_staff=admin)
    if annotator:
        group, _ = Group.objects.get_or_create(name=settings.ANNOTATOR_GROUP)
        user.groups.add(group)
    return user
