"""Korean lunar -> solar date conversion (KASI calendar via korean-lunar-calendar)."""

from __future__ import annotations

import threading
from datetime import date

from korean_lunar_calendar import KoreanLunarCalendar

from .constants import InvalidBirthData

MIN_LUNAR_YEAR = 1899
MAX_LUNAR_YEAR = 2050  # korean-lunar-calendar data ends at lunar 2050-11-18
_MIN_SOLAR = date(1900, 1, 1)
_MAX_SOLAR = date(2100, 12, 31)

_calendar: KoreanLunarCalendar | None = None
_lock = threading.Lock()  # the calendar object is stateful (and memoizes year sums)


def lunar_to_solar(*, year: int, month: int, day: int, is_leap_month: bool = False) -> date:
    for name, value in (("year", year), ("month", month), ("day", day)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"lunar {name} must be an int, got {value!r}")
    label = f"lunar date {year:04d}-{month:02d}-{day:02d}{' (leap month)' if is_leap_month else ''}"
    if not MIN_LUNAR_YEAR <= year <= MAX_LUNAR_YEAR:
        raise InvalidBirthData(
            f"{label} is outside the supported lunar years {MIN_LUNAR_YEAR}..{MAX_LUNAR_YEAR}"
        )
    if not 1 <= month <= 12:
        raise InvalidBirthData(f"{label} does not exist (month must be 1..12)")
    global _calendar
    with _lock:
        if _calendar is None:
            _calendar = KoreanLunarCalendar()
        cal = _calendar
        if is_leap_month and not cal.setLunarDate(year, month, 1, True):
            raise InvalidBirthData(f"leap month {month} does not exist in lunar year {year}")
        if not cal.setLunarDate(year, month, day, bool(is_leap_month)):
            if year == MAX_LUNAR_YEAR and (month, day) > (11, 18):
                raise InvalidBirthData(f"{label} is beyond the supported range (up to lunar 2050-11-18)")
            raise InvalidBirthData(f"{label} does not exist")
        result = date(cal.solarYear, cal.solarMonth, cal.solarDay)
    if not _MIN_SOLAR <= result <= _MAX_SOLAR:
        raise InvalidBirthData(f"{label} is solar {result.isoformat()}, outside {_MIN_SOLAR}..{_MAX_SOLAR}")
    return result
