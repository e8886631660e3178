from dataclasses import FrozenInstanceError
from datetime import date, datetime, time
from zoneinfo import ZoneInfo

import pytest

import core.saju as saju
from core.saju import ChartOptions, InvalidBirthData, NatalChart, natal_chart


def test_constants():
    assert saju.STEMS == "甲乙丙丁戊己庚辛壬癸" and saju.BRANCHES == "子丑寅卯辰巳午未申酉戌亥"
    assert saju.STEMS_HANGUL == "갑을병정무기경신임계" and saju.BRANCHES_HANGUL == "자축인묘진사오미신유술해"
    assert saju.ELEMENTS == ("wood", "fire", "earth", "metal", "water")
    assert saju.STEM_ELEMENT["丙"] == "fire" and saju.STEM_YIN_YANG["丁"] == "yin"
    assert saju.BRANCH_ELEMENT["亥"] == "water" and saju.BRANCH_ELEMENT["未"] == "earth"
    assert isinstance(saju.ENGINE_VERSION, int)
    assert all(hasattr(saju, name) for name in saju.__all__)


def test_chart_properties():
    chart = natal_chart(birth_date=date(1984, 2, 4), birth_time=time(12))
    assert chart == NatalChart("癸亥", "乙丑", "戊辰", "戊午", False)
    assert chart.day_master == "戊"
    assert (chart.day_master_element, chart.day_master_yin_yang) == ("earth", "yang")
    assert chart.pillars_hangul == {"year": "계해", "month": "을축", "day": "무진", "hour": "무오"}
    # 癸 water 亥 water 乙 wood 丑 earth 戊 earth 辰 earth 戊 earth 午 fire
    assert chart.element_counts == {"wood": 1, "fire": 1, "earth": 4, "metal": 0, "water": 2}
    assert chart.as_dict() == {"year": "癸亥", "month": "乙丑", "day": "戊辰", "hour": "戊午"}
    with pytest.raises(FrozenInstanceError):
        chart.year = "甲子"  # type: ignore[misc]


def test_keyword_only():
    with pytest.raises(TypeError):
        natal_chart(date(2000, 1, 1))  # type: ignore[misc]


@pytest.mark.parametrize("d", [date(1899, 12, 31), date(2101, 1, 1)])
def test_out_of_range(d):
    with pytest.raises(InvalidBirthData, match="outside 1900-01-01..2100-12-31"):
        natal_chart(birth_date=d, birth_time=time(12))


def test_rejects_aware_time_and_datetime():
    with pytest.raises(InvalidBirthData, match="naive"):
        natal_chart(birth_date=date(2000, 1, 1), birth_time=time(12, tzinfo=ZoneInfo("Asia/Seoul")))
    with pytest.raises(TypeError):
        natal_chart(birth_date=datetime(2000, 1, 1, 12, tzinfo=ZoneInfo("Asia/Seoul")))


def test_bad_option():
    with pytest.raises(ValueError, match="zi_convention"):
        ChartOptions(zi_convention="midnight")


def test_seconds_are_honoured_at_a_term_instant():
    # 입춘 1984 per lunar-python: 1984-02-04 23:18:44 UTC+8 = 1984-02-05 00:18:44 KST.
    assert natal_chart(birth_date=date(1984, 2, 5), birth_time=time(0, 18, 40)).month == "乙丑"
    assert natal_chart(birth_date=date(1984, 2, 5), birth_time=time(0, 18, 50)).month == "丙寅"
