"""Prometheus metrics of the chat app (served by /metrics from the default registry)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

STREAMS = Counter("slm_chat_streams_total", "Chat generations started")
STREAMS_FINISHED = Counter("slm_chat_streams_finished_total", "Chat generations finished", ["reason"])
CANCELLATIONS = Counter("slm_chat_cancellations_total", "Chat generations cancelled (stop or disconnect)", ["how"])
ERRORS = Counter("slm_chat_errors_total", "Error frames sent on /ws/chat/", ["code"])
ACTIVE = Gauge("slm_chat_active_streams", "Chat generations running or queued in this process")
QUEUE_DEPTH = Gauge("slm_chat_queue_depth", "Chat requests waiting for a decode slot")
TTFT = Histogram(
    "slm_chat_ttft_seconds",
    "Time to first token (from request to first token)",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30),
)
TOKENS_PER_S = Histogram(
    "slm_chat_tokens_per_second",
    "Decode speed of one stream",
    buckets=(1, 2, 5, 10, 20, 30, 50, 75, 100, 150, 250, 500, 1000),
)
COMPLETION_TOKENS = Counter("slm_chat_completion_tokens_total", "Tokens generated for chat replies")
