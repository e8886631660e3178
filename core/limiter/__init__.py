"""One account-wide limiter for LLM calls: requests and tokens per minute, in one process or in Redis.

Every caller (batch threads, Celery workers, the web's on-demand path) asks the same limiter before
each HTTP attempt. Two backends behind one interface:

* ``RateLimiter``: in-process, for one process (the threads backend without Redis, tests).
* ``RedisRateLimiter``: the same algorithm as one Lua script in Redis (``REDIS_URL``), so every
  process on every machine shares the account's budget. ``account_limiter()`` picks the backend.

The algorithm is a virtual-scheduling token bucket (GCRA) per dimension: each acquisition reserves
the next free slot (a request, and its estimated tokens) and the caller sleeps outside any lock
until that slot, so waiting callers never serialise. Two lanes share the account: the batch's lane
runs at (1 − reserve) of the limits, the on-demand lane at the reserve; on-demand may also take a
batch slot that is free right now (never one reserved for later), so a saturated batch never stalls
a user's request and a burst of users never takes more than the reserve from the batch. A 429
pauses every lane until its Retry-After (or the x-ratelimit reset), and the limits the answer states
(x-ratelimit-limit-*) replace the configured ones for LEARN_SECONDS when they are lower.

Why hand-written rather than PyrateLimiter: its Redis buckets each check one rate, so requests and
tokens cannot be reserved together atomically, it has no way to give back the part of a token
reservation the answer did not use, and the reserved on-demand share and the shared 429 pause would
be extra state outside it anyway. One Lua script does all of it in one round trip.

Redis is optional at run time. The Redis client gives up after REDIS_CONNECT_TIMEOUT /
REDIS_SOCKET_TIMEOUT (not redis-py's waits), and on any RedisError the shared limiter carries on
in-process at a conservative share of the account: 1/N of its limits, N the larger of the
processes seen using the limiter in the last minute (counted in Redis while it answered) and
OPENAI_LIMITER_FALLBACK_PROCESSES (what a process that never reached Redis assumes). It says so once,
asks Redis again at most every REDIS_PROBE_SECONDS, and when Redis answers keeps honouring the
in-process share too for a while (REJOIN_SECONDS, longer than a probe period), so processes that
come back at different moments never add the whole shared pace to the others' share.
"""

import os
import threading

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from core.fortunes.prompt import estimate_tokens
from core.limiter.base import (  # noqa: F401 - the package's interface
    BURST_INVALID,
    DEFAULT_PAUSE,
    LANE_BATCH,
    LANE_INVALID,
    LANE_ON_DEMAND,
    LANES,
    LEARN_SECONDS,
    LIMITER_NEEDS_REDIS,
    LIMITER_REDIS_BACK,
    LIMITER_REDIS_DOWN,
    MAX_PAUSE,
    REDIS_KEY,
    REDIS_POOL_SIZE,
    RESERVE_INVALID,
    RPM_INVALID,
    TPM_INVALID,
    Backoff,
    _Limiter,
    ratelimit_duration,
)
from core.limiter.local import RateLimiter
from core.limiter.shared import RedisRateLimiter


def account_limiter(
    *, rpm: int | None = None, tpm: int | None = None, reserve: float | None = None, shared: bool | None = None,
    url: str | None = None,
) -> _Limiter:
    """The account's limiter from settings (OPENAI_RPM, OPENAI_TPM, OPENAI_ON_DEMAND_RESERVE); arguments
    override them (rpm/tpm 0 = no limit). Shared in Redis when REDIS_URL (or url) is set; shared=True
    without Redis raises ImproperlyConfigured(LIMITER_NEEDS_REDIS)."""
    rpm = settings.OPENAI_RPM if rpm is None else rpm
    tpm = settings.OPENAI_TPM if tpm is None else tpm
    reserve = float(settings.OPENAI_ON_DEMAND_RESERVE if reserve is None else reserve)
    url = settings.REDIS_URL if url is None else url
    if shared is None:
        shared = bool(url)
    if shared:
        if not url:
            raise ImproperlyConfigured(LIMITER_NEEDS_REDIS)
        return RedisRateLimiter(rpm or None, tpm=tpm or None, reserve=reserve, url=url)
    return RateLimiter(rpm or None, tpm=tpm or None, reserve=reserve)


_cached: dict[tuple, _Limiter] = {}
_cached_lock = threading.Lock()


def account_limiter_cached(*, rpm: int | None = None, tpm: int | None = None) -> _Limiter:
    """account_limiter(), one per process and configuration: what long-lived callers (a Celery
    worker's chunks, the web's on-demand requests) share, so a process keeps one Redis connection pool
    and one in-process schedule. Made again after a fork and when the settings change (tests)."""
    key = (os.getpid(), rpm, tpm, settings.OPENAI_RPM, settings.OPENAI_TPM, settings.REDIS_URL,
           settings.OPENAI_ON_DEMAND_RESERVE, settings.OPENAI_LIMITER_FALLBACK_PROCESSES)
    with _cached_lock:
        limiter = _cached.get(key)
        if limiter is None:
            limiter = _cached[key] = account_limiter(rpm=rpm, tpm=tpm)
        return limiter


def estimated_tokens(inp) -> int:
    """Prompt + expected completion tokens of one request for this input (core.fortunes.prompt)."""
    tokens_in, tokens_out = estimate_tokens(inp)
    return tokens_in + tokens_out
