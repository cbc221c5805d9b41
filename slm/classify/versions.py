"""Registering a trained classifier as an immutable registry version, with its metadata.

metadata.json of a classifier version (every key is present; values may be empty)::

    family        "ngram" | "transformer" | "ensemble"   (load_classifier dispatches on it)
    task          "text-classification"
    labels        ["negative", "positive"]               (column order of predict_proba)
    config        the training config (family specific: NgramConfig / TrainConfig as a dict)
    data_hash     sha256 of the (text, label) training rows after preprocessing
    data          {"source", "n_train", "n_val", "n_test"}
    quality       the QualityReport dict of the preprocessing run (counts, drops, balance, lengths)
    metrics       compute_metrics() on the evaluation split + {"split": "held-out" | ...}
    curves        {"x": "epoch", "epoch": [...], "train_loss": [...], "val_loss": [...],
                   "train_accuracy": [...], "val_accuracy": [...]}; plot curves[curves["x"]] against
                   every other list. The n-gram family has no epochs: its x is "train_fraction" (a
                   learning curve) or the curves are {} when none was computed.
    timings       {"train_s", "eval_s", ... "total_s"} in seconds
    parent        the version this one was trained from / compared with, or null
    languages     ISO 639-1 codes of the training texts (["zh"] for the bundled reviews); [] = not known
    training_data how to reproduce the training set (slm.classify.adapt): {"bundled": {dataset, params,
                  hash, n} | null, "file": rows stored in the version directory | null, ...}; {} = not
                  recorded, such a version cannot be adapted (only retrained from scratch)
    description   one line for lists
    (+ name, version, created: filled in by the registry)
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from slm.classify.base import Classifier
from slm.classify.metrics import compute_metrics
from slm.registry import ModelVersion, Registry


def evaluate(
    model: Classifier,
    texts: Sequence[str],
    labels: Sequence[str],
    *,
    label_order: Sequence[str] | None = None,
    batch_size: int = 256,
) -> dict[str, Any]:
    """compute_metrics() of `model` on labelled texts — the one evaluation of a trained classifier
    (held-out splits, annotate's gold items, the live version it is compared with).

    `label_order` reports the metrics in that label order (a project's labels) instead of the model's;
    it must be the same set. Labels unknown to the model raise ValueError."""
    model_labels = [str(x) for x in model.labels]
    names = [str(x) for x in label_order] if label_order is not None else model_labels
    if sorted(names) != sorted(model_labels):
        raise ValueError(f"model labels {model_labels} differ from {names}")
    index = {lab: i for i, lab in enumerate(names)}
    unknown = sorted({str(x) for x in labels} - set(index))
    if unknown:
        raise ValueError(f"labels {unknown} are not known to the model (its labels: {model_labels})")
    started = time.perf_counter()
    probs = probabilities(model, texts, names, batch_size=batch_size)
    metrics = compute_metrics([index[str(x)] for x in labels], probs, labels=names)
    metrics["eval_s"] = round(time.perf_counter() - started, 3)
    metrics["ms_per_text"] = round(1000 * metrics["eval_s"] / max(1, len(texts)), 3)
    return metrics


def normalize_languages(languages: Sequence[str] | str) -> list[str]:
    """["zh", "en"] from "zh,en", ["ZH", " en "] etc.: lower-case codes, de-duplicated, in order. Codes are
    ISO 639-1/-3 style (2-3 letters, optionally a region: "zh-tw"); anything else raises ValueError."""
    items = languages.split(",") if isinstance(languages, str) else list(languages)
    out: list[str] = []
    for item in items:
        code = str(item).strip().lower().replace("_", "-")
        if not code:
            continue
        head, dash, region = code.partition("-")
        if not (head.isascii() and head.isalpha() and 2 <= len(head) <= 3) or (
            dash and not (region.isascii() and region.isalnum() and 2 <= len(region) <= 4)
        ):
            raise ValueError(f"{item!r} is not a language code (use ISO 639 codes such as zh, en, zh-tw)")
        if code not in out:
            out.append(code)
    return out


def probabilities(
    model: Classifier, texts: Sequence[str], label_order: Sequence[str], *, batch_size: int = 256
) -> np.ndarray:
    """model.predict_proba in batches, columns in `label_order` (the same label set as the model's)."""
    model_labels = [str(x) for x in model.labels]
    if sorted(model_labels) != sorted(str(x) for x in label_order):
        raise ValueError(f"model labels {model_labels} differ from {list(label_order)}")
    parts = [model.predict_proba(list(texts[i : i + batch_size])) for i in range(0, len(texts), batch_size)]
    probs = np.concatenate(parts) if parts else np.zeros((0, len(model_labels)))
    return probs[:, [model_labels.index(str(lab)) for lab in label_order]]


def build_metadata(
    *,
    family: str,
    labels: Sequence[str],
    config: dict[str, Any],
    data_hash: str,
    metrics: dict[str, Any],
    data: dict[str, Any] | None = None,
    quality: dict[str, Any] | None = None,
    curves: dict[str, Any] | None = None,
    timings: dict[str, Any] | None = None,
    description: str = "",
    languages: Sequence[str] | None = None,
    training_data: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "family": family,
        "task": "text-classification",
        "labels": [str(x) for x in labels],
        "config": config,
        "data_hash": data_hash,
        "data": data or {},
        "quality": quality or {},
        "metrics": metrics,
        "curves": curves or {},
        "timings": timings or {},
        "description": description,
        "languages": normalize_languages(languages or []),
        "training_data": dict(training_data or {}),
    }
    if extra:
        meta.update(extra)
    return meta


def register_classifier(
    registry: Registry,
    name: str,
    model: Any,
    metadata: dict[str, Any],
    *,
    parent: str | None = None,
    promote: bool = False,
) -> ModelVersion:
    """Saves `model` (anything with .save(dir)) as a new version of `name`; optionally makes it live."""
    if "family" not in metadata:
        raise ValueError("classifier metadata needs a 'family'")

    def write(directory: Path) -> None:
        model.save(directory)

    mv = registry.create_version(name, write, metadata, parent=parent)
    if promote:
        registry.promote(name, mv.version)
    return mv
