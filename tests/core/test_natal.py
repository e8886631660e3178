"""The pure natal derivation works on any object with the birth fields: no model, no settings."""

import dataclasses
import datetime as dt

import pytest

from core import natal, saju

JOJA = saju.ChartOptions()
YAJA = saju.ChartOptions(zi_convention="yaja")


@dataclasses.dataclass
class Birth:
    birth_date_solar: dt.date | None = None
    birth_lunar_year: int | None = None
    birth_lunar_month: int | None = None
    birth_lunar_day: int | None = None
    birth_lunar_is_leap_month: bool = False
    birth_time: dt.time | None = None
    saju_year: str = ""
    saju_month: str = ""
    saju_day: str = ""
    saju_hour: str = ""
    natal_birth_date: dt.date | None = None
    natal_birth_time: dt.time | None = None
    natal_version: int | None = None


def test_pillars_fields_follow_the_chart_options():
    late = {"birth_date": dt.date(1988, 8, 8), "birth_time": dt.time(23, 30)}
    joja = natal.pillars_fields(**late, options=JOJA)
    yaja = natal.pillars_fields(**late, options=YAJA)
    assert joja["saju_day"] == saju.natal_chart(**late, options=JOJA).day
    assert yaja["saju_day"] == saju.natal_chart(**late, options=YAJA).day
    assert joja["saju_day"] != yaja["saju_day"]
    assert joja["natal_version"] != yaja["natal_version"]
    assert set(joja) == set(natal.NATAL_FIELDS)


def test_pillars_fields_without_a_birth_date_are_empty():
    fields = natal.pillars_fields(birth_date=None, birth_time=None, options=JOJA)
    assert (fields["saju_year"], fields["saju_day"], fields["natal_birth_date"]) == ("", "", None)


def test_unchartable_date_names_the_solar_field():
    with pytest.raises(natal.BirthDataInvalid) as excinfo:
        natal.pillars_fields(birth_date=dt.date(2150, 1, 1), birth_time=None, options=JOJA)
    assert excinfo.value.field == "birth_date_solar"


def test_partial_lunar_date_names_the_missing_field():
    with pytest.raises(natal.BirthDataInvalid) as excinfo:
        natal.lunar_birth_date_apply(birth=Birth(birth_lunar_year=1990, birth_lunar_day=3))
    assert (excinfo.value.field, excinfo.value.message) == ("birth_lunar_month", natal.LUNAR_INCOMPLETE)


def test_sync_derives_solar_date_and_pillars_then_reports_no_change():
    birth = Birth(birth_lunar_year=2020, birth_lunar_month=4, birth_lunar_day=1, birth_lunar_is_leap_month=True)
    assert natal.pillars_sync(record=birth, options=JOJA) == ["birth_date_solar", *natal.NATAL_FIELDS]
    assert birth.birth_date_solar == saju.lunar_to_solar(year=2020, month=4, day=1, is_leap_month=True)
    assert birth.saju_day == saju.natal_chart(birth_date=birth.birth_date_solar).day
    assert natal.pillars_sync(record=birth, options=JOJA) == []
    assert natal.pillars_sync(record=birth, options=YAJA) == list(natal.NATAL_FIELDS)  # a new version
