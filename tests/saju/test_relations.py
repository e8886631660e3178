from datetime import date

import pytest

from core.saju import (
    RELATION_CONTROLS_ME,
    RELATION_GENERATES_ME,
    RELATION_I_CONTROL,
    RELATION_I_GENERATE,
    RELATION_SAME,
    STEMS,
    DailyReading,
    daily_reading,
    element_relation,
    ten_god,
)

GAP = dict(zip("甲乙丙丁戊己庚辛壬癸", "비견 겁재 식신 상관 편재 정재 편관 정관 편인 정인".split(), strict=True))


@pytest.mark.parametrize(("other", "expected"), GAP.items())
def test_ten_gods_of_gap(other, expected):
    assert ten_god(day_master="甲", other_stem=other) == expected


@pytest.mark.parametrize(
    ("dm", "other", "expected"),
    [("乙", "甲", "겁재"), ("乙", "丙", "상관"), ("乙", "丁", "식신"), ("丙", "壬", "편관"),
     ("丙", "癸", "정관"), ("辛", "戊", "정인"), ("辛", "己", "편인"), ("癸", "丙", "정재"),
     ("癸", "丁", "편재"), ("庚", "辛", "겁재"), ("갑", "신", "정관")],
)
def test_ten_gods_other_day_masters(dm, other, expected):
    assert ten_god(day_master=dm, other_stem=other) == expected


def test_relation_constants():
    assert (RELATION_SAME, RELATION_GENERATES_ME, RELATION_I_GENERATE, RELATION_I_CONTROL,
            RELATION_CONTROLS_ME) == ("비화", "생조", "설기", "극출", "극입")


@pytest.mark.parametrize(
    ("dm", "other", "expected"),
    [("甲", "乙", "비화"), ("甲", "壬", "생조"), ("甲", "丁", "설기"), ("甲", "己", "극출"),
     ("甲", "庚", "극입"), ("丙", "甲", "생조"), ("戊", "辛", "설기"), ("壬", "丙", "극출"),
     ("壬", "戊", "극입")],
)
def test_element_relation(dm, other, expected):
    assert element_relation(day_master=dm, other_stem=other) == expected


def test_ten_god_and_relation_are_consistent():
    group = {"비견": "비화", "겁재": "비화", "식신": "설기", "상관": "설기", "편재": "극출",
             "정재": "극출", "편관": "극입", "정관": "극입", "편인": "생조", "정인": "생조"}
    for dm in STEMS:
        gods = [ten_god(day_master=dm, other_stem=o) for o in STEMS]
        assert sorted(gods) == sorted(group)
        for o, god in zip(STEMS, gods, strict=True):
            assert element_relation(day_master=dm, other_stem=o) == group[god]


def test_daily_reading():
    assert daily_reading(day_master="甲", target=date(2000, 1, 1)) == DailyReading("戊午", "편재", "극출")
    assert daily_reading(day_master="戊", target=date(2000, 1, 2)) == DailyReading("己未", "겁재", "비화")


@pytest.mark.parametrize("bad", ["子", "", "甲乙", "x"])
def test_bad_stem(bad):
    with pytest.raises(ValueError, match="not a heavenly stem"):
        ten_god(day_master=bad, other_stem="甲")
