"""The languages a model was trained on: in the API's model list, and the playground's examples,
placeholder and notice match them (a Chinese-only model does not invite English)."""

from __future__ import annotations

import pytest
from django.test import Client
from django.urls import reverse

from sentiment.selectors import language_mismatch
from tests.sentiment.fakes import install_fake_loader, make_fake_version

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def fake_models(monkeypatch, registry):  # type: ignore[no-untyped-def]
    install_fake_loader(monkeypatch)
    yield
    import sentiment.inference

    sentiment.inference.reset_services()


@pytest.fixture
def user_client(plain_user, password) -> Client:  # type: ignore[no-untyped-def]
    c = Client()
    assert c.login(username=plain_user.username, password=password)
    return c


def test_api_model_list_says_which_languages_each_version_knows(user_client, registry) -> None:  # type: ignore[no-untyped-def]
    make_fake_version(registry, languages=["zh"])
    make_fake_version(registry, promote=False)  # an older version without the key
    versions = {v["version"]: v for v in user_client.get("/api/sentiment/models").json()["versions"]}
    assert versions["v0001"]["languages"] == ["zh"]
    assert versions["v0002"]["languages"] == []  # not recorded
    schema = user_client.get("/api/openapi.json").json()["components"]["schemas"]["VersionOut"]
    assert "languages" in schema["properties"]


def test_chinese_only_model_gets_chinese_examples_and_a_notice(user_client, registry) -> None:  # type: ignore[no-untyped-def]
    make_fake_version(registry, languages=["zh"])
    html = user_client.get(reverse("sentiment:playground")).content.decode()
    assert 's-example" lang="zh"' in html and 's-example" lang="en"' not in html
    assert 'placeholder="Type a review in Chinese…"' in html
    assert "trained on Chinese text only" in html
    # an English text anyway: the answer comes with a warning in words
    r = user_client.post(reverse("sentiment:classify"), {"text": "Absolutely loved it"}, HTTP_HX_REQUEST="true")
    assert "trained on Chinese text only; a text in Latin letters gets an unreliable answer" in r.content.decode()
    r = user_client.post(reverse("sentiment:classify"), {"text": "非常好，推荐 iPhone"}, HTTP_HX_REQUEST="true")
    assert "unreliable" not in r.content.decode()


def test_model_without_recorded_languages_keeps_every_example(user_client, registry) -> None:  # type: ignore[no-untyped-def]
    make_fake_version(registry)
    html = user_client.get(reverse("sentiment:playground")).content.decode()
    assert 's-example" lang="zh"' in html and 's-example" lang="en"' in html and "text only" not in html
    r = user_client.post(reverse("sentiment:classify"), {"text": "Absolutely loved it"}, HTTP_HX_REQUEST="true")
    assert "unreliable" not in r.content.decode()


def test_language_mismatch_only_when_the_script_is_plain() -> None:
    assert language_mismatch("Great food", ["zh"]).startswith("This model was trained on Chinese text only")
    assert language_mismatch("这家店很好", ["en"]).endswith("a text in Chinese characters gets an unreliable answer.")
    assert language_mismatch("这家店很好", ["zh", "en"]) == ""
    assert language_mismatch("12345 !!", ["zh"]) == ""  # cannot tell
    assert language_mismatch("Great food", []) == ""  # languages not recorded
