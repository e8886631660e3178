"""The client-side rate limit shared by every worker thread of a run."""

import threading
import time
from collections.abc import Callable

RPM_INVALID = "rpm must be a positive whole number or None/0 for no limit, got {rpm!r}."
BURST_INVALID = "burst must be at least 1, got {burst!r}."


class RateLimiter:
    """At most `rpm` acquisitions per minute across all threads, evenly spaced, with an optional burst.

    A virtual-scheduling token bucket (GCRA): each acquire reserves the next free slot under a lock,
    then sleeps outside it until that slot, so waiting threads never serialise on the lock.
    """

    def __init__(
        self,
        rpm: int | None,
        *,
        burst: int = 1,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], object] = time.sleep,
    ) -> None:
        if rpm is not None and (not isinstance(rpm, int) or rpm < 0):
            raise ValueError(RPM_INVALID.format(rpm=rpm))
        if burst < 1:
            raise ValueError(BURST_INVALID.format(burst=burst))
        self.rpm = rpm or None
        self.burst = burst
        self._clock = clock
        self._sleep = sleep
        self._interval = 60.0 / self.rpm if self.rpm else 0.0
        self._tolerance = (burst - 1) * self._interval
        self._tat: float | None = None  # theoretical arrival time of the next request
        self._lock = threading.Lock()

    @property
    def unlimited(self) -> bool:
        return self.rpm is None

    def acquire(self, deadline: float | None = None, *, stop: threading.Event | None = None) -> bool:
        """Wait for a slot. False if the slot would come after `deadline` (clock-based) or `stop` is set."""
        if stop is not None and stop.is_set():
            return False
        now = self._clock()
        if self.unlimited:
            return deadline is None or now <= deadline
        with self._lock:
            tat = now if self._tat is None else max(self._tat, now)
            start = max(now, tat - self._tolerance)
            if deadline is not None and start > deadline:
                return False
            self._tat = tat + self._interval
        wait = start - now
        if wait > 0:
            if stop is not None:
                if stop.wait(wait):
                    return False
            else:
                self._sleep(wait)
        return True
