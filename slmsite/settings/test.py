"""Test settings: fast hashing, in-memory channel layer for unit tests, isolated var dir."""

import os
import tempfile
from pathlib import Path

from slmsite import embedded_redis

from .base import *  # noqa: F403
from .base import DATABASES, SLM_MAINTENANCE_QUEUE, VAR_DIR, env_int

TEST_VAR_DIR = Path(os.environ.setdefault("SLM_TEST_VAR_DIR", tempfile.mkdtemp(prefix="slm-test-")))
# Real Redis when REDIS_URL is set (CI's second pass), otherwise a private embedded server for this run.
REDIS_URL = embedded_redis.ensure_for_tests(TEST_VAR_DIR)

DEBUG = False
SECRET_KEY = "test-secret-key"
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
ALLOWED_HOSTS = ["*"]

SLM_REGISTRY_DIR = Path(os.environ.get("SLM_TEST_REGISTRY_DIR") or TEST_VAR_DIR / "registry")  # subprocesses of a test
SLM_DATA_CACHE_DIR = VAR_DIR / "datasets"  # shared cache of prepared bundled data is fine
MEDIA_ROOT = TEST_VAR_DIR / "media"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}

if os.environ.get("SLM_TEST_REDIS_CHANNELS") == "1":
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels_redis.core.RedisChannelLayer", "CONFIG": {"hosts": [REDIS_URL]}}}
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

if DATABASES["default"]["ENGINE"].endswith("sqlite3"):
    # A file (not :memory:) so live-server subprocesses (daphne, rq worker) share it.
    DATABASES["default"]["TEST"] = {"NAME": str(TEST_VAR_DIR / "test.sqlite3")}

RQ_QUEUES = {
    "gpu": {"URL": REDIS_URL, "DEFAULT_TIMEOUT": 600},
    "default": {"URL": REDIS_URL, "DEFAULT_TIMEOUT": 600},
    SLM_MAINTENANCE_QUEUE: {"URL": REDIS_URL, "DEFAULT_TIMEOUT": 600},
}
CHAT_RATE_LIMIT_PER_MIN = env_int("CHAT_RATE_LIMIT_PER_MIN", 1000)
