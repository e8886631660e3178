import datetime as dt
import random
import threading
import time

import pytest

from core.batch.retry import (
    RETRY_AFTER_OVER_CAP,
    RateLimiter,
    RetryPolicy,
    generate_with_retries,
    is_transient,
)
from core.fortunes.inputs import GenerationInput
from core.fortunes.providers.base import (
    REASON_BAD_REQUEST,
    REASON_CONFIG,
    REASON_CONNECTION,
    REASON_INVALID_OUTPUT,
    REASON_QUOTA,
    REASON_RATE_LIMITED,
    REASON_SERVER_ERROR,
    REASON_TIMEOUT,
    Generated,
    ProviderError,
)

INPUT = GenerationInput(for_date=dt.date(2030, 1, 2), year="甲子", month="丙寅", day="戊午", hour=None, gender="F")
OK = Generated(content=None, tokens_in=10, tokens_out=20)  # the content is not looked at here


def rate_limited(retry_after=None):
    return ProviderError("429", reason=REASON_RATE_LIMITED, retryable=True, retry_after=retry_after, status_code=429)


def server_error():
    return ProviderError("500", reason=REASON_SERVER_ERROR, retryable=True, status_code=500)


def timeout():
    return ProviderError("timed out", reason=REASON_TIMEOUT, retryable=True)


def invalid_output():
    return ProviderError("not JSON", reason=REASON_INVALID_OUTPUT, retryable=True)


def bad_request():
    return ProviderError("400", reason=REASON_BAD_REQUEST, retryable=False, status_code=400)


class ScriptedProvider:
    """Raises the scripted errors in order, then succeeds (or fails forever with `then`)."""

    name = "fake"
    model = ""
    generator = "fake"

    def __init__(self, *script, then=None):
        self.script = list(script)
        self.then = then
        self.calls = 0

    def generate(self, inp):
        self.calls += 1
        if self.script:
            error = self.script.pop(0)
            if error is not None:
                raise error
            return OK
        if self.then is not None:
            raise self.then()
        return OK


class Sleeps(list):
    def __call__(self, seconds):
        self.append(seconds)


def run(provider, *, max_attempts=5, max_retry_after=60.0, sleep=None, stop=None, rng=None, limiter=None, **kw):
    return generate_with_retries(
        provider=provider,
        inp=INPUT,
        policy=RetryPolicy(max_attempts=max_attempts, max_retry_after=max_retry_after),
        limiter=limiter or RateLimiter(None),
        stop=stop or threading.Event(),
        sleep=sleep if sleep is not None else Sleeps(),
        rng=rng or random.Random(1),
        **kw,
    )


@pytest.mark.parametrize("error", [rate_limited, server_error, timeout, invalid_output])
def test_retryable_errors_are_retried_until_success(error):
    provider = ScriptedProvider(error(), error(), None)
    sleeps = Sleeps()
    result = run(provider, sleep=sleeps)
    assert result.generated is OK and result.error is None and result.ok
    assert result.attempts == 3 == provider.calls
    assert len(sleeps) == 2


def test_gives_up_after_max_attempts_with_the_last_error():
    provider = ScriptedProvider(then=server_error)
    sleeps = Sleeps()
    result = run(provider, max_attempts=4, sleep=sleeps)
    assert not result.ok and not result.stopped
    assert result.attempts == 4 == provider.calls
    assert result.error.reason == REASON_SERVER_ERROR
    assert len(sleeps) == 3  # no sleep after the last attempt


def test_one_attempt_budget_means_no_retry():
    provider = ScriptedProvider(then=timeout)
    result = run(provider, max_attempts=1)
    assert result.attempts == 1 == provider.calls
    assert result.error.reason == REASON_TIMEOUT


@pytest.mark.parametrize(
    "error",
    [bad_request, lambda: ProviderError("misconfigured", reason=REASON_CONFIG, retryable=False)],
)
def test_non_retryable_errors_are_never_retried(error):
    provider = ScriptedProvider(then=error)
    sleeps = Sleeps()
    result = run(provider, sleep=sleeps)
    assert result.attempts == 1 == provider.calls
    assert sleeps == []
    assert result.error.retryable is False


def test_retry_after_is_waited_exactly():
    provider = ScriptedProvider(rate_limited(retry_after=7.5), rate_limited(retry_after=0), None)
    sleeps = Sleeps()
    result = run(provider, sleep=sleeps)
    assert result.ok and result.attempts == 3
    assert sleeps == [7.5, 0.0]


def test_retry_after_at_the_cap_is_still_waited():
    sleeps = Sleeps()
    result = run(ScriptedProvider(rate_limited(retry_after=60), None), max_retry_after=60, sleep=sleeps)
    assert result.ok and sleeps == [60]


def test_retry_after_over_the_cap_fails_at_once_as_quota_exhausted():
    provider = ScriptedProvider(then=lambda: rate_limited(retry_after=3600))
    sleeps = Sleeps()
    result = run(provider, max_retry_after=60, sleep=sleeps)
    assert result.attempts == 1 == provider.calls
    assert sleeps == []
    assert result.error.reason == REASON_QUOTA
    assert result.error.retryable is False
    assert str(result.error) == RETRY_AFTER_OVER_CAP.format(retry_after=3600, cap=60)
    assert result.error.__cause__.reason == REASON_RATE_LIMITED
    assert is_transient(result.error)  # the end-of-run round may try it again


@pytest.mark.parametrize(
    ("reason", "transient"),
    [
        (REASON_RATE_LIMITED, True),
        (REASON_QUOTA, True),
        (REASON_SERVER_ERROR, True),
        (REASON_TIMEOUT, True),
        (REASON_CONNECTION, True),
        (REASON_INVALID_OUTPUT, True),
        (REASON_BAD_REQUEST, False),
        (REASON_CONFIG, False),
    ],
)
def test_is_transient(reason, transient):
    assert is_transient(ProviderError("x", reason=reason, retryable=False)) is transient


def test_full_jitter_delays_stay_within_the_exponential_bounds():
    policy = RetryPolicy(max_attempts=8, max_retry_after=60, base_delay=0.5, max_delay=4.0)
    bounds = [policy.backoff_bound(n) for n in range(1, 8)]
    assert bounds == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0, 4.0]
    seen = [[] for _ in bounds]
    for seed in range(200):
        sleeps = Sleeps()
        generate_with_retries(
            provider=ScriptedProvider(then=server_error),
            inp=INPUT,
            policy=policy,
            limiter=RateLimiter(None),
            stop=threading.Event(),
            sleep=sleeps,
            rng=random.Random(seed),
        )
        assert len(sleeps) == 7
        for i, delay in enumerate(sleeps):
            assert 0 <= delay <= bounds[i]
            seen[i].append(delay)
    # Full jitter spreads over the whole range, not a fixed delay plus a little noise.
    for i, delays in enumerate(seen):
        assert min(delays) < 0.2 * bounds[i] and max(delays) > 0.8 * bounds[i]


def test_a_set_stop_event_aborts_before_any_attempt():
    stop = threading.Event()
    stop.set()
    provider = ScriptedProvider()
    result = run(provider, stop=stop)
    assert result.stopped and result.attempts == 0 and provider.calls == 0
    assert result.generated is None and result.error is None


def test_stop_during_the_backoff_ends_the_round_without_another_attempt():
    stop = threading.Event()

    def sleep_then_stop(seconds):
        stop.set()

    provider = ScriptedProvider(then=server_error)
    result = run(provider, stop=stop, sleep=sleep_then_stop)
    assert result.stopped and result.attempts == 1 == provider.calls
    assert result.error.reason == REASON_SERVER_ERROR


def test_the_default_sleep_is_interrupted_by_the_stop_event():
    stop = threading.Event()
    provider = ScriptedProvider(then=lambda: rate_limited(retry_after=30))
    threading.Timer(0.05, stop.set).start()
    result = generate_with_retries(
        provider=provider,
        inp=INPUT,
        policy=RetryPolicy(max_attempts=5, max_retry_after=60),
        limiter=RateLimiter(None),
        stop=stop,
    )
    # Had it slept the 30 s Retry-After, the test would time out; it returns as soon as stop is set.
    assert result.stopped and result.attempts == 1


def test_a_deadline_that_the_backoff_would_pass_stops_the_round():
    clock = FakeClock()
    provider = ScriptedProvider(then=lambda: rate_limited(retry_after=10))
    result = run(provider, deadline=clock.now + 5.0, clock=clock, limiter=RateLimiter(None, clock=clock))
    assert result.stopped and result.attempts == 1


def test_every_attempt_waits_for_the_rate_limiter():
    class CountingLimiter(RateLimiter):
        acquired = 0

        def acquire(self, deadline=None, *, stop=None):
            CountingLimiter.acquired += 1
            return True

    provider = ScriptedProvider(timeout(), server_error(), None)
    result = run(provider, limiter=CountingLimiter(None))
    assert result.ok and CountingLimiter.acquired == 3 == provider.calls


def test_a_limiter_refusal_stops_the_round():
    class Refusing(RateLimiter):
        def acquire(self, deadline=None, *, stop=None):
            return False

    provider = ScriptedProvider()
    result = run(provider, limiter=Refusing(60))
    assert result.stopped and provider.calls == 0


# --- RateLimiter --------------------------------------------------------------------------------


class FakeClock:
    def __init__(self, now: float = 100.0):
        self.now = now

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.now += seconds


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
