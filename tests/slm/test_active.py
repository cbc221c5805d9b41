"""Query strategies vs direct NumPy / scipy / scikit-learn computations, cold start, stopping signal."""

from __future__ import annotations

import time

import numpy as np
import pytest
from scipy.stats import entropy as scipy_entropy
from sklearn.metrics import cohen_kappa_score, pairwise_distances
from threadpoolctl import threadpool_limits

from slm import active as A


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(7)


def _probs(rng: np.random.Generator, n: int = 300, c: int = 3) -> np.ndarray:
    return rng.dirichlet(np.ones(c), size=n)


def test_registry_names_and_unknown() -> None:
    assert A.STRATEGIES == ["random", "least_confidence", "margin", "entropy", "bald", "kcenter", "hybrid"]
    for name in A.STRATEGIES:
        s = A.get_strategy(name)
        assert isinstance(s, A.QueryStrategy)
        assert s.name == name
        spec = A.STRATEGY_SPECS[name]
        assert isinstance(s, spec.cls) and spec.summary and set(spec.needs) <= set(A.NEEDS)  # type: ignore[arg-type]
    assert A.STRATEGY_SPECS["bald"].needs == ("mc_probs",) and A.STRATEGY_SPECS["random"].needs == ()
    with pytest.raises(ValueError, match="unknown query strategy"):
        A.get_strategy("nope")


def test_least_confidence_matches_numpy(rng: np.random.Generator) -> None:
    p = _probs(rng)
    idx = A.LeastConfidence().query(A.PoolContext(probs=p), 25)
    expected = np.argsort(-(1 - p.max(axis=1)), kind="stable")[:25]
    assert idx.tolist() == expected.tolist()


def test_margin_matches_numpy(rng: np.random.Generator) -> None:
    p = _probs(rng, c=4)
    srt = np.sort(p, axis=1)
    margin = srt[:, -1] - srt[:, -2]
    idx = A.MarginSampling().query(A.PoolContext(probs=p), 30)
    assert idx.tolist() == np.argsort(margin, kind="stable")[:30].tolist()


def test_entropy_matches_scipy(rng: np.random.Generator) -> None:
    p = _probs(rng, c=5)
    ent = scipy_entropy(p, axis=1)
    np.testing.assert_allclose(A.entropy_scores(p), ent, rtol=1e-10)
    idx = A.EntropySampling().query(A.PoolContext(probs=p), 40)
    assert idx.tolist() == np.argsort(-ent, kind="stable")[:40].tolist()
    # zero probabilities do not produce nan
    assert A.entropy_scores(np.array([[1.0, 0.0], [0.5, 0.5]])).tolist() == pytest.approx([0.0, np.log(2)])


def test_bald_matches_hand_computation(rng: np.random.Generator) -> None:
    mc = rng.dirichlet(np.ones(3), size=(8, 200))  # (T, n, C)
    mean = mc.mean(axis=0)
    mi = scipy_entropy(mean, axis=1) - np.mean([scipy_entropy(mc[t], axis=1) for t in range(8)], axis=0)
    np.testing.assert_allclose(A.bald_scores(mc), mi, atol=1e-12)
    idx = A.BALD().query(A.PoolContext(mc_probs=mc), 20)
    assert idx.tolist() == np.argsort(-mi, kind="stable")[:20].tolist()
    # a tiny hand example: two passes that disagree completely vs agree completely
    mc2 = np.array([[[1.0, 0.0], [0.5, 0.5]], [[0.0, 1.0], [0.5, 0.5]]])
    assert A.bald_scores(mc2).tolist() == pytest.approx([np.log(2), 0.0])
    with pytest.raises(ValueError, match="mc_probs"):
        A.BALD().query(A.PoolContext(probs=mean), 3)


def _naive_kcenter(emb: np.ndarray, labeled: np.ndarray, n: int) -> list[int]:
    d_pool = pairwise_distances(emb, labeled).min(axis=1)
    full = pairwise_distances(emb, emb)
    chosen: list[int] = []
    for _ in range(n):
        i = int(np.argmax(d_pool))
        chosen.append(i)
        d_pool = np.minimum(d_pool, full[i])
    return chosen


def test_kcenter_matches_sklearn_pairwise(rng: np.random.Generator) -> None:
    emb = rng.standard_normal((400, 16))
    lab = rng.standard_normal((30, 16))
    ctx = A.PoolContext(embeddings=emb, labeled_embeddings=lab)
    assert A.KCenterGreedy().query(ctx, 25).tolist() == _naive_kcenter(emb, lab, 25)
    # min_sq_distances agrees with sklearn too
    np.testing.assert_allclose(
        np.sqrt(A.min_sq_distances(emb, lab)), pairwise_distances(emb, lab).min(axis=1), rtol=1e-4, atol=1e-3
    )


def test_kcenter_without_labels_is_farthest_first(rng: np.random.Generator) -> None:
    emb = rng.standard_normal((200, 4))
    idx = A.KCenterGreedy().query(A.PoolContext(embeddings=emb, seed=1), 10)
    assert len(set(idx.tolist())) == 10
    full = pairwise_distances(emb, emb)
    d = full[idx[0]].copy()
    for k in range(1, 10):  # every later pick is the farthest from all earlier picks
        assert idx[k] == int(np.argmax(d))
        d = np.minimum(d, full[idx[k]])


def test_hybrid_is_kcenter_over_top_uncertain(rng: np.random.Generator) -> None:
    p = _probs(rng, n=500)
    emb = rng.standard_normal((500, 8))
    lab = rng.standard_normal((10, 8))
    idx = A.Hybrid(factor=5, diversity="kcenter").query(
        A.PoolContext(probs=p, embeddings=emb, labeled_embeddings=lab), 12
    )
    cand = np.argsort(-scipy_entropy(p, axis=1), kind="stable")[:60]
    expected = cand[_naive_kcenter(emb[cand], lab, 12)]
    assert idx.tolist() == expected.tolist()
    # without embeddings it is refused, never served as plain entropy order
    with pytest.raises(ValueError, match="needs embeddings"):
        A.Hybrid().query(A.PoolContext(probs=p), 12)


def test_hybrid_kmeans_one_most_uncertain_per_cluster(rng: np.random.Generator) -> None:
    # 6 well separated blobs of 20 points; the default hybrid (k-means diversity) picks, in each blob,
    # the candidate with the highest entropy
    centers = rng.standard_normal((6, 5)) * 50
    emb = np.repeat(centers, 20, axis=0) + rng.standard_normal((120, 5))
    p = _probs(rng, n=120, c=2)
    ent = scipy_entropy(p, axis=1)
    idx = A.Hybrid(factor=20).query(A.PoolContext(probs=p, embeddings=emb, seed=0), 6)
    expected = [int(blob * 20 + np.argmax(ent[blob * 20 : blob * 20 + 20])) for blob in range(6)]
    assert sorted(idx.tolist()) == sorted(expected)
    assert idx.tolist() == sorted(expected, key=lambda i: -ent[i])  # most uncertain first
    with pytest.raises(ValueError, match="diversity"):
        A.Hybrid(diversity="nope")


def test_random_and_edge_sizes(rng: np.random.Generator) -> None:
    p = _probs(rng, n=50)
    ctx = A.PoolContext(probs=p, seed=3)
    idx = A.RandomSampling().query(ctx, 20)
    assert len(set(idx.tolist())) == 20 and idx.max() < 50
    assert A.RandomSampling().query(A.PoolContext(probs=p, seed=3), 20).tolist() == idx.tolist()
    for name in ("least_confidence", "margin", "entropy", "random"):
        assert A.get_strategy(name).query(A.PoolContext(probs=p), 0).size == 0
        assert sorted(A.get_strategy(name).query(A.PoolContext(probs=p), 500).tolist()) == list(range(50))
    with pytest.raises(ValueError, match="pool size"):
        A.PoolContext(probs=p, embeddings=np.zeros((49, 3)))
    with pytest.raises(ValueError, match="needs probs"):
        A.EntropySampling().query(A.PoolContext(embeddings=np.zeros((5, 2))), 2)


def test_top_n_ties_are_deterministic() -> None:
    s = np.array([0.5, 0.9, 0.5, 0.9, 0.1, 0.5])
    assert A.top_n(s, 3).tolist() == [1, 3, 0]
    assert A.top_n(s, 4).tolist() == [1, 3, 0, 2]


def test_priorities_in_unit_interval_and_order(rng: np.random.Generator) -> None:
    p = _probs(rng, n=300)
    emb = rng.standard_normal((300, 6))
    mc = rng.dirichlet(np.ones(3), size=(4, 300))
    ctx = A.PoolContext(probs=p, mc_probs=mc, embeddings=emb, labeled_embeddings=emb[:5] + 0.01, seed=0)
    for name in A.STRATEGIES:
        pr = A.get_strategy(name).priorities(ctx, 20)
        assert pr.shape == (300,) and pr.min() >= 0.0 and pr.max() <= 1.0, name
    # for set strategies the chosen batch comes first in priority order
    for name in ("kcenter", "hybrid"):
        s = A.get_strategy(name)
        chosen = s.query(A.PoolContext(probs=p, embeddings=emb, labeled_embeddings=emb[:5] + 0.01, seed=0), 20)
        pr = s.priorities(A.PoolContext(probs=p, embeddings=emb, labeled_embeddings=emb[:5] + 0.01, seed=0), 20)
        assert np.argsort(-pr, kind="stable")[:20].tolist() == chosen.tolist()
    ent = A.EntropySampling().priorities(ctx, 0)
    np.testing.assert_allclose(ent, scipy_entropy(p, axis=1) / np.log(3))


def test_query_time_100k_under_bound() -> None:
    rng = np.random.default_rng(0)
    n = 100_000
    ctx = A.PoolContext(
        probs=rng.dirichlet(np.ones(2), size=n),
        mc_probs=rng.dirichlet(np.ones(2), size=(5, n)),
        embeddings=rng.standard_normal((n, 64)).astype(np.float32),
        labeled_embeddings=rng.standard_normal((200, 64)).astype(np.float32),
        seed=0,
    )
    times, wall = {}, {}
    # CPU seconds of one BLAS thread: the work done, independent of how busy the shared machine is
    with threadpool_limits(limits=1):
        for name in A.STRATEGIES:
            t0, c0 = time.perf_counter(), time.process_time()
            idx = A.get_strategy(name).query(ctx, 50)
            times[name] = time.process_time() - c0
            wall[name] = time.perf_counter() - t0
            assert idx.size == 50 and len(set(idx.tolist())) == 50
    print("query CPU s over 100k:", {k: round(v, 3) for k, v in times.items()})
    print("query wall s over 100k:", {k: round(v, 3) for k, v in wall.items()})
    assert max(times.values()) < 2.0, times


def test_cold_start_rule() -> None:
    assert A.in_cold_start(None, 1) and A.in_cold_start([4, 0], 1) and not A.in_cold_start([1, 1], 1)
    assert A.in_cold_start({"neg": 5, "pos": 1}, 3) and not A.in_cold_start({"neg": 3, "pos": 3}, 3)
    assert not A.in_cold_start([0, 0], 0)  # a minimum of 0 means no cold start


def test_stopping_signal_stabilizing_predictions(rng: np.random.Generator) -> None:
    base = rng.integers(0, 2, 500)
    noisy = base.copy()
    noisy[:100] = 1 - noisy[:100]
    assert A.prediction_agreement(base, noisy) == pytest.approx(cohen_kappa_score(base, noisy))
    assert A.prediction_agreement(noisy, noisy) == 1.0
    assert A.should_stop([0.5, 0.99, 0.995, 1.0]) and not A.should_stop([0.99, 0.99])
    assert not A.should_stop([1.0, 1.0, 0.9])


def test_mc_dropout_probs_torch_classifier() -> None:
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Dropout(0.5), torch.nn.Linear(16, 3))
    model.eval()
    x = torch.randn(40, 6)
    mc = A.mc_dropout_probs(model, [x[:25], x[25:]], T=6, seed=0)
    assert mc.shape == (6, 40, 3)
    np.testing.assert_allclose(mc.sum(axis=2), 1.0, atol=1e-5)
    assert not np.allclose(mc[0], mc[1])  # dropout really was on
    assert not model.training  # mode restored
    np.testing.assert_allclose(mc, A.mc_dropout_probs(model, [x[:25], x[25:]], T=6, seed=0))
    assert A.bald_scores(mc).shape == (40,)
    with pytest.raises(ValueError, match="bootstrap_probs"):
        A.mc_dropout_probs(torch.nn.Linear(6, 2), [x], T=2)


def test_bootstrap_probs_stratified() -> None:
    y = np.array([0] * 10 + [1] * 5)
    seen = []

    def fit_predict(sample: np.ndarray) -> np.ndarray:
        seen.append(sample)
        frac = float(np.mean(y[sample]))
        return np.tile([1 - frac, frac], (7, 1))

    mc = A.bootstrap_probs(fit_predict, len(y), T=4, seed=0, y=y)
    assert mc.shape == (4, 7, 2)
    for s in seen:
        assert np.bincount(y[s], minlength=2).tolist() == [10, 5]


def test_reduce_embeddings_keeps_distances(rng: np.random.Generator) -> None:
    emb = rng.standard_normal((300, 512)).astype(np.float32)
    red = A.reduce_embeddings(emb, 128, seed=0)
    assert red.shape == (300, 128)
    d0 = pairwise_distances(emb[:50])
    d1 = pairwise_distances(red[:50])
    mask = ~np.eye(50, dtype=bool)
    assert np.median(np.abs(d1[mask] / d0[mask] - 1)) < 0.1


def test_linear_laplace_probs_matches_hand_computation() -> None:
    import scipy.sparse as sp

    rng = np.random.default_rng(5)
    x_lab = rng.random((30, 8))
    x_pool = rng.random((12, 8))
    coef = rng.standard_normal((1, 8))
    b = np.array([0.3])
    C, T = 2.0, 4
    mc = A.linear_laplace_probs(sp.csr_matrix(x_pool), sp.csr_matrix(x_lab), coef, b, C=C, T=T, seed=9)
    # by hand: precision_j = 1 + C sum_i p_i (1 - p_i) x_ij^2, logits = x (w + eps / sqrt(prec)) + b
    p = 1 / (1 + np.exp(-(x_lab @ coef[0] + b[0])))
    prec = 1 + C * ((p * (1 - p))[:, None] * x_lab**2).sum(axis=0)
    eps = np.random.default_rng(9).standard_normal((8, T)) / np.sqrt(prec)[:, None]
    z = (x_pool @ coef[0] + b[0])[:, None] + x_pool @ eps  # (n_pool, T)
    s = 1 / (1 + np.exp(-z.T))
    np.testing.assert_allclose(mc[:, :, 1], s, rtol=1e-10)
    np.testing.assert_allclose(mc.sum(axis=2), 1.0)
    # one-vs-rest multi-class: rows renormalised
    mc3 = A.linear_laplace_probs(x_pool, x_lab, rng.standard_normal((3, 8)), np.zeros(3), T=3)
    assert mc3.shape == (3, 12, 3)
    np.testing.assert_allclose(mc3.sum(axis=2), 1.0)
    # a multinomial (softmax) model: logits z + x @ eps per class, then softmax; p(1-p) from softmax probs
    coef3, b3 = rng.standard_normal((3, 8)), rng.standard_normal(3)
    mcs = A.linear_laplace_probs(x_pool, x_lab, coef3, b3, C=C, T=T, seed=4, output="softmax")
    z_lab = x_lab @ coef3.T + b3
    p3 = np.exp(z_lab) / np.exp(z_lab).sum(axis=1, keepdims=True)
    g = np.random.default_rng(4)
    logits = []
    for k in range(3):
        prec_k = 1 + C * ((p3[:, k] * (1 - p3[:, k]))[:, None] * x_lab**2).sum(axis=0)
        eps_k = g.standard_normal((8, T)) / np.sqrt(prec_k)[:, None]
        logits.append((x_pool @ coef3[k] + b3[k])[:, None] + x_pool @ eps_k)
    zz = np.stack(logits, axis=-1).transpose(1, 0, 2)
    np.testing.assert_allclose(mcs, np.exp(zz) / np.exp(zz).sum(axis=-1, keepdims=True), rtol=1e-10)
    with pytest.raises(ValueError, match="output"):
        A.linear_laplace_probs(x_pool, x_lab, coef3, b3, output="nope")
