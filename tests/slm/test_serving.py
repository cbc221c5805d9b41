"""Classifier serving core (slm.classify.serving): live + pinned versions, hot swap, failed loads,
micro-batching."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from slm.classify.serving import (
    InferenceService,
    MicroBatcher,
    ModelUnavailable,
    UnknownVersion,
)
from tests.sentiment.fakes import FakeClassifier, fake_loader, make_fake_version


@pytest.fixture
def service(registry):
    svc = InferenceService(registry, "sentiment", loader=fake_loader, batch_size=16, wait_ms=2, cache_size=2)
    yield svc
    svc.close()


def test_predict_live_returns_probabilities(registry, service):
    make_fake_version(registry)
    result = service.predict(["这家店真好", "terrible food"])
    assert result.ref == "sentiment@v0001"
    preds = result.predictions()
    assert [p["label"] for p in preds] == ["positive", "negative"]
    assert preds[0]["score"] == pytest.approx(0.9)
    assert set(preds[0]["probs"]) == {"negative", "positive"}
    assert sum(preds[1]["probs"].values()) == pytest.approx(1.0)


def test_no_live_version_is_unavailable(registry, service):
    with pytest.raises(ModelUnavailable, match="no live version"):
        service.predict(["x"])
    make_fake_version(registry, promote=False)
    with pytest.raises(ModelUnavailable):
        service.predict(["x"])
    assert service.predict(["x"], "v0001").ref == "sentiment@v0001"


def test_pinned_versions_and_unknown_ones(registry, service):
    make_fake_version(registry)
    make_fake_version(registry, promote=False, bias=-0.5)
    assert service.predict(["good"], "v0002").ref == "sentiment@v0002"
    assert service.predict(["good"], "sentiment@v0002").predictions()[0]["label"] == "negative"  # biased version
    assert service.predict(["good"]).predictions()[0]["label"] == "positive"
    assert service.predict(["good"], "sentiment@live").ref == "sentiment@v0001"
    assert service.predict(["good"], "live").ref == "sentiment@v0001"
    for bad in ["v0099", "other@v0001", "../../etc", "v1", "sentiment@nope"]:
        with pytest.raises(UnknownVersion):
            service.predict(["good"], bad)


def test_pinned_version_that_fails_to_load_is_unavailable(registry, service):
    make_fake_version(registry)
    make_fake_version(registry, promote=False, broken=True)
    with pytest.raises(ModelUnavailable, match="could not be loaded"):
        service.predict(["x"], "v0002")


def test_lru_keeps_at_most_cache_size_versions(registry, service):
    make_fake_version(registry)
    for _ in range(3):
        make_fake_version(registry, promote=False)
    for v in ("v0002", "v0003", "v0004", "v0002"):
        service.predict(["x"], v)
    assert list(service._cache) == ["v0004", "v0002"]
    service.predict(["x"], "v0001")  # the live one is served from the live slot, not cached twice
    assert "v0001" not in service._cache


def test_hot_swap_under_concurrent_requests_has_zero_failures(registry, service):
    make_fake_version(registry)
    make_fake_version(registry, promote=False, slow_ms=1)
    errors: list[BaseException] = []
    served: list[str] = []
    stop = threading.Event()
    lock = threading.Lock()

    def hammer() -> None:
        while not stop.is_set():
            try:
                r = service.predict(["好评", "bad"])
                assert r.probs.shape == (2, 2)
                with lock:
                    served.append(r.ref)
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)
                return

    threads = [threading.Thread(target=hammer) for _ in range(6)]
    for t in threads:
        t.start()
    try:
        for target in ("v0002", "v0001", "v0002"):
            mark = len(served)
            registry.promote("sentiment", target)
            swapped = threading.Event()
            for _ in range(1000):  # bounded wait until a request after the promotion was served by it
                if f"sentiment@{target}" in served[mark:]:
                    swapped.set()
                    break
                stop.wait(0.005)
            assert swapped.is_set(), f"{target} never served"
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    assert errors == []
    assert set(served) == {"sentiment@v0001", "sentiment@v0002"}
    assert len(served) > 20


def test_new_version_that_fails_to_load_keeps_the_old_one_serving(registry, service):
    make_fake_version(registry)
    assert service.predict(["x"]).ref == "sentiment@v0001"
    broken = make_fake_version(registry, promote=True, broken=True)
    assert registry.live_version("sentiment") == broken.version
    result = service.predict(["好"])
    assert result.ref == "sentiment@v0001"
    assert "broken on purpose" in service.status()["last_error"]
    fixed = make_fake_version(registry, promote=True)
    assert service.predict(["x"]).ref == fixed.ref
    assert service.status()["last_error"] is None


def test_concurrent_requests_are_batched_together(registry):
    make_fake_version(registry, slow_ms=30)
    svc = InferenceService(registry, "sentiment", loader=fake_loader, batch_size=64, wait_ms=5)
    try:
        svc.predict(["warm up"])
        _, clf = svc.resolve(None)
        clf.calls.clear()
        n = 12
        barrier = threading.Barrier(n)

        def one(i: int) -> str:
            barrier.wait()
            return svc.predict([f"text {i} good"]).predictions()[0]["label"]

        with ThreadPoolExecutor(n) as pool:
            labels = list(pool.map(one, range(n)))
        assert labels == ["positive"] * n
        assert sum(clf.calls) == n
        assert len(clf.calls) < n / 2, clf.calls  # grouped, not one call per request
        assert max(clf.calls) > 1
        assert clf.threads == {"sentiment-batcher"}
    finally:
        svc.close()


def test_batches_respect_batch_size_and_results_stay_in_order():
    clf = FakeClassifier(["negative", "positive"])
    batcher = MicroBatcher(batch_size=4, wait_ms=1)
    try:
        texts = [("good" if i % 3 == 0 else "meh") + str(i) for i in range(10)]
        probs = batcher.submit(clf, texts).result(5)
        assert probs.shape == (10, 2)
        assert max(clf.calls) <= 4
        np.testing.assert_allclose(probs[:, 1], [0.9 if i % 3 == 0 else 0.2 for i in range(10)])
    finally:
        batcher.close()


def test_one_failing_request_does_not_fail_its_batch_neighbours():
    clf = FakeClassifier(["negative", "positive"], slow_ms=20)
    batcher = MicroBatcher(batch_size=64, wait_ms=20)
    try:
        futures = [batcher.submit(clf, ["good"]), batcher.submit(clf, ["BOOM"]), batcher.submit(clf, ["bad"])]
        assert futures[0].result(5)[0, 1] == pytest.approx(0.9)
        with pytest.raises(RuntimeError, match="BOOM"):
            futures[1].result(5)
        assert futures[2].result(5)[0, 1] == pytest.approx(0.2)
    finally:
        batcher.close()


def test_predict_error_becomes_model_unavailable(registry, service):
    make_fake_version(registry)
    with pytest.raises(ModelUnavailable, match="failed to predict"):
        service.predict(["BOOM"])


def test_apredict_from_async_code(registry, service):
    make_fake_version(registry)

    async def main() -> list[str]:
        results = await asyncio.gather(*(service.apredict([f"good {i}"]) for i in range(5)))
        return [r.predictions()[0]["label"] for r in results]

    assert asyncio.run(main()) == ["positive"] * 5


def test_prometheus_metrics_count_requests(registry, service):
    from prometheus_client import REGISTRY

    def value(outcome: str) -> float:
        return REGISTRY.get_sample_value("slm_sentiment_requests_total", {"outcome": outcome}) or 0.0

    before_ok, before_missing = value("ok"), value("ModelUnavailable")
    with pytest.raises(ModelUnavailable):
        service.predict(["x"])
    make_fake_version(registry)
    service.predict(["x", "y"])
    assert value("ok") == before_ok + 1
    assert value("ModelUnavailable") == before_missing + 1


def test_wrong_shaped_probabilities_are_an_error_not_a_hang():
    class Bad(FakeClassifier):
        def predict_proba(self, texts):
            return np.zeros((len(texts) + 1, 2))

    batcher = MicroBatcher(batch_size=8, wait_ms=0)
    try:
        with pytest.raises(ValueError, match="shape"):
            batcher.submit(Bad(["a", "b"]), ["x"]).result(5)
        assert batcher.submit(FakeClassifier(["a", "b"]), ["good"]).result(5).shape == (1, 2)  # worker alive
    finally:
        batcher.close()


def test_batches_are_split_by_length_and_results_keep_request_order():
    batcher = MicroBatcher(batch_size=4, wait_ms=0)
    texts = ["short"] * 3 + ["x" * 200] + ["good " * 3] + ["y" * 90] + ["ok"]
    buckets = batcher.length_buckets(texts)
    assert sorted(i for b in buckets for i in b) == list(range(len(texts)))
    assert all(len(b) <= 4 for b in buckets)
    for b in buckets:
        lengths = [len(texts[i]) for i in b]
        assert max(lengths) <= 2 * max(16, min(lengths))
    clf = FakeClassifier(["negative", "positive"])
    try:
        probs = batcher.submit(clf, texts).result(5)
        assert list(probs[:, 1].round(2)) == [0.2, 0.2, 0.2, 0.2, 0.9, 0.2, 0.2]
        assert len(clf.calls) == len(buckets)
    finally:
        batcher.close()
