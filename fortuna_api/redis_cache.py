"""Django's Redis cache backend, keeping one redis.Redis client per connection pool, and backing off a
Redis that failed.

django.core.cache.backends.redis.RedisCacheClient.get_client() builds a new redis.Redis object for
every cache command. With redis-py 8 that constructor costs more than the command's own client-side
work, and every API request makes several commands (token cache, throttles): docs/BENCHMARKS.md has
the measurement. A redis.Redis holds nothing but its pool and is safe to share between threads, so
one client per pool sends exactly the same commands.

The cache is optional at run time: its callers fall back when a command raises (token look-up from
the database, throttles open, ...). Each failure still costs up to the connect/read timeout
(settings REDIS_CONNECT_TIMEOUT / REDIS_SOCKET_TIMEOUT, passed to the pool through CACHES OPTIONS),
and one request makes several commands. So after a connection error or a timeout the cache stops
calling Redis for `down_seconds` and every command raises CacheUnavailable at once; the first command
after the window tries Redis again. Django builds one cache object per thread, so each thread of a
worker pays the timeout once per window. Everything else is Django's.
"""

import functools
import logging
import threading
import time

from django.core.cache.backends.redis import RedisCache, RedisCacheClient
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
        try:
            return method(self, *args, **kwargs)
        except CacheUnavailable:
            raise
        except (RedisConnectionError, RedisTimeoutError) as exc:
            self.mark_down(exc)
            raise

    return wrapper


class SharedClientRedisCacheClient(RedisCacheClient):
    def __init__(self, servers, *, down_seconds: float = DEFAULT_DOWN_SECONDS, **options) -> None:
        super().__init__(servers, **options)
        self._clients: dict[int, object] = {}  # pool index -> the one client of that pool
        self._first_use = threading.Lock()
        self.down_seconds = down_seconds
        self._down_until = 0.0  # time.monotonic(); a float store is atomic, threads need no lock

    @property
    def is_down(self) -> bool:
        return time.monotonic() < self._down_until

    def mark_down(self, exc: Exception) -> None:
        if not self.is_down:
            logger.warning(CACHE_MARKED_DOWN, exc, self.down_seconds)
        self._down_until = time.monotonic() + self.down_seconds

    def get_client(self, key=None, *, write=False):
        if self.is_down:
            raise CacheUnavailable(CACHE_BACKING_OFF.format(seconds=self.down_seconds))
        index = self._get_connection_pool_index(write)
        client = self._clients.get(index)
        if client is None:
            # The first command of a pool: under a lock, or threads starting together would each build a
            # pool (Django's _get_connection_pool checks and sets without one) and a client of their own.
            with self._first_use:
                client = self._clients.get(index)
                if client is None:
                    client = self._clients[index] = self._client(connection_pool=self._get_connection_pool(write))
        return client


# Every command Django's client sends goes through one of these: a failure opens the back-off window.
for _name in ("add", "get", "set", "touch", "delete", "get_many", "has_key", "incr", "set_many", "delete_many",
              "clear"):
    setattr(SharedClientRedisCacheClient, _name, _backing_off_on_failure(getattr(RedisCacheClient, _name)))


class SharedClientRedisCache(RedisCache):
    def __init__(self, server, params) -> None:
        super().__init__(server, params)
        self._class = SharedClientRedisCacheClient
