"""Progress for a long run: a redrawn bar on a terminal, a periodic log line in cron logs."""

import logging
import threading
import time
from collections.abc import Callable
from typing import TextIO

from core.nightly.summary import format_duration

logger = logging.getLogger("fortuna.nightly")

TTY_MIN_REDRAW = 0.2  # seconds: at most ~5 redraws a second
BAR_WIDTH = 30


class ProgressReporter:
    """Report progress of `total` users. `done` = users finished successfully, `failed` = users that
    failed; both are running totals, and done + failed is the number processed.

    update() is cheap and may be called for every user: it draws only when it is time to.
    """

    def __init__(
        self,
        *,
        total: int,
        stream: TextIO,
        is_tty: bool,
        interval: float = 10.0,
        label: str = "fortunes",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.total = max(0, total)
        self.stream = stream
        self.is_tty = is_tty
        self.interval = interval
        self.label = label
        self._clock = clock
        self._started = clock()
        self._last_draw: float | None = None
        self._done = 0
        self._failed = 0
        self._closed = False
        self._width = 0
        self._lock = threading.Lock()

    def update(self, *, done: int, failed: int) -> None:
        with self._lock:
            self._done, self._failed = done, failed
            if self._closed:
                return
            now = self._clock()
            every = TTY_MIN_REDRAW if self.is_tty else self.interval
            if self._last_draw is not None and now - self._last_draw < every:
                return
            if not self.is_tty and self._last_draw is None and now - self._started < every:
                return  # cron logs: the first line after one interval, not at once
            self._last_draw = now
            self._draw(now=now, final=False)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._draw(now=self._clock(), final=True)

    def _figures(self, now: float) -> tuple[int, float, float, float | None]:
        processed = min(self._done + self._failed, self.total) if self.total else self._done + self._failed
        pct = 100.0 * processed / self.total if self.total else 100.0
        elapsed = max(now - self._started, 0.0)
        rate = processed / elapsed if elapsed > 0 else 0.0
        remaining = max(self.total - processed, 0)
        eta = 0.0 if remaining == 0 else (remaining / rate if rate > 0 else None)
        return processed, pct, rate, eta

    def _draw(self, *, now: float, final: bool) -> None:
        processed, pct, rate, eta = self._figures(now)
        if self.is_tty:
            filled = int(BAR_WIDTH * pct / 100)
            line = (
                f"{self.label} [{'#' * filled}{'-' * (BAR_WIDTH - filled)}] {processed}/{self.total} "
                f"{pct:5.1f}% {rate:,.1f}/s ETA {format_duration(eta)} failed {self._failed}"
            )
            # Pad over the previous, possibly longer, line.
            padded = line.ljust(self._width)
            self._width = len(line)
            self.stream.write("\r" + padded + ("\n" if final else ""))
            self.stream.flush()
            return
        logger.info(
            "fortune progress [%s]%s: %d/%d (%.1f%%), %.1f/s, ETA %s, %d failed",
            self.label,
            " final" if final else "",
            processed,
            self.total,
            pct,
            rate,
            format_duration(eta),
            self._failed,
        )
