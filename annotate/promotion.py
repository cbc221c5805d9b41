"""The promotion policy and how it is told: whether a retrained version goes live, and one sentence saying
why ("kept v0001 live: v0002's gold macro-F1 0.548 < v0001's 0.971"). No database or registry access:
callers pass the figures in, and `run_decision` adds what the registry's live pointer says now (a stored
flag never claims a version is live)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.core.exceptions import ValidationError

METRIC = "macro_f1"
METRIC_NAME = "gold macro-F1"


class WorseThanLive(ValidationError):
    """Promoting this version by hand needs a confirmation: it scored worse on gold than the live one."""


@dataclass(frozen=True)
class Decision:
    promote: bool
    text: str


def _f(x: Any, digits: int = 3) -> str:
    return f"{float(x):.{digits}f}"


def _digits(a: float, b: float) -> int:
    """3 decimals, or as many more (up to 6) as it takes to show two different figures differently."""
    digits = 3
    while digits < 6 and a != b and _f(a, digits) == _f(b, digits):
        digits += 1
    return digits


def decide(
    *,
    auto: bool,
    version: str,
    new: dict[str, Any],
    reference: str | None,
    reference_metrics: dict[str, Any],
    reference_is_live: bool,
    reference_error: str = "",
) -> Decision:
    """The policy: with `auto`, a new version goes live when its gold macro-F1 is at least the reference's
    (the live version, or the base when the name has no live version yet); without gold figures to compare,
    it goes live only when nothing is live. `manual` never promotes here."""
    new_f1 = new.get(METRIC)
    ref_f1 = reference_metrics.get(METRIC)
    ref_name = reference or "-"
    role = "live" if reference_is_live else "base"
    if new_f1 is None:
        comparison = "no gold items to score it on"
    elif ref_f1 is None:
        why = f": {reference_error}" if reference_error else ""
        comparison = f"{METRIC_NAME} {_f(new_f1)}; {role} {ref_name} could not be scored on gold{why}"
    else:
        sign = "≥" if new_f1 >= ref_f1 else "<"
        d = _digits(new_f1, ref_f1)
        comparison = f"{version}'s {METRIC_NAME} {_f(new_f1, d)} {sign} {ref_name}'s {_f(ref_f1, d)}"
    if not auto:
        kept = f"kept {ref_name} live" if reference_is_live else "not promoted"
        return Decision(False, f"{kept}: this project promotes by hand ({comparison})")
    if new_f1 is not None and ref_f1 is not None:
        if new_f1 >= ref_f1:
            return Decision(True, f"promoted {version}: {comparison}")
        kept = f"kept {ref_name} live" if reference_is_live else f"not promoted (no live version; base {ref_name})"
        return Decision(False, f"{kept}: {comparison}")
    if not reference_is_live:
        return Decision(True, f"promoted {version}: nothing was live ({comparison})")
    return Decision(False, f"kept {ref_name} live: cannot compare on gold ({comparison})")


def failed_text(error: str) -> str:
    first = (error or "unknown error").strip().splitlines()[0][:300]
    return f"failed: {first}; the live model is unchanged"


def run_decision(*, status: str, version: str, decision: str, promoted: bool, live: str | None) -> str:
    """The run's decision sentence plus what the registry's live pointer says now."""
    if status in ("queued", "running"):
        return f"{status}: no decision yet"
    text = decision or ("" if status == "succeeded" else failed_text(""))
    if status != "succeeded" or not version:
        return text
    if live == version:
        return text if promoted else f"{text}; {version} is live now"
    if promoted:
        return f"{text}; no longer live ({live or 'nothing'} is live now)"
    return text
