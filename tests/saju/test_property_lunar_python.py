"""natal_chart agrees with lunar-python's own EightChar away from 절 instants and 子 hour.

lunar-python works in UTC+8: year/month come from the birth instant converted to
UTC+8; day/hour pillars follow the Korean civil wall clock, so they come from an
EightChar built on the civil date/time itself (23:00-01:00 excluded, so the 子
hour sect setting does not matter).
"""

from __future__ import annotations

from bisect import bisect_left
from datetime import date, datetime, time, timedelta, timezone
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st
from lunar_python import Solar

from core.saju import natal_chart
from core.saju.terms import term_table

SEOUL = ZoneInfo("Asia/Seoul")
UTC8 = timezone(timedelta(hours=8))


def _eight_char(dt: datetime):
    return Solar.fromYmdHms(dt.year, dt.month, dt.day, dt.hour, dt.minute, dt.second).getLunar().getEightChar()


def _near_term(ts: float, margin: float = 2 * 3600) -> bool:
    instants = term_table().instants
    i = bisect_left(instants, ts)
    return any(0 <= j < len(instants) and abs(instants[j] - ts) < margin for j in (i - 1, i))


@settings(max_examples=2500, deadline=None, database=None)
@given(
    d=st.dates(min_value=date(1900, 1, 2), max_value=date(2100, 12, 31)),
    hour=st.integers(min_value=1, max_value=22),
    minute=st.integers(min_value=0, max_value=59),
)
def test_matches_lunar_python_eight_char(d: date, hour: int, minute: int) -> None:
    civil = datetime.combine(d, time(hour, minute))
    instant = civil.replace(tzinfo=SEOUL)
    if _near_term(instant.timestamp()):
        return
    chart = natal_chart(birth_date=d, birth_time=civil.time())
    at_utc8 = _eight_char(instant.astimezone(UTC8))
    at_civil = _eight_char(civil)
    assert (chart.year, chart.month) == (at_utc8.getYear(), at_utc8.getMonth())
    assert (chart.day, chart.hour) == (at_civil.getDay(), at_civil.getTime())


@settings(max_examples=300, deadline=None, database=None)
@given(d=st.dates(min_value=date(1900, 1, 2), max_value=date(2100, 12, 31)))
def test_unknown_time_matches_lunar_python_at_noon(d: date) -> None:
    noon = datetime.combine(d, time(12), SEOUL)
    if _near_term(noon.timestamp()):
        return
    chart = natal_chart(birth_date=d)
    ec = _eight_char(noon.astimezone(UTC8))
    assert (chart.year, chart.month, chart.hour) == (ec.getYear(), ec.getMonth(), None)
