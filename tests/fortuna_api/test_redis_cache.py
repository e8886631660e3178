"""The shared-client Redis cache against Django's own RedisCache: the same answers, one client per pool."""

import threading

import pytest
from django.core.cache.backends.redis import RedisCache

from fortuna_api.redis_cache import SharedClientRedisCache


@pytest.fixture
def caches(redis_url):
    django_cache = RedisCache(redis_url, {"KEY_PREFIX": "django"})
    ours = SharedClientRedisCache(redis_url, {"KEY_PREFIX": "ours"})
    yield django_cache, ours
    for cache in (django_cache, ours):
        cache.delete_many(["a", "b", "n", "gone", "once"])


def _script(cache) -> list:
    """A sequence of cache operations and what each answered."""
    return [
        cache.add("once", 1), cache.add("once", 2), cache.get("once"),
        cache.set("a", {"x": [1, 2]}), cache.get("a"), cache.get("missing", "default"),
        cache.set_many({"b": "β", "n": 10}), cache.get_many(["a", "b", "n", "missing"]),
        cache.incr("n", 5), cache.decr("n"), cache.touch("a", 30), cache.has_key("a"),
        cache.delete("a"), cache.delete("gone"), cache.get("a"),
    ]


def test_answers_as_djangos_redis_cache(caches):
    django_cache, ours = caches
    assert _script(ours) == _script(django_cache)


def test_one_client_per_pool_shared_by_threads(caches):
    _, ours = caches
    clients = []
    threads = [threading.Thread(target=lambda: clients.append(ours._cache.get_client(write=True))) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({id(client) for client in clients}) == 1
    assert clients[0].connection_pool is ours._cache._get_connection_pool(True)
