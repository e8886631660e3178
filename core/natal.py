"""Natal pillars from birth data: the pure derivation behind the pillars stored on the user row.

No Django here (an import-linter contract in .importlinter holds it to that). The functions are typed
against the attributes they read and write (BirthFields, NatalRecord), take the chart options as an
argument and raise BirthDataInvalid naming the field at fault. The settings-bound versions that raise
ValidationError are core.models (save/clean) and core.services.natal (refresh, stale rows).
"""

import datetime as dt
from typing import Protocol

from core import saju

LUNAR_FIELDS = ("birth_lunar_year", "birth_lunar_month", "birth_lunar_day")
LUNAR_INCOMPLETE = "Give the lunar year, month and day together (or none of them)."
NATAL_FIELDS = (
    "saju_year", "saju_month", "saju_day", "saju_hour", "natal_birth_date", "natal_birth_time", "natal_version",
)


class BirthFields(Protocol):
    birth_date_solar: dt.date | None
    birth_lunar_year: int | None
    birth_lunar_month: int | None
    birth_lunar_day: int | None
    birth_lunar_is_leap_month: bool
    birth_time: dt.time | None


class NatalRecord(BirthFields, Protocol):
    """Birth data with the pillars stored from it and what they were computed from."""

    saju_year: str
    saju_month: str
    saju_day: str
    saju_hour: str
    natal_birth_date: dt.date | None
    natal_birth_time: dt.time | None
    natal_version: int | None


class BirthDataInvalid(ValueError):
    """Birth data that cannot be charted; `field` names the input at fault."""

    def __init__(self, *, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


def pillars_version(*, options: saju.ChartOptions) -> int:
    """Changes whenever stored pillars would come out differently: engine version or chart options."""
    return saju.ENGINE_VERSION * 100 + (10 if options.zi_convention == "yaja" else 0) + int(options.local_mean_time)


def pillars_fields(
    *, birth_date: dt.date | None, birth_time: dt.time | None, options: saju.ChartOptions
) -> dict[str, object]:
    """The NATAL_FIELDS values for this birth data (empty pillars without a birth date)."""
    if birth_date is None:
        return dict.fromkeys(NATAL_FIELDS[:4], "") | {"natal_birth_date": None, "natal_birth_time": None,
                                                      "natal_version": pillars_version(options=options)}
    try:
        chart = saju.natal_chart(birth_date=birth_date, birth_time=birth_time, options=options)
    except saju.InvalidBirthData as exc:
        raise BirthDataInvalid(field="birth_date_solar", message=str(exc)) from None
    return {
        "saju_year": chart.year,
        "saju_month": chart.month,
        "saju_day": chart.day,
        "saju_hour": chart.hour or "",
        "natal_birth_date": birth_date,
        "natal_birth_time": birth_time,
        "natal_version": pillars_version(options=options),
    }


def lunar_birth_date_apply(*, birth: BirthFields) -> bool:
    """Derive birth_date_solar from a lunar birth date when one was given. Returns True if it changed."""
    given = [getattr(birth, name) for name in LUNAR_FIELDS]
    if all(value is None for value in given):
        return False
    if any(value is None for value in given):
        missing = next(name for name, value in zip(LUNAR_FIELDS, given, strict=True) if value is None)
        raise BirthDataInvalid(field=missing, message=LUNAR_INCOMPLETE)
    year, month, day = given
    try:
        solar = saju.lunar_to_solar(year=year, month=month, day=day, is_leap_month=birth.birth_lunar_is_leap_month)
    except saju.InvalidBirthData as exc:
        raise BirthDataInvalid(field="birth_lunar_day", message=str(exc)) from None
    if solar == birth.birth_date_solar:
        return False
    birth.birth_date_solar = solar
    return True


def pillars_sync(*, record: NatalRecord, options: saju.ChartOptions) -> list[str]:
    """Bring the record's derived fields in step with its birth data; returns the names it changed."""
    changed = ["birth_date_solar"] if lunar_birth_date_apply(birth=record) else []
    if (
        record.natal_version == pillars_version(options=options)
        and record.natal_birth_date == record.birth_date_solar
        and record.natal_birth_time == record.birth_time
        and (record.birth_date_solar is None or record.saju_day)
    ):
        return changed
    for name, value in pillars_fields(
        birth_date=record.birth_date_solar, birth_time=record.birth_time, options=options
    ).items():
        setattr(record, name, value)
    return changed + list(NATAL_FIELDS)
