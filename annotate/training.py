"""The glue between annotate and the ML core (slm.classify, slm.active, slm.al_sim): train a project's
classifier, score the pool with its query strategy, track prediction stability, run simulations.
Django-side only because it reads Project settings; all ML lives in slm/."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from django.conf import settings

from annotate.models import Item, Project


class TrainingError(Exception):
    """A retrain that cannot succeed (bad data or configuration): no retry."""


Progress = Callable[..., None]


def train(
    *,
    project: Project,
    texts: list[str],
    labels: list[str],
    progress: Progress,
    log: Callable[[str], None],
) -> tuple[Any, Callable[[Path], None], dict[str, Any]]:
    """Trains the project's model family on (texts, labels).

    Returns (model with .labels/.predict_proba, write(dir) that saves it as a registry version,
    metadata for the registry)."""
    label_names = list(project.labels)
    t0 = time.monotonic()
    if project.family == Project.Family.TRANSFORMER:
        model, write, meta = _train_transformer(project, texts, labels, label_names, progress, log)
    else:
        model, write, meta = _train_ngram(texts, labels, label_names, progress, log)
    meta.setdefault("timings", {})["train_s"] = round(time.monotonic() - t0, 3)
    return model, write, meta


def _train_ngram(
    texts: list[str], labels: list[str], label_names: list[str], progress: Progress, log: Callable[[str], None]
) -> tuple[Any, Callable[[Path], None], dict[str, Any]]:
    from slm.classify.ngram import NgramClassifier, NgramConfig

    started = time.monotonic()
    log("training the n-gram model (TF-IDF char + word n-grams, linear)")

    def report(message: str, fraction: float) -> None:
        elapsed = time.monotonic() - started
        eta = elapsed * (1 - fraction) / fraction if fraction > 0.05 else None
        progress(0.9 * fraction, epoch=1, epochs=1, eta_s=eta)

    config = NgramConfig()
    model = NgramClassifier.train(texts, labels, config, label_order=label_names, progress=report)
    progress(0.9, epoch=1, epochs=1, eta_s=0.0)

    def write(directory: Path) -> None:
        model.save(directory)

    from slm.classify.versions import build_metadata
    from slm.data import data_hash

    meta = build_metadata(
        family="ngram",
        labels=label_names,
        config={"family": "ngram", **config.to_dict()},
        data_hash=data_hash(zip(texts, labels, strict=True)),
        metrics={},
        data={"source": "annotate labels", "n_train": len(texts), "n_val": 0, "n_test": 0},
        description="n-gram model retrained from annotate labels",
    )
    return model, write, meta


def _train_transformer(
    project: Project,
    texts: list[str],
    labels: list[str],
    label_names: list[str],
    progress: Progress,
    log: Callable[[str], None],
) -> tuple[Any, Callable[[Path], None], dict[str, Any]]:
    from slm.classify.train import TrainConfig, train_transformer
    from slm.classify.transformer import TransformerClassifier
    from slm.classify.versions import build_metadata
    from slm.data import data_hash
    from slmsite.registry import get_registry

    source = project.base_model.strip()
    if not source:
        raise TrainingError("the transformer family needs a base encoder (hub id, local path or registry:<name>)")
    config = TrainConfig(
        mode="frozen",
        encoder=source,
        epochs=30,
        val_fraction=0.1 if len(texts) >= 30 else 0.0,
        num_threads=2,
        processes=settings.SLM_TRAIN_PROCESSES,
    )
    log(f"loading encoder {source} (frozen mode: features once, then {config.epochs} head epochs)")
    try:
        model = TransformerClassifier.from_encoder(source, label_names, registry=get_registry())
    except Exception as exc:
        raise TrainingError(f"could not load the encoder {source!r}: {exc}") from exc

    def on_epoch(row: dict[str, Any]) -> None:
        epochs = int(row.get("epochs") or config.epochs)
        epoch = int(row["epoch"])
        progress(
            0.1 + 0.8 * epoch / epochs, epoch=epoch, epochs=epochs, loss=row.get("train_loss"), eta_s=row.get("eta_s")
        )

    def report(message: str, fraction: float) -> None:
        if not message.startswith("epoch") or fraction >= 0.9:
            log(message)

    result = train_transformer(model, texts, labels, config, progress=report, on_epoch=on_epoch)
    log(f"best epoch {result.best_epoch} of {result.epochs_run}{' (stopped early)' if result.stopped_early else ''}")

    def write(directory: Path) -> None:
        result.model.save(directory)

    meta = build_metadata(
        family="transformer",
        labels=label_names,
        config={"family": "transformer", **config.to_dict()},
        data_hash=data_hash(zip(texts, labels, strict=True)),
        metrics={},
        data={"source": "annotate labels", "n_train": result.n_train, "n_val": result.n_val, "n_test": 0},
        curves={"x": "epoch", **result.curves},
        timings=dict(result.timings),
        description="transformer (frozen encoder + head) retrained from annotate labels",
    )
    return result.model, write, meta


# ------------------------------------------------------------------ pool scoring
def query_scores(
    strategy: str, probs: np.ndarray, embeddings: np.ndarray | None, *, batch_size: int, top: int = 500
) -> np.ndarray:
    """A priority per pool row (higher = ask sooner) from the project's query strategy.

    The strategy ranks the `top` rows it would ask first (batch-aware strategies such as k-center need
    the whole pool, so this runs in the refresh job, not per request); the rest keep their uncertainty
    as a tiebreak below the ranked ones.
    """
    n = len(probs)
    if n == 0:
        return np.zeros(0)
    from slm.active import STRATEGY_NEEDS, PoolContext, get_strategy

    have = {"probs", *(["embeddings"] if embeddings is not None else [])}
    if not set(STRATEGY_NEEDS.get(strategy, ("probs",))) <= have:
        strategy = "entropy"  # e.g. BALD without MC passes, k-center without embeddings
    ctx = PoolContext(probs=probs, embeddings=embeddings, seed=0)
    k = min(n, max(top, batch_size))
    return np.asarray(get_strategy(strategy).priorities(ctx, k), dtype=np.float64)


def record_stability(
    project_id: int, version: str, ids: list[int], pred: np.ndarray, previous_version: str
) -> dict[str, Any]:
    """Stopping signal: share of pool predictions unchanged since the previous version's refresh."""
    from annotate.jobs import pool_cache_path

    path = pool_cache_path(project_id).with_name(f"project-{project_id}-preds.npz")
    out: dict[str, Any] = {}
    if path.exists() and previous_version and previous_version != version:
        old = np.load(path)
        old_map = dict(zip(old["ids"].tolist(), old["pred"].tolist(), strict=True))
        common = [(old_map[i], int(p)) for i, p in zip(ids, pred.tolist(), strict=True) if i in old_map]
        if common:
            from slm.active import prediction_agreement, should_stop

            a = np.asarray(common)
            agreement = float((a[:, 0] == a[:, 1]).mean())
            kappa = float(prediction_agreement(a[:, 0].tolist(), a[:, 1].tolist()))
            project = Project.objects.get(pk=project_id)
            history = list(project.stability or [])[-49:]
            kappas = [h.get("kappa") for h in history] + [kappa]
            out = {
                "version": version,
                "previous": previous_version,
                "agreement": agreement,
                "kappa": kappa if np.isfinite(kappa) else None,
                "n": len(common),
                "should_stop": should_stop(kappas),
            }
            Project.objects.filter(pk=project_id).update(stability=[*history, out])
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, ids=np.asarray(ids, dtype=np.int64), pred=np.asarray(pred, dtype=np.int64))
    return out


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
