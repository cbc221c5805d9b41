"""Promoting by hand a version that is worse than the live one asks first: the rule (slmsite.promotion),
the annotate and sentiment promote views (a question page without confirm=1, the dialog's data-confirm on
the buttons), and the app's own 404 page with DEBUG on."""

from __future__ import annotations

from typing import Any

import pytest
from django.urls import reverse

from slm.registry import Registry
from slmsite.promotion import compare_with_live, promote_warning


def _version(registry: Registry, meta: dict[str, Any], parent: str | None = None, name: str = "sentiment") -> str:
    return registry.create_version(name, lambda d: (d / "weights.txt").write_text("x"), meta, parent=parent).version


def test_gold_figures_of_the_same_run_are_compared(registry: Registry) -> None:
    live = _version(registry, {"metrics": {"macro_f1": 0.97}, "data_hash": "a"})
    registry.promote("sentiment", live)
    worse = _version(
        registry,
        {"gold_metrics": {"macro_f1": 0.548}, "annotate": {"project": 1, "parent_gold_metrics": {"macro_f1": 0.971}}},
        parent=live,
    )
    comp = compare_with_live(registry, "sentiment", worse)
    assert comp is not None and comp.split == "gold" and comp.worse
    assert promote_warning(registry, "sentiment", worse) == (
        f"{worse} scores 0.548 macro-F1 on the gold items, below the live {live}'s 0.971. Make it live anyway?"
    )
    better = _version(
        registry,
        {"gold_metrics": {"macro_f1": 0.98}, "annotate": {"project": 1, "parent_gold_metrics": {"macro_f1": 0.971}}},
        parent=live,
    )
    assert promote_warning(registry, "sentiment", better) == ""
    assert promote_warning(registry, "sentiment", live) == ""  # already live
    # and back: with the better child live, its parent scored worse on that run's gold
    registry.promote("sentiment", better)
    comp = compare_with_live(registry, "sentiment", live)
    assert comp is not None and comp.split == "gold" and comp.worse and (comp.score, comp.live_score) == (0.971, 0.98)


def test_only_figures_on_the_same_data_are_compared(registry: Registry) -> None:
    live = _version(registry, {"gold_metrics": {"macro_f1": 0.9}, "annotate": {"project": 1}})
    registry.promote("sentiment", live)
    same_project = _version(registry, {"gold_metrics": {"macro_f1": 0.5}, "annotate": {"project": 1}})
    other_project = _version(registry, {"gold_metrics": {"macro_f1": 0.5}, "annotate": {"project": 2}})
    held_out_only = _version(registry, {"metrics": {"macro_f1": 0.1}, "data_hash": "a"})
    assert promote_warning(registry, "sentiment", same_project).startswith(
        f"{same_project} scores 0.500 macro-F1 on the gold"
    )
    assert compare_with_live(registry, "sentiment", other_project) is None  # another gold set
    assert compare_with_live(registry, "sentiment", held_out_only) is None  # gold vs held-out: never mixed
    # held-out against held-out only on the same data
    registry.promote("sentiment", held_out_only)
    same_data = _version(registry, {"metrics": {"macro_f1": 0.05}, "data_hash": "a"})
    other_data = _version(registry, {"metrics": {"macro_f1": 0.05}, "data_hash": "b"})
    comp = compare_with_live(registry, "sentiment", same_data)
    assert comp is not None and comp.split == "held-out" and comp.worse
    assert compare_with_live(registry, "sentiment", other_data) is None


@pytest.fixture
def worse_version(registry: Registry) -> tuple[str, str]:
    live = _version(registry, {"metrics": {"macro_f1": 0.9}, "data_hash": "h", "labels": ["negative", "positive"]})
    registry.promote("sentiment", live)
    worse = _version(registry, {"metrics": {"macro_f1": 0.4}, "data_hash": "h", "labels": ["negative", "positive"]})
    return live, worse


def test_sentiment_promote_of_a_worse_version_asks_first(client, admin_user, password, registry, worse_version) -> None:  # type: ignore[no-untyped-def]
    live, worse = worse_version
    client.login(username=admin_user.username, password=password)
    page = client.get(reverse("sentiment:versions")).content.decode()
    assert f'data-confirm="{worse} scores 0.400 macro-F1 on held-out data, below the live {live}' in page
    card = client.get(reverse("sentiment:version", args=[worse])).content.decode()
    assert "data-confirm=" in card
    r = client.post(reverse("sentiment:promote", args=[worse]))
    assert r.status_code == 200 and "Make it live anyway?" in r.content.decode()
    assert registry.live_version("sentiment") == live
    r = client.post(reverse("sentiment:promote", args=[worse]), {"confirm": "1"})
    assert r.status_code == 302 and registry.live_version("sentiment") == worse
    # a better one is promoted at once, no question
    r = client.post(reverse("sentiment:promote", args=[live]))
    assert r.status_code == 302 and registry.live_version("sentiment") == live


def test_annotate_promote_of_a_worse_version_asks_first(client, admin_user, password, registry) -> None:  # type: ignore[no-untyped-def]
    from tests.annotate.conftest import make_project

    project = make_project()
    live = _version(registry, {"metrics": {"macro_f1": 0.97}}, name=project.model_name)
    registry.promote(project.model_name, live)
    worse = _version(
        registry,
        {
            "gold_metrics": {"macro_f1": 0.548},
            "annotate": {"project": project.pk, "parent_gold_metrics": {"macro_f1": 0.971}},
        },
        parent=live,
        name=project.model_name,
    )
    client.login(username=admin_user.username, password=password)
    page = client.get(reverse("annotate:models", args=[project.pk])).content.decode()
    assert f"{worse} scores 0.548 macro-F1 on the gold items, below the live {live}&#x27;s 0.971" in page
    url = reverse("annotate:model_action", args=[project.pk])
    r = client.post(url, {"version": worse, "action": "promote"})
    assert r.status_code == 200 and "Make it live anyway?" in r.content.decode()
    assert 'name="action" value="promote"' in r.content.decode()  # the page re-posts the same fields
    assert registry.live_version(project.model_name) == live
    r = client.post(url, {"version": worse, "action": "promote", "confirm": "1"})
    assert r.status_code == 302 and registry.live_version(project.model_name) == worse


def test_not_found_is_the_apps_own_page_with_debug_on(client, plain_user, password, settings) -> None:  # type: ignore[no-untyped-def]
    settings.DEBUG = True
    client.login(username=plain_user.username, password=password)
    r = client.get("/chat/c/999999/")
    body = r.content.decode()
    assert r.status_code == 404 and "Not found" in body and 'class="topbar"' in body
    assert "Django" not in body
    for typo in ("/chat/cc/", "/no-such-page/"):  # a URL that matches nothing: the same page, not the URL list
        r = client.get(typo)
        body = r.content.decode()
        assert r.status_code == 404 and "Not found" in body and 'class="topbar"' in body, typo
        assert "DEBUG = True" not in body and "URLconf" not in body
    assert client.get("/api/no-such-thing").json()["message"]  # the API keeps its JSON 404s
    r = client.post(  # the API keeps its JSON errors
        "/api/sentiment/predict", {"texts": ["hi"], "model": "v9999"}, content_type="application/json"
    )
    assert r.status_code in (404, 503) and r.json()["message"]
