"""Is a version worse than the live one? Read before a person promotes it by hand, so the page can ask
first (annotate's versions page and the sentiment versions/model card pages use the same rule).

Figures are only compared when they were measured on the same data:
1. gold: the version was trained from the live one (its parent), or the live one from it, and both were
   scored on the same gold items in that run (`annotate.parent_gold_metrics`), or both carry gold figures
   of the same project;
2. held-out: neither has gold figures and both were evaluated on the same data (same `data_hash` and
   the same named split).
Otherwise there is nothing fair to compare and no warning is given."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from slm.registry import Registry, RegistryError

METRIC = "macro_f1"


@dataclass(frozen=True)
class Comparison:
    version: str
    live: str
    split: str  # "gold" | "held-out"
    score: float
    live_score: float

    @property
    def worse(self) -> bool:
        return self.score < self.live_score

    @property
    def sentence(self) -> str:
        from slmsite.templatetags.slm_format import sig3

        where = {"gold": "the gold items", "held-out": "held-out data"}.get(self.split, f"its {self.split} split")
        relation = "below" if self.worse else "not below"
        return (
            f"{self.version} scores {sig3(self.score)} macro-F1 on {where}, {relation} the live "
            f"{self.live}'s {sig3(self.live_score)}."
        )


def _f1(metrics: Any) -> float | None:
    if not isinstance(metrics, dict):
        return None
    value = metrics.get(METRIC)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def compare_with_live(registry: Registry, name: str, version: str) -> Comparison | None:
    """The candidate's figure next to the live version's on the same data, or None when there is none."""
    live_version = registry.live_version(name)
    if live_version is None or live_version == version:
        return None
    try:
        cand = registry.get(name, version).metadata
        live = registry.get(name, live_version).metadata
    except RegistryError:
        return None
    annotate = cand.get("annotate") or {}
    gold = _f1(cand.get("gold_metrics"))
    live_annotate = live.get("annotate") or {}
    if live.get("parent") == version and _f1(live_annotate.get("parent_gold_metrics")) is not None:
        live_gold = _f1(live.get("gold_metrics"))  # the live version's run scored this one on its gold
        if live_gold is not None:
            return Comparison(version, live_version, "gold", _f1(live_annotate["parent_gold_metrics"]), live_gold)  # type: ignore[arg-type]
    if gold is not None:
        if cand.get("parent") == live_version and _f1(annotate.get("parent_gold_metrics")) is not None:
            return Comparison(version, live_version, "gold", gold, _f1(annotate["parent_gold_metrics"]))  # type: ignore[arg-type]
        live_gold = _f1(live.get("gold_metrics"))
        same_project = annotate.get("project") is not None and annotate.get("project") == (
            live.get("annotate") or {}
        ).get("project")
        if live_gold is not None and same_project:
            return Comparison(version, live_version, "gold", gold, live_gold)
        return None
    if live.get("gold_metrics") or not cand.get("data_hash") or cand.get("data_hash") != live.get("data_hash"):
        return None
    held, live_held = _f1(cand.get("metrics")), _f1(live.get("metrics"))
    if held is None or live_held is None:
        return None
    split = str((cand.get("metrics") or {}).get("split") or "held-out")
    if split != str((live.get("metrics") or {}).get("split") or "held-out"):
        return None
    return Comparison(version, live_version, split, held, live_held)


def promote_warning(registry: Registry, name: str, version: str) -> str:
    """A question for the person about to promote `version`, or "" when it is not known to be worse."""
    comp = compare_with_live(registry, name, version)
    if comp is None or not comp.worse:
        return ""
    return f"{comp.sentence} Make it live anyway?"
