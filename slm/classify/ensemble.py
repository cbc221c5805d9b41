"""A weighted average of member classifiers' probabilities — the `ensemble` family.

Saved layout: config.json {"family": "ensemble", "labels", "weights", "members": [{"path", "family"}]}
and members/<i>/ holding each member's own saved files (+ a metadata.json naming its family).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from slm.classify.base import Classifier


class EnsembleClassifier:
    family = "ensemble"

    def __init__(self, members: Sequence[Any], weights: Sequence[float] | None = None) -> None:
        if not members:
            raise ValueError("an ensemble needs at least one member")
        labels = list(members[0].labels)
        for m in members[1:]:
            if list(m.labels) != labels:
                raise ValueError(f"ensemble members disagree on labels: {labels} vs {list(m.labels)}")
        w = np.asarray(weights if weights is not None else [1.0] * len(members), dtype=np.float64)
        if len(w) != len(members) or (w < 0).any() or w.sum() <= 0:
            raise ValueError("ensemble weights must be non-negative, one per member, not all zero")
        self.members = list(members)
        self.weights = (w / w.sum()).tolist()
        self.labels = labels

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        texts = list(texts)
        out = np.zeros((len(texts), len(self.labels)), dtype=np.float64)
        for w, m in zip(self.weights, self.members, strict=True):
            out += w * np.asarray(m.predict_proba(texts), dtype=np.float64)
        return out.astype(np.float32)

    def predict(self, texts: Sequence[str]) -> list[str]:
        return [self.labels[i] for i in self.predict_proba(texts).argmax(axis=1)]

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        members = []
        for i, m in enumerate(self.members):
            sub = directory / "members" / str(i)
            m.save(sub)
            family = getattr(m, "family", "transformer")
            (sub / "metadata.json").write_text(json.dumps({"family": family}))
            members.append({"path": f"members/{i}", "family": family})
        config = {"family": self.family, "labels": self.labels, "weights": self.weights, "members": members}
        (directory / "config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False))

    @classmethod
    def load(cls, directory: str | Path) -> EnsembleClassifier:
        from slm.classify.base import load_classifier

        directory = Path(directory)
        cfg = json.loads((directory / "config.json").read_text())
        members: list[Classifier] = [load_classifier(directory / m["path"]) for m in cfg["members"]]
        return cls(members, cfg.get("weights"))
