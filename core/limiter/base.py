"""The limiter's interface, its waiting, and what every backend shares (limits, lanes, what a 429 teaches)."""

import logging
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass

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

