"""Micro-benchmark of core.saju.  Run from the repo root: python bench/saju.py"""

from __future__ import annotations

import platform
import random
import sys
import time
from datetime import date
from datetime import time as dtime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.saju import (  # noqa: E402
    ENGINE_VERSION,
    ChartOptions,
    daily_reading,
    lunar_to_solar,
    natal_chart,
)
from core.saju.terms import term_table  # noqa: E402

N = 200_000
SEED = 20240601


def per_call_us(fn, args: list) -> float:
    start = time.perf_counter()
    for a in args:
        fn(a)
    return (time.perf_counter() - start) / len(args) * 1e6


def main() -> None:
    rng = random.Random(SEED)
    lo, hi = date(1900, 1, 1).toordinal(), date(2100, 12, 31).toordinal()
    dates = [date.fromordinal(rng.randint(lo, hi)) for _ in range(N)]
    times = [dtime(rng.randrange(24), rng.randrange(60)) for _ in range(N)]
    lunar = [(rng.randint(1900, 2049), rng.randint(1, 12), rng.randint(1, 29)) for _ in range(N // 10)]
    yaja_lmt = ChartOptions(zi_convention="yaja", local_mean_time=True)

    t0 = time.perf_counter()
    table = term_table()
    build = time.perf_counter() - t0

    print(f"python {platform.python_version()} ({platform.python_implementation()}) on {platform.machine()}")
    print(f"ENGINE_VERSION={ENGINE_VERSION}  N={N}  seed={SEED}  dates 1900-01-01..2100-12-31")
    print(f"term table load: {build * 1e3:.0f} ms (from {table.source}), "
          f"{len(table.instants)} jie instants")

    pairs = list(zip(dates, times, strict=True))
    natal_chart(birth_date=dates[0], birth_time=times[0])  # warm-up
    for label, fn in (
        ("natal_chart known time (joja, civil)",
         lambda p: natal_chart(birth_date=p[0], birth_time=p[1])),
        ("natal_chart known time (yaja, LMT)",
         lambda p: natal_chart(birth_date=p[0], birth_time=p[1], options=yaja_lmt)),
        ("natal_chart unknown time", lambda p: natal_chart(birth_date=p[0])),
    ):
        print(f"{label}: {per_call_us(fn, pairs):.2f} us/call")

    lunar_to_solar(year=2000, month=1, day=1)  # warm-up

    def l2s(a: tuple[int, int, int]) -> None:
        try:
            lunar_to_solar(year=a[0], month=a[1], day=a[2])
        except ValueError:
            pass

    print(f"lunar_to_solar (random, {len(lunar)} calls): {per_call_us(l2s, lunar):.2f} us/call")
    print(f"daily_reading: {per_call_us(lambda d: daily_reading(day_master='甲', target=d), dates):.2f} us/call")


if __name__ == "__main__":
    main()
