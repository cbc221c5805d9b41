"""Tiny jobs used to check the queue end to end (health checks, tests)."""

from __future__ import annotations


def echo_job(value: int) -> dict[str, int]:
    return {"value": value, "double": value * 2}
