"""The one path of every outbound model call: call_with_retries(), with the account limiter as its
collaborator; the on-demand time budget (Budget, BudgetedClient)."""


import math
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import tenacity

from core.fortunes.inputs import GenerationInput
from core.fortunes.providers.base import (
    RETRYABLE_CLIENT_STATUSES,
    FailureReason,
    Generated,
    Provider,
    ProviderError,
)
from core.limiter import (
    DEFAULT_PAUSE,
    LANE_BATCH,
    LANE_ON_DEMAND,
    RateLimiter,
    RedisRateLimiter,
    estimated_tokens,
)
from core.resilience.policy import (
    ON_DEMAND_NO_SLOT,
    RETRY_AFTER_OVER_CAP,
    SLOT_NOW_SECONDS,
    RetryPolicy,
    _Deadline,
    retrying,
)


@dataclass
class Attempted:
    """The outcome of one round: `generated` on success, else the last `error`.

    `stopped` is True when the round ended because of the stop event or the deadline, not because
    the provider failed for good: such an input is neither done nor failed (the next run retries it).
    """

    generated: Generated | None
    error: ProviderError | None
    attempts: int
    stopped: bool = False
    # The failed attempts the server billed all the same (invalid, truncated, refused answers), as
    # (service_tier, tokens_in, tokens_out): the caller counts them in the run's tokens and cost.
    billed_failures: list[tuple[str, int, int]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.generated is not None


class _Stopped(Exception):
    """Raised inside an attempt that must not start (stop event, no rate-limiter slot in time)."""


def _provider_retryable(exc: BaseException) -> bool:
    if not isinstance(exc, ProviderError) or not exc.retryable:
        return False
    # Whatever a provider says, a 4xx other than 408/409/429 fails the same way however often it is sent.
    status = exc.status_code
    return status is None or not 400 <= status < 500 or status in RETRYABLE_CLIENT_STATUSES


def _provider_retry_after(exc: BaseException) -> float | None:
    return exc.retry_after if isinstance(exc, ProviderError) else None


def _provider_describe(exc: BaseException) -> str:
    return str(getattr(exc, "reason", type(exc).__name__))


Limiter = RateLimiter | RedisRateLimiter


def request_tokens(limiter: Limiter | None, inp: GenerationInput) -> int:
    """The tokens to reserve for one request of `inp`: its estimate when the limiter counts tokens (a
    TPM, or a shared limiter, whose script may have learned one), else 0 (estimating renders the prompt)."""
    if limiter is None or (limiter.tpm is None and not isinstance(limiter, RedisRateLimiter)):
        return 0
    return estimated_tokens(inp)


@dataclass
class _Round:
    """What one call_with_retries round has seen so far."""

    attempts: int = 0
    last_error: ProviderError | None = None
    billed: list[tuple[str, int, int]] = field(default_factory=list)


def _take_slot(*, limiter: Limiter | None, lane: str, tokens: int, deadline: float | None, stop: threading.Event,
               min_attempt_seconds: float, clock: Callable[[], float]) -> str:
    """Before an attempt: refuse to start past the deadline or once stopped, then wait for the
    limiter's slot in `lane` no later than the deadline leaves an attempt's time (a slot free now is
    always taken: the retry loop decides whether an attempt is worth starting). Returns the lane charged.

    No slot in time ends a batch round as stopped (the next run asks again); in the on-demand lane it
    is a retryable rate_limited failure, for the person waiting to be told when to come back."""
    if stop.is_set() or (deadline is not None and clock() > deadline):
        raise _Stopped
    if limiter is None:
        return lane
    slot_by = None if deadline is None else max(clock() + SLOT_NOW_SECONDS, deadline - min_attempt_seconds)
    charged = limiter.acquire_lane(slot_by, stop=stop, tokens=tokens, lane=lane)
    if charged is not None:
        return charged
    if lane == LANE_ON_DEMAND and not stop.is_set():
        raise ProviderError(ON_DEMAND_NO_SLOT, reason=FailureReason.RATE_LIMITED, retryable=True,
                            retry_after=float(math.ceil(max(1.0, DEFAULT_PAUSE))))
    raise _Stopped


def _attempt(call: Callable[[], Generated], *, limiter: Limiter | None, lane: str, tokens: int,
             seen: _Round) -> Generated:
    """One HTTP attempt; the limiter learns what it cost: the answer's usage (a failed answer's too,
    when the server billed it) replaces the estimate, and a 429 pauses every lane."""
    seen.attempts += 1
    try:
        generated = call()
    except ProviderError as exc:
        seen.last_error = exc
        if exc.billed:
            seen.billed.append((exc.service_tier, exc.tokens_in, exc.tokens_out))
        if limiter is not None and exc.reason == FailureReason.RATE_LIMITED:
            limiter.backoff(error=exc)
        elif limiter is not None and exc.billed:
            limiter.reconcile(lane=lane, reserved=tokens, used=exc.tokens_in + exc.tokens_out)
        raise
    if limiter is not None:
        limiter.reconcile(lane=lane, reserved=tokens, used=generated.tokens_in + generated.tokens_out)
    return generated


def call_with_retries(
    call: Callable[[], Generated],
    *,
    policy: RetryPolicy,
    limiter: Limiter | None,
    lane: str = LANE_BATCH,
    tokens: int = 0,
    deadline: float | None = None,
    stop: threading.Event | None = None,
    sleep: Callable[[float], object] | None = None,
    rng: random.Random | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> Attempted:
    """The one path of an outbound model call (batch threads, Celery chunks, on-demand): up to
    policy.max_attempts calls of `call()` (one HTTP attempt each), each after a slot of `limiter`
    in `lane` reserving `tokens` (request_tokens), never started past `deadline` or once `stop` is set.

    `deadline` is on `clock`, which must be the limiter's clock. Retries only retryable ProviderErrors
    (a 4xx other than 408/409/429 never). A Retry-After within policy.max_retry_after is waited
    exactly; a longer one fails the round at once as quota_exhausted (still transient, so the
    end-of-run round may try it again). Other exceptions propagate: they are bugs, not outcomes.
    The wait between attempts is `sleep` (default: the stop event's wait, so a stop cuts it short).
    """
    stop = stop if stop is not None else threading.Event()
    seen = _Round()

    def attempt() -> Generated:
        try:
            charged = _take_slot(limiter=limiter, lane=lane, tokens=tokens, deadline=deadline, stop=stop,
                                 min_attempt_seconds=policy.min_attempt_seconds, clock=clock)
        except ProviderError as exc:  # no on-demand slot in time: the round's last error so far
            seen.last_error = exc
            raise
        return _attempt(call, limiter=limiter, lane=charged, tokens=tokens, seen=seen)

    past_deadline = _Deadline(deadline=deadline, min_attempt_seconds=policy.min_attempt_seconds, clock=clock)
    loop = retrying(policy=policy, retryable=_provider_retryable, retry_after=_provider_retry_after,
                    sleep=stop.wait if sleep is None else sleep, rng=rng, deadline=past_deadline,
                    describe=_provider_describe)
    try:
        generated = loop(attempt)
    except _Stopped:
        return Attempted(generated=None, error=seen.last_error, attempts=seen.attempts, stopped=True,
                         billed_failures=seen.billed)
    except ProviderError as exc:
        return _failed(exc, policy=policy, seen=seen, stopped=past_deadline.hit)
    return Attempted(generated=generated, error=None, attempts=seen.attempts, billed_failures=seen.billed)


def _failed(exc: ProviderError, *, policy: RetryPolicy, seen: _Round, stopped: bool) -> Attempted:
    """The round's outcome after its last error: stopped at the deadline, quota over the Retry-After
    cap, or failed with the error as it is."""
    error = exc
    if not stopped and exc.retryable and policy.over_cap(exc.retry_after):
        error = ProviderError(
            RETRY_AFTER_OVER_CAP.format(retry_after=exc.retry_after, cap=policy.max_retry_after),
            reason=FailureReason.QUOTA,
            retryable=False,
            retry_after=exc.retry_after,
            status_code=exc.status_code,
        )
        error.__cause__ = exc
    return Attempted(generated=None, error=error, attempts=seen.attempts, stopped=stopped, billed_failures=seen.billed)


# --- the on-demand path: one web request's time budget ------------------------------------------


@dataclass(frozen=True, slots=True)
class Budget:
    """A per-request time budget on the monotonic clock."""

    deadline: float
    clock: Callable[[], float] = time.monotonic

    @classmethod
    def start(cls, seconds: float, *, clock: Callable[[], float] = time.monotonic) -> "Budget":
        return cls(deadline=clock() + seconds, clock=clock)

    def remaining(self) -> float:
        return self.deadline - self.clock()

    def attempt_timeout(self, *, cap: float, floor: float) -> float:
        """The timeout for an attempt starting now: what is left (less a margin to answer in), at most
        `cap`, at least `floor`. Whole seconds: the openai provider caches one client per timeout value,
        so a handful of distinct values keeps that cache bounded in a long-lived web process."""
        return float(max(floor, min(cap, math.floor(self.remaining() - 0.5))))


class BudgetedClient:
    """The provider for each attempt of a budgeted request: built with a timeout that ends inside the
    budget, and rebuilt through `build(timeout)` with a shorter one when less time is left than the
    current client's timeout (the lock wait or an earlier attempt used some)."""

    def __init__(self, *, build: Callable[[float], Provider], budget: Budget, cap: float, floor: float) -> None:
        self._build = build
        self._budget = budget
        self._cap = cap
        self._floor = floor
        self.timeout = budget.attempt_timeout(cap=cap, floor=floor)
        self.provider = build(self.timeout)

    def generate(self, inp: GenerationInput) -> Generated:
        """One attempt, on a client whose timeout the budget still allows."""
        timeout = self._budget.attempt_timeout(cap=self._cap, floor=self._floor)
        if timeout < self.timeout:
            self.timeout = timeout
            self.provider = self._build(timeout)
        return self.provider.generate(inp)


def wait_until(
    condition: Callable[[], bool],
    *,
    deadline: float,
    interval: float,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], object] = time.sleep,
) -> bool:
    """Call `condition` every `interval` seconds until it is true (True) or the next try would come
    after `deadline` on `clock` (False). The first try is always made."""
    past_deadline = _Deadline(deadline=deadline, min_attempt_seconds=0.0, clock=clock)
    loop = tenacity.Retrying(
        retry=tenacity.retry_if_result(lambda done: not done),
        wait=tenacity.wait_fixed(interval),
        stop=past_deadline,
        sleep=sleep,
        retry_error_callback=lambda retry_state: False,
    )
    return bool(loop(condition))
