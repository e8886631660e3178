"""The `local` provider: deterministic, offline fortunes from saju rules and a curated phrase bank.

Rules (model ``saju-rules-v1``):

* **Scores** (overall, love, money, work, health) start from a base set by the ten god (십신) of the
  target date's stem seen from the day master (``BASE_SCORES``): 정재/편재 lift money, 정관 (and
  편관, with pressure) work, 식신/상관 love and expression, 정인/편인 health and study, 비견/겁재
  competition (겁재 drains money), 편관 strains health. The element relation (비화/생조/설기/극출/
  극입) is the ten god's group, so it is already in that base.
* The date's **branch against the natal day branch**: 六合 (子丑 寅亥 卯戌 辰酉 巳申 午未) adds to
  love and overall, 六沖 (branches six apart) takes from overall and health (``BRANCH_ADJUST``).
* Then a **variation** of at most ±``VARIATION`` per score, mixed from the natal pillars, gender and
  date; scores are clamped to ``SCORE_MIN..SCORE_MAX``. Bands: high ≥ ``HIGH_FROM``, mid ≥
  ``MID_FROM``, low below.
* **Texts** (core.fortunes.phrases): summary = ten-god headline + overall-band closer; overall =
  ten-god reading + branch note; each category = relation theme + band outlook; advice = relation
  advice + a lucky-colour line. Each slot picks ``(user offset + day) % len(list)``, the offset
  drawn from the natal pillars and gender, so consecutive days never pick the same sentence from a
  list, and lists keyed by ten god rotate by ``day // 10`` (the ten god recurs every 10 days), so
  the summary is new every day for 30 days at least. (A per-date hash would pick at random and could
  repeat a sentence the next day.)
* **Lucky**: the favourable element is the one that supports the day master on that day: the
  resource element (인성, it generates the day master) on 설기 and 극입 days, the day master's own
  element (비겁) on 극출 days, and the output element (식상, the day master generates it) on 비화
  and 생조 days, when the day master is already reinforced. Its 五方色 shade (rotated daily), its
  direction, and a 河圖 number (水 1·6, 火 2·7, 木 3·8, 金 4·9, 土 5·10) plus a multiple of 10.

The content is what ``inp.compose(part)`` gives, built without re-validation (validating would cost
more than this whole provider; figures in docs/BENCHMARKS.md): every part comes from the fixed bank
and is checked by tests.
"""

import zlib
from functools import lru_cache

from core import saju
from core.fortunes import phrases
from core.fortunes.inputs import GenerationInput
from core.fortunes.providers.base import FailureReason, Generated, ProviderError
from core.fortunes.schema import (
    SCHEMA_VERSION,
    Categories,
    DayMaster,
    FortuneContent,
    Lucky,
    Pillars,
    SajuBlock,
    ScoredText,
)

MODEL = "saju-rules-v1"
INVALID_DAY_PILLAR = "The generation input has no valid natal day pillar (got {day!r}); refresh the user's pillars."

# (overall, love, money, work, health) per ten god of the date's stem.
BASE_SCORES: dict[str, tuple[int, int, int, int, int]] = {
    "비견": (64, 58, 50, 64, 72),
    "겁재": (56, 52, 40, 58, 66),
    "식신": (76, 72, 66, 66, 80),
    "상관": (64, 70, 58, 50, 60),
    "편재": (72, 68, 80, 66, 60),
    "정재": (74, 66, 86, 70, 66),
    "편관": (54, 54, 54, 68, 48),
    "정관": (74, 66, 62, 84, 66),
    "편인": (60, 48, 52, 62, 68),
    "정인": (76, 64, 60, 70, 82),
}
BRANCH_ADJUST: dict[str, tuple[int, int, int, int, int]] = {
    phrases.BRANCH_HARMONY: (4, 6, 2, 2, 0),
    phrases.BRANCH_CLASH: (-6, -4, -3, -4, -6),
    phrases.BRANCH_NEUTRAL: (0, 0, 0, 0, 0),
}
VARIATION = 6
SCORE_MIN, SCORE_MAX = 5, 98
HIGH_FROM, MID_FROM = 72, 52

_MASK64 = (1 << 64) - 1
_BRANCH_INDEX = {b: i for i, b in enumerate(saju.BRANCHES)}
# Favourable element = ELEMENTS[(day master's index + shift) % 5] for the day's element relation.
_FAVOURABLE_SHIFT = {
    saju.RELATION_SAME: 1,
    saju.RELATION_GENERATES_ME: 1,
    saju.RELATION_I_GENERATE: -1,
    saju.RELATION_CONTROLS_ME: -1,
    saju.RELATION_I_CONTROL: 0,
}


def branch_relation(*, natal_branch: str, date_branch: str) -> str:
    """六合 (harmony), 六沖 (clash) or neither between two earthly branches."""
    a, b = _BRANCH_INDEX[natal_branch], _BRANCH_INDEX[date_branch]
    if (a + b) % 12 == 1:
        return phrases.BRANCH_HARMONY
    if (a - b) % 12 == 6:
        return phrases.BRANCH_CLASH
    return phrases.BRANCH_NEUTRAL


def favourable_element(*, day_master_element: str, element_relation: str) -> str:
    i = saju.ELEMENTS.index(day_master_element)
    return saju.ELEMENTS[(i + _FAVOURABLE_SHIFT[element_relation]) % 5]


def day_scores(*, ten_god: str, branch: str, mix: int) -> tuple[int, int, int, int, int]:
    """(overall, love, money, work, health); ``mix`` is any 64-bit integer (0 = no variation)."""
    base = _BASES[ten_god, branch]
    if not mix:
        return base
    span = 2 * VARIATION + 1
    o, lv, mn, wk, hl = base
    return (
        _clamp(o + (mix & 0xFF) % span - VARIATION),
        _clamp(lv + (mix >> 8 & 0xFF) % span - VARIATION),
        _clamp(mn + (mix >> 16 & 0xFF) % span - VARIATION),
        _clamp(wk + (mix >> 24 & 0xFF) % span - VARIATION),
        _clamp(hl + (mix >> 32 & 0xFF) % span - VARIATION),
    )


def _clamp(score: int) -> int:
    return SCORE_MIN if score < SCORE_MIN else SCORE_MAX if score > SCORE_MAX else score


_BASES = {
    (ten_god, branch): tuple(_clamp(b + a) for b, a in zip(base, adjust, strict=True))
    for ten_god, base in BASE_SCORES.items() for branch, adjust in BRANCH_ADJUST.items()
}


def score_band(score: int) -> str:
    return "high" if score >= HIGH_FROM else "mid" if score >= MID_FROM else "low"


def _mix(user_key: int, ordinal: int) -> int:
    # splitmix64 finaliser: every bit of (user, day) reaches every score's byte.
    m = ((user_key << 32) ^ ordinal) + 0x9E3779B97F4A7C15 & _MASK64
    m = (m ^ (m >> 30)) * 0xBF58476D1CE4E5B9 & _MASK64
    m = (m ^ (m >> 27)) * 0x94D049BB133111EB & _MASK64
    return (m ^ (m >> 31)) or 1


@lru_cache(maxsize=16384)
def _day(day_master: str, natal_branch: str, for_date) -> tuple:
    """What one (day master, natal day branch, date) shares: reading, branch relation, lucky element."""
    reading = saju.daily_reading(day_master=day_master, target=for_date)
    branch = branch_relation(natal_branch=natal_branch, date_branch=reading.date_pillar[1])
    element = favourable_element(
        day_master_element=saju.STEM_ELEMENT[day_master], element_relation=reading.element_relation
    )
    return reading, branch, element, for_date.toordinal()


@lru_cache(maxsize=10)
def _day_master(stem: str) -> DayMaster:
    return DayMaster(stem=stem, element=saju.STEM_ELEMENT[stem], yin_yang=saju.STEM_YIN_YANG[stem])


def _construct(cls: type, fields: dict, fields_set: frozenset | None = None):
    """Build a model from parts that are valid by construction (no re-validation on the hot path)."""
    return cls.model_construct(_fields_set=set(fields if fields_set is None else fields_set), **fields)


# As compose() leaves it: schema_version is a default, not set.
_CONTENT_FIELDS_SET = frozenset(FortuneContent.model_fields) - {"schema_version"}
_scored_cache: dict[tuple, ScoredText] = {}
_lucky_cache: dict[tuple, Lucky] = {}


def _scored(key: tuple, score: int, first: str, second: str) -> ScoredText:
    # Bounded by the bank (slot, score, two sentences): a few tens of thousands at most.
    item = _scored_cache.get(key)
    if item is None:
        item = _scored_cache[key] = _construct(ScoredText, {"score": score, "text": f"{first} {second}"})
    return item


def _lucky(element: str, shade: int, number: int) -> Lucky:
    key = (element, shade, number)
    item = _lucky_cache.get(key)
    if item is None:
        item = _lucky_cache[key] = _construct(Lucky, {
            "color": phrases.ELEMENT_COLORS[element][shade],
            "number": number,
            "direction": phrases.ELEMENT_DIRECTIONS[element],
        })
    return item


class LocalProvider:
    name = "local"
    model = MODEL

    @property
    def generator(self) -> str:
        return f"{self.name}:{self.model}"

    def generate(self, inp: GenerationInput) -> Generated:
        day = inp.day
        try:
            reading, branch, element, ordinal = _day(day[0], day[1], inp.for_date)
        except (IndexError, KeyError, ValueError):
            raise ProviderError(
                INVALID_DAY_PILLAR.format(day=day), reason=FailureReason.BAD_REQUEST, retryable=False
            ) from None
        ten_god, relation = reading.ten_god, reading.element_relation
        # crc32, not hash(): the same in every process whatever PYTHONHASHSEED.
        natal = zlib.crc32(f"{inp.year}{inp.month}{day}{inp.hour or ''}{inp.gender}".encode())
        mix = _mix(natal, ordinal)
        user = _mix(natal, 0)  # the user's phrase offsets: 64 bits, sliced per slot below
        overall, love, money, work, health = day_scores(ten_god=ten_god, branch=branch, mix=mix)
        cycle = ordinal // 10

        headlines = phrases.HEADLINES[ten_god]
        tails = phrases.SUMMARY_TAILS[score_band(overall)]
        summary = f"{headlines[(user + cycle) % len(headlines)]} {tails[((user >> 3) + ordinal) % len(tails)]}"

        readings, notes = phrases.OVERALL[ten_god], phrases.BRANCH_NOTES[branch]
        i, j = ((user >> 6) + cycle) % len(readings), ((user >> 9) + ordinal) % len(notes)
        overall_item = _scored(("overall", overall, ten_god, i, branch, j), overall, readings[i], notes[j])

        themes = phrases.THEMES[relation]
        categories = {}
        for slot, category, score in ((4, "love", love), (5, "money", money), (6, "work", work),
                                      (7, "health", health)):
            band = score_band(score)
            theme, lines = themes[category], phrases.BAND_LINES[category][band]
            i = ((user >> (4 * slot)) + ordinal) % len(theme)
            j = ((user >> (4 * slot + 16)) + ordinal) % len(lines)
            categories[category] = _scored((category, score, relation, i, band, j), score, theme[i], lines[j])

        colors = phrases.ELEMENT_COLORS[element]
        shade = ((user >> 48) + ordinal) % len(colors)
        low, high = phrases.ELEMENT_NUMBERS[element]
        lucky = _lucky(element, shade, (high if mix >> 48 & 1 else low) + 10 * ((mix >> 40) % 5))
        advice_lines, color_lines = phrases.ADVICE[relation], phrases.LUCKY_COLOR_LINES
        advice = (
            f"{advice_lines[((user >> 52) + ordinal) % len(advice_lines)]} "
            f"{color_lines[((user >> 56) + ordinal) % len(color_lines)].format(color=colors[shade])}"
        )

        content = _construct(FortuneContent, {
            "summary": summary,
            "overall": overall_item,
            "categories": _construct(Categories, categories),
            "lucky": lucky,
            "advice": advice,
            "schema_version": SCHEMA_VERSION,
            "for_date": inp.for_date,
            "saju": _construct(SajuBlock, {
                "pillars": _construct(Pillars, {"year": inp.year, "month": inp.month, "day": day, "hour": inp.hour}),
                "day_master": _day_master(day[0]),
                "date_pillar": reading.date_pillar,
                "ten_god": ten_god,
                "element_relation": relation,
            }),
        }, _CONTENT_FIELDS_SET)
        return Generated(content=content, tokens_in=0, tokens_out=0)
