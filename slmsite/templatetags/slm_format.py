"""Numbers on pages: figures with 3 significant digits (0.856, 0.0160, 1.00), counts with separators."""

from __future__ import annotations

import math
from typing import Any

from django import template

register = template.Library()


def _float(value: Any) -> float | None:
    if isinstance(value, bool) or value is None or value == "":
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) or math.isinf(number) else number


@register.filter
def sig3(value: Any) -> str:
    """3 significant digits, trailing zeros kept (1.00, 0.850); "–" for no value; ≥1000 as 1,234."""
    number = _float(value)
    if number is None:
        return "–"
    if abs(number) >= 1000:
        return f"{number:,.0f}"
    if number == 0:
        return "0"
    return f"{number:#.3g}".rstrip(".")


@register.filter
def percent(value: Any, digits: int = 0) -> str:
    """0.634 -> "63%"."""
    number = _float(value)
    return "–" if number is None else f"{100 * number:.{int(digits)}f}%"


@register.filter
def when(value: Any) -> str:
    """An ISO timestamp from metadata ("2026-12-01T20:41:45+00:00") as "2026-12-01 20:41" in the site's
    time zone; "–" for none; text that is not a timestamp as it is."""
    from django.utils import timezone
    from django.utils.dateparse import parse_datetime

    if not value:
        return "–"
    try:
        moment = parse_datetime(str(value))
    except ValueError:
        moment = None
    if moment is None:
        return str(value)
    if timezone.is_aware(moment):
        moment = timezone.localtime(moment)
    return moment.strftime("%Y-%m-%d %H:%M")
