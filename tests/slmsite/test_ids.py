"""Ids in paths are strict digits: " 1", "+1", "01", "1.0" are 404 (they used to reach object 1), on the pages
and on the JSON API, and every URL of ours that takes an id uses the strict converter."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.urls import URLPattern, URLResolver, get_resolver
from django.urls.converters import IntConverter
from django.utils import timezone

from slmsite.converters import StrictIdConverter

NOT_IDS = ["01", "+1", "%201", "1.0", "-1", "0", "1" * 19, "%EF%BC%91"]  # the last: a full-width digit one


def _patterns(resolver: URLResolver, prefix: str = ""):  # type: ignore[no-untyped-def]
    for p in resolver.url_patterns:
        if isinstance(p, URLResolver):
            yield from _patterns(p, prefix + str(p.pattern))
        elif isinstance(p, URLPattern):
            yield prefix + str(p.pattern), p


def test_every_url_of_ours_with_an_id_uses_the_strict_converter():
    checked = 0
    for route, pattern in _patterns(get_resolver()):
        if route.startswith(("admin/", "accounts/")):
            continue  # Django's and django-rq's own URLs
        converters = getattr(pattern.pattern, "converters", {})
        assert not any(isinstance(c, IntConverter) for c in converters.values()), route
        checked += sum(isinstance(c, StrictIdConverter) for c in converters.values())
    assert checked >= 20


@pytest.fixture
def run(db):  # type: ignore[no-untyped-def]
    from annotate.models import TrainingRun
    from tests.annotate.conftest import make_project

    project = make_project()
    TrainingRun.objects.filter(pk=1).delete()
    return TrainingRun.objects.create(pk=1, project=project, status="failed", finished_at=timezone.now() - timedelta(1))


@pytest.mark.django_db
@pytest.mark.parametrize("bad", NOT_IDS)
def test_pages_and_api_refuse_non_canonical_ids(client, admin_user, password, run, bad):
    client.login(username=admin_user.username, password=password)
    assert client.get("/annotate/runs/1/").status_code == 200
    assert client.get("/api/runs/1").status_code == 200
    assert client.get(f"/annotate/runs/{bad}/").status_code == 404
    assert client.get(f"/annotate/p/{bad}/").status_code == 404
    assert client.get(f"/chat/c/{bad}/").status_code == 404
    assert client.get(f"/sentiment/batch/{bad}/").status_code == 404
    assert client.get(f"/api/runs/{bad}").status_code == 404
    assert client.post(f"/api/annotate/projects/{bad}/retrain").status_code == 404


def test_reverse_refuses_what_the_converter_would_not_match():
    c = StrictIdConverter()
    assert c.to_url(12) == "12"
    for bad in ("01", "+1", " 1", "1.0", "x"):
        with pytest.raises(ValueError):
            c.to_url(bad)


@pytest.mark.django_db
@pytest.mark.parametrize("path", ["/api/runs/1%0A", "/api/runs/%0A", "/api/nothing/here", "/api/runs/x%0Ay"])
def test_any_other_api_path_is_a_json_404(client, admin_user, password, path):
    """Found by schemathesis in make soak: a path ending in a newline got Django's HTML 404."""
    client.login(username=admin_user.username, password=password)
    r = client.get(path)
    assert r.status_code == 404 and r["Content-Type"].startswith("application/json")
    assert r.json()["message"]
