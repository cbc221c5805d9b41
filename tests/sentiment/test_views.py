"""Playground, compare, version pages, promote/rollback permissions."""

from __future__ import annotations

import pytest
from django.test import Client
from django.urls import reverse

from tests.sentiment.fakes import install_fake_loader, make_fake_version

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def fake_models(monkeypatch, registry):
    install_fake_loader(monkeypatch)
    yield
    import sentiment.inference

    sentiment.inference.reset_services()


@pytest.fixture
def client_user(plain_user, password) -> Client:
    c = Client()
    assert c.login(username=plain_user.username, password=password)
    return c


@pytest.fixture
def client_admin(admin_user, password) -> Client:
    c = Client()
    assert c.login(username=admin_user.username, password=password)
    return c


PAGES = [
    ("sentiment:playground", {}),
    ("sentiment:versions", {}),
    ("sentiment:version", {"version": "v0001"}),
]


@pytest.mark.parametrize("name,kwargs", PAGES)
def test_pages_redirect_anonymous_users_to_login(registry, name, kwargs):
    make_fake_version(registry)
    resp = Client().get(reverse(name, kwargs=kwargs))
    assert resp.status_code == 302 and "/accounts/login/" in resp["Location"]


@pytest.mark.parametrize("name,kwargs", PAGES)
def test_pages_render_for_logged_in_user(client_user, registry, name, kwargs):
    make_fake_version(registry)
    make_fake_version(registry, family="transformer", promote=False)
    resp = client_user.get(reverse(name, kwargs=kwargs))
    assert resp.status_code == 200
    html = resp.content.decode()
    assert "ngram" in html and "transformer" in html  # families side by side


def test_playground_renders_with_empty_registry(client_user, registry):
    resp = client_user.get(reverse("sentiment:playground"))
    assert resp.status_code == 200
    assert "No live model yet" in resp.content.decode()
    resp = client_user.post(reverse("sentiment:classify"), {"text": "好"}, HTTP_HX_REQUEST="true")
    assert resp.status_code == 200
    assert "no live version" in resp.content.decode()


def test_classify_htmx_returns_fragment_with_bars_and_fix_form(client_user, registry, annotator_user, password):
    make_fake_version(registry)
    # a user without the annotator role gets a sentence, not a form that answers 403
    html = client_user.post(reverse("sentiment:classify"), {"text": "好"}, HTTP_HX_REQUEST="true").content.decode()
    assert "needs the annotator role" in html and "Send to annotation" not in html
    client_annotator = Client()
    assert client_annotator.login(username=annotator_user.username, password=password)
    resp = client_annotator.post(reverse("sentiment:classify"), {"text": "这家酒店很好"}, HTTP_HX_REQUEST="true")
    html = resp.content.decode()
    assert resp.status_code == 200
    assert "<html" not in html and 'id="result"' in html
    assert 'data-label="positive"' in html
    assert "width: 90.0%" in html and "width: 10.0%" in html
    assert "Wrong? Fix it" in html
    assert 'name="model_ref" value="sentiment@v0001"' in html


def test_classify_without_js_renders_full_page(client_user, registry):
    make_fake_version(registry)
    resp = client_user.post(reverse("sentiment:classify"), {"text": "bad service"})
    assert resp.status_code == 200
    html = resp.content.decode()
    assert "<html" in html and 'data-label="negative"' in html
    # example links work without JS: GET with ?text=
    resp = client_user.get(reverse("sentiment:playground"), {"text": "great hotel"})
    assert 'data-label="positive"' in resp.content.decode()


def test_classify_bad_input_shows_message(client_user, registry, settings):
    make_fake_version(registry)
    settings.SENTIMENT_MAX_TEXT_CHARS = 5
    r = client_user.post(reverse("sentiment:classify"), {"text": "   "}, HTTP_HX_REQUEST="true")
    assert "Type a text" in r.content.decode()
    r = client_user.post(reverse("sentiment:classify"), {"text": "much too long"})
    assert r.status_code == 413 and "too long" in r.content.decode()
    r = client_user.post(reverse("sentiment:classify"), {"text": "ok", "model": "v0042"}, HTTP_HX_REQUEST="true")
    assert "no version" in r.content.decode()


def test_compare_shows_two_versions_side_by_side(client_user, registry):
    make_fake_version(registry)
    make_fake_version(registry, promote=False, bias=-0.5)
    r = client_user.post(
        reverse("sentiment:compare"), {"text": "good", "a": "v0001", "b": "v0002"}, HTTP_HX_REQUEST="true"
    )
    html = r.content.decode()
    assert "sentiment@v0001" in html and "sentiment@v0002" in html
    assert 'data-label="positive"' in html and 'data-label="negative"' in html


def test_fix_form_falls_back_without_annotate_url(client_user, registry, monkeypatch):
    import sentiment.views as views

    make_fake_version(registry)
    monkeypatch.setattr(views, "_fix_url", lambda: None)
    r = client_user.post(reverse("sentiment:classify"), {"text": "good"}, HTTP_HX_REQUEST="true")
    assert "not available" in r.content.decode()


def test_model_card_shows_metrics_curves_and_chart_data(client_user, registry):
    make_fake_version(registry)
    r = client_user.get(reverse("sentiment:version", kwargs={"version": "v0001"}))
    html = r.content.decode()
    for needle in [
        "abc123",
        "Per class",
        "precision",
        "s-cm-chart",
        "s-curves-chart",
        "s-chart-data",
        "lr",
        "duplicates_dropped",
        "train_s",
    ]:
        assert needle.lower() in html.lower(), needle
    assert "<script>" not in html.replace('<script id="s-chart-data" type="application/json">', "")
    assert client_user.get(reverse("sentiment:version", kwargs={"version": "v0099"})).status_code == 404


def test_promote_and_rollback_are_admin_only(client_user, client_admin, registry):
    make_fake_version(registry)
    make_fake_version(registry, promote=False)
    url = reverse("sentiment:promote", kwargs={"version": "v0002"})
    assert client_user.post(url).status_code == 403
    assert Client().post(url).status_code == 302  # anonymous -> login
    assert registry.live_version("sentiment") == "v0001"
    assert client_admin.get(url).status_code == 405
    r = client_admin.post(url)
    assert r.status_code == 302 and registry.live_version("sentiment") == "v0002"
    assert client_user.post(reverse("sentiment:rollback")).status_code == 403
    r = client_admin.post(reverse("sentiment:rollback"))
    assert r.status_code == 302 and registry.live_version("sentiment") == "v0001"
    page = client_admin.get(reverse("sentiment:version", kwargs={"version": "v0002"})).content.decode()
    assert "Promote" in page
    assert "Promote" not in client_user.get(reverse("sentiment:version", kwargs={"version": "v0002"})).content.decode()


def test_promote_unknown_version_shows_message(client_admin, registry):
    make_fake_version(registry)
    r = client_admin.post(reverse("sentiment:promote", kwargs={"version": "v0042"}), follow=True)
    assert r.status_code == 200 and "no version" in r.content.decode()


def test_model_card_of_a_real_tiny_version(client_user, registry):
    from slm.classify.testing import make_tiny_version

    make_tiny_version(registry)
    html = client_user.get(reverse("sentiment:version", kwargs={"version": "v0001"})).content.decode()
    assert "train_fraction" in html and "duplicates_dropped" in html and "nb_alpha" in html
    assert "Weighted F1" in html and "Held-out split" not in html  # the tiny model's own split is named
    assert "Own split: train (tiny test model)" in html
    # the text-length histogram is a chart, not two raw arrays
    assert "s-hist-chart" in html and "length_histogram" not in html


def test_versions_page_says_when_a_new_live_version_failed_to_load(client_user, registry):
    from sentiment.inference import get_service

    make_fake_version(registry)
    get_service().predict(["warm"])
    make_fake_version(registry, broken=True)
    get_service().predict(["still served by v0001"])
    html = client_user.get(reverse("sentiment:versions")).content.decode()
    assert "could not be loaded" in html and "broken on purpose" in html


def test_compare_defaults_to_live_versus_newest_other(client_user, registry):
    make_fake_version(registry)
    make_fake_version(registry, promote=False)
    make_fake_version(registry, promote=False)
    html = client_user.get(reverse("sentiment:playground")).content.decode()
    a = html.split('name="a"')[1].split("</select>")[0]
    b = html.split('name="b"')[1].split("</select>")[0]
    assert 'value="v0001" selected' in a
    assert 'value="v0003" selected' in b


def test_result_headline_and_bars_show_the_same_figure():
    """0.997 is "99.7%" in the headline as on its bar, never "100%" above "99.7%"."""
    from django.template.loader import render_to_string

    bars = [
        {"label": "positive", "p": 0.997, "pct": 99.7, "top": True},
        {"label": "negative", "p": 0.003, "pct": 0.3, "top": False},
    ]
    result = {"label": "positive", "score": 0.997, "bars": bars, "ref": "sentiment@v0001", "family": "ngram"}
    html = render_to_string("sentiment/playground.html#result", {"result": result})
    assert '<span class="s-score" title="the model\'s probability for this label">99.7%</span>' in html
    assert "100%" not in html


def test_model_card_metadata_reads_as_numbers_and_words():
    from sentiment.selectors import _value_text
    from slm.classify.pipeline import _ngram_description

    assert _value_text("length.min", 4.0) == "4"  # a count stored as a float
    assert _value_text("C", 16.0) == "16" and _value_text("test_size", 0.2) == "0.200"
    assert _value_text("label_counts.negative", 9013) == "9,013"  # like 11,212 in the same table
    assert _value_text("train_s", 6.652) == "6.65 s" and _value_text("eval_s", 1.0) == "1.00 s"
    assert _value_text("char_ngram", [1, 3]) == "1–3"
    description = _ngram_description("svm", (1, 3), None, 120799)
    assert description == "n-gram svm on character 1–3-grams: 120,799 features"
    assert "[" not in _ngram_description("lr", [1, 4], [1, 2], 5)


def test_compare_shows_it_is_working_and_batch_rows_keep_a_decimal(client_user, registry):
    """Loading a version for Compare takes seconds: the form names an indicator that exists; batch rows show
    99.6% as "99.6%", not a certain-looking "100%"."""
    import re

    from django.template.loader import render_to_string

    make_fake_version(registry)
    html = client_user.get(reverse("sentiment:playground")).content.decode()
    form = re.search(r'<form[^>]*id="compare-form"[^>]*>', html)
    assert form and 'hx-indicator="#compare-spin"' in form.group(0) and 'hx-disabled-elt="find button"' in form.group(0)
    assert 'id="compare-spin" class="htmx-indicator' in html

    class Batch:
        pk, filename, status, total, done, percent, error, is_finished = 1, "r.csv", "succeeded", 1, 1, 100, "", True
        model_ref, label_counts, result_file = "sentiment@v0001", {"negative": 1}, None
        preview = [{"text": "太差了", "label": "negative", "score": 0.996}]

        def get_status_display(self) -> str:
            return "succeeded"

    rows = render_to_string("sentiment/playground.html#batch", {"batch": Batch()})
    assert "99.6%" in rows and "100%" not in rows


def test_version_dates_read_as_dates(client_user, registry):
    from slmsite.templatetags.slm_format import when

    assert when("2026-12-01T20:41:45+00:00") == "2026-12-01 20:41"
    assert when(None) == "–" and when("yesterday") == "yesterday"
    make_fake_version(registry)
    for url in (reverse("sentiment:version", kwargs={"version": "v0001"}), reverse("sentiment:versions")):
        html = client_user.get(url).content.decode()
        assert "+00:00" not in html and not __import__("re").search(r"\d{4}-\d\d-\d\dT\d\d:\d\d", html), url
