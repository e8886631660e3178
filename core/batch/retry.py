"""Retries with full-jitter backoff and a client-side rate limit shared by every worker thread.

Every provider.generate() call is one HTTP attempt (the providers turn the SDK's own retries off),
so max_attempts here is the only retry budget: two retry loops never multiply.
"""

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from core.fortunes.inputs import GenerationInput
from core.fortunes.providers.base import (
    REASON_CONNECTION,
    REASON_INVALID_OUTPUT,
    REASON_QUOTA,
    REASON_RATE_LIMITED,
    REASON_SERVER_ERROR,
    REASON_TIMEOUT,
    Generated,
    Provider,
    ProviderError,
)

logger = logging.getLogger("fortuna.batch")

TRANSIENT_REASONS = frozenset(
    {REASON_RATE_LIMITED, REASON_QUOTA, REASON_SERVER_ERROR, REASON_TIMEOUT, REASON_CONNECTION, REASON_INVALID_OUTPUT}
)
RETRY_AFTER_OVER_CAP = "The server asked to wait {retry_after:.0f} s before retrying, over the {cap:.0f} s cap."
RPM_INVALID = "rpm must be a positive whole number or None/0 for no limit, got {rpm!r}."
BURST_INVALID = "burst must be at least 1, got {burst!r}."

_rng = random.Random()


def is_transient(error: ProviderError) -> bool:
    """Worth another round after a cool-down (the end-of-run second pass), as opposed to a bad request."""
    return error.reason in TRANSIENT_REASONS


class RateLimiter:
    """At most `rpm` acquisitions per minute across all threads, evenly spaced, with an optional burst.

    A virtual-scheduling token bucket (GCRA): each acquire reserves the next free slot under a lock,
    then sleeps outside it until that slot, so waiting threads never serialise on the lock.
    """

    def __init__(
        self,
        rpm: int | None,
        *,
        burst: int = 1,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], object] = time.sleep,
    ) -> None:
        if rpm is not None and (not isinstance(rpm, int) or rpm < 0):
            raise ValueError(RPM_INVALID.format(rpm=rpm))
        if burst < 1:
            raise ValueError(BURST_INVALID.format(burst=burst))
        self.rpm = rpm or None
        self.burst = burst
        self._clock = clock
        self._sleep = sleep
        self._interval = 60.0 / self.rpm if self.rpm else 0.0
        self._tolerance = (burst - 1) * self._interval
        self._tat: float | None = None  # theoretical arrival time of the next request
        self._lock = threading.Lock()

    @property
    def unlimited(self) -> bool:
        return self.rpm is None

    def acquire(self, deadline: float | None = None, *, stop: threading.Event | None = None) -> bool:
        """Wait for a slot. False if the slot would come after `deadline` (clock-based) or `stop` is set."""
        if stop is not None and stop.is_set():
            return False
        now = self._clock()
        if self.unlimited:
            return deadline is None or now <= deadline
        with self._lock:
            tat = now if self._tat is None else max(self._tat, now)
            start = max(now, tat - self._tolerance)
            if deadline is not None and start > deadline:
                return False
            self._tat = tat + self._interval
        wait = start - now
        if wait > 0:
            if stop is not None:
                if stop.wait(wait):
                    return False
            else:
                self._sleep(wait)
        return True


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int
    max_retry_after: float
    base_delay: float = 0.5
    max_delay: float = 30.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {self.max_attempts}.")

    @classmethod
    def from_settings(cls, *, max_attempts: int | None = None) -> "RetryPolicy":
        from django.conf import settings

        return cls(
            max_attempts=max_attempts or settings.FORTUNE_MAX_ATTEMPTS,
            max_retry_after=float(settings.FORTUNE_MAX_RETRY_AFTER),
        )

    def backoff_bound(self, failures: int) -> float:
        """Upper bound of the full-jitter delay after the `failures`-th failed attempt (1-based)."""
        return min(self.max_delay, self.base_delay * 2 ** (failures - 1))


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

    @property
    def ok(self) -> bool:
        return self.generated is not None


def generate_with_retries(
    *,
    provider: Provider,
    inp: GenerationInput,
    policy: RetryPolicy,
    limiter: RateLimiter,
    stop: threading.Event,
    sleep: Callable[[float], object] | None = None,
    rng: random.Random | None = None,
    deadline: float | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> Attempted:
    """Generate one input: up to policy.max_attempts HTTP attempts, each after a rate-limiter slot.

    Retries only retryable ProviderErrors. A Retry-After within policy.max_retry_after is waited
    exactly; a longer one fails the round at once as quota_exhausted (still transient, so the
    end-of-run round may try it again). Other exceptions propagate: they are bugs, not outcomes.
    """
    if sleep is None:
        sleep = stop.wait
    if rng is None:
        rng = _rng
    attempts = 0
    last_error: ProviderError | None = None
    while attempts < policy.max_attempts:
        if stop.is_set() or not limiter.acquire(deadline, stop=stop):
            return Attempted(generated=None, error=last_error, attempts=attempts, stopped=True)
        attempts += 1
        try:
            generated = provider.generate(inp)
        except ProviderError as exc:
            last_error = exc
        else:
            return Attempted(generated=generated, error=None, attempts=attempts)

        if not last_error.retryable:
            return Attempted(generated=None, error=last_error, attempts=attempts)
        retry_after = last_error.retry_after
        if retry_after is not None and retry_after > policy.max_retry_after:
            quota = ProviderError(
                RETRY_AFTER_OVER_CAP.format(retry_after=retry_after, cap=policy.max_retry_after),
                reason=REASON_QUOTA,
                retryable=False,
                retry_after=retry_after,
                status_code=last_error.status_code,
            )
            quota.__cause__ = last_error
            return Attempted(generated=None, error=quota, attempts=attempts)
        if attempts >= policy.max_attempts:
            break
        if retry_after is not None:
            delay = max(0.0, retry_after)
        else:
            delay = rng.uniform(0, policy.backoff_bound(attempts))
        if deadline is not None and clock() + delay > deadline:
            return Attempted(generated=None, error=last_error, attempts=attempts, stopped=True)
        logger.debug(
            "fortune retry: attempt %d failed (%s), retrying in %.2f s", attempts, last_error.reason, delay
        )
        sleep(delay)
        if stop.is_set():
            return Attempted(generated=None, error=last_error, attempts=attempts, stopped=True)
    return Attempted(generated=None, error=last_error, attempts=attempts)
