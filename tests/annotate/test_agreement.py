"""Agreement figures on the project page come from slm.agreement and match scikit-learn / the textbook
Fleiss formula; disagreements go to the review queue; gold measures annotator accuracy."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import cohen_kappa_score

from annotate import selectors, services
from annotate.models import Item
from slmsite.services import user_create
from tests.annotate.conftest import make_project

pytestmark = pytest.mark.django_db


def _fleiss(rows: list[list[str]], cats: list[str]) -> float:
    counts = np.array([[r.count(c) for c in cats] for r in rows], dtype=float)
    n = counts.sum(axis=1)[0]
    p_j = counts.sum(axis=0) / counts.sum()
    p_i = ((counts * (counts - 1)).sum(axis=1)) / (n * (n - 1))
    return float((p_i.mean() - (p_j**2).sum()) / (1 - (p_j**2).sum()))


def test_kappas_match_sklearn_and_fleiss_formula():
    project = make_project(overlap_k=3, overlap_fraction=1.0, labels=["negative", "positive", "neutral"])
    users = [user_create(username=f"r{i}", password="pw-123456", annotator=True) for i in range(3)]
    rng = np.random.default_rng(0)
    cats = list(project.labels)
    truth = {it.pk: cats[rng.integers(3)] for it in Item.objects.filter(project=project)}
    given: dict[int, dict[int, str]] = {u.pk: {} for u in users}
    for u, noise in zip(users, (0.1, 0.3, 0.5), strict=True):
        while (a := services.lease_next(project=project, user=u)) is not None:
            lab = truth[a.item_id] if rng.random() > noise else cats[rng.integers(3)]
            services.label_submit(project=project, user=u, item_id=a.item_id, label=lab)
            given[u.pk][a.item_id] = lab
    summary = selectors.agreement_summary(project)
    assert len(summary["pairs"]) == 3
    for pair in summary["pairs"]:
        ua = next(u for u in users if u.username == pair["a"])
        ub = next(u for u in users if u.username == pair["b"])
        ids = sorted(set(given[ua.pk]) & set(given[ub.pk]))
        expected = cohen_kappa_score([given[ua.pk][i] for i in ids], [given[ub.pk][i] for i in ids])
        assert pair["kappa"] == pytest.approx(expected, abs=1e-4)
    rows = [[given[u.pk][i] for u in users] for i in sorted(truth)]
    assert summary["fleiss"] == pytest.approx(_fleiss(rows, cats), abs=1e-4)
    assert summary["fleiss_items"] == len(truth)
    assert {a["annotator"] for a in summary["annotators"]} == {"r0", "r1", "r2"}
    # every item with a disagreement is queued for adjudication
    disputed = {d["item"].pk for d in selectors.disputed_items(project)}
    assert disputed == {i for i in truth if len({given[u.pk][i] for u in users}) > 1}


def test_gold_accuracy_and_gold_never_trained_on(annotator_user, admin_user):
    project = make_project(gold_fraction=0.5)
    gold_items = list(Item.objects.filter(project=project, is_gold=True))
    assert gold_items
    while (a := services.lease_next(project=project, user=annotator_user)) is not None:
        services.label_submit(project=project, user=annotator_user, item_id=a.item_id, label="positive")
    summary = selectors.agreement_summary(project)
    row = summary["annotators"][0]
    expected = sum(it.gold_label == "positive" for it in gold_items) / len(gold_items)
    assert row["gold_n"] == len(gold_items) and row["gold_accuracy"] == pytest.approx(expected, abs=1e-3)
    from annotate.retrain import training_data

    texts, _labels, gold_texts, _gold_labels = training_data(project)
    assert not set(texts) & {it.text for it in gold_items}
    assert set(gold_texts) == {it.text for it in gold_items}


def test_admin_labels_unlabelled_gold_and_adjudication_can_make_gold(admin_user, annotator_user, client, password):
    project = make_project()
    item = Item.objects.filter(project=project).first()
    Item.objects.filter(pk=item.pk).update(is_gold=True, gold_label="")  # lane: gold to do
    # annotators never get unlabelled gold items; the review page lists them for admins
    client.login(username=admin_user.username, password=password)
    assert item.pk in [it.pk for it in selectors.gold_todo(project)]
    resp = client.post(f"/annotate/p/{project.pk}/review/", {"item": item.pk, "kind": "gold", "label": "negative"})
    assert resp.status_code == 302
    item.refresh_from_db()
    assert item.gold_label == "negative"
    other = Item.objects.filter(project=project, is_gold=False).first()
    services.item_adjudicate(item=other, label="positive", user=admin_user, make_gold=True)
    other.refresh_from_db()
    assert other.is_gold and other.gold_label == "positive" and other.adjudicated
