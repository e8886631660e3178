"""The in-process backend: one process's threads share the account's pace (core.limiter)."""

import threading
import time
from collections.abc import Callable

from core.limiter.base import LANE_BATCH, LANE_ON_DEMAND, LANES, LEARN_SECONDS, _Limiter


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
