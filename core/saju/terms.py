"""Table of the 12 절 (jie) instants 1899-2101, derived from lunar-python.

lunar-python (6tail) computes solar-term instants as Julian days in Beijing time
(UTC+8).  We convert them to UTC epoch seconds and, for each term, precompute the
year and month pillars that start at that instant, so a chart needs one bisect.

Deriving the instants takes ~0.7 s, so they are cached in the generated module
``_terms_data.py``; regenerate it with ``python -m core.saju.generate_terms`` (never edit
it by hand).  ``tests/saju`` checks that it equals a fresh derivation.  Without
the data module the table is derived lazily on first use.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from .constants import GANZHI

FIRST_YEAR = 1899
LAST_YEAR = 2101
_UNIX_EPOCH_JD = 2440587.5
_UTC8_SECONDS = 8 * 3600

Row = tuple[float, int, int]  # (UTC epoch seconds, saju year, month branch index)


@dataclass(frozen=True, slots=True)
class TermTable:
    instants: list[float]  # UTC epoch seconds, ascending
    year_pillars: list[str]  # year pillar in force from instants[i]
    month_pillars: list[str]  # month pillar in force from instants[i]
    build_seconds: float
    source: str  # "data module" or "lunar-python"


_table: TermTable | None = None
_lock = threading.Lock()


def derive_rows() -> list[Row]:
    """The 절 instants from lunar-python, sorted."""
    from lunar_python import Lunar, LunarYear

    names = Lunar.JIE_QI_IN_USE
    rows: list[Row] = []
    for year in range(FIRST_YEAR, LAST_YEAR + 1):
        julian_days = LunarYear.fromYear(year).getJieQiJulianDays()
        # Indices 2, 4, ..., 24 are 小寒, 立春, 惊蛰, ..., 大雪 of Gregorian `year`;
        # the even index i starts month branch (i // 2) % 12 (小寒 -> 丑, 大雪 -> 子).
        for i in range(2, 25, 2):
            if names[i] not in "小寒立春惊蛰清明立夏芒种小暑立秋白露寒露立冬大雪":
                raise RuntimeError(f"unexpected lunar-python term order: {names[i]}")
            instant = (julian_days[i] - _UNIX_EPOCH_JD) * 86400.0 - _UTC8_SECONDS
            saju_year = year - 1 if i == 2 else year  # 小寒 precedes 立春
            rows.append((instant, saju_year, (i // 2) % 12))
    rows.sort()
    return rows


def _table_from_rows(rows: list[Row], started: float, source: str) -> TermTable:
    instants, years, months = [], [], []
    for instant, saju_year, branch in rows:
        year_index = (saju_year - 4) % 60
        tiger_stem = (year_index % 5) * 2 + 2  # 五虎遁: stem of the 寅 month
        month_stem = (tiger_stem + (branch - 2) % 12) % 10
        instants.append(instant)
        years.append(GANZHI[year_index])
        months.append(GANZHI[(6 * month_stem - 5 * branch) % 60])  # CRT: (stem, branch) -> index
    return TermTable(instants, years, months, time.perf_counter() - started, source)


def _load() -> TermTable:
    started = time.perf_counter()
    try:
        from ._terms_data import ROWS
    except ImportError:
        return _table_from_rows(derive_rows(), started, "lunar-python")
    return _table_from_rows(list(ROWS), started, "data module")


def term_table() -> TermTable:
    """Return the jie table, loading it on first use (thread-safe)."""
    global _table
    table = _table
    if table is None:
        with _lock:
            if _table is None:
                _table = _load()
            table = _table
    return table
