"""Health checks: the database round trip for Railway, the cache and the broker beside it, and the
nightly batch's dead-man's switch."""

import datetime as dt
import functools
import logging
from dataclasses import dataclass, field

import redis
from django.conf import settings
from django.core.cache import cache
from django.core.exceptions import ImproperlyConfigured
from django.db import DatabaseError, connection
from django.utils import timezone
from kombu import Connection

from core.models import NightlyRun

logger = logging.getLogger("fortuna.health")

MAX_SUCCESS_AGE = dt.timedelta(hours=26)
BATCH_NEVER_SUCCEEDED = "No full nightly run has ever succeeded."
BATCH_MISSED_DEADLINE = "The run for {target} has not succeeded by {deadline} KST."
BATCH_STALE = "The last successful run finished {hours:.1f} h ago (limit 26 h)."
BATCH_DEADLINE_INVALID = "FORTUNE_BATCH_DEADLINE must be HH:MM (KST), got {value!r}."


def database_ping() -> bool:
    """One round trip to the database (SELECT 1). False when it cannot be reached."""
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except DatabaseError as exc:
        logger.error("healthz: database unreachable: %s", exc)
        return False
    return True


DEPENDENCY_OK = "ok"
DEPENDENCY_DOWN = "down"
DEPENDENCY_NOT_CONFIGURED = "not configured"
CACHE_PROBE_KEY = "healthz:probe"


def cache_status() -> str:
    """"ok", "down" (Redis did not answer within REDIS_CONNECT/SOCKET_TIMEOUT, or failed moments ago
    and is being backed off: fortuna_api/redis_cache.py), or "not configured" (no REDIS_URL: each
    process has its own memory cache)."""
    if not settings.REDIS_URL:
        return DEPENDENCY_NOT_CONFIGURED
    try:
        cache.has_key(CACHE_PROBE_KEY)
    except redis.RedisError as exc:
        logger.warning("healthz: cache unreachable: %s", exc)
        return DEPENDENCY_DOWN
    return DEPENDENCY_OK


@functools.cache
def _broker_redis(url: str) -> redis.Redis:
    # One client (and pool) per process, so a probe reuses its connection.
    return redis.Redis.from_url(
        url, socket_connect_timeout=settings.REDIS_CONNECT_TIMEOUT, socket_timeout=settings.REDIS_SOCKET_TIMEOUT
    )


def broker_status() -> str:
    """"ok", "down" or "not configured" (no CELERY_BROKER_URL): the Celery broker the batch's celery
    backend needs. The web never uses it; it is reported so one request shows every dependency."""
    url = settings.CELERY_BROKER_URL
    if not url:
        return DEPENDENCY_NOT_CONFIGURED
    try:
        if url.startswith(("redis://", "rediss://")):
            _broker_redis(url).ping()
        else:
            with Connection(url, connect_timeout=settings.REDIS_CONNECT_TIMEOUT) as conn:
                conn.ensure_connection(max_retries=1, interval_start=0, timeout=settings.REDIS_CONNECT_TIMEOUT)
    except Exception as exc:  # redis-py's or the AMQP transport's own errors, or a socket's
        logger.warning("healthz: broker unreachable: %s", exc)
        return DEPENDENCY_DOWN
    return DEPENDENCY_OK


@dataclass(slots=True)
class NightlyHealth:
    ok: bool
    now: dt.datetime
    target_date: dt.date
    deadline: dt.datetime
    target_succeeded: bool
    last_success_at: dt.datetime | None
    last_success_target: dt.date | None
    problems: list[str] = field(default_factory=list)


def batch_deadline_time() -> dt.time:
    value = settings.FORTUNE_BATCH_DEADLINE
    try:
        return dt.time.fromisoformat(value)
    except (TypeError, ValueError):
        raise ImproperlyConfigured(BATCH_DEADLINE_INVALID.format(value=value)) from None


def batch_health(*, now: dt.datetime | None = None) -> NightlyHealth:
    """Unhealthy when tomorrow's (KST) full run has not succeeded by the deadline, or when the
    last success is over 26 h old. Runs limited to one user (--user-id) do not count."""
    now = timezone.localtime(now)
    target = now.date() + dt.timedelta(days=1)
    deadline = dt.datetime.combine(now.date(), batch_deadline_time(), tzinfo=now.tzinfo)
    full_successes = NightlyRun.objects.filter(status=NightlyRun.Status.SUCCEEDED, user_id_filter__isnull=True)
    last = full_successes.exclude(finished_at__isnull=True).order_by("-finished_at").first()
    target_succeeded = full_successes.filter(target_date=target).exists()
    problems = []
    if last is None:
        problems.append(BATCH_NEVER_SUCCEEDED)
    elif now - last.finished_at > MAX_SUCCESS_AGE:
        hours = (now - last.finished_at).total_seconds() / 3600
        problems.append(BATCH_STALE.format(hours=hours))
    if now >= deadline and not target_succeeded:
        problems.append(BATCH_MISSED_DEADLINE.format(target=target.isoformat(), deadline=deadline.strftime("%H:%M")))
    return NightlyHealth(
        ok=not problems,
        now=now,
        target_date=target,
        deadline=deadline,
        target_succeeded=target_succeeded,
        last_success_at=timezone.localtime(last.finished_at) if last else None,
        last_success_target=last.target_date if last else None,
        problems=problems,
    )
