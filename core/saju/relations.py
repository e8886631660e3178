"""Ten gods (십신) and five-element relations between the day master and another stem."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from .chart import day_pillar
from .constants import STEMS, STEMS_HANGUL

# Relation of the OTHER stem's element to the day master's element.
RELATION_SAME = "비화"  # same element (비겁: 비견/겁재)
RELATION_GENERATES_ME = "생조"  # other generates me (인성: 편인/정인)
RELATION_I_GENERATE = "설기"  # I generate other (식상: 식신/상관)
RELATION_I_CONTROL = "극출"  # I control other (재성: 편재/정재)
RELATION_CONTROLS_ME = "극입"  # other controls me (관성: 편관/정관)

# Indexed by (other element - my element) % 5 in wood, fire, earth, metal, water order.
_RELATIONS = (RELATION_SAME, RELATION_I_GENERATE, RELATION_I_CONTROL, RELATION_CONTROLS_ME,
              RELATION_GENERATES_ME)
# Same index; first name when yin/yang polarity is the same, second when it differs.
_TEN_GODS = (("비견", "겁재"), ("식신", "상관"), ("편재", "정재"), ("편관", "정관"), ("편인", "정인"))
TEN_GODS = tuple(name for pair in _TEN_GODS for name in pair)


def _stem_index(stem: str) -> int:
    """Index 0..9 of a stem given in hanja (甲) or hangul (갑)."""
    i = STEMS.find(stem) if len(stem) == 1 else -1
    if i < 0:
        i = STEMS_HANGUL.find(stem) if len(stem) == 1 else -1
        if i < 0:
            raise ValueError(f"not a heavenly stem: {stem!r}")
    return i


def ten_god(*, day_master: str, other_stem: str) -> str:
    me, other = _stem_index(day_master), _stem_index(other_stem)
    return _TEN_GODS[(other // 2 - me // 2) % 5][(me ^ other) & 1]


def element_relation(*, day_master: str, other_stem: str) -> str:
    return _RELATIONS[(_stem_index(other_stem) // 2 - _stem_index(day_master) // 2) % 5]


@dataclass(frozen=True, slots=True)
class DailyReading:
    date_pillar: str
    ten_god: str
    element_relation: str


def daily_reading(*, day_master: str, target: date) -> DailyReading:
    """Ten god / element relation of ``target``'s day stem seen from ``day_master``."""
    pillar = day_pillar(target)
    return DailyReading(
        pillar,
        ten_god(day_master=day_master, other_stem=pillar[0]),
        element_relation(day_master=day_master, other_stem=pillar[0]),
    )
