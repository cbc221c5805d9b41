"""Active-learning simulation on a fully labelled dataset: replay query strategies against random sampling
and record label-efficiency curves (labels used vs macro-F1 on a held-out gold split).

    curves = simulate(texts, labels, strategies=["entropy", "margin"], budget=400, progress=cb)
    # {"random": [(20, 0.61), (40, 0.70), ...], "entropy": [...], ...}
    label_savings(curves)  # labels each strategy needs to reach random's final F1

Protocol (the same for every strategy within a repeat): a stratified gold split is held out; the pool is
the rest. Cold start: items are taken in one random order until there are `initial` labels and every label
has `min_per_label` (the same seed set for every strategy). Then, each round: fit the model on the labelled
items, score macro-F1 on gold, and let the strategy pick `batch_size` more pool items (their true labels are
revealed). Curves are averaged over `repeats` (different splits and seed sets).

The model is a swappable `SimModel` (fit on labelled row indices, predict_proba on row indices, optional
embeddings for k-center/hybrid), built once per run by a factory `(texts, n_classes, seed) -> SimModel`:
  * "tfidf_lr" (default): TF-IDF char 1-3-grams fitted once over all texts, logistic regression per round;
    embeddings = 64-d TruncatedSVD of that TF-IDF (L2-normalised). Fast: ~10 ms a round on a few thousand rows.
  * "ngram": the product's own `slm.classify.ngram.NgramClassifier` retrained from scratch each round
    (vocabulary from the labelled texts only, like a real retrain); slower, same embeddings.
BALD needs stochastic predictions; these models have no dropout. With `bald_source="laplace"` (default) a
model offering `sample_probs` (the TF-IDF logistic model) draws `bald_T` weight samples from its diagonal
Laplace posterior (`slm.active.linear_laplace_probs`); otherwise, or with "bootstrap", BALD uses a bootstrap
ensemble (`slm.active.bootstrap_probs`, `bald_T` members trained on stratified resamples of the labelled set).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np
from sklearn.metrics import f1_score

from slm.active import PoolContext, bootstrap_probs, get_strategy, linear_laplace_probs

Progress = Callable[[float, str], None]
Curve = list[tuple[int, float]]


class SimModel(Protocol):
    def fit(self, idx: np.ndarray, y: np.ndarray) -> None: ...

    def predict_proba(self, idx: np.ndarray) -> np.ndarray: ...

    def embed(self, idx: np.ndarray) -> np.ndarray | None: ...


ModelFactory = Callable[[Sequence[str], int, int], SimModel]


class _ConstantFallback:
    """Predicts the class prior when the labelled set holds a single class (logistic regression cannot fit)."""

    @staticmethod
    def probs(y: np.ndarray, n_rows: int, n_classes: int) -> np.ndarray:
        prior = np.bincount(y, minlength=n_classes).astype(np.float64) + 1.0
        return np.tile(prior / prior.sum(), (n_rows, 1))


class _SvdEmbeddings:
    def __init__(self, texts: Sequence[str], dim: int, seed: int) -> None:
        self.texts = list(texts)
        self.dim = dim
        self.seed = seed
        self._emb: np.ndarray | None = None

    def __call__(self, idx: np.ndarray, x: Any = None) -> np.ndarray:
        if self._emb is None:
            from sklearn.decomposition import TruncatedSVD
            from sklearn.feature_extraction.text import TfidfVectorizer

            if x is None:
                x = TfidfVectorizer(analyzer="char", ngram_range=(1, 3), sublinear_tf=True, min_df=2).fit_transform(
                    self.texts
                )
            k = max(1, min(self.dim, x.shape[1] - 1, x.shape[0] - 1))
            emb = TruncatedSVD(n_components=k, n_iter=3, random_state=self.seed).fit_transform(x)
            norms = np.linalg.norm(emb, axis=1, keepdims=True)
            self._emb = (emb / np.where(norms > 0, norms, 1.0)).astype(np.float32)
        return self._emb[idx]


class TfidfLogRegModel:
    """TF-IDF char n-grams over all texts once (unsupervised, so no label leaks), logistic regression per fit."""

    def __init__(self, texts: Sequence[str], n_classes: int, seed: int = 0, *, C: float = 10.0) -> None:
        from sklearn.feature_extraction.text import TfidfVectorizer

        self.n_classes = n_classes
        self.seed = seed
        self.C = C
        self.x = TfidfVectorizer(analyzer="char", ngram_range=(1, 3), sublinear_tf=True, min_df=2).fit_transform(
            list(texts)
        )
        self._embed = _SvdEmbeddings(texts, 64, seed)
        self._clf: Any = None
        self._y: np.ndarray | None = None

    def fit(self, idx: np.ndarray, y: np.ndarray) -> None:
        from sklearn.linear_model import LogisticRegression

        self._y = np.asarray(y)
        if np.unique(self._y).size < 2:
            self._clf = None
            return
        self._clf = LogisticRegression(C=self.C, solver="liblinear", max_iter=1000)
        self._clf.fit(self.x[idx], self._y)

    def predict_proba(self, idx: np.ndarray) -> np.ndarray:
        if self._clf is None:
            return _ConstantFallback.probs(
                self._y if self._y is not None else np.zeros(0, int), len(idx), self.n_classes
            )
        p = np.zeros((len(idx), self.n_classes))
        p[:, self._clf.classes_] = self._clf.predict_proba(self.x[idx])
        return p

    def embed(self, idx: np.ndarray) -> np.ndarray:
        return self._embed(idx, self.x)

    def sample_probs(self, idx: np.ndarray, labelled: np.ndarray, T: int, seed: int) -> np.ndarray | None:
        """(T, len(idx), C) from the fitted model's diagonal Laplace posterior (BALD without dropout)."""
        if self._clf is None:
            return None
        mc = linear_laplace_probs(
            self.x[idx], self.x[labelled], self._clf.coef_, self._clf.intercept_, C=self.C, T=T, seed=seed
        )
        out = np.zeros((T, len(idx), self.n_classes))
        out[:, :, self._clf.classes_] = mc
        return out


class NgramModel:
    """The product's NgramClassifier retrained from scratch on the labelled texts each fit."""

    def __init__(self, texts: Sequence[str], n_classes: int, seed: int = 0, *, config: Any = None) -> None:
        from slm.classify.ngram import NgramConfig

        self.texts = list(texts)
        self.n_classes = n_classes
        self.names = [str(i) for i in range(n_classes)]
        self.config = config or NgramConfig(min_df=1, seed=seed)
        self._embed = _SvdEmbeddings(texts, 64, seed)
        self._clf: Any = None
        self._y: np.ndarray | None = None

    def fit(self, idx: np.ndarray, y: np.ndarray) -> None:
        from slm.classify.ngram import NgramClassifier

        self._y = np.asarray(y)
        if np.unique(self._y).size < 2:
            self._clf = None
            return
        self._clf = NgramClassifier.train(
            [self.texts[i] for i in idx], [str(v) for v in self._y], self.config, label_order=self.names
        )

    def predict_proba(self, idx: np.ndarray) -> np.ndarray:
        if self._clf is None:
            return _ConstantFallback.probs(
                self._y if self._y is not None else np.zeros(0, int), len(idx), self.n_classes
            )
        return np.asarray(self._clf.predict_proba([self.texts[i] for i in idx]), dtype=np.float64)

    def embed(self, idx: np.ndarray) -> np.ndarray:
        return self._embed(idx)


MODELS: dict[str, ModelFactory] = {"tfidf_lr": TfidfLogRegModel, "ngram": NgramModel}


def _stratified_split(y: np.ndarray, test_size: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    train, test = [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        k = max(1, int(round(idx.size * test_size))) if idx.size > 1 else 0
        test.append(idx[:k])
        train.append(idx[k:])
    return rng.permutation(np.concatenate(train)), np.sort(np.concatenate(test))


def _seed_set(order: np.ndarray, y: np.ndarray, initial: int, min_per_label: int, n_classes: int) -> np.ndarray:
    """Cold start: the first items of a random order until `initial` labels and every label has
    `min_per_label` (or the pool runs out of that label)."""
    available = np.bincount(y[order], minlength=n_classes)
    need = np.minimum(available, min_per_label)
    counts = np.zeros(n_classes, dtype=np.int64)
    taken = []
    for i in order:
        if len(taken) >= initial and (counts >= need).all():
            break
        taken.append(int(i))
        counts[y[i]] += 1
    return np.asarray(taken, dtype=np.int64)


def simulate(
    texts: Sequence[str],
    labels: Sequence[Any],
    *,
    strategies: Sequence[str] = ("entropy", "margin"),
    budget: int = 400,
    initial: int = 20,
    batch_size: int = 20,
    min_per_label: int = 2,
    test_size: float = 0.2,
    test_texts: Sequence[str] | None = None,
    test_labels: Sequence[Any] | None = None,
    pool_limit: int | None = None,
    repeats: int = 1,
    seed: int = 0,
    model: str | ModelFactory = "tfidf_lr",
    bald_T: int = 5,
    bald_source: str = "laplace",
    hybrid_factor: int = 10,
    threads: int | None = 1,
    progress: Progress | None = None,
) -> dict[str, Curve]:
    """Label-efficiency curves {strategy: [(n_labels, gold macro-F1), ...]}, "random" always included first.

    `budget` caps the labels used (seed set included). Gold is a stratified `test_size` split of the data,
    or `test_texts`/`test_labels` when given. `pool_limit` subsamples the pool (faster runs). `progress`
    is called as progress(fraction_done, message); it may raise to cancel the run. `threads` caps BLAS/OpenMP
    threads (1 by default: these small fits get slower, not faster, from threads on a busy machine)."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=threads):
        return _simulate(
            texts, labels, strategies=strategies, budget=budget, initial=initial, batch_size=batch_size,
            min_per_label=min_per_label, test_size=test_size, test_texts=test_texts, test_labels=test_labels,
            pool_limit=pool_limit, repeats=repeats, seed=seed, model=model, bald_T=bald_T,
            bald_source=bald_source, hybrid_factor=hybrid_factor, progress=progress,
        )  # fmt: skip


def _simulate(
    texts: Sequence[str],
    labels: Sequence[Any],
    *,
    strategies: Sequence[str],
    budget: int,
    initial: int,
    batch_size: int,
    min_per_label: int,
    test_size: float,
    test_texts: Sequence[str] | None,
    test_labels: Sequence[Any] | None,
    pool_limit: int | None,
    repeats: int,
    seed: int,
    model: str | ModelFactory,
    bald_T: int,
    bald_source: str,
    hybrid_factor: int,
    progress: Progress | None,
) -> dict[str, Curve]:
    if len(texts) != len(labels):
        raise ValueError(f"{len(texts)} texts but {len(labels)} labels")
    names = sorted({str(v) for v in labels} | {str(v) for v in (test_labels or [])})
    if len(names) < 2:
        raise ValueError("the dataset needs at least two labels")
    order_names = ["random"] + [s for s in dict.fromkeys(strategies) if s != "random"]
    for s in order_names:
        get_strategy(s)  # unknown names fail before any work
    if bald_source not in ("laplace", "bootstrap"):
        raise ValueError("bald_source must be 'laplace' or 'bootstrap'")
    if batch_size < 1 or initial < 1 or budget < initial:
        raise ValueError("need batch_size >= 1, initial >= 1 and budget >= initial")
    if (test_texts is None) != (test_labels is None):
        raise ValueError("give both test_texts and test_labels, or neither")
    index = {n: i for i, n in enumerate(names)}
    all_texts = list(texts) + list(test_texts or [])
    y_all = np.array([index[str(v)] for v in list(labels) + list(test_labels or [])], dtype=np.int64)
    n_classes = len(names)
    if isinstance(model, str) and model not in MODELS:
        raise ValueError(f"unknown simulation model {model!r}; choose one of {sorted(MODELS)}")
    factory = MODELS[model] if isinstance(model, str) else model

    rounds = 1 + int(np.ceil((budget - initial) / batch_size))
    total = max(1, repeats * len(order_names) * rounds)
    done = 0
    report = progress or (lambda _f, _m: None)
    sums: dict[str, dict[int, list[float]]] = {s: {} for s in order_names}

    for rep in range(repeats):
        rng = np.random.default_rng(seed + rep)
        if test_texts is None:
            pool_all, gold = _stratified_split(y_all, test_size, rng)
        else:
            pool_all = rng.permutation(len(texts))
            gold = np.arange(len(texts), len(all_texts))
        if pool_limit is not None and pool_all.size > pool_limit:
            pool_all = pool_all[:pool_limit]
        used = np.concatenate([pool_all, gold])
        sim_model = factory([all_texts[i] for i in used], n_classes, seed + rep)
        pool = np.arange(pool_all.size)  # rows of the model's text list
        gold_rows = np.arange(pool_all.size, used.size)
        y = y_all[used]
        seed_rows = _seed_set(rng.permutation(pool), y, initial, min_per_label, n_classes)
        for name in order_names:
            strategy = get_strategy(name, factor=hybrid_factor) if name == "hybrid" else get_strategy(name)
            s_rng = np.random.default_rng([seed, rep, order_names.index(name)])
            labelled = seed_rows.copy()
            is_lab = np.zeros(pool.size, dtype=bool)
            is_lab[labelled] = True
            while True:
                sim_model.fit(labelled, y[labelled])
                f1 = f1_score(
                    y[gold_rows],
                    sim_model.predict_proba(gold_rows).argmax(axis=1),
                    average="macro",
                    labels=list(range(n_classes)),
                    zero_division=0,
                )
                sums[name].setdefault(int(labelled.size), []).append(float(f1))
                done += 1
                report(
                    min(done / total, 1.0), f"repeat {rep + 1}/{repeats} {name}: {labelled.size} labels, F1 {f1:.3f}"
                )
                n_next = min(batch_size, budget - labelled.size, int((~is_lab).sum()))
                if n_next <= 0:
                    break
                unl = np.flatnonzero(~is_lab)
                ctx = _context(strategy.name, sim_model, unl, labelled, y, n_classes, s_rng, bald_T, bald_source)
                picked = unl[np.asarray(strategy.query(ctx, n_next), dtype=np.int64)]
                is_lab[picked] = True
                labelled = np.concatenate([labelled, picked])
            done = (rep * len(order_names) + order_names.index(name) + 1) * rounds
    report(1.0, "done")
    return {
        name: [(n, float(np.mean(v))) for n, v in sorted(points.items()) if len(v) == repeats]
        for name, points in sums.items()
    }


def _context(
    name: str,
    model: SimModel,
    unl: np.ndarray,
    labelled: np.ndarray,
    y: np.ndarray,
    n_classes: int,
    rng: np.random.Generator,
    bald_T: int,
    bald_source: str = "laplace",
) -> PoolContext:
    kw: dict[str, Any] = {"rng": rng, "label_counts": np.bincount(y[labelled], minlength=n_classes).tolist()}
    if name in ("least_confidence", "margin", "entropy", "hybrid"):
        kw["probs"] = model.predict_proba(unl)
    if name in ("kcenter", "hybrid"):
        emb = model.embed(unl)
        if emb is not None:
            kw["embeddings"] = emb
            kw["labeled_embeddings"] = model.embed(labelled)
    if name == "bald":
        sampler = getattr(model, "sample_probs", None)
        if sampler is not None and bald_source == "laplace":
            mc = sampler(unl, labelled, bald_T, int(rng.integers(1 << 31)))
            if mc is not None:
                kw["mc_probs"] = mc
                return PoolContext(**kw)

        def fit_predict(sample: np.ndarray) -> np.ndarray:
            model.fit(labelled[sample], y[labelled[sample]])
            return model.predict_proba(unl)

        kw["mc_probs"] = bootstrap_probs(
            fit_predict, labelled.size, T=bald_T, seed=int(rng.integers(1 << 31)), y=y[labelled]
        )
    if name == "random":
        return PoolContext.of_size(unl.size, **kw)
    return PoolContext(**kw)


def labels_to_reach(curve: Curve, target: float) -> float | None:
    """Labels at which a curve first reaches `target` (linear interpolation between points); None if never."""
    prev: tuple[int, float] | None = None
    for n, f in curve:
        if f >= target:
            if prev is None or prev[1] >= f:
                return float(n)
            n0, f0 = prev
            return float(n0 + (target - f0) * (n - n0) / (f - f0))
        prev = (n, f)
    return None


def label_savings(curves: dict[str, Curve], *, reference: str = "random") -> dict[str, dict[str, Any]]:
    """For each strategy: labels needed to reach the reference's FINAL F1 and the saving vs the reference's
    label count: {"target_f1", "reference_labels", "labels", "saving" (fraction, None if never reached),
    "final_f1"}."""
    ref = curves[reference]
    if not ref:
        return {}
    ref_n, target = ref[-1]
    out: dict[str, dict[str, Any]] = {}
    for name, curve in curves.items():
        # the reference needs its own budget by definition (an earlier noisy crossing does not count)
        n = float(ref_n) if name == reference else labels_to_reach(curve, target)
        out[name] = {
            "target_f1": target,
            "reference_labels": ref_n,
            "labels": n,
            "saving": None if n is None else 1.0 - n / ref_n,
            "final_f1": curve[-1][1] if curve else None,
        }
    return out


def curves_to_json(curves: dict[str, Curve]) -> dict[str, list[list[float]]]:
    """JSON-friendly copy ([[n, f1], ...]) for storing and plotting (Chart.js scatter/line data)."""
    return {k: [[int(n), float(f)] for n, f in v] for k, v in curves.items()}
