"""The generation input: everything a fortune depends on, and nothing that identifies a person."""

import datetime as dt
import hashlib
import json
from dataclasses import dataclass

from core import saju
from core.fortunes.schema import DayMaster, FortuneContent, GeneratedPart, Pillars, SajuBlock

PROMPT_VERSION = 1
_json_string = json.encoder.encode_basestring  # the C version when available, as json.dumps uses


@dataclass(frozen=True, slots=True)
class GenerationInput:
    for_date: dt.date
    year: str
    month: str
    day: str
    hour: str | None
    gender: str  # "M", "F" or ""
    language: str = "ko"
    prompt_version: int = PROMPT_VERSION
    generator: str = "local"  # provider:model, so a different model never reuses another's text
    # Non-empty only for a forced regeneration: a new generation row for the selected users, while
    # users who shared the old one keep it.
    nonce: str = ""

    @classmethod
    def for_user(cls, *, user, for_date: dt.date, generator: str, language: str = "ko") -> "GenerationInput":
        return cls(
            for_date=for_date,
            year=user.saju_year,
            month=user.saju_month,
            day=user.saju_day,
            hour=user.saju_hour or None,
            gender=user.gender or "",
            language=language,
            generator=generator,
        )

    def canonical(self) -> str:
        """A compact JSON array, exactly json.dumps(fields, ensure_ascii=False, separators=(",", ":")).

        Built from the C string encoder json.dumps itself uses: json.dumps with non-default options
        builds a new JSONEncoder per call, which cost more than the hash (the batch hashes every
        distinct input of every page).
        """
        fields = [self.for_date.isoformat(), self.year, self.month, self.day, self.hour or "", self.gender,
                  self.language]
        tail = [self.generator, self.nonce] if self.nonce else [self.generator]
        return (f"[{','.join(map(_json_string, fields))},{int(self.prompt_version)},"
                f"{','.join(map(_json_string, tail))}]")

    @property
    def hash(self) -> str:
        return hashlib.sha256(self.canonical().encode()).hexdigest()

    @property
    def day_master(self) -> str:
        return self.day[0]

    @property
    def reading(self) -> saju.DailyReading:
        return saju.daily_reading(day_master=self.day_master, target=self.for_date)

    def saju_block(self) -> SajuBlock:
        reading = self.reading
        return SajuBlock(
            pillars=Pillars(year=self.year, month=self.month, day=self.day, hour=self.hour),
            day_master=DayMaster(
                stem=self.day_master,
                element=saju.STEM_ELEMENT[self.day_master],
                yin_yang=saju.STEM_YIN_YANG[self.day_master],
            ),
            date_pillar=reading.date_pillar,
            ten_god=reading.ten_god,
            element_relation=reading.element_relation,
        )

    def compose(self, part: GeneratedPart) -> FortuneContent:
        """Attach the computed saju block and date to what a provider wrote."""
        return FortuneContent(**part.model_dump(), for_date=self.for_date, saju=self.saju_block())


