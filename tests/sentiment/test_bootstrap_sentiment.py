"""The sentiment bootstrap builder with the tiny size: both families + ensemble, best one live, idempotent."""

from __future__ import annotations

import pytest
import torch
from django.core.management import call_command

from slm.classify.adapt import parent_training_data
from slm.classify.base import load_classifier
from slm.data import data_hash
from slm.sentiment_data import review_domain


@pytest.fixture
def tiny_bootstrap(settings):  # type: ignore[no-untyped-def]
    settings.SENTIMENT_BOOTSTRAP_SIZE = "tiny"
    settings.SENTIMENT_MODEL = "sentiment"
    torch.set_num_threads(1)


def test_bootstrap_builds_both_families_and_is_idempotent(tiny_bootstrap, registry, capsys, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import sentiment.bootstrap as sb
    from slmsite.bootstrap import read_status

    seen: dict[str, object] = {}
    real_fit = sb.fit_transformer

    def fit_transformer(*args, **kwargs):  # type: ignore[no-untyped-def]
        # first run: the n-gram model already serves while the transformer trains, and the status says so
        seen["live"] = registry.live_version("sentiment")
        seen["status"] = read_status(registry)
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(sb, "fit_transformer", fit_transformer)
    call_command("bootstrap_models", "sentiment")
    assert seen["live"] == "v0001"
    row = seen["status"]["builders"][0]  # type: ignore[index]
    assert row["state"] == "running" and row["model"] == "sentiment" and 0.1 < row["fraction"] < 0.2
    assert read_status(registry)["state"] == "done"  # type: ignore[index]
    versions = registry.versions("sentiment")
    assert [v.metadata["family"] for v in versions] == ["ngram", "transformer", "ensemble"]
    hashes = {v.metadata["data_hash"] for v in versions}
    test_hashes = {v.metadata["metrics"]["test_hash"] for v in versions}
    assert len(hashes) == 1 and len(test_hashes) == 1  # one split for all candidates
    for v in versions:
        meta = v.metadata
        assert meta["labels"] == ["negative", "positive"]
        assert meta["metrics"]["split"] == "held-out" and meta["metrics"]["n"] == meta["data"]["n_test"] > 0
        for key in ("accuracy", "macro_f1", "per_class", "confusion_matrix", "ece"):
            assert key in meta["metrics"]
        assert meta["quality"]["conflicts_dropped"] > 0 and meta["quality"]["duplicates_dropped"] > 0
        assert meta["timings"] and meta["config"]["family"] == meta["family"]
        assert meta["parent"] is None
        assert meta["languages"] == ["zh"]
        assert meta["training_data"]["bundled"]["params"]["exclude_domains"] == ["book"]
    transformer = versions[1].metadata
    assert transformer["curves"]["x"] == "epoch" and transformer["curves"]["val_loss"]
    live = registry.live("sentiment")
    assert live is not None
    assert live.metadata["family"] == "ngram"  # the family chosen by leave-one-domain-out
    assert live.metadata["config"]["classifier"] == "svm" and live.metadata["config"]["class_weight"] == "balanced"
    model = load_classifier(live.path)
    assert model.predict_proba(["很好", "太差"]).shape == (2, 2)
    # the training set is reproducible from the metadata, and holds no book review (the demo's domain)
    texts, labels = parent_training_data(versions[0].metadata)
    assert data_hash(zip(texts, labels, strict=True)) == versions[0].metadata["data_hash"]
    assert len(texts) == versions[0].metadata["data"]["n_train"] and all(review_domain(t) != "book" for t in texts)

    call_command("bootstrap_models", "sentiment")  # idempotent: nothing new
    assert len(registry.versions("sentiment")) == 3
    assert "skipping" in capsys.readouterr().out


def test_live_candidate_is_the_chosen_family_or_the_best_in_domain() -> None:
    from sentiment.bootstrap import live_candidate
    from slm.classify.pipeline import Candidate

    def cand(family: str, f1: float) -> Candidate:
        return Candidate(family, None, {"macro_f1": f1}, {}, {}, {}, "")

    cands = [cand("ngram", 0.80), cand("transformer", 0.78), cand("ensemble", 0.82)]
    assert live_candidate(cands, "ngram").family == "ngram"
    assert live_candidate(cands, "").family == "ensemble"  # in-domain best
    assert live_candidate(cands[1:], "ngram").family == "ensemble"  # chosen family not built
