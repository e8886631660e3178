"""Other outbound calls through the same policy: broker sends, and calls whose server may ask to wait
(the push sender's FCM sends)."""


import random
import threading
import time
from collections.abc import Callable

from core.resilience.policy import RetryPolicy, logger, retrying

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
