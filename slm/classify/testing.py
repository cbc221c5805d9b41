"""Helpers for tests elsewhere in the project: a real, tiny classifier version in well under a second.

    from slm.classify.testing import make_tiny_version
    mv = make_tiny_version(registry)                       # sentiment@v0001, live, ngram family
    mv = make_tiny_version(registry, labels=("neg", "neu", "pos"), promote=False)

The model is a genuine n-gram classifier trained on ~20 short Chinese and English reviews (it gets
"太好了" / "great" right), registered with the full metadata schema of slm.classify.versions; its
training rows are stored with the version, so it can be adapted (slm.classify.adapt.adapt_ngram).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from slm.classify.adapt import StoredRowsNgramClassifier, stored_record
from slm.classify.ngram import NgramClassifier, NgramConfig
from slm.classify.versions import build_metadata, evaluate, register_classifier
from slm.data import data_hash
from slm.registry import ModelVersion, Registry
from slm.text import PreprocessConfig, preprocess

NEGATIVE_TEXTS = (
    "质量太差了，非常失望",
    "服务态度很差，不会再来了",
    "难吃，又贵又慢",
    "书的印刷很差，错别字很多",
    "物流太慢，包装也破了",
    "This is terrible, I want a refund.",
    "Awful service and the food was cold.",
    "Worst purchase ever, it broke in a day.",
    "Very disappointing, do not buy.",
    "The battery is bad and the screen is dim.",
)
POSITIVE_TEXTS = (
    "非常好，很满意，推荐购买",
    "服务很周到，环境也不错",
    "好吃，分量足，下次还来",
    "这本书写得太好了，值得一读",
    "物流很快，包装完好，赞",
    "This is great, I love it!",
    "Excellent service and delicious food.",
    "Best purchase ever, works perfectly.",
    "Very happy with it, highly recommend.",
    "The battery is good and the screen is bright.",
)
TINY_CONFIG = NgramConfig(char_ngram=(1, 3), word_ngram=(1, 2), min_df=1, C=10.0, calibrate="none")


def tiny_dataset(labels: Sequence[str] = ("negative", "positive")) -> tuple[list[str], list[str]]:
    """~10 texts per label. With two labels the first gets the negative reviews and the second the
    positive ones; any further label gets short synthetic texts naming it ("关于 <label> 的评论 3")."""
    labels = [str(x) for x in labels]
    if len(labels) < 2 or len(set(labels)) != len(labels):
        raise ValueError("need at least two distinct labels")
    texts: list[str] = []
    out_labels: list[str] = []
    for i, lab in enumerate(labels):
        if i == 0:
            pool: Sequence[str] = NEGATIVE_TEXTS
        elif i == 1:
            pool = POSITIVE_TEXTS
        else:
            pool = [f"关于 {lab} 的评论 {k}" if k % 2 else f"a review about {lab} number {k}" for k in range(10)]
        texts.extend(pool)
        out_labels.extend([lab] * len(pool))
    return texts, out_labels


def make_tiny_version(
    registry: Registry,
    name: str = "sentiment",
    labels: Sequence[str] = ("negative", "positive"),
    promote: bool = True,
) -> ModelVersion:
    """Trains the tiny n-gram model and registers it (optionally live). Signature is stable."""
    started = time.perf_counter()
    labels = [str(x) for x in labels]
    raw_texts, raw_labels = tiny_dataset(labels)
    texts, y, quality = preprocess(raw_texts, raw_labels, PreprocessConfig(min_chars=2))
    model = StoredRowsNgramClassifier.train(texts, y, TINY_CONFIG, label_order=labels)
    model.stored_rows = [{"text": t, "label": lab, "weight": 1.0} for t, lab in zip(texts, y, strict=True)]
    train_s = time.perf_counter() - started
    # learning curve on the training texts themselves (a test model has no held-out split)
    curve_x = [0.5, 1.0]
    curve_acc: list[float] = []
    for frac in curve_x:
        keep = [i for i in range(len(texts)) if (i % 10) < round(10 * frac)]
        sub = NgramClassifier.train([texts[i] for i in keep], [y[i] for i in keep], TINY_CONFIG, label_order=labels)
        curve_acc.append(evaluate(sub, texts, y)["accuracy"])
    metrics = evaluate(model, texts, y)
    metrics["split"] = "train (tiny test model)"
    meta = build_metadata(
        family="ngram",
        labels=labels,
        config={"family": "ngram", **TINY_CONFIG.to_dict()},
        data_hash=data_hash(zip(texts, y, strict=True)),
        metrics=metrics,
        data={
            "source": "slm.classify.testing tiny dataset",
            "n_train": len(texts),
            "n_val": 0,
            "n_test": 0,
        },
        quality=quality.to_dict(),
        curves={"x": "train_fraction", "train_fraction": curve_x, "train_accuracy": curve_acc},
        timings={"train_s": round(train_s, 4), "total_s": round(time.perf_counter() - started, 4)},
        description="tiny n-gram test model",
        languages=["zh", "en"],
        training_data=stored_record(model.stored_rows),
    )
    return register_classifier(registry, name, model, meta, promote=promote)
