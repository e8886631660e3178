"""The cost guard: on-demand generations per user per KST day, counted in the shared cache."""

import datetime as dt

import pytest
import time_machine
from django.core.cache import cache, caches

from core.api.fortunes import ON_DEMAND_LIMIT
from core.models import FortuneGeneration, FortuneResult
from core.throttles import ON_DEMAND_KEY
from tests.api.conftest import client_for, fortune_store, kst_today, provider_error
from tests.factories import user_create

pytestmark = pytest.mark.django_db

UTC = dt.timezone.utc
NOON_KST = dt.datetime(2025, 3, 9, 3, 0, tzinfo=UTC)
TO_MIDNIGHT = 12 * 3600


def _forget_today(user):
    """What a profile edit does: today's fortune (and its generation) gone, so the next GET generates."""
    FortuneResult.objects.filter(user=user).delete()
    FortuneGeneration.objects.all().delete()


def _exhaust(client, user, limit):
    for _ in range(limit):
        assert client.get("/fortune/today").status_code == 200
        _forget_today(user)


@pytest.fixture
def frozen():
    with time_machine.travel(NOON_KST, tick=False) as traveller:
        yield traveller


def test_on_demand_limit_gives_429_with_retry_after_until_kst_midnight(frozen, user, fake_provider, settings):
    settings.FORTUNE_ON_DEMAND_DAILY_LIMIT = 2
    client = client_for(user)
    _exhaust(client, user, 2)
    response = client.get("/fortune/today")
    assert response.status_code == 429
    assert response.json() == {"detail": ON_DEMAND_LIMIT.format(limit=2), "code": "on_demand_limit"}
    assert response["Retry-After"] == str(TO_MIDNIGHT)
    assert fake_provider.calls == 2
    assert not FortuneResult.objects.exists()


def test_limit_does_not_apply_to_stored_or_shared_fortunes(frozen, user, fake_provider, settings):
    settings.FORTUNE_ON_DEMAND_DAILY_LIMIT = 1
    client = client_for(user)
    _exhaust(client, user, 1)
    fortune_store(user=user, for_date=dt.date(2025, 3, 9))
    assert client.get("/fortune/today").status_code == 200
    twin = user_create(birth_date_solar=user.birth_date_solar, gender=user.gender)
    twin_client = client_for(twin)
    assert twin_client.get("/fortune/today").status_code == 200  # a fresh user: own quota
    FortuneResult.objects.filter(user=twin).delete()
    # The generation exists: linking to it costs nothing, so the exhausted twin still gets it.
    cache.set(ON_DEMAND_KEY.format(user_id=twin.pk, day="2025-03-09"), 99)
    assert twin_client.get("/fortune/today").status_code == 200


def test_limit_is_per_user_and_resets_at_kst_midnight(frozen, user, fake_provider, settings):
    settings.FORTUNE_ON_DEMAND_DAILY_LIMIT = 1
    client = client_for(user)
    _exhaust(client, user, 1)
    assert client.get("/fortune/today").status_code == 429
    other = user_create(birth_date_solar=dt.date(1960, 6, 6))
    assert client_for(other).get("/fortune/today").status_code == 200
    frozen.move_to(dt.datetime(2025, 3, 9, 15, 0, tzinfo=UTC))  # 00:00 KST
    assert client.get("/fortune/today").status_code == 200


def test_failed_generations_do_not_count_against_the_limit(frozen, user, fake_provider, settings):
    # An outage: five failed attempts, each answered with the fallback, must not lock the user out
    # once the provider is back.
    settings.FORTUNE_ON_DEMAND_DAILY_LIMIT = 2
    fake_provider.script = [provider_error("bad_request", retryable=False)] * 5
    client = client_for(user)
    for _ in range(5):
        response = client.get("/fortune/today")
        assert (response.status_code, response.json()["source"]) == (200, "fallback")
        _forget_today(user)
    assert cache.get(ON_DEMAND_KEY.format(user_id=user.pk, day="2025-03-09")) == 0
    sources = []
    for _ in range(2):
        sources.append(client.get("/fortune/today").json()["source"])
        _forget_today(user)
    assert sources == ["on_demand", "on_demand"]
    assert client.get("/fortune/today").status_code == 429
    assert fake_provider.calls == 7


def test_limit_holds_in_redis_shared_by_every_process(frozen, user, fake_provider, settings, redis_url):
    settings.CACHES = {
        "default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": redis_url}
    }
    redis_cache = caches["default"]
    assert "Redis" in type(redis_cache).__name__
    redis_cache.clear()
    try:
        settings.FORTUNE_ON_DEMAND_DAILY_LIMIT = 2
        client = client_for(user)
        _exhaust(client, user, 2)
        response = client.get("/fortune/today")
        assert response.status_code == 429
        assert response["Retry-After"] == str(TO_MIDNIGHT)
        key = redis_cache.make_and_validate_key(ON_DEMAND_KEY.format(user_id=user.pk, day="2025-03-09"))
        raw = redis_cache._cache.get_client(key)
        assert int(raw.get(key)) == 3
        assert TO_MIDNIGHT < raw.ttl(key) <= TO_MIDNIGHT + 60
    finally:
        redis_cache.clear()


def test_ordinary_user_throttle_applies_to_fortune_requests(user, monkeypatch):
    from rest_framework.throttling import UserRateThrottle

    monkeypatch.setattr(UserRateThrottle, "rate", "2/min", raising=False)
    fortune_store(user=user, for_date=kst_today())
    client = client_for(user)
    statuses = [client.get("/fortune/today") for _ in range(3)]
    assert [r.status_code for r in statuses] == [200, 200, 429]
    assert int(statuses[-1]["Retry-After"]) > 0
