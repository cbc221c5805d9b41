"""App-level figures for bench/annotate.py (needs a configured, migrated Django DB):

* query time: leasing the next item over a large scored pool (the AL choice is one indexed query because
  the pool refresh job stored each item's strategy priority), and the refresh's scoring step itself;
* labels/s that concurrent annotators (threads, own DB connections) submit, checking that no item was
  ever leased to two of them and no label was lost.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from typing import Any

import numpy as np
from django.db import connection

from annotate import pool, services
from annotate.models import Annotation, Item, Project
from slm.active import PoolContext


def _project(n_items: int, **kwargs: Any) -> Project:
    project = services.project_create(
        name=f"bench-{uuid.uuid4().hex[:8]}",
        labels=["negative", "positive"],
        gold_fraction=0.0,
        overlap_k=1,
        overlap_fraction=0.0,
        retrain_every=0,
        min_per_label=0,
        **kwargs,
    )
    rng = random.Random(0)
    batch: list[Item] = []
    for i in range(n_items):
        batch.append(
            Item(
                project=project,
                text=f"bench item {i}",
                text_hash=uuid.uuid4().hex,
                rand=rng.random(),
                score=rng.random(),
            )
        )
        if len(batch) == 5000:
            Item.objects.bulk_create(batch)
            batch.clear()
    Item.objects.bulk_create(batch)
    Project.objects.filter(pk=project.pk).update(pool_version="bench")
    project.refresh_from_db()
    return project


def query_time(n_items: int = 100_000, repeats: int = 20, user: Any = None) -> dict[str, Any]:
    project = _project(n_items)
    lease_ms = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        a = services.lease_next(project=project, user=user)
        lease_ms.append(1000 * (time.perf_counter() - t0))
        services.label_submit(project=project, user=user, item_id=a.item_id, label="positive")
    rng = np.random.default_rng(0)
    p = rng.dirichlet([1.0, 1.0], size=n_items)
    score_s = {}
    for strategy in ("entropy", "margin", "hybrid"):
        emb = rng.normal(size=(n_items, 64)).astype(np.float32) if strategy == "hybrid" else None
        t0 = time.perf_counter()
        ctx = PoolContext(probs=p, embeddings=emb, seed=0)
        pool.query_scores(strategy, ctx, batch_size=20)
        score_s[strategy] = round(time.perf_counter() - t0, 3)
    return {
        "pool": n_items,
        "lease_next_ms_median": round(float(np.median(lease_ms)), 2),
        "lease_next_ms_max": round(float(np.max(lease_ms)), 2),
        "refresh_scoring_s": score_s,
        "db": connection.vendor,
    }


def annotator_throughput(users: list[Any], n_items: int = 400, seconds: float = 10.0) -> dict[str, Any]:
    project = _project(n_items)
    leased: dict[int, list[int]] = {u.pk: [] for u in users}
    errors: list[str] = []
    stop = time.monotonic() + seconds
    barrier = threading.Barrier(len(users))

    def work(user: Any) -> None:
        try:
            barrier.wait(10)
            while time.monotonic() < stop:
                a = services.lease_next(project=project, user=user)
                if a is None:
                    break
                leased[user.pk].append(a.item_id)
                services.label_submit(project=project, user=user, item_id=a.item_id, label="positive")
        except Exception as exc:  # noqa: BLE001
            errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            connection.close()

    t0 = time.perf_counter()
    threads = [threading.Thread(target=work, args=(u,)) for u in users]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    all_ids = [i for ids in leased.values() for i in ids]
    n_labels = Annotation.objects.filter(project=project).count()
    return {
        "annotators": len(users),
        "labels": n_labels,
        "seconds": round(elapsed, 2),
        "labels_per_s": round(n_labels / elapsed, 1),
        "double_assigned": len(all_ids) - len(set(all_ids)),
        "lost": len(all_ids) - n_labels,
        "errors": errors[:3],
        "db": connection.vendor,
    }
