"""Reads: registry versions of the sentiment model, model-card data, batch predictions."""

from __future__ import annotations

import json
from typing import Any

from django.conf import settings
from django.db.models import QuerySet

from sentiment.models import BatchPrediction
from slm.registry import ModelVersion, Registry
from slmsite.bootstrap import building
from slmsite.promotion import promote_warning
from slmsite.registry import get_registry


def _registry(registry: Registry | None) -> Registry:
    return registry or get_registry()


def _num(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def split_figures(meta: dict[str, Any]) -> dict[str, Any]:
    """The version's figures by the data they were measured on, never mixed: `test` = its own evaluation
    split (named by `test_split`: "held-out" for the default models), `gold` = an annotate project's gold
    items (retrained versions), {} when there are none."""
    metrics = dict(meta.get("metrics") or {})
    split = str(metrics.get("split") or "held-out")
    gold = dict(meta.get("gold_metrics") or {})
    if "gold" in split:
        gold = gold or metrics
        metrics = {}
    return {"test": metrics, "test_split": split if metrics else "", "gold": gold}


def unavailable_message(message: str, *, page: bool = False) -> str:
    """What to say when the live model cannot answer (503): while `make run` is still building the default
    model, that it is being built and how far it is, instead of the generic "no live version" (whose advice,
    run bootstrap_models, is what is already happening). `page`: the sentence for the playground."""
    state = building(get_registry(), settings.SENTIMENT_MODEL)
    if state is None or state["state"] not in ("waiting", "running"):
        return message
    if page:
        return (
            f"The sentiment model is still being built ({state['percent']}%, see above); your text is kept, "
            "classify it again when the model is ready."
        )
    return (
        f"the default sentiment model is still being built ({state['percent']}%: {state['message'] or 'starting'}); "
        "try again in a few minutes"
    )


def version_summary(mv: ModelVersion, *, live: str | None) -> dict[str, Any]:
    meta = mv.metadata
    labels = meta.get("labels") or []
    if isinstance(labels, dict):  # id2label mapping
        labels = [labels[k] for k in sorted(labels, key=lambda k: int(k))]
    return {
        "version": mv.version,
        "ref": mv.ref,
        "family": str(meta.get("family", "transformer")),
        "labels": [str(label) for label in labels],
        "live": mv.version == live,
        "created": meta.get("created"),
        "parent": meta.get("parent"),
        "data_hash": meta.get("data_hash"),
        "metrics": mv.metrics,
        "languages": [str(x) for x in meta.get("languages") or []],  # [] = not recorded
        **split_figures(meta),
    }


def version_list(
    *, registry: Registry | None = None, name: str | None = None, warnings: bool = False
) -> list[dict[str, Any]]:
    """All versions, newest first, each with metrics and a `live` flag (and, with `warnings`, the
    question to ask before promoting one that is worse than the live version, "" when none)."""
    reg = _registry(registry)
    name = name or settings.SENTIMENT_MODEL
    live = reg.live_version(name)
    out = [version_summary(mv, live=live) for mv in reversed(reg.versions(name))]
    if warnings:
        for v in out:
            v["promote_warning"] = "" if v["live"] else promote_warning(reg, name, v["version"])
    return out


def models_overview(*, registry: Registry | None = None, name: str | None = None) -> dict[str, Any]:
    reg = _registry(registry)
    name = name or settings.SENTIMENT_MODEL
    return {"name": name, "live": reg.live_version(name), "versions": version_list(registry=reg, name=name)}


def family_comparison(versions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per family (ngram, transformer, ...): its live version if any, else its best by macro-F1."""
    by_family: dict[str, dict[str, Any]] = {}
    for v in versions:
        best = by_family.get(v["family"])
        score = _num(v["metrics"].get("macro_f1")) or -1.0
        if (
            best is None
            or (v["live"] and not best["live"])
            or (not best["live"] and score > (_num(best["metrics"].get("macro_f1")) or -1.0))
        ):
            by_family[v["family"]] = v
    order = {"ngram": 0, "transformer": 1, "ensemble": 2}
    rows = []
    for family, v in sorted(by_family.items(), key=lambda kv: (order.get(kv[0], 9), kv[0])):
        rows.append(
            {
                "family": family,
                "version": v["version"],
                "live": v["live"],
                "test_split": v["test_split"],
                "accuracy": _num(v["test"].get("accuracy")),
                "macro_f1": _num(v["test"].get("macro_f1")),
                "ece": _num(v["test"].get("ece")),
                "gold_macro_f1": _num(v["gold"].get("macro_f1")),
            }
        )
    return rows


def _curves(raw: Any) -> dict[str, Any]:
    """Normalises curves to {"x": name, "xs": [...], "series": {name: [...]}}.

    Accepts the registry schema ({"x": "epoch", "epoch": [...], "train_loss": [...], ...}), a plain dict
    of lists, or a list of per-epoch dicts. Empty when there is nothing to plot.
    """
    x_key = "epoch"
    if isinstance(raw, list) and raw and all(isinstance(r, dict) for r in raw):
        keys: list[str] = []
        for r in raw:
            keys += [k for k in r if k not in keys]
        data = {k: [_num(r.get(k)) for r in raw] for k in keys}
    elif isinstance(raw, dict):
        x_key = str(raw.get("x") or "epoch")
        data = {}
        for k, v in raw.items():
            if isinstance(v, list) and all(isinstance(x, int | float) or x is None for x in v):
                data[str(k)] = [_num(x) for x in v]
    else:
        return {}
    series = {k: v for k, v in data.items() if k != x_key and any(x is not None for x in v)}
    if not series:
        return {}
    length = max(len(v) for v in series.values())
    xs = data.get(x_key) or list(range(1, length + 1))
    return {"x": x_key, "xs": xs[:length], "series": series}


def _per_class(metrics: dict[str, Any], labels: list[str]) -> list[dict[str, Any]]:
    raw = metrics.get("per_class") or {}
    rows = []
    if isinstance(raw, dict):
        items = list(raw.items())
    elif isinstance(raw, list):
        items = [(str(r.get("label", i)), r) for i, r in enumerate(raw) if isinstance(r, dict)]
    else:
        items = []
    for label, r in items:
        if not isinstance(r, dict):
            continue
        rows.append(
            {
                "label": label,
                "precision": _num(r.get("precision")),
                "recall": _num(r.get("recall")),
                "f1": _num(r.get("f1", r.get("f1-score"))),
                "support": r.get("support"),
            }
        )
    return rows


def _matrix(metrics: dict[str, Any], labels: list[str]) -> dict[str, Any] | None:
    cm = metrics.get("confusion_matrix")
    if isinstance(cm, dict):
        labels = [str(x) for x in cm.get("labels", labels)]
        cm = cm.get("matrix")
    if not isinstance(cm, list) or not cm or not all(isinstance(row, list) for row in cm):
        return None
    n = len(cm)
    if len(labels) != n:
        labels = [str(i) for i in range(n)]
    rows = []
    peak = max((max(row) for row in cm if row), default=0) or 1
    for i, (label, row) in enumerate(zip(labels, cm, strict=False)):
        total = sum(row) or 1
        cells = [
            {"count": c, "share": c / total, "alpha": round(0.08 + 0.85 * c / peak, 3), "diag": i == j}
            for j, c in enumerate(row)
        ]
        rows.append({"label": label, "cells": cells})
    return {"labels": labels, "matrix": cm, "rows": rows}


def _value_text(key: str, v: Any) -> str:
    """A metadata value in words: ranges as "1–3", lists joined, yes/no, 3 significant digits."""
    from slmsite.templatetags.slm_format import sig3

    if v is None or v == "" or v == [] or v == {}:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    unit = " s" if key.endswith("_s") else ""  # timings: train_s, eval_s, ...
    if isinstance(v, float) and v.is_integer() and abs(v) < 1e15 and not unit:
        v = int(v)  # a count or a setting stored as a float: "4", not "4.00"
    if isinstance(v, float):
        return sig3(v) + unit
    if isinstance(v, int):
        return f"{v:,}{unit}"
    if isinstance(v, list) and len(v) == 2 and all(isinstance(x, int) for x in v) and "gram" in key:
        return f"{v[0]}–{v[1]}"
    if isinstance(v, list) and all(isinstance(x, int | float | str) and not isinstance(x, bool) for x in v):
        return ", ".join(_value_text(key, x) for x in v[:12]) + (f" … ({len(v)} in all)" if len(v) > 12 else "")
    text = v if isinstance(v, str) else json.dumps(v, ensure_ascii=False, default=str)
    return text if len(text) <= 300 else text[:297] + "..."


def _flat(d: Any, prefix: str = "") -> list[tuple[str, str]]:
    """Flattens a nested dict into (dotted key, value in words) rows for key/value tables."""
    out: list[tuple[str, str]] = []
    if not isinstance(d, dict):
        return out
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v and len(v) <= 30:
            out += _flat(v, key + ".")
        else:
            out.append((key, _value_text(key, v)))
    return out


METRIC_NAMES = {
    "accuracy": ("Accuracy", ""),
    "macro_f1": ("Macro-F1", ""),
    "weighted_f1": ("Weighted F1", ""),
    "ece": ("Calibration error (ECE, lower is better)", ""),
    "n": ("Texts scored", ""),
    "eval_s": ("Scoring time", " s"),
    "ms_per_text": ("Time per text", " ms"),
}


def _figures(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """Named single figures of one evaluation (known ones first), for the card's tables."""
    keys = [k for k in METRIC_NAMES if k in metrics]
    keys += [k for k in metrics if k not in METRIC_NAMES]
    rows = []
    for k in keys:
        value = metrics[k]
        if isinstance(value, bool) or _num(value) is None:
            continue
        name, unit = METRIC_NAMES.get(k, (k.replace("_", " "), ""))
        rows.append({"key": k, "name": name, "value": value, "unit": unit, "count": isinstance(value, int)})
    return rows


def _histogram(quality: dict[str, Any]) -> dict[str, Any] | None:
    """The text-length histogram of the quality report, as bars (label "10–19", count), for a chart."""
    hist = quality.get("length_histogram")
    if not isinstance(hist, dict):
        return None
    counts, edges = hist.get("counts"), hist.get("edges")
    if not (isinstance(counts, list) and isinstance(edges, list) and len(edges) == len(counts) + 1):
        return None
    labels = [f"{round(edges[i])}–{round(edges[i + 1])}" for i in range(len(counts))]
    return {"labels": labels, "counts": counts, "unit": str(quality.get("length_unit") or "chars")}


def version_card(version: str, *, registry: Registry | None = None, name: str | None = None) -> dict[str, Any]:
    """Everything a model card shows. Raises RegistryError for an unknown version."""
    reg = _registry(registry)
    name = name or settings.SENTIMENT_MODEL
    mv = reg.get(name, version)
    live = reg.live_version(name)
    summary = version_summary(mv, live=live)
    meta = mv.metadata
    test, gold = summary["test"], summary["gold"]
    main = test or gold  # the evaluation the per-class table and the confusion matrix come from
    config = meta.get("config") or {}
    quality = dict(meta.get("quality") or meta.get("quality_report") or meta.get("data_quality") or {})
    histogram = _histogram(quality)
    if histogram:
        quality.pop("length_histogram", None)
    timings = meta.get("timings") or {}
    shown = {"config", "quality", "quality_report", "data_quality", "timings", "metrics", "curves", "labels"}
    shown |= {"family", "name", "version", "created", "parent", "data_hash", "gold_metrics", "languages"}
    extra = {k: v for k, v in meta.items() if k not in shown}
    matrix = _matrix(main, summary["labels"])
    curves = _curves(meta.get("curves") or main.get("curves"))
    return {
        **summary,
        "main_split": summary["test_split"] if test else "gold",
        "test_figures": _figures(test),
        "gold_figures": _figures(gold),
        "language_names": language_names(summary["languages"]),
        "per_class": _per_class(main, summary["labels"]),
        "matrix": matrix,
        "curves": curves,
        "histogram": histogram,
        "chart_data": {
            "matrix": matrix and {"labels": matrix["labels"], "matrix": matrix["matrix"]},
            "curves": curves,
            "histogram": histogram,
        },
        "config_rows": _flat(config),
        "quality_rows": _flat(quality),
        # times first (train_s, eval_s, ...), then what the trainer reported (features, calibration, ...)
        "timing_rows": sorted(_flat(timings), key=lambda row: not row[0].endswith("_s")),
        "extra_rows": _flat(extra),
    }


def batch_for_user(*, batch_id: int, user: Any) -> BatchPrediction | None:
    """The batch if the user may see it (owner or admin)."""
    qs: QuerySet[BatchPrediction] = BatchPrediction.objects.filter(pk=batch_id)
    if not (user.is_staff or user.is_superuser):
        qs = qs.filter(owner=user)
    return qs.first()


def batch_recent(*, user: Any, limit: int = 5) -> list[BatchPrediction]:
    return list(BatchPrediction.objects.filter(owner=user).order_by("-created")[:limit])


LANGUAGE_NAMES = {
    "zh": "Chinese", "en": "English", "ja": "Japanese", "ko": "Korean", "de": "German", "fr": "French",
    "es": "Spanish", "it": "Italian", "pt": "Portuguese", "ru": "Russian", "ar": "Arabic", "nl": "Dutch",
}  # fmt: skip


def language_names(codes: list[str]) -> list[str]:
    """["zh", "en"] -> ["Chinese", "English"] (unknown codes as they are)."""
    return [LANGUAGE_NAMES.get(code.split("-")[0], code) for code in codes]


def _script_of(text: str) -> str | None:
    """ "han" when the text is mostly Chinese characters, "latin" when it has Latin letters and no Han
    characters; None when it cannot tell (digits, emoji, other scripts)."""
    han = sum(1 for ch in text if "\u4e00" <= ch <= "\u9fff" or "\u3400" <= ch <= "\u4dbf")
    latin = sum(1 for ch in text if ch.isascii() and ch.isalpha())
    if han and han >= latin / 4:  # a Chinese review may quote a brand name
        return "han"
    if latin >= 3 and not han:
        return "latin"
    return None


_SCRIPT_LANGS = {"han": {"zh"}, "latin": {"en", "de", "fr", "es", "it", "pt", "nl"}}


def language_mismatch(text: str, languages: list[str]) -> str:
    """A warning when the text is plainly in a script none of the model's languages use ("" otherwise,
    also when the model's languages are not recorded)."""
    script = _script_of(text)
    if not languages or script is None:
        return ""
    codes = {code.split("-")[0] for code in languages}
    if codes & _SCRIPT_LANGS[script]:
        return ""
    names = " and ".join(language_names(languages))
    kind = "Chinese characters" if script == "han" else "Latin letters"
    return f"This model was trained on {names} text only; a text in {kind} gets an unreliable answer."
