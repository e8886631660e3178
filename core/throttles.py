"""Throttles: the per-user daily cost guard on on-demand generation, and DRF's rate throttles."""

import datetime as dt
import logging
import math

from django.conf import settings
from django.core.cache import cache
from django.utils import timezone
from redis.exceptions import RedisError
from rest_framework import throttling

logger = logging.getLogger("fortuna.throttles")

THROTTLE_CACHE_DOWN = "Throttle %r not applied: the cache did not answer (%s)."

ON_DEMAND_KEY = "fortune:on-demand:{user_id}:{day}"


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
    every process and survive deploys; the key expires a little after the KST day ends.
    """
    limit = settings.FORTUNE_ON_DEMAND_DAILY_LIMIT
    ttl = seconds_until_kst_midnight()
    key = ON_DEMAND_KEY.format(user_id=user_id, day=day.isoformat())
    cache.add(key, 0, timeout=ttl + 60)
    try:
        count = cache.incr(key)
    except ValueError:
        # The key expired between add() and incr() (only at the day's very end): start again.
        cache.add(key, 0, timeout=ttl + 60)
        count = cache.incr(key)
    if count > limit:
        raise OnDemandLimitReached(limit=limit, retry_after=ttl)
    return count


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
