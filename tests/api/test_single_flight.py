"""N concurrent requests for a missing fortune: exactly one generation (real threads, own connections)."""

import datetime as dt
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from django.core.cache import caches
from django.db import connection

from core.fortunes.inputs import GenerationInput
from core.models import FortuneGeneration, FortuneResult
from core.services.on_demand_lock import CACHE_KEY, on_demand_lock_for
from tests.api.conftest import client_for, fortune_store, kst_today
from tests.factories import user_create

THREADS = 10


@contextmanager
def lock_held_elsewhere(name: str) -> Iterator[threading.Event]:
    """The on-demand lock on `name` held by another thread (its own database session), as another
    request or process would; set the yielded event to release it early."""
    taken, release = threading.Event(), threading.Event()

    def holder():
        lock = on_demand_lock_for(name)
        try:
            assert lock.try_acquire()
            taken.set()
            release.wait(timeout=30)
            lock.release()
        finally:
            connection.close()

    thread = threading.Thread(target=holder)
    thread.start()
    try:
        assert taken.wait(timeout=10)
        yield release
    finally:
        release.set()
        thread.join(timeout=30)


def _get_concurrently(clients, path="/fortune/today"):
    barrier = threading.Barrier(len(clients))
    results = [None] * len(clients)

    def call(i, client):
        try:
            barrier.wait(timeout=10)
            response = client.get(path)
            results[i] = (response.status_code, response.json())
        except Exception as exc:  # surfaced by the assertion below
            results[i] = ("error", repr(exc))
        finally:
            connection.close()

    threads = [threading.Thread(target=call, args=(i, c)) for i, c in enumerate(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return results


@pytest.mark.django_db(transaction=True)
def test_ten_concurrent_requests_from_one_user_make_one_generation(fake_provider):
    fake_provider.delay = 0.3  # long enough that every request arrives while the first generates
    user = user_create(birth_date_solar=dt.date(1985, 11, 3), gender="M")
    client = client_for(user)
    results = _get_concurrently([client] * THREADS)
    assert [status for status, _ in results] == [200] * THREADS, results
    assert all(body == results[0][1] for _, body in results)
    assert fake_provider.calls == 1
    assert FortuneGeneration.objects.count() == 1
    assert FortuneResult.objects.filter(user=user).count() == 1


@pytest.mark.django_db(transaction=True)
def test_concurrent_users_with_equal_inputs_share_one_generation(fake_provider):
    fake_provider.delay = 0.3
    users = [user_create(birth_date_solar=dt.date(1985, 11, 3), gender="M") for _ in range(4)]
    results = _get_concurrently([client_for(u) for u in users])
    assert [status for status, _ in results] == [200] * 4, results
    assert fake_provider.calls == 1
    assert FortuneGeneration.objects.count() == 1
    assert FortuneResult.objects.count() == 4


@pytest.mark.django_db(transaction=True)
def test_single_flight_holds_in_redis_shared_by_every_process(fake_provider, settings, redis_url):
    # With REDIS_URL the lock is one key that every gunicorn process sees, not a per-process dict.
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": redis_url}}
    redis_cache = caches["default"]
    assert "Redis" in type(redis_cache).__name__
    redis_cache.clear()
    try:
        fake_provider.delay = 0.3
        user = user_create(birth_date_solar=dt.date(1985, 11, 3), gender="M")
        results = _get_concurrently([client_for(user)] * THREADS)
        assert [status for status, _ in results] == [200] * THREADS, results
        assert fake_provider.calls == 1
        assert FortuneGeneration.objects.count() == 1
        inp = GenerationInput.for_user(user=user, for_date=kst_today(), generator=fake_provider.generator)
        assert redis_cache.get(CACHE_KEY.format(name=inp.hash)) is None  # released, not left to expire
    finally:
        redis_cache.clear()


@pytest.mark.django_db(transaction=True)
def test_a_request_that_cannot_get_the_lock_in_time_gets_the_fallback(fake_provider, settings, user):
    # The holder keeps the lock past this request's budget (e.g. a stalled process): the user still
    # gets a fortune, the saju-rule one, and no model call is made.
    settings.FORTUNE_ON_DEMAND_TIMEOUT = 2  # waits 1 s for the lock, leaving MIN_ATTEMPT_SECONDS
    inp = GenerationInput.for_user(user=user, for_date=kst_today(), generator=fake_provider.generator)
    with lock_held_elsewhere(inp.hash):
        response = client_for(user).get("/fortune/today")
    assert response.status_code == 200, response.json()
    assert response.json()["source"] == "fallback"
    assert fake_provider.calls == 0
    assert FortuneResult.objects.get(user=user).generation.provider == "local"


@pytest.mark.django_db(transaction=True)
def test_a_waiter_that_gets_the_lock_serves_what_the_holder_stored(fake_provider, user):
    # The re-check after the lock: the holder stored the fortune while this request waited.
    inp = GenerationInput.for_user(user=user, for_date=kst_today(), generator=fake_provider.generator)
    with lock_held_elsewhere(inp.hash) as release:

        def holder_finishes():
            try:
                fortune_store(user=user, for_date=kst_today(), generator=fake_provider.generator)
                release.set()
            finally:
                connection.close()

        timer = threading.Timer(0.2, holder_finishes)
        timer.start()
        try:
            response = client_for(user).get("/fortune/today")
        finally:
            timer.join()
    assert response.status_code == 200
    assert response.json()["source"] == "batch"
    assert fake_provider.calls == 0
