"""N-gram family: training, probabilities, save/load without pickle, and the tiny test version."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from slm.classify.base import load_classifier
from slm.classify.ngram import NgramClassifier, NgramConfig
from slm.classify.testing import make_tiny_version, tiny_dataset
from slm.registry import Registry

SEPARABLE_POS = [f"good great {w} 好 开心 {i}" for i, w in enumerate("abcdefghijklmnopqrst")]
SEPARABLE_NEG = [f"bad awful {w} 差 难过 {i}" for i, w in enumerate("abcdefghijklmnopqrst")]


@pytest.mark.parametrize("classifier", ["nblr", "logreg", "svm"])
def test_ngram_learns_separable_data(classifier: str) -> None:
    texts = SEPARABLE_POS + SEPARABLE_NEG
    labels = ["pos"] * 20 + ["neg"] * 20
    model = NgramClassifier.train(texts, labels, NgramConfig(classifier=classifier, min_df=1))
    assert model.labels == ["neg", "pos"]
    probs = model.predict_proba(["good great 好", "bad awful 差"])
    assert probs.shape == (2, 2)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    assert model.predict(["good great 好", "bad awful 差"]) == ["pos", "neg"]
    assert probs[0, 1] > 0.5 and probs[1, 0] > 0.5


def test_ngram_multiclass_and_label_order() -> None:
    texts = [f"{w} item {i}" for w in ("red", "green", "blue") for i in range(12)]
    labels = [w for w in ("red", "green", "blue") for _ in range(12)]
    model = NgramClassifier.train(texts, labels, NgramConfig(min_df=1), label_order=["red", "green", "blue"])
    assert model.labels == ["red", "green", "blue"]
    assert model.output == "ovr"
    assert model.predict(["red thing", "blue thing", "green thing"]) == ["red", "blue", "green"]
    with pytest.raises(ValueError, match="not in label_order"):
        NgramClassifier.train(texts, labels, NgramConfig(min_df=1), label_order=["red", "green"])


def test_ngram_bad_input() -> None:
    with pytest.raises(ValueError):
        NgramClassifier.train(["a", "b"], ["x"], NgramConfig())
    with pytest.raises(ValueError, match="only one label"):
        NgramClassifier.train(["aa", "bb"], ["x", "x"], NgramConfig(), label_order=["x", "y"])
    with pytest.raises(ValueError):
        NgramConfig(classifier="forest")


def test_ngram_save_load_round_trip_without_pickle(tmp_path: Path) -> None:
    texts, labels = tiny_dataset()
    model = NgramClassifier.train(texts, labels, NgramConfig(min_df=1))
    model.save(tmp_path)
    (tmp_path / "metadata.json").write_text(json.dumps({"family": "ngram"}))
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "config.json",
        "metadata.json",
        "model.safetensors",
        "vocab.json",
    ]
    for p in tmp_path.iterdir():
        assert b"\x80\x04" not in p.read_bytes()[:2]  # no pickle header anywhere
    loaded = load_classifier(tmp_path)
    assert isinstance(loaded, NgramClassifier)
    probe = ["非常好", "太差了", "great", "<b>terrible</b>", ""]
    np.testing.assert_array_equal(loaded.predict_proba(probe), model.predict_proba(probe))
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["id2label"] == {"0": "negative", "1": "positive"}
    assert loaded.predict_proba([]).shape == (0, 2)


def test_make_tiny_version_is_fast_and_complete(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "reg")
    started = time.perf_counter()
    mv = make_tiny_version(reg)
    assert time.perf_counter() - started < 1.0
    assert mv.ref == "sentiment@v0001"
    assert reg.live_version("sentiment") == "v0001"
    meta = mv.metadata
    assert meta["family"] == "ngram" and meta["labels"] == ["negative", "positive"]
    for key in ("accuracy", "macro_f1", "per_class", "confusion_matrix", "ece"):
        assert key in meta["metrics"]
    assert meta["data_hash"] and meta["config"]["family"] == "ngram" and meta["curves"]["x"] == "train_fraction"
    model = load_classifier(mv.path)
    assert model.labels == ["negative", "positive"]
    probs = model.predict_proba(["太好了，很满意", "This is great", "太差了，很失望", "awful, refund"])
    assert list(probs.argmax(axis=1)) == [1, 1, 0, 0]

    mv3 = make_tiny_version(reg, name="topics", labels=("neg", "neu", "pos"), promote=False)
    assert reg.live_version("topics") is None
    assert load_classifier(mv3.path).predict_proba(["x"]).shape == (1, 3)


def test_ensemble_round_trip(tmp_path: Path) -> None:
    from slm.classify.ensemble import EnsembleClassifier

    texts, labels = tiny_dataset()
    a = NgramClassifier.train(texts, labels, NgramConfig(min_df=1, word_ngram=None))
    b = NgramClassifier.train(texts, labels, NgramConfig(min_df=1, char_ngram=None, classifier="logreg"))
    ens = EnsembleClassifier([a, b], [3, 1])
    probe = ["非常好", "太差了", "great"]
    np.testing.assert_allclose(
        ens.predict_proba(probe), 0.75 * a.predict_proba(probe) + 0.25 * b.predict_proba(probe), rtol=1e-5
    )
    ens.save(tmp_path)
    (tmp_path / "metadata.json").write_text(json.dumps({"family": "ensemble"}))
    loaded = load_classifier(tmp_path)
    np.testing.assert_allclose(loaded.predict_proba(probe), ens.predict_proba(probe), rtol=1e-6)
    with pytest.raises(ValueError):
        EnsembleClassifier([a, b], [1])


@pytest.mark.parametrize("classifier", ["nblr", "logreg", "svm"])
def test_sample_weight_pulls_towards_heavy_rows(classifier: str) -> None:
    texts = SEPARABLE_POS + SEPARABLE_NEG + ["good great 差 q"] * 2
    labels = ["pos"] * 20 + ["neg"] * 20 + ["neg", "pos"]  # the same text with both labels
    config = NgramConfig(classifier=classifier, min_df=1, calibrate="none")
    neg_heavy = NgramClassifier.train(texts, labels, config, sample_weight=[1.0] * 40 + [30.0, 1.0])
    pos_heavy = NgramClassifier.train(texts, labels, config, sample_weight=[1.0] * 40 + [1.0, 30.0])
    p_neg = neg_heavy.predict_proba(["good great 差 q"])[0, 0]
    p_pos = pos_heavy.predict_proba(["good great 差 q"])[0, 0]
    assert p_neg > 0.5 > p_pos
    assert neg_heavy.train_info["weighted"] and neg_heavy.predict(["good great 好", "bad awful 差"]) == ["pos", "neg"]
    # all-equal weights change nothing (the C of the fit is per unit weight)
    plain = NgramClassifier.train(texts[:40], labels[:40], config)
    ones = NgramClassifier.train(texts[:40], labels[:40], config, sample_weight=np.ones(40))
    np.testing.assert_allclose(plain.weight, ones.weight, atol=1e-4)


def test_sample_weight_is_validated() -> None:
    texts = SEPARABLE_POS[:3] + SEPARABLE_NEG[:3]
    labels = ["pos"] * 3 + ["neg"] * 3
    config = NgramConfig(min_df=1)
    with pytest.raises(ValueError, match="6 texts but 5 sample weights"):
        NgramClassifier.train(texts, labels, config, sample_weight=[1.0] * 5)
    with pytest.raises(ValueError, match="finite and non-negative"):
        NgramClassifier.train(texts, labels, config, sample_weight=[1.0] * 5 + [-1.0])
    with pytest.raises(ValueError, match="only one label"):
        NgramClassifier.train(texts, labels, config, sample_weight=[1.0] * 3 + [0.0] * 3)


def test_balanced_class_weight_removes_the_majority_bias() -> None:
    texts = [f"还行 一般 好 {i}" for i in range(20)] + [f"还行 一般 差 {i}" for i in range(4)]
    labels = ["pos"] * 20 + ["neg"] * 4  # 5:1
    neutral = ["还行 一般"]  # only words both labels share: the prior decides
    for classifier in ("nblr", "svm", "logreg"):
        plain = NgramClassifier.train(texts, labels, NgramConfig(classifier=classifier, min_df=1, calibrate="none"))
        balanced = NgramClassifier.train(
            texts, labels, NgramConfig(classifier=classifier, min_df=1, calibrate="none", class_weight="balanced")
        )
        assert balanced.predict_proba(neutral)[0, 0] > plain.predict_proba(neutral)[0, 0] + 0.015  # P(neg) up
        assert balanced.predict(["好", "差"]) == ["pos", "neg"]
    assert NgramConfig.from_dict(NgramConfig(class_weight="balanced").to_dict()).class_weight == "balanced"
    with pytest.raises(ValueError, match="unknown class weight"):
        NgramConfig(class_weight="inverse")
