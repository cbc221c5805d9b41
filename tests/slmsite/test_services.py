import pytest
from django.contrib.auth.models import AnonymousUser
from django.core.management import call_command

from slmsite.roles import is_admin, is_annotator
from slmsite.services import admin_ensure, api_token_authenticate, api_token_create


@pytest.mark.django_db
def test_admin_ensure_generates_once(settings):
    settings.SLM_ADMIN_PASSWORD = ""
    created, pw = admin_ensure()
    assert created and pw and len(pw) >= 12
    assert admin_ensure() == (False, None)


@pytest.mark.django_db
def test_admin_ensure_uses_env_password(settings, client):
    settings.SLM_ADMIN_USERNAME = "root2"
    settings.SLM_ADMIN_PASSWORD = "from-env-pass-1"
    created, pw = admin_ensure()
    assert created and pw is None
    assert client.login(username="root2", password="from-env-pass-1")


@pytest.mark.django_db
def test_ensure_admin_command_prints_generated_password(capsys, settings):
    settings.SLM_ADMIN_PASSWORD = ""
    call_command("ensure_admin")
    out = capsys.readouterr().out
    assert "created admin login: admin / " in out
    call_command("ensure_admin")
    assert "exists" in capsys.readouterr().out


@pytest.mark.django_db
def test_roles(admin_user, annotator_user, plain_user):
    assert is_admin(admin_user) and is_annotator(admin_user)
    assert is_annotator(annotator_user) and not is_admin(annotator_user)
    assert not is_annotator(plain_user) and not is_admin(plain_user)
    assert not is_admin(AnonymousUser()) and not is_annotator(AnonymousUser())


@pytest.mark.django_db
def test_api_token_hash_only(plain_user):
    from slmsite.models import ApiToken

    raw = api_token_create(user=plain_user)
    stored = ApiToken.objects.get()
    assert raw not in (stored.key_hash, stored.prefix) and stored.key_hash != raw
    assert api_token_authenticate(raw=raw) == plain_user
    assert api_token_authenticate(raw=raw + "x") is None
    plain_user.is_active = False
    plain_user.save()
    assert api_token_authenticate(raw=raw) is None
