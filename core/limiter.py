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

import logging
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from core.fortunes.prompt import estimate_tokens
from core.fortunes.providers.base import ProviderError

logger = logging.getLogger("fortuna.limiter")

REDIS_POOL_SIZE = 64
LANE_BATCH = "b"
LANE_ON_DEMAND = "o"
LANES = (LANE_BATCH, LANE_ON_DEMAND)
LEARN_SECONDS = 600.0  # how long limits learned from x-ratelimit-limit-* headers replace configured ones
DEFAULT_PAUSE = 1.0  # seconds everyone waits after a 429 that says nothing about when to retry
MAX_PAUSE = 60.0  # a longer wait is a quota problem, for the retry policy to fail, not to sleep through
REDIS_KEY = "fortuna:limiter:openai"
REDIS_PROBE_SECONDS = 3.0  # while Redis is down, one caller asks it again at most this often
REJOIN_SECONDS = 2 * REDIS_PROBE_SECONDS  # after Redis is back, its slots also respect the in-process share
PEER_WINDOW = 60  # seconds: a process that reserved a slot within this is one of the account's sharers

RPM_INVALID = "rpm must be a positive whole number or None/0 for no limit, got {rpm!r}."
TPM_INVALID = "tpm must be a positive whole number or None/0 for no limit, got {tpm!r}."
BURST_INVALID = "burst must be at least 1, got {burst!r}."
RESERVE_INVALID = "reserve must be a fraction within 0 ≤ reserve < 1, got {reserve!r}."
LANE_INVALID = "lane must be one of {lanes}, got {lane!r}."
LIMITER_REDIS_DOWN = (
    "the account limiter's Redis does not answer ({error}); limiting in-process at 1/{share} of the account's "
    "limits ({rpm} RPM, {tpm} TPM) until it does"
)
LIMITER_REDIS_BACK = "the account limiter's Redis answers again after {seconds:.1f} s: back to the shared limit"
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
            epoch = self._epoch()
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
            if self._pause_left() <= 0 and self._epoch() == epoch:
                return charged
            # A 429 seen by anyone while we waited, or the limiter moved between Redis and in-process: our
            # slot was planned at the old pace. Take a new one after the pause, at the pace in force now,
            # or every waiter would hit the account at once.

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
    def _epoch(self) -> int:
        """Changes when the backend's pace changes under a waiter (the shared limiter's fallback)."""
        return 0

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
# Each script takes an optional last argument, "now", which only tests pass: with it the two
# implementations run on one fake clock, and tests/core/test_limiter_equal.py holds them equal.
_RESERVE_LUA = """
local key = KEYS[1]
local lane, tokens = ARGV[1], tonumber(ARGV[2])
local max_wait = tonumber(ARGV[3])  -- negative: no deadline
local rpm, tpm, burst, reserve = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local ttl = tonumber(ARGV[8])
local now = tonumber(ARGV[11])  -- tests pass the time in (tests/core/test_limiter_equal.py)
if now == nil then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
-- The processes sharing the account (what each takes a share of if Redis goes away).
redis.call('ZADD', KEYS[2], now, ARGV[9])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - tonumber(ARGV[10]))
redis.call('EXPIRE', KEYS[2], ttl)
local peers = redis.call('ZCARD', KEYS[2])
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
  if max_wait >= 0 and start - now > max_wait then return {'', '-1', peers} end
  return {lane, fmt(start - now), peers}
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
if max_wait >= 0 and start - now > max_wait then return {'', '-1', peers} end
local ri, ti = intervals(lane)
local rt, tt = tats(lane)
local fields = {}
if lane == 'b' then fields = {'rb', 'tb'} else fields = {'ro', 'to'} end
redis.call('HSET', key, fields[1], fmt(math.max(rt, start) + ri), fields[2], fmt(math.max(tt, start) + tokens * ti))
redis.call('EXPIRE', key, ttl)
return {lane, fmt(start - now), peers}
"""

_ADJUST_LUA = """
local key, lane, tokens = KEYS[1], ARGV[1], tonumber(ARGV[2])
local tpm, reserve = tonumber(ARGV[3]), tonumber(ARGV[4])
local now = tonumber(ARGV[5])  -- tests pass the time in (tests/core/test_limiter_equal.py)
if now == nil then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
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
local now = tonumber(ARGV[6])  -- tests pass the time in (tests/core/test_limiter_equal.py)
if now == nil then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
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
local now = tonumber(ARGV[1])  -- tests pass the time in (tests/core/test_limiter_equal.py)
if now == nil then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local pause = tonumber(redis.call('HGET', KEYS[1], 'pause')) or 0
return string.format('%.6f', math.max(0, pause - now))
"""


class RedisRateLimiter(_Limiter):
    """The shared backend: RateLimiter's algorithm in Redis, one Lua call per acquisition; in-process at
    a share of the limits while Redis does not answer (the module's docstring says which and why)."""

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
        fallback_processes: int | None = None,
        probe_seconds: float = REDIS_PROBE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], object] = time.sleep,
    ) -> None:
        import redis

        super().__init__(rpm, tpm=tpm, burst=burst, reserve=reserve, clock=clock, sleep=sleep)
        self.key = key
        self.peers_key = f"{key}:peers"
        self.peer = f"{socket.gethostname()}:{os.getpid()}"
        connect, read = settings.REDIS_CONNECT_TIMEOUT, settings.REDIS_SOCKET_TIMEOUT
        # Hundreds of threads share one limiter and each call is one short script: a thread waits for a
        # free connection (a blocking pool) rather than fail at redis-py's default cap of 100, but no
        # longer than a call to a frozen Redis may take. No retry inside redis-py: the fallback is ours.
        pool = redis.BlockingConnectionPool.from_url(url, max_connections=REDIS_POOL_SIZE, timeout=connect + read,
                                                     socket_timeout=read, socket_connect_timeout=connect,
                                                     health_check_interval=30)
        self.redis = redis.Redis(connection_pool=pool)
        self._reserve_script = self.redis.register_script(_RESERVE_LUA)
        self._adjust_script = self.redis.register_script(_ADJUST_LUA)
        self._learn_script = self.redis.register_script(_LEARN_LUA)
        self._pause_script = self.redis.register_script(_PAUSE_LUA)
        self.fallback_processes = max(1, int(
            settings.OPENAI_LIMITER_FALLBACK_PROCESSES if fallback_processes is None else fallback_processes))
        self.probe_seconds = probe_seconds
        self._state = threading.Lock()
        self._local: RateLimiter | None = None  # while Redis is down, and for REJOIN_SECONDS after
        self._down_since: float | None = None
        self._probe_at = 0.0
        self._rejoin_until = 0.0
        self._peers = 1  # processes that shared the account at the last answer
        self._switches = 0

    # --- Redis, or the in-process share while it does not answer ------------------------------
    @property
    def degraded(self) -> bool:
        """True while this process limits itself in-process because Redis did not answer."""
        return self._down_since is not None

    def _epoch(self) -> int:
        return self._switches

    def _fallback(self) -> RateLimiter | None:
        """The in-process limiter to use instead of Redis now, or None to ask Redis (one caller per
        probe period asks while it is down)."""
        if self._down_since is None:
            return None
        with self._state:
            if self._down_since is None:
                return None
            now = self._clock()
            if now < self._probe_at:
                return self._local
            self._probe_at = now + self.probe_seconds
            return None

    def _went_down(self, error: Exception) -> RateLimiter:
        with self._state:
            now = self._clock()
            self._probe_at = now + self.probe_seconds
            if self._down_since is None:
                share = max(self._peers, self.fallback_processes)
                rpm = max(1, self.rpm // share) if self.rpm else None
                tpm = max(1, self.tpm // share) if self.tpm else None
                self._local = RateLimiter(rpm, tpm=tpm, burst=self.burst, reserve=self.reserve, clock=self._clock,
                                          sleep=self._sleep)
                self._down_since = now
                self._switches += 1
                logger.warning("fortune limiter: %s", LIMITER_REDIS_DOWN.format(
                    error=str(error) or type(error).__name__, share=share, rpm=rpm or "no", tpm=tpm or "no"))
            return self._local

    def _answered(self) -> RateLimiter | None:
        """Redis answered: back to it if it was down. The in-process limiter while rejoining, else None."""
        if self._down_since is None and self._local is None:
            return None
        with self._state:
            now = self._clock()
            if self._down_since is not None:
                logger.warning("fortune limiter: %s", LIMITER_REDIS_BACK.format(seconds=now - self._down_since))
                self._down_since = None
                self._rejoin_until = now + REJOIN_SECONDS
                self._switches += 1
            if now >= self._rejoin_until:
                self._local = None
            return self._local

    def _reserve(self, *, lane: str, tokens: int, max_wait: float | None) -> tuple[str, float] | None:
        from redis.exceptions import RedisError

        local = self._fallback()
        if local is not None:
            return local._reserve(lane=lane, tokens=tokens, max_wait=max_wait)
        try:
            charged, wait, peers = self._reserve_script(keys=[self.key, self.peers_key], args=[
                lane, tokens, -1 if max_wait is None else f"{max_wait:.6f}", self.rpm or 0, self.tpm or 0,
                self.burst, f"{self.reserve:.6f}", self.STATE_TTL, self.peer, PEER_WINDOW,
            ])
        except RedisError as exc:
            return self._went_down(exc)._reserve(lane=lane, tokens=tokens, max_wait=max_wait)
        self._peers = int(peers)
        wait = float(wait)
        if wait < 0:
            return None
        charged = charged.decode() if isinstance(charged, bytes) else charged
        rejoining = self._answered()
        if rejoining is not None:
            # Peers may still be in-process: this process keeps to its share as well for a while.
            local = rejoining._reserve(lane=charged, tokens=tokens, max_wait=max_wait)
            if local is None:
                return None
            wait = max(wait, local[1])
        return charged, wait

    def _pause_left(self) -> float:
        from redis.exceptions import RedisError

        local = self._fallback()
        if local is not None:
            return local._pause_left()
        try:
            left = float(self._pause_script(keys=[self.key]))
        except RedisError as exc:
            return self._went_down(exc)._pause_left()
        rejoining = self._answered()
        return left if rejoining is None else max(left, rejoining._pause_left())

    def _adjust(self, *, lane: str, tokens: int) -> None:
        from redis.exceptions import RedisError

        local = self._fallback()
        if local is not None:
            local._adjust(lane=lane, tokens=tokens)
            return
        try:
            self._adjust_script(keys=[self.key], args=[lane, tokens, self.tpm or 0, f"{self.reserve:.6f}"])
        except RedisError as exc:
            self._went_down(exc)  # a reservation Redis held is gone with it: nothing to correct
            return
        self._answered()

    def _learn(self, *, pause: float, rpm: int | None, tpm: int | None) -> None:
        from redis.exceptions import RedisError

        local = self._fallback()
        if local is not None:
            local._learn(pause=pause, rpm=rpm, tpm=tpm)
            return
        try:
            self._learn_script(keys=[self.key],
                               args=[f"{pause:.6f}", rpm or 0, tpm or 0, LEARN_SECONDS, self.STATE_TTL])
        except RedisError as exc:
            self._went_down(exc)._learn(pause=pause, rpm=rpm, tpm=tpm)
            return
        rejoining = self._answered()
        if rejoining is not None:
            rejoining._learn(pause=pause, rpm=rpm, tpm=tpm)

    def clear(self) -> None:
        """Forget the shared state (tests, or after changing the account's limits)."""
        self.redis.delete(self.key, self.peers_key)

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
