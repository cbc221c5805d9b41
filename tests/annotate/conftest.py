"""Fixtures for annotate tests: a project with a small pool, private RQ queues, an in-process worker."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from annotate import services
from annotate.models import Project

POS = ["非常好，很满意", "服务很周到", "好吃，分量足", "物流很快，赞", "Great, I love it", "Excellent service",
       "Works perfectly", "Highly recommend it", "环境不错，值得推荐", "书写得太好了"]  # fmt: skip
NEG = ["质量太差了", "服务态度很差", "难吃又贵", "物流太慢了", "Terrible, want a refund", "Awful service",
       "Broke in a day", "Do not buy this", "印刷很差，错别字多", "包装破了，很失望"]  # fmt: skip


def make_project(n_extra: int = 0, **kwargs) -> Project:  # type: ignore[no-untyped-def]
    defaults = {"name": f"p-{uuid.uuid4().hex[:6]}", "labels": ["negative", "positive"], "gold_fraction": 0.0,
                "overlap_k": 1, "overlap_fraction": 0.0, "retrain_every": 0, "min_per_label": 0}  # fmt: skip
    defaults.update(kwargs)
    project = services.project_create(**defaults)
    rows = [(t, "positive") for t in POS] + [(t, "negative") for t in NEG]
    rows += [(f"item number {i} 第{i}条", None) for i in range(n_extra)]
    services.items_add(project=project, rows=rows)
    return project


def tiny_encoder_dir(directory: Path, **kwargs: Any) -> Path:
    """A tiny char-BERT encoder + tokenizer saved as a local directory (a transformer project's base)."""
    from slm.classify.charbert import char_bert_classifier

    options = {"hidden_size": 32, "num_layers": 2, "num_heads": 2, "max_length": 24, "min_freq": 1, **kwargs}
    tiny = char_bert_classifier(POS + NEG, ["negative", "positive"], **options)
    tiny.encoder.save_pretrained(directory)
    tiny.tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture
def project(db) -> Project:  # type: ignore[no-untyped-def]
    return make_project()


@pytest.fixture
def queues(settings) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """Private queue names on the test Redis so no other worker picks our jobs."""
    tag = uuid.uuid4().hex[:8]
    settings.SLM_GPU_QUEUE = f"test-gpu-{tag}"
    settings.SLM_DEFAULT_QUEUE = f"test-default-{tag}"
    return {"gpu": settings.SLM_GPU_QUEUE, "default": settings.SLM_DEFAULT_QUEUE}


@pytest.fixture
def run_worker(queues) -> Callable[[], None]:  # type: ignore[no-untyped-def]
    """Runs an in-process RQ SimpleWorker over our queues until they are empty (burst)."""
    import django_rq
    from rq import Queue, SimpleWorker

    def run() -> None:
        conn = django_rq.get_connection("gpu")
        qs = [Queue(queues["gpu"], connection=conn), Queue(queues["default"], connection=conn)]
        SimpleWorker(qs, connection=conn).work(burst=True, with_scheduler=False)

    return run
