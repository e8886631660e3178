"""Pure-Python saju (사주, four pillars) engine.  No Django imports here.

See ``core.saju.chart`` for the exact time conventions (zoneinfo civil time ->
UTC instant for year/month; 조자시 "joja" default vs 야자시 "yaja"; opt-in
Seoul local mean time).  Bump ENGINE_VERSION whenever chart results change.
"""

from .chart import ChartOptions, NatalChart, day_pillar, natal_chart
from .constants import (
    BRANCH_ELEMENT,
    BRANCHES,
    BRANCHES_HANGUL,
    ELEMENTS,
    STEM_ELEMENT,
    STEM_YIN_YANG,
    STEMS,
    STEMS_HANGUL,
    InvalidBirthData,
)
from .lunisolar import lunar_to_solar
from .relations import (
    RELATION_CONTROLS_ME,
    RELATION_GENERATES_ME,
    RELATION_I_CONTROL,
    RELATION_I_GENERATE,
    RELATION_SAME,
    TEN_GODS,
    DailyReading,
    daily_reading,
    element_relation,
    ten_god,
)

ENGINE_VERSION: int = 1

__all__ = [
    "BRANCHES",
    "BRANCHES_HANGUL",
    "BRANCH_ELEMENT",
    "ChartOptions",
    "DailyReading",
    "ELEMENTS",
    "ENGINE_VERSION",
    "InvalidBirthData",
    "NatalChart",
    "RELATION_CONTROLS_ME",
    "RELATION_GENERATES_ME",
    "RELATION_I_CONTROL",
    "RELATION_I_GENERATE",
    "RELATION_SAME",
    "STEMS",
    "STEMS_HANGUL",
    "STEM_ELEMENT",
    "STEM_YIN_YANG",
    "TEN_GODS",
    "daily_reading",
    "day_pillar",
    "element_relation",
    "lunar_to_solar",
    "natal_chart",
    "ten_god",
]
