"""Retraining adapts the current model: the first retrain starts from the project's base, later ones from
its live version; n-gram versions are refit on the parent's reproduced data plus the weighted new labels,
transformer versions warm-start from the parent's encoder and head with a replay of its data; gold is
never trained on; a parent whose data cannot be reproduced fails the run clearly and leaves live alone."""

from __future__ import annotations

import numpy as np
import pytest

from annotate import jobs, services
from annotate.models import Item, TrainingRun
from slm.classify.base import load_classifier
from slm.classify.testing import make_tiny_version, tiny_dataset
from tests.annotate.conftest import make_project
from tests.annotate.test_retrain import _label_all


def _retrain(project, fails: bool = False) -> TrainingRun:  # type: ignore[no-untyped-def]
    run, created = services.run_trigger(project=project)
    assert created
    if fails:
        with pytest.raises(Exception):  # noqa: B017 - the job re-raises for RQ; the run row says what happened
            jobs.retrain_job(run.pk)
    else:
        jobs.retrain_job(run.pk)  # the worker path is covered in test_retrain / test_api
    run.refresh_from_db()
    return run


@pytest.mark.django_db(transaction=True)
def test_ngram_adaptation_end_to_end_base_first_then_the_projects_live_version(
    registry, annotator_user, settings, tmp_path
):
    settings.MEDIA_ROOT = tmp_path
    base = make_tiny_version(registry)  # sentiment@v0001: knows the tiny reviews
    # weight 1: the ~13 new labels do not outweigh the parent's ~20 texts, so its knowledge must survive
    project = make_project(n_extra=4, gold_fraction=0.35, model_name="books", base=base.ref, new_label_weight=1.0)
    assert project.retrain_from == "parent" and project.family == "ngram" and project.base == "sentiment@v0001"
    from slm.classify.adapt import parent_training_data

    parent_data, parent_labels = parent_training_data(base.metadata, base.path)
    # one of the parent's own training texts is a gold item here: it must leave the adapted model's data
    services.items_add(project=project, rows=[services.NewItem(parent_data[0], parent_labels[0], gold=True)])
    _label_all(project, annotator_user)
    run = _retrain(project)
    assert run.status == "succeeded", (run.error, run.log)
    # first retrain: from the base, into the project's own registry name
    assert run.parent_version == "sentiment@v0001" and run.version == "v0001"
    mv = registry.get("books", "v0001")
    assert mv.metadata["parent"] == "sentiment@v0001"
    adaptation = mv.metadata["adaptation"]
    assert adaptation["parent"] == "sentiment@v0001" and adaptation["n_new"] == run.n_train
    assert adaptation["weight"] == 1.0
    gold_texts = set(Item.objects.filter(project=project, is_gold=True).values_list("text", flat=True))
    assert parent_data[0] in gold_texts
    trained_on, _ = parent_training_data(mv.metadata, mv.path)
    assert not gold_texts & set(trained_on)  # gold is never trained on, not even the parent's copy
    assert set(trained_on) >= set(parent_data[1:])  # the rest of the parent's data is kept
    # it keeps the parent's knowledge: the parent's training texts are still classified as the parent does
    parent_texts = tiny_dataset()[0]
    child, parent = load_classifier(mv.path), load_classifier(base.path)
    assert child.predict(parent_texts) == parent.predict(parent_texts)
    assert "base sentiment@v0001" in run.decision or "promoted v0001" in run.decision
    assert registry.live_version("books") == ("v0001" if run.promoted else None)
    if not run.promoted:
        services.version_promote(project=project, version="v0001", confirm=True)
    # a later retrain adapts the project's live version, not the base again
    Item.objects.filter(project=project, is_gold=False, final_label="").update(final_label="positive", adjudicated=True)
    run2 = _retrain(project)
    assert run2.status == "succeeded", run2.error
    assert run2.parent_version == "v0001" and registry.get("books", run2.version).metadata["parent"] == "v0001"
    assert registry.get("books", run2.version).metadata["adaptation"]["parent"] == "books@v0001"


@pytest.mark.django_db(transaction=True)
def test_new_label_weight_is_the_projects_setting(registry, annotator_user):
    from slm.classify.adapt import DEFAULT_NEW_LABEL_WEIGHT

    make_tiny_version(registry)
    weighted = make_project(new_label_weight=3.5)
    default = make_project()
    for project, weight in ((weighted, 3.5), (default, DEFAULT_NEW_LABEL_WEIGHT)):
        _label_all(project, annotator_user)
        run = _retrain(project)
        assert run.status == "succeeded", run.error
        adaptation = registry.get("sentiment", run.version).metadata["adaptation"]
        assert adaptation["weight"] == weight and adaptation["weight_is_default"] == (project is default)


@pytest.mark.django_db(transaction=True)
def test_parent_data_missing_fails_the_run_clearly_and_keeps_live(registry, annotator_user):
    from slm.classify.ngram import NgramClassifier
    from slm.classify.testing import TINY_CONFIG
    from slm.classify.versions import build_metadata, register_classifier

    texts, labels = tiny_dataset()
    model = NgramClassifier.train(texts, labels, TINY_CONFIG, label_order=["negative", "positive"])
    meta = build_metadata(
        family="ngram", labels=model.labels, config={"family": "ngram", **TINY_CONFIG.to_dict()}, data_hash="x",
        metrics={}, description="trained outside slm: no record of its data",
    )  # fmt: skip
    live = register_classifier(registry, "sentiment", model, meta, promote=True)
    project = make_project(gold_fraction=0.35)
    _label_all(project, annotator_user)
    run = _retrain(project, fails=True)
    assert run.status == "failed" and "does not record its training data" in run.error
    assert run.error.startswith("TrainingError: cannot adapt sentiment@v0001") and run.attempts == 1
    assert run.decision.startswith("failed: ") and run.decision.endswith("the live model is unchanged")
    assert registry.live_version("sentiment") == live.version and len(registry.versions("sentiment")) == 1


def _tiny_transformer_version(registry):  # type: ignore[no-untyped-def]
    """A tiny char-BERT classifier registered with its training rows stored (adaptable), live."""
    import torch

    from slm.classify.adapt import stored_record, write_training_rows
    from slm.classify.charbert import char_bert_classifier
    from slm.classify.train import TrainConfig, train_transformer
    from slm.classify.versions import build_metadata
    from tests.annotate.conftest import NEG, POS

    torch.manual_seed(0)
    texts, labels = tiny_dataset()
    model = char_bert_classifier(texts + POS + NEG, ["negative", "positive"], hidden_size=32, num_layers=1,
                                 num_heads=2, max_length=24, min_freq=1)  # fmt: skip
    config = TrainConfig(mode="frozen", epochs=5, val_fraction=0.0, lr=1e-2, num_threads=1)
    train_transformer(model, texts, labels, config)
    rows = [{"text": t, "label": y, "weight": 1.0} for t, y in zip(texts, labels, strict=True)]
    meta = build_metadata(
        family="transformer", labels=model.labels, config={"family": "transformer", **config.to_dict()},
        data_hash="tiny", metrics={}, description="tiny transformer", training_data=stored_record(rows),
    )  # fmt: skip

    def write(directory):  # type: ignore[no-untyped-def]
        model.save(directory)
        write_training_rows(directory, rows)

    mv = registry.create_version("sentiment", write, meta)
    registry.promote("sentiment", mv.version)
    return registry.get("sentiment", mv.version)


@pytest.mark.django_db(transaction=True)
def test_transformer_warm_starts_from_the_parents_weights_with_replay(registry, annotator_user, monkeypatch):
    import torch
    from safetensors.torch import load_file

    import slm.classify.train as train_module

    torch.set_num_threads(1)
    parent = _tiny_transformer_version(registry)
    project = make_project(gold_fraction=0.35)
    assert project.family == "transformer" and project.base == parent.ref
    _label_all(project, annotator_user)
    seen: dict[str, object] = {}
    real = train_module.train_transformer

    def spy(model, texts, labels, config=None, **kw):  # type: ignore[no-untyped-def]
        seen["head"] = {k: v.clone() for k, v in model.head.state_dict().items()}
        seen["encoder"] = {k: v.clone() for k, v in model.encoder.state_dict().items()}
        seen["texts"], seen["config"] = list(texts), config
        return real(model, texts, labels, config, **kw)

    monkeypatch.setattr(train_module, "train_transformer", spy)
    run = _retrain(project)
    assert run.status == "succeeded", (run.error, run.log)
    # it started from the parent's head and encoder as trained (not a fresh head)
    parent_head = load_file(str(parent.path / "head.safetensors"))
    for k, v in parent_head.items():
        assert torch.equal(seen["head"][k], v), k
    from slm.classify.transformer import TransformerClassifier

    parent_model = TransformerClassifier.load(parent.path)
    for k, v in parent_model.encoder.state_dict().items():
        assert torch.equal(seen["encoder"][k], v), k
    assert seen["config"].mode == "frozen"
    # new labels + a replay of the parent's data, never the gold items
    gold = set(Item.objects.filter(project=project, is_gold=True).values_list("text", flat=True))
    train_texts = set(seen["texts"])
    assert not gold & train_texts
    labelled = Item.objects.filter(project=project, is_gold=False).exclude(final_label="")
    assert set(labelled.values_list("text", flat=True)) <= train_texts
    child = registry.get("sentiment", run.version)
    adaptation = child.metadata["adaptation"]
    assert adaptation["method"] == "warm_start_replay" and adaptation["n_replay"] > 0
    assert adaptation["n_replay"] + adaptation["n_new"] == len(seen["texts"])
    child_head = load_file(str(child.path / "head.safetensors"))
    assert any(not torch.equal(child_head[k], parent_head[k]) for k in parent_head)  # and it learned
    # the child records its own data, so the next retrain can adapt it in turn
    from slm.classify.adapt import parent_training_data

    texts, _ = parent_training_data(child.metadata, child.path)
    parent_data, _ = parent_training_data(parent.metadata, parent.path)
    assert set(texts) >= set(parent_data) and not gold & set(texts)
    probs = load_classifier(child.path).predict_proba(["很好"])
    assert probs.shape == (1, 2) and np.isclose(probs.sum(), 1.0, atol=1e-5)
