"""The predict interface every classifier family implements, and the loader that dispatches on it.

A saved classifier is a directory (a registry version) with `metadata.json` whose "family" is
"ngram", "transformer" or "ensemble"; `load_classifier(path)` returns an object with:

    labels: list[str]                          # index -> label name (id2label order)
    predict_proba(texts: list[str]) -> np.ndarray   # shape (len(texts), len(labels)), rows sum to 1
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Classifier(Protocol):
    labels: list[str]

    def predict_proba(self, texts: list[str]) -> np.ndarray: ...


def read_family(path: Path) -> str:
    meta = json.loads((Path(path) / "metadata.json").read_text()) if (Path(path) / "metadata.json").exists() else {}
    return str(meta.get("family", "transformer"))


def load_classifier(path: str | Path) -> Classifier:
    path = Path(path)
    family = read_family(path)
    if family == "ngram":
        from slm.classify.ngram import NgramClassifier

        return NgramClassifier.load(path)
    if family == "ensemble":
        from slm.classify.ensemble import EnsembleClassifier

        return EnsembleClassifier.load(path)
    from slm.classify.transformer import TransformerClassifier

    return TransformerClassifier.load(path)
