"""The account limiter: the same behaviour from both backends (in-process on a fake clock, Redis on
Redis's clock), and the Redis one shared by separate processes."""

import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

from core.fortunes.providers.base import FailureReason, ProviderError
from core.limiter import (
    LANE_BATCH,
    LANE_ON_DEMAND,
    LIMITER_NEEDS_REDIS,
    REDIS_POOL_SIZE,
    RESERVE_INVALID,
    TPM_INVALID,
    Backoff,
    RateLimiter,
    RedisRateLimiter,
    account_limiter,
    ratelimit_duration,
)
from tests.fakes import FakeClock

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def redis_limiter(redis_url):
    made = []

    def make(rpm, **kwargs):
        limiter = RedisRateLimiter(rpm, url=redis_url, key=f"test:limiter:{uuid.uuid4().hex}", **kwargs)
        made.append(limiter)
        return limiter

    yield make
    for limiter in made:
        limiter.clear()
        limiter.close()


def rate_limited(**headers) -> ProviderError:
    retry_after = headers.pop("retry_after", None)
    return ProviderError("HTTP 429", reason=FailureReason.RATE_LIMITED, retryable=True, status_code=429,
                         retry_after=retry_after, headers=headers)


# --- in-process: exact, on a fake clock ---------------------------------------------------------


def grants(limiter, clock, n, **kwargs) -> list[float]:
    times = []
    for _ in range(n):
        assert limiter.acquire(**kwargs)
        times.append(round(clock.now - 100.0, 6))
    return times


def test_tokens_per_minute_space_requests_by_their_estimated_tokens():
    clock = FakeClock()
    limiter = RateLimiter(None, tpm=6000, clock=clock, sleep=clock.sleep)  # 100 tokens a second
    assert grants(limiter, clock, 3, tokens=200) == [0, 2, 4]


def test_reconcile_gives_back_what_the_answer_did_not_use():
    clock = FakeClock()
    limiter = RateLimiter(None, tpm=6000, clock=clock, sleep=clock.sleep)
    assert limiter.acquire(tokens=1000)  # 10 s of tokens reserved
    limiter.reconcile(lane=LANE_BATCH, reserved=1000, used=100)  # only 1 s of them used
    assert limiter.acquire(tokens=100)
    assert clock.now == 101.0


def test_requests_and_tokens_both_bind():
    clock = FakeClock()
    limiter = RateLimiter(60, tpm=60_000, clock=clock, sleep=clock.sleep)  # 1 req/s, 1,000 tokens/s
    assert grants(limiter, clock, 3, tokens=10) == [0, 1, 2]  # requests bind
    assert grants(limiter, clock, 2, tokens=3000) == [3, 6]  # then tokens do


def test_the_batch_lane_runs_at_its_share_and_leaves_the_reserve_to_on_demand():
    clock = FakeClock()
    limiter = RateLimiter(60, reserve=0.5, clock=clock, sleep=clock.sleep)  # batch 30/min, on-demand 30/min
    assert grants(limiter, clock, 3) == [0, 2, 4]
    # The batch has slots reserved far ahead (its waiters); on-demand still gets one now.
    for _ in range(10):  # the batch's waiters reserve its lane 20 s ahead
        assert limiter._reserve(lane=LANE_BATCH, tokens=0, max_wait=None)[0] == LANE_BATCH
    start = clock.now
    assert limiter.acquire_lane(deadline=clock.now + 0.001, lane=LANE_ON_DEMAND) == LANE_ON_DEMAND
    assert clock.now == start


def test_on_demand_borrows_a_free_batch_slot_but_never_a_reserved_one():
    clock = FakeClock()
    limiter = RateLimiter(60, reserve=0.1, clock=clock, sleep=clock.sleep)
    assert limiter.acquire_lane(lane=LANE_ON_DEMAND) == LANE_ON_DEMAND  # its own lane, now
    assert limiter.acquire_lane(lane=LANE_ON_DEMAND) == LANE_BATCH  # its lane is busy: the idle batch slot
    # Now both lanes' next slots are in the future: on-demand waits in its own lane.
    assert limiter.acquire_lane(deadline=clock.now + 0.5, lane=LANE_ON_DEMAND) is None


def test_a_429_pauses_everyone_for_its_retry_after():
    clock = FakeClock()
    limiter = RateLimiter(6000, clock=clock, sleep=clock.sleep)
    limiter.backoff(error=rate_limited(retry_after=3.0))
    assert limiter.acquire()
    assert clock.now == pytest.approx(103.0)


def test_a_429_teaches_the_account_limit_it_states():
    clock = FakeClock()
    limiter = RateLimiter(600, clock=clock, sleep=clock.sleep)
    learned = limiter.backoff(error=rate_limited(retry_after=0.0, **{"x-ratelimit-limit-requests": "60"}))
    assert learned.rpm == 60
    assert grants(limiter, clock, 3) == [0, 1, 2]  # 60 RPM now, not 600


def test_an_unlimited_limiter_still_honours_a_pause():
    clock = FakeClock()
    limiter = RateLimiter(None, clock=clock, sleep=clock.sleep)
    limiter.backoff(error=rate_limited(retry_after=2.0))
    assert limiter.acquire(deadline=clock.now + 1) is False
    assert limiter.acquire()
    assert clock.now == pytest.approx(102.0)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"tpm": -5}, TPM_INVALID.format(tpm=-5)),
    ({"reserve": 1.0}, RESERVE_INVALID.format(reserve=1.0)),
])
def test_nonsense_limits_are_refused(kwargs, message):
    with pytest.raises(ValueError) as error:
        RateLimiter(60, **kwargs)
    assert str(error.value) == message


@pytest.mark.parametrize(("value", "seconds"), [
    ("1s", 1.0), ("6m0s", 360.0), ("20ms", 0.02), ("1h2m3.5s", 3723.5), ("0.5", 0.5), ("soon", None), ("", None),
])
def test_ratelimit_reset_durations(value, seconds):
    assert ratelimit_duration(value) == seconds


def test_backoff_reads_the_reset_of_the_exhausted_dimension_when_no_retry_after():
    error = rate_limited(**{"x-ratelimit-remaining-requests": "10", "x-ratelimit-reset-requests": "50s",
                            "x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": "2.5s",
                            "x-ratelimit-limit-tokens": "40000"})
    assert Backoff.from_error(error) == Backoff(pause=2.5, rpm=None, tpm=40000)


def test_a_shared_limiter_without_redis_is_a_clear_error(settings):
    settings.REDIS_URL = ""
    with pytest.raises(ImproperlyConfigured) as error:
        account_limiter(shared=True)
    assert str(error.value) == LIMITER_NEEDS_REDIS
    assert isinstance(account_limiter(), RateLimiter)


# --- Redis: the same behaviour on a real clock --------------------------------------------------


def count_grants(limiter, *, window: float, threads: int = 8, **kwargs) -> int:
    start = time.monotonic()
    count = 0
    lock = threading.Lock()

    def worker():
        nonlocal count
        while limiter.acquire(deadline=start + window, **kwargs):
            with lock:
                count += 1

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join(timeout=30)
    assert not any(thread.is_alive() for thread in pool)
    return count


def test_redis_limiter_grants_no_more_than_the_rate(redis_limiter):
    limiter = redis_limiter(6000)  # 100 a second
    assert 1 <= count_grants(limiter, window=0.5) <= 50 + 1


def test_redis_limiter_counts_tokens(redis_limiter):
    limiter = redis_limiter(None, tpm=60_000)  # 1,000 tokens a second
    assert 1 <= count_grants(limiter, window=0.5, tokens=100) <= 5 + 1


def test_redis_on_demand_gets_its_share_while_the_batch_is_saturated(redis_limiter):
    limiter = redis_limiter(600, reserve=0.1)
    for _ in range(200):  # the batch reserves 20 s of its lane ahead
        assert limiter._reserve(lane=LANE_BATCH, tokens=0, max_wait=None) is not None
    start = time.monotonic()
    assert limiter.acquire_lane(deadline=start + 0.5, lane=LANE_ON_DEMAND) == LANE_ON_DEMAND
    assert limiter.acquire_lane(deadline=time.monotonic() + 0.05, lane=LANE_BATCH) is None


def test_redis_a_429_pauses_every_limiter_on_the_key_and_teaches_the_limit(redis_limiter, redis_url):
    first = redis_limiter(6000)
    second = RedisRateLimiter(6000, url=redis_url, key=first.key)
    try:
        first.backoff(error=rate_limited(retry_after=0.4, **{"x-ratelimit-limit-requests": "600"}))
        assert second.acquire(deadline=time.monotonic() + 0.1) is False  # paused
        started = time.monotonic()
        assert second.acquire()
        assert second.acquire()  # 600 RPM learned: 0.1 s apart, not 0.01
        assert time.monotonic() - started >= 0.3
    finally:
        second.close()


TWO_PROCESSES = """
import sys, threading, time
from core.limiter import RedisRateLimiter
limiter = RedisRateLimiter(int(sys.argv[1]), tpm=int(sys.argv[2]) or None, url=sys.argv[3], key=sys.argv[4])
print("ready", flush=True)
start = float(sys.stdin.readline())  # the parent sends one start instant to both processes
while time.time() < start:
    time.sleep(0.001)
count = 0
lock = threading.Lock()
def work():
    global count
    end = time.monotonic() + (start + float(sys.argv[5]) - time.time())  # the same instant in both processes
    while limiter.acquire(deadline=end, tokens=50):
        with lock:
            count += 1
threads = [threading.Thread(target=work) for _ in range(8)]
for t in threads: t.start()
for t in threads: t.join()
print(count)
"""


@pytest.mark.parametrize(("rpm", "tpm", "bound"), [(2400, 0, 40), (0, 60_000, 20)])
def test_two_processes_share_one_limit(redis_limiter, rpm, tpm, bound):
    """2,400 RPM = 40 a second, or 60,000 TPM / 50 tokens = 20 a second: two processes together, over 1 s."""
    key = redis_limiter(None).key
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings", "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, "-c", TWO_PROCESSES, str(rpm), str(tpm), os.environ["TEST_REDIS_URL"],
                               key, "1.0"], cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
    for proc in procs:
        assert proc.stdout.readline().strip() == "ready"
    start = time.time() + 0.2
    for proc in procs:
        proc.stdin.write(f"{start}\n")
        proc.stdin.flush()
    counts = [int(proc.communicate(timeout=60)[0]) for proc in procs]
    assert all(count >= 1 for count in counts)  # both got slots
    assert sum(counts) <= bound + 2  # together, not each


# --- the in-process limiter's request spacing (moved from core/nightly/retry.py's tests) ---------


def granted_times(limiter: RateLimiter, clock: FakeClock, n: int) -> list[float]:
    times = []
    for _ in range(n):
        assert limiter.acquire()
        times.append(clock.now)
    return times


def test_rate_limiter_spaces_acquisitions_evenly():
    clock = FakeClock()
    limiter = RateLimiter(120, clock=clock, sleep=clock.sleep)
    times = granted_times(limiter, clock, 5)
    assert [round(b - a, 6) for a, b in zip(times, times[1:], strict=False)] == [0.5] * 4


def test_rate_limiter_allows_a_burst_then_the_steady_rate():
    clock = FakeClock()
    limiter = RateLimiter(60, burst=3, clock=clock, sleep=clock.sleep)
    times = granted_times(limiter, clock, 6)
    assert [round(t - 100.0, 6) for t in times] == [0, 0, 0, 1, 2, 3]


def test_rate_limiter_does_not_bank_idle_time_beyond_the_burst():
    clock = FakeClock()
    limiter = RateLimiter(60, burst=2, clock=clock, sleep=clock.sleep)
    granted_times(limiter, clock, 2)
    clock.now += 3600  # an idle hour
    times = granted_times(limiter, clock, 4)
    start = times[0]
    assert [round(t - start, 6) for t in times] == [0, 0, 1, 2]


def test_rate_limiter_over_a_minute_never_exceeds_rpm_plus_burst():
    clock = FakeClock()
    limiter = RateLimiter(600, burst=5, clock=clock, sleep=clock.sleep)
    start = clock.now
    count = 0
    while True:
        assert limiter.acquire()
        if clock.now > start + 60:
            break
        count += 1
    assert 600 <= count <= 600 + 5


def test_rate_limiter_refuses_a_slot_after_the_deadline_without_reserving_it():
    clock = FakeClock()
    limiter = RateLimiter(60, clock=clock, sleep=clock.sleep)
    assert limiter.acquire()
    assert limiter.acquire(deadline=clock.now + 0.5) is False  # the next slot is 1 s away
    assert clock.now == 100.0  # it did not wait
    assert limiter.acquire(deadline=clock.now + 1.0) is True
    assert clock.now == 101.0


def test_unlimited_rate_limiter_never_waits():
    clock = FakeClock()
    for rpm in (None, 0):
        limiter = RateLimiter(rpm, clock=clock, sleep=clock.sleep)
        assert limiter.unlimited
        assert all(limiter.acquire() for _ in range(1000))
    assert clock.now == 100.0


@pytest.mark.parametrize("rpm", [-1, 1.5, "60"])
def test_rate_limiter_rejects_nonsense_rpm(rpm):
    with pytest.raises(ValueError):
        RateLimiter(rpm)


def test_rate_limiter_stop_event_interrupts_the_wait():
    limiter = RateLimiter(1)  # one a minute
    assert limiter.acquire()
    stop = threading.Event()
    threading.Timer(0.05, stop.set).start()
    assert limiter.acquire(stop=stop) is False  # would otherwise wait ~60 s


def test_rate_limiter_shared_by_threads_grants_no_more_than_the_rate():
    # Real clock, many threads: counts grants inside a window; the bound is exact (never flaky),
    # the window short (0.5 s at 6000 rpm = 100/s -> at most 50 + burst).
    limiter = RateLimiter(6000, burst=2)
    window = 0.5
    start = time.monotonic()
    grants: list[float] = []
    lock = threading.Lock()

    def worker():
        while True:
            if not limiter.acquire(deadline=start + window):
                return
            with lock:
                grants.append(time.monotonic())

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert not any(t.is_alive() for t in threads)
    assert 1 <= len(grants) <= window * 100 + 2 + 1


def test_redis_limiter_serves_more_threads_than_its_connection_pool(redis_url):
    # The threads backend runs up to 512 workers through one limiter: beyond the pool's connections a
    # thread waits for one (redis-py's plain pool would raise MaxConnectionsError past 100).
    limiter = RedisRateLimiter(None, url=redis_url, tpm=10_000_000, key=f"fortuna:test:{uuid.uuid4().hex}")
    errors: list[BaseException] = []
    barrier = threading.Barrier(REDIS_POOL_SIZE * 3)

    def acquire() -> None:
        try:
            barrier.wait(timeout=10)
            for _ in range(5):
                assert limiter.acquire_lane(tokens=10) == LANE_BATCH
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=acquire) for _ in range(REDIS_POOL_SIZE * 3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    limiter.close()
    assert errors == []
