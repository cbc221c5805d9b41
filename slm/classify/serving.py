"""Classifier serving, Django-free (the chat engine's counterpart): the live version with hot swap, a
small LRU of pinned versions, and micro-batching of concurrent requests. `sentiment.inference` holds
the Django glue (one service per process, configured from settings).

One `InferenceService` per (registry, model name) per process:

* the live version is held by `slm.registry.LiveModel`: every request costs one small file read of
  the live pointer; when it moved, the new version is loaded and swapped in. Requests that already
  resolved a classifier keep using that object, and if the new version fails to load the old one
  keeps serving (`status()["last_error"]` says why).
* `predict(texts, version="v0003")` serves a specific version from an LRU of loaded classifiers.
* `MicroBatcher`: one worker thread owns all `predict_proba` calls. Requests queue a future; the
  worker takes what is waiting (and what arrives within `SENTIMENT_BATCH_WAIT_MS`) up to
  `SENTIMENT_BATCH_SIZE` texts, groups them by classifier object and predicts each group in one call.
  Callers block on their future, so it works the same from WSGI threads, from django-ninja sync
  endpoints run by daphne in a thread, and from async code through `apredict`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from prometheus_client import Counter, Histogram

from slm.classify.base import Classifier, load_classifier
from slm.registry import ModelVersion, Registry, RegistryError, VersionNotFound, parse_ref, shorten, valid_version

log = logging.getLogger(__name__)

# Prometheus metrics (served by /metrics from the default registry).
REQUESTS = Counter("slm_sentiment_requests_total", "Sentiment predict calls", ["outcome"])
TEXTS = Counter("slm_sentiment_texts_total", "Texts classified")
BATCH_TEXTS = Histogram(
    "slm_sentiment_batch_texts", "Texts per micro-batch", buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
)
LATENCY = Histogram(
    "slm_sentiment_request_seconds",
    "Predict call latency (queueing + batch)",
    buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)

Loader = Callable[[ModelVersion], Classifier]


class InferenceError(Exception):
    """Base class; `status` is the HTTP status an API maps it to."""

    status = 500


class ModelUnavailable(InferenceError):
    """No live version, or the requested version cannot be loaded right now (503)."""

    status = 503


class UnknownVersion(InferenceError):
    """The requested model version does not exist (404)."""

    status = 404


def default_loader(mv: ModelVersion) -> Classifier:
    return load_classifier(mv.path)


@dataclass(frozen=True)
class PredictResult:
    ref: str  # "name@version"
    labels: list[str]
    probs: np.ndarray  # (n_texts, n_labels)
    metadata: dict[str, Any] = field(default_factory=dict, compare=False)

    def predictions(self, digits: int = 6) -> list[dict[str, Any]]:
        out = []
        for row in self.probs:
            best = int(np.argmax(row))
            out.append(
                {
                    "label": self.labels[best],
                    "score": round(float(row[best]), digits),
                    "probs": {label: round(float(p), digits) for label, p in zip(self.labels, row, strict=True)},
                }
            )
        return out


# ---------------------------------------------------------------------------------------------- batching
@dataclass
class _Job:
    classifier: Classifier
    texts: list[str]
    future: Future[np.ndarray]


class MicroBatcher:
    """Collects concurrent predict calls and runs them as batches in one worker thread."""

    def __init__(self, batch_size: int = 64, wait_ms: float = 3.0) -> None:
        self.batch_size = max(1, int(batch_size))
        self.wait_s = max(0.0, float(wait_ms)) / 1000.0
        self._lock = threading.Lock()
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        # Counters for tests, benchmarks and /metrics-style introspection.
        self.batches = 0
        self.texts = 0
        self.largest_batch = 0

    def _ensure_worker(self) -> None:
        if self._thread is not None and self._thread.is_alive() and self._pid == os.getpid():
            return
        with self._lock:
            if self._pid != os.getpid():  # forked (e.g. an RQ work horse): the parent's thread is not here
                self._queue = queue.Queue()
                self._pid = os.getpid()
                self._thread = None
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="sentiment-batcher", daemon=True)
                self._thread.start()

    def submit(self, classifier: Classifier, texts: Sequence[str]) -> Future[np.ndarray]:
        fut: Future[np.ndarray] = Future()
        self._ensure_worker()
        self._queue.put(_Job(classifier, list(texts), fut))
        return fut

    def close(self, timeout: float = 5.0) -> None:
        thread = self._thread
        if thread is not None and thread.is_alive():
            self._queue.put(None)
            thread.join(timeout)
        self._thread = None

    # -- worker
    def _run(self) -> None:
        torch = sys.modules.get("torch")
        if torch is not None:
            # OpenMP settings are per thread: a new thread would otherwise use its own default thread
            # count and contend with the rest of the process (see DESIGN §2 on torch in threads).
            torch.set_num_threads(torch.get_num_threads())
        q = self._queue
        while True:
            job = q.get()
            if job is None:
                return
            pending = [job]
            count = len(job.texts)
            deadline = time.monotonic() + self.wait_s
            stop = False
            while count < self.batch_size:
                remaining = deadline - time.monotonic()
                try:
                    nxt = q.get(timeout=remaining) if remaining > 0 else q.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                pending.append(nxt)
                count += len(nxt.texts)
            groups: dict[int, list[_Job]] = {}
            for j in pending:
                groups.setdefault(id(j.classifier), []).append(j)
            for group in groups.values():
                try:
                    self._run_group(group)
                except BaseException as exc:  # never leave a caller waiting on a future nobody completes
                    log.exception("sentiment batch failed unexpectedly")
                    for j in group:
                        if not j.future.done():
                            j.future.set_exception(exc)
            if stop:
                return

    def length_buckets(self, texts: Sequence[str]) -> list[list[int]]:
        """Indices grouped by similar length, at most batch_size each: a padded transformer batch then
        wastes little on padding (a 20-character review beside a 300-character one would cost 300)."""
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        buckets: list[list[int]] = []
        current: list[int] = []
        for i in order:
            shortest = len(texts[current[0]]) if current else 0
            if current and (len(current) >= self.batch_size or len(texts[i]) > 2 * max(16, shortest)):
                buckets.append(current)
                current = []
            current.append(i)
        if current:
            buckets.append(current)
        return buckets

    def _predict(self, classifier: Classifier, texts: list[str]) -> np.ndarray:
        n_labels = len(classifier.labels)
        probs = np.zeros((len(texts), n_labels), dtype=np.float64)
        for idx in self.length_buckets(texts):
            part = np.asarray(classifier.predict_proba([texts[i] for i in idx]), dtype=np.float64)
            if part.shape != (len(idx), n_labels):
                raise ValueError(f"classifier returned shape {part.shape}, expected {(len(idx), n_labels)}")
            probs[idx] = part
        return probs

    def _run_group(self, group: list[_Job]) -> None:
        live = [j for j in group if j.future.set_running_or_notify_cancel()]
        if not live:
            return
        texts = [t for j in live for t in j.texts]
        BATCH_TEXTS.observe(len(texts))
        self.batches += 1
        self.texts += len(texts)
        self.largest_batch = max(self.largest_batch, len(texts))
        try:
            probs = self._predict(live[0].classifier, texts)
        except Exception:
            if len(live) == 1:
                live[0].future.set_exception(_current_exc())
                return
            # One bad request must not fail its neighbours: retry each on its own.
            for j in live:
                try:
                    j.future.set_result(self._predict(j.classifier, j.texts))
                except Exception:
                    j.future.set_exception(_current_exc())
            return
        start = 0
        for j in live:
            j.future.set_result(probs[start : start + len(j.texts)])
            start += len(j.texts)


def _current_exc() -> BaseException:
    exc = sys.exc_info()[1]
    assert exc is not None
    return exc


# ---------------------------------------------------------------------------------------------- service
class InferenceService:
    def __init__(
        self,
        registry: Registry,
        name: str,
        *,
        loader: Loader | None = None,
        batch_size: int = 64,
        wait_ms: float = 3.0,
        cache_size: int = 3,
        timeout_s: float = 120.0,
    ) -> None:
        from slm.registry import LiveModel

        self.registry = registry
        self.name = name
        self.loader: Loader = loader or default_loader
        self.live = LiveModel(registry, name, self.loader)
        self.batcher = MicroBatcher(batch_size=batch_size, wait_ms=wait_ms)
        self.cache_size = max(0, int(cache_size))
        self.timeout_s = timeout_s
        self._cache: OrderedDict[str, tuple[ModelVersion, Classifier]] = OrderedDict()
        self._cache_lock = threading.Lock()
        self._load_locks: dict[str, threading.Lock] = {}

    # -- resolving a model
    def normalise_version(self, model: str | None) -> str | None:
        """None/''/'live'/'<name>' -> None (live); 'v0003' or '<name>@v0003' -> 'v0003'."""
        if model is None:
            return None
        model = model.strip()
        if model in ("", "live", self.name):
            return None
        version: str | None = model
        if "@" in model:
            name, version = parse_ref(model)
            if name != self.name:
                raise UnknownVersion(f"unknown model {shorten(name)}: this service serves {self.name!r}")
            if version in (None, "live"):
                return None
        if not valid_version(version):  # checked before any path, lock or cache entry exists for it
            raise UnknownVersion(f"model {self.name!r} has no version {shorten(version)} (versions look like v0003)")
        return version

    def resolve(self, model: str | None = None) -> tuple[ModelVersion, Classifier]:
        version = self.normalise_version(model)
        if version is None:
            return self._resolve_live()
        return self._resolve_pinned(version)

    def _resolve_live(self) -> tuple[ModelVersion, Classifier]:
        try:
            return self.live.get()
        except VersionNotFound as exc:
            raise ModelUnavailable(
                f"model {self.name!r} has no live version yet (build one with `manage.py bootstrap_models` "
                "or promote a version)"
            ) from exc
        except Exception as exc:
            raise ModelUnavailable(f"the live version of {self.name!r} could not be loaded: {exc}") from exc

    def _resolve_pinned(self, version: str) -> tuple[ModelVersion, Classifier]:
        held = self.live._version  # the live slot may already hold it: no second copy
        if held is not None and held.version == version and self.live._model is not None:
            return held, self.live._model
        if version == self.registry.live_version(self.name):
            try:
                mv, clf = self.live.get()
            except Exception:  # noqa: BLE001 - fall through to a pinned load with its own error
                pass
            else:
                if mv.version == version:
                    return mv, clf
        with self._cache_lock:
            hit = self._cache.get(version)
            if hit is not None:
                self._cache.move_to_end(version)
                return hit
        try:  # only versions that exist get a load lock (their number is bounded by the registry)
            mv = self.registry.get(self.name, version)
        except RegistryError as exc:
            raise UnknownVersion(f"model {self.name!r} has no version {version!r}") from exc
        with self._cache_lock:
            lock = self._load_locks.setdefault(version, threading.Lock())
        with lock:
            with self._cache_lock:
                hit = self._cache.get(version)
                if hit is not None:
                    return hit
            try:
                clf = self.loader(mv)
            except Exception as exc:
                log.exception("loading %s failed", mv.ref)
                raise ModelUnavailable(f"{mv.ref} could not be loaded: {type(exc).__name__}: {exc}") from exc
            with self._cache_lock:
                if self.cache_size:
                    self._cache[version] = (mv, clf)
                    while len(self._cache) > self.cache_size:
                        self._cache.popitem(last=False)
            return mv, clf

    # -- predicting
    def predict(self, texts: Sequence[str], model: str | None = None) -> PredictResult:
        started = time.perf_counter()
        try:
            mv, clf = self.resolve(model)
        except InferenceError as exc:
            REQUESTS.labels(type(exc).__name__).inc()
            raise
        fut = self.batcher.submit(clf, texts)
        try:
            probs = fut.result(timeout=self.timeout_s)
        except FutureTimeout as exc:
            fut.cancel()
            REQUESTS.labels("Timeout").inc()
            raise ModelUnavailable(f"{mv.ref} did not answer within {self.timeout_s:.0f}s (server busy)") from exc
        except Exception as exc:
            log.exception("prediction with %s failed", mv.ref)
            REQUESTS.labels("PredictError").inc()
            raise ModelUnavailable(f"{mv.ref} failed to predict: {type(exc).__name__}: {exc}") from exc
        REQUESTS.labels("ok").inc()
        TEXTS.inc(len(texts))
        LATENCY.observe(time.perf_counter() - started)
        return PredictResult(ref=mv.ref, labels=list(clf.labels), probs=probs, metadata=mv.metadata)

    async def apredict(self, texts: Sequence[str], model: str | None = None) -> PredictResult:
        mv, clf = await asyncio.to_thread(self.resolve, model)
        fut = self.batcher.submit(clf, texts)
        probs = await asyncio.wait_for(asyncio.wrap_future(fut), self.timeout_s)
        return PredictResult(ref=mv.ref, labels=list(clf.labels), probs=probs, metadata=mv.metadata)

    def status(self) -> dict[str, Any]:
        held = self.live._version
        return {
            "name": self.name,
            "live_loaded": held.version if held else None,
            "live_pointer": self.registry.live_version(self.name),
            "last_error": self.live.last_error,
            "cached": list(self._cache),
            "batches": self.batcher.batches,
            "texts": self.batcher.texts,
            "largest_batch": self.batcher.largest_batch,
        }

    def close(self) -> None:
        self.batcher.close()
