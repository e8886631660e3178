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

from core.resilience.calls import (  # noqa: F401 - the package's interface
    Attempted,
    Budget,
    BudgetedClient,
    Limiter,
    call_with_retries,
    request_tokens,
    wait_until,
)
from core.resilience.database import (  # noqa: F401
    DB_BASE_DELAY,
    DB_GAVE_UP,
    DatabaseUnavailable,
    db_call,
    db_connection_reset,
    db_retried,
    db_retryable,
)
from core.resilience.policy import (  # noqa: F401
    MAX_ATTEMPTS_INVALID,
    ON_DEMAND_NO_SLOT,
    RETRY_AFTER_OVER_CAP,
    TRANSIENT_REASONS,
    RetryPolicy,
    is_transient,
    retrying,
)
from core.resilience.sends import SEND_POLICY, call_with_retry_after, send_with_retries  # noqa: F401
