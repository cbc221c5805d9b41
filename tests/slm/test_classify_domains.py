"""Leave-one-domain-out validation and the TF-IDF + logistic regression reference."""

from __future__ import annotations

import numpy as np
import pytest

from slm.classify.domains import TfidfLogReg, leave_one_domain_out
from slm.classify.ngram import NgramClassifier, NgramConfig


def _data() -> tuple[list[str], list[str], list[str]]:
    texts, labels, domains = [], [], []
    for dom, (good, bad) in {"hotel": ("房间干净", "房间很脏"), "book": ("书很好看", "书很无聊")}.items():
        for i in range(12):
            texts += [f"{good} 很好 满意 {i}", f"{bad} 很差 失望 {i}"]
            labels += ["positive", "negative"]
            domains += [dom, dom]
    return texts, labels, domains


def test_each_domain_is_scored_by_models_that_never_saw_it() -> None:
    texts, labels, domains = _data()
    seen: list[set[str]] = []

    def fit(t: list[str], y: list[str], names: list[str]) -> NgramClassifier:
        seen.append(set(t))
        return NgramClassifier.train(t, y, NgramConfig(min_df=1), label_order=names)

    res = leave_one_domain_out(texts, labels, domains, {"ngram": fit, "ref": TfidfLogReg.fit})
    assert set(res["ngram"]) == {"book", "hotel", "mean"}
    book = {t for t, d in zip(texts, domains, strict=True) if d == "book"}
    assert not seen[0] & book and seen[0] and not seen[1] & (set(texts) - book)  # folds: book, then hotel
    for name in ("ngram", "ref"):
        for fold in ("book", "hotel"):
            m = res[name][fold]
            assert m["n"] == 24 and m["n_train"] == 24 and m["macro_f1"] > 0.9  # 很好/很差 carry over
        assert res[name]["mean"]["macro_f1"] == pytest.approx(
            np.mean([res[name]["book"]["macro_f1"], res[name]["hotel"]["macro_f1"]])
        )
    with pytest.raises(ValueError, match="no texts in the held-out domain 'films'"):
        leave_one_domain_out(texts, labels, domains, {"ref": TfidfLogReg.fit}, held_out=["films"])


def test_reference_probabilities_follow_the_label_order() -> None:
    texts, labels, _ = _data()
    model = TfidfLogReg.fit(texts, labels, ["positive", "negative"])
    probs = model.predict_proba(["房间干净 很好 满意", "书很无聊 很差 失望"])
    assert probs.shape == (2, 2) and model.labels == ["positive", "negative"]
    assert probs[0, 0] > 0.5 and probs[1, 1] > 0.5
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
