"""Reply details in words: how a reply was generated and why it ended (not Python reprs)."""

from __future__ import annotations

from typing import Any

from django import template

register = template.Library()

FINISH = {
    "eos": "the model ended its reply",
    "length": "length limit reached",
    "stop": "a stop text appeared",
    "cancelled": "stopped before the end",
    "error": "failed",
}


def _num(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


@register.filter
def params_in_words(params: Any) -> str:
    """{"do_sample": True, "temperature": 0.6, ...} -> "sampled (temperature 0.6, top-k 40, top-p 0.9) ·
    repetition penalty 1.2 · up to 64 new tokens · stops at “User:”"."""
    if not isinstance(params, dict) or not params:
        return "—"
    parts = []
    if params.get("do_sample"):
        knobs = [
            f"{name} {_num(params[key])}"
            for key, name in (("temperature", "temperature"), ("top_k", "top-k"), ("top_p", "top-p"))
            if params.get(key) is not None
        ]
        parts.append("sampled" + (f" ({', '.join(knobs)})" if knobs else ""))
    else:
        parts.append("greedy (always the likeliest token)")
    if params.get("repetition_penalty") not in (None, 1, 1.0):
        parts.append(f"repetition penalty {_num(params['repetition_penalty'])}")
    if params.get("max_new_tokens"):
        parts.append(f"up to {params['max_new_tokens']} new tokens")
    stops = [s for s in params.get("stop") or [] if s]
    parts.append("stops at " + ", ".join(f"“{s}”" for s in stops) if stops else "no stop text")
    return " · ".join(parts)


@register.filter
def finish_in_words(reason: Any) -> str:
    return FINISH.get(str(reason), str(reason or "—"))
