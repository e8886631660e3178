"""The account limiter's Redis fails mid-run (issue 17.4): killed, or frozen (SIGSTOP: the kernel still
accepts connections, nothing answers). The limiter carries on in-process at a share of the account,
says so once, and goes back to Redis when it answers; the night completes under the account's limit.
"""

import logging
import threading
import time
import uuid

import pytest

from core.limiter import LIMITER_REDIS_BACK, LIMITER_REDIS_DOWN, RedisRateLimiter
from core.models import FortuneGeneration, FortuneResult, NightlyRun
from tests.factories import users_create_many
from tests.faults.reports import assert_reported
from tests.nightly.celery_helpers import duplicates
from tests.nightly.helpers import BASE, TARGET, eligible_ids, run_batch

pytestmark = pytest.mark.django_db(transaction=True)

RPM = 900  # configured and the stub's account: 30 requests per 2 s window
WINDOW_S = 2
WORKERS = 4


@pytest.fixture
def limiter(own_redis, settings):
    made = RedisRateLimiter(600, url=own_redis.url(), key=f"fortuna:test:{uuid.uuid4().hex}", fallback_processes=3,
                            probe_seconds=0.3)
    yield made
    made.close()


def _messages(caplog, template: str) -> list[str]:
    head = template.split("{")[0]
    return [r.getMessage() for r in caplog.records if head in r.getMessage()]


def test_a_killed_redis_leaves_the_limiter_in_process_at_its_share_until_redis_is_back(limiter, own_redis, caplog):
    assert limiter.acquire() and not limiter.degraded
    assert limiter._peers == 1
    own_redis.kill()
    with caplog.at_level(logging.WARNING, logger="fortuna.limiter"):
        for _ in range(3):
            assert limiter.acquire(time.monotonic() + 5)
        assert limiter.degraded
        assert limiter._local.rpm == 600 // 3  # the configured floor of sharers is above the one seen
        own_redis.start()
        time.sleep(0.4)  # one probe period
        assert limiter.acquire(time.monotonic() + 5)
    assert not limiter.degraded
    assert limiter.redis.exists(limiter.key)  # the slot came from Redis again
    assert len(_messages(caplog, LIMITER_REDIS_DOWN)) == 1  # said once, not per call
    assert len(_messages(caplog, LIMITER_REDIS_BACK)) == 1


def test_a_frozen_redis_costs_one_socket_timeout_not_five_seconds(limiter, own_redis, settings):
    limiter.probe_seconds = 3.0
    assert limiter.acquire()
    own_redis.pause()
    try:
        started = time.monotonic()
        assert limiter.acquire(time.monotonic() + 5)
        first = time.monotonic() - started
        started = time.monotonic()
        for _ in range(3):
            limiter.acquire(time.monotonic() + 5)
        after = time.monotonic() - started
    finally:
        own_redis.resume()
    assert limiter.degraded
    assert first < settings.REDIS_SOCKET_TIMEOUT + 1.0
    # Once down, Redis is not asked again before the probe period: the in-process pace alone (200 RPM).
    assert after < 3 * 60 / 200 + 0.5


def _night_with_redis_fault(*, own_redis, openai_settings, settings, fault, heal=None) -> tuple[NightlyRun, dict]:
    openai_settings.configure(latency_ms=80, account_rpm=RPM, account_window_s=WINDOW_S)
    settings.REDIS_URL = own_redis.url()
    users_create_many(count=30, seed=71)
    struck: list[int] = []

    def strike():
        deadline = time.monotonic() + 30
        while openai_settings.counters()["requests"] < 8 and time.monotonic() < deadline:
            time.sleep(0.01)
        struck.append(openai_settings.counters()["in_flight"])
        fault()
        if heal is not None:
            time.sleep(2.0)
            heal()

    striker = threading.Thread(target=strike)
    striker.start()
    try:
        run_batch("--date", BASE.isoformat(), "--workers", str(WORKERS), "--rpm", str(RPM), "--retry-cooldown", "0")
    finally:
        striker.join(timeout=30)
    assert struck, "the fault never struck"
    return NightlyRun.objects.order_by("-pk").first(), openai_settings.counters()


def _assert_night_complete(run: NightlyRun, counters: dict, slack_receiver) -> None:
    assert run.status == NightlyRun.Status.SUCCEEDED, run.stop_reason
    assert set(FortuneResult.objects.filter(for_date=TARGET).values_list("user_id", flat=True)) == eligible_ids()
    assert duplicates(for_date=TARGET) == 0
    assert not NightlyRun.objects.filter(status=NightlyRun.Status.RUNNING).exists()
    distinct = FortuneGeneration.objects.count()
    assert counters["distinct_inputs"] == distinct
    assert counters["requests"] <= distinct + WORKERS
    # Never over the account's limit: no 429 for it, no window holding more than it admits.
    assert counters["account"]["rejected_429"] == 0
    assert counters["account"]["max_requests_in_window"] <= RPM * WINDOW_S / 60
    assert_reported(slack_receiver, NightlyRun.objects.order_by("pk"))


def test_redis_killed_mid_run_the_night_completes_under_the_account_limit(own_redis, openai_settings, settings,
                                                                         slack_receiver):
    run, counters = _night_with_redis_fault(own_redis=own_redis, openai_settings=openai_settings, settings=settings,
                                            fault=own_redis.kill)
    _assert_night_complete(run, counters, slack_receiver)


def test_redis_frozen_mid_run_the_night_completes_under_the_account_limit(own_redis, openai_settings, settings,
                                                                         slack_receiver):
    run, counters = _night_with_redis_fault(own_redis=own_redis, openai_settings=openai_settings, settings=settings,
                                            fault=own_redis.pause)  # frozen to the end (the fixture kills it)
    _assert_night_complete(run, counters, slack_receiver)
