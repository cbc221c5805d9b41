"""Retraining a project's model — the service the retrain job calls.

A run trains on the project's final non-gold labels (adapting the parent: the base for the first retrain,
the project's live version after that; or from scratch), scores the new version and the version serving
the project now on the gold items, registers the new version (parent recorded) and lets the promotion
policy decide, in words, whether it goes live. Promotion is the last, atomic step, so a run that dies
midway leaves the live model untouched. While it trains, a heartbeat thread shows the worker is alive.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

from django.conf import settings
from django.db import connection
from django.utils import timezone

from annotate import promotion, selectors, services, training
from annotate.models import Annotation, Item, Project, TrainingRun
from slm.registry import ModelVersion, RegistryError
from slmsite.registry import get_registry

log = logging.getLogger(__name__)


class Heartbeat:
    """Writes run.heartbeat_at every ANNOTATE_RUN_HEARTBEAT_S from a thread (own DB connection)."""

    def __init__(self, run_id: int) -> None:
        self.run_id = run_id
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"heartbeat-{run_id}", daemon=True)

    def _loop(self) -> None:
        try:
            while not self._stop.wait(settings.ANNOTATE_RUN_HEARTBEAT_S):
                TrainingRun.objects.filter(pk=self.run_id, status=TrainingRun.Status.RUNNING).update(
                    heartbeat_at=timezone.now()
                )
        finally:
            connection.close()

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


class RunLog:
    """Progress + log lines written to the run row (throttled)."""

    def __init__(self, run_id: int) -> None:
        self.run_id = run_id
        previous = TrainingRun.objects.filter(pk=run_id).values_list("log", flat=True).first() or ""
        self.lines: list[str] = previous.splitlines()  # a retried run keeps the earlier attempt's log
        self._last = 0.0

    def line(self, text: str) -> None:
        stamp = time.strftime("%H:%M:%S")
        self.lines.append(f"{stamp} {text}")
        self.lines = self.lines[-200:]
        TrainingRun.objects.filter(pk=self.run_id).update(log="\n".join(self.lines), heartbeat_at=timezone.now())

    def progress(self, fraction: float, **fields: Any) -> None:
        now = time.monotonic()
        if now - self._last < 0.5 and fraction < 1.0:
            return
        self._last = now
        update = {"progress": max(0.0, min(1.0, float(fraction))), "heartbeat_at": timezone.now()}
        for key in ("epoch", "epochs", "loss", "eta_s"):
            if fields.get(key) is not None:
                update[key] = fields[key]
        TrainingRun.objects.filter(pk=self.run_id).update(**update)


def training_data(project: Project) -> tuple[list[str], list[str], list[str], list[str]]:
    """(train_texts, train_labels, gold_texts, gold_labels): final non-gold labels / gold labels. Gold items
    are never trained on."""
    train = list(
        Item.objects.filter(project=project, is_gold=False).exclude(final_label="").values_list("text", "final_label")
    )
    gold = list(
        Item.objects.filter(project=project, is_gold=True).exclude(gold_label="").values_list("text", "gold_label")
    )
    return [t for t, _ in train], [lab for _, lab in train], [t for t, _ in gold], [lab for _, lab in gold]


def evaluate(model: Any, texts: list[str], labels: list[str], label_names: list[str]) -> dict[str, Any]:
    """Gold metrics in the project's label order; {} without gold items, {"error"} for another label set."""
    from slm.classify.versions import evaluate as evaluate_classifier

    if not texts:
        return {}
    if sorted(model.labels) != sorted(label_names):
        return {"error": f"model labels {list(model.labels)} differ from the project's {label_names}"}
    return evaluate_classifier(model, texts, labels, label_order=label_names)


def _wait_for_pause_file(rlog: RunLog) -> None:
    path = settings.ANNOTATE_TRAIN_PAUSE_FILE
    if not path or not os.path.exists(path):
        return
    rlog.line(f"test hook: waiting while {path} exists")
    while os.path.exists(path):
        time.sleep(0.05)


def run_start(run_id: int) -> TrainingRun | None:
    """Marks a queued (or retried) run running; None when it is no longer active (e.g. reaped)."""
    now = timezone.now()
    started = TrainingRun.objects.filter(pk=run_id, status__in=TrainingRun.ACTIVE).update(
        status=TrainingRun.Status.RUNNING, started_at=now, heartbeat_at=now, error=""
    )
    if not started:
        return None
    TrainingRun.objects.filter(pk=run_id).update(attempts=TrainingRun.objects.get(pk=run_id).attempts + 1)
    return TrainingRun.objects.select_related("project").get(pk=run_id)


def run_failed(run_id: int, exc: BaseException, *, retrying: bool) -> None:
    """Records an attempt's failure: re-queued when RQ retries it, else failed (the live model untouched)."""
    detail = f"{type(exc).__name__}: {exc}"
    RunLog(run_id).line(f"error: {detail}")
    if retrying:
        TrainingRun.objects.filter(pk=run_id, status=TrainingRun.Status.RUNNING).update(
            status=TrainingRun.Status.QUEUED, error=f"{detail} (retrying)"
        )
        return
    TrainingRun.objects.filter(pk=run_id, status=TrainingRun.Status.RUNNING).update(
        status=TrainingRun.Status.FAILED,
        error=detail,
        finished_at=timezone.now(),
        decision=promotion.failed_text(detail),
    )


def retryable(exc: BaseException) -> bool:
    """A crash may succeed on a second attempt; a TrainingError (bad data or configuration) never will."""
    return not isinstance(exc, training.TrainingError)


def _parent(project: Project) -> ModelVersion | None:
    if project.retrain_from == Project.RetrainFrom.SCRATCH:
        return None
    try:
        parent = selectors.retrain_parent(project)
    except RegistryError as exc:
        raise training.TrainingError(f"the base {project.base} is not in the registry: {exc}") from exc
    if parent is None and not selectors.base_encoder(project):  # (a bare encoder: a head is trained on it)
        raise training.TrainingError(
            f"nothing to adapt: {project.model_name} has no live version and the project has no base "
            "(set a base, or retrain from scratch)"
        )
    return parent


def run_execute(run: TrainingRun, *, worker: str = "") -> dict[str, Any]:
    """Trains, evaluates, registers and (by the project's policy) promotes; see the module docstring."""
    project = run.project
    rlog = RunLog(run.pk)
    registry = get_registry()
    with Heartbeat(run.pk):
        rlog.line(f"attempt {run.attempts} on worker {worker or os.getpid()}")
        _wait_for_pause_file(rlog)
        texts, labels, gold_texts, gold_labels = training_data(project)
        present = sorted(set(labels))
        TrainingRun.objects.filter(pk=run.pk).update(n_train=len(texts), n_gold=len(gold_texts))
        rlog.line(f"{len(texts)} training labels ({', '.join(present) or 'none'}), {len(gold_texts)} gold items")
        parent = _parent(project)
        if parent is None and len(present) < 2:
            raise training.TrainingError(
                f"need labelled examples of at least two labels to train (have {len(texts)} labels: "
                f"{present or 'none'})"
            )
        if parent is not None and not texts:
            raise training.TrainingError("no new labels to adapt the parent with")
        reference = selectors.serving_version(project)
        # the parent: the version adapted, or (from scratch) the one it is compared with and would replace
        recorded = parent or reference
        parent_label = selectors.version_label(project, recorded) if recorded else ""
        TrainingRun.objects.filter(pk=run.pk).update(parent_version=parent_label)
        reference_is_live = (
            reference is not None
            and reference.name == project.model_name
            and registry.live_version(project.model_name) == reference.version
        )
        started = time.monotonic()
        model, write, meta = training.train(
            project=project,
            parent=parent,
            texts=texts,
            labels=labels,
            exclude=gold_texts,
            progress=rlog.progress,
            log=rlog.line,
        )
        rlog.line(f"trained in {time.monotonic() - started:.1f}s; evaluating on {len(gold_texts)} gold items")
        metrics = evaluate(model, gold_texts, gold_labels, list(project.labels))
        ref_metrics: dict[str, Any] = {}
        ref_error = ""
        if reference is not None and gold_texts:
            try:
                from slm.classify.base import load_classifier

                ref_metrics = evaluate(load_classifier(reference.path), gold_texts, gold_labels, list(project.labels))
                ref_error = str(ref_metrics.pop("error", "")) if "error" in ref_metrics else ""
            except Exception as exc:
                ref_error = f"{type(exc).__name__}: {exc}"
            if ref_error:
                rlog.line(f"could not evaluate {reference.ref} on gold: {ref_error}")
        meta = {
            **meta,
            "metrics": {**metrics, "split": "gold"} if metrics else {},
            "gold_metrics": metrics,
            "description": f"retrained from annotate project {project.name!r} (run #{run.pk})",
            "annotate": {
                "project": project.pk,
                "project_name": project.name,
                "run": run.pk,
                "n_train": len(texts),
                "n_gold": len(gold_texts),
                "labels_total": Annotation.objects.filter(project=project).count(),
                "retrain_from": project.retrain_from,
                "parent_gold_metrics": {k: ref_metrics.get(k) for k in ("accuracy", "macro_f1")},
            },
        }
        mv = registry.create_version(project.model_name, write, meta, parent=parent_label or None)
        rlog.line(f"registered {mv.ref}: gold macro-F1 {metrics.get('macro_f1', float('nan')):.3f}")
    reference_label = selectors.version_label(project, reference) if reference else None
    decision = promotion.decide(
        auto=project.promote_policy == Project.PromotePolicy.AUTO,
        version=mv.version,
        new=metrics,
        reference=reference_label,
        reference_metrics=ref_metrics,
        reference_is_live=reference_is_live,
        reference_error=ref_error,
    )
    finished = TrainingRun.objects.filter(pk=run.pk, status=TrainingRun.Status.RUNNING).update(
        status=TrainingRun.Status.SUCCEEDED,
        version=mv.version,
        metrics={"gold": metrics, "live_gold": ref_metrics, "live_version": reference_label},
        decision=decision.text if not decision.promote else "",
        progress=1.0,
        eta_s=0,
        finished_at=timezone.now(),
    )
    if not finished:
        rlog.line("the run was marked failed meanwhile; not promoting")
        return {"version": mv.version, "promoted": False}
    if decision.promote:
        registry.promote(project.model_name, mv.version)
        TrainingRun.objects.filter(pk=run.pk).update(promoted=True, decision=decision.text)
    rlog.line(decision.text)
    services.enqueue_refresh(project.pk)
    return {"version": mv.version, "promoted": decision.promote, "decision": decision.text}
