from datetime import date

import pytest

from core.saju import natal_chart


@pytest.mark.parametrize(
    ("d", "year", "month", "day", "term_today"),
    [
        # 입춘 1984-02-05 00:18 KST: the 5th is a term day, the 4th is not.
        (date(1984, 2, 4), "癸亥", "乙丑", "戊辰", False),
        (date(1984, 2, 5), "甲子", "丙寅", "己巳", True),
        # 경칩 2000-03-05 15:42 KST: noon is still 戊寅 month, flagged uncertain.
        (date(2000, 3, 5), "庚辰", "戊寅", "壬戌", True),
        (date(2000, 3, 6), "庚辰", "己卯", "癸亥", False),
        # 소서 1987 at 01:39 civil summer time on 07-08 (00:39 if read as UTC+9).
        (date(1987, 7, 7), "丁卯", "丙午", "丁巳", False),
        (date(1987, 7, 8), "丁卯", "丁未", "戊午", True),
        (date(1990, 6, 15), "庚午", "壬午", "辛亥", False),
    ],
)
def test_unknown_time(d, year, month, day, term_today):
    chart = natal_chart(birth_date=d)
    assert chart.hour is None
    assert (chart.year, chart.month, chart.day) == (year, month, day)
    assert chart.term_on_birth_day is term_today
    assert chart.as_dict()["hour"] is None
    assert chart.pillars_hangul["hour"] is None
    assert sum(chart.element_counts.values()) == 6


def test_term_flag_only_for_unknown_time():
    from datetime import time

    assert natal_chart(birth_date=date(1984, 2, 5), birth_time=time(1)).term_on_birth_day is False


def test_about_one_term_day_per_month():
    d, flagged = date(2001, 1, 1), 0
    while d.year == 2001:
        flagged += natal_chart(birth_date=d).term_on_birth_day
        d = date.fromordinal(d.toordinal() + 1)
    assert flagged == 12
