"""Every query strategy x model family either runs its real computation (checked against NumPy / torch
by hand) or is refused with a message — never served another strategy's order."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.decomposition import TruncatedSVD

from slm import active as A
from slm.classify import pool as P
from slm.classify.ensemble import EnsembleClassifier
from slm.classify.ngram import NgramClassifier
from slm.classify.testing import TINY_CONFIG, tiny_dataset

POOL = ["还不错吧", "太差了", "good enough", "not great, not terrible", "非常满意", "refund please", "一般般",
        "love it", "坏了", "ok"]  # fmt: skip


@pytest.fixture(scope="module")
def ngram() -> NgramClassifier:
    texts, labels = tiny_dataset()
    return NgramClassifier.train(texts, labels, TINY_CONFIG, label_order=["negative", "positive"])


@pytest.fixture(scope="module")
def transformer():  # type: ignore[no-untyped-def]
    from slm.classify.charbert import char_bert_classifier

    torch.manual_seed(0)
    texts, labels = tiny_dataset()
    model = char_bert_classifier(
        texts + POOL, ["negative", "positive"], hidden_size=96, num_layers=1, num_heads=2, max_length=32,
        min_freq=1, dropout=0.3,
    )  # fmt: skip
    model.eval()
    return model


LABELLED = list(tiny_dataset()[0][:6])


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


@pytest.mark.parametrize("strategy", A.STRATEGIES)
def test_ngram_every_strategy_runs_its_real_computation(ngram, strategy):  # type: ignore[no-untyped-def]
    ctx = P.pool_context(ngram, POOL, LABELLED, strategy=strategy, samples=6, dim=4, seed=3)
    needs = set(A.STRATEGY_SPECS[strategy].needs)
    assert {k for k in ("probs", "mc_probs", "embeddings") if getattr(ctx, k) is not None} == needs
    if "probs" in needs:
        np.testing.assert_allclose(ctx.probs, ngram.predict_proba(POOL), rtol=1e-6)
    if "mc_probs" in needs:
        # Laplace weight samples by hand: precision_j = 1 + C sum_i p_i(1-p_i) x_ij^2 over the labelled texts
        x_lab = ngram.features(LABELLED).toarray().astype(np.float64)
        x_pool = ngram.features(POOL).toarray().astype(np.float64)
        w = (ngram.weight[:, 1] - ngram.weight[:, 0]).astype(np.float64)
        b = float(ngram.bias[1] - ngram.bias[0])
        p = 1 / (1 + np.exp(-(x_lab @ w + b)))
        prec = 1 + TINY_CONFIG.C * ((p * (1 - p))[:, None] * x_lab**2).sum(axis=0)
        eps = np.random.default_rng(3).standard_normal((w.size, 6)) / np.sqrt(prec)[:, None]
        s = 1 / (1 + np.exp(-((x_pool @ w + b)[:, None] + x_pool @ eps).T))
        np.testing.assert_allclose(ctx.mc_probs[:, :, 1], s, rtol=1e-5, atol=1e-7)
        # the samples scatter around the model's own prediction, and BALD is their mutual information
        assert np.abs(ctx.mc_probs.mean(axis=0) - ngram.predict_proba(POOL)).max() < 0.25
        mean = ctx.mc_probs.mean(axis=0)
        h = lambda q: -(q * np.log(np.clip(q, 1e-12, None))).sum(-1)  # noqa: E731
        mi = h(mean) - np.mean([h(ctx.mc_probs[t]) for t in range(6)], axis=0)
        np.testing.assert_allclose(A.bald_scores(ctx.mc_probs), np.clip(mi, 0, None), atol=1e-9)
        assert mi.max() > 0
    if "embeddings" in needs:
        x = ngram.features(POOL + LABELLED)
        emb = TruncatedSVD(n_components=4, n_iter=5, random_state=3).fit_transform(x)
        emb /= np.linalg.norm(emb, axis=1, keepdims=True)
        np.testing.assert_allclose(np.abs(ctx.embeddings), np.abs(emb[: len(POOL)]), atol=1e-4)
        np.testing.assert_allclose(np.abs(ctx.labeled_embeddings), np.abs(emb[len(POOL) :]), atol=1e-4)
    picked = A.get_strategy(strategy).query(ctx, 3)
    assert len(set(picked.tolist())) == 3


@pytest.mark.parametrize("strategy", A.STRATEGIES)
def test_transformer_every_strategy_runs_its_real_computation(transformer, strategy):  # type: ignore[no-untyped-def]
    ctx = P.pool_context(transformer, POOL, LABELLED, strategy=strategy, samples=5, dim=8, seed=1, batch_size=4)
    needs = set(A.STRATEGY_SPECS[strategy].needs)
    assert {k for k in ("probs", "mc_probs", "embeddings") if getattr(ctx, k) is not None} == needs
    feats = transformer.features(POOL)
    if "probs" in needs:
        np.testing.assert_allclose(ctx.probs, transformer.predict_proba(POOL), atol=1e-5)
    if "mc_probs" in needs:
        # MC dropout by hand: the head with its dropout on, T passes over the cached features
        head = transformer.head
        torch.manual_seed(1)
        head.train()
        with torch.no_grad():
            by_hand = np.stack([torch.softmax(head(feats), -1).numpy() for _ in range(5)])
        head.eval()
        np.testing.assert_allclose(ctx.mc_probs, by_hand, atol=1e-5)
        assert A.bald_scores(ctx.mc_probs).max() > 0  # dropout passes disagree
        assert not transformer.training and not head.training  # modes restored
    if "embeddings" in needs:
        np.testing.assert_allclose(ctx.embeddings, A.reduce_embeddings(feats.numpy(), 8, seed=1), atol=1e-4)
        lab = A.reduce_embeddings(transformer.features(LABELLED).numpy(), 8, seed=1)
        np.testing.assert_allclose(ctx.labeled_embeddings, lab, atol=1e-4)
    picked = A.get_strategy(strategy).query(ctx, 3)
    assert len(set(picked.tolist())) == 3


@pytest.mark.parametrize("strategy", A.STRATEGIES)
def test_ensemble_runs_probability_strategies_and_refuses_the_rest(ngram, strategy):  # type: ignore[no-untyped-def]
    ensemble = EnsembleClassifier([ngram, ngram])
    needs = A.STRATEGY_SPECS[strategy].needs
    if set(needs) <= {"probs"}:
        ctx = P.pool_context(ensemble, POOL, strategy=strategy)
        if needs:
            np.testing.assert_allclose(ctx.probs, ngram.predict_proba(POOL), rtol=1e-6)
        assert A.get_strategy(strategy).query(ctx, 2).size == 2
        assert P.strategy_refusal(strategy, "ensemble") is None
        return
    with pytest.raises(P.StrategyUnavailable, match=f"the {strategy} strategy needs .* cannot provide"):
        P.pool_context(ensemble, POOL, strategy=strategy)
    message = P.strategy_refusal(strategy, "ensemble")
    assert message and "choose one of random, least_confidence, margin, entropy" in message


def test_multiclass_ngram_posterior_weights_match_its_predictions() -> None:
    texts, labels = tiny_dataset(["neg", "neu", "pos"])
    model = NgramClassifier.train(texts, labels, TINY_CONFIG, label_order=["neg", "neu", "pos"])
    coef, intercept, output = P.ngram_posterior_weights(model)
    assert coef.shape == (3, model.n_features) and output == model.output == "ovr"
    z = model.features(POOL) @ coef.T + intercept
    s = 1 / (1 + np.exp(-z))
    np.testing.assert_allclose(s / s.sum(axis=1, keepdims=True), model.predict_proba(POOL), rtol=1e-4)
    mc = P.pool_context(model, POOL, LABELLED, strategy="bald", samples=4).mc_probs
    assert mc.shape == (4, len(POOL), 3)
    np.testing.assert_allclose(mc.sum(axis=2), 1.0)


def test_unknown_strategy_is_refused(ngram) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(P.StrategyUnavailable, match="unknown query strategy"):
        P.pool_context(ngram, POOL, strategy="nope")
