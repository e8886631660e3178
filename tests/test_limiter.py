import threading
import time

import pytest

from core.limiter import RateLimiter


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
