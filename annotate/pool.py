"""Scoring a project's unlabelled pool — the service the refresh job calls after every new live version
or import.

The version serving the project predicts every pool item (the suggestion annotators see) and
`slm.classify.pool.pool_context` computes what the project's query strategy needs (MC-dropout or Laplace
posterior samples, embeddings); the strategy's priority per item is stored as `Item.score`, so choosing
the next item is one indexed query. A strategy the model cannot serve is refused with a message on the
project (`pool_error`), never replaced by another strategy's order.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
from django.conf import settings

from annotate import selectors
from annotate.models import Item, Project
from slm.active import PoolContext, get_strategy

log = logging.getLogger(__name__)

TOP = 500  # a batch strategy ranks this many items per refresh; the rest keep a fallback order below them


def pool_cache_path(project_id: int) -> Path:
    return Path(settings.MEDIA_ROOT) / "annotate" / "pool" / f"project-{project_id}.npz"


def query_scores(strategy: str, ctx: PoolContext, *, batch_size: int, top: int = TOP) -> np.ndarray:
    """A priority per pool item (higher = ask sooner) from the strategy over `ctx` (which must hold what
    the strategy needs: a missing input raises ValueError). Batch-aware strategies such as k-center rank the
    `top` items they would ask first; the rest keep a fallback score below the ranked ones."""
    n = ctx.n_pool
    if n == 0:
        return np.zeros(0)
    k = min(n, max(top, batch_size))
    return np.asarray(get_strategy(strategy).priorities(ctx, k), dtype=np.float64)


def pool_refresh(*, project_id: int) -> dict[str, Any]:
    """Re-scores the project's pool with the version serving it; returns what it did."""
    from slm.classify.base import load_classifier
    from slm.classify.pool import StrategyUnavailable, pool_context

    project = Project.objects.get(pk=project_id)
    mv = selectors.serving_version(project)
    if mv is None:
        encoder = selectors.base_encoder(project)
        why = (
            f"the base {encoder} is a bare encoder: the first retrain trains its head, until then items come "
            "in random order"
            if encoder
            else "no model version to score the pool with yet"
        )
        Project.objects.filter(pk=project_id).update(pool_error=why)
        return {"skipped": "no live version"}
    model = load_classifier(mv.path)
    model_labels = list(model.labels)
    if sorted(model_labels) != sorted(project.labels):
        message = f"{mv.ref} predicts {model_labels}, not the project's labels {list(project.labels)}"
        Project.objects.filter(pk=project_id).update(pool_error=message)
        return {"skipped": message}
    order = [model_labels.index(lab) for lab in project.labels]
    pool = list(
        Item.objects.filter(project=project, is_gold=False, final_label="").order_by("id").values_list("id", "text")
    )
    labelled = list(
        Item.objects.filter(project=project, is_gold=False).exclude(final_label="").values_list("text", flat=True)
    )
    ids = [i for i, _ in pool]
    texts = [t for _, t in pool]
    counts = list(selectors.label_distribution(project).values())
    t0 = time.monotonic()
    error = ""
    try:
        ctx = pool_context(
            model, texts, labelled, strategy=project.strategy, label_counts=counts, also=("probs",), seed=0
        )
    except StrategyUnavailable as exc:
        error = f"{exc}; the queue is in random order until the strategy or the model changes"
        ctx = pool_context(model, texts, strategy="entropy", also=("probs",))
    assert ctx.probs is not None
    ctx.probs = ctx.probs[:, order]
    if ctx.mc_probs is not None:
        ctx.mc_probs = ctx.mc_probs[:, :, order]
    scores = np.zeros(len(ids)) if error else query_scores(project.strategy, ctx, batch_size=project.batch_size)
    probs = ctx.probs
    path = pool_cache_path(project_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    extra = {"embeddings": ctx.embeddings} if ctx.embeddings is not None else {}
    np.savez_compressed(path, ids=np.asarray(ids, dtype=np.int64), probs=probs.astype(np.float32), **extra)
    labels = list(project.labels)
    pred = probs.argmax(axis=1) if len(probs) else np.zeros(0, dtype=np.int64)
    conf = probs.max(axis=1) if len(probs) else np.zeros(0)
    objs = [
        Item(id=i, pred_label=labels[int(p)], pred_conf=float(c), score=float(s))
        for i, p, c, s in zip(ids, pred, conf, scores, strict=True)
    ]
    Item.objects.bulk_update(objs, ["pred_label", "pred_conf", "score"], batch_size=1000)
    previous = project.pool_version
    Project.objects.filter(pk=project_id).update(pool_version=mv.version, pool_error=error)
    stability = record_stability(project_id, mv.version, ids, pred, previous)
    return {
        "items": len(ids),
        "seconds": round(time.monotonic() - t0, 2),
        "version": mv.version,
        "strategy": project.strategy,
        "inputs": sorted(k for k in ("probs", "mc_probs", "embeddings") if getattr(ctx, k) is not None),
        **({"error": error} if error else {}),
        **stability,
    }


def record_stability(
    project_id: int, version: str, ids: list[int], pred: np.ndarray, previous_version: str
) -> dict[str, Any]:
    """Stopping signal: share of pool predictions unchanged since the previous version's refresh."""
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
