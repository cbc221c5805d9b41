"""SLM_TRAIN_PROCESSES: the retrain job trains its transformer in 2 CPU processes (torchrun +
accelerate) and registers the same model, within tolerance, as the one-process job."""

from __future__ import annotations

import numpy as np
import pytest

from annotate.models import TrainingRun
from slm.classify.base import load_classifier
from slm.classify.testing import make_tiny_version
from tests.annotate.conftest import NEG, POS, make_project, tiny_encoder_dir
from tests.annotate.test_retrain import _label_all


@pytest.mark.django_db(transaction=True)
def test_retrain_job_in_two_processes_registers_the_same_model(registry, annotator_user, tmp_path, settings):
    import torch

    from annotate import jobs

    torch.set_num_threads(1)
    settings.MEDIA_ROOT = tmp_path
    enc_dir = tiny_encoder_dir(tmp_path / "encoder", num_layers=1, dropout=0.0)
    make_tiny_version(registry)
    project = make_project(gold_fraction=0.35, family="transformer", base_model=str(enc_dir), retrain_from="scratch")
    _label_all(project, annotator_user)
    versions = {}
    for processes in (1, 2):
        settings.SLM_TRAIN_PROCESSES = processes
        run = TrainingRun.objects.create(project=project)
        jobs.retrain_job(run.pk)
        run.refresh_from_db()
        assert run.status == "succeeded", (run.error, run.log)
        assert run.epochs == 30 and run.epoch >= 1  # epoch rows (from the worker processes too) reached the run
        mv = registry.get("sentiment", run.version)
        assert mv.metadata["config"]["processes"] == processes
        versions[processes] = (run, mv)
    (run1, mv1), (run2, mv2) = versions[1], versions[2]
    probe = POS + NEG
    p1 = load_classifier(mv1.path).predict_proba(probe)
    p2 = load_classifier(mv2.path).predict_proba(probe)
    # the head has dropout (its masks differ between 1 and 2 processes), so: close, not identical
    assert np.abs(p1 - p2).max() < 0.1 and (p1.argmax(1) == p2.argmax(1)).mean() >= 0.9
    assert abs(run1.metrics["gold"]["accuracy"] - run2.metrics["gold"]["accuracy"]) <= 0.15
