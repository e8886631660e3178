"""The one retry policy and loop (tenacity): full jitter or the server's Retry-After, its cap, a stop
event and a deadline."""


import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field

import tenacity
from django.conf import settings

from core.fortunes.providers.base import (
    FailureReason,
    ProviderError,
)

logger = logging.getLogger("fortuna.resilience")

TRANSIENT_REASONS = frozenset(
    {
        FailureReason.RATE_LIMITED,
        FailureReason.QUOTA,
        FailureReason.SERVER_ERROR,
        FailureReason.TIMEOUT,
        FailureReason.CONNECTION,
        FailureReason.INVALID_OUTPUT,
    }
)
RETRY_AFTER_OVER_CAP = "The server asked to wait {retry_after:.0f} s before retrying, over the {cap:.0f} s cap."
MAX_ATTEMPTS_INVALID = "max_attempts must be at least 1, got {max_attempts}."
ON_DEMAND_NO_SLOT = "no slot under the account's rate limit within the request's time budget"
SLOT_NOW_SECONDS = 0.05  # the least an on-demand attempt may wait for the limiter's slot

_rng = random.Random()


def is_transient(error: ProviderError) -> bool:
    """Worth another round after a cool-down (the end-of-run second pass), as opposed to a bad request."""
    return error.reason in TRANSIENT_REASONS


@dataclass(frozen=True)
class RetryPolicy:
    """How many attempts, how long to wait between them, and which Retry-After is too long to wait.

    `jitter=False` waits the exponential bound itself (for a single sender, where spreading many
    clients apart buys nothing). `min_attempt_seconds`: a retry with less time than this left before
    the deadline is not worth starting.
    """

    max_attempts: int
    max_retry_after: float
    base_delay: float = 0.5
    max_delay: float = 30.0
    jitter: bool = True
    min_attempt_seconds: float = 0.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(MAX_ATTEMPTS_INVALID.format(max_attempts=self.max_attempts))

    @classmethod
    def from_settings(cls, *, max_attempts: int | None = None) -> "RetryPolicy":
        return cls(
            max_attempts=max_attempts or settings.FORTUNE_MAX_ATTEMPTS,
            max_retry_after=float(settings.FORTUNE_MAX_RETRY_AFTER),
        )

    def backoff_bound(self, failures: int) -> float:
        """Upper bound of the full-jitter delay after the `failures`-th failed attempt (1-based)."""
        return min(self.max_delay, self.base_delay * 2 ** (failures - 1))

    def delay(self, *, failures: int, retry_after: float | None, rng: random.Random) -> float:
        """The wait before the next attempt: the server's Retry-After exactly, else the backoff."""
        if retry_after is not None:
            return max(0.0, retry_after)
        bound = self.backoff_bound(failures)
        return rng.uniform(0, bound) if self.jitter else bound

    def over_cap(self, retry_after: float | None) -> bool:
        return retry_after is not None and retry_after > self.max_retry_after


@dataclass
class _Deadline:
    """tenacity stop condition: the wait would end past `deadline` (recorded, so the caller can tell
    "stopped" from "failed")."""

    deadline: float | None
    min_attempt_seconds: float
    clock: Callable[[], float]
    hit: bool = field(default=False, init=False)

    def __call__(self, retry_state: tenacity.RetryCallState) -> bool:
        if self.deadline is None:
            return False
        upcoming = retry_state.upcoming_sleep or 0.0
        self.hit = self.clock() + upcoming + self.min_attempt_seconds > self.deadline
        return self.hit


def retrying(
    *,
    policy: RetryPolicy,
    retryable: Callable[[BaseException], bool],
    retry_after: Callable[[BaseException], float | None],
    sleep: Callable[[float], object],
    rng: random.Random | None = None,
    deadline: _Deadline | None = None,
    describe: Callable[[BaseException], str] = repr,
    on_retry: Callable[[int, BaseException, float], object] | None = None,
) -> tenacity.Retrying:
    """A tenacity.Retrying for `policy`: retries while `retryable(exc)` and the server's Retry-After
    (from `retry_after(exc)`) is within the cap, up to max_attempts, never past `deadline`. The last
    exception is re-raised as it is (no RetryError). `on_retry(attempt, exc, delay)` is called before
    each wait (default: a debug log line)."""
    rng = rng or _rng

    def should_retry(exc: BaseException) -> bool:
        return retryable(exc) and not policy.over_cap(retry_after(exc))

    def wait(retry_state: tenacity.RetryCallState) -> float:
        exc = retry_state.outcome.exception()
        return policy.delay(failures=retry_state.attempt_number, retry_after=retry_after(exc), rng=rng)

    def before_sleep(retry_state: tenacity.RetryCallState) -> None:
        if on_retry is not None:
            on_retry(retry_state.attempt_number, retry_state.outcome.exception(), retry_state.upcoming_sleep)
            return
        logger.debug(
            "retry: attempt %d failed (%s), retrying in %.2f s",
            retry_state.attempt_number, describe(retry_state.outcome.exception()), retry_state.upcoming_sleep,
        )

    stop = tenacity.stop_after_attempt(policy.max_attempts)
    if deadline is not None:
        stop = stop | deadline
    return tenacity.Retrying(
        stop=stop,
        wait=wait,
        retry=tenacity.retry_if_exception(should_retry),
        sleep=lambda seconds: sleep(float(seconds)),
        before_sleep=before_sleep,
        reraise=True,
    )
