"""Agreement metrics vs scikit-learn and hand-checked Fleiss examples."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from sklearn.metrics import cohen_kappa_score

from slm import agreement as G

# Wikipedia's Fleiss' kappa worked example: 10 items, 14 raters, 5 categories -> 0.210
WIKI_COUNTS = [
    [0, 0, 0, 0, 14],
    [0, 2, 6, 4, 2],
    [0, 0, 3, 5, 6],
    [0, 3, 9, 2, 0],
    [2, 2, 8, 1, 1],
    [7, 7, 0, 0, 0],
    [3, 2, 6, 3, 0],
    [2, 5, 3, 2, 2],
    [6, 5, 2, 1, 0],
    [0, 2, 2, 3, 7],
]


def test_cohen_matches_sklearn_random_cases() -> None:
    rng = np.random.default_rng(0)
    for trial in range(20):
        k = 2 + trial % 4
        a = rng.integers(0, k, 60)
        b = np.where(rng.random(60) < 0.5, a, rng.integers(0, k, 60))
        labs_a = [f"l{x}" for x in a]
        labs_b = [f"l{x}" for x in b]
        assert G.cohen_kappa(labs_a, labs_b) == pytest.approx(cohen_kappa_score(labs_a, labs_b), abs=1e-12)


def test_cohen_missing_and_degenerate() -> None:
    a = ["pos", "neg", None, "pos", "neg", "pos"]
    b = ["pos", "pos", "neg", None, "neg", "pos"]
    assert G.cohen_kappa(a, b) == pytest.approx(
        cohen_kappa_score(["pos", "neg", "neg", "pos"], ["pos", "pos", "neg", "pos"])
    )
    assert G.cohen_kappa(["a", "a"], ["a", "a"]) == 1.0  # sklearn gives nan here
    assert math.isnan(G.cohen_kappa([None], ["a"]))
    assert G.cohen_kappa(["a", "b"], ["b", "a"]) == pytest.approx(-1.0)
    with pytest.raises(ValueError):
        G.cohen_kappa(["a"], ["a", "b"])
    with pytest.raises(ValueError, match="not in labels"):
        G.cohen_kappa(["a", "c"], ["a", "a"], labels=["a", "b"])


def test_fleiss_wikipedia_example() -> None:
    assert G.fleiss_kappa_counts(WIKI_COUNTS) == pytest.approx(0.20993, abs=1e-5)
    assert round(G.fleiss_kappa_counts(WIKI_COUNTS), 3) == 0.210
    # the same data as a ratings table (rows = items, columns = raters)
    table = [[c for c, n in enumerate(row) for _ in range(n)] for row in WIKI_COUNTS]
    assert G.fleiss_kappa(table) == pytest.approx(0.20993, abs=1e-5)


def test_fleiss_hand_checked_small() -> None:
    # 3 items x 3 raters, labels a/b: P_i = [1, 1/3, 1/3] -> P_bar = 5/9; p_a = 4/9, p_b = 5/9 -> P_e = 41/81
    table = [["a", "a", "a"], ["a", "b", "b"], ["b", "b", "a"]]
    expected = (5 / 9 - 41 / 81) / (1 - 41 / 81)
    assert G.fleiss_kappa(table) == pytest.approx(expected)
    assert G.fleiss_kappa([["a", "a"], ["b", "b"]]) == pytest.approx(1.0)
    # for two raters and complete data Fleiss equals Scott's pi (hand formula)
    a = ["x", "y", "x", "x", "y", "x"]
    b = ["x", "y", "y", "x", "x", "x"]
    po = np.mean([u == v for u, v in zip(a, b, strict=True)])
    p_x = (a + b).count("x") / 12
    pe = p_x**2 + (1 - p_x) ** 2
    assert G.fleiss_kappa(list(zip(a, b, strict=True))) == pytest.approx((po - pe) / (1 - pe))


def test_fleiss_missing_ratings() -> None:
    full = [["a", "a", "b"], ["b", "b", "b"], ["a", "b", "a"], ["a", "a", "a"]]
    with_missing = [row + [None] for row in full] + [["a", None, None, None]]  # singleton item ignored
    assert G.fleiss_kappa(with_missing) == pytest.approx(G.fleiss_kappa(full))
    # unequal raters per item: per-item P_i over its own raters (hand computation)
    ragged = [["a", "a", None], ["a", "b", "b"], ["b", "b", None]]
    p_i = [1.0, 1 / 3, 1.0]
    p_a = 3 / 7
    pe = p_a**2 + (1 - p_a) ** 2
    assert G.fleiss_kappa(ragged) == pytest.approx((np.mean(p_i) - pe) / (1 - pe))
    assert math.isnan(G.fleiss_kappa([["a", None], [None, "b"]]))
    with pytest.raises(ValueError):
        G.fleiss_kappa_counts([[1, -1]])


def test_pairwise_and_per_annotator() -> None:
    anns = [
        (1, "ann", "pos"), (1, "bob", "pos"), (1, "cat", "neg"),
        (2, "ann", "neg"), (2, "bob", "neg"), (2, "cat", "neg"),
        (3, "ann", "pos"), (3, "bob", "neg"),
        (4, "ann", "neg"), (4, "cat", "neg"),
        (5, "ann", "pos"),
    ]  # fmt: skip
    pairs = {(p["a"], p["b"]): p for p in G.pairwise_kappa(anns)}
    assert pairs[("ann", "bob")]["n"] == 3
    assert pairs[("ann", "bob")]["kappa"] == pytest.approx(
        cohen_kappa_score(["pos", "neg", "pos"], ["pos", "neg", "neg"])
    )
    assert pairs[("ann", "cat")]["agreement"] == pytest.approx(2 / 3)
    per = G.annotator_agreement(anns)
    # ann's pooled pairs: item1 (pos,pos),(pos,neg); item2 (neg,neg)x2; item3 (pos,neg); item4 (neg,neg)
    own = ["pos", "pos", "neg", "neg", "pos", "neg"]
    oth = ["pos", "neg", "neg", "neg", "neg", "neg"]
    assert per["ann"]["n_items"] == 4 and per["ann"]["n_pairs"] == 6
    assert per["ann"]["agreement_vs_others"] == pytest.approx(4 / 6)
    assert per["ann"]["kappa_vs_others"] == pytest.approx(cohen_kappa_score(own, oth))
    acc = G.gold_accuracy(anns, {1: "pos", 3: "neg", 99: "pos"})
    assert acc["ann"] == {"n": 2, "correct": 1, "accuracy": 0.5}
    assert acc["bob"]["accuracy"] == 1.0 and acc["cat"]["accuracy"] == 0.0


def test_summary_is_json_and_consistent() -> None:
    anns = [(i, a, "pos" if (i + (a == "z")) % 3 else "neg") for i in range(30) for a in ("x", "y", "z")]
    s = G.agreement_summary(anns, labels=["neg", "pos"], gold={0: "neg", 1: "pos"})
    json.dumps(s)
    table = [[lab for (it, _, lab) in anns if it == i] for i in range(30)]
    assert s["fleiss_kappa"] == pytest.approx(G.fleiss_kappa(table))
    assert s["n_overlap_items"] == 30 and len(s["pairs"]) == 3
    assert set(s["per_annotator"]) == {"x", "y", "z"} and "gold_accuracy" in s["per_annotator"]["x"]
    empty = G.agreement_summary([(1, "x", "pos")])
    assert empty["fleiss_kappa"] is None and empty["n_overlap_items"] == 0
