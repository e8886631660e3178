"""The limiter's algorithm exists twice, in Python (RateLimiter) and in Lua (RedisRateLimiter's scripts):
a property test holds the two equal on random schedules, both on one fake clock.

The Lua scripts read Redis's TIME unless given a last "now" argument; the test appends its fake clock's
reading to every script call the Redis limiter makes (so its own argument building and answer parsing
are exercised too). Redis stores times with microseconds ('%.6f'): every time, interval and deadline
here is a multiple of 1/64 s, exact in binary and in six decimals, so the two must agree exactly
rather than within a rounding error that could flip a decision at a boundary.
"""

import uuid
from fractions import Fraction

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from core.limiter import LANES, RateLimiter, RedisRateLimiter
from tests.fakes import FakeClock

TICK = 1 / 64
START = 1000.0

# Limits whose intervals (60 / (limit · share), share 1 or 0.5) are whole ticks; 0 = no limit.
RPMS = [0, 60, 120, 240, 480, 960]
TPMS = [0, 1920, 3840]

# Mostly no time or a little between calls (so lanes contend and borrow), sometimes seconds (so they idle).
ticks = st.one_of(st.just(0), st.integers(min_value=0, max_value=32), st.integers(min_value=0, max_value=640)).map(
    lambda n: n * TICK)
reserve_step = st.tuples(
    st.just("reserve"), ticks, st.integers(min_value=0, max_value=400), st.sampled_from(LANES),
    st.one_of(st.none(), ticks),
)
adjust_step = st.tuples(st.just("adjust"), ticks, st.integers(min_value=-200, max_value=400),
                        st.sampled_from(LANES))
learn_step = st.tuples(st.just("learn"), ticks, ticks, st.sampled_from(RPMS), st.sampled_from(TPMS))
schedules = st.lists(st.one_of(reserve_step, reserve_step, reserve_step, adjust_step, learn_step),
                     min_size=10, max_size=60)
configs = st.fixed_dictionaries({
    "rpm": st.sampled_from(RPMS), "tpm": st.sampled_from(TPMS), "burst": st.integers(min_value=1, max_value=3),
    "reserve": st.sampled_from([0.0, 0.5]),
})


def _on_fake_clock(script, clock: FakeClock):
    def call(*, keys, args=()):
        return script(keys=keys, args=[*args, f"{clock.now:.6f}"])
    return call


def _exact(value: float) -> bool:
    return Fraction(value).denominator <= 64


# No shrinking: a failing schedule is reported as found (the assertion names the step), in bounded time.
@settings(max_examples=100, deadline=None, phases=[Phase.explicit, Phase.reuse, Phase.generate],
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(config=configs, schedule=schedules)
def test_the_lua_script_decides_as_the_python_limiter_does(redis_url, config, schedule):
    clock = FakeClock(START)
    local = RateLimiter(config["rpm"], tpm=config["tpm"], burst=config["burst"], reserve=config["reserve"],
                        clock=clock)
    shared = RedisRateLimiter(config["rpm"], tpm=config["tpm"], burst=config["burst"], reserve=config["reserve"],
                              url=redis_url, key=f"test:limiter-equal:{uuid.uuid4().hex}", clock=clock)
    for name in ("_reserve_script", "_adjust_script", "_learn_script", "_pause_script"):
        setattr(shared, name, _on_fake_clock(getattr(shared, name), clock))
    try:
        for n, step in enumerate(schedule):
            kind, advance = step[0], step[1]
            clock.now += advance
            if kind == "reserve":
                _, _, tokens, lane, max_wait = step
                expected = local._reserve(lane=lane, tokens=tokens, max_wait=max_wait)
                got = shared._reserve(lane=lane, tokens=tokens, max_wait=max_wait)
                assert got == expected, (n, step, expected, got)
                assert expected is None or _exact(expected[1]), "the schedule left the 1/64 s grid"
            elif kind == "adjust":
                _, _, tokens, lane = step
                local._adjust(lane=lane, tokens=tokens)
                shared._adjust(lane=lane, tokens=tokens)
            else:
                _, _, pause, rpm, tpm = step
                local._learn(pause=pause, rpm=rpm or None, tpm=tpm or None)
                shared._learn(pause=pause, rpm=rpm or None, tpm=tpm or None)
            assert shared._pause_left() == local._pause_left(), (n, step)
            assert shared.degraded is False  # every answer came from Redis, not the in-process fallback
    finally:
        shared.clear()
        shared.close()


def test_the_scripts_use_redis_time_without_a_now_argument(redis_url):
    """Production passes no "now": the scripts read Redis's clock (a slot at once, the next a second later)."""
    limiter = RedisRateLimiter(60, url=redis_url, key=f"test:limiter-equal:{uuid.uuid4().hex}")
    try:
        assert limiter._reserve(lane=LANES[0], tokens=0, max_wait=0.0) == (LANES[0], pytest.approx(0.0, abs=0.05))
        assert limiter._reserve(lane=LANES[0], tokens=0, max_wait=None)[1] == pytest.approx(1.0, abs=0.05)
        assert limiter._pause_left() == 0.0
    finally:
        limiter.clear()
        limiter.close()
