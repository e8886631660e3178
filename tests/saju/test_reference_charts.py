"""Reference births with literal expected pillars.

Each expected value is checked twice: against the engine, and against
``reference.reference_pillars`` (PyEphem solar longitude + JDN day count +
五虎遁/五鼠遁 tables + explicit legal UTC offsets), which shares no code or data
with lunar-python.  Boundary cases additionally assert on which side of the
ephem-computed 절 instant the birth lies.
"""

from __future__ import annotations

from datetime import date, datetime, time, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from core.saju import ChartOptions, day_pillar, natal_chart
from core.saju.terms import term_table

from .reference import day_pillar_jdn, reference_pillars, term_instant

H9, H830, H10 = timedelta(hours=9), timedelta(hours=8, minutes=30), timedelta(hours=10)
LMT_1900 = timedelta(hours=8, minutes=27, seconds=52)  # Seoul LMT, legal time before 1908


def at(year: int, month: int, day: int, hour: int, minute: int, offset: timedelta) -> datetime:
    """Korean civil wall time tagged with the legal UTC offset in force (from Korean law, not zoneinfo)."""
    return datetime(year, month, day, hour, minute, tzinfo=timezone(offset))


# (id, civil wall time with its legal UTC offset, zi convention, expected (year, month, day, hour))
CASES = [
    ("1984-ipchun-before", at(1984, 2, 4, 12, 0, H9), "joja", ("癸亥", "乙丑", "戊辰", "戊午")),
    ("1984-ipchun-after", at(1984, 2, 5, 1, 0, H9), "joja", ("甲子", "丙寅", "己巳", "乙丑")),
    ("2000-gyeongchip-before", at(2000, 3, 5, 15, 20, H9), "joja", ("庚辰", "戊寅", "壬戌", "戊申")),
    ("2000-gyeongchip-after", at(2000, 3, 5, 16, 10, H9), "joja", ("庚辰", "己卯", "壬戌", "戊申")),
    ("2024-ipchun-before", at(2024, 2, 4, 17, 0, H9), "joja", ("癸卯", "乙丑", "戊戌", "辛酉")),
    ("2024-ipchun-after", at(2024, 2, 4, 17, 50, H9), "joja", ("甲辰", "丙寅", "戊戌", "辛酉")),
    # UTC+8:30 era: 입춘 1958 = 07:49 UTC = 16:19 civil (naive UTC+9 would put it at 16:49).
    ("1958-utc830-before", at(1958, 2, 4, 16, 10, H830), "joja", ("丁酉", "癸丑", "壬子", "戊申")),
    ("1958-utc830-after", at(1958, 2, 4, 16, 30, H830), "joja", ("戊戌", "甲寅", "壬子", "戊申")),
    # Summer time: 망종 1988 = 11:15 UTC = 21:15 civil UTC+10 (naive UTC+9: 20:15).
    ("1988-dst-before", at(1988, 6, 5, 20, 45, H10), "joja", ("戊辰", "丁巳", "辛卯", "戊戌")),
    ("1988-dst-after", at(1988, 6, 5, 21, 30, H10), "joja", ("戊辰", "戊午", "辛卯", "己亥")),
    # Summer time: 소서 1987 = 1987-07-07 15:39 UTC = 07-08 01:39 civil UTC+10.
    ("1987-dst-before", at(1987, 7, 8, 1, 10, H10), "joja", ("丁卯", "丙午", "戊午", "癸丑")),
    # 子 hour, both conventions (2000-01-01 is 戊午, 2000-01-02 is 己未).
    ("zi-late-joja", at(2000, 1, 1, 23, 30, H9), "joja", ("己卯", "丙子", "己未", "甲子")),
    ("zi-late-yaja", at(2000, 1, 1, 23, 30, H9), "yaja", ("己卯", "丙子", "戊午", "甲子")),
    ("zi-early-joja", at(2000, 1, 1, 0, 30, H9), "joja", ("己卯", "丙子", "戊午", "壬子")),
    ("zi-early-yaja", at(2000, 1, 1, 0, 30, H9), "yaja", ("己卯", "丙子", "戊午", "壬子")),
    ("range-start", at(1900, 1, 1, 0, 0, LMT_1900), "joja",
     ("己亥", "丙子", "甲戌", "甲子")),
    ("range-end", at(2100, 12, 31, 22, 59, H9), "joja", ("庚申", "戊子", "丁未", "辛亥")),
]
IDS = [c[0] for c in CASES]
SEOUL = ZoneInfo("Asia/Seoul")


@pytest.mark.parametrize(("case_id", "civil", "zi", "expected"), CASES, ids=IDS)
def test_engine_matches_reference(case_id, civil, zi, expected):
    chart = natal_chart(birth_date=civil.date(), birth_time=civil.time(), options=ChartOptions(zi_convention=zi))
    assert (chart.year, chart.month, chart.day, chart.hour) == expected
    assert chart.term_on_birth_day is False


@pytest.mark.parametrize(("case_id", "civil", "zi", "expected"), CASES, ids=IDS)
def test_expectations_are_independently_derived(case_id, civil, zi, expected):
    """Source: PyEphem + JDN + 五虎遁/五鼠遁 (see reference.py); no lunar-python."""
    assert reference_pillars(civil, zi) == expected


@pytest.mark.parametrize(("case_id", "civil", "zi", "expected"), CASES, ids=IDS)
def test_legal_offsets_match_zoneinfo(case_id, civil, zi, expected):
    assert civil.replace(tzinfo=SEOUL).utcoffset() == civil.utcoffset()


# (civil before, civil after, solar longitude of the 절)
BOUNDARIES = [
    (at(1984, 2, 4, 12, 0, H9), at(1984, 2, 5, 1, 0, H9), 315),
    (at(2000, 3, 5, 15, 20, H9), at(2000, 3, 5, 16, 10, H9), 345),
    (at(2024, 2, 4, 17, 0, H9), at(2024, 2, 4, 17, 50, H9), 315),
    (at(1958, 2, 4, 16, 10, H830), at(1958, 2, 4, 16, 30, H830), 315),
    (at(1988, 6, 5, 20, 45, H10), at(1988, 6, 5, 21, 30, H10), 75),
]


@pytest.mark.parametrize(("before", "after", "longitude"), BOUNDARIES)
def test_boundary_cases_straddle_ephem_term(before, after, longitude):
    """Source: PyEphem; the 절 instant lies strictly between the two births."""
    assert before < term_instant(longitude, before) < after


def test_1984_ipchun_instant_kst():
    """Source: PyEphem. 입춘 1984 = 1984-02-05 00:18 KST (15:18 UTC on 02-04)."""
    instant = term_instant(315, at(1984, 2, 4, 12, 0, H9)).astimezone(timezone(H9))
    assert instant.strftime("%Y-%m-%d %H:%M") == "1984-02-05 00:18"


def test_term_table_agrees_with_ephem_everywhere():
    """All 12 x 203 절 instants from lunar-python are within 90 s of PyEphem's."""
    branch_of = "子丑寅卯辰巳午未申酉戌亥"
    table = term_table()
    for ts, month in zip(table.instants, table.month_pillars, strict=True):
        longitude = (315 + 30 * ((branch_of.index(month[1]) - 2) % 12)) % 360
        lp = datetime.fromtimestamp(ts, timezone.utc)
        assert abs((term_instant(longitude, lp) - lp).total_seconds()) < 90, lp


def test_term_table_is_a_continuous_sexagenary_sequence():
    table = term_table()
    stems, branches = "甲乙丙丁戊己庚辛壬癸", "子丑寅卯辰巳午未申酉戌亥"
    assert table.instants == sorted(table.instants)
    idx = [(6 * stems.index(m[0]) - 5 * branches.index(m[1])) % 60 for m in table.month_pillars]
    assert all((b - a) % 60 == 1 for a, b in zip(idx, idx[1:], strict=False))
    for prev_year, year, month in zip(
        table.year_pillars, table.year_pillars[1:], table.month_pillars[1:], strict=False
    ):
        assert (year != prev_year) == (month[1] == "寅")


@pytest.mark.parametrize(
    ("d", "expected"),
    [(date(2000, 1, 1), "戊午"), (date(1900, 1, 1), "甲戌"), (date(1984, 2, 4), "戊辰"),
     (date(2100, 12, 31), "丁未"), (date(1970, 1, 1), "辛巳")],
)
def test_day_pillar_anchors(d, expected):
    """Source: JDN formula (JDN + 49) mod 60."""
    assert day_pillar_jdn(d.year, d.month, d.day) == expected
    assert day_pillar(d) == expected


def test_day_pillar_matches_jdn_over_range():
    d, end = date(1899, 12, 1), date(2101, 1, 31)
    while d <= end:
        assert day_pillar(d) == day_pillar_jdn(d.year, d.month, d.day)
        d += timedelta(days=7)


def test_local_mean_time_shifts_hour_and_day_change():
    joja_lmt = ChartOptions(local_mean_time=True)
    yaja_lmt = ChartOptions(zi_convention="yaja", local_mean_time=True)
    # 23:20 civil (UTC+9) is 22:48 LMT -> 亥 hour of the same day.
    civil = natal_chart(birth_date=date(1990, 6, 15), birth_time=time(23, 20))
    lmt = natal_chart(birth_date=date(1990, 6, 15), birth_time=time(23, 20), options=joja_lmt)
    assert civil.day == day_pillar(date(1990, 6, 16)) and civil.hour[1] == "子"
    assert lmt.day == day_pillar(date(1990, 6, 15)) and lmt.hour[1] == "亥"
    # 2000-01-02 00:20 civil is 2000-01-01 23:48 LMT: 子 hour, day by convention.
    a = natal_chart(birth_date=date(2000, 1, 2), birth_time=time(0, 20), options=joja_lmt)
    b = natal_chart(birth_date=date(2000, 1, 2), birth_time=time(0, 20), options=yaja_lmt)
    assert (a.day, a.hour) == ("己未", "甲子")
    assert (b.day, b.hour) == ("戊午", "甲子")
    # Summer time 1988: 13:10 civil = 04:10 UTC = 12:38 LMT -> 午, not 未.
    assert natal_chart(birth_date=date(1988, 7, 1), birth_time=time(13, 10), options=joja_lmt).hour[1] == "午"
    # UTC+8:30 era: LMT is only 2 min behind civil time (13:01 -> 12:59 午, 13:03 -> 13:01 未).
    assert natal_chart(birth_date=date(1958, 3, 1), birth_time=time(13, 1), options=joja_lmt).hour[1] == "午"
    assert natal_chart(birth_date=date(1958, 3, 1), birth_time=time(13, 3), options=joja_lmt).hour[1] == "未"


def test_generated_data_module_matches_lunar_python():
    """core/saju/_terms_data.py must equal a fresh derivation (regenerate: python -m core.saju.generate_terms)."""
    from core.saju._terms_data import ROWS
    from core.saju.terms import derive_rows

    assert list(ROWS) == derive_rows()
    assert term_table().source == "data module"
