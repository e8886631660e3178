"""Django's Redis cache backend, keeping one redis.Redis client per connection pool.

django.core.cache.backends.redis.RedisCacheClient.get_client() builds a new redis.Redis object for
every cache command. With redis-py 8 that constructor costs more than the command's own client-side
work, and every API request makes several commands (token cache, throttles): docs/BENCHMARKS.md has
the measurement. A redis.Redis holds nothing but its pool and is safe to share between threads, so
one client per pool sends exactly the same commands. Everything else is Django's.
"""

from django.core.cache.backends.redis import RedisCache, RedisCacheClient


class SharedClientRedisCacheClient(RedisCacheClient):
    def __init__(self, servers, **options) -> None:
        super().__init__(servers, **options)
        self._clients: dict[int, object] = {}

    def get_client(self, key=None, *, write=False):
        pool = self._get_connection_pool(write)
        client = self._clients.get(id(pool))
        if client is None:
            # Two threads may both build one on the first command; either is fine to keep.
            client = self._clients.setdefault(id(pool), self._client(connection_pool=pool))
        return client


class SharedClientRedisCache(RedisCache):
    def __init__(self, server, params) -> None:
        super().__init__(server, params)
        self._class = SharedClientRedisCacheClient
