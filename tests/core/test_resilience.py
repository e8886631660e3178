import datetime as dt
import functools
import math
import random
import threading

import pytest
from django.db import IntegrityError, InterfaceError, OperationalError
from django.utils import timezone

from core import resilience
from core.fortunes.inputs import GenerationInput
from core.fortunes.providers.base import FailureReason, Generated, ProviderError, retry_after_seconds
from core.limiter import LANE_BATCH, LANE_ON_DEMAND, RateLimiter
from core.resilience import (
    MAX_ATTEMPTS_INVALID,
    ON_DEMAND_NO_SLOT,
    RETRY_AFTER_OVER_CAP,
    Budget,
    BudgetedClient,
    DatabaseUnavailable,
    RetryPolicy,
    call_with_retries,
    db_call,
    is_transient,
    wait_until,
)
from tests.fakes import FakeClock

INPUT = GenerationInput(for_date=dt.date(2030, 1, 2), year="甲子", month="丙寅", day="戊午", hour=None, gender="F")
OK = Generated(content=None, tokens_in=10, tokens_out=20)  # the content is not looked at here


def rate_limited(retry_after=None):
    return ProviderError(
        "429", reason=FailureReason.RATE_LIMITED, retryable=True, retry_after=retry_after, status_code=429
    )


def server_error():
    return ProviderError("500", reason=FailureReason.SERVER_ERROR, retryable=True, status_code=500)


def timeout():
    return ProviderError("timed out", reason=FailureReason.TIMEOUT, retryable=True)


def invalid_output():
    return ProviderError("not JSON", reason=FailureReason.INVALID_OUTPUT, retryable=True)


def bad_request():
    return ProviderError("400", reason=FailureReason.BAD_REQUEST, retryable=False, status_code=400)


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
    return call_with_retries(
        functools.partial(provider.generate, INPUT),
        policy=RetryPolicy(max_attempts=max_attempts, max_retry_after=max_retry_after),
        limiter=limiter,
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
    assert result.error.reason == FailureReason.SERVER_ERROR
    assert len(sleeps) == 3  # no sleep after the last attempt


def test_one_attempt_budget_means_no_retry():
    provider = ScriptedProvider(then=timeout)
    result = run(provider, max_attempts=1)
    assert result.attempts == 1 == provider.calls
    assert result.error.reason == FailureReason.TIMEOUT


@pytest.mark.parametrize(
    "error",
    [bad_request, lambda: ProviderError("misconfigured", reason=FailureReason.CONFIG, retryable=False)],
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
    assert result.error.reason == FailureReason.QUOTA
    assert result.error.retryable is False
    assert str(result.error) == RETRY_AFTER_OVER_CAP.format(retry_after=3600, cap=60)
    assert result.error.__cause__.reason == FailureReason.RATE_LIMITED
    assert is_transient(result.error)  # the end-of-run round may try it again


@pytest.mark.parametrize(
    ("reason", "transient"),
    [
        (FailureReason.RATE_LIMITED, True),
        (FailureReason.QUOTA, True),
        (FailureReason.SERVER_ERROR, True),
        (FailureReason.TIMEOUT, True),
        (FailureReason.CONNECTION, True),
        (FailureReason.INVALID_OUTPUT, True),
        (FailureReason.BAD_REQUEST, False),
        (FailureReason.CONFIG, False),
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
        call_with_retries(
            functools.partial(ScriptedProvider(then=server_error).generate, INPUT),
            policy=policy,
            limiter=None,
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
    assert result.error.reason == FailureReason.SERVER_ERROR


def test_the_default_sleep_is_interrupted_by_the_stop_event():
    stop = threading.Event()
    provider = ScriptedProvider(then=lambda: rate_limited(retry_after=30))
    threading.Timer(0.05, stop.set).start()
    result = call_with_retries(
        functools.partial(provider.generate, INPUT),
        policy=RetryPolicy(max_attempts=5, max_retry_after=60),
        limiter=None,
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

        def acquire_lane(self, deadline=None, *, stop=None, tokens=0, lane=LANE_BATCH):
            CountingLimiter.acquired += 1
            return lane

    provider = ScriptedProvider(timeout(), server_error(), None)
    result = run(provider, limiter=CountingLimiter(None))
    assert result.ok and CountingLimiter.acquired == 3 == provider.calls


def test_a_limiter_refusal_stops_the_round():
    class Refusing(RateLimiter):
        def acquire_lane(self, deadline=None, *, stop=None, tokens=0, lane=LANE_BATCH):
            return None

    provider = ScriptedProvider()
    result = run(provider, limiter=Refusing(60))
    assert result.stopped and provider.calls == 0


# --- Retry-After ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after-ms": "1500", "retry-after": "9"}, 1.5),
        ({"retry-after": "12"}, 12.0),
        ({"retry-after": "0.5"}, 0.5),
        ({"retry-after": "soon"}, None),
        ({}, None),
    ],
)
def test_retry_after_seconds(headers, expected):
    assert retry_after_seconds(headers) == expected


def test_retry_after_as_an_http_date():
    when = timezone.now() + dt.timedelta(seconds=90)
    seconds = retry_after_seconds({"retry-after": when.strftime("%a, %d %b %Y %H:%M:%S GMT")})
    assert 80 < seconds <= 90


# --- RetryPolicy ---------------------------------------------------------------------------------


def test_a_policy_without_attempts_is_refused_with_its_message():
    with pytest.raises(ValueError) as caught:
        RetryPolicy(max_attempts=0, max_retry_after=1)
    assert str(caught.value) == MAX_ATTEMPTS_INVALID.format(max_attempts=0)


def test_without_jitter_the_delay_is_the_exponential_bound_itself():
    policy = RetryPolicy(max_attempts=5, max_retry_after=5, base_delay=0.5, max_delay=1.5, jitter=False)
    rng = random.Random(1)
    assert [policy.delay(failures=n, retry_after=None, rng=rng) for n in (1, 2, 3, 4)] == [0.5, 1.0, 1.5, 1.5]
    assert policy.delay(failures=1, retry_after=3.0, rng=rng) == 3.0


# --- the on-demand budget ------------------------------------------------------------------------


class ClockedProvider(ScriptedProvider):
    """A scripted provider whose every attempt takes `duration` on a fake clock."""

    def __init__(self, clock, *script, duration=0.0, then=None):
        super().__init__(*script, then=then)
        self.clock = clock
        self.duration = duration

    def generate(self, inp):
        self.clock.now += self.duration
        return super().generate(inp)


def budgeted(clock, provider, *, seconds, cap=10.0, floor=1.0):
    built: list[float] = []

    def build(timeout):
        built.append(timeout)
        return provider

    budget = Budget.start(seconds, clock=clock)
    return BudgetedClient(build=build, budget=budget, cap=cap, floor=floor), budget, built


def within_budget(client, *, budget, policy, sleep, rng=None, limiter=None):
    """One on-demand generation, as core.services.fortunes makes it."""
    return call_with_retries(functools.partial(client.generate, INPUT), policy=policy, limiter=limiter,
                             lane=LANE_ON_DEMAND, deadline=budget.deadline, clock=budget.clock, sleep=sleep, rng=rng)


def test_the_attempt_timeout_is_what_the_budget_leaves_in_whole_seconds_between_floor_and_cap():
    clock = FakeClock()
    budget = Budget.start(20, clock=clock)
    assert budget.attempt_timeout(cap=15, floor=1) == 15.0
    clock.now += 12.2
    assert budget.remaining() == pytest.approx(7.8)
    assert budget.attempt_timeout(cap=15, floor=1) == 7.0  # floor(7.8 - 0.5)
    clock.now += 7.5
    assert budget.attempt_timeout(cap=15, floor=1) == 1.0


def test_a_budgeted_client_is_rebuilt_when_less_time_is_left():
    clock = FakeClock()
    provider = ClockedProvider(clock, server_error(), None, duration=4.0)
    client, budget, built = budgeted(clock, provider, seconds=12, cap=10)
    sleeps = Sleeps()
    policy = RetryPolicy(max_attempts=3, max_retry_after=math.inf, min_attempt_seconds=1.0)
    result = within_budget(client, budget=budget, policy=policy, sleep=sleeps, rng=random.Random(1))
    assert result.ok and result.attempts == 2
    assert built == [10.0, 7.0]  # 12 s left at first, about 8 s at the second attempt
    assert client.timeout == 7.0


def test_the_first_attempt_is_made_even_with_less_than_the_minimum_left():
    clock = FakeClock()
    provider = ClockedProvider(clock, then=timeout, duration=0.5)
    client, budget, _ = budgeted(clock, provider, seconds=0.8)
    policy = RetryPolicy(max_attempts=3, max_retry_after=math.inf, min_attempt_seconds=1.0)
    result = within_budget(client, budget=budget, policy=policy, sleep=Sleeps())
    assert provider.calls == 1 and result.attempts == 1
    assert result.stopped and result.error.reason == FailureReason.TIMEOUT


def test_a_retry_that_would_leave_less_than_the_minimum_is_not_started():
    clock = FakeClock()
    # 5 s budget; the first attempt takes 3 s; a 1.5 s Retry-After would leave 0.5 s < 1 s.
    provider = ClockedProvider(clock, rate_limited(retry_after=1.5), None, duration=3.0)
    client, budget, _ = budgeted(clock, provider, seconds=5)
    sleeps = Sleeps()
    policy = RetryPolicy(max_attempts=3, max_retry_after=math.inf, min_attempt_seconds=1.0)
    result = within_budget(client, budget=budget, policy=policy, sleep=sleeps)
    assert provider.calls == 1 and sleeps == []
    assert result.stopped and result.error.reason == FailureReason.RATE_LIMITED


def test_a_retry_after_the_budget_allows_is_waited_even_above_the_batch_cap():
    clock = FakeClock()
    provider = ClockedProvider(clock, rate_limited(retry_after=2.0), None)
    client, budget, _ = budgeted(clock, provider, seconds=10)
    sleeps = Sleeps()
    policy = RetryPolicy(max_attempts=3, max_retry_after=math.inf, min_attempt_seconds=1.0)
    result = within_budget(client, budget=budget, policy=policy, sleep=sleeps)
    assert result.ok and sleeps == [2.0]


# --- wait_until ----------------------------------------------------------------------------------


def test_wait_until_returns_as_soon_as_the_condition_holds():
    clock = FakeClock()
    answers = iter([False, False, True])
    assert wait_until(lambda: next(answers), deadline=clock.now + 5, interval=0.5, clock=clock, sleep=clock.sleep)
    assert clock.now == 101.0  # two waits of 0.5 s


def test_wait_until_gives_up_before_a_try_that_would_come_after_the_deadline():
    clock = FakeClock()
    tries = []

    def never():
        tries.append(clock.now)
        return False

    assert wait_until(never, deadline=clock.now + 1.2, interval=0.5, clock=clock, sleep=clock.sleep) is False
    assert tries == [100.0, 100.5, 101.0]


def test_wait_until_always_tries_once():
    clock = FakeClock()
    assert wait_until(lambda: True, deadline=clock.now - 1, interval=0.5, clock=clock, sleep=clock.sleep)


# --- the on-demand lane of the account limiter -----------------------------------------------------


def test_on_demand_attempts_take_the_reserved_lane_that_a_saturated_batch_cannot_take():
    # 1 RPM, 10 % reserved: the batch's next slot is ~67 s away once taken, the on-demand lane's 600 s.
    clock = FakeClock()  # the limiter's and the budgets' one clock
    limiter = RateLimiter(1, reserve=0.1, clock=clock, sleep=clock.sleep)
    assert limiter.acquire(lane=LANE_BATCH)  # the batch holds every slot it may have
    provider = ScriptedProvider()
    policy = RetryPolicy(max_attempts=1, max_retry_after=math.inf, min_attempt_seconds=1.0)

    def on_demand():
        budget = Budget.start(5, clock=clock)
        return within_budget(BudgetedClient(build=lambda timeout: provider, budget=budget, cap=10, floor=1),
                             budget=budget, policy=policy, sleep=Sleeps(), limiter=limiter)

    first, second = on_demand(), on_demand()
    assert first.ok and provider.calls == 1  # the reserve: a user's request got through
    assert not second.ok and provider.calls == 1  # the reserve is spent and the batch's slots are not free
    assert second.error.reason == FailureReason.RATE_LIMITED and str(second.error) == ON_DEMAND_NO_SLOT


def test_no_on_demand_slot_is_asked_again_while_the_budget_allows_and_is_no_http_attempt():
    clock = FakeClock()
    limiter = RateLimiter(1, reserve=0.1, clock=clock, sleep=clock.sleep)
    assert limiter.acquire(lane=LANE_BATCH) and limiter.acquire(lane=LANE_ON_DEMAND)  # both lanes spent
    provider = ScriptedProvider()
    budget = Budget.start(4, clock=clock)
    policy = RetryPolicy(max_attempts=3, max_retry_after=math.inf, min_attempt_seconds=1.0)
    client = BudgetedClient(build=lambda timeout: provider, budget=budget, cap=10, floor=1)
    result = within_budget(client, budget=budget, policy=policy, sleep=clock.sleep, limiter=limiter)
    assert (result.ok, result.attempts, provider.calls) == (False, 0, 0)
    assert str(result.error) == ON_DEMAND_NO_SLOT and result.error.retry_after == 1.0
    assert clock.now == 102.0  # asked three times, a second apart, within the 4 s budget


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
def test_a_4xx_no_retry_can_fix_is_attempted_once_whatever_the_provider_says(status):
    provider = ScriptedProvider(then=lambda: ProviderError(str(status), reason=FailureReason.SERVER_ERROR,
                                                           retryable=True, status_code=status))
    result = run(provider)
    assert (result.ok, result.attempts, provider.calls) == (False, 1, 1)


@pytest.mark.parametrize("status", [408, 409])
def test_408_and_409_are_retried(status):
    provider = ScriptedProvider(ProviderError(str(status), reason=FailureReason.SERVER_ERROR, retryable=True,
                                              status_code=status))
    result = run(provider)
    assert (result.ok, result.attempts) == (True, 2)


def test_the_usage_of_billed_failures_is_kept_whether_the_round_succeeds_or_not():
    def billed():
        return ProviderError("cut off", reason=FailureReason.INVALID_OUTPUT, retryable=True, tokens_in=100,
                             tokens_out=900, service_tier="default")

    ok = run(ScriptedProvider(billed(), server_error(), billed()))
    assert ok.ok and ok.billed_failures == [("default", 100, 900)] * 2
    failed = run(ScriptedProvider(then=billed), max_attempts=3)
    assert not failed.ok and failed.billed_failures == [("default", 100, 900)] * 3


class RecordingLimiter(RateLimiter):
    """An unlimited limiter that records what the call path tells it."""

    def __init__(self):
        super().__init__(None, tpm=None)
        self.events = []

    def acquire_lane(self, deadline=None, *, stop=None, tokens=0, lane=LANE_BATCH):
        self.events.append(("slot", lane, tokens))
        return lane

    def reconcile(self, *, lane, reserved, used):
        self.events.append(("reconcile", lane, reserved, used))

    def backoff(self, *, error, max_pause=60.0):
        self.events.append(("backoff", error.reason))


def test_the_limiter_reserves_before_each_attempt_and_learns_each_answers_cost():
    billed = ProviderError("cut off", reason=FailureReason.INVALID_OUTPUT, retryable=True, tokens_in=100,
                           tokens_out=900, service_tier="default")
    limiter = RecordingLimiter()
    result = run(ScriptedProvider(rate_limited(retry_after=0), billed, server_error(), None), limiter=limiter,
                 tokens=500)
    assert result.ok and result.attempts == 4
    assert limiter.events == [
        ("slot", LANE_BATCH, 500), ("backoff", FailureReason.RATE_LIMITED),  # a 429 pauses everyone
        ("slot", LANE_BATCH, 500), ("reconcile", LANE_BATCH, 500, 1000),  # a billed failure's usage
        ("slot", LANE_BATCH, 500),  # an unbilled failure leaves the estimate
        ("slot", LANE_BATCH, 500), ("reconcile", LANE_BATCH, 500, 30),  # the answer's usage
    ]


# --- the database retry policy ------------------------------------------------------------------


class _Broken:
    """fn for db_call: fails `failures` times with `error`, then answers."""

    def __init__(self, failures: int, error: Exception) -> None:
        self.failures, self.error, self.calls = failures, error, 0

    def __call__(self):
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return "answer"


@pytest.mark.django_db(transaction=True)  # outside any transaction, as the batch is
def test_a_database_step_is_retried_on_a_fresh_connection_until_it_succeeds(monkeypatch):
    closed = []
    monkeypatch.setattr(resilience.database, "db_connection_reset", lambda using="default": closed.append(using))
    clock = FakeClock(0.0)
    fn = _Broken(3, OperationalError("server closed the connection unexpectedly"))
    assert db_call(fn, what="testing", window=60, sleep=clock.sleep, clock=clock) == "answer"
    assert fn.calls == 4 and closed == ["default"] * 3  # each retry after the broken connection was dropped
    assert 0 < clock() <= 3 * resilience.database.DB_MAX_DELAY


@pytest.mark.django_db(transaction=True)
def test_a_database_down_past_the_window_stops_with_a_clear_error(monkeypatch):
    monkeypatch.setattr(resilience.database, "db_connection_reset", lambda using="default": None)
    clock = FakeClock(0.0)
    fn = _Broken(10**6, InterfaceError("connection already closed"))
    with pytest.raises(DatabaseUnavailable, match="stayed unavailable for .* while testing: InterfaceError"):
        db_call(fn, what="testing", window=30, sleep=clock.sleep, clock=clock)
    assert clock() <= 30 and fn.calls > 3


@pytest.mark.django_db(transaction=True)
def test_only_connection_errors_are_retried_unless_asked():
    fn = _Broken(1, IntegrityError("fk"))
    with pytest.raises(IntegrityError):
        db_call(fn, what="testing", window=30, sleep=lambda s: None)
    assert fn.calls == 1
    fn = _Broken(1, IntegrityError("fk"))
    assert db_call(fn, what="testing", window=30, sleep=lambda s: None, also_retry=(IntegrityError,)) == "answer"


@pytest.mark.django_db
def test_inside_a_callers_transaction_nothing_is_retried():
    fn = _Broken(1, OperationalError("gone"))
    with pytest.raises(OperationalError):
        db_call(fn, what="testing", window=30, sleep=lambda s: None)
    assert fn.calls == 1
