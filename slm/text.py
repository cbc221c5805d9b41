"""Text preprocessing for classification, with a data-quality report.

The pipeline (the seed's, made reusable):
  1. strip HTML (tags, comments, script/style bodies; entities unescaped),
  2. strip special characters (control/format characters, zero-width marks, private-use and
     unassigned code points, emoji and pictographs; CJK, letters, digits, punctuation are kept),
  3. collapse whitespace,
  4. lowercase only when the tokenizer is uncased (`lowercase=None` asks the tokenizer),
  5. drop empty and too-short texts (`min_chars`: a text needs more than `min_chars - 1` characters),
  6. drop texts present with conflicting labels (every copy), then deduplicate the rest.

`preprocess()` returns the kept texts and labels plus a `QualityReport` (counts, what was dropped and
why, label balance, length distribution, and how many texts a tokenizer would truncate at max_length).
"""

from __future__ import annotations

import functools
import html
import random
import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

_SCRIPT_STYLE_RE = re.compile(r"<(script|style)\b[^>]*>.*?</\1\s*>", re.IGNORECASE | re.DOTALL)
_COMMENT_RE = re.compile(r"<!--.*?-->", re.DOTALL)
_TAG_RE = re.compile(r"</?[A-Za-z][A-Za-z0-9:-]*(?:\s[^<>]*)?/?>")
_BR_RE = re.compile(r"<\s*(br|p|div|li|tr|h[1-6])\b[^>]*>", re.IGNORECASE)
_WS_RE = re.compile(r"\s+")
_REPEAT_PUNCT_RE = re.compile(r"([!?！？。.~～…,，])\1{3,}")

# Unicode categories removed as "special characters": control, format, surrogate, private use,
# unassigned; plus symbols-other (emoji, dingbats, pictographs) and modifier symbols.
_DROP_CATEGORIES = {"Cc", "Cf", "Cs", "Co", "Cn", "So", "Sk"}


def strip_html(text: str) -> str:
    """Removes markup and unescapes entities ('<b>好</b>&amp;' -> '好&'). Plain text passes unchanged."""
    if "<" in text:
        text = _SCRIPT_STYLE_RE.sub(" ", text)
        text = _COMMENT_RE.sub(" ", text)
        text = _BR_RE.sub(" ", text)
        text = _TAG_RE.sub(" ", text)
    if "&" in text:
        text = html.unescape(text)
    return text


@functools.cache
def _drop_class() -> re.Pattern[str]:
    """One regex character class of every BMP code point in _DROP_CATEGORIES (built once, ~50 ms),
    plus the astral emoji/pictograph, tag and private-use planes."""
    ranges: list[tuple[int, int]] = []
    for cp in range(0x10000):
        if 0xD800 <= cp <= 0xDFFF or unicodedata.category(chr(cp)) in _DROP_CATEGORIES:
            if cp in (0x09, 0x0A, 0x0B, 0x0C, 0x0D):
                continue  # whitespace controls are turned into spaces by the whitespace step
            if ranges and ranges[-1][1] == cp - 1:
                ranges[-1] = (ranges[-1][0], cp)
            else:
                ranges.append((cp, cp))
    ranges += [(0x1F000, 0x1FAFF), (0xE0000, 0xE007F), (0xF0000, 0x10FFFF)]
    parts = "".join(re.escape(chr(a)) if a == b else f"{re.escape(chr(a))}-{re.escape(chr(b))}" for a, b in ranges)
    return re.compile(f"[{parts}]+")


def strip_special(text: str) -> str:
    """Drops control/format/private-use characters, emoji and other pictographic symbols.

    Whitespace controls (tab, newline) become spaces later; full-width forms are folded to their
    ASCII equivalents (NFKC), so 'ＡＢＣ１２３' -> 'ABC123'; runs of 4+ identical punctuation marks
    are shortened to 3.
    """
    text = _drop_class().sub("", unicodedata.normalize("NFKC", text))
    return _REPEAT_PUNCT_RE.sub(r"\1\1\1", text)


def normalize_whitespace(text: str) -> str:
    return _WS_RE.sub(" ", text).strip()


@dataclass
class PreprocessConfig:
    strip_html: bool = True
    strip_special: bool = True
    # True/False force it; None: lowercase only if the tokenizer is uncased (no tokenizer: keep case)
    lowercase: bool | None = None
    min_chars: int = 1  # texts shorter than this (after cleaning) are dropped; empty ones always are
    dedupe: bool = True
    drop_conflicts: bool = True
    max_length: int | None = None  # for the truncation count (tokens with a tokenizer, else characters)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> PreprocessConfig:
        data = dict(data or {})
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})


def tokenizer_is_uncased(tokenizer: Any) -> bool:
    """Whether a (Hugging Face) tokenizer lowercases its input (e.g. bert-base-uncased)."""
    if tokenizer is None:
        return False
    for attr in ("do_lower_case", "lowercase"):
        value = getattr(tokenizer, attr, None)
        if isinstance(value, bool):
            return value
    init = getattr(tokenizer, "init_kwargs", None) or {}
    if isinstance(init.get("do_lower_case"), bool):
        return bool(init["do_lower_case"])
    name = str(getattr(tokenizer, "name_or_path", "")).lower()
    return "uncased" in name


def clean_text(text: str, config: PreprocessConfig | None = None, *, lowercase: bool | None = None) -> str:
    """One text through steps 1-4 of the pipeline (used identically at training and prediction time)."""
    config = config or PreprocessConfig()
    text = "" if text is None else str(text)
    if config.strip_html:
        text = strip_html(text)
    if config.strip_special:
        text = strip_special(text)
    text = normalize_whitespace(text)
    lower = config.lowercase if lowercase is None else lowercase
    if lower:
        text = text.lower()
    return text


@dataclass
class QualityReport:
    n_input: int = 0
    n_output: int = 0
    empty_dropped: int = 0
    too_short_dropped: int = 0
    duplicates_dropped: int = 0
    conflicting_texts: int = 0  # distinct texts that carried more than one label
    conflicts_dropped: int = 0  # rows dropped because of those conflicts
    changed_by_cleaning: int = 0
    lowercased: bool = False
    label_counts: dict[str, int] = field(default_factory=dict)
    label_balance: float = 1.0  # smallest class / largest class (1.0 = balanced)
    length_unit: str = "chars"
    length: dict[str, float] = field(default_factory=dict)  # min, mean, p50, p90, p95, p99, max
    length_histogram: dict[str, list[float]] = field(default_factory=dict)  # {"edges": [...], "counts": [...]}
    max_length: int | None = None
    truncated: int = 0  # texts longer than max_length (tokens with a tokenizer, else characters)
    augmented: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        parts = [
            f"{self.n_input} in -> {self.n_output} kept",
            f"empty {self.empty_dropped}",
            f"too short {self.too_short_dropped}",
            f"duplicates {self.duplicates_dropped}",
            f"conflicts {self.conflicts_dropped} ({self.conflicting_texts} texts)",
            "labels " + ", ".join(f"{k}={v}" for k, v in self.label_counts.items()),
        ]
        if self.length:
            parts.append(f"length p50={self.length.get('p50', 0):.0f} p95={self.length.get('p95', 0):.0f}")
        if self.max_length:
            parts.append(f"truncated at {self.max_length}: {self.truncated}")
        return "; ".join(parts)


def length_stats(lengths: Sequence[int], bins: int = 20) -> tuple[dict[str, float], dict[str, list[float]]]:
    if not lengths:
        return {}, {}
    arr = np.asarray(lengths, dtype=np.float64)
    stats = {
        "min": float(arr.min()),
        "mean": round(float(arr.mean()), 2),
        "p50": float(np.percentile(arr, 50)),
        "p90": float(np.percentile(arr, 90)),
        "p95": float(np.percentile(arr, 95)),
        "p99": float(np.percentile(arr, 99)),
        "max": float(arr.max()),
    }
    counts, edges = np.histogram(arr, bins=bins)
    return stats, {"edges": [round(float(e), 2) for e in edges], "counts": [int(c) for c in counts]}


def token_lengths(texts: Sequence[str], tokenizer: Any = None) -> tuple[list[int], str]:
    """Lengths in tokens (with special tokens) when a tokenizer is given, else in characters."""
    if tokenizer is None or not callable(tokenizer):
        return [len(t) for t in texts], "chars"
    out: list[int] = []
    for start in range(0, len(texts), 1000):
        enc = tokenizer(list(texts[start : start + 1000]), add_special_tokens=True, truncation=False)
        out.extend(len(ids) for ids in enc["input_ids"])
    return out, "tokens"


def preprocess(
    texts: Sequence[str],
    labels: Sequence[str] | None = None,
    config: PreprocessConfig | None = None,
    *,
    tokenizer: Any = None,
) -> tuple[list[str], list[str], QualityReport]:
    """Cleans, filters and deduplicates (texts, labels). Without labels, only duplicates are dropped.

    Conflicts are resolved before dedupe: a cleaned text that appears with two different labels is
    removed entirely (all copies), since neither label can be trusted. Order of first appearance is kept.
    """
    config = config or PreprocessConfig()
    if labels is not None and len(labels) != len(texts):
        raise ValueError(f"{len(texts)} texts but {len(labels)} labels")
    lower = config.lowercase if config.lowercase is not None else tokenizer_is_uncased(tokenizer)
    report = QualityReport(n_input=len(texts), lowercased=bool(lower), max_length=config.max_length)
    label_list = [str(x) for x in labels] if labels is not None else [""] * len(texts)

    cleaned: list[tuple[str, str]] = []
    for raw, lab in zip(texts, label_list, strict=True):
        raw_s = "" if raw is None else str(raw)
        text = clean_text(raw_s, config, lowercase=lower)
        if text != raw_s:
            report.changed_by_cleaning += 1
        if not text:
            report.empty_dropped += 1
            continue
        if len(text) < config.min_chars:
            report.too_short_dropped += 1
            continue
        cleaned.append((text, lab))

    if config.drop_conflicts and labels is not None:
        seen_labels: dict[str, set[str]] = {}
        for text, lab in cleaned:
            seen_labels.setdefault(text, set()).add(lab)
        conflicting = {t for t, labs in seen_labels.items() if len(labs) > 1}
        report.conflicting_texts = len(conflicting)
        before = len(cleaned)
        cleaned = [(t, lab) for t, lab in cleaned if t not in conflicting]
        report.conflicts_dropped = before - len(cleaned)

    if config.dedupe:
        seen: set[tuple[str, str]] = set()
        unique: list[tuple[str, str]] = []
        for pair in cleaned:
            if pair in seen:
                report.duplicates_dropped += 1
                continue
            seen.add(pair)
            unique.append(pair)
        cleaned = unique

    out_texts = [t for t, _ in cleaned]
    out_labels = [lab for _, lab in cleaned]
    report.n_output = len(out_texts)
    if labels is not None:
        counts = Counter(out_labels)
        report.label_counts = dict(sorted(counts.items()))
        report.label_balance = round(min(counts.values()) / max(counts.values()), 4) if counts else 1.0
    lengths, unit = token_lengths(out_texts, tokenizer)
    report.length_unit = unit
    report.length, report.length_histogram = length_stats(lengths)
    if config.max_length:
        report.truncated = sum(1 for n in lengths if n > config.max_length)
    return out_texts, (out_labels if labels is not None else []), report


# ------------------------------------------------------------------ augmentation
def _perturb(text: str, rng: random.Random) -> str:
    """A light label-preserving edit: delete, swap or duplicate a short span (character level)."""
    if len(text) < 4:
        return text + text[-1:]
    op = rng.choice(("delete", "swap", "dup"))
    i = rng.randrange(len(text) - 1)
    if op == "delete":
        return text[:i] + text[i + 1 :]
    if op == "swap":
        return text[:i] + text[i + 1] + text[i] + text[i + 2 :]
    return text[: i + 1] + text[i] + text[i + 1 :]


def augment_minority(
    texts: Sequence[str],
    labels: Sequence[str],
    *,
    target_ratio: float = 0.5,
    seed: int = 0,
    perturb: Callable[[str, random.Random], str] | None = None,
) -> tuple[list[str], list[str], int]:
    """Oversamples classes smaller than `target_ratio` x the largest class with perturbed copies.

    Only for training splits (never evaluate on augmented data). Returns (texts, labels, n_added).
    """
    rng = random.Random(seed)
    perturb = perturb or _perturb
    out_t, out_l = list(texts), list(labels)
    counts = Counter(labels)
    if not counts:
        return out_t, out_l, 0
    biggest = max(counts.values())
    added = 0
    by_label: dict[str, list[str]] = {}
    for t, lab in zip(texts, labels, strict=True):
        by_label.setdefault(lab, []).append(t)
    for lab, n in sorted(counts.items()):
        need = int(target_ratio * biggest) - n
        pool = by_label[lab]
        for _ in range(max(0, need)):
            out_t.append(perturb(rng.choice(pool), rng))
            out_l.append(lab)
            added += 1
    return out_t, out_l, added
