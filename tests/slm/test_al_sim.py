"""Active-learning simulation on a small synthetic labelled dataset."""

from __future__ import annotations

import json

import numpy as np
import pytest

from slm import al_sim


def _toy(n: int = 400, seed: int = 0) -> tuple[list[str], list[str]]:
    """Two-class texts whose label is carried by a few cue words among shared noise words."""
    rng = np.random.default_rng(seed)
    cues = {"pos": ["good", "great", "nice", "love"], "neg": ["bad", "awful", "poor", "hate"]}
    noise = [f"w{i}" for i in range(60)]
    texts, labels = [], []
    for i in range(n):
        lab = "pos" if i % 2 else "neg"
        words = list(rng.choice(noise, size=6))
        if rng.random() < 0.9:
            words.append(str(rng.choice(cues[lab])))
        rng.shuffle(words)
        texts.append(" ".join(words))
        labels.append(lab)
    return texts, labels


def test_simulate_curves_shape_progress_and_json() -> None:
    texts, labels = _toy()
    seen: list[float] = []
    curves = al_sim.simulate(
        texts,
        labels,
        strategies=["entropy", "margin", "least_confidence", "bald", "kcenter", "hybrid"],
        budget=80,
        initial=10,
        batch_size=10,
        progress=lambda f, _m: seen.append(f),
    )
    assert list(curves) == ["random", "entropy", "margin", "least_confidence", "bald", "kcenter", "hybrid"]
    for name, curve in curves.items():
        ns = [n for n, _ in curve]
        assert ns == list(range(10, 81, 10)), name
        assert all(0.0 <= f <= 1.0 for _, f in curve)
    # same seed set for everyone -> same first point
    assert len({curve[0][1] for curve in curves.values()}) == 1
    assert seen and seen[-1] == 1.0 and all(b >= a for a, b in zip(seen, seen[1:], strict=False))
    json.dumps(al_sim.curves_to_json(curves))
    # the model learns: final F1 clearly above chance for random and entropy
    assert curves["random"][-1][1] > 0.7 and curves["entropy"][-1][1] > 0.7


def test_simulate_deterministic_and_explicit_gold() -> None:
    texts, labels = _toy(200, seed=1)
    kw = dict(strategies=["entropy"], budget=40, initial=10, batch_size=10, seed=3)
    assert al_sim.simulate(texts, labels, **kw) == al_sim.simulate(texts, labels, **kw)
    tt, tl = _toy(60, seed=2)
    curves = al_sim.simulate(texts, labels, test_texts=tt, test_labels=tl, repeats=2, **kw)
    assert [n for n, _ in curves["entropy"]] == [10, 20, 30, 40]


def test_simulate_bad_input() -> None:
    texts, labels = _toy(50)
    with pytest.raises(ValueError, match="unknown query strategy"):
        al_sim.simulate(texts, labels, strategies=["nope"])
    with pytest.raises(ValueError, match="labels"):
        al_sim.simulate(texts, labels[:-1])
    with pytest.raises(ValueError, match="two labels"):
        al_sim.simulate(texts, ["pos"] * len(texts))
    with pytest.raises(ValueError, match="budget"):
        al_sim.simulate(texts, labels, budget=5, initial=10)
    with pytest.raises(ValueError, match="simulation model"):
        al_sim.simulate(texts, labels, model="nope")
    with pytest.raises(ValueError, match="bald_source"):
        al_sim.simulate(texts, labels, bald_source="nope")


def test_bald_sources() -> None:
    texts, labels = _toy(150, seed=5)
    kw = dict(strategies=["bald"], budget=30, initial=10, batch_size=10, bald_T=3)
    laplace = al_sim.simulate(texts, labels, **kw)
    boot = al_sim.simulate(texts, labels, bald_source="bootstrap", **kw)
    assert [n for n, _ in laplace["bald"]] == [n for n, _ in boot["bald"]] == [10, 20, 30]


def test_cancel_through_progress() -> None:
    texts, labels = _toy(100)

    def cancel(_f: float, _m: str) -> None:
        raise RuntimeError("cancelled")

    with pytest.raises(RuntimeError, match="cancelled"):
        al_sim.simulate(texts, labels, budget=30, initial=10, batch_size=10, progress=cancel)


def test_seed_set_reaches_min_per_label() -> None:
    y = np.array([0] * 50 + [1] * 3)
    order = np.arange(53)
    seed = al_sim._seed_set(order, y, initial=5, min_per_label=2, n_classes=2)
    assert np.bincount(y[seed], minlength=2)[1] >= 2 and seed.size == 52


def test_labels_to_reach_and_savings() -> None:
    curves = {"random": [(10, 0.5), (20, 0.6), (30, 0.7), (40, 0.8)], "entropy": [(10, 0.5), (20, 0.7), (30, 0.85)]}
    assert al_sim.labels_to_reach(curves["entropy"], 0.8) == pytest.approx(20 + 10 * (0.1 / 0.15))
    assert al_sim.labels_to_reach(curves["random"], 0.9) is None
    assert al_sim.labels_to_reach(curves["random"], 0.4) == 10.0
    s = al_sim.label_savings(curves)
    assert s["random"]["saving"] == 0.0 and s["random"]["labels"] == 40.0
    noisy = {"random": [(10, 0.5), (20, 0.82), (40, 0.8)], "entropy": [(10, 0.5), (20, 0.81)]}
    assert al_sim.label_savings(noisy)["random"]["labels"] == 40.0  # the reference's own budget
    assert s["entropy"]["saving"] == pytest.approx(1 - (20 + 10 * (0.1 / 0.15)) / 40)
    assert s["entropy"]["target_f1"] == 0.8


def test_ngram_model_adapter() -> None:
    pytest.importorskip("slm.classify.ngram")
    texts, labels = _toy(120, seed=4)
    curves = al_sim.simulate(texts, labels, strategies=["margin"], budget=30, initial=10, batch_size=10, model="ngram")
    assert [n for n, _ in curves["margin"]] == [10, 20, 30]
