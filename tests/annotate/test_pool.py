"""The pool refresh computes what the project's strategy needs (no strategy silently becomes another),
the lane is derived by the database in one place, and the label page's item JSON never says gold."""

from __future__ import annotations

import numpy as np
import pytest
from django.core.exceptions import ValidationError

from annotate import pool, selectors, services
from annotate.models import Item, Project
from slm.active import PoolContext, get_strategy
from slm.classify.pool import pool_context
from slm.classify.testing import make_tiny_version
from tests.annotate.conftest import make_project

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("strategy", ["bald", "kcenter", "hybrid", "margin"])
def test_refresh_scores_the_pool_with_the_strategys_own_inputs(strategy, registry, annotator_user, settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path
    mv = make_tiny_version(registry)
    project = make_project(n_extra=30, strategy=strategy, min_per_label=0)
    for _ in range(4):  # a few labels: the posterior and k-center see them
        a = services.lease_next(project=project, user=annotator_user)
        services.label_submit(project=project, user=annotator_user, item_id=a.item_id, label="positive")
    out = pool.pool_refresh(project_id=project.pk)
    needs = {"bald": ["mc_probs", "probs"], "kcenter": ["embeddings", "probs"], "hybrid": ["embeddings", "probs"],
             "margin": ["probs"]}[strategy]  # fmt: skip
    assert out["strategy"] == strategy and out["inputs"] == needs and "error" not in out
    # the stored scores are exactly the strategy's priorities over those inputs
    from slm.classify.base import load_classifier

    rows = list(Item.objects.filter(project=project, is_gold=False, final_label="").order_by("id"))
    labelled = list(Item.objects.filter(project=project).exclude(final_label="").values_list("text", flat=True))
    ctx = pool_context(load_classifier(mv.path), [it.text for it in rows], labelled, strategy=strategy, also=("probs",))
    expected = pool.query_scores(strategy, ctx, batch_size=project.batch_size)
    np.testing.assert_allclose([it.score for it in rows], expected, rtol=1e-6)
    if strategy == "bald":  # not entropy in disguise
        ent = get_strategy("entropy").priorities(PoolContext(probs=ctx.probs), 0)
        assert not np.allclose(expected, ent)
    project.refresh_from_db()
    assert project.pool_error == "" and project.pool_version == mv.version


def test_a_strategy_the_live_family_cannot_serve_is_refused_with_a_message(registry, settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path
    make_tiny_version(registry)
    project = make_project(n_extra=5, strategy="bald")
    from slm.classify import pool as slm_pool

    original = slm_pool.FAMILY_PROVIDES["ngram"]
    slm_pool.FAMILY_PROVIDES["ngram"] = ("probs",)  # as if the live version were an ensemble
    try:
        out = pool.pool_refresh(project_id=project.pk)
    finally:
        slm_pool.FAMILY_PROVIDES["ngram"] = original
    project.refresh_from_db()
    assert "the bald strategy needs posterior samples" in project.pool_error and "random order" in out["error"]
    assert set(Item.objects.filter(project=project, final_label="").values_list("score", flat=True)) == {0.0}
    assert not Item.objects.filter(project=project, is_gold=False, pred_label="").exists()  # suggestions stay


def test_project_create_refuses_strategies_the_base_family_cannot_run(registry):
    from slm.classify.base import load_classifier
    from slm.classify.ensemble import EnsembleClassifier
    from slm.classify.versions import build_metadata, register_classifier

    mv = make_tiny_version(registry, promote=False)
    member = load_classifier(mv.path)
    meta = build_metadata(
        family="ensemble", labels=member.labels, config={}, data_hash="x", metrics={}, data={}, description="ens"
    )
    ens = register_classifier(registry, "sentiment", EnsembleClassifier([member, member]), meta, promote=True)
    with pytest.raises(ValidationError, match="cannot be adapted"):
        services.project_create(name="p1", labels=["negative", "positive"], retrain_from="parent")
    with pytest.raises(ValidationError, match="unknown query strategy"):
        services.project_create(name="p1", labels=["negative", "positive"], strategy="nope", retrain_from="scratch")
    # from scratch the project's own family decides: an n-gram project may use BALD
    p = services.project_create(
        name="p2", labels=["negative", "positive"], strategy="bald", base=ens.ref, retrain_from="scratch"
    )
    assert p.family == "ngram" and p.base == ens.ref


def test_lane_is_derived_by_the_database(db):
    project = make_project()
    item = Item.objects.filter(project=project, is_gold=False).first()
    lane = lambda: Item.objects.get(pk=item.pk).lane  # noqa: E731
    assert lane() == Item.POOL
    Item.objects.filter(pk=item.pk).update(is_gold=True)
    assert lane() == Item.GOLD_TODO
    Item.objects.filter(pk=item.pk).update(gold_label="positive")
    assert lane() == Item.GOLD
    Item.objects.filter(pk=item.pk).update(is_gold=False, gold_label="", source="fix")
    assert lane() == Item.FIX
    Item.objects.filter(pk=item.pk).update(n_labels=1)  # needed = 1
    assert lane() == Item.CLOSED
    Item.objects.filter(pk=item.pk).update(n_labels=0, adjudicated=True)
    assert lane() == Item.CLOSED


def test_label_page_item_json_never_says_gold(client, annotator_user, password):
    project = make_project(gold_fraction=0.5)
    gold = Item.objects.filter(project=project, is_gold=True).exclude(gold_label="").first()
    assert gold is not None
    payload = selectors.item_payload(gold, project)
    assert "gold" not in payload and set(payload) == {"id", "text", "suggestion"}
    client.login(username=annotator_user.username, password=password)
    for _ in range(5):
        body = client.get(f"/annotate/p/{project.pk}/next").json()
        assert "gold" not in body["item"]


def test_api_project_defaults_pin_the_live_base(registry, admin_user):
    mv = make_tiny_version(registry)
    p = services.project_create(name="pinned", labels=["positive", "negative"])
    assert p.base == mv.ref and p.model_name == "sentiment"
    make_tiny_version(registry)  # a newer live version later does not move the pinned base
    assert selectors.retrain_parent(Project.objects.get(pk=p.pk)).version == mv.version
