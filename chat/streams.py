"""Chat stream bookkeeping shared by every server process through Redis (REDIS_URL): the per-user rate
limit, the one-live-stream-per-user rule and the registry of detached streams (a reply that keeps generating
after its page was reloaded, for as long as the reloaded page polls it).

Behind a proxy a user's sockets and polls may land on different daphne processes; keeping these rules in
Redis makes the processes enforce them together. Every key expires, so a process that dies leaves nothing
stuck: a claimed stream is released after CHAT_STREAM_CLAIM_TTL_S unless its owner keeps refreshing it.

All functions are blocking (one Redis round trip); the consumer calls them from a worker thread.
"""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import redis
from django.conf import settings

_client_lock = threading.Lock()
_client: tuple[str, redis.Redis] | None = None

# Sliding one-minute window: drop entries older than 60 s, refuse when `limit` remain, else record this one.
_RATE = """
local now = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - 60000)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 1 end
redis.call('ZADD', KEYS[1], now, ARGV[3])
redis.call('PEXPIRE', KEYS[1], 61000)
return 0
"""
# Delete / extend a key only while it still holds our token.
_RELEASE = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"
_REFRESH = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end return 0"


def _redis() -> redis.Redis:
    global _client
    url = settings.REDIS_URL
    with _client_lock:
        if _client is None or _client[0] != url:
            _client = (url, redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5))
        return _client[1]


def _key(*parts: Any) -> str:
    return ":".join([settings.CHAT_STREAMS_PREFIX, *map(str, parts)])


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


# ------------------------------------------------------------------------------------------ rate limit
def rate_limited(user_id: int, per_minute: int) -> bool:
    """Counts one generate request of `user_id`; True (and not counted) when `per_minute` were already made
    in the last minute, by any process."""
    now = int(time.time() * 1000)
    return bool(_redis().eval(_RATE, 1, _key("rate", user_id), now, per_minute, f"{now}-{uuid.uuid4().hex[:8]}"))


# ------------------------------------------------------------------------------------- one stream per user
def claim_stream(user_id: int) -> str | None:
    """Claims the user's single live stream. Returns a token to refresh/release it with, or None when the
    user already has a live stream (on any process)."""
    token = uuid.uuid4().hex
    ok = _redis().set(_key("stream", user_id), token, nx=True, px=_ms(settings.CHAT_STREAM_CLAIM_TTL_S))
    return token if ok else None


def refresh_stream(user_id: int, token: str) -> bool:
    """Keeps a claim alive (the owner calls it while the stream runs). False if the claim was lost."""
    return bool(_redis().eval(_REFRESH, 1, _key("stream", user_id), token, _ms(settings.CHAT_STREAM_CLAIM_TTL_S)))


def release_stream(user_id: int, token: str) -> None:
    _redis().eval(_RELEASE, 1, _key("stream", user_id), token)


# ------------------------------------------------------------------------------------------ detached
def detach(message_id: int, grace_s: float) -> None:
    """Marks a stream detached: it keeps generating while polls arrive within `grace_s` of each other."""
    _redis().set(_key("detached", message_id), "1", px=_ms(grace_s))


def keep_detached_alive(message_id: int) -> bool:
    """Extends the grace of a detached stream (called by the message poll, on any process). True if it was
    detached."""
    return bool(_redis().pexpire(_key("detached", message_id), _ms(settings.CHAT_DETACH_GRACE_S)))


def stop_detached(message_id: int) -> bool:
    """Ends a detached stream's grace at once, so its owner (on any process) cancels it (the Stop button of a
    reloaded page that follows the reply by polling). True if it was detached."""
    return bool(_redis().delete(_key("detached", message_id)))


def detached_remaining(message_id: int) -> float:
    """Seconds of grace left for a detached stream (0 when it was never detached or ran out)."""
    ms = int(_redis().pttl(_key("detached", message_id)))
    return ms / 1000 if ms > 0 else 0.0


def forget_detached(message_id: int) -> None:
    _redis().delete(_key("detached", message_id))


def reset() -> None:
    """Removes every key of this bookkeeping (tests)."""
    client = _redis()
    keys = list(client.scan_iter(match=f"{settings.CHAT_STREAMS_PREFIX}:*", count=500))
    if keys:
        client.delete(*keys)
