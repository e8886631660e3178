"""Stem/branch tables shared by the saju engine."""

STEMS = "甲乙丙丁戊己庚辛壬癸"
BRANCHES = "子丑寅卯辰巳午未申酉戌亥"
STEMS_HANGUL = "갑을병정무기경신임계"
BRANCHES_HANGUL = "자축인묘진사오미신유술해"
ELEMENTS = ("wood", "fire", "earth", "metal", "water")

STEM_ELEMENT: dict[str, str] = {s: ELEMENTS[i // 2] for i, s in enumerate(STEMS)}
STEM_YIN_YANG: dict[str, str] = {s: ("yang", "yin")[i % 2] for i, s in enumerate(STEMS)}
BRANCH_ELEMENT: dict[str, str] = dict(
    zip(
        BRANCHES,
        ("water", "earth", "wood", "wood", "earth", "fire",
         "fire", "earth", "metal", "metal", "earth", "water"),
        strict=True,
    )
)

# Sexagenary cycle: index i (0 = 甲子) -> 2-char hanja pillar.
GANZHI: tuple[str, ...] = tuple(STEMS[i % 10] + BRANCHES[i % 12] for i in range(60))
GANZHI_HANGUL: dict[str, str] = {
    STEMS[i % 10] + BRANCHES[i % 12]: STEMS_HANGUL[i % 10] + BRANCHES_HANGUL[i % 12]
    for i in range(60)
}

# toordinal() offset so that (ordinal + DAY_OFFSET) % 60 is the sexagenary day index;
# anchor: 2000-01-01 (ordinal 730120) is 戊午 (index 54).
DAY_OFFSET = (54 - 730120) % 60


class InvalidBirthData(ValueError):
    """Birth data that cannot be charted (impossible lunar date, out of range, ...)."""
