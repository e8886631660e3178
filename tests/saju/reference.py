"""Reference computations INDEPENDENT of lunar-python, used to derive/verify expectations.

* Solar longitude: PyEphem (``ephem``, bundled VSOP87 theory), apparent geocentric
  ecliptic longitude of date; a 절 is the instant the longitude reaches
  285° (소한), 315° (입춘), 345° (경칩), ... i.e. 315° + 30°·k.
* Day pillar: Julian Day Number (Fliegel & Van Flandern integer formula) with the
  textbook rule sexagenary day index = (JDN + 49) mod 60 (0 = 甲子).
* Month/hour stems: the 五虎遁 / 五鼠遁 mnemonic tables written out literally.
* UTC offsets are given explicitly per case from Korean legal time history
  (UTC+8:30 from 1954-03-21 to 1961-08-10; summer time UTC+10 1987-05-10..10-11,
  1988-05-08..10-09), not read from zoneinfo.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone

import ephem

STEMS = "甲乙丙丁戊己庚辛壬癸"
BRANCHES = "子丑寅卯辰巳午未申酉戌亥"
# 五虎遁: year stem -> stem of the 寅 month.  甲己之年丙作首, 乙庚之歲戊為頭, ...
TIGER = dict(zip("甲己乙庚丙辛丁壬戊癸", "丙丙戊戊庚庚壬壬甲甲", strict=True))
# 五鼠遁: day stem -> stem of the 子 hour.  甲己還加甲, 乙庚丙作初, ...
RAT = dict(zip("甲己乙庚丙辛丁壬戊癸", "甲甲丙丙戊戊庚庚壬壬", strict=True))


def jdn(year: int, month: int, day: int) -> int:
    a = -1 if month <= 2 else 0  # (month - 14) / 12 truncated toward zero
    # Fliegel & Van Flandern (1968); all remaining divisions have non-negative operands.
    return ((1461 * (year + 4800 + a)) // 4 + (367 * (month - 2 - 12 * a)) // 12
            - (3 * ((year + 4900 + a) // 100)) // 4 + day - 32075)


def day_pillar_jdn(year: int, month: int, day: int) -> str:
    i = (jdn(year, month, day) + 49) % 60
    return STEMS[i % 10] + BRANCHES[i % 12]


def sun_longitude(instant: datetime) -> float:
    """Apparent geocentric ecliptic longitude of the Sun in degrees (ephem); ``instant`` is aware."""
    d = ephem.Date(instant.astimezone(timezone.utc).replace(tzinfo=None))
    sun = ephem.Sun(d)
    ecl = ephem.Ecliptic(ephem.Equatorial(sun.g_ra, sun.g_dec, epoch=d), epoch=d)
    return math.degrees(ecl.lon)


def term_instant(longitude: float, near: datetime) -> datetime:
    """UTC instant (aware) when the Sun reaches ``longitude`` within ±4 days of aware ``near``."""
    near = near.astimezone(timezone.utc)
    lo, hi = near - timedelta(days=4), near + timedelta(days=4)
    for _ in range(45):
        mid = lo + (hi - lo) / 2
        if (sun_longitude(mid) - longitude + 180) % 360 - 180 < 0:
            lo = mid
        else:
            hi = mid
    return lo + (hi - lo) / 2


def reference_pillars(civil: datetime, zi: str = "joja") -> tuple[str, str, str, str]:
    """Four pillars from first principles: ``civil`` is the wall time tagged with its legal UTC offset."""
    utc = civil.astimezone(timezone.utc)
    lon = sun_longitude(utc)
    month_branch = (int(((lon - 315) % 360) // 30) + 2) % 12  # 315° starts 寅
    saju_year = utc.year - 1 if (utc.month <= 2 and 180 < lon < 315) else utc.year
    y = (saju_year - 1984) % 60  # 1984 is 甲子
    year = STEMS[y % 10] + BRANCHES[y % 12]
    stem = (STEMS.index(TIGER[year[0]]) + (month_branch - 2) % 12) % 10
    month = STEMS[stem] + BRANCHES[month_branch]
    day_date = civil.date()
    stem_date = day_date
    if civil.hour == 23:
        stem_date = day_date + timedelta(days=1)
        if zi == "joja":
            day_date = stem_date
    day = day_pillar_jdn(day_date.year, day_date.month, day_date.day)
    hour_branch = (civil.hour + 1) // 2 % 12
    rat = RAT[day_pillar_jdn(stem_date.year, stem_date.month, stem_date.day)[0]]
    hour = STEMS[(STEMS.index(rat) + hour_branch) % 10] + BRANCHES[hour_branch]
    return year, month, day, hour
