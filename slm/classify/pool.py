"""What a query strategy needs, computed from a classifier over an unlabelled pool (no Django).

    ctx = pool_context(model, pool_texts, labelled_texts, strategy="bald")
    scores = get_strategy("bald").priorities(ctx, n)

`pool_context` computes exactly what `slm.active.STRATEGY_SPECS[strategy].needs` lists, for the model's
family, and nothing else:

    probs       every family: `predict_proba`.
    mc_probs    transformer: MC dropout (Gal & Ghahramani 2016) — the pooled encoder features are computed
                once (eval mode), then T passes of the classification head with its dropout on.
                n-gram: T weight samples from the linear model's diagonal Laplace posterior
                (`slm.active.linear_laplace_probs`), its precision from the labelled texts' features.
    embeddings  transformer: the pooled encoder features (a seeded random projection to `dim` columns when
                wider). n-gram: a TruncatedSVD of the TF-IDF features to `dim` columns, L2-normalised,
                fitted on (a sample of) pool + labelled texts. The labelled texts are embedded the same way,
                so k-center treats them as already covered.

A family that cannot provide what a strategy needs is refused with a message (`StrategyUnavailable`),
never served another strategy's order: the ensemble family has no single posterior or feature space,
so BALD, k-center and hybrid are refused for it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from slm.active import NEEDS, STRATEGY_SPECS, PoolContext, linear_laplace_probs, mc_dropout_probs, reduce_embeddings

#: What each classifier family can compute for the pool refresh (PoolContext fields).
FAMILY_PROVIDES: dict[str, tuple[str, ...]] = {
    "ngram": ("probs", "mc_probs", "embeddings"),
    "transformer": ("probs", "mc_probs", "embeddings"),
    "ensemble": ("probs",),
}
MC_SAMPLES = 10  # T: posterior samples for BALD
EMBED_DIM = 64  # k-center over 100k pool items stays well under a second at this width
SVD_FIT_ROWS = 20_000  # the n-gram SVD is fitted on at most this many rows, then applied to all


class StrategyUnavailable(ValueError):
    """The query strategy cannot run on this model family; the message says why and what can."""


def strategy_refusal(strategy: str, family: str) -> str | None:
    """Why `strategy` cannot run on a `family` model, or None when it can."""
    spec = STRATEGY_SPECS.get(strategy)
    if spec is None:
        return f"unknown query strategy {strategy!r}; choose one of {', '.join(STRATEGY_SPECS)}"
    have = FAMILY_PROVIDES.get(family, ("probs",))
    missing = [need for need in spec.needs if need not in have]
    if not missing:
        return None
    usable = [name for name, s in STRATEGY_SPECS.items() if all(need in have for need in s.needs)]
    what = " and ".join(NEEDS[m] for m in missing)
    return (
        f"the {strategy} strategy needs {what}, which a {family} model cannot provide; "
        f"choose one of {', '.join(usable)}"
    )


def check_strategy(strategy: str, family: str) -> None:
    """Raises StrategyUnavailable when `strategy` cannot run on a `family` model."""
    message = strategy_refusal(strategy, family)
    if message:
        raise StrategyUnavailable(message)


def pool_context(
    model: Any,
    pool_texts: Sequence[str],
    labelled_texts: Sequence[str] = (),
    *,
    strategy: str,
    label_counts: Sequence[int] | None = None,
    also: Sequence[str] = (),
    samples: int = MC_SAMPLES,
    dim: int = EMBED_DIM,
    seed: int = 0,
    batch_size: int = 512,
) -> PoolContext:
    """A PoolContext holding what `strategy` needs for these pool texts (see the module docstring), plus
    the inputs named in `also` (e.g. "probs" for the suggestions shown while labelling)."""
    family = str(getattr(model, "family", ""))
    check_strategy(strategy, family)
    needs = set(STRATEGY_SPECS[strategy].needs) | set(also)
    pool_texts = list(pool_texts)
    labelled_texts = list(labelled_texts)
    kw: dict[str, Any] = {"seed": seed, "label_counts": label_counts}
    req = _Request(pool_texts, labelled_texts, needs, samples, dim, seed, batch_size)
    if family == "transformer" and needs:
        kw.update(_transformer_inputs(model, req))
    elif family == "ngram":
        kw.update(_ngram_inputs(model, req))
    elif "probs" in needs:
        kw["probs"] = predict_in_batches(model, pool_texts, batch_size)
    if not needs:  # random: the pool is known by its size only
        return PoolContext.of_size(len(pool_texts), **kw)
    return PoolContext(**kw)


@dataclass(frozen=True)
class _Request:
    pool_texts: list[str]
    labelled_texts: list[str]
    needs: set[str]
    samples: int
    dim: int
    seed: int
    batch_size: int

    def unpack(self) -> tuple[list[str], list[str], set[str], int, int, int, int]:
        return (self.pool_texts, self.labelled_texts, self.needs, self.samples, self.dim, self.seed, self.batch_size)


def predict_in_batches(model: Any, texts: Sequence[str], batch_size: int = 512) -> np.ndarray:
    parts = [np.asarray(model.predict_proba(list(texts[i : i + batch_size]))) for i in range(0, len(texts), batch_size)]
    if not parts:
        return np.zeros((0, len(model.labels)), dtype=np.float64)
    return np.concatenate(parts).astype(np.float64)


# ------------------------------------------------------------------------------------ transformer
def _transformer_inputs(model: Any, req: _Request) -> dict[str, Any]:
    import torch

    pool_texts, labelled_texts, needs, samples, dim, seed, batch_size = req.unpack()

    feats = model.features(pool_texts, batch_size=min(batch_size, 64)) if pool_texts else torch.zeros(0, 1)
    out: dict[str, Any] = {}
    head = model.head
    device = next(head.parameters()).device
    chunks = [feats[i : i + batch_size].to(device) for i in range(0, len(pool_texts), batch_size)]
    if "probs" in needs:
        was = head.training
        head.eval()
        with torch.no_grad():
            parts = [torch.softmax(head(c).float(), dim=-1).cpu().numpy() for c in chunks]
        head.train(was)
        out["probs"] = np.concatenate(parts).astype(np.float64) if parts else np.zeros((0, len(model.labels)))
    if "mc_probs" in needs:
        out["mc_probs"] = (
            mc_dropout_probs(head, chunks, T=samples, seed=seed)
            if chunks
            else np.zeros((samples, 0, len(model.labels)))
        )
    if "embeddings" in needs:
        emb = feats.numpy().astype(np.float32)
        lab = model.features(labelled_texts).numpy().astype(np.float32) if labelled_texts else None
        if emb.shape[1] > dim:
            emb = reduce_embeddings(emb, dim, seed=seed)
            lab = reduce_embeddings(lab, dim, seed=seed) if lab is not None else None
        out["embeddings"] = emb
        if lab is not None:
            out["labeled_embeddings"] = lab
    return out


# ------------------------------------------------------------------------------------------ n-gram
def ngram_posterior_weights(model: Any) -> tuple[np.ndarray, np.ndarray, str]:
    """(coef (k, d), intercept (k,), output) of an NgramClassifier in the form linear_laplace_probs takes.

    A binary softmax model's decision is softmax([z0, z1]) = sigmoid(z1 - z0), so its coef is one row."""
    w = np.asarray(model.weight, dtype=np.float64)
    b = np.asarray(model.bias, dtype=np.float64)
    if model.output == "softmax" and w.shape[1] == 2:
        return (w[:, 1] - w[:, 0])[None, :], np.array([b[1] - b[0]]), "ovr"
    return w.T.copy(), b.copy(), model.output


def _ngram_inputs(model: Any, req: _Request) -> dict[str, Any]:
    pool_texts, labelled_texts, needs, samples, dim, seed, batch_size = req.unpack()
    out: dict[str, Any] = {}
    if "probs" in needs:
        out["probs"] = predict_in_batches(model, pool_texts, batch_size)
    if "mc_probs" in needs:
        coef, intercept, output = ngram_posterior_weights(model)
        x_lab = model.features(labelled_texts) if labelled_texts else None
        if x_lab is None:
            import scipy.sparse as sp

            x_lab = sp.csr_matrix((0, coef.shape[1]), dtype=np.float32)
        parts = []
        for i in range(0, len(pool_texts), batch_size):
            x_pool = model.features(pool_texts[i : i + batch_size])
            # the same seed in every chunk: the same T weight samples score the whole pool
            parts.append(
                linear_laplace_probs(
                    x_pool, x_lab, coef, intercept, C=float(model.config.C), T=samples, seed=seed, output=output
                )
            )
        out["mc_probs"] = np.concatenate(parts, axis=1) if parts else np.zeros((samples, 0, len(model.labels)))
    if "embeddings" in needs:
        emb, lab = ngram_embeddings(model, pool_texts, labelled_texts, dim=dim, seed=seed)
        out["embeddings"] = emb
        if lab is not None:
            out["labeled_embeddings"] = lab
    return out


def ngram_embeddings(
    model: Any, pool_texts: Sequence[str], labelled_texts: Sequence[str] = (), *, dim: int = EMBED_DIM, seed: int = 0
) -> tuple[np.ndarray, np.ndarray | None]:
    """(pool, labelled or None) embeddings: TruncatedSVD of the model's TF-IDF features, L2-normalised."""
    import scipy.sparse as sp
    from sklearn.decomposition import TruncatedSVD

    texts = list(pool_texts) + list(labelled_texts)
    x = model.features(texts) if texts else sp.csr_matrix((0, model.n_features), dtype=np.float32)
    k = max(1, min(dim, x.shape[1] - 1, x.shape[0] - 1))
    rows = np.arange(x.shape[0])
    if rows.size > SVD_FIT_ROWS:
        rows = np.sort(np.random.default_rng(seed).choice(rows, SVD_FIT_ROWS, replace=False))
    if x.shape[0] < 2 or x.shape[1] < 2:
        emb = np.zeros((x.shape[0], 1), dtype=np.float32)
    else:
        svd = TruncatedSVD(n_components=k, n_iter=5, random_state=seed).fit(x[rows])
        emb = svd.transform(x)
        norms = np.linalg.norm(emb, axis=1, keepdims=True)
        emb = (emb / np.where(norms > 0, norms, 1.0)).astype(np.float32)
    n = len(pool_texts)
    return emb[:n], (emb[n:] if len(labelled_texts) else None)
