import dataclasses
import datetime as dt
import json
import os
import random
import re
import subprocess
import sys
from itertools import pairwise
from pathlib import Path
from statistics import mean

import pytest

from core import saju
from core.fortunes import phrases
from core.fortunes.inputs import GenerationInput
from core.fortunes.providers import ProviderError, get_provider, local
from core.fortunes.providers.base import FailureReason
from core.fortunes.providers.local import (
    INVALID_DAY_PILLAR,
    MODEL,
    VARIATION,
    LocalProvider,
    branch_relation,
    day_scores,
)
from core.fortunes.schema import FortuneContent, GeneratedPart

ROOT = Path(__file__).resolve().parents[2]
PROVIDER = LocalProvider()
START = dt.date(2025, 3, 1)
SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
HANGUL = re.compile(r"[가-힣]")


def _input(*, birth: dt.date = dt.date(1990, 5, 17), time: dt.time | None = dt.time(7, 30), gender: str = "F",
           for_date: dt.date = START) -> GenerationInput:
    chart = saju.natal_chart(birth_date=birth, birth_time=time)
    return GenerationInput(
        for_date=for_date, year=chart.year, month=chart.month, day=chart.day, hour=chart.hour, gender=gender,
        generator=PROVIDER.generator,
    )


def _inputs(*, count: int, seed: int) -> list[GenerationInput]:
    rng = random.Random(seed)
    return [
        _input(
            birth=dt.date(1950, 1, 1) + dt.timedelta(days=rng.randrange(60 * 365)),
            time=dt.time(rng.randrange(24), rng.randrange(60)) if rng.random() < 0.5 else None,
            gender=rng.choice(["M", "F", ""]),
            for_date=START + dt.timedelta(days=rng.randrange(730)),
        )
        for _ in range(count)
    ]


def _generate(inp: GenerationInput) -> FortuneContent:
    return PROVIDER.generate(inp).content


def _sentences(content: FortuneContent) -> set[str]:
    texts = [content.summary, content.overall.text, content.advice]
    texts += [getattr(content.categories, name).text for name in phrases.CATEGORIES]
    return {sentence for text in texts for sentence in SENTENCE_END.split(text)}


def _clear_caches() -> None:
    local._day.cache_clear()
    local._day_master.cache_clear()
    local._scored_cache.clear()
    local._lucky_cache.clear()


# --- the provider contract -------------------------------------------------------------------------

def test_identity_and_lookup():
    provider = get_provider(name="local")
    assert isinstance(provider, LocalProvider)
    assert (provider.name, provider.model, provider.generator) == ("local", MODEL, f"local:{MODEL}")


def test_settings_select_the_local_provider(settings):
    settings.FORTUNE_PROVIDER = "local"
    assert isinstance(get_provider(), LocalProvider)


def test_output_is_what_compose_gives_and_valid_for_the_schema():
    for inp in _inputs(count=300, seed=1):
        generated = PROVIDER.generate(inp)
        data = generated.content.as_json()

        assert (generated.tokens_in, generated.tokens_out) == (0, 0)
        # The provider skips validation for speed: the JSON must validate and equal compose()'s output.
        assert FortuneContent.model_validate(data).as_json() == data
        assert json.loads(generated.content.model_dump_json()) == data  # what the batch stores
        part = GeneratedPart.model_validate({key: data[key] for key in GeneratedPart.model_fields})
        composed = inp.compose(part)
        assert composed.as_json() == data
        assert composed == generated.content
        assert composed.model_fields_set == generated.content.model_fields_set


def test_the_same_input_gives_the_same_output_even_with_cold_caches():
    inputs = _inputs(count=50, seed=2)
    first = [json.dumps(_generate(inp).as_json(), ensure_ascii=False) for inp in inputs]
    _clear_caches()
    again = [json.dumps(LocalProvider().generate(dataclasses.replace(inp)).content.as_json(), ensure_ascii=False)
             for inp in inputs]
    assert first == again


def test_the_same_input_gives_the_same_output_in_other_processes():
    script = (
        "import datetime as dt, json\n"
        "from core.fortunes.inputs import GenerationInput\n"
        "from core.fortunes.providers.local import LocalProvider\n"
        "inp = GenerationInput(for_date=dt.date(2025, 3, 1), year='庚午', month='辛巳', day='壬午', hour='甲辰',"
        " gender='F', generator='local:saju-rules-v1')\n"
        "print(json.dumps(LocalProvider().generate(inp).content.as_json(), ensure_ascii=False, sort_keys=True))\n"
    )
    expected = json.dumps(_generate(_input()).as_json(), ensure_ascii=False, sort_keys=True)
    for seed in ("0", "77"):
        env = {**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": str(ROOT), "PYTHONIOENCODING": "utf-8"}
        out = subprocess.run(
            [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=True
        )
        assert out.stdout.strip() == expected


def test_different_dates_give_different_fortunes():
    parts = [
        json.dumps(GeneratedPart.model_validate(
            {k: v for k, v in _generate(_input(for_date=START + dt.timedelta(days=n))).as_json().items()
             if k in GeneratedPart.model_fields}
        ).model_dump(), ensure_ascii=False)
        for n in range(60)
    ]
    assert len(set(parts)) == 60


def test_different_people_on_the_same_date_read_different_fortunes():
    summaries = {_generate(inp).summary for inp in _inputs(count=40, seed=3) if inp.for_date == START} | {
        _generate(dataclasses.replace(inp, for_date=START)).summary for inp in _inputs(count=40, seed=3)
    }
    assert len(summaries) >= 10


def test_a_missing_day_pillar_is_a_non_retryable_error():
    inp = dataclasses.replace(_input(), day="")
    with pytest.raises(ProviderError) as excinfo:
        PROVIDER.generate(inp)
    assert str(excinfo.value) == INVALID_DAY_PILLAR.format(day="")
    assert excinfo.value.reason == FailureReason.BAD_REQUEST
    assert excinfo.value.retryable is False


# --- texts -----------------------------------------------------------------------------------------

CHARTS = [
    (dt.date(1990, 5, 17), dt.time(7, 30), "F"),
    (dt.date(1984, 2, 4), dt.time(12, 0), "M"),
    (dt.date(1957, 8, 1), None, ""),
    (dt.date(2003, 12, 24), dt.time(23, 40), "F"),
]


@pytest.mark.parametrize(("birth", "time", "gender"), CHARTS)
def test_thirty_consecutive_days_never_repeat_a_sentence_the_next_day(birth, time, gender):
    days = [_generate(_input(birth=birth, time=time, gender=gender, for_date=START + dt.timedelta(days=n)))
            for n in range(30)]

    summaries = [content.summary for content in days]
    assert all(a != b for a, b in pairwise(summaries))
    assert len(set(summaries)) == 30
    assert len({content.overall.text for content in days}) >= 20
    assert len({content.advice for content in days}) >= 20
    for today, tomorrow in pairwise(days):
        assert not _sentences(today) & _sentences(tomorrow), today.for_date


def _bank() -> list[str]:
    sentences = []
    for table in (phrases.HEADLINES, phrases.SUMMARY_TAILS, phrases.OVERALL, phrases.BRANCH_NOTES, phrases.ADVICE):
        sentences += [s for options in table.values() for text in options for s in SENTENCE_END.split(text)]
    for table in (phrases.THEMES, phrases.BAND_LINES):
        sentences += [text for by_key in table.values() for options in by_key.values() for text in options]
    return sentences + list(phrases.LUCKY_COLOR_LINES)


def test_the_phrase_bank_has_no_duplicate_sentence_and_no_placeholder():
    bank = _bank()
    assert len(bank) > 200
    assert len(set(bank)) == len(bank)
    for sentence in bank:
        assert HANGUL.search(sentence), sentence
        assert sentence.endswith((".", "!", "?")), sentence
        assert not re.search(r"lorem|ipsum|todo|xxx|\?\?", sentence, re.IGNORECASE), sentence


def test_the_phrase_bank_covers_every_ten_god_relation_category_and_band():
    relations = {saju.RELATION_SAME, saju.RELATION_GENERATES_ME, saju.RELATION_I_GENERATE, saju.RELATION_I_CONTROL,
                 saju.RELATION_CONTROLS_ME}
    assert set(phrases.HEADLINES) == set(phrases.OVERALL) == set(local.BASE_SCORES) == set(saju.TEN_GODS)
    assert set(phrases.THEMES) == set(phrases.ADVICE) == relations
    assert set(phrases.BRANCH_NOTES) == set(local.BRANCH_ADJUST)
    # Lists keyed by ten god rotate once per 10-day cycle and need three entries for 30 distinct days;
    # the others rotate daily and need two.
    assert all(len(options) >= 4 for options in phrases.HEADLINES.values())
    assert all(len(options) >= 3 for options in phrases.OVERALL.values())
    for relation in relations:
        assert set(phrases.THEMES[relation]) == set(phrases.CATEGORIES)
        assert all(len(options) >= 2 for options in phrases.THEMES[relation].values())
    for category in phrases.CATEGORIES:
        assert set(phrases.BAND_LINES[category]) == set(phrases.BANDS)
        assert all(len(options) >= 2 for options in phrases.BAND_LINES[category].values())
    assert all(len(options) >= 2 for options in phrases.BRANCH_NOTES.values())
    assert set(phrases.SUMMARY_TAILS) == set(phrases.BANDS)


def test_the_longest_combination_of_every_text_fits_the_schema():
    longest = lambda table: max(len(text) for options in table.values() for text in options)  # noqa: E731
    assert longest(phrases.HEADLINES) + 1 + longest(phrases.SUMMARY_TAILS) <= 300
    assert longest(phrases.OVERALL) + 1 + longest(phrases.BRANCH_NOTES) <= 600
    for category in phrases.CATEGORIES:
        theme = max(len(t) for by_cat in phrases.THEMES.values() for t in by_cat[category])
        assert theme + 1 + longest(phrases.BAND_LINES[category]) <= 600
    longest_color = max(len(c) for colors in phrases.ELEMENT_COLORS.values() for c in colors)
    color_line = max(len(line.format(color="")) for line in phrases.LUCKY_COLOR_LINES) + longest_color
    assert longest(phrases.ADVICE) + 1 + color_line <= 400
    assert longest_color <= 20
    assert max(len(d) for d in phrases.ELEMENT_DIRECTIONS.values()) <= 10


# --- scores follow the saju ------------------------------------------------------------------------

def _sample() -> list[tuple[FortuneContent, str]]:
    """(content, branch relation) for 40 people over 60 days: every ten god and branch relation."""
    rows = []
    for inp in _inputs(count=40, seed=4):
        for n in range(60):
            content = _generate(dataclasses.replace(inp, for_date=START + dt.timedelta(days=n)))
            branch = branch_relation(natal_branch=inp.day[1], date_branch=content.saju.date_pillar[1])
            rows.append((content, branch))
    return rows


@pytest.fixture(scope="module")
def sample() -> list[tuple[FortuneContent, str]]:
    return _sample()


def _average(sample, category: str, relation: str) -> float:
    return mean(
        getattr(content.categories, category).score
        for content, _ in sample if content.saju.element_relation == relation
    )


@pytest.mark.parametrize(
    ("category", "favoured", "other"),
    [
        ("money", saju.RELATION_I_CONTROL, saju.RELATION_SAME),  # 재성 days lift money, 비겁 days drain it
        ("work", saju.RELATION_CONTROLS_ME, saju.RELATION_I_GENERATE),  # 관성 lift work, 상관 clashes with it
        ("love", saju.RELATION_I_GENERATE, saju.RELATION_GENERATES_ME),  # 식상: expression
        ("health", saju.RELATION_GENERATES_ME, saju.RELATION_CONTROLS_ME),  # 인성 restores, 관성 strains
    ],
    ids=["money", "work", "love", "health"],
)
def test_category_scores_follow_the_element_relation(sample, category, favoured, other):
    assert _average(sample, category, favoured) >= _average(sample, category, other) + 10


def test_money_is_best_on_jeongjae_days_and_work_on_jeonggwan_days(sample):
    by_ten_god = {
        god: [content for content, _ in sample if content.saju.ten_god == god] for god in saju.TEN_GODS
    }
    money = {god: mean(c.categories.money.score for c in items) for god, items in by_ten_god.items()}
    work = {god: mean(c.categories.work.score for c in items) for god, items in by_ten_god.items()}
    assert max(money, key=money.get) == "정재"
    assert min(money, key=money.get) == "겁재"
    assert max(work, key=work.get) == "정관"


def test_a_branch_clash_lowers_and_a_harmony_raises_the_overall_score(sample):
    # What is left of the overall score once the ten god's base is taken out, per branch relation.
    residual = {
        branch: mean(content.overall.score - local.BASE_SCORES[content.saju.ten_god][0]
                     for content, b in sample if b == branch)
        for branch in (phrases.BRANCH_HARMONY, phrases.BRANCH_NEUTRAL, phrases.BRANCH_CLASH)
    }
    assert residual[phrases.BRANCH_HARMONY] > 2
    assert abs(residual[phrases.BRANCH_NEUTRAL]) < 1.5
    assert residual[phrases.BRANCH_CLASH] < -3
    clash_days = [content for content, b in sample if b == phrases.BRANCH_CLASH]
    assert clash_days
    assert all("충" in content.overall.text for content in clash_days)


def test_variation_stays_within_its_bound():
    rng = random.Random(5)
    for ten_god in saju.TEN_GODS:
        for branch in local.BRANCH_ADJUST:
            base = day_scores(ten_god=ten_god, branch=branch, mix=0)
            adjust = local.BRANCH_ADJUST[branch]
            assert base == tuple(b + a for b, a in zip(local.BASE_SCORES[ten_god], adjust, strict=True))
            seen = set()
            for _ in range(300):
                scores = day_scores(ten_god=ten_god, branch=branch, mix=rng.getrandbits(64) | 1)
                assert all(abs(s - b) <= VARIATION for s, b in zip(scores, base, strict=True))
                seen.add(scores)
            assert len(seen) > 100  # the variation is real


BRANCH_PAIRS = {
    phrases.BRANCH_HARMONY: ["子丑", "寅亥", "卯戌", "辰酉", "巳申", "午未"],
    phrases.BRANCH_CLASH: ["子午", "丑未", "寅申", "卯酉", "辰戌", "巳亥"],
}


def test_branch_relations_are_the_six_harmonies_and_six_clashes():
    expected = {}
    for relation, pairs in BRANCH_PAIRS.items():
        for a, b in pairs:
            expected[a, b] = expected[b, a] = relation
    for a in saju.BRANCHES:
        for b in saju.BRANCHES:
            assert branch_relation(natal_branch=a, date_branch=b) == expected.get((a, b), phrases.BRANCH_NEUTRAL)


# --- lucky -----------------------------------------------------------------------------------------

# For a 甲 (wood) day master: date stem -> favourable element.
WOOD_DAY_MASTER_LUCKY = {
    "甲": "fire", "乙": "fire",  # 비화: the day master is reinforced; its output (식상) is favoured
    "壬": "fire", "癸": "fire",  # 생조: likewise
    "丙": "water", "丁": "water",  # 설기: drained; resource (인성) favoured
    "庚": "water", "辛": "water",  # 극입: pressure turned into support by 인성
    "戊": "wood", "己": "wood",  # 극출: own element (비겁) carries the wealth
}
ELEMENT_DIRECTION = {"wood": "동쪽", "fire": "남쪽", "earth": "중앙", "metal": "서쪽", "water": "북쪽"}
HETU = {"water": {1, 6}, "fire": {2, 7}, "wood": {3, 8}, "metal": {4, 9}, "earth": {5, 0}}


def test_lucky_color_direction_and_number_come_from_the_favourable_element():
    inp = GenerationInput(for_date=START, year="庚午", month="辛巳", day="甲子", hour=None, gender="M",
                          generator=PROVIDER.generator)
    seen_stems = set()
    for n in range(40):
        content = _generate(dataclasses.replace(inp, for_date=START + dt.timedelta(days=n)))
        stem = content.saju.date_pillar[0]
        seen_stems.add(stem)
        element = WOOD_DAY_MASTER_LUCKY[stem]
        assert content.lucky.direction == ELEMENT_DIRECTION[element]
        assert content.lucky.color in phrases.ELEMENT_COLORS[element]
        assert content.lucky.number % 10 in HETU[element]
        assert content.lucky.color in content.advice
    assert seen_stems == set(saju.STEMS)


def test_lucky_numbers_vary():
    numbers = {_generate(inp).lucky.number for inp in _inputs(count=200, seed=6)}
    assert len(numbers) >= 20
