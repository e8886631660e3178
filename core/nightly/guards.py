"""Why a run stops taking new work: a signal or a caller's request, the cost budget, the runtime
deadline, or a provider that is plainly unusable. One object answers, so every loop asks it."""

import threading
import time
from collections.abc import Callable
from decimal import Decimal

from core.fortunes.pricing import PathUsage, cost_paid
from core.fortunes.providers.base import FailureReason, ProviderError

# Consecutive generations failing for a reason that means "the provider is unusable" (nothing will
# succeed: wrong URL, bad key, quota gone) before the run stops instead of grinding through everyone.
PROVIDER_DOWN_REASONS = frozenset(
    {FailureReason.CONNECTION, FailureReason.TIMEOUT, FailureReason.QUOTA, FailureReason.CONFIG}
)
PROVIDER_DOWN_MIN_STREAK = 10
# Twice the calls in flight (they all fail together when the provider goes), but no more than this:
# each of them already failed its every attempt, so a streak this long at 512 workers is no blip.
PROVIDER_DOWN_MAX_STREAK = 128

STOP_BUDGET = "cost budget reached: estimated ${cost} of ${budget}"
STOP_DEADLINE = "max runtime of {minutes:g} min reached"
STOP_PROVIDER_DOWN = "provider unusable: {count} generations in a row failed ({reason})"
# Any failure, repeated identically (same reason and HTTP status) generation after generation, is the
# server refusing this request, not a blip: e.g. a server that does not support response_format
# answering 500 to every request. Each of those generations already spent its every attempt.
STOP_SAME_FAILURE = (
    "provider unusable: {count} generations in a row failed the same way ({signature}); fix the provider or "
    "the request (OPENAI_BASE_URL, OPENAI_MODEL), then rerun. Last answer: {message}"
)
STOP_REASON_CHARS = 255  # NightlyRun.stop_reason: the server's answer is cut so the reason fits whole
STOP_SIGNAL = "interrupted by {signal}"


class StopToken:
    """Ask a running batch to stop taking new work (a signal handler, a Celery revoke, a test).
    The first request wins: its reason is the one reported."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.reason = ""
        self.interrupted = False

    def request(self, reason: str, *, interrupted: bool = False) -> None:
        if not self.event.is_set():
            self.reason = reason
            self.interrupted = interrupted
            self.event.set()

    @property
    def is_set(self) -> bool:
        return self.event.is_set()


class StopGuards:
    """The stop rules of one night. `deadline` is a clock() value; budget 0 means none."""

    def __init__(
        self, *, stop: StopToken, deadline: float, max_runtime_minutes: float, budget: Decimal = Decimal(0),
        workers: int = 1, model: str = "", clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stop = stop
        self.deadline = deadline
        self.max_runtime_minutes = max_runtime_minutes
        self.budget = Decimal(budget or 0)
        self.model = model  # the prices the budget is counted at (core.fortunes.pricing)
        self.down_streak_limit = min(PROVIDER_DOWN_MAX_STREAK, max(PROVIDER_DOWN_MIN_STREAK, 2 * workers))
        self.failure_streak = 0
        self.same_failure = ""  # the signature of the current streak of identical failures
        self.same_failure_streak = 0
        self._clock = clock

    @property
    def stopped(self) -> bool:
        """A stop was requested (without checking the clock)."""
        return self.stop.is_set

    def should_stop(self) -> bool:
        if not self.stop.is_set and self._clock() >= self.deadline:
            self.stop.request(STOP_DEADLINE.format(minutes=self.max_runtime_minutes))
        return self.stop.is_set

    def why(self) -> str:
        """The reason to stop (checking the deadline first), or "" to go on."""
        return self.stop.reason if self.should_stop() else ""

    @property
    def reason(self) -> str:
        """Why the run stopped, as it was stopped; "" if it was not."""
        return self.stop.reason if self.stop.is_set else ""

    @property
    def interrupted(self) -> bool:
        """Stopped by a signal or a caller, not by one of the run's own limits."""
        return self.stop.is_set and self.stop.interrupted

    def wait(self, seconds: float) -> bool:
        """Sleep up to seconds; True if a stop came meanwhile."""
        return self.stop.event.wait(seconds)

    def succeeded(self, *, usage: dict[str, PathUsage]) -> None:
        """A generation arrived; usage is the run's running totals per path (flex, standard)."""
        self.streak_broken()
        self.spent(usage=usage)

    def streak_broken(self) -> None:
        """Something succeeded: no failure streak goes on (the Celery backend calls it per chunk)."""
        self.failure_streak = 0
        self.same_failure, self.same_failure_streak = "", 0

    def spent(self, *, usage: dict[str, PathUsage]) -> None:
        """The run's usage so far per path: stop at the budget."""
        if self.budget:
            cost = cost_paid(model=self.model, usage=usage)
            if cost >= self.budget:
                self.stop.request(STOP_BUDGET.format(cost=cost, budget=self.budget))

    def failed(self, *, reason: str, error: ProviderError | None = None) -> None:
        """A generation failed for good (every attempt spent). Stops the run after down_streak_limit
        generations in a row failed for a provider-down reason, or all failed identically."""
        signature = error.signature if error is not None else str(reason)
        if signature == self.same_failure:
            self.same_failure_streak += 1
        else:
            self.same_failure, self.same_failure_streak = signature, 1
        if reason not in PROVIDER_DOWN_REASONS:
            self.failure_streak = 0
        else:
            self.failure_streak += 1
            if self.failure_streak >= self.down_streak_limit:
                self.stop.request(STOP_PROVIDER_DOWN.format(count=self.failure_streak, reason=reason))
                return
        if self.same_failure_streak >= self.down_streak_limit:
            text = STOP_SAME_FAILURE.format(count=self.same_failure_streak, signature=signature, message="")
            message = str(error) if error is not None else reason
            self.stop.request(text + message[:max(0, STOP_REASON_CHARS - len(text))])
