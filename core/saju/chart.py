"""Natal four-pillar chart.

Conventions (ENGINE_VERSION 1):

* Input is Korean civil time (naive, Asia/Seoul).  It is converted to a UTC
  instant with ``zoneinfo`` (which knows UTC+8:30 in 1908-11 and 1954-61 and the
  summer-time years) and compared with the 절 instants, so the **year** pillar
  changes at the 입춘 instant and the **month** pillar at each 절 instant.
  Wall times repeated or skipped by a summer-time change are resolved by
  ``birth_time.fold`` (default 0: the offset in force before the change).
* The **hour** branch and the **day** change are read from the local wall clock:
  civil time by default; with ``local_mean_time=True`` from Seoul local mean
  time instead, i.e. the UTC instant + 8h27m55s (126.98°E).  That equals civil
  time −32 min under UTC+9, −2 min under UTC+8:30 and −92 min in summer time
  (so LMT also removes the summer-time hour).  LMT never affects year/month.
* 子 hour (23:00–01:00 on that wall clock):
    - ``"joja"`` (조자시, default): from 23:00 the day pillar is the NEXT day's;
      the hour pillar is that next day's 子 hour (五鼠遁 from the next day's stem).
      00:00–01:00 is the 子 hour of the current date.
    - ``"yaja"`` (야자시): 23:00–24:00 keeps the current date's day pillar, but the
      hour pillar is the next day's 子 hour (五鼠遁 from the NEXT day's stem), so
      it equals the joja hour pillar; only the day pillar differs.
      00:00–01:00 is identical in both conventions.
* Unknown birth time: ``hour`` is None; year/month are taken at 12:00 KST of the
  birth date, and ``term_on_birth_day`` tells whether a 절 instant falls on that
  KST calendar day (so year/month may be the previous ones).
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from .constants import (
    BRANCH_ELEMENT,
    DAY_OFFSET,
    ELEMENTS,
    GANZHI,
    GANZHI_HANGUL,
    STEM_ELEMENT,
    STEM_YIN_YANG,
    InvalidBirthData,
)
from .terms import term_table

SEOUL = ZoneInfo("Asia/Seoul")
MIN_DATE = date(1900, 1, 1)
MAX_DATE = date(2100, 12, 31)
ZI_CONVENTIONS = ("joja", "yaja")
SEOUL_LMT_OFFSET_SECONDS = round(126.98 * 240)  # 30475 s = 8h27m55s east of UTC
_UNIX_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
_NOON = time(12)
_MIDNIGHT = time(0)
_ONE_DAY = timedelta(days=1)


@dataclass(frozen=True, slots=True)
class ChartOptions:
    zi_convention: str = "joja"
    local_mean_time: bool = False

    def __post_init__(self) -> None:
        if self.zi_convention not in ZI_CONVENTIONS:
            raise ValueError(f"zi_convention must be one of {ZI_CONVENTIONS}, got {self.zi_convention!r}")


@dataclass(frozen=True, slots=True)
class NatalChart:
    year: str
    month: str
    day: str
    hour: str | None
    term_on_birth_day: bool = False

    @property
    def day_master(self) -> str:
        return self.day[0]

    @property
    def day_master_element(self) -> str:
        return STEM_ELEMENT[self.day[0]]

    @property
    def day_master_yin_yang(self) -> str:
        return STEM_YIN_YANG[self.day[0]]

    @property
    def pillars_hangul(self) -> dict[str, str | None]:
        return {
            "year": GANZHI_HANGUL[self.year],
            "month": GANZHI_HANGUL[self.month],
            "day": GANZHI_HANGUL[self.day],
            "hour": None if self.hour is None else GANZHI_HANGUL[self.hour],
        }

    @property
    def element_counts(self) -> dict[str, int]:
        counts = dict.fromkeys(ELEMENTS, 0)
        for pillar in (self.year, self.month, self.day, self.hour):
            if pillar is not None:
                counts[STEM_ELEMENT[pillar[0]]] += 1
                counts[BRANCH_ELEMENT[pillar[1]]] += 1
        return counts

    def as_dict(self) -> dict[str, str | None]:
        return {"year": self.year, "month": self.month, "day": self.day, "hour": self.hour}


_DEFAULT_OPTIONS = ChartOptions()


def day_pillar(d: date) -> str:
    """Sexagenary day of the civil date ``d`` (2000-01-01 -> 戊午)."""
    return GANZHI[(d.toordinal() + DAY_OFFSET) % 60]


def _seoul_timestamp(d: date, t: time) -> float:
    return datetime.combine(d, t, SEOUL).timestamp()


def natal_chart(
    *, birth_date: date, birth_time: time | None = None, options: ChartOptions = _DEFAULT_OPTIONS
) -> NatalChart:
    if isinstance(birth_date, datetime) or not isinstance(birth_date, date):
        raise TypeError("birth_date must be a datetime.date (pass the time as birth_time)")
    if not MIN_DATE <= birth_date <= MAX_DATE:
        raise InvalidBirthData(f"birth date {birth_date.isoformat()} is outside {MIN_DATE}..{MAX_DATE}")
    if birth_time is not None and birth_time.tzinfo is not None:
        raise InvalidBirthData("birth_time must be naive Korean civil time (Asia/Seoul)")

    table = term_table()
    instants = table.instants
    if birth_time is None:
        ts = _seoul_timestamp(birth_date, _NOON)
        i = bisect_right(instants, ts) - 1
        day_start = bisect_left(instants, _seoul_timestamp(birth_date, _MIDNIGHT))
        term_today = instants[day_start] < _seoul_timestamp(birth_date + _ONE_DAY, _MIDNIGHT)
        return NatalChart(
            table.year_pillars[i], table.month_pillars[i], day_pillar(birth_date), None, term_today
        )

    ts = _seoul_timestamp(birth_date, birth_time)
    i = bisect_right(instants, ts) - 1
    if options.local_mean_time:
        local = int(ts // 1) + SEOUL_LMT_OFFSET_SECONDS
        ordinal = _UNIX_EPOCH_ORDINAL + local // 86400
        hour = local % 86400 // 3600
    else:
        ordinal = birth_date.toordinal()
        hour = birth_time.hour

    if hour == 23:
        stem_ordinal = ordinal + 1
        if options.zi_convention == "joja":
            ordinal += 1
    else:
        stem_ordinal = ordinal
    branch = (hour + 1) // 2 % 12
    hour_stem = ((stem_ordinal + DAY_OFFSET) % 60 % 5 * 2 + branch) % 10  # 五鼠遁
    return NatalChart(
        table.year_pillars[i],
        table.month_pillars[i],
        GANZHI[(ordinal + DAY_OFFSET) % 60],
        GANZHI[(6 * hour_stem - 5 * branch) % 60],
        False,
    )
