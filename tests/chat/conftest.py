"""Chat test fixtures: a tiny random GPT-2 as the live "chat" version of a temp registry, and the
process-wide engine run in thread mode (fast to start) and torn down after each test."""

from __future__ import annotations

import pytest

from tests.chat.tiny import add_tiny_chat_version


@pytest.fixture
def chat_settings(registry, settings):  # type: ignore[no-untyped-def]
    from chat import engine_client, streams

    settings.CHAT_BACKEND = "local"
    settings.CHAT_MODEL = "registry:chat"
    settings.CHAT_ENGINE_MODE = "thread"
    settings.CHAT_ENGINE_THREADS = 1
    settings.CHAT_PRECISION = "fp32"
    settings.CHAT_RATE_LIMIT_PER_MIN = 1000
    streams.reset()
    yield settings
    engine_client.shutdown()
    streams.reset()


@pytest.fixture
def chat_model(registry, chat_settings):  # type: ignore[no-untyped-def]
    return add_tiny_chat_version(registry)


@pytest.fixture
def paced_chat_model(registry, chat_settings):  # type: ignore[no-untyped-def]
    """Streams at most one token per 20 ms, so a stop can land mid-reply."""
    return add_tiny_chat_version(registry, serving={"min_step_s": 0.02})
