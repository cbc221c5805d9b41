"""JSON API (DESIGN §4): happy path, auth, and every bad input as 4xx/503 JSON with a message."""

from __future__ import annotations

import json
import random

import pytest
from django.test import Client

from slmsite.services import api_token_create
from tests.sentiment.fakes import install_fake_loader, make_fake_version

URL = "/api/sentiment/predict"
pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def fake_models(monkeypatch, registry):
    install_fake_loader(monkeypatch)
    yield
    import sentiment.inference

    sentiment.inference.reset_services()


@pytest.fixture
def token(plain_user) -> str:
    return api_token_create(user=plain_user)


@pytest.fixture
def api(token) -> Client:
    """A token client: no session, CSRF enforced like a real outside client."""
    return Client(enforce_csrf_checks=True, HTTP_AUTHORIZATION=f"Bearer {token}")


def post(client: Client, body, content_type: str = "application/json"):
    data = body if isinstance(body, str | bytes) else json.dumps(body)
    return client.post(URL, data=data, content_type=content_type)


def assert_error(resp, status: int, contains: str = "") -> dict:
    assert resp.status_code == status, (resp.status_code, resp.content[:300])
    assert resp["Content-Type"].startswith("application/json")
    body = resp.json()
    assert isinstance(body.get("message"), str) and body["message"]
    assert contains.lower() in body["message"].lower()
    return body


def test_predict_happy_path_with_token(api, registry):
    make_fake_version(registry)
    resp = post(api, {"texts": ["这家酒店很好", "food was cold"]})
    assert resp.status_code == 200
    body = resp.json()
    assert body["model"] == "sentiment@v0001"
    assert [p["label"] for p in body["predictions"]] == ["positive", "negative"]
    first = body["predictions"][0]
    assert set(first) == {"label", "score", "probs"}
    assert first["score"] == pytest.approx(0.9)
    assert first["probs"] == {"negative": pytest.approx(0.1), "positive": pytest.approx(0.9)}


def test_predict_specific_version(api, registry):
    make_fake_version(registry)
    make_fake_version(registry, promote=False, bias=-0.5)
    for model in ("v0002", "sentiment@v0002"):
        body = post(api, {"texts": ["good"], "model": model}).json()
        assert body["model"] == "sentiment@v0002"
        assert body["predictions"][0]["label"] == "negative"
    assert post(api, {"texts": ["good"], "model": None}).json()["model"] == "sentiment@v0001"


def test_models_lists_versions_with_metrics_and_live(api, registry):
    make_fake_version(registry)
    make_fake_version(registry, promote=True, family="transformer")
    make_fake_version(registry, promote=False)
    resp = api.get("/api/sentiment/models")
    assert resp.status_code == 200
    body = resp.json()
    assert body["name"] == "sentiment" and body["live"] == "v0002"
    versions = {v["version"]: v for v in body["versions"]}
    assert set(versions) == {"v0001", "v0002", "v0003"}
    assert versions["v0002"]["live"] is True and versions["v0001"]["live"] is False
    assert versions["v0002"]["family"] == "transformer"
    assert versions["v0001"]["metrics"]["macro_f1"] == pytest.approx(0.84)
    assert versions["v0001"]["labels"] == ["negative", "positive"]


def test_anonymous_gets_401_json(registry):
    make_fake_version(registry)
    assert_error(post(Client(), {"texts": ["x"]}), 401)
    assert_error(Client().get("/api/sentiment/models"), 401)
    bad = Client(HTTP_AUTHORIZATION="Bearer not-a-token")
    assert_error(post(bad, {"texts": ["x"]}), 401)


def test_session_post_needs_csrf_and_works_with_it(plain_user, password, registry):
    make_fake_version(registry)
    client = Client(enforce_csrf_checks=True)
    assert client.login(username=plain_user.username, password=password)
    assert_error(post(client, {"texts": ["good"]}), 403, "csrf")
    client.get("/sentiment/")  # the page sets the CSRF cookie like a browser visit
    csrf = client.cookies["csrftoken"].value
    resp = client.post(
        URL, data=json.dumps({"texts": ["good"]}), content_type="application/json", HTTP_X_CSRFTOKEN=csrf
    )
    assert resp.status_code == 200, resp.content
    assert client.get("/api/sentiment/models").status_code == 200


@pytest.mark.parametrize(
    "body,status,contains",
    [
        ("not json at all", 400, "parse"),
        ("{", 400, "parse"),
        ("[1, 2, 3]", 422, ""),
        ("null", 422, ""),
        ('"texts"', 422, ""),
        ({}, 422, "texts"),
        ({"texts": "just a string"}, 422, "texts"),
        ({"texts": [1, 2]}, 422, "texts"),
        ({"texts": [None]}, 422, "texts"),
        ({"texts": [["nested"]]}, 422, "texts"),
        ({"texts": {"a": 1}}, 422, "texts"),
        ({"texts": []}, 422, "non-empty"),
        ({"texts": ["ok", "   "]}, 422, "texts[1] is empty"),
        ({"texts": ["ok"], "model": 5}, 422, "model"),
        ({"texts": ["ok"], "model": ["v0001"]}, 422, "model"),
        ({"texts": ["ok"], "model": "v0099"}, 404, "no version"),
        ({"texts": ["ok"], "model": "chat@v0001"}, 404, "unknown model"),
        ({"texts": ["ok"], "model": "../../etc/passwd"}, 404, ""),
    ],
)
def test_bad_inputs_are_4xx_json(api, registry, body, status, contains):
    make_fake_version(registry)
    assert_error(post(api, body), status, contains)


def test_limits_give_413(api, registry, settings):
    make_fake_version(registry)
    settings.SENTIMENT_MAX_TEXTS = 3
    settings.SENTIMENT_MAX_TEXT_CHARS = 10
    assert post(api, {"texts": ["a", "b", "c"]}).status_code == 200
    assert_error(post(api, {"texts": ["a"] * 4}), 413, "too many texts")
    assert post(api, {"texts": ["好" * 10]}).status_code == 200
    assert_error(post(api, {"texts": ["ok", "好" * 11]}), 413, "texts[1] is too long")


def test_body_over_upload_limit_is_413_json(api, registry, settings):
    make_fake_version(registry)
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    assert_error(post(api, {"texts": ["x" * 2000]}), 413, "too large")


def test_no_live_model_is_503_json(api, registry):
    assert_error(post(api, {"texts": ["good"]}), 503, "no live version")
    make_fake_version(registry, broken=True)  # live but cannot load, nothing older to fall back to
    assert_error(post(api, {"texts": ["good"]}), 503, "could not be loaded")


def test_predict_failure_is_503_not_500(api, registry):
    make_fake_version(registry)
    assert_error(post(api, {"texts": ["BOOM"]}), 503, "failed to predict")


def test_garbage_bodies_never_500(api, registry):
    make_fake_version(registry)
    rng = random.Random(5)
    bodies: list[bytes | str] = [rng.randbytes(rng.randint(1, 200)) for _ in range(25)]
    bodies += ['{"texts": ["a"', '{"texts": [1e999]}', '{"texts": ["\\ud800"]}', "\x00", '{"texts": true}']
    for body in bodies:
        for ctype in ("application/json", "text/plain", "application/x-www-form-urlencoded"):
            resp = post(api, body, content_type=ctype)
            assert 400 <= resp.status_code < 500 or resp.status_code == 200, (body, ctype, resp.status_code)
            assert resp["Content-Type"].startswith("application/json")
            if resp.status_code != 200:
                assert resp.json()["message"]


def test_wrong_method_is_405_not_500(api, registry):
    make_fake_version(registry)
    assert api.get(URL).status_code == 405
    assert api.delete("/api/sentiment/models").status_code == 405


def test_openapi_docs_render(api, admin_user, password):
    schema = api.get("/api/openapi.json")
    assert schema.status_code == 200
    paths = schema.json()["paths"]
    assert "/api/sentiment/predict" in paths and "/api/sentiment/models" in paths
    client = Client()
    client.login(username=admin_user.username, password=password)
    docs = client.get("/api/docs")
    assert docs.status_code == 200
    assert b"swagger" in docs.content.lower() or b"openapi" in docs.content.lower()


def test_predict_with_a_real_tiny_model(api, registry, monkeypatch):
    """The default loader (slm.classify.base.load_classifier) end to end on a real n-gram version."""
    import sentiment.inference as inference
    from slm.classify.testing import make_tiny_version

    monkeypatch.setattr(inference, "default_loader", lambda mv: inference.load_classifier(mv.path))
    inference.reset_services()
    make_tiny_version(registry)
    body = post(api, {"texts": ["太好了，非常满意", "Awful, the food was cold."]}).json()
    assert body["model"] == "sentiment@v0001"
    assert [p["label"] for p in body["predictions"]] == ["positive", "negative"]
    for p in body["predictions"]:
        assert sum(p["probs"].values()) == pytest.approx(1.0, abs=1e-4)
        assert p["score"] == max(p["probs"].values())
