"""Fortuna settings, read from the environment (see .env.example and docs/CONFIGURATION.md)."""

import sys
from pathlib import Path

import dj_database_url
from celery.schedules import crontab
from django.core.exceptions import ImproperlyConfigured

from fortuna_api.env import (
    env,
    env_bool,
    env_choice,
    env_clock_time,
    env_decimal,
    env_int,
    env_list,
    env_prices,
    env_rate,
    env_url,
)

BASE_DIR = Path(__file__).resolve().parent.parent

AUTH_TOKEN_CACHE_NEEDS_REDIS = (
    "AUTH_TOKEN_CACHE_SECONDS needs a cache shared by every web process: set REDIS_URL, or set "
    "AUTH_TOKEN_CACHE_SECONDS=0 (a per-process cache would keep accepting a logged-out token in the other processes)."
)

DEBUG = env_bool("DEBUG", default=False)
SECRET_KEY = env("SECRET_KEY", default="")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured(
            "SECRET_KEY is required when DEBUG is off. Set SECRET_KEY to a long random string "
            "(python -c 'import secrets; print(secrets.token_urlsafe(50))'), or DEBUG=1 for local work."
        )
    SECRET_KEY = "insecure-local-development-key-only-used-with-debug-on"

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]" if DEBUG else "")
if not DEBUG and not ALLOWED_HOSTS:
    # Railway gives each service a public domain; RAILWAY_PUBLIC_DOMAIN saves typing it twice.
    ALLOWED_HOSTS = env_list("RAILWAY_PUBLIC_DOMAIN", "")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", "")
if bad_origins := [origin for origin in CSRF_TRUSTED_ORIGINS if not origin.startswith(("http://", "https://"))]:
    # Django says so only in `manage.py check`, which a gunicorn start never runs.
    raise ImproperlyConfigured(
        "CSRF_TRUSTED_ORIGINS entries must start with https:// (or http://), e.g. https://fortuna.example; "
        f"got {bad_origins}."
    )

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "core",
]

MIDDLEWARE = [
    # Railway's deploy healthcheck host, on /healthz only (fortuna_api/middleware.py says why).
    "fortuna_api.middleware.HealthcheckHostMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "fortuna_api.urls"
WSGI_APPLICATION = "fortuna_api.wsgi.application"
AUTH_USER_MODEL = "core.User"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]

# --- Database -------------------------------------------------------------------------------
SQLITE_DEFAULT = f"sqlite:///{BASE_DIR / 'db.sqlite3'}"
DATABASE_URL = env("DATABASE_URL", default=SQLITE_DEFAULT)
try:
    DATABASES = {
        "default": dj_database_url.parse(
            DATABASE_URL,
            conn_max_age=env_int("DB_CONN_MAX_AGE", 600, min_value=0),
            conn_health_checks=True,
        )
    }
except ValueError as exc:
    raise ImproperlyConfigured(
        f"DATABASE_URL is not a database URL Fortuna understands ({exc}). "
        "Use postgres://user:password@host:5432/name or sqlite:////absolute/path.sqlite3."
    ) from None
# A database that restarts or fails over within this many seconds costs the batch a pause, not the
# night: every database step of the night reconnects and retries for this long (core/resilience.py).
DB_RETRY_WINDOW = env_int("DB_RETRY_WINDOW_SECONDS", 60, min_value=0, max_value=3600)
# The longest a statement may run before PostgreSQL cancels it: a lock held by a migration or a stuck
# transaction gives a clear error instead of a hang. The batch's own statements (a 10,000-row flush,
# counts over every user, retention deletes) are allowed longer than a web request's.
DB_STATEMENT_TIMEOUT_MS = env_int("DB_STATEMENT_TIMEOUT_MS", 15000, min_value=0, max_value=3600000)
if sys.argv[1:2] == ["migrate"]:
    # A migration may rewrite or index a whole table for minutes (Railway's preDeployCommand runs it
    # with the web's variables): no statement timeout there.
    DB_STATEMENT_TIMEOUT_MS = 0
DB_BATCH_STATEMENT_TIMEOUT_MS = env_int("DB_BATCH_STATEMENT_TIMEOUT_MS", 300000, min_value=0, max_value=86400000)
if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    # libpq connection parameters (https://www.postgresql.org/docs/current/libpq-connect.html): a
    # server that does not answer fails the connect in seconds, and TCP keepalives find a peer that
    # vanished without a word (a partition) in about idle + interval x count seconds instead of the
    # kernel's two hours.
    _db_options = DATABASES["default"].setdefault("OPTIONS", {})
    _db_options.update({
        "connect_timeout": env_int("DB_CONNECT_TIMEOUT_SECONDS", 5, min_value=1, max_value=600),
        "keepalives": 1,
        "keepalives_idle": env_int("DB_KEEPALIVES_IDLE_SECONDS", 30, min_value=1, max_value=7200),
        "keepalives_interval": 10,
        "keepalives_count": 3,
        # After any options the URL gave (?options=...): the later -c wins.
        "options": f"{_db_options.get('options', '')} -c statement_timeout={DB_STATEMENT_TIMEOUT_MS}".strip(),
    })
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # One writer, concurrent readers: WAL plus IMMEDIATE transactions so a writer waits for the
    # lock (busy timeout) instead of failing with "database is locked" on lock upgrade.
    DATABASES["default"]["OPTIONS"] = {
        "timeout": 60,
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
    # SQLite connections are cheap; a persistent one per thread only holds file locks longer.
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    # Tests that run the batch as a subprocess need a test database another process can open.
    DATABASES["default"]["TEST"] = {"NAME": env("TEST_SQLITE_PATH", default=str(BASE_DIR / "test-db.sqlite3"))}

# --- Cache ----------------------------------------------------------------------------------
REDIS_URL = env_url("REDIS_URL", default="", schemes=("redis", "rediss", "unix"))
# Every Redis client (cache, limiter, Celery's Redis transport) gives up on a dead or frozen Redis
# after these many milliseconds instead of redis-py's defaults (no connect timeout, 5 s per read in
# places): Redis is optional at run time, and a caller falls back rather than waits.
REDIS_CONNECT_TIMEOUT = env_int("REDIS_CONNECT_TIMEOUT_MS", 500, min_value=10, max_value=60000) / 1000
REDIS_SOCKET_TIMEOUT = env_int("REDIS_SOCKET_TIMEOUT_MS", 500, min_value=10, max_value=60000) / 1000
if REDIS_URL:
    # Django's RedisCache, one redis.Redis client per pool, backing off a failed Redis for a few seconds
    # (fortuna_api/redis_cache.py says why). OPTIONS go to redis-py's connection pool.
    CACHES = {
        "default": {
            "BACKEND": "fortuna_api.redis_cache.SharedClientRedisCache",
            "LOCATION": REDIS_URL,
            "OPTIONS": {
                "socket_connect_timeout": REDIS_CONNECT_TIMEOUT,
                "socket_timeout": REDIS_SOCKET_TIMEOUT,
                "down_seconds": 5.0,
            },
        }
    }
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

# Seconds a token's user stays cached (core/api/authentication.py); 0 = look it up on every request.
# Also the longest a deactivation the cache did not hear of (QuerySet.update, or Redis failing when
# the user was saved) takes to reach a request: kept short, a hot client still hits it.
AUTH_TOKEN_CACHE_SECONDS = env_int("AUTH_TOKEN_CACHE_SECONDS", 15 if REDIS_URL else 0, min_value=0, max_value=3600)
if AUTH_TOKEN_CACHE_SECONDS and not REDIS_URL:
    raise ImproperlyConfigured(AUTH_TOKEN_CACHE_NEEDS_REDIS)

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"  # API and admin messages; fortune texts are Korean
TIME_ZONE = "Asia/Seoul"
USE_I18N = True
USE_TZ = True

# --- Static and media -----------------------------------------------------------------------
STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
MEDIA_URL = "media/"
MEDIA_ROOT = BASE_DIR / "media"
USE_S3 = env_bool("USE_S3", default=False)
if USE_S3:
    AWS_ACCESS_KEY_ID = env("AWS_ACCESS_KEY_ID")
    AWS_SECRET_ACCESS_KEY = env("AWS_SECRET_ACCESS_KEY")
    AWS_STORAGE_BUCKET_NAME = env("AWS_STORAGE_BUCKET_NAME")
    AWS_S3_REGION_NAME = env("AWS_S3_REGION_NAME", default="ap-northeast-2")
    AWS_S3_ENDPOINT_URL = env_url("AWS_S3_ENDPOINT_URL", default="") or None
    AWS_S3_CUSTOM_DOMAIN = env("AWS_S3_CUSTOM_DOMAIN", default="") or None
    AWS_DEFAULT_ACL = None
    AWS_QUERYSTRING_AUTH = False
    STORAGES = {
        "default": {"BACKEND": "storages.backends.s3.S3Storage", "OPTIONS": {"location": "media"}},
        "staticfiles": {"BACKEND": "storages.backends.s3.S3Storage", "OPTIONS": {"location": "static"}},
    }
else:
    STORAGES = {
        "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
        "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
    }

# --- Security behind Railway's proxy --------------------------------------------------------
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", default=not DEBUG)
# Railway's healthcheck calls the service over plain HTTP from inside its network.
SECURE_REDIRECT_EXEMPT = [r"^healthz"]
SESSION_COOKIE_SECURE = not DEBUG
CSRF_COOKIE_SECURE = not DEBUG
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 0 if DEBUG else 31536000, min_value=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = not DEBUG
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", default=False)
# Preloading is a hard-to-undo, per-registrable-domain opt-in (impossible on *.up.railway.app):
# check --deploy's W021 would otherwise fail every deploy that has not opted in.
SILENCED_SYSTEM_CHECKS = ["security.W021"]
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"

# --- REST framework -------------------------------------------------------------------------
# Proxies in front of gunicorn that append the address they saw to X-Forwarded-For (Railway: its edge
# proxy, one). Throttles take the address that many entries from the right, the one our own proxy
# wrote; whatever a client put in the header before it is never its identity. 0: REMOTE_ADDR
# (gunicorn reachable directly).
TRUSTED_PROXY_COUNT = env_int("TRUSTED_PROXY_COUNT", 1, min_value=0, max_value=10)
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "core.api.authentication.CachedTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_SCHEMA_CLASS": "core.api.schema.FortunaAutoSchema",
    "EXCEPTION_HANDLER": "core.api.exceptions.api_exception_handler",
    # DRF's, failing open (with a warning) when the cache does not answer (core/throttles.py).
    "DEFAULT_THROTTLE_CLASSES": [
        "core.throttles.AnonRateThrottle",
        "core.throttles.UserRateThrottle",
    ],
    "NUM_PROXIES": TRUSTED_PROXY_COUNT,
    "DEFAULT_THROTTLE_RATES": {
        "anon": env_rate("THROTTLE_ANON", default="60/min"),
        "user": env_rate("THROTTLE_USER", default="600/min"),
        # per client address on /auth/register, /auth/token and POST /admin/login/, together
        "auth": env_rate("THROTTLE_AUTH", default="20/min"),
    },
    "UNAUTHENTICATED_USER": None,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Fortuna API",
    "DESCRIPTION": "오늘의 운세 — personal daily fortunes read from the user's saju.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
}

# --- Saju -----------------------------------------------------------------------------------
# 23:00–24:00 births: "joja" (조자시, the day pillar turns at 23:00) or "yaja" (야자시, it turns at 00:00).
SAJU_ZI_CONVENTION = env_choice("SAJU_ZI_CONVENTION", "joja", ("joja", "yaja"))
# Opt-in local mean time for the hour pillar (Seoul ≈ 127°E vs the 135°E meridian: about −32 min).
SAJU_LOCAL_MEAN_TIME = env_bool("SAJU_LOCAL_MEAN_TIME", default=False)

# --- Fortune generation ---------------------------------------------------------------------
OPENAI_API_KEY = env("OPENAI_API_KEY", default="")
OPENAI_BASE_URL = env_url("OPENAI_BASE_URL", default="") or None
OPENAI_MODEL = env("OPENAI_MODEL", default="gpt-4o-mini")
OPENAI_TIMEOUT = env_int("OPENAI_TIMEOUT", 30, min_value=1, max_value=600)
OPENAI_RPM = env_int("OPENAI_RPM", 0, min_value=0)  # 0 = no client-side limit
OPENAI_TPM = env_int("OPENAI_TPM", 0, min_value=0)  # tokens per minute, prompt + completion; 0 = no limit
# The share of OPENAI_RPM/OPENAI_TPM the batch may never take, kept for the web's on-demand path.
OPENAI_ON_DEMAND_RESERVE = env_decimal("OPENAI_ON_DEMAND_RESERVE", "0.1")
if OPENAI_ON_DEMAND_RESERVE >= 1:
    raise ImproperlyConfigured(
        f"OPENAI_ON_DEMAND_RESERVE must be a fraction below 1 (e.g. 0.1 keeps 10% for on-demand), "
        f"got {OPENAI_ON_DEMAND_RESERVE}."
    )
# While the shared limiter's Redis does not answer, each process limits itself to 1/N of OPENAI_RPM and
# OPENAI_TPM: N is the larger of this and the processes seen sharing the limiter in the last minute.
OPENAI_LIMITER_FALLBACK_PROCESSES = env_int("OPENAI_LIMITER_FALLBACK_PROCESSES", 2, min_value=1, max_value=10000)
FORTUNE_PROVIDER = env_choice("FORTUNE_PROVIDER", "openai" if OPENAI_API_KEY else "local", ("openai", "local"))
FORTUNE_LANGUAGE = "ko"
FORTUNE_MAX_RETRY_AFTER = env_int("FORTUNE_MAX_RETRY_AFTER", 60, min_value=0, max_value=3600)
FORTUNE_MAX_ATTEMPTS = env_int("FORTUNE_MAX_ATTEMPTS", 5, min_value=1, max_value=20)
# Output-token cap sent with every fortune request (synchronous and Batch API lines); 0 = derived from
# the content schema's max lengths (core.fortunes.prompt.output_token_cap, about 4k tokens).
FORTUNE_MAX_OUTPUT_TOKENS = env_int("FORTUNE_MAX_OUTPUT_TOKENS", 0, min_value=0, max_value=128_000)
# The request field that carries it: OpenAI's current name, or the older one for compatible servers
# that only know that (e.g. llama-cpp-python's server).
OPENAI_MAX_TOKENS_PARAM = env_choice("OPENAI_MAX_TOKENS_PARAM", "max_completion_tokens",
                                     ("max_completion_tokens", "max_tokens"))
FORTUNE_MAX_COST_PER_RUN = env_decimal("FORTUNE_MAX_COST_PER_RUN", "0")  # 0 = no budget
# USD per 1M tokens (input, output) per model and tier: list prices as defaults; FORTUNE_PRICES adds or
# overrides entries, e.g. "gpt-4o-mini:flex=0.075/0.30,gpt-5-mini:standard=0.25/2.00".
# https://platform.openai.com/docs/pricing (Batch API and flex are half the standard price)
FORTUNE_PRICES = env_prices("FORTUNE_PRICES", {
    "gpt-4o-mini": {"standard": ("0.15", "0.60"), "batch": ("0.075", "0.30"), "flex": ("0.075", "0.30")},
    "gpt-4.1-mini": {"standard": ("0.40", "1.60"), "batch": ("0.20", "0.80"), "flex": ("0.20", "0.80")},
})
# Day-ahead Batch API: the nightly run for base B submits B+2 (docs/BATCH_GENERATION.md).
FORTUNE_BATCH_AHEAD = env_bool("FORTUNE_BATCH_AHEAD", default=False)
# How long the nightly run waits for cancelled batches to reach `cancelled` (OpenAI: up to 10 min).
FORTUNE_BATCH_CANCEL_WAIT_SECONDS = env_int("FORTUNE_BATCH_CANCEL_WAIT_SECONDS", 600, min_value=0, max_value=3600)
# Service tier of the batch's synchronous requests (never the on-demand web path): flex is billed at
# Batch prices but may answer 429 "resource unavailable", and is not used in the last
# FORTUNE_FLEX_FALLBACK_MINUTES before the batch deadline.
OPENAI_SERVICE_TIER = env_choice("OPENAI_SERVICE_TIER", "default", ("default", "flex"))
FORTUNE_FLEX_FALLBACK_MINUTES = env_int("FORTUNE_FLEX_FALLBACK_MINUTES", 30, min_value=0, max_value=1440)
FORTUNE_RETENTION_DAYS = env_int("FORTUNE_RETENTION_DAYS", 90, min_value=1, max_value=36500)
FORTUNE_ON_DEMAND_TIMEOUT = env_int("FORTUNE_ON_DEMAND_TIMEOUT", 20, min_value=1, max_value=100)
# Requests per web process generating (or waiting on another's generation); the excess gets 503 at
# once, so at least 4 of gunicorn's threads always serve stored fortunes and /healthz.
FORTUNE_ON_DEMAND_MAX_CONCURRENT = env_int(
    "FORTUNE_ON_DEMAND_MAX_CONCURRENT",
    max(1, env_int("GUNICORN_THREADS", 16, min_value=1, max_value=1024) - 4),
    min_value=1,
)
FORTUNE_ON_DEMAND_DAILY_LIMIT = env_int("FORTUNE_ON_DEMAND_DAILY_LIMIT", 5, min_value=1)
FORTUNE_BATCH_DEADLINE = env_clock_time("FORTUNE_BATCH_DEADLINE", default="23:30")  # KST, for /healthz/batch
SLACK_WEBHOOK_URL = env_url("SLACK_WEBHOOK_URL", default="")
DISCORD_WEBHOOK_URL = env_url("DISCORD_WEBHOOK_URL", default="")

# --- Push notifications (the morning fortune through FCM HTTP v1: core/push, docs/CONFIGURATION.md) --
# Off unless FCM_CREDENTIALS is set: a service account's JSON, as the JSON text itself or a file path.
# Read (and checked) by core.push.fcm, never logged. FCM_PROJECT_ID defaults to the account's project_id.
FCM_CREDENTIALS = env("FCM_CREDENTIALS", default="")
FCM_PROJECT_ID = env("FCM_PROJECT_ID", default="")
# The FCM API's origin (tests and the benchmark point it at tests/stub_fcm); the OAuth token endpoint is
# the service account's own token_uri.
FCM_API_URL = env_url("FCM_API_URL", default="https://fcm.googleapis.com")
FCM_TIMEOUT = env_int("FCM_TIMEOUT", 10, min_value=1, max_value=120)
# Sends in flight per sender process (threads doing only network I/O) and its pace, messages per second
# (0 = no client-side limit). FCM's default project quota is 600k messages/minute (docs/SCALING.md).
FCM_CONCURRENCY = env_int("FCM_CONCURRENCY", 32, min_value=1, max_value=1024)
FCM_RATE_PER_SECOND = env_int("FCM_RATE_PER_SECOND", 1000, min_value=0, max_value=100_000)
FCM_MAX_ATTEMPTS = env_int("FCM_MAX_ATTEMPTS", 4, min_value=1, max_value=20)
FCM_MAX_RETRY_AFTER = env_int("FCM_MAX_RETRY_AFTER", 60, min_value=0, max_value=3600)
# Users per keyset page (one claim statement, one Celery task with --backend celery).
PUSH_PAGE_SIZE = env_int("PUSH_PAGE_SIZE", 500, min_value=1, max_value=10_000)
# A delivery claimed this long ago and never confirmed belongs to a sender that died between claim and
# send: it is marked "unconfirmed" (never sent again: at most one push a day).
PUSH_CLAIM_STALE_MINUTES = env_int("PUSH_CLAIM_STALE_MINUTES", 10, min_value=1, max_value=1440)
# The push dead-man's switch: trips when users have been due this long without a push, or no sender run
# has finished for this long while users are due.
PUSH_MAX_SILENCE_MINUTES = env_int("PUSH_MAX_SILENCE_MINUTES", 30, min_value=5, max_value=1440)
# The morning summary to Slack/Discord: sent once a day by the first sender run at or after this time (KST).
PUSH_REPORT_AT = env_clock_time("PUSH_REPORT_AT", default="10:00")

# --- Celery (the batch's scale-out backend: generate_daily_fortunes --backend celery) ----------
# https://docs.celeryq.dev/en/stable/userguide/configuration.html — read with the CELERY_ namespace.
# Empty: the celery backend is unavailable (the command says so); the threads backend needs no broker.
CELERY_BROKER_URL = env("CELERY_BROKER_URL", default=REDIS_URL)
if CELERY_BROKER_URL and CELERY_BROKER_URL.split("://", 1)[0] not in ("redis", "rediss", "amqp", "amqps", "pyamqp"):
    raise ImproperlyConfigured(
        f"CELERY_BROKER_URL must be a redis://, rediss:// or amqp:// URL, got {CELERY_BROKER_URL!r}."
    )
# Chunks record their own state in the database: no result backend.
CELERY_TASK_IGNORE_RESULT = True
# A chunk is acknowledged after it ran, and a worker killed mid-chunk puts it back on the queue.
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
# Chunks are long: a worker takes one at a time, so an idle worker never waits behind a busy one.
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# The queue chunks are sent to and workers read (one broker can then serve several deployments).
CELERY_TASK_DEFAULT_QUEUE = env("FORTUNE_CELERY_QUEUE", default="fortuna")
# Calls in flight per worker process (threads doing only network I/O), whatever its chunk slots.
FORTUNE_CELERY_INFLIGHT = env_int("FORTUNE_CELERY_INFLIGHT", 64, min_value=1, max_value=4096)
# Redis re-delivers a message unacknowledged for this long. Longer than a chunk takes (chunk size /
# in flight × latency × attempts); a re-delivered chunk whose worker still heartbeats is skipped.
FORTUNE_CELERY_VISIBILITY_TIMEOUT = env_int("FORTUNE_CELERY_VISIBILITY_TIMEOUT", 900, min_value=60, max_value=43200)
# A dead or frozen Redis broker fails a send (or a connect) after REDIS_*_TIMEOUT, not kombu's default
# wait forever; the coordinator retries it and re-sends what no worker claimed (FORTUNE_CELERY_CLAIM_TIMEOUT).
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "visibility_timeout": FORTUNE_CELERY_VISIBILITY_TIMEOUT,
    "socket_timeout": REDIS_SOCKET_TIMEOUT,
    "socket_connect_timeout": REDIS_CONNECT_TIMEOUT,
}
# A chunk no worker claimed this many seconds after it was sent is sent again (its message was lost:
# a broker restarted without persistence, a send that failed); then after twice as long, and so on, so
# chunks that only wait behind busy workers are not sent over and over.
FORTUNE_CELERY_CLAIM_TIMEOUT = env_int("FORTUNE_CELERY_CLAIM_TIMEOUT", 60, min_value=1, max_value=3600)

# Where Celery beat is deployed, it runs the push sender every 5 minutes (the Railway deployment uses a cron
# service instead: railway.push.toml). Only with push configured: without credentials there is nothing to run.
CELERY_BEAT_SCHEDULE = {
    "send-fortune-notifications": {"task": "core.push.send_due", "schedule": crontab(minute="*/5")},
} if FCM_CREDENTIALS else {}

# --- Logging --------------------------------------------------------------------------------
LOG_LEVEL = env_choice("LOG_LEVEL", "info", ("debug", "info", "warning", "error")).upper()
LOG_FILE = env("LOG_FILE", default="")
_handlers = {"stdout": {"class": "logging.StreamHandler", "formatter": "plain"}}
if LOG_FILE:
    try:
        Path(LOG_FILE).parent.mkdir(parents=True, exist_ok=True)
        Path(LOG_FILE).open("a").close()  # the handler opens it at start-up: fail here, naming the variable
    except OSError as exc:
        raise ImproperlyConfigured(f"LOG_FILE {LOG_FILE!r} cannot be written: {exc.strerror}.") from None
    _handlers["file"] = {"class": "logging.handlers.WatchedFileHandler", "filename": LOG_FILE, "formatter": "plain"}
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": _handlers,
    "loggers": {
        "fortuna": {"handlers": list(_handlers), "level": LOG_LEVEL, "propagate": False},
        "django": {"handlers": list(_handlers), "level": "WARNING"},
    },
}
