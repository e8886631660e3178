"""Django's RedisCache, backing off a Redis that failed.

The cache is optional at run time: its callers fall back when a command raises (token look-up from
the database, throttles open, ...). Each failure still costs up to the connect/read timeout
(settings REDIS_CONNECT_TIMEOUT / REDIS_SOCKET_TIMEOUT, passed to the pool through CACHES OPTIONS),
and one request makes several commands. So after a connection error or a timeout the cache stops
calling Redis for OPTIONS["down_seconds"] and every cache method raises CacheUnavailable at once; the
first call after the window tries Redis again. Django builds one cache object per thread, so each
thread of a worker pays the timeout once per window.

Only the cache's public methods are wrapped, each calling Django's own; BaseCache's other methods
(get_or_set, decr, incr_version, ...) go through these. Everything else is Django's.
"""

import functools
import logging
import time

from django.core.cache.backends.redis import RedisCache
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

logger = logging.getLogger("fortuna.cache")

DEFAULT_DOWN_SECONDS = 5.0
CACHE_BACKING_OFF = "The Redis cache failed less than {seconds:g} s ago; not calling it again yet."
CACHE_MARKED_DOWN = "Redis cache unreachable (%s): the API falls back without it; next try in %g s."


class CacheUnavailable(RedisConnectionError):
    """Raised without a network call while the cache is backing off after a failure.

    A redis ConnectionError, so callers handle it as they handle Redis being down.
    """


def _backing_off_on_failure(method):
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        if self.is_down:
            raise CacheUnavailable(CACHE_BACKING_OFF.format(seconds=self.down_seconds))
        try:
            return method(self, *args, **kwargs)
        except (RedisConnectionError, RedisTimeoutError) as exc:
            self.mark_down(exc)
            raise

    return wrapper


class BackingOffRedisCache(RedisCache):
    def __init__(self, server, params) -> None:
        options = dict(params.get("OPTIONS", {}))
        # Ours, not the connection pool's (RedisCache passes every other option to redis-py).
        self.down_seconds = float(options.pop("down_seconds", DEFAULT_DOWN_SECONDS))
        super().__init__(server, {**params, "OPTIONS": options})
        self._down_until = 0.0  # time.monotonic(); a float store is atomic, threads need no lock

    @property
    def is_down(self) -> bool:
        return time.monotonic() < self._down_until

    def mark_down(self, exc: Exception) -> None:
        if not self.is_down:
            logger.warning(CACHE_MARKED_DOWN, exc, self.down_seconds)
        self._down_until = time.monotonic() + self.down_seconds


# Every command RedisCache sends goes through one of these: a failure opens the back-off window.
for _name in ("add", "get", "set", "touch", "delete", "get_many", "has_key", "incr", "set_many", "delete_many",
              "clear"):
    setattr(BackingOffRedisCache, _name, _backing_off_on_failure(getattr(RedisCache, _name)))
