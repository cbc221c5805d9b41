"""Train -> evaluate on held-out data -> register, for each family, with the full metadata schema.

Used by the sentiment bootstrap (both families + an ensemble on one held-out split, promote the best
by held-out macro-F1), `manage.py train_sentiment`, and retraining jobs.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from slm.classify.ensemble import EnsembleClassifier
from slm.classify.ngram import NgramClassifier, NgramConfig
from slm.classify.versions import build_metadata, evaluate, register_classifier
from slm.data import data_hash
from slm.registry import ModelVersion, Registry

Progress = Callable[[str, float], None]


@dataclass
class Split:
    train_texts: list[str]
    train_labels: list[str]
    test_texts: list[str] = field(default_factory=list)
    test_labels: list[str] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    source: str = ""
    quality: dict[str, Any] = field(default_factory=dict)
    split_name: str = "held-out"
    languages: list[str] = field(default_factory=list)  # of the texts, e.g. ["zh"]; [] = not known
    # how to reproduce train_texts/train_labels (slm.classify.adapt.bundled_record); {} = not reproducible
    training_data: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.labels:
            self.labels = sorted({*self.train_labels, *self.test_labels})

    @property
    def train_hash(self) -> str:
        return data_hash(zip(self.train_texts, self.train_labels, strict=True))

    @property
    def test_hash(self) -> str:
        return data_hash(zip(self.test_texts, self.test_labels, strict=True))


@dataclass
class Candidate:
    family: str
    model: Any
    metrics: dict[str, Any]
    config: dict[str, Any]
    curves: dict[str, Any]
    timings: dict[str, Any]
    description: str
    version: ModelVersion | None = None


def _test_metrics(model: Any, split: Split) -> dict[str, Any]:
    if not split.test_texts:
        return {}
    metrics = evaluate(model, split.test_texts, split.test_labels)
    metrics["split"] = split.split_name
    metrics["test_hash"] = split.test_hash
    return metrics


def fit_ngram(split: Split, config: NgramConfig | None = None, *, progress: Progress | None = None) -> Candidate:
    config = config or NgramConfig()
    started = time.perf_counter()
    model = NgramClassifier.train(
        split.train_texts, split.train_labels, config, label_order=split.labels, progress=progress
    )
    train_s = time.perf_counter() - started
    metrics = _test_metrics(model, split)
    return Candidate(
        family="ngram",
        model=model,
        metrics=metrics,
        config={"family": "ngram", **config.to_dict()},
        curves={},
        timings={"train_s": round(train_s, 2), "eval_s": metrics.get("eval_s", 0.0), **model.train_info},
        description=_ngram_description(config.classifier, config.char_ngram, config.word_ngram, model.n_features),
    )


def _ngram_description(classifier: str, char: Any, word: Any, n_features: int) -> str:
    """ "n-gram svm on character 1–3-grams: 120,799 features" (words, not Python lists)."""
    parts = [f"{kind} {r[0]}–{r[1]}-grams" for kind, r in (("character", char), ("word", word)) if r]
    return f"n-gram {classifier} on {' + '.join(parts) or 'nothing'}: {n_features:,} features"


def fit_transformer(
    split: Split,
    model: Any,
    train_config: Any,
    *,
    progress: Progress | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    teacher: Any = None,
    teacher_ref: str = "",
) -> Candidate:
    """Trains a transformer classifier on the split's training texts and scores it on its test texts.

    With a `teacher` (any classifier family) the model is distilled: it learns from the teacher's
    probabilities on the training texts as well as from the labels (TrainConfig.distill_alpha /
    distill_temperature). Pruning settings in the config apply before the training."""
    from slm.classify.train import train_transformer
    from slm.classify.versions import probabilities

    started = time.perf_counter()
    teacher_probs = probabilities(teacher, split.train_texts, model.labels) if teacher is not None else None
    result = train_transformer(
        model,
        split.train_texts,
        split.train_labels,
        train_config,
        progress=progress,
        on_epoch=on_epoch,
        teacher_probs=teacher_probs,
    )
    train_s = time.perf_counter() - started
    metrics = _test_metrics(model, split)
    metrics["val"] = {k: result.val_metrics.get(k) for k in ("accuracy", "macro_f1", "ece")}
    curves = {"x": "epoch", **{k: v for k, v in result.curves.items()}}
    config = {
        "family": "transformer",
        **train_config.to_dict(),
        "encoder_source": model.encoder_source,
        "best_epoch": result.best_epoch,
        "epochs_run": result.epochs_run,
        "stopped_early": result.stopped_early,
        "n_val": result.n_val,
    }
    n_params = sum(p.numel() for p in model.parameters())
    description = (
        f"{train_config.mode} {model.encoder_source}, {n_params / 1e6:.1f}M params, {result.epochs_run} epochs"
    )
    compression: dict[str, Any] = {}
    if teacher is not None:
        t, a = train_config.distill_temperature, train_config.distill_alpha
        compression["distilled_from"] = {"ref": teacher_ref, "temperature": t, "alpha": a}
        description += f", distilled from {teacher_ref or 'a teacher'} (T={t:g}, alpha={a:g})"
    if result.pruning:
        compression["pruning"] = result.pruning
        if "heads_removed" in result.pruning:
            description += f", {result.pruning['heads_removed']}/{result.pruning['heads_total']} heads pruned"
        if "weight_sparsity" in result.pruning:
            description += f", {100 * result.pruning['weight_sparsity']:.0f}% of encoder weights zero"
    if compression:
        compression["params"] = n_params
        config["compression"] = compression
    return Candidate(
        family="transformer",
        model=model,
        metrics=metrics,
        config=config,
        curves=curves,
        timings={"train_s": round(train_s, 2), "eval_s": metrics.get("eval_s", 0.0), **result.timings},
        description=description,
    )


def fit_ensemble(split: Split, members: Sequence[Candidate], weights: Sequence[float] | None = None) -> Candidate:
    model = EnsembleClassifier([c.model for c in members], weights)
    metrics = _test_metrics(model, split)
    return Candidate(
        family="ensemble",
        model=model,
        metrics=metrics,
        config={
            "family": "ensemble",
            "weights": model.weights,
            "members": [{"family": c.family, "version": c.version.ref if c.version else None} for c in members],
        },
        curves={},
        timings={"eval_s": metrics.get("eval_s", 0.0)},
        description="mean of " + " + ".join(c.family for c in members),
    )


def register_candidate(
    registry: Registry,
    name: str,
    candidate: Candidate,
    split: Split,
    *,
    parent: str | None = None,
    extra: dict[str, Any] | None = None,
    promote: bool = False,
) -> ModelVersion:
    meta = build_metadata(
        family=candidate.family,
        labels=split.labels,
        config=candidate.config,
        data_hash=split.train_hash,
        metrics=candidate.metrics,
        data={
            "source": split.source,
            "n_train": len(split.train_texts),
            "n_test": len(split.test_texts),
            "test_hash": split.test_hash if split.test_texts else None,
        },
        quality=split.quality,
        curves=candidate.curves,
        timings=candidate.timings,
        description=candidate.description,
        languages=split.languages,
        training_data=split.training_data,
        extra=extra,
    )
    candidate.version = register_classifier(registry, name, candidate.model, meta, parent=parent, promote=promote)
    return candidate.version


def best_candidate(candidates: Sequence[Candidate], metric: str = "macro_f1") -> Candidate:
    """Highest held-out `metric`; ties go to the earlier (cheaper) candidate."""
    best = candidates[0]
    for c in candidates[1:]:
        if float(c.metrics.get(metric, -1)) > float(best.metrics.get(metric, -1)) + 1e-9:
            best = c
    return best
