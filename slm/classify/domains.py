"""Leave-one-domain-out validation: how a classifier does on a domain it never saw in training.

An in-domain held-out split flatters a model that memorises domain words ("房间" in hotel complaints);
a user's project is usually a domain of its own. `leave_one_domain_out` trains on every domain but one
and scores the held-out one, for each domain in turn; the default sentiment model's family and settings
are chosen by its mean (bench/sentiment.py --only lodo).

`TfidfLogReg` is the plain reference every candidate is compared with: scikit-learn's TfidfVectorizer
over character 1-3-grams + LogisticRegression, all defaults except sublinear tf and max_iter.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from slm.classify.base import Classifier
from slm.classify.metrics import compute_metrics

Fit = Callable[[list[str], list[str], list[str]], Classifier]  # (texts, labels, label_order) -> model


class TfidfLogReg:
    """Reference model: TF-IDF char 1-3-grams + logistic regression (scikit-learn defaults, C=1)."""

    family = "tfidf_lr"

    def __init__(self, labels: Sequence[str], C: float = 1.0) -> None:
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline

        self.labels = [str(x) for x in labels]
        self.pipeline = make_pipeline(
            TfidfVectorizer(analyzer="char", ngram_range=(1, 3), sublinear_tf=True),
            LogisticRegression(C=C, max_iter=1000),
        )

    @classmethod
    def fit(cls, texts: list[str], labels: list[str], label_order: list[str]) -> TfidfLogReg:
        model = cls(label_order)
        index = {lab: i for i, lab in enumerate(model.labels)}
        model.pipeline.fit(texts, [index[y] for y in labels])
        return model

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), len(self.labels)), dtype=np.float32)
        if texts:
            clf = self.pipeline[-1]
            out[:, clf.classes_] = self.pipeline.predict_proba(list(texts))
        return out


def leave_one_domain_out(
    texts: Sequence[str],
    labels: Sequence[str],
    domains: Sequence[str],
    fits: dict[str, Fit],
    *,
    held_out: Sequence[str] | None = None,
    label_order: Sequence[str] | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, dict[str, dict[str, Any]]]:
    """{candidate: {held-out domain: metrics (+ "train_s", "n_train")}, plus "mean" over the domains}.

    For each domain in `held_out` (default: every domain present), every candidate in `fits` is trained
    on the texts of all OTHER domains and scored (compute_metrics) on that domain's texts."""
    if not (len(texts) == len(labels) == len(domains)):
        raise ValueError("texts, labels and domains must have the same length")
    names = [str(x) for x in (label_order or sorted(set(labels)))]
    index = {lab: i for i, lab in enumerate(names)}
    folds = list(held_out) if held_out is not None else sorted(set(domains))
    report = progress or (lambda _m: None)
    out: dict[str, dict[str, dict[str, Any]]] = {name: {} for name in fits}
    dom = np.asarray(domains)
    for fold in folds:
        test = np.flatnonzero(dom == fold)
        train = np.flatnonzero(dom != fold)
        if not len(test):
            raise ValueError(f"no texts in the held-out domain {fold!r}")
        tr_t, tr_y = [texts[i] for i in train], [labels[i] for i in train]
        te_t, te_y = [texts[i] for i in test], [index[labels[i]] for i in test]
        for name, fit in fits.items():
            started = time.perf_counter()
            model = fit(tr_t, tr_y, names)
            train_s = time.perf_counter() - started
            metrics = compute_metrics(te_y, model.predict_proba(te_t), labels=names)
            out[name][fold] = {**metrics, "n_train": len(train), "train_s": round(train_s, 2)}
            report(f"{fold}: {name} macro-F1 {metrics['macro_f1']:.4f} ({train_s:.0f}s)")
    for name, per in out.items():
        out[name]["mean"] = {
            key: float(np.mean([per[f][key] for f in folds])) for key in ("accuracy", "macro_f1") if folds
        }
    return out
