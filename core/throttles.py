"""Throttles: the per-user daily cost guard on on-demand generation, and DRF's rate throttles."""

import datetime as dt
import logging
import math

from django.conf import settings
from django.core.cache import cache
from django.core.cache.backends.locmem import LocMemCache
from django.utils import timezone
from redis.exceptions import RedisError
from rest_framework import throttling

logger = logging.getLogger("fortuna.throttles")

THROTTLE_CACHE_DOWN = "Throttle %r not applied: the cache did not answer (%s)."

ON_DEMAND_KEY = "fortune:on-demand:{user_id}:{day}"
QUOTA_CACHE_FAILED = "on-demand quota: the shared cache failed (%s); counting in this process instead"
# What a cache call raises when Redis is down, refuses, or does not answer in time.
_CACHE_ERRORS = (RedisError, OSError)
# The per-process stand-in for the quota while the shared cache fails.
_process_quota = LocMemCache("fortuna-on-demand-quota", {})


def seconds_until_kst_midnight(*, now: dt.datetime | None = None) -> int:
    """Whole seconds from now until the next midnight in TIME_ZONE (Asia/Seoul); at least 1."""
    now = timezone.localtime(now)
    midnight = dt.datetime.combine(now.date() + dt.timedelta(days=1), dt.time(0), tzinfo=now.tzinfo)
    return max(1, math.ceil((midnight - now).total_seconds()))


class OnDemandLimitReached(Exception):
    def __init__(self, *, limit: int, retry_after: int) -> None:
        super().__init__(f"on-demand daily limit {limit} reached")
        self.limit = limit
        self.retry_after = retry_after


def on_demand_quota_consume(*, user_id: int, day: dt.date) -> int:
    """Count one on-demand generation for the user's KST day; raise OnDemandLimitReached past the limit.

    The counter lives in the default cache: with REDIS_URL set, add() and incr() are atomic across
    every process and survive deploys; the key expires a little after the KST day ends. When the
    cache fails, this process's own counter stands in (logged): the limit then holds per process.
    """
    limit = settings.FORTUNE_ON_DEMAND_DAILY_LIMIT
    ttl = seconds_until_kst_midnight()
    key = ON_DEMAND_KEY.format(user_id=user_id, day=day.isoformat())
    try:
        count = _quota_incr(cache, key=key, ttl=ttl)
    except _CACHE_ERRORS as exc:
        logger.warning(QUOTA_CACHE_FAILED, exc)
        count = _quota_incr(_process_quota, key=key, ttl=ttl)
    if count > limit:
        raise OnDemandLimitReached(limit=limit, retry_after=ttl)
    return count


def on_demand_quota_refund(*, user_id: int, day: dt.date) -> None:
    """Give back one count taken by on_demand_quota_consume: the generation it paid for failed."""
    key = ON_DEMAND_KEY.format(user_id=user_id, day=day.isoformat())
    try:
        _quota_decr(cache, key=key)
    except _CACHE_ERRORS as exc:
        logger.warning(QUOTA_CACHE_FAILED, exc)
        _quota_decr(_process_quota, key=key)


def _quota_decr(counter, *, key: str) -> None:
    try:
        if counter.get(key, 0) > 0:
            counter.decr(key)
    except ValueError:  # expired meanwhile: nothing to give back
        pass


def _quota_incr(counter, *, key: str, ttl: int) -> int:
    counter.add(key, 0, timeout=ttl + 60)
    try:
        return counter.incr(key)
    except ValueError:
        # The key expired between add() and incr() (only at the day's very end): start again.
        counter.add(key, 0, timeout=ttl + 60)
        return counter.incr(key)



class FailOpenThrottleMixin:
    """A DRF rate throttle that lets the request through, with a warning, when the cache fails.

    The counters live in the shared cache; the cache being down must not take the API down with it.
    The client's identity is DRF's get_ident(): REMOTE_ADDR, or with NUM_PROXIES (settings
    TRUSTED_PROXY_COUNT) the address our own proxy appended to X-Forwarded-For.
    """

    def allow_request(self, request, view) -> bool:
        try:
            return super().allow_request(request, view)
        except RedisError as exc:
            logger.warning(THROTTLE_CACHE_DOWN, self.scope, exc)
            return True


class AnonRateThrottle(FailOpenThrottleMixin, throttling.AnonRateThrottle):
    pass


class UserRateThrottle(FailOpenThrottleMixin, throttling.UserRateThrottle):
    pass


class AuthRateThrottle(FailOpenThrottleMixin, throttling.SimpleRateThrottle):
    """Per client address on register, token and the admin's login form, against password guessing
    and sign-up floods; one budget for the three (scope "auth", THROTTLE_AUTH)."""

    scope = "auth"

    def get_cache_key(self, request, view) -> str:
        return self.cache_format % {"scope": self.scope, "ident": self.get_ident(request)}
