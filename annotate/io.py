"""Annotate file I/O: reading import files (CSV/TSV/JSONL/JSON in UTF-8, UTF-16 or GB18030, or a
`save_to_disk` dataset directory) and writing exports (JSONL, CSV, a zipped Hugging Face dataset).
No database access here: services hand rows in and out."""

from __future__ import annotations

import codecs
import csv
import json
import shutil
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

EXPORT_FIELDS = ["item_id", "text", "label", "annotator", "created_at"]  # header of an empty CSV export


def as_utf8(path: Path) -> Path:
    """The file itself when it is UTF-8, else a UTF-8 copy next to it: UTF-16 with a BOM (Excel's "Unicode
    text") or GB18030/GBK (Excel on Chinese Windows) are common for Chinese CSVs."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        with open(path, "rb") as fh:  # checked in chunks: a large UTF-8 file is never held in memory
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                decoder.decode(chunk)
            decoder.decode(b"", final=True)
        return path
    except UnicodeDecodeError:
        pass
    data = path.read_bytes()
    encodings = ["utf-16"] if data[:2] in (b"\xff\xfe", b"\xfe\xff") else []
    for encoding in [*encodings, "gb18030"]:
        try:
            text = data.decode(encoding)
        except UnicodeDecodeError:
            continue
        copy = path.with_name(f"{path.stem}.utf8{path.suffix}")
        copy.write_text(text, encoding="utf-8")
        return copy
    raise ValueError(f"{path.name} is not UTF-8, UTF-16 or GB18030 text")


def read_rows(path: Path, text_field: str, label_field: str) -> tuple[Iterator[tuple[str, str | None]], int]:
    """(rows, count): rows of (text, label or None) from a CSV/TSV/JSONL/JSON file or a `save_to_disk`
    dataset directory. Unknown columns and unreadable files raise ValueError with the reason."""
    from slm.data import load_table

    if path.is_dir():
        from datasets import Dataset, DatasetDict, load_from_disk

        ds = load_from_disk(str(path))
        if isinstance(ds, DatasetDict):
            ds = ds["train"] if "train" in ds else next(iter(ds.values()))
        assert isinstance(ds, Dataset)
    else:
        path = as_utf8(path)
        try:
            ds = load_table(path)
        except Exception as exc:  # datasets hides the parser's message in __cause__
            cause = exc.__cause__ or exc
            raise ValueError(f"could not read {path.name}: {type(cause).__name__}: {cause}"[:500]) from exc
    columns = list(ds.column_names)
    if text_field not in columns:
        raise ValueError(f"no column {text_field!r} in {path.name} (columns: {', '.join(columns)})")
    has_label = bool(label_field) and label_field in columns
    feature = ds.features.get(label_field) if has_label else None
    names = getattr(feature, "names", None)

    def gen() -> Iterator[tuple[str, str | None]]:
        for row in ds:
            label = row.get(label_field) if has_label else None
            if names is not None and isinstance(label, int):
                label = names[label]
            yield (str(row[text_field]) if row[text_field] is not None else "", None if label is None else str(label))

    return gen(), len(ds)


def write_export(rows: Sequence[dict[str, Any]], fmt: str, directory: Path, stem: str) -> Path:
    """Writes `rows` as `<stem>.jsonl`, `<stem>.csv` or `<stem>.zip` (a zipped `save_to_disk` dataset)."""
    directory.mkdir(parents=True, exist_ok=True)
    if fmt == "jsonl":
        path = directory / f"{stem}.jsonl"
        with open(path, "w", encoding="utf-8") as fh:
            for r in rows:
                fh.write(json.dumps(r, ensure_ascii=False) + "\n")
        return path
    if fmt == "csv":
        path = directory / f"{stem}.csv"
        # UTF-8 with a byte-order mark: Excel then shows Chinese text (other readers skip the mark)
        with open(path, "w", encoding="utf-8-sig", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0].keys()) if rows else EXPORT_FIELDS)
            writer.writeheader()
            writer.writerows(rows)
        return path
    if fmt == "hf":
        from datasets import Dataset

        tmp = directory / f"{stem}-hf"
        shutil.rmtree(tmp, ignore_errors=True)
        Dataset.from_list(list(rows)).save_to_disk(str(tmp))
        path = directory / f"{stem}.zip"
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
            for f in sorted(tmp.rglob("*")):
                if f.is_file():
                    zf.write(f, f.relative_to(tmp))
        shutil.rmtree(tmp, ignore_errors=True)
        return path
    raise ValueError(f"unknown export format {fmt!r}")
