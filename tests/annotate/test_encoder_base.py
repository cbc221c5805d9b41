"""An annotate project on a bare encoder (the tiny bert-base-chinese of the fake hub, pulled into the registry or
only in the HF cache): the project becomes a transformer project, its first retrain trains a frozen head on
the encoder, later ones warm-start from its live version, and while its model name still serves another
family the head is trained on the encoder again."""

from __future__ import annotations

import pytest
import torch
from django.core.exceptions import ValidationError

from annotate import selectors
from annotate.models import Item
from slm.classify.testing import make_tiny_version
from slm.hub import pull_model
from slm.registry import Registry
from tests.annotate.conftest import make_project
from tests.annotate.test_adapt import _retrain
from tests.annotate.test_retrain import _label_all


@pytest.fixture
def bert(hub_env, registry, settings, tmp_path):  # type: ignore[no-untyped-def]
    """bert-base-chinese pulled into the test registry (its first version goes live)."""
    torch.set_num_threads(1)
    settings.MEDIA_ROOT = tmp_path / "media"
    return pull_model("bert-base-chinese", registry=registry).version


@pytest.mark.django_db
def test_an_encoder_base_makes_a_transformer_project(bert, registry, tmp_path) -> None:  # type: ignore[no-untyped-def]
    project = make_project(base="bert-base-chinese")  # family not given: the encoder decides
    assert project.family == "transformer" and project.retrain_from == "parent"
    assert project.base == project.base_model == f"registry:{bert.ref}"  # pinned to the pulled version
    assert project.model_name == "sentiment"  # its versions compete with the served sentiment model
    assert selectors.base_encoder(project) == f"registry:{bert.ref}"
    assert selectors.serving_version(project) is None and selectors.retrain_parent(project) is None
    # a hub id only in the local HF cache works too (here: a registry without the pulled version)
    from django.conf import settings

    settings.SLM_REGISTRY_DIR = tmp_path / "other-registry"
    cached = make_project(base="bert-base-chinese", model_name="books")
    assert cached.base == cached.base_model == "bert-base-chinese" and cached.family == "transformer"
    settings.SLM_REGISTRY_DIR = registry.root
    with pytest.raises(ValidationError, match="an encoder already"):
        make_project(base="bert-base-chinese", base_model="some/other-encoder")
    with pytest.raises(ValidationError, match="nor is it an encoder"):
        make_project(base="no-such-model-anywhere")


@pytest.mark.django_db(transaction=True)
def test_first_retrain_trains_a_head_on_the_encoder_later_ones_warm_start(bert, registry, annotator_user) -> None:  # type: ignore[no-untyped-def]
    project = make_project(n_extra=4, gold_fraction=0.35, base=bert.name)
    _label_all(project, annotator_user)
    run = _retrain(project)
    assert run.status == "succeeded", (run.error, run.log)
    assert run.parent_version == "" and run.version == "v0001"
    assert f"loading encoder registry:{bert.ref} (frozen mode" in run.log
    mv = registry.get("sentiment", "v0001")
    assert mv.metadata["family"] == "transformer" and mv.metadata["encoder"] == f"registry:{bert.ref}"
    assert mv.metadata["config"]["mode"] == "frozen" and mv.metadata["training_data"]["n_file"] == run.n_train
    assert run.promoted and registry.live_version("sentiment") == "v0001"  # nothing was live
    from slm.classify.base import load_classifier

    probs = load_classifier(mv.path).predict_proba(["很好", "太差了"])
    assert probs.shape == (2, 2)
    # the next retrain warm-starts from the project's live version (its stored labels are replayed)
    Item.objects.filter(project=project, is_gold=False, final_label="").update(final_label="positive", adjudicated=True)
    run2 = _retrain(project)
    assert run2.status == "succeeded", (run2.error, run2.log)
    assert run2.parent_version == "v0001" and "warm start from sentiment@v0001 (frozen)" in run2.log
    child = registry.get("sentiment", run2.version)
    assert child.metadata["adaptation"]["parent"] == "sentiment@v0001" and child.metadata["parent"] == "v0001"


@pytest.mark.django_db(transaction=True)
def test_while_another_family_is_live_the_head_is_trained_on_the_encoder_again(bert, registry, annotator_user) -> None:  # type: ignore[no-untyped-def]
    live = make_tiny_version(registry)  # an n-gram sentiment@v0001 is live (and stays: manual promotion)
    project = make_project(n_extra=4, gold_fraction=0.35, base=bert.name, promote_policy="manual")
    _label_all(project, annotator_user)
    run = _retrain(project)
    assert run.status == "succeeded", (run.error, run.log)
    assert run.parent_version == live.version and not run.promoted  # compared with what is served
    assert run.metrics["live_version"] == live.version and run.metrics["live_gold"]
    run2 = _retrain(project)
    assert run2.status == "succeeded", (run2.error, run2.log)
    assert f"loading encoder registry:{bert.ref}" in run2.log and "adapting" not in run2.log
    assert registry.get("sentiment", run2.version).metadata["family"] == "transformer"
    assert Registry(registry.root).live_version("sentiment") == live.version
