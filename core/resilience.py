"""Outbound calls that may fail for a while: one retry policy, one Retry-After parser, one loop.

Every outbound model call takes one path, call_with_retries(): the batch's threads, the Celery chunk
workers and the web's on-demand requests (under a Budget, whose BudgetedClient gives each attempt a
timeout inside it). The account limiter is its collaborator: a slot in the caller's lane before each
attempt, the answer's usage reconciled after it, a 429 pausing everyone. The run-report webhooks,
the broker sends and the database steps use the same policy through retrying(). Every
provider.generate() is one HTTP attempt (the providers turn the SDK's own retries off), so the
policy's max_attempts is the only retry budget: two retry loops never multiply.

The loop is tenacity's (https://tenacity.readthedocs.io), adopted rather than written: it already
has what the three callers need as plug-in points (stop, wait, retry predicate, sleep), computes the
wait before the stop check (so a deadline can refuse a wait that would pass it), and is widely used
and maintained. stamina was the other candidate; it wraps tenacity with fixed choices (its own
jittered backoff, no injectable sleep outside its test mode) that leave no place for waiting a
Retry-After exactly or for a stop event. What is ours is only the policy: full jitter or the
server's Retry-After, the Retry-After cap, the stop event and the deadline.
"""

import functools
import logging
import math
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import tenacity
from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, InterfaceError, OperationalError, connections, transaction

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


# --- messages to a broker -----------------------------------------------------------------------

SEND_POLICY = RetryPolicy(max_attempts=3, max_retry_after=0.0, base_delay=0.2, max_delay=1.0)


def send_with_retries(
    send: Callable[[], object],
    *,
    retryable: Callable[[BaseException], bool],
    policy: RetryPolicy = SEND_POLICY,
    sleep: Callable[[float], object] = time.sleep,
) -> object:
    """One message to a broker: a few quick attempts with full-jitter backoff while `retryable(exc)`
    (a broker restarting answers within a second or two); the last exception is raised, for the caller
    to leave the message for a later re-send rather than wait here."""
    loop = retrying(policy=policy, retryable=retryable, retry_after=lambda exc: None, sleep=sleep,
                    describe=lambda exc: f"{type(exc).__name__}: {exc}",
                    on_retry=lambda attempt, exc, delay: logger.info(
                        "broker send: attempt %d failed (%s), retrying in %.2f s", attempt, exc, delay))
    return loop(send)


# --- the database: reconnect and retry while the server restarts --------------------------------

DB_GAVE_UP = (
    "The database stayed unavailable for {seconds:g} s (DB_RETRY_WINDOW_SECONDS) while {what}: {error}. "
    "Everything stored before stays stored; check the database server (restart, failover, a lock held "
    "past DB_BATCH_STATEMENT_TIMEOUT_MS), then run the command again to fill the gap."
)
DB_MAX_ATTEMPTS = 1000  # the window decides; this only keeps a zero-delay loop finite
DB_BASE_DELAY = 0.25
DB_MAX_DELAY = 5.0


class DatabaseUnavailable(Exception):
    """A database step failed for longer than the retry window: the run stops with this."""


def db_retryable(exc: BaseException) -> bool:
    """A connection-level failure a reconnect may cure: the server restarted or ended the session,
    the network dropped, a statement was cancelled (statement_timeout behind someone's lock)."""
    return isinstance(exc, (OperationalError, InterfaceError))


def db_connection_reset(using: str = DEFAULT_DB_ALIAS) -> None:
    """Drop this thread's connection so that the next query opens a new one. Django itself checks
    connections only at request boundaries; a long-running command must do it after an error."""
    conn = connections[using]
    try:
        conn.close()
    except Exception:  # noqa: BLE001 - a broken socket may refuse even its close; the wrapper forgets it anyway
        logger.debug("database: closing the broken connection failed", exc_info=True)
        conn.connection = None


def db_call(
    fn: Callable[[], object], *, what: str, using: str = DEFAULT_DB_ALIAS, window: float | None = None,
    also_retry: tuple[type[BaseException], ...] = (), sleep: Callable[[float], object] = time.sleep,
    clock: Callable[[], float] = time.monotonic, rng: random.Random | None = None,
):
    """fn() with the database retry policy: on a connection-level error (db_retryable, or one of
    also_retry) close this thread's connection, wait (full jitter, up to DB_MAX_DELAY) and call fn()
    again, until it succeeds or `window` seconds (DB_RETRY_WINDOW) have passed; then raise
    DatabaseUnavailable from the last error. fn must be idempotent and hold its own transaction.

    Inside an outer transaction (a caller's atomic block) nothing is retried: a reconnect would
    lose the caller's uncommitted work, so the error is the caller's to handle.
    """
    if connections[using].in_atomic_block:
        return fn()
    window = float(settings.DB_RETRY_WINDOW if window is None else window)
    policy = RetryPolicy(max_attempts=DB_MAX_ATTEMPTS, max_retry_after=0.0, base_delay=DB_BASE_DELAY,
                         max_delay=DB_MAX_DELAY)
    started = clock()
    past_window = _Deadline(deadline=started + window, min_attempt_seconds=0.0, clock=clock)

    def retryable(exc: BaseException) -> bool:
        return db_retryable(exc) or isinstance(exc, also_retry)

    def on_retry(attempt: int, exc: BaseException, delay: float) -> None:
        logger.warning("database error while %s (attempt %d): %s: %s; reconnecting in %.2f s",
                       what, attempt, type(exc).__name__, str(exc).strip(), delay)
        db_connection_reset(using)

    loop = retrying(policy=policy, retryable=retryable, retry_after=lambda exc: None, sleep=sleep, rng=rng,
                    deadline=past_window, on_retry=on_retry)
    try:
        return loop(fn)
    except BaseException as exc:
        if not retryable(exc):
            raise
        db_connection_reset(using)
        raise DatabaseUnavailable(DB_GAVE_UP.format(
            seconds=round(clock() - started, 1), what=what, error=f"{type(exc).__name__}: {str(exc).strip()}",
        )) from exc


def db_retried(what: str, *, atomic: bool = False):
    """Decorator: every call through db_call. atomic=True runs the function in one transaction, so
    that a retry never repeats half of it (counters added with F(), then a failure, then again)."""

    def decorate(fn):
        @functools.wraps(fn)
        def call(*args, **kwargs):
            def once():
                if not atomic:
                    return fn(*args, **kwargs)
                with transaction.atomic():
                    return fn(*args, **kwargs)

            return db_call(once, what=what)

        return call

    return decorate


# --- one call that may be asked to wait (the push sender's FCM sends) -----------------------------


def call_with_retry_after(
    call: Callable[[], object],
    *,
    policy: RetryPolicy,
    retryable: Callable[[BaseException], bool],
    retry_after: Callable[[BaseException], float | None],
    stop: threading.Event | None = None,
    what: str = "call",
    sleep: Callable[[float], object] | None = None,
    rng: random.Random | None = None,
) -> object:
    """call() with the policy: retried while `retryable(exc)`, waiting the server's Retry-After exactly
    (a longer one than policy.max_retry_after is not waited: the last exception is raised at once) or
    full-jitter backoff; the wait is the stop event's, so a stop cuts it short (call() must then refuse
    to start). The last exception is raised as it is."""
    stop = stop if stop is not None else threading.Event()

    def on_retry(attempt: int, exc: BaseException, delay: float) -> None:
        logger.info("%s: attempt %d failed (%s), retrying in %.2f s", what, attempt, exc, delay)

    loop = retrying(policy=policy, retryable=retryable, retry_after=retry_after,
                    sleep=stop.wait if sleep is None else sleep, rng=rng, on_retry=on_retry)
    return loop(call)
