"""Inter-annotator agreement in pure NumPy: Cohen's kappa (two raters), Fleiss' kappa (k raters, missing
ratings allowed), pairwise and per-annotator agreement, and accuracy against gold labels.

Annotations are triples `(item_id, annotator_id, label)`; ids and labels are any hashable values.
Missing ratings are `None` (or simply absent triples).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Hashable, Iterable, Mapping, Sequence
from itertools import combinations
from typing import Any

import numpy as np

Annotation = tuple[Hashable, Hashable, Hashable]


def _codes(values: Sequence[Any], labels: Sequence[Any] | None) -> tuple[np.ndarray, list[Any]]:
    cats = list(labels) if labels is not None else sorted({v for v in values if v is not None}, key=repr)
    index = {c: i for i, c in enumerate(cats)}
    try:
        return np.array([index[v] for v in values], dtype=np.int64), cats
    except KeyError as exc:
        raise ValueError(f"label {exc.args[0]!r} is not in labels={cats}") from None


def cohen_kappa(a: Sequence[Any], b: Sequence[Any], *, labels: Sequence[Any] | None = None) -> float:
    """Cohen's kappa between two raters over the same items: (p_o - p_e) / (1 - p_e).

    Items where either rating is None are skipped. Equals sklearn.metrics.cohen_kappa_score, except
    that when chance agreement is 1 (both raters used one and the same label throughout) this returns
    1.0 instead of nan. No common items -> nan."""
    if len(a) != len(b):
        raise ValueError(f"the two raters rated different numbers of items ({len(a)} vs {len(b)})")
    pairs = [(x, y) for x, y in zip(a, b, strict=True) if x is not None and y is not None]
    if not pairs:
        return float("nan")
    xs, ys = zip(*pairs, strict=True)
    ca, cats = _codes(list(xs) + list(ys), labels)
    k = len(cats)
    n = len(pairs)
    cm = np.zeros((k, k), dtype=np.float64)
    np.add.at(cm, (ca[:n], ca[n:]), 1.0)
    po = np.trace(cm) / n
    pe = float((cm.sum(axis=1) / n) @ (cm.sum(axis=0) / n))
    if pe >= 1.0 - 1e-12:
        return 1.0 if po >= 1.0 - 1e-12 else 0.0
    return float((po - pe) / (1.0 - pe))


def fleiss_kappa_counts(counts: np.ndarray | Sequence[Sequence[int]]) -> float:
    """Fleiss' kappa from a count matrix (n_items, n_categories): counts[i, j] raters put item i in j.

    Items may have different numbers of raters (missing ratings): each item's agreement is
    P_i = (sum_j n_ij^2 - n_i) / (n_i (n_i - 1)) over its own n_i raters, P_bar is their mean over items
    with n_i >= 2, and p_j = sum_i n_ij / sum_i n_i. With a constant n_i this is Fleiss (1971) exactly.
    Returns nan with no item rated twice; 1.0 when P_e = 1 and every item is unanimous."""
    c = np.asarray(counts, dtype=np.float64)
    if c.ndim != 2:
        raise ValueError("counts must be a 2-D (n_items, n_categories) matrix")
    if (c < 0).any():
        raise ValueError("counts must be non-negative")
    n_i = c.sum(axis=1)
    keep = n_i >= 2
    if not keep.any():
        return float("nan")
    c, n_i = c[keep], n_i[keep]
    p_i = ((c**2).sum(axis=1) - n_i) / (n_i * (n_i - 1))
    p_bar = float(p_i.mean())
    p_j = c.sum(axis=0) / n_i.sum()
    p_e = float((p_j**2).sum())
    if p_e >= 1.0 - 1e-12:
        return 1.0 if p_bar >= 1.0 - 1e-12 else 0.0
    return (p_bar - p_e) / (1.0 - p_e)


def rating_counts(
    ratings: Sequence[Sequence[Any]], *, labels: Sequence[Any] | None = None
) -> tuple[np.ndarray, list[Any]]:
    """(n_items, n_categories) counts from a ratings table (rows = items, columns = raters, None = missing)."""
    flat = [v for row in ratings for v in row if v is not None]
    _, cats = _codes(flat, labels)
    index = {c: i for i, c in enumerate(cats)}
    counts = np.zeros((len(ratings), len(cats)), dtype=np.int64)
    for i, row in enumerate(ratings):
        for v in row:
            if v is not None:
                if v not in index:
                    raise ValueError(f"label {v!r} is not in labels={cats}")
                counts[i, index[v]] += 1
    return counts, cats


def fleiss_kappa(ratings: Sequence[Sequence[Any]], *, labels: Sequence[Any] | None = None) -> float:
    """Fleiss' kappa for a ratings table: rows = items, columns = raters, None = missing rating."""
    counts, _ = rating_counts(ratings, labels=labels)
    return fleiss_kappa_counts(counts)


def percent_agreement(counts: np.ndarray | Sequence[Sequence[int]]) -> float:
    """Mean share of agreeing rater pairs per item (items with >= 2 ratings); nan when none."""
    c = np.asarray(counts, dtype=np.float64)
    n_i = c.sum(axis=1)
    keep = n_i >= 2
    if not keep.any():
        return float("nan")
    c, n_i = c[keep], n_i[keep]
    return float((((c * (c - 1)).sum(axis=1)) / (n_i * (n_i - 1))).mean())


# ------------------------------------------------------------------------- annotation triples
def _by_item(annotations: Iterable[Annotation]) -> dict[Hashable, dict[Hashable, Hashable]]:
    """{item: {annotator: label}}; a later triple for the same (item, annotator) replaces the earlier one."""
    items: dict[Hashable, dict[Hashable, Hashable]] = defaultdict(dict)
    for item, annotator, label in annotations:
        if label is not None:
            items[item][annotator] = label
    return items


def pairwise_kappa(
    annotations: Iterable[Annotation], *, labels: Sequence[Any] | None = None, min_items: int = 1
) -> list[dict[str, Any]]:
    """Cohen's kappa for every annotator pair over the items both labelled:
    [{"a", "b", "n", "kappa", "agreement"}] (pairs with fewer than `min_items` shared items are left out)."""
    items = _by_item(annotations)
    shared: dict[tuple[Hashable, Hashable], list[tuple[Hashable, Hashable]]] = defaultdict(list)
    for votes in items.values():
        for a, b in combinations(sorted(votes, key=repr), 2):
            shared[(a, b)].append((votes[a], votes[b]))
    out = []
    for (a, b), pairs in sorted(shared.items(), key=lambda kv: (repr(kv[0][0]), repr(kv[0][1]))):
        if len(pairs) < min_items:
            continue
        xs = [p[0] for p in pairs]
        ys = [p[1] for p in pairs]
        out.append(
            {
                "a": a,
                "b": b,
                "n": len(pairs),
                "kappa": cohen_kappa(xs, ys, labels=labels),
                "agreement": float(np.mean([x == y for x, y in pairs])),
            }
        )
    return out


def annotator_agreement(
    annotations: Iterable[Annotation], *, labels: Sequence[Any] | None = None
) -> dict[Hashable, dict[str, Any]]:
    """Per annotator, on items someone else also labelled: {annotator: {"n_items", "n_pairs",
    "agreement_vs_others" (share of matching labels over all (own, other) pairs), "kappa_vs_others"
    (Cohen's kappa over those pooled pairs), "mean_pairwise_kappa" (mean over partner annotators)}}."""
    annotations = list(annotations)
    items = _by_item(annotations)
    pooled: dict[Hashable, tuple[list[Hashable], list[Hashable]]] = defaultdict(lambda: ([], []))
    n_items: dict[Hashable, int] = defaultdict(int)
    for votes in items.values():
        if len(votes) < 2:
            continue
        for who, own in votes.items():
            n_items[who] += 1
            for other, lab in votes.items():
                if other != who:
                    pooled[who][0].append(own)
                    pooled[who][1].append(lab)
    pair_k: dict[Hashable, list[float]] = defaultdict(list)
    for row in pairwise_kappa(annotations, labels=labels):
        if np.isfinite(row["kappa"]):
            pair_k[row["a"]].append(row["kappa"])
            pair_k[row["b"]].append(row["kappa"])
    out: dict[Hashable, dict[str, Any]] = {}
    for who, (own, others) in pooled.items():
        out[who] = {
            "n_items": n_items[who],
            "n_pairs": len(own),
            "agreement_vs_others": float(np.mean([x == y for x, y in zip(own, others, strict=True)])),
            "kappa_vs_others": cohen_kappa(own, others, labels=labels),
            "mean_pairwise_kappa": float(np.mean(pair_k[who])) if pair_k[who] else float("nan"),
        }
    return out


def gold_accuracy(
    annotations: Iterable[Annotation], gold: Mapping[Hashable, Hashable]
) -> dict[Hashable, dict[str, Any]]:
    """Per annotator accuracy on gold items: {annotator: {"n", "correct", "accuracy"}} (only annotators
    who labelled at least one gold item)."""
    stats: dict[Hashable, list[int]] = defaultdict(lambda: [0, 0])
    for item, who, label in annotations:
        if label is None or item not in gold or gold[item] is None:
            continue
        stats[who][0] += 1
        stats[who][1] += int(label == gold[item])
    return {who: {"n": n, "correct": c, "accuracy": c / n} for who, (n, c) in stats.items()}


def agreement_summary(
    annotations: Iterable[Annotation],
    *,
    labels: Sequence[Any] | None = None,
    gold: Mapping[Hashable, Hashable] | None = None,
) -> dict[str, Any]:
    """One JSON-friendly report for a project: overlap items, Fleiss' kappa over items with >= 2 labels,
    percent agreement, mean pairwise Cohen's kappa, the pairs, and per annotator agreement (+ gold accuracy).
    nan values (undefined kappas) are returned as None."""
    annotations = list(annotations)
    items = _by_item(annotations)
    overlap = [votes for votes in items.values() if len(votes) >= 2]
    table = [list(v.values()) for v in overlap]
    cats = list(labels) if labels is not None else sorted({lab for v in table for lab in v}, key=repr)
    counts, _ = rating_counts(table, labels=cats) if table else (np.zeros((0, len(cats))), cats)
    pairs = pairwise_kappa(annotations, labels=cats or None)
    per = annotator_agreement(annotations, labels=cats or None)
    acc = gold_accuracy(annotations, gold) if gold else {}
    per_annotator: dict[Any, dict[str, Any]] = {}
    for who in sorted(set(per) | set(acc), key=repr):
        row = dict(per.get(who, {"n_items": 0, "n_pairs": 0}))
        if who in acc:
            row["gold_n"] = acc[who]["n"]
            row["gold_accuracy"] = acc[who]["accuracy"]
        per_annotator[who] = _nan_to_none(row)
    finite = [p["kappa"] for p in pairs if np.isfinite(p["kappa"])]
    return _nan_to_none(
        {
            "n_items": len(items),
            "n_overlap_items": len(overlap),
            "fleiss_kappa": fleiss_kappa_counts(counts) if len(overlap) else float("nan"),
            "percent_agreement": percent_agreement(counts) if len(overlap) else float("nan"),
            "mean_pairwise_kappa": float(np.mean(finite)) if finite else float("nan"),
            "pairs": [_nan_to_none(p) for p in pairs],
            "per_annotator": per_annotator,
        }
    )


def _nan_to_none(d: dict[str, Any]) -> dict[str, Any]:
    return {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in d.items()}
