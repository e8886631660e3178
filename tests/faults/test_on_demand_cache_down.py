"""The on-demand path with the shared cache (Redis) down (issue 16, item 3, its on-demand part): the
lock falls back to the database's (PostgreSQL's advisory lock, SQLite's per-process one) and the daily
quota to a per-process count; nothing raises.

The cache points at a port nothing listens on, so every cache call fails at once. REDIS_URL itself
stays empty, so the account limiter (another module's concern) stays in process.
"""

import datetime as dt
import threading
import uuid

import pytest
from django.core.cache import caches
from django.db import connection

from core.models import FortuneGeneration, FortuneResult, User
from core.services.fortunes import fortune_get_or_generate_today
from core.services.on_demand_lock import cache_is_shared
from core.throttles import OnDemandLimitReached, on_demand_quota_consume, on_demand_quota_refund
from tests.factories import user_create
from tests.faults.servers import free_port

THREADS = 10


@pytest.fixture
def dead_redis_cache(settings):
    settings.CACHES = {
        "default": {
            "BACKEND": "fortuna_api.redis_cache.SharedClientRedisCache",
            "LOCATION": f"redis://127.0.0.1:{free_port()}/0",
        }
    }
    assert cache_is_shared()
    yield caches["default"]


@pytest.mark.django_db(transaction=True)
def test_ten_concurrent_generations_with_redis_down_make_one_llm_call(dead_redis_cache, openai_settings):
    openai_settings.configure(latency_ms=500)
    user_id = user_create(birth_date_solar=dt.date(1988, 8, 8), gender="M").pk
    barrier = threading.Barrier(THREADS)
    results: list = [None] * THREADS

    def call(i: int) -> None:
        try:
            barrier.wait(timeout=10)
            results[i] = fortune_get_or_generate_today(user=User.objects.get(pk=user_id))
        except Exception as exc:  # surfaced by the assertion below
            results[i] = exc
        finally:
            connection.close()

    threads = [threading.Thread(target=call, args=(i,)) for i in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert all(not isinstance(r, Exception) for r in results), results
    assert {(r.source, r.content_json) for r in results} == {("on_demand", results[0].content_json)}
    assert openai_settings.counters()["requests"] == 1
    assert FortuneResult.objects.filter(user_id=user_id).count() == 1
    assert FortuneGeneration.objects.count() == 1


def test_the_daily_quota_counts_in_process_while_redis_is_down(dead_redis_cache, settings):
    settings.FORTUNE_ON_DEMAND_DAILY_LIMIT = 2
    day, user_id = dt.date(2030, 1, 1), uuid.uuid4().int % 10**9  # the process's count outlives a test
    assert on_demand_quota_consume(user_id=user_id, day=day) == 1
    on_demand_quota_refund(user_id=user_id, day=day)
    assert on_demand_quota_consume(user_id=user_id, day=day) == 1
    assert on_demand_quota_consume(user_id=user_id, day=day) == 2
    with pytest.raises(OnDemandLimitReached):
        on_demand_quota_consume(user_id=user_id, day=day)
