import copy
import dataclasses
import datetime as dt
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from core import saju
from core.fortunes.inputs import PROMPT_VERSION, GenerationInput
from core.fortunes.schema import (
    Categories,
    DayMaster,
    FortuneContent,
    GeneratedPart,
    Lucky,
    ScoredText,
)
from tests.factories import user_create

ROOT = Path(__file__).resolve().parents[2]
BASE = GenerationInput(
    for_date=dt.date(2025, 3, 1), year="庚午", month="辛巳", day="甲子", hour="丙寅", gender="F",
    generator="local:saju-rules-v1",
)
# The documented canonical form: a compact JSON array, non-ASCII kept as is, the unknown hour as "".
BASE_CANONICAL = f'["2025-03-01","庚午","辛巳","甲子","丙寅","F","ko",{PROMPT_VERSION},"local:saju-rules-v1"]'


def _part(*, score: int = 50) -> GeneratedPart:
    text = ScoredText(score=score, text="무난한 하루입니다.")
    return GeneratedPart(
        summary="차분하게 보내기 좋은 날입니다.",
        overall=text,
        categories=Categories(love=text, money=text, work=text, health=text),
        lucky=Lucky(color="초록색", number=8, direction="동쪽"),
        advice="물을 자주 마시세요.",
    )


def _content_json() -> dict:
    return BASE.compose(_part()).as_json()


# --- the hash --------------------------------------------------------------------------------------

def test_hash_is_sha256_of_the_documented_canonical_form():
    assert BASE.canonical() == BASE_CANONICAL
    assert BASE.hash == hashlib.sha256(BASE_CANONICAL.encode("utf-8")).hexdigest()


def test_unknown_hour_is_an_empty_string_and_a_nonce_is_appended_only_when_set():
    no_hour = dataclasses.replace(BASE, hour=None)
    assert no_hour.canonical() == BASE_CANONICAL.replace('"丙寅"', '""')
    forced = dataclasses.replace(BASE, nonce="run-7")
    assert forced.canonical() == BASE_CANONICAL[:-1] + ',"run-7"]'
    assert forced.hash == hashlib.sha256(forced.canonical().encode()).hexdigest()


@pytest.mark.parametrize("generator", ['openai:a"b', "openai:back\\slash", "openai:tab\tnl\n\x01", "openai:\u2028모델"])
def test_canonical_is_exactly_the_json_dumps_form_even_for_awkward_text(generator):
    # canonical() builds the JSON itself (for speed); it must stay byte-for-byte json.dumps's form,
    # or every stored generation's hash would change.
    for inp in (dataclasses.replace(BASE, generator=generator), dataclasses.replace(BASE, generator=generator,
                                                                                    nonce=generator, hour=None)):
        fields = [inp.for_date.isoformat(), inp.year, inp.month, inp.day, inp.hour or "", inp.gender, inp.language,
                  inp.prompt_version, inp.generator] + ([inp.nonce] if inp.nonce else [])
        assert inp.canonical() == json.dumps(fields, ensure_ascii=False, separators=(",", ":"))
        assert json.loads(inp.canonical()) == fields


def test_hash_is_the_same_in_other_processes_whatever_the_hash_seed():
    script = (
        "import datetime as dt\n"
        "from core.fortunes.inputs import GenerationInput\n"
        "print(GenerationInput(for_date=dt.date(2025, 3, 1), year='庚午', month='辛巳', day='甲子', hour='丙寅',"
        " gender='F', generator='local:saju-rules-v1').hash)\n"
    )
    hashes = set()
    for seed in ("0", "1", "4242"):
        env = {**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": str(ROOT)}
        out = subprocess.run(
            [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=True
        )
        hashes.add(out.stdout.strip())
    assert hashes == {BASE.hash}


CHANGES = [
    ("for_date", dt.date(2025, 3, 2)),
    ("year", "辛未"),
    ("month", "壬午"),
    ("day", "乙丑"),
    ("hour", "丁卯"),
    ("hour", None),
    ("gender", "M"),
    ("gender", ""),
    ("language", "en"),
    ("prompt_version", PROMPT_VERSION + 1),
    ("generator", "openai:gpt-4o-mini"),
    ("nonce", "forced-1"),
]


@pytest.mark.parametrize(("field", "value"), CHANGES)
def test_hash_changes_when_any_field_changes(field, value):
    assert dataclasses.replace(BASE, **{field: value}).hash != BASE.hash


def test_every_field_of_the_input_is_covered_by_the_change_test():
    # A field added to GenerationInput but left out of canonical() would let two inputs share a hash.
    assert {field.name for field in dataclasses.fields(GenerationInput)} == {field for field, _ in CHANGES}


@pytest.mark.django_db
def test_for_user_carries_the_pillars_and_nothing_that_identifies_the_person():
    user = user_create(
        username="kim", email="kim.minji@example.com", first_name="Minji", last_name="Kim",
        birth_date_solar=dt.date(1990, 5, 17), birth_time=dt.time(7, 30), gender="F",
    )
    inp = GenerationInput.for_user(user=user, for_date=dt.date(2025, 3, 1), generator="local:saju-rules-v1")

    assert (inp.year, inp.month, inp.day, inp.hour) == ("庚午", "辛巳", "壬午", "甲辰")
    assert inp.gender == "F"
    canonical = inp.canonical().lower()
    for personal in ("kim", "minji", "example.com", "@", "1990-05-17", "07:30"):
        assert personal not in canonical
    assert not {"user", "user_id", "id", "email", "username", "name"} & {f.name for f in dataclasses.fields(inp)}


@pytest.mark.django_db
def test_for_user_without_birth_time_has_no_hour():
    user = user_create(username="kim", birth_date_solar=dt.date(1990, 5, 17), birth_time=None, gender="")
    inp = GenerationInput.for_user(user=user, for_date=dt.date(2025, 3, 1), generator="local:saju-rules-v1")
    assert inp.hour is None
    assert inp.gender == ""


# --- compose ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("days", range(10))  # ten consecutive days: every ten god of the day master
def test_compose_validates_and_carries_the_engines_reading(days):
    for_date = dt.date(2025, 3, 1) + dt.timedelta(days=days)
    inp = dataclasses.replace(BASE, for_date=for_date)

    content = inp.compose(_part())

    assert FortuneContent.model_validate(content.as_json()) == content
    reading = saju.daily_reading(day_master="甲", target=for_date)
    assert content.saju.date_pillar == reading.date_pillar == saju.day_pillar(for_date)
    assert content.saju.ten_god == reading.ten_god
    assert content.saju.element_relation == reading.element_relation
    assert content.saju.day_master == DayMaster(stem="甲", element="wood", yin_yang="yang")
    assert content.saju.pillars.model_dump() == {"year": "庚午", "month": "辛巳", "day": "甲子", "hour": "丙寅"}
    assert content.for_date == for_date
    assert content.schema_version == 1
    assert content.summary == _part().summary


def test_compose_on_an_anchor_date_without_the_engine():
    # 2000-01-01 is a 戊午 day; 戊 (yang earth) seen from 甲 (yang wood): wood controls earth, same polarity.
    inp = dataclasses.replace(BASE, for_date=dt.date(2000, 1, 1), hour=None)
    saju_block = inp.compose(_part()).as_json()["saju"]
    assert saju_block["date_pillar"] == "戊午"
    assert saju_block["ten_god"] == "편재"
    assert saju_block["element_relation"] == "극출"
    assert saju_block["pillars"]["hour"] is None


# --- the schema ------------------------------------------------------------------------------------

@pytest.mark.parametrize("score", [0, 100])
def test_scores_at_the_bounds_are_accepted(score):
    data = _content_json()
    data["overall"]["score"] = score
    data["categories"]["money"]["score"] = score
    assert FortuneContent.model_validate(data).overall.score == score


@pytest.mark.parametrize("score", [-1, 101, 1000])
@pytest.mark.parametrize("path", [("overall",), ("categories", "love"), ("categories", "health")])
def test_scores_outside_0_to_100_are_rejected(path, score):
    data = _content_json()
    target = data
    for key in path:
        target = target[key]
    target["score"] = score
    with pytest.raises(ValidationError) as excinfo:
        FortuneContent.model_validate(data)
    assert excinfo.value.errors()[0]["loc"] == (*path, "score")


@pytest.mark.parametrize("path", [(), ("overall",), ("categories",), ("lucky",), ("saju",), ("saju", "pillars")])
def test_extra_keys_are_rejected_at_every_level(path):
    data = copy.deepcopy(_content_json())
    target = data
    for key in path:
        target = target[key]
    target["mood"] = "좋음"
    with pytest.raises(ValidationError) as excinfo:
        FortuneContent.model_validate(data)
    assert excinfo.value.errors()[0]["type"] == "extra_forbidden"
    assert excinfo.value.errors()[0]["loc"] == (*path, "mood")


def test_a_provider_cannot_write_the_saju_block():
    data = _part().model_dump() | {"saju": _content_json()["saju"]}
    with pytest.raises(ValidationError) as excinfo:
        GeneratedPart.model_validate(data)
    assert excinfo.value.errors()[0]["type"] == "extra_forbidden"


@pytest.mark.parametrize(
    ("path", "value"),
    [(("summary",), ""), (("summary",), "가" * 301), (("advice",), "가" * 401), (("lucky", "number"), 100),
     (("lucky", "direction"), "동" * 11), (("schema_version",), 2)],
)
def test_length_and_range_limits(path, value):
    data = _content_json()
    target = data
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises(ValidationError):
        FortuneContent.model_validate(data)
