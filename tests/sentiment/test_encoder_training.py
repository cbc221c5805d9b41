"""`train_sentiment --encoder bert-base-chinese` on the tiny BERT of the fake hub: a frozen head on the pulled
encoder (pinned), its labels stored so it can be warm-started later, served by the JSON API like any
version; a classifier is refused as an encoder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from django.core.management import CommandError
from django.test import Client

from slm.hub import pull_model
from slmsite.services import api_token_create
from tests.sentiment.test_commands_sentiment import labelled_csv, run  # noqa: F401  (fixture)

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _real_loader(settings, monkeypatch):  # type: ignore[no-untyped-def]
    import sentiment.inference as inference

    settings.SENTIMENT_MODEL = "sentiment"
    torch.set_num_threads(1)
    monkeypatch.setattr(inference, "default_loader", lambda mv: inference.load_classifier(mv.path))
    inference.reset_services()
    yield
    inference.reset_services()


def test_train_on_a_pulled_encoder_and_serve_it(hub_env, registry, plain_user, labelled_csv: Path) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    bert = pull_model("bert-base-chinese", registry=registry).version
    args = ["--data", str(labelled_csv), "--text-column", "review", "--label-column", "y", "--test-size", "0.3"]
    out = run("train_sentiment", *args, "--encoder", "bert-base-chinese", "--epochs", "15", "--lr", "0.005",
              "--max-length", "32", "--promote")  # fmt: skip
    assert "registered sentiment@v0001" in out and "is live" in out
    mv = registry.get("sentiment", "v0001")
    config = mv.metadata["config"]
    assert mv.metadata["family"] == "transformer" and config["mode"] == "frozen"  # the default: frozen-cached
    assert config["encoder_source"] == f"registry:{bert.ref}"
    assert mv.metadata["timings"]["features_s"] >= 0
    assert mv.metadata["training_data"]["n_file"] == mv.metadata["data"]["n_train"]  # can be warm-started
    token = api_token_create(user=plain_user)
    api = Client(enforce_csrf_checks=True, HTTP_AUTHORIZATION=f"Bearer {token}")
    resp = api.post(
        "/api/sentiment/predict",
        data=json.dumps({"texts": ["很好，很满意", "太差了"]}),
        content_type="application/json",
    )
    assert resp.status_code == 200, resp.content
    body = resp.json()
    assert body["model"] == "sentiment@v0001" and len(body["predictions"]) == 2
    for p in body["predictions"]:
        assert set(p["probs"]) == {"negative", "positive"} and sum(p["probs"].values()) == pytest.approx(1, abs=1e-4)


def test_a_classifier_is_not_an_encoder(registry, labelled_csv: Path) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    from slm.classify.testing import make_tiny_version

    clf = make_tiny_version(registry)
    with pytest.raises(CommandError, match="not a bare encoder"):
        run("train_sentiment", "--data", str(labelled_csv), "--text-column", "review", "--label-column", "y",
            "--encoder", clf.ref)  # fmt: skip
