"""train/evaluate/predict/export_sentiment management commands on tiny data."""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

import pytest
import torch
from django.core.management import CommandError, call_command

from slm.classify.testing import make_tiny_version, tiny_dataset


@pytest.fixture(autouse=True)
def _threads(settings) -> None:  # type: ignore[no-untyped-def]
    settings.SENTIMENT_MODEL = "sentiment"
    torch.set_num_threads(1)


@pytest.fixture
def labelled_csv(tmp_path: Path) -> Path:
    texts, labels = tiny_dataset()
    path = tmp_path / "data.csv"
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["review", "y"])
        for _ in range(2):  # duplicates are dropped by preprocessing
            w.writerows(zip(texts, labels, strict=True))
        w.writerow(["<b>很好很好，满意</b>", "positive"])
    return path


def run(*args: str, **kw: object) -> str:
    out = io.StringIO()
    call_command(*args, stdout=out, **kw)
    return out.getvalue()


def test_train_ngram_from_file_registers_and_promotes(registry, labelled_csv: Path) -> None:  # type: ignore[no-untyped-def]
    out = run(
        "train_sentiment",
        "--data",
        str(labelled_csv),
        "--text-column",
        "review",
        "--label-column",
        "y",
        "--test-size",
        "0.3",
        "--promote",
        "--json",
    )
    assert "registered sentiment@v0001" in out and "is live" in out
    mv = registry.live("sentiment")
    assert mv.metadata["family"] == "ngram" and mv.metadata["quality"]["duplicates_dropped"] == 20
    assert mv.metadata["metrics"]["split"] == "held-out" and mv.metadata["data"]["n_test"] == 6
    summary = json.loads(out.strip().splitlines()[-1])
    extra = labelled_csv.parent / "skewed.csv"
    extra.write_text(labelled_csv.read_text(encoding="utf-8") + "".join(f"很好的东西{i},positive\n" for i in range(20)))
    out = run(
        "train_sentiment", "--data", str(extra), "--text-column", "review", "--label-column", "y", "--augment", "1.0"
    )
    assert re.search(r"augmentation: [1-9]\d* perturbed copies", out)
    assert summary["version"] == "sentiment@v0001" and "macro_f1" in summary["metrics"]


def test_train_transformer_from_toml_config(registry, labelled_csv: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    make_tiny_version(registry)
    cfg = tmp_path / "train.toml"
    cfg.write_text(
        'family = "transformer"\n[data]\ntext_column = "review"\nlabel_column = "y"\ntest_size = 0.3\n'
        "[train]\nepochs = 2\nmax_length = 24\nlr = 1e-3\nbatch_size = 8\n"
    )
    out = run(
        "train_sentiment",
        "--config",
        str(cfg),
        "--data",
        str(labelled_csv),
        "--promote-if-better",
        "--hidden-size",
        "16",
        "--num-layers",
        "1",
    )
    assert "registered sentiment@v0002" in out
    mv = registry.get("sentiment", "v0002")
    assert mv.metadata["family"] == "transformer" and mv.metadata["parent"] == "v0001"
    assert mv.metadata["config"]["epochs"] == 2 and mv.metadata["config"]["encoder"] == "char-bert"
    assert mv.metadata["curves"]["train_loss"]

    # export the transformer version to ONNX + int8 and check it against torch
    out = run("export_sentiment", "--model-version", "v0002", "--output", str(tmp_path / "onnx"), "--int8")
    assert (tmp_path / "onnx" / "model.onnx").exists() and (tmp_path / "onnx" / "model.int8.onnx").exists()
    assert "same labels: True" in out.splitlines()[1]
    with pytest.raises(CommandError, match="transformer family"):
        run("export_sentiment", "--model-version", "v0001", "--output", str(tmp_path / "x"))


def test_evaluate_and_predict(registry, labelled_csv: Path, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    make_tiny_version(registry)
    out = run("evaluate_sentiment", "--file", str(labelled_csv), "--text-column", "review", "--label-column", "y")
    assert "sentiment@v0001 (ngram) on 41 texts: acc" in out and "confusion" in out
    data = json.loads(
        run(
            "evaluate_sentiment",
            "--file",
            str(labelled_csv),
            "--text-column",
            "review",
            "--label-column",
            "y",
            "--json",
        )
    )
    assert data["metrics"]["accuracy"] > 0.9

    out = run("predict_sentiment", "太好了，很满意", "awful, refund")
    lines = out.strip().splitlines()
    assert lines[0].startswith("positive\t") and lines[1].startswith("negative\t")

    src = tmp_path / "in.txt"
    src.write_text("非常好\n质量太差了\n", encoding="utf-8")
    dst = tmp_path / "out.csv"
    run("predict_sentiment", "--input", str(src), "--output", str(dst))
    rows = list(csv.DictReader(open(dst, encoding="utf-8")))
    assert [r["label"] for r in rows] == ["positive", "negative"] and "p_positive" in rows[0]
    jl = tmp_path / "out.jsonl"
    run("predict_sentiment", "--input", str(labelled_csv), "--text-column", "review", "--output", str(jl))
    assert len(jl.read_text().splitlines()) == 41

    monkeypatch.setattr("sys.stdin", io.StringIO("很好吃\nterrible\n\n"))
    out = run("predict_sentiment")
    assert [line.split("\t")[0] for line in out.strip().splitlines()] == ["positive", "negative"]


def test_command_errors(registry, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(CommandError, match="no live version"):
        run("predict_sentiment", "x")
    make_tiny_version(registry)
    with pytest.raises(CommandError, match="does not exist"):
        run("evaluate_sentiment", "--file", str(tmp_path / "missing.csv"))
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(CommandError, match="no column 'text'"):
        run("evaluate_sentiment", "--file", str(bad))
    with pytest.raises(CommandError, match="no version"):
        run("predict_sentiment", "--model-version", "v0009", "x")
    one = tmp_path / "one.csv"
    one.write_text("text,label\nhello there,pos\nhi again,pos\n")
    with pytest.raises(CommandError, match="two labels"):
        run("train_sentiment", "--data", str(one))


def test_predict_file_keeps_texts_as_written(registry, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    make_tiny_version(registry)
    # a stray extra field, numeric-looking texts and a GB18030 file: pandas shifted the columns into an
    # index, turned "5" into "5.0" and raised a DatasetGenerationError traceback for GB18030
    src = tmp_path / "in.csv"
    src.write_bytes("text,id\n很好吃,1,extra\n5,2\n质量太差了,3\n".encode("gb18030"))
    dst = tmp_path / "out.csv"
    run("predict_sentiment", "--input", str(src), "--output", str(dst))
    rows = list(csv.DictReader(open(dst, encoding="utf-8")))
    assert [r["text"] for r in rows] == ["很好吃", "5", "质量太差了"]
    # ';'-separated (Excel in many locales)
    src.write_text("id;text\n1;很好吃\n", encoding="utf-8")
    run("predict_sentiment", "--input", str(src), "--output", str(dst))
    assert [r["text"] for r in csv.DictReader(open(dst, encoding="utf-8"))] == ["很好吃"]
    src.write_bytes(b"")
    with pytest.raises(CommandError, match="empty"):
        run("predict_sentiment", "--input", str(src))


def test_train_records_languages_and_reproducible_training_data(registry, labelled_csv: Path) -> None:  # type: ignore[no-untyped-def]
    from slm.classify.adapt import adapt_ngram, parent_training_data

    args = ("--text-column", "review", "--label-column", "y", "--test-size", "0.3")
    run("train_sentiment", "--data", str(labelled_csv), *args, "--languages", "ZH, en,zh")
    mv = registry.versions("sentiment")[-1]
    assert mv.metadata["languages"] == ["zh", "en"]
    texts, labels = parent_training_data(mv.metadata, mv.path)  # rows stored with the version
    assert len(texts) == mv.metadata["data"]["n_train"] and set(labels) == {"negative", "positive"}
    model, meta = adapt_ngram(mv.path, mv.metadata, ["zq坏了"], ["negative"])
    assert meta["languages"] == ["zh", "en"] and meta["adaptation"]["n_new"] == 1
    with pytest.raises(CommandError, match="not a language code"):
        run("train_sentiment", "--data", str(labelled_csv), *args, "--languages", "chinese!")
    run("train_sentiment", "--data", str(labelled_csv), *args)
    assert registry.versions("sentiment")[-1].metadata["languages"] == []  # not known for a file

    run("train_sentiment", "--limit", "200", "--test-size", "0.25")  # the bundled reviews
    bundled = registry.versions("sentiment")[-1]
    assert bundled.metadata["languages"] == ["zh"] and bundled.metadata["training_data"]["bundled"]
    texts, labels = parent_training_data(bundled.metadata)
    assert len(texts) == bundled.metadata["data"]["n_train"] == 150


def test_distill_and_prune_register_versions_with_their_parent(registry, labelled_csv: Path) -> None:  # type: ignore[no-untyped-def]
    """`--distill-from`: a smaller student on the teacher's soft labels; `--prune-from`: heads removed
    from a transformer version, then trained again; each is a version whose parent is its source."""
    from slm.classify.base import load_classifier
    from slm.classify.prune import count_heads

    make_tiny_version(registry)  # v0001: an n-gram model (live)
    data = ["--data", str(labelled_csv), "--text-column", "review", "--label-column", "y", "--test-size", "0.3"]
    small = ["--epochs", "2", "--max-length", "24", "--batch-size", "8", "--lr", "1e-3"]
    run("train_sentiment", *data, *small, "--family", "transformer", "--hidden-size", "16", "--num-layers", "1")
    teacher = registry.get("sentiment", "v0002")
    assert teacher.metadata["family"] == "transformer"

    out = run(
        "train_sentiment", *data, *small, "--distill-from", "v0002", "--hidden-size", "8", "--distill-alpha", "0.8"
    )
    student = registry.get("sentiment", "v0003")
    compression = student.metadata["config"]["compression"]
    assert student.metadata["parent"] == "v0002" and student.metadata["config"]["mode"] == "full"
    assert compression["distilled_from"] == {"ref": "sentiment@v0002", "temperature": 2.0, "alpha": 0.8}
    assert set(compression["teacher_metrics"]) == {"accuracy", "macro_f1", "ms_per_text"}
    assert compression["params"] < sum(p.numel() for p in load_classifier(teacher.path).parameters())
    assert "teacher v0002" in out and "distilled from sentiment@v0002" in student.metadata["description"]

    run("train_sentiment", *data, *small, "--prune-from", "sentiment@v0002", "--prune-heads", "0.5")
    pruned = registry.get("sentiment", "v0004")
    assert pruned.metadata["parent"] == "v0002"
    assert pruned.metadata["config"]["compression"]["pruning"]["heads_removed"] == 2
    model = load_classifier(pruned.path)
    assert count_heads(model.encoder) == 2 and model.predict_proba(["很好"]).shape == (1, 2)

    with pytest.raises(CommandError, match="pruning needs a transformer version"):
        run("train_sentiment", *data, *small, "--prune-from", "v0001", "--prune-heads", "0.5")
    with pytest.raises(CommandError, match="needs --prune-heads"):
        run("train_sentiment", *data, *small, "--prune-from", "v0002")
    with pytest.raises(CommandError, match="not ngram"):
        run("train_sentiment", *data, "--family", "ngram", "--distill-from", "v0002")
    with pytest.raises(CommandError, match="no model version"):
        run("train_sentiment", *data, *small, "--distill-from", "v0042")
