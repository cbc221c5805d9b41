"""Test doubles: a keyword classifier published as real registry versions (family "fake").

`install_fake_loader(monkeypatch)` makes the inference service load these; versions whose metadata has
"broken": true fail to load, "slow_ms" delays each predict call, "bias" shifts the positive probability.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from slm.registry import ModelVersion, Registry

POSITIVE = ("好", "棒", "推荐", "good", "great", "love", "excellent")


class FakeClassifier:
    def __init__(self, labels: list[str], bias: float = 0.0, slow_ms: float = 0.0) -> None:
        self.labels = labels
        self.bias = bias
        self.slow_ms = slow_ms
        self.calls: list[int] = []
        self.threads: set[str] = set()
        self._lock = threading.Lock()

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        with self._lock:
            self.calls.append(len(texts))
            self.threads.add(threading.current_thread().name)
        if self.slow_ms:
            time.sleep(self.slow_ms / 1000)
        if any("BOOM" in t for t in texts):
            raise RuntimeError("cannot classify BOOM")
        out = np.zeros((len(texts), len(self.labels)))
        for i, t in enumerate(texts):
            pos = 0.9 if any(w in t.lower() for w in POSITIVE) else 0.2
            pos = min(max(pos + self.bias, 0.01), 0.99)
            if len(self.labels) == 2:
                out[i] = [1 - pos, pos]
            else:
                out[i] = (1 - pos) / (len(self.labels) - 1)
                out[i, -1] = pos
        return out


def fake_loader(mv: ModelVersion) -> FakeClassifier:
    meta = mv.metadata
    if meta.get("broken"):
        raise RuntimeError(f"{mv.ref} is broken on purpose")
    return FakeClassifier(
        list(meta["labels"]), bias=float(meta.get("bias", 0.0)), slow_ms=float(meta.get("slow_ms", 0))
    )


def install_fake_loader(monkeypatch: Any) -> None:
    import sentiment.inference as inference

    inference.reset_services()
    monkeypatch.setattr(inference, "default_loader", fake_loader)


def make_fake_version(
    registry: Registry,
    name: str = "sentiment",
    labels: tuple[str, ...] = ("negative", "positive"),
    *,
    promote: bool = True,
    family: str = "ngram",
    **meta: Any,
) -> ModelVersion:
    metrics = {
        "accuracy": 0.85,
        "macro_f1": 0.84,
        "ece": 0.05,
        "per_class": {lab: {"precision": 0.8, "recall": 0.9, "f1": 0.85, "support": 10} for lab in labels},
        "confusion_matrix": [[9 if i == j else 1 for j in range(len(labels))] for i in range(len(labels))],
    }

    def write(path: Path) -> None:
        (path / "fake.json").write_text(json.dumps({"labels": list(labels)}))

    metadata = {
        "family": family,
        "labels": list(labels),
        "metrics": metrics,
        "curves": {"epoch": [1, 2, 3], "train_loss": [0.7, 0.5, 0.4], "val_accuracy": [0.6, 0.7, 0.8]},
        "data_hash": "abc123",
        "config": {"lr": 0.0005, "epochs": 3},
        "quality": {"rows": 100, "duplicates_dropped": 3},
        "timings": {"train_s": 1.5},
        **meta,
    }
    mv = registry.create_version(name, write, metadata)
    if promote:
        registry.promote(name, mv.version)
    return mv
