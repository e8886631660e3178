"""lunar_to_solar follows KASI's Korean calendar (korean-lunar-calendar).

Cross-checks use lunar-python's Chinese calendar (an independent implementation)
where both calendars agree; 2017 is a year where they differ (Korea: leap 5th
month, China: leap 6th month).
"""

from datetime import date

import pytest
from lunar_python import Lunar

from core.saju import InvalidBirthData, lunar_to_solar


@pytest.mark.parametrize(
    ("year", "month", "day", "leap", "expected"),
    [
        (2020, 4, 1, True, date(2020, 5, 23)),  # 윤4월 1일
        (2020, 4, 1, False, date(2020, 4, 23)),
        (2023, 2, 1, True, date(2023, 3, 22)),  # 윤2월
        (2023, 2, 30, False, date(2023, 3, 21)),  # 2023 2월 is a 30-day month
        (1984, 1, 1, False, date(1984, 2, 2)),  # 설날 1984
        (2000, 1, 1, False, date(2000, 2, 5)),
        (1899, 12, 1, False, date(1900, 1, 1)),  # first supported solar day
        (2050, 11, 18, False, date(2050, 12, 31)),  # last day in korean-lunar-calendar
    ],
)
def test_valid(year, month, day, leap, expected):
    assert lunar_to_solar(year=year, month=month, day=day, is_leap_month=leap) == expected
    # Independent implementation (Chinese calendar agrees on these dates).
    solar = Lunar.fromYmd(year, -month if leap else month, day).getSolar()
    assert (solar.getYear(), solar.getMonth(), solar.getDay()) == expected.timetuple()[:3]


def test_korean_leap_month_differs_from_chinese_in_2017():
    assert lunar_to_solar(year=2017, month=5, day=1, is_leap_month=True) == date(2017, 6, 24)
    with pytest.raises(InvalidBirthData, match="leap month 6 does not exist in lunar year 2017"):
        lunar_to_solar(year=2017, month=6, day=1, is_leap_month=True)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"year": 2024, "month": 3, "day": 1, "is_leap_month": True}, "leap month 3 does not exist in lunar year 2024"),
        ({"year": 2023, "month": 1, "day": 30}, "lunar date 2023-01-30 does not exist"),
        ({"year": 2020, "month": 4, "day": 30, "is_leap_month": True},
         r"lunar date 2020-04-30 \(leap month\) does not exist"),
        ({"year": 2020, "month": 13, "day": 1}, "lunar date 2020-13-01 does not exist"),
        ({"year": 2020, "month": 1, "day": 0}, "lunar date 2020-01-00 does not exist"),
        ({"year": 2051, "month": 1, "day": 1}, "outside the supported lunar years"),
        ({"year": 1800, "month": 1, "day": 1}, "outside the supported lunar years"),
        ({"year": 2050, "month": 12, "day": 1}, "beyond the supported range"),
        ({"year": 1899, "month": 11, "day": 1}, "solar 1899-12-03, outside"),
    ],
)
def test_invalid(kwargs, message):
    with pytest.raises(InvalidBirthData, match=message):
        lunar_to_solar(**kwargs)


def test_invalid_birth_data_is_value_error():
    assert issubclass(InvalidBirthData, ValueError)
