"""Classification metrics (scikit-learn where it has them): accuracy, macro-F1, per-class P/R/F1,
confusion matrix, and expected calibration error (ECE), as one JSON-serialisable dict."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support


def expected_calibration_error(probs: np.ndarray, y_true: Sequence[int], n_bins: int = 15) -> float:
    """Top-label ECE with equal-width confidence bins: sum_b |B|/n * |acc(B) - conf(B)|."""
    probs = np.asarray(probs, dtype=np.float64)
    y = np.asarray(y_true)
    if len(y) == 0:
        return 0.0
    conf = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == y).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # bin i holds (edges[i], edges[i+1]]; confidence 0 goes to the first bin
    idx = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        mask = idx == b
        if mask.any():
            ece += mask.mean() * abs(correct[mask].mean() - conf[mask].mean())
    return float(ece)


def compute_metrics(
    y_true: Sequence[int],
    probs: np.ndarray | None = None,
    *,
    labels: Sequence[str],
    y_pred: Sequence[int] | None = None,
    n_bins: int = 15,
) -> dict[str, Any]:
    """Metrics from integer labels and either class probabilities (n, C) or predictions.

    Returns {"n", "accuracy", "macro_f1", "weighted_f1", "per_class": {label: {precision, recall,
    f1, support}}, "confusion_matrix": [[...]] (rows = true, cols = predicted, in `labels` order),
    "labels", "ece" (only with probs)}.
    """
    y = np.asarray(y_true, dtype=np.int64)
    if probs is not None:
        probs = np.asarray(probs)
        pred = probs.argmax(axis=1) if len(y) else np.zeros(0, dtype=np.int64)
    elif y_pred is not None:
        pred = np.asarray(y_pred, dtype=np.int64)
    else:
        raise ValueError("compute_metrics needs probs or y_pred")
    ids = list(range(len(labels)))
    p, r, f, s = precision_recall_fscore_support(y, pred, labels=ids, zero_division=0)
    out: dict[str, Any] = {
        "n": int(len(y)),
        "accuracy": float(accuracy_score(y, pred)) if len(y) else 0.0,
        "macro_f1": float(f1_score(y, pred, labels=ids, average="macro", zero_division=0)) if len(y) else 0.0,
        "weighted_f1": float(f1_score(y, pred, labels=ids, average="weighted", zero_division=0)) if len(y) else 0.0,
        "per_class": {
            str(lab): {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
            for i, lab in enumerate(labels)
        },
        "confusion_matrix": confusion_matrix(y, pred, labels=ids).tolist() if len(y) else [],
        "labels": [str(x) for x in labels],
    }
    if probs is not None:
        out["ece"] = expected_calibration_error(probs, y, n_bins=n_bins)
    return out


def headline(metrics: dict[str, Any]) -> str:
    """'acc 0.871 · macro-F1 0.869 · ECE 0.031' for logs and command output."""
    parts = [f"acc {metrics.get('accuracy', 0):.3f}", f"macro-F1 {metrics.get('macro_f1', 0):.3f}"]
    if "ece" in metrics:
        parts.append(f"ECE {metrics['ece']:.3f}")
    return " · ".join(parts)
