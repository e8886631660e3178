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
"""

import logging
import math
import os
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from core.fortunes.prompt import estimate_tokens
from core.fortunes.providers.base import FailureReason, Generated, ProviderError

logger = logging.getLogger("fortuna.limiter")

REDIS_POOL_SIZE = 64
LANE_BATCH = "b"
LANE_ON_DEMAND = "o"
LANES = (LANE_BATCH, LANE_ON_DEMAND)
LEARN_SECONDS = 600.0  # how long limits learned from x-ratelimit-limit-* headers replace configured ones
DEFAULT_PAUSE = 1.0  # seconds everyone waits after a 429 that says nothing about when to retry
MAX_PAUSE = 60.0  # a longer wait is a quota problem, for the retry policy to fail, not to sleep through
REDIS_KEY = "fortuna:limiter:openai"

RPM_INVALID = "rpm must be a positive whole number or None/0 for no limit, got {rpm!r}."
TPM_INVALID = "tpm must be a positive whole number or None/0 for no limit, got {tpm!r}."
BURST_INVALID = "burst must be at least 1, got {burst!r}."
RESERVE_INVALID = "reserve must be a fraction within 0 ≤ reserve < 1, got {reserve!r}."
LANE_INVALID = "lane must be one of {lanes}, got {lane!r}."
ON_DEMAND_NO_SLOT = "no slot under the account's rate limit within the request's time budget"
LIMITER_NEEDS_REDIS = (
    "A limit shared by several processes needs Redis: set REDIS_URL (the shared cache's server), "
    "or run the threads backend, whose limiter is per process."
)

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


def ratelimit_duration(value: str | None) -> float | None:
    """Seconds from an x-ratelimit-reset-* value ("1s", "6m0s", "20ms", "1h2m3.5s"); None if unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    parts = _DURATION.findall(value)
    if not parts or "".join(n + u for n, u in parts) != value:
        return None
    return sum(float(number) * _UNIT_SECONDS[unit] for number, unit in parts)


def _header_int(headers: Mapping[str, str], name: str) -> int | None:
    try:
        return int(float(headers[name]))
    except (KeyError, TypeError, ValueError):
        return None


@dataclass(frozen=True, slots=True)
class Backoff:
    """What a 429 taught: pause everyone this long; the account's limits if the answer stated them."""

    pause: float
    rpm: int | None = None
    tpm: int | None = None

    @classmethod
    def from_error(cls, error: ProviderError, *, max_pause: float = MAX_PAUSE) -> "Backoff":
        headers = {k.lower(): v for k, v in (error.headers or {}).items()}
        pause = error.retry_after
        if pause is None:
            waits = []
            for dim in ("requests", "tokens"):
                if _header_int(headers, f"x-ratelimit-remaining-{dim}") == 0:
                    reset = ratelimit_duration(headers.get(f"x-ratelimit-reset-{dim}"))
                    if reset is not None:
                        waits.append(reset)
            pause = max(waits) if waits else DEFAULT_PAUSE
        return cls(
            pause=min(max(0.0, pause), max_pause),
            rpm=_header_int(headers, "x-ratelimit-limit-requests") or None,
            tpm=_header_int(headers, "x-ratelimit-limit-tokens") or None,
        )


def _check(*, rpm, tpm, burst, reserve) -> None:
    if rpm is not None and (not isinstance(rpm, int) or isinstance(rpm, bool) or rpm < 0):
        raise ValueError(RPM_INVALID.format(rpm=rpm))
    if tpm is not None and (not isinstance(tpm, int) or isinstance(tpm, bool) or tpm < 0):
        raise ValueError(TPM_INVALID.format(tpm=tpm))
    if burst < 1:
        raise ValueError(BURST_INVALID.format(burst=burst))
    if not 0 <= reserve < 1:
        raise ValueError(RESERVE_INVALID.format(reserve=reserve))


class _Limiter:
    """The interface and the waiting; subclasses implement _reserve(), _pause_left(), _learn()."""

    def __init__(self, rpm, *, tpm, burst, reserve, clock, sleep) -> None:
        _check(rpm=rpm, tpm=tpm, burst=burst, reserve=reserve)
        self.rpm = rpm or None
        self.tpm = tpm or None
        self.burst = burst
        self.reserve = float(reserve)
        self._clock = clock
        self._sleep = sleep

    @property
    def unlimited(self) -> bool:
        return self.rpm is None and self.tpm is None

    def acquire(
        self, deadline: float | None = None, *, stop: threading.Event | None = None, tokens: int = 0,
        lane: str = LANE_BATCH,
    ) -> bool:
        """Wait for a slot for one request of `tokens` estimated tokens. False (nothing reserved) if
        the slot would come after `deadline` (this limiter's clock), or once `stop` is set."""
        return self.acquire_lane(deadline, stop=stop, tokens=tokens, lane=lane) is not None

    def acquire_lane(
        self, deadline: float | None = None, *, stop: threading.Event | None = None, tokens: int = 0,
        lane: str = LANE_BATCH,
    ) -> str | None:
        """acquire(), returning the lane charged (on-demand may borrow a free batch slot) or None."""
        if lane not in LANES:
            raise ValueError(LANE_INVALID.format(lanes=LANES, lane=lane))
        if stop is not None and stop.is_set():
            return None
        tokens = max(0, int(tokens))
        while True:
            max_wait = None if deadline is None else deadline - self._clock()
            if max_wait is not None and max_wait < 0:
                return None
            granted = self._reserve(lane=lane, tokens=tokens, max_wait=max_wait)
            if granted is None:
                return None
            charged, wait = granted
            if wait <= 0:
                return charged
            if stop is not None:
                if stop.wait(wait):
                    return None
            else:
                self._sleep(wait)
            if self._pause_left() <= 0:
                return charged
            # A 429 seen by anyone while we waited: our slot was planned at the old pace. Take a new one
            # after the pause, at the pace learned since, or every waiter would hit the account at once.

    def reconcile(self, *, lane: str, reserved: int, used: int) -> None:
        """Correct a lane's token account once the answer reports what the request really used."""
        if self.tpm is not None and used != reserved:
            self._adjust(lane=lane, tokens=used - reserved)

    def backoff(self, *, error: ProviderError, max_pause: float = MAX_PAUSE) -> Backoff:
        """After a 429: pause every lane (every process, with Redis) and learn the stated limits."""
        learned = Backoff.from_error(error, max_pause=max_pause)
        rpm = learned.rpm if learned.rpm and (self.rpm is None or learned.rpm < self.rpm) else None
        tpm = learned.tpm if learned.tpm and (self.tpm is None or learned.tpm < self.tpm) else None
        self._learn(pause=learned.pause, rpm=rpm, tpm=tpm)
        logger.warning("fortune limiter: 429 from the provider; everyone pauses %.2f s%s%s", learned.pause,
                       f", account limit {rpm} RPM learned" if rpm else "", f", {tpm} TPM learned" if tpm else "")
        return learned

    # --- the backend's part -----------------------------------------------------------------
    def _reserve(self, *, lane: str, tokens: int, max_wait: float | None) -> tuple[str, float] | None:
        raise NotImplementedError

    def _pause_left(self) -> float:
        raise NotImplementedError

    def _adjust(self, *, lane: str, tokens: int) -> None:
        raise NotImplementedError

    def _learn(self, *, pause: float, rpm: int | None, tpm: int | None) -> None:
        raise NotImplementedError


class RateLimiter(_Limiter):
    """The in-process backend: at most `rpm` requests (and `tpm` tokens) per minute across the threads
    of this process, evenly spaced, with an optional burst."""

    def __init__(
        self,
        rpm: int | None,
        *,
        burst: int = 1,
        tpm: int | None = None,
        reserve: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], object] = time.sleep,
    ) -> None:
        super().__init__(rpm, tpm=tpm, burst=burst, reserve=reserve, clock=clock, sleep=sleep)
        self._lock = threading.Lock()
        # lane -> [request TAT, token TAT] (theoretical arrival times); None until first use
        self._tat: dict[str, list[float | None]] = {lane: [None, None] for lane in LANES}
        self._pause_until = 0.0
        self._learned: tuple[int | None, int | None, float] = (None, None, 0.0)

    def _limits(self, now: float) -> tuple[int | None, int | None]:
        rpm, tpm, until = self._learned
        if until <= now:
            return self.rpm, self.tpm
        return (min(filter(None, (self.rpm, rpm)), default=None), min(filter(None, (self.tpm, tpm)), default=None))

    def _intervals(self, lane: str, now: float) -> tuple[float, float]:
        """Seconds per request and per token in this lane (0 = no limit)."""
        rpm, tpm = self._limits(now)
        share = 1.0 - self.reserve if lane == LANE_BATCH else self.reserve
        return (60.0 / (rpm * share) if rpm else 0.0, 60.0 / (tpm * share) if tpm else 0.0)

    def _slot(self, lane: str, now: float) -> float:
        req_i, _ = self._intervals(lane, now)
        tolerance = (self.burst - 1) * req_i
        req_tat, tok_tat = (now if t is None else t for t in self._tat[lane])
        return max(now, req_tat - tolerance, tok_tat - tolerance, self._pause_until)

    def _commit(self, lane: str, start: float, tokens: int, now: float) -> None:
        req_i, tok_i = self._intervals(lane, now)
        req_tat, tok_tat = (now if t is None else t for t in self._tat[lane])
        self._tat[lane] = [max(req_tat, start) + req_i, max(tok_tat, start) + tokens * tok_i]

    def _reserve(self, *, lane: str, tokens: int, max_wait: float | None) -> tuple[str, float] | None:
        now = self._clock()
        with self._lock:
            if self.unlimited and self._learned[2] <= now:
                start = max(now, self._pause_until)
                if max_wait is not None and start - now > max_wait:
                    return None
                return lane, start - now
            if lane == LANE_ON_DEMAND and not self.reserve:
                lane = LANE_BATCH  # no reserved share: on-demand queues with the batch
            start = self._slot(lane, now)
            if lane == LANE_ON_DEMAND and start > now:
                borrowed = self._slot(LANE_BATCH, now)
                if borrowed <= now:
                    lane, start = LANE_BATCH, borrowed
            if max_wait is not None and start - now > max_wait:
                return None
            self._commit(lane, start, tokens, now)
        return lane, start - now

    def _pause_left(self) -> float:
        with self._lock:
            return max(0.0, self._pause_until - self._clock())

    def _adjust(self, *, lane: str, tokens: int) -> None:
        now = self._clock()
        with self._lock:
            if lane == LANE_ON_DEMAND and not self.reserve:
                lane = LANE_BATCH
            _, tok_i = self._intervals(lane, now)
            tat = self._tat[lane][1]
            if tat is not None:
                self._tat[lane][1] = tat + tokens * tok_i

    def _learn(self, *, pause: float, rpm: int | None, tpm: int | None) -> None:
        now = self._clock()
        with self._lock:
            self._pause_until = max(self._pause_until, now + pause)
            if rpm or tpm:
                old_rpm, old_tpm, until = self._learned
                if until <= now:
                    old_rpm = old_tpm = None
                self._learned = (rpm or old_rpm, tpm or old_tpm, now + LEARN_SECONDS)


# The same algorithm as RateLimiter._reserve, atomically in Redis, on Redis's clock (TIME), so
# processes on different machines agree on "now". Times are stored with microseconds ('%.6f').
_RESERVE_LUA = """
local key = KEYS[1]
local lane, tokens = ARGV[1], tonumber(ARGV[2])
local max_wait = tonumber(ARGV[3])  -- negative: no deadline
local rpm, tpm, burst, reserve = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local ttl = tonumber(ARGV[8])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local s = redis.call('HMGET', key, 'rb', 'tb', 'ro', 'to', 'pause', 'lrpm', 'ltpm', 'luntil')
local pause = tonumber(s[5]) or 0
if (tonumber(s[8]) or 0) > now then
  local lrpm, ltpm = tonumber(s[6]) or 0, tonumber(s[7]) or 0
  if lrpm > 0 and (rpm == 0 or lrpm < rpm) then rpm = lrpm end
  if ltpm > 0 and (tpm == 0 or ltpm < tpm) then tpm = ltpm end
end
local function fmt(x) return string.format('%.6f', x) end
if rpm == 0 and tpm == 0 then
  local start = math.max(now, pause)
  if max_wait >= 0 and start - now > max_wait then return {'', '-1'} end
  return {lane, fmt(start - now)}
end
local function intervals(l)
  local share = reserve
  if l == 'b' then share = 1 - reserve end
  local ri, ti = 0, 0
  if rpm > 0 then ri = 60 / (rpm * share) end
  if tpm > 0 then ti = 60 / (tpm * share) end
  return ri, ti
end
local idx = {b = {1, 2}, o = {3, 4}}
local function tats(l)
  return tonumber(s[idx[l][1]]) or now, tonumber(s[idx[l][2]]) or now
end
local function slot(l)
  local ri = intervals(l)
  local tol = (burst - 1) * ri
  local rt, tt = tats(l)
  return math.max(now, rt - tol, tt - tol, pause)
end
if lane == 'o' and reserve == 0 then lane = 'b' end
local start = slot(lane)
if lane == 'o' and start > now then
  local borrowed = slot('b')
  if borrowed <= now then lane, start = 'b', borrowed end
end
if max_wait >= 0 and start - now > max_wait then return {'', '-1'} end
local ri, ti = intervals(lane)
local rt, tt = tats(lane)
local fields = {}
if lane == 'b' then fields = {'rb', 'tb'} else fields = {'ro', 'to'} end
redis.call('HSET', key, fields[1], fmt(math.max(rt, start) + ri), fields[2], fmt(math.max(tt, start) + tokens * ti))
redis.call('EXPIRE', key, ttl)
return {lane, fmt(start - now)}
"""

_ADJUST_LUA = """
local key, lane, tokens = KEYS[1], ARGV[1], tonumber(ARGV[2])
local tpm, reserve = tonumber(ARGV[3]), tonumber(ARGV[4])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local s = redis.call('HMGET', key, 'ltpm', 'luntil')
if (tonumber(s[2]) or 0) > now then
  local ltpm = tonumber(s[1]) or 0
  if ltpm > 0 and (tpm == 0 or ltpm < tpm) then tpm = ltpm end
end
if tpm == 0 then return 0 end
if lane == 'o' and reserve == 0 then lane = 'b' end
local share = reserve
if lane == 'b' then share = 1 - reserve end
local field = 'tb'
if lane == 'o' then field = 'to' end
local tat = tonumber(redis.call('HGET', key, field))
if tat == nil then return 0 end
redis.call('HSET', key, field, string.format('%.6f', tat + tokens * 60 / (tpm * share)))
return 1
"""

_LEARN_LUA = """
local key, pause, rpm, tpm = KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local learn, ttl = tonumber(ARGV[4]), tonumber(ARGV[5])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local old = tonumber(redis.call('HGET', key, 'pause')) or 0
redis.call('HSET', key, 'pause', string.format('%.6f', math.max(old, now + pause)))
if rpm > 0 or tpm > 0 then
  if (tonumber(redis.call('HGET', key, 'luntil')) or 0) <= now then redis.call('HDEL', key, 'lrpm', 'ltpm') end
  if rpm > 0 then redis.call('HSET', key, 'lrpm', rpm) end
  if tpm > 0 then redis.call('HSET', key, 'ltpm', tpm) end
  redis.call('HSET', key, 'luntil', string.format('%.6f', now + learn))
end
redis.call('EXPIRE', key, ttl)
return 1
"""

_PAUSE_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local pause = tonumber(redis.call('HGET', KEYS[1], 'pause')) or 0
return string.format('%.6f', math.max(0, pause - now))
"""


class RedisRateLimiter(_Limiter):
    """The shared backend: RateLimiter's algorithm in Redis, one Lua call per acquisition."""

    STATE_TTL = 3600  # seconds: an idle limiter's state expires (nothing to remember after a minute)

    def __init__(
        self,
        rpm: int | None,
        *,
        url: str,
        tpm: int | None = None,
        burst: int = 1,
        reserve: float = 0.0,
        key: str = REDIS_KEY,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], object] = time.sleep,
    ) -> None:
        import redis

        super().__init__(rpm, tpm=tpm, burst=burst, reserve=reserve, clock=clock, sleep=sleep)
        self.key = key
        # Hundreds of threads share one limiter and each call is one short script: a thread waits for a
        # free connection (a blocking pool) rather than fail at redis-py's default cap of 100.
        pool = redis.BlockingConnectionPool.from_url(url, max_connections=REDIS_POOL_SIZE, timeout=5, socket_timeout=5,
                                                     socket_connect_timeout=5, health_check_interval=30)
        self.redis = redis.Redis(connection_pool=pool)
        self._reserve_script = self.redis.register_script(_RESERVE_LUA)
        self._adjust_script = self.redis.register_script(_ADJUST_LUA)
        self._learn_script = self.redis.register_script(_LEARN_LUA)
        self._pause_script = self.redis.register_script(_PAUSE_LUA)

    def _reserve(self, *, lane: str, tokens: int, max_wait: float | None) -> tuple[str, float] | None:
        charged, wait = self._reserve_script(keys=[self.key], args=[
            lane, tokens, -1 if max_wait is None else f"{max_wait:.6f}", self.rpm or 0, self.tpm or 0, self.burst,
            f"{self.reserve:.6f}", self.STATE_TTL,
        ])
        wait = float(wait)
        if wait < 0:
            return None
        return charged.decode() if isinstance(charged, bytes) else charged, wait

    def _pause_left(self) -> float:
        return float(self._pause_script(keys=[self.key]))

    def _adjust(self, *, lane: str, tokens: int) -> None:
        self._adjust_script(keys=[self.key], args=[lane, tokens, self.tpm or 0, f"{self.reserve:.6f}"])

    def _learn(self, *, pause: float, rpm: int | None, tpm: int | None) -> None:
        self._learn_script(keys=[self.key], args=[f"{pause:.6f}", rpm or 0, tpm or 0, LEARN_SECONDS, self.STATE_TTL])

    def clear(self) -> None:
        """Forget the shared state (tests, or after changing the account's limits)."""
        self.redis.delete(self.key)

    def close(self) -> None:
        self.redis.close()
        self.redis.connection_pool.disconnect()  # a pool passed in is not closed with its client


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
           settings.OPENAI_ON_DEMAND_RESERVE)
    with _cached_lock:
        limiter = _cached.get(key)
        if limiter is None:
            limiter = _cached[key] = account_limiter(rpm=rpm, tpm=tpm)
        return limiter


def estimated_tokens(inp) -> int:
    """Prompt + expected completion tokens of one request for this input (core.fortunes.prompt)."""
    tokens_in, tokens_out = estimate_tokens(inp)
    return tokens_in + tokens_out


class AccountCall:
    """One input's view of the limiter: what generate_with_retries calls `limiter` and `provider`.

    acquire() reserves the input's estimated tokens in the caller's lane; generate() corrects the
    account with the usage the answer reports, and turns a 429 into a pause for everyone.
    """

    def __init__(self, *, limiter: _Limiter, provider, lane: str, tokens: int) -> None:
        self.limiter = limiter
        self.provider = provider
        self.lane = lane
        self.tokens = tokens
        self.charged = lane
        self.name = provider.name
        self.model = provider.model

    @property
    def unlimited(self) -> bool:
        return self.limiter.unlimited

    @property
    def generator(self) -> str:
        return self.provider.generator

    def acquire(self, deadline: float | None = None, *, stop: threading.Event | None = None) -> bool:
        charged = self.limiter.acquire_lane(deadline, stop=stop, tokens=self.tokens, lane=self.lane)
        if charged is None:
            return False
        self.charged = charged
        return True

    def generate(self, inp) -> Generated:
        try:
            generated = self.provider.generate(inp)
        except ProviderError as exc:
            if exc.reason == FailureReason.RATE_LIMITED:
                self.limiter.backoff(error=exc)
            elif exc.billed:  # an invalid answer used the account's tokens all the same
                self.limiter.reconcile(lane=self.charged, reserved=self.tokens, used=exc.tokens_in + exc.tokens_out)
            raise
        self.limiter.reconcile(lane=self.charged, reserved=self.tokens, used=generated.tokens_in + generated.tokens_out)
        return generated


def account_call_once(*, provider, inp, limiter: _Limiter, deadline: float, lane: str = LANE_ON_DEMAND) -> Generated:
    """One attempt under the account limiter for the on-demand path: waits for a slot in its lane
    until `deadline` (this limiter's clock), else raises ProviderError(rate_limited)."""
    call = AccountCall(limiter=limiter, provider=provider, lane=lane, tokens=estimated_tokens(inp))
    if not call.acquire(deadline):
        raise ProviderError(ON_DEMAND_NO_SLOT, reason=FailureReason.RATE_LIMITED, retryable=True,
                            retry_after=float(math.ceil(max(1.0, DEFAULT_PAUSE))))
    return call.generate(inp)

