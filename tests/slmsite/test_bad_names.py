"""Registry names and versions from outside (API, playground, model card, compare, annotate's model pages,
management commands) are checked against the registry's pattern and length before any path is built: an
over-long or malformed one is a 4xx/404 or a command error, never a 500 (`OSError: File name too long`), and
no per-name state grows for names that do not exist."""

from __future__ import annotations

import pytest
from django.core.management import CommandError, call_command
from django.test import Client

from slm.classify.testing import make_tiny_version
from slm.registry import Registry, RegistryError, VersionNotFound, valid_name, valid_version

LONG_DIGITS = "v" + "1" * 400  # matches a naive ^v\d{4,}$ and reaches the filesystem
BAD = [LONG_DIGITS, "x" * 400, "sentiment@" + LONG_DIGITS, "../../etc", "v0001/../../x", "n" * 300 + "@v0001"]
BAD_IDS = ["long-digits", "long-name", "long-ref", "dotdot", "version-dotdot", "long-name-ref"]


@pytest.fixture
def live(registry: Registry):
    from sentiment.inference import reset_services

    reset_services()
    yield make_tiny_version(registry)
    reset_services()


@pytest.fixture
def admin(admin_user, password) -> Client:
    c = Client()
    c.login(username=admin_user.username, password=password)
    return c


def test_the_registry_pattern_bounds_names_and_versions(registry: Registry):
    assert valid_name("sentiment") and valid_version("v0001") and valid_version("v123456789")
    assert not valid_name("x" * 101) and not valid_name("../a") and not valid_name("")
    assert not valid_version(LONG_DIGITS) and not valid_version("v1") and not valid_version("v0001 ")
    with pytest.raises(VersionNotFound):
        registry.get("sentiment", LONG_DIGITS)
    for call in (lambda: registry.live_state("x" * 400), lambda: registry.versions("x" * 400)):
        with pytest.raises(RegistryError):
            call()
    with pytest.raises(RegistryError):
        registry.rollback("nothing-here")
    assert not (registry.root / "nothing-here").exists()  # no directory made for an unknown name


@pytest.mark.django_db
@pytest.mark.parametrize("bad", BAD, ids=BAD_IDS)
def test_api_predict_with_a_bad_model_name_is_a_4xx(live, admin, bad):
    r = admin.post("/api/sentiment/predict", {"texts": ["很好"], "model": bad}, content_type="application/json")
    assert r.status_code in (404, 422), (r.status_code, r.content[:200])
    assert len(r.content) < 2000  # the message does not echo a huge name


@pytest.mark.django_db
@pytest.mark.parametrize("bad", BAD, ids=BAD_IDS)
def test_pages_with_a_bad_version_are_never_500(live, admin, bad):
    from urllib.parse import quote

    assert admin.post("/sentiment/classify/", {"text": "很好", "model": bad}).status_code in (200, 400, 404)
    assert admin.get("/sentiment/compare/", {"text": "很好", "a": bad, "b": "v0001"}).status_code in (200, 400, 404)
    card = admin.get(f"/sentiment/models/{quote(bad, safe='')}/")
    assert card.status_code in (302, 404), card.status_code
    assert admin.post(f"/sentiment/models/{quote(bad, safe='')}/promote/").status_code in (302, 404)
    assert admin.post("/sentiment/models/rollback/", {"version": bad}).status_code in (302, 400, 404)


@pytest.mark.django_db
@pytest.mark.parametrize("bad", [LONG_DIGITS, "x" * 400], ids=["long-digits", "long-name"])
def test_annotate_model_pages_with_a_bad_version_are_never_500(live, admin, bad):
    from tests.annotate.conftest import make_project

    project = make_project()
    assert admin.get(f"/annotate/p/{project.pk}/models/", {"a": bad, "b": "v0001"}).status_code == 200
    r = admin.post(f"/annotate/p/{project.pk}/models/action", {"action": "promote", "version": bad})
    assert r.status_code == 302


@pytest.mark.django_db
@pytest.mark.parametrize(
    "args",
    [
        ("promote", "sentiment", LONG_DIGITS),
        ("promote", "x" * 400, "v0001"),
        ("rollback", "x" * 400),
        ("rollback", "sentiment", LONG_DIGITS),
    ],
)
def test_commands_refuse_bad_names(live, args):
    with pytest.raises(CommandError):
        call_command(*args)


def test_unknown_versions_leave_no_per_name_state(live, registry):
    """Each distinct unknown version used to leave a lock behind (memory grew with every 404)."""
    from sentiment.inference import UnknownVersion, get_service

    service = get_service()
    for i in range(200):
        for bad in (f"v{9000 + i:04d}", f"x{i}" * 50):
            with pytest.raises(UnknownVersion):
                service.predict(["好"], bad)
    assert len(service._load_locks) <= len(registry.versions("sentiment"))
