"""The glue between annotate and the ML core (slm.classify, slm.al_sim): train a project's classifier
(adapting the parent, or from scratch) and run simulations. Django-side only because it reads Project
settings; all ML lives in slm/."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django.conf import settings

from annotate.models import Item, Project
from slm.registry import ModelVersion


class TrainingError(Exception):
    """A retrain that cannot succeed (bad data or configuration): no retry."""


Progress = Callable[..., None]
Trained = tuple[Any, Callable[[Path], None], dict[str, Any]]

# Transformer warm start: the new labels are mixed with a replayed sample of the parent's training data
# of REPLAY_PER_LABEL times their number (at least REPLAY_MIN), so the parent's knowledge is rehearsed.
REPLAY_PER_LABEL = 2
REPLAY_MIN = 500


@dataclass
class _Job:
    """One training request: the project, its new labels, the progress/log callbacks of the run."""

    project: Project
    texts: list[str]
    labels: list[str]
    progress: Progress
    log: Callable[[str], None]
    exclude: list[str] = field(default_factory=list)

    @property
    def label_names(self) -> list[str]:
        return list(self.project.labels)

    def fraction_report(self) -> Callable[[str, float], None]:
        """A (message, fraction) callback for a one-pass fit: progress up to 0.9 with an ETA."""
        started = time.monotonic()

        def report(message: str, fraction: float) -> None:
            elapsed = time.monotonic() - started
            eta = elapsed * (1 - fraction) / fraction if fraction > 0.05 else None
            self.progress(0.9 * fraction, epoch=1, epochs=1, eta_s=eta)

        return report

    def epoch_report(self, default_epochs: int) -> Callable[[dict[str, Any]], None]:
        """An on_epoch callback for train_transformer: progress 0.1..0.9 with epoch, loss and ETA."""

        def on_epoch(row: dict[str, Any]) -> None:
            epochs = int(row.get("epochs") or default_epochs)
            epoch = int(row["epoch"])
            self.progress(
                0.1 + 0.8 * epoch / epochs,
                epoch=epoch,
                epochs=epochs,
                loss=row.get("train_loss"),
                eta_s=row.get("eta_s"),
            )

        return on_epoch


def train(
    *,
    project: Project,
    texts: list[str],
    labels: list[str],
    progress: Progress,
    log: Callable[[str], None],
    parent: ModelVersion | None = None,
    exclude: list[str] | None = None,
) -> Trained:
    """Trains the project's model on (texts, labels): adapts `parent` (its family decides how) or, without
    a parent, fits the project's family from scratch. `exclude`: texts never to train on (the gold items),
    also kept out of a replayed sample of the parent's data.

    Returns (model with .labels/.predict_proba, write(dir) that saves it as a registry version,
    metadata for the registry)."""
    job = _Job(project, texts, labels, progress, log, list(exclude or []))
    t0 = time.monotonic()
    if parent is not None:
        family = str(parent.metadata.get("family", ""))
        parent_labels = [str(x) for x in parent.metadata.get("labels") or []]
        if parent_labels and sorted(parent_labels) != sorted(job.label_names):
            raise TrainingError(
                f"{parent.ref} predicts {parent_labels}, not the project's labels {job.label_names}; "
                "retrain from scratch or choose a base with these labels"
            )
        if family == Project.Family.NGRAM:
            model, write, meta = _adapt_ngram(job, parent)
        elif family == Project.Family.TRANSFORMER:
            model, write, meta = _adapt_transformer(job, parent)
        else:
            raise TrainingError(f"{parent.ref} is a {family or 'unknown'} model, which cannot be adapted")
    elif project.family == Project.Family.TRANSFORMER:
        model, write, meta = _train_transformer(job)
    else:
        model, write, meta = _train_ngram(job)
    meta.setdefault("timings", {})["train_s"] = round(time.monotonic() - t0, 3)
    return model, write, meta


def _parent_rows(parent: ModelVersion) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(all rows the parent was trained on, the part of them stored with it rather than rebuilt from a
    bundled dataset), each {"text", "label", "weight"}; TrainingError when they cannot be reproduced."""
    from slm.classify.adapt import ParentDataUnavailable, training_rows

    try:
        rows = training_rows(parent.metadata, parent.path)
    except ParentDataUnavailable as exc:
        raise TrainingError(f"cannot adapt {parent.ref}: its training data is not available ({exc})") from exc
    n_file = int((parent.metadata.get("training_data") or {}).get("n_file") or 0)
    return rows, rows[len(rows) - n_file :] if n_file else []  # training_rows lists the stored rows last


def _saver(model: Any) -> Callable[[Path], None]:
    def write(directory: Path) -> None:
        model.save(directory)

    return write


def _adapt_ngram(job: _Job, parent: ModelVersion) -> Trained:
    """Refit on the parent's (reproduced) training data plus the new labels, weighted (slm.classify.adapt)."""
    from slm.classify.adapt import ParentDataUnavailable, adapt_ngram

    weight = job.project.new_label_weight
    job.log(f"adapting {parent.ref}: its training data + {len(job.texts)} new labels (weight {weight or 'default'})")
    try:
        model, meta = adapt_ngram(
            parent.path,
            parent.metadata,
            job.texts,
            job.labels,
            weight=weight,
            label_order=job.label_names,
            exclude=job.exclude,
            progress=job.fraction_report(),
        )
    except ParentDataUnavailable as exc:
        raise TrainingError(f"cannot adapt {parent.ref}: its training data is not available ({exc})") from exc
    job.progress(0.9, epoch=1, epochs=1, eta_s=0.0)
    return model, _saver(model), dict(meta)


def _adapt_transformer(job: _Job, parent: ModelVersion) -> Trained:
    """Warm start: the parent's encoder and head as trained, fine-tuned (in the parent's mode) on the new
    labels mixed with a replayed sample of the parent's training data (gold texts left out)."""
    import numpy as np

    from slm.classify.adapt import stored_record, write_training_rows
    from slm.classify.train import TrainConfig, train_transformer
    from slm.classify.transformer import TransformerClassifier
    from slm.classify.versions import build_metadata
    from slm.data import data_hash
    from slm.text import clean_text

    rows, stored = _parent_rows(parent)
    model = TransformerClassifier.load(parent.path)
    new = dict(zip(job.texts, job.labels, strict=True))  # a new label replaces the parent's row of that text
    banned = {clean_text(t) for t in job.exclude} | {clean_text(t) for t in new}
    keep = [r for r in rows if clean_text(r["text"]) not in banned]
    n_replay = min(len(keep), max(REPLAY_PER_LABEL * len(new), REPLAY_MIN))
    pick = np.random.default_rng(0).choice(len(keep), size=n_replay, replace=False) if n_replay else []
    replay = [keep[int(i)] for i in pick]
    train_texts = list(new) + [r["text"] for r in replay]
    train_labels = list(new.values()) + [r["label"] for r in replay]
    # what the child records to be adapted in turn: the parent's bundled part as it was, stored rows here
    child_stored = [r for r in stored if r["text"] not in new] + [
        {"text": t, "label": y, "weight": 1.0} for t, y in new.items()
    ]
    known = set(TrainConfig.__dataclass_fields__)
    recorded = {k: v for k, v in (parent.metadata.get("config") or {}).items() if k in known}
    mode = model.mode if model.mode in ("frozen", "full", "lora") else "frozen"
    config = TrainConfig.from_dict(
        {
            **recorded,
            "mode": mode,
            "encoder": "",
            "epochs": 30 if mode == "frozen" else 3,
            "lr": float(recorded.get("lr", 5e-4)) * (1.0 if mode == "frozen" else 0.5),
            # early stopping on a handful of held-out texts is noise: small sets train the fixed epochs
            "val_fraction": 0.1 if len(train_texts) >= 200 else 0.0,
            "time_budget_s": 0.0,
            "device": "auto",
            "processes": settings.SLM_TRAIN_PROCESSES,
        }
    )
    job.log(
        f"warm start from {parent.ref} ({mode}): {len(new)} new labels + {len(replay)} replayed of its "
        f"{len(rows)} training texts, {config.epochs} epochs"
    )
    result = train_transformer(model, train_texts, train_labels, config, on_epoch=job.epoch_report(config.epochs))
    job.log(f"best epoch {result.best_epoch} of {result.epochs_run}")
    parent_record = parent.metadata.get("training_data") or {}
    meta = build_metadata(
        family="transformer",
        labels=list(model.labels),
        config={"family": "transformer", **config.to_dict()},
        data_hash=data_hash(zip(train_texts, train_labels, strict=True)),
        metrics={},
        data={
            "source": f"adapted from {parent.ref}: {len(new)} new labels + {len(replay)} replayed of its data",
            "n_train": result.n_train,
            "n_val": result.n_val,
            "n_test": 0,
        },
        curves={"x": "epoch", **result.curves},
        timings=dict(result.timings),
        description=f"warm start from {parent.ref} on annotate labels + replay",
        training_data=stored_record(child_stored, bundled=parent_record.get("bundled")),
    )
    meta["adaptation"] = {
        "method": "warm_start_replay",
        "parent": parent.ref,
        "mode": mode,
        "n_parent": len(rows),
        "n_new": len(new),
        "n_replay": len(replay),
    }
    meta["languages"] = list(parent.metadata.get("languages") or [])

    def write(directory: Path) -> None:
        result.model.save(directory)
        write_training_rows(directory, child_stored)

    return result.model, write, meta


def _train_ngram(job: _Job) -> Trained:
    from slm.classify.ngram import NgramClassifier, NgramConfig
    from slm.classify.versions import build_metadata
    from slm.data import data_hash

    job.log("training the n-gram model (TF-IDF char + word n-grams, linear)")
    config = NgramConfig()
    model = NgramClassifier.train(
        job.texts, job.labels, config, label_order=job.label_names, progress=job.fraction_report()
    )
    job.progress(0.9, epoch=1, epochs=1, eta_s=0.0)
    meta = build_metadata(
        family="ngram",
        labels=job.label_names,
        config={"family": "ngram", **config.to_dict()},
        data_hash=data_hash(zip(job.texts, job.labels, strict=True)),
        metrics={},
        data={"source": "annotate labels", "n_train": len(job.texts), "n_val": 0, "n_test": 0},
        description="n-gram model retrained from annotate labels",
    )
    return model, _saver(model), meta


def _train_transformer(job: _Job) -> Trained:
    """A head on the project's encoder (frozen: features once, then head epochs), e.g. the first retrain of
    a project on a bare encoder. The labels are stored with the version, so a later retrain can warm-start
    from it."""
    from slm.classify.adapt import stored_record, write_training_rows
    from slm.classify.train import TrainConfig, train_transformer
    from slm.classify.transformer import TransformerClassifier
    from slm.classify.versions import build_metadata
    from slm.data import data_hash
    from slmsite.registry import get_registry

    source = job.project.base_model.strip()
    if not source:
        raise TrainingError("the transformer family needs a base encoder (hub id, local path or registry:<name>)")
    config = TrainConfig(
        mode="frozen",
        encoder=source,
        epochs=30,
        val_fraction=0.1 if len(job.texts) >= 30 else 0.0,
        num_threads=2,
        processes=settings.SLM_TRAIN_PROCESSES,
    )
    rows = [{"text": t, "label": y, "weight": 1.0} for t, y in zip(job.texts, job.labels, strict=True)]
    job.log(f"loading encoder {source} (frozen mode: features once, then {config.epochs} head epochs)")
    try:
        model = TransformerClassifier.from_encoder(source, job.label_names, registry=get_registry())
    except Exception as exc:
        raise TrainingError(f"could not load the encoder {source!r}: {exc}") from exc

    def report(message: str, fraction: float) -> None:
        if not message.startswith("epoch") or fraction >= 0.9:
            job.log(message)

    result = train_transformer(
        model, job.texts, job.labels, config, progress=report, on_epoch=job.epoch_report(config.epochs)
    )
    stopped = " (stopped early)" if result.stopped_early else ""
    job.log(f"best epoch {result.best_epoch} of {result.epochs_run}{stopped}")
    meta = build_metadata(
        family="transformer",
        labels=job.label_names,
        config={"family": "transformer", **config.to_dict()},
        data_hash=data_hash(zip(job.texts, job.labels, strict=True)),
        metrics={},
        data={"source": "annotate labels", "n_train": result.n_train, "n_val": result.n_val, "n_test": 0},
        curves={"x": "epoch", **result.curves},
        timings=dict(result.timings),
        description=f"transformer ({source}, frozen, + head) trained on annotate labels",
        training_data=stored_record(rows),
    )
    meta["encoder"] = source

    def write(directory: Path) -> None:
        result.model.save(directory)
        write_training_rows(directory, rows)

    return result.model, write, meta


# ------------------------------------------------------------------ simulation
def simulate(project: Project, config: dict[str, Any], progress: Callable[[float], None]) -> dict[str, Any]:
    """Replays AL strategies vs random on the project's fully labelled items (imported reference labels
    plus final labels), evaluating on its gold items."""
    from slm import al_sim

    rows = list(Item.objects.filter(project=project, is_gold=False).values_list("text", "final_label", "meta"))
    texts: list[str] = []
    labels: list[str] = []
    for text, final, meta in rows:
        lab = final or (meta or {}).get("source_label", "")
        if lab:
            texts.append(text)
            labels.append(lab)
    gold = list(
        Item.objects.filter(project=project, is_gold=True).exclude(gold_label="").values_list("text", "gold_label")
    )
    if len(set(labels)) < 2 or len(texts) < 50:
        raise TrainingError("the simulation needs a fully labelled pool (at least 50 labelled items, two labels)")
    strategies = [x for x in (config.get("strategies") or ["entropy"]) if x != "random"]
    n = len(texts)
    batch = max(5, min(50, n // 40))
    budget = int(config.get("budget") or min(n, max(10 * batch, n // 2)))

    def report(fraction: float, _message: str = "") -> None:
        progress(fraction)

    curves = al_sim.simulate(
        texts,
        labels,
        strategies=strategies,
        budget=budget,
        initial=batch,
        batch_size=batch,
        test_texts=[t for t, _ in gold] if len(gold) >= 10 else None,
        test_labels=[g for _, g in gold] if len(gold) >= 10 else None,
        pool_limit=int(config.get("pool_limit") or 5000),
        repeats=int(config.get("repeats") or 1),
        progress=report,
    )
    return {
        "curves": {k: {"labels": [int(a) for a, _ in v], "f1": [float(b) for _, b in v]} for k, v in curves.items()},
        "savings": al_sim.label_savings(curves),
        "budget": budget,
        "batch_size": batch,
        "pool": n,
    }
