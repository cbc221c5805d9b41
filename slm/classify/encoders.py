"""Which model sources are bare encoders (a transformer without a classification head: bert-base-chinese,
all-MiniLM-L6-v2...), as opposed to trained classifiers, so a project or a training run can start from one.

An encoder is named like any model source (slm.loader):
  * a registry version registered as an encoder — `pull_model bert-base-chinese` records task "encoder" —
    as ``registry:<name>[@version]`` or plainly ``<name>[@version]``; it is pinned to its version, so a
    later pull does not change what a project started from;
  * a `save_pretrained` directory of an encoder;
  * a hub id in the local Hugging Face cache (downloaded first only when downloads are allowed).
Classifier versions (their metadata names a classifier family) and causal LMs (chat models) are not
encoders. The resolved source is what `TransformerClassifier.from_encoder` loads (frozen-cached training
by default: the encoder's features are computed once, the head trains on them).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from slm.loader import ModelNotAvailable, resolve_source
from slm.registry import Registry, RegistryError

CLASSIFIER_FAMILIES = ("ngram", "transformer", "ensemble")


class NotAnEncoder(ValueError):
    """The source exists but is not a bare encoder (a classifier, a chat model); the message says what it is."""


def _config(path: Path) -> dict[str, Any]:
    try:
        return json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return {}


def _encoder_config_problem(path: Path, ref: str) -> str:
    """Why the directory `path` is not an encoder ("" if it is one)."""
    conf = _config(path)
    if not conf:
        return f"{ref} has no readable config.json"
    if conf.get("family") in CLASSIFIER_FAMILIES:
        return f"{ref} is a trained {conf['family']} classifier, not a bare encoder"
    if not conf.get("model_type"):
        return f"{ref}'s config.json names no model_type"
    if any(str(a).endswith(("LMHeadModel", "ForCausalLM")) for a in conf.get("architectures") or []):
        return f"{ref} is a text-generation model, not an encoder"
    return ""


def resolve_encoder(ref: str, *, registry: Registry | None = None) -> str:
    """The loader source of the encoder `ref` names (``registry:<name>@<version>`` pinned, a directory, or a
    hub id). Raises NotAnEncoder when `ref` names something else, ModelNotAvailable when it names nothing."""
    ref = ref.strip()
    if not ref:
        raise ModelNotAvailable("no encoder given")
    name = ref.removeprefix("registry:")
    if registry is not None and (ref.startswith("registry:") or "/" not in name):
        try:
            mv = registry.resolve(name)
        except (RegistryError, ValueError) as exc:
            if ref.startswith("registry:"):
                raise ModelNotAvailable(f"{ref}: {exc}") from exc
        else:
            meta = mv.metadata
            if meta.get("family") in CLASSIFIER_FAMILIES:
                raise NotAnEncoder(f"{mv.ref} is a trained {meta['family']} classifier, not a bare encoder")
            if meta.get("task") == "text-generation":
                raise NotAnEncoder(f"{mv.ref} is a text-generation model, not an encoder")
            problem = "" if meta.get("task") == "encoder" else _encoder_config_problem(mv.path, mv.ref)
            if problem:
                raise NotAnEncoder(problem)
            return f"registry:{mv.ref}"
    src = resolve_source(ref, registry=registry)
    if src.path is None:  # pragma: no cover - every resolved source has a directory
        raise ModelNotAvailable(f"{ref} has no local directory")
    problem = _encoder_config_problem(src.path, ref)
    if problem:
        raise NotAnEncoder(problem)
    return ref if src.kind == "hub" else str(src.path)


def is_encoder(ref: str, *, registry: Registry | None = None) -> bool:
    """True when `ref` resolves to a bare encoder (never raises)."""
    try:
        resolve_encoder(ref, registry=registry)
    except (NotAnEncoder, ModelNotAvailable):
        return False
    return True
