"""Retraining through real Redis and an RQ worker: end to end on a tiny model, one run per project,
promote/rollback, a bad run fails cleanly, and a worker killed mid-run leaves the live model untouched."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.conf import settings as dj_settings
from django.db import connection

from annotate import services
from annotate.models import Item, TrainingRun
from slm.classify.testing import make_tiny_version
from tests.annotate.conftest import make_project

ROOT = Path(__file__).resolve().parents[2]


def _label_all(project, user) -> int:  # type: ignore[no-untyped-def]
    """Labels every non-gold item with its imported reference label (an annotator doing the work)."""
    n = 0
    while (a := services.lease_next(project=project, user=user)) is not None:
        item = a.item
        label = item.gold_label or (item.meta or {}).get("source_label")
        if not label:  # unlabelled extras stay in the pool
            services.item_skip(project=project, user=user, item_id=item.pk)
            continue
        services.label_submit(project=project, user=user, item_id=item.pk, label=label)
        n += 1
    return n


def paused_run(registry, admin_user, annotator_user, tmp_path):  # type: ignore[no-untyped-def]
    """A live tiny version, a labelled project and a triggered run whose job holds while `pause` exists."""
    live0 = make_tiny_version(registry)
    project = make_project(gold_fraction=0.35)
    _label_all(project, annotator_user)
    pause = tmp_path / "pause"
    pause.write_text("hold")
    run, _ = services.run_trigger(project=project, user=admin_user)
    return live0, project, pause, run


def wait_for(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


@pytest.mark.django_db(transaction=True)
def test_retrain_end_to_end_through_redis_and_worker(registry, admin_user, annotator_user, run_worker):
    live0 = make_tiny_version(registry, labels=("positive", "negative"))  # a live model with labels swapped
    project = make_project(n_extra=6, gold_fraction=0.35)
    assert Item.objects.filter(project=project, is_gold=True).exclude(gold_label="").count() >= 2
    _label_all(project, annotator_user)
    run, created = services.run_trigger(project=project, user=admin_user)
    assert created and run.status == "queued"
    again, created2 = services.run_trigger(project=project, user=admin_user)
    assert again.pk == run.pk and not created2  # idempotent while queued
    run.refresh_from_db()
    assert run.job_id  # enqueued on commit
    run_worker()
    run.refresh_from_db()
    assert run.status == "succeeded", (run.error, run.log)
    assert run.version == "v0002" and run.parent_version == live0.version
    assert run.progress == 1.0 and run.n_train > 0 and run.n_gold >= 2
    gold = run.metrics["gold"]
    assert 0.0 <= gold["macro_f1"] <= 1.0 and gold["n"] == run.n_gold
    mv = registry.get("sentiment", "v0002")
    assert mv.metadata["parent"] == live0.version and mv.metadata["family"] == "ngram"
    assert run.metrics["live_gold"]["macro_f1"] < gold["macro_f1"]
    assert run.promoted and registry.live_version("sentiment") == "v0002"  # auto: better than live on gold
    # the refresh job scored the unlabelled pool with the new live version
    project.refresh_from_db()
    assert project.pool_version == "v0002"
    pending = Item.objects.filter(project=project, final_label="", is_gold=False)
    assert pending.exists() and not pending.filter(pred_label="").exists()
    # a new trigger after the run finished starts a new one
    run2, created3 = services.run_trigger(project=project, user=admin_user)
    assert created3 and run2.pk != run.pk


@pytest.mark.django_db(transaction=True)
def test_manual_policy_registers_without_promoting_then_promote_and_rollback(
    registry, admin_user, annotator_user, run_worker
):
    make_tiny_version(registry)
    project = make_project(gold_fraction=0.35, promote_policy="manual")
    _label_all(project, annotator_user)
    run, _ = services.run_trigger(project=project, user=admin_user)
    run_worker()
    run.refresh_from_db()
    assert run.status == "succeeded" and not run.promoted
    assert registry.live_version("sentiment") == "v0001"
    from annotate.promotion import WorseThanLive

    if run.metrics["gold"]["macro_f1"] < run.metrics["live_gold"]["macro_f1"]:
        with pytest.raises(WorseThanLive, match="anyway"):  # worse on gold: asks for a confirmation first
            services.version_promote(project=project, version="v0002")
        assert registry.live_version("sentiment") == "v0001"
    assert services.version_promote(project=project, version="v0002", confirm=True) == "sentiment@v0002"
    assert registry.live_version("sentiment") == "v0002"
    assert services.version_rollback(project=project) == "sentiment@v0001"
    assert registry.live_version("sentiment") == "v0001"
    services.version_rollback(project=project, version="v0002")
    assert registry.live_version("sentiment") == "v0002"


@pytest.mark.django_db(transaction=True)
def test_run_with_one_label_fails_cleanly(registry, admin_user, annotator_user, run_worker):
    make_tiny_version(registry)
    project = make_project(retrain_from="scratch")  # adapting a parent needs only one new label
    a = services.lease_next(project=project, user=annotator_user)
    services.label_submit(project=project, user=annotator_user, item_id=a.item_id, label="positive")
    run, _ = services.run_trigger(project=project, user=admin_user)
    run_worker()
    run.refresh_from_db()
    assert run.status == "failed" and "two labels" in run.error
    assert registry.live_version("sentiment") == "v0001" and len(registry.versions("sentiment")) == 1


@pytest.mark.django_db(transaction=True)
def test_auto_trigger_every_n_labels(registry, annotator_user, queues):
    make_tiny_version(registry)
    project = make_project(retrain_every=3)
    for _ in range(2):
        a = services.lease_next(project=project, user=annotator_user)
        services.label_submit(project=project, user=annotator_user, item_id=a.item_id, label="positive")
    assert not TrainingRun.objects.filter(project=project).exists()
    a = services.lease_next(project=project, user=annotator_user)
    services.label_submit(project=project, user=annotator_user, item_id=a.item_id, label="negative")
    runs = list(TrainingRun.objects.filter(project=project))
    assert len(runs) == 1 and runs[0].trigger == "auto" and runs[0].status == "queued"


@pytest.mark.django_db(transaction=True)
def test_queue_down_fails_the_run_instead_of_hanging(registry, admin_user, project, settings, monkeypatch):
    def boom(*a, **k):  # type: ignore[no-untyped-def]
        raise ConnectionError("redis is down")

    monkeypatch.setattr("slmsite.jobs.get_queue", boom)
    run, _ = services.run_trigger(project=project, user=admin_user)
    run.refresh_from_db()
    assert run.status == "failed" and "could not queue" in run.error


@pytest.mark.django_db
def test_one_active_run_per_project_is_a_db_constraint(project):
    from django.db import IntegrityError, transaction

    TrainingRun.objects.create(project=project, status="running")
    with pytest.raises(IntegrityError), transaction.atomic():
        TrainingRun.objects.create(project=project, status="queued")
    TrainingRun.objects.create(project=project, status="failed")  # finished runs don't count


def _db_env() -> dict[str, str]:
    sd = connection.settings_dict
    if connection.vendor == "sqlite":
        return {"SQLITE_PATH": str(sd["NAME"])}
    pw = f":{sd['PASSWORD']}" if sd.get("PASSWORD") else ""
    return {
        "DATABASE_URL": f"postgres://{sd.get('USER') or ''}{pw}@{sd.get('HOST') or '127.0.0.1'}:{sd.get('PORT') or 5432}/{sd['NAME']}"
    }


def _forget_dead_workers(queue: str) -> None:
    """A worker killed with -9 stays registered (busy) in Redis for its job timeout; drop its registration
    so later checks of the live workers (healthz) do not count it."""
    import django_rq
    from rq import Queue, Worker

    conn = django_rq.get_connection("gpu")
    for worker in Worker.all(connection=conn, queue=Queue(queue, connection=conn)):
        worker.register_death()


WORKER = """
import django
django.setup()
import django_rq
from rq import Queue, SimpleWorker
conn = django_rq.get_connection("gpu")
SimpleWorker([Queue(%r, connection=conn)], connection=conn).work(burst=True, with_scheduler=False)
"""


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_worker_killed_mid_run_fails_the_run_and_keeps_live(
    registry, admin_user, annotator_user, queues, settings, tmp_path
):
    live0, project, pause, run = paused_run(registry, admin_user, annotator_user, tmp_path)
    env = {
        **os.environ,
        **_db_env(),
        "DJANGO_SETTINGS_MODULE": "slmsite.settings.test",
        "REDIS_URL": dj_settings.REDIS_URL,
        "SLM_TEST_VAR_DIR": str(dj_settings.TEST_VAR_DIR),
        "SLM_REGISTRY_DIR": str(registry.root),
        "SLM_GPU_QUEUE": queues["gpu"],
        "SLM_DEFAULT_QUEUE": queues["default"],
        "ANNOTATE_TRAIN_PAUSE_FILE": str(pause),
        "ANNOTATE_RUN_HEARTBEAT_S": "0.2",
    }
    proc = subprocess.Popen(
        [sys.executable, "-c", WORKER % queues["gpu"]], cwd=ROOT, env=env, start_new_session=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        wait_for(
            lambda: (
                TrainingRun.objects.get(pk=run.pk).status == "running"
                and "waiting" in TrainingRun.objects.get(pk=run.pk).log
            ),
            60,
            "the worker to start the run",
        )
        assert services.run_trigger(project=project, user=admin_user) == (TrainingRun.objects.get(pk=run.pk), False)
        os.killpg(proc.pid, signal.SIGKILL)  # kill -9 mid-run
        proc.wait(10)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        _forget_dead_workers(queues["gpu"])
    settings.ANNOTATE_RUN_STALE_S = 1

    def reaped() -> bool:
        services.run_reap_stale(project=project)
        return TrainingRun.objects.get(pk=run.pk).status == "failed"

    wait_for(reaped, 20, "the dead run to be marked failed")
    run.refresh_from_db()
    assert "stopped responding" in run.error and "live model is unchanged" in run.error
    assert registry.live_version("sentiment") == live0.version
    assert [v.version for v in registry.versions("sentiment")] == [live0.version]
    # the project is not stuck: a new trigger creates a new run
    _, created = services.run_trigger(project=project, user=admin_user)
    assert created


@pytest.mark.django_db(transaction=True)
def test_a_crashing_attempt_is_retried_by_rq(registry, admin_user, annotator_user, run_worker, monkeypatch):
    from annotate import training

    make_tiny_version(registry)
    project = make_project(gold_fraction=0.35)
    _label_all(project, annotator_user)
    real = training.train
    calls = []

    def flaky(**kwargs):  # type: ignore[no-untyped-def]
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("CUDA out of memory (simulated)")
        return real(**kwargs)

    monkeypatch.setattr(training, "train", flaky)
    run, _ = services.run_trigger(project=project, user=admin_user)
    run_worker()
    run.refresh_from_db()
    assert run.status == "succeeded" and run.attempts == 2 and len(calls) == 2
    assert "CUDA out of memory" in run.log and run.error == ""


@pytest.mark.django_db(transaction=True)
def test_transformer_family_retrain_with_a_tiny_local_encoder(registry, annotator_user, tmp_path, settings):
    import torch

    from annotate import jobs
    from tests.annotate.conftest import tiny_encoder_dir

    torch.set_num_threads(1)
    settings.MEDIA_ROOT = tmp_path
    enc_dir = tiny_encoder_dir(tmp_path / "encoder")
    make_tiny_version(registry)
    project = make_project(gold_fraction=0.35, family="transformer", base_model=str(enc_dir), retrain_from="scratch")
    _label_all(project, annotator_user)
    run = TrainingRun.objects.create(project=project)
    jobs.retrain_job(run.pk)  # no worker needed to check the family; the RQ path is tested above
    run.refresh_from_db()
    assert run.status == "succeeded", (run.error, run.log)
    assert run.epochs > 0 and run.epoch >= 1 and run.loss is not None
    mv = registry.get("sentiment", run.version)
    assert mv.metadata["family"] == "transformer" and mv.metadata["curves"]["x"] == "epoch"
    from slm.classify.base import load_classifier

    probs = load_classifier(mv.path).predict_proba(["很好"])
    assert probs.shape == (1, 2)
    # hybrid strategy on the transformer's encoder features: the refresh caches embeddings for k-center
    import numpy as np

    from annotate.models import Project

    Project.objects.filter(pk=project.pk).update(strategy="hybrid")
    services.version_promote(project=project, version=run.version, confirm=True)  # the tiny model beats it
    Item.objects.filter(project=project, is_gold=False).update(final_label="", n_labels=0)  # back to the pool
    out = jobs.refresh_pool_job(project.pk)
    from annotate.pool import pool_cache_path

    cache = np.load(pool_cache_path(project.pk))
    assert out["items"] > 0 and cache["embeddings"].shape == (out["items"], 32)


@pytest.mark.django_db(transaction=True)
def test_transformer_family_without_encoder_fails_with_a_clear_error(registry, annotator_user):
    from annotate import jobs

    make_tiny_version(registry)
    project = make_project(gold_fraction=0.35, family="transformer", retrain_from="scratch")
    _label_all(project, annotator_user)
    run = TrainingRun.objects.create(project=project)
    with pytest.raises(Exception, match="base encoder"):
        jobs.retrain_job(run.pk)
    run.refresh_from_db()
    assert run.status == "failed" and "base encoder" in run.error
