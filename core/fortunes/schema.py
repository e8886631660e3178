"""The fortune content schema: one shape for every provider, served by the API as is."""

import datetime as dt
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

SCHEMA_VERSION = 1
Score = Field(ge=0, le=100)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ScoredText(_Strict):
    score: int = Score
    text: str = Field(min_length=1, max_length=600)


class Categories(_Strict):
    love: ScoredText
    money: ScoredText
    work: ScoredText
    health: ScoredText


class Lucky(_Strict):
    color: str = Field(min_length=1, max_length=20)
    number: int = Field(ge=0, le=99)
    direction: str = Field(min_length=1, max_length=10)


class GeneratedPart(_Strict):
    """What a provider writes (the LLM's structured output). The saju block is never generated."""

    summary: str = Field(min_length=1, max_length=300)
    overall: ScoredText
    categories: Categories
    lucky: Lucky
    advice: str = Field(min_length=1, max_length=400)


class Pillars(_Strict):
    year: str
    month: str
    day: str
    hour: str | None


class DayMaster(_Strict):
    stem: str
    element: Literal["wood", "fire", "earth", "metal", "water"]
    yin_yang: Literal["yang", "yin"]


class SajuBlock(_Strict):
    pillars: Pillars
    day_master: DayMaster
    date_pillar: str
    ten_god: str
    element_relation: str


class FortuneContent(GeneratedPart):
    schema_version: Literal[1] = SCHEMA_VERSION
    for_date: dt.date
    saju: SajuBlock

    def as_json(self) -> dict:
        return self.model_dump(mode="json")
