"""Metrics against direct computation."""

from __future__ import annotations

import numpy as np
import pytest

from slm.classify.metrics import compute_metrics, expected_calibration_error, headline


def test_metrics_match_direct_computation() -> None:
    y = np.array([0, 0, 1, 1, 2, 2, 2, 1])
    pred = np.array([0, 1, 1, 1, 2, 0, 2, 1])
    m = compute_metrics(y, y_pred=pred, labels=["a", "b", "c"])
    assert m["accuracy"] == pytest.approx(6 / 8)
    cm = np.zeros((3, 3), int)
    for t, p in zip(y, pred, strict=True):
        cm[t, p] += 1
    assert m["confusion_matrix"] == cm.tolist()
    f1s = []
    for c in range(3):
        tp = cm[c, c]
        prec = tp / cm[:, c].sum()
        rec = tp / cm[c, :].sum()
        f1 = 2 * prec * rec / (prec + rec)
        f1s.append(f1)
        assert m["per_class"]["abc"[c]]["precision"] == pytest.approx(prec)
        assert m["per_class"]["abc"[c]]["recall"] == pytest.approx(rec)
        assert m["per_class"]["abc"[c]]["support"] == cm[c, :].sum()
    assert m["macro_f1"] == pytest.approx(np.mean(f1s))
    assert "ece" not in m


def test_ece_direct() -> None:
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.4, 0.6]])
    y = [0, 1, 1, 1]
    # 2 bins: conf in (0.5,1] for all four -> one bin: acc 3/4, mean conf 0.75 -> ECE 0
    assert expected_calibration_error(probs, y, n_bins=2) == pytest.approx(0.0)
    # 10 bins: (0.8,0.9]: 1 correct conf .9 ; (0.7,0.8]: wrong conf .8 and correct .7... computed by hand
    bins = {0.9: [(1, 0.9)], 0.8: [(0, 0.8)], 0.7: [(1, 0.7)], 0.6: [(1, 0.6)]}
    direct = sum(len(v) / 4 * abs(np.mean([c for c, _ in v]) - np.mean([p for _, p in v])) for v in bins.values())
    assert expected_calibration_error(probs, y, n_bins=10) == pytest.approx(direct)
    m = compute_metrics(y, probs, labels=["n", "p"])
    assert m["accuracy"] == 0.75 and "ece" in m and "acc 0.750" in headline(m)


def test_metrics_need_predictions() -> None:
    with pytest.raises(ValueError):
        compute_metrics([0, 1], labels=["a", "b"])
