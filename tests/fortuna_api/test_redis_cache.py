"""The shared-client Redis cache against Django's own RedisCache: the same answers, one client per pool."""

import os
import subprocess
import sys
import threading
import time

import pytest
from django.core.cache.backends.redis import RedisCache

from fortuna_api.redis_cache import SharedClientRedisCache
from tests.fortuna_api.test_settings import ROOT


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


def test_one_client_per_pool_shared_by_threads(caches, monkeypatch):
    _, ours = caches
    make_pool = ours._cache._pool_class.from_url

    def slow_pool(*args, **kwargs):
        time.sleep(0.05)  # every thread reaches the first command's pool creation before any has one
        return make_pool(*args, **kwargs)

    monkeypatch.setattr(ours._cache._pool_class, "from_url", slow_pool)
    clients = []
    threads = [threading.Thread(target=lambda: clients.append(ours._cache.get_client(write=True))) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({id(client) for client in clients}) == 1
    assert clients[0].connection_pool is ours._cache._get_connection_pool(True)


def test_settings_give_the_cache_pool_the_redis_timeouts():
    probe = ("import django; django.setup(); from django.core.cache import cache; "
             "kwargs = cache._cache._get_connection_pool(True).connection_kwargs; "
             "print(kwargs['socket_connect_timeout'], kwargs['socket_timeout'], cache._cache.down_seconds)")
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"} | {
        "DJANGO_SETTINGS_MODULE": "fortuna_api.settings", "DEBUG": "1", "REDIS_URL": "redis://127.0.0.1:1/0",
        "REDIS_CONNECT_TIMEOUT_MS": "250", "REDIS_SOCKET_TIMEOUT_MS": "300",
    }
    result = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["0.25", "0.3", "5.0"]
