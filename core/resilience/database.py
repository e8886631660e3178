"""The database steps: reconnect and retry a step while the server restarts, within a window."""


import functools
import random
import time
from collections.abc import Callable

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, InterfaceError, OperationalError, connections, transaction

from core.resilience.policy import RetryPolicy, _Deadline, logger, retrying

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
