import datetime as dt

import pytest
import time_machine
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from core.api.accounts import GENDER_INVALID, LUNAR_MONTH_RANGE, UNKNOWN_FIELD
from core.models import BIRTH_DATE_BEFORE_1900, BIRTH_DATE_IN_FUTURE, FortuneGeneration, FortuneResult, User
from core.natal import LUNAR_INCOMPLETE
from core.services.users import LUNAR_DATE_INVALID, LUNAR_NO_LEAP_MONTH, SOLAR_AND_LUNAR
from tests.api.conftest import client_for, fortune_store
from tests.factories import user_create

pytestmark = pytest.mark.django_db

UTC = dt.timezone.utc
NOW = dt.datetime(2025, 3, 9, 3, 0, tzinfo=UTC)  # 2025-03-09 12:00 KST


@pytest.fixture(autouse=True)
def frozen():
    with time_machine.travel(NOW, tick=False):
        yield


def _snapshot(user: User) -> dict:
    user.refresh_from_db()
    return {f.attname: getattr(user, f.attname) for f in User._meta.concrete_fields}


def test_get_me_shows_birth_data_and_natal_pillars():
    user = user_create(birth_date_solar=dt.date(1984, 2, 4), birth_time=dt.time(12, 0), gender="M")
    body = client_for(user).get("/me").json()
    assert body["username"] == user.username
    assert body["birth_date_solar"] == "1984-02-04"
    assert body["birth_time"] == "12:00:00"
    assert body["birth_lunar"] is None
    assert body["gender"] == "M"
    # 1984-02-04 12:00 KST is before 입춘 (00:18 on 02-05): still 癸亥年 乙丑月.
    assert body["natal_pillars"]["year"] == "癸亥"
    assert body["natal_pillars"]["month"] == "乙丑"
    assert body["natal_pillars"]["hour"] == user.saju_hour


def test_me_without_birth_date_has_no_pillars():
    body = client_for(user_create(birth_date_solar=None)).get("/me/").json()
    assert body["birth_date_solar"] is None
    assert body["natal_pillars"] is None


def test_unauthenticated_me_is_401():
    assert APIClient().get("/me").status_code == 401
    assert APIClient().patch("/me", {"gender": "M"}, format="json").status_code == 401


def test_patch_solar_recomputes_pillars_and_deletes_todays_and_later_fortunes(user):
    yesterday = fortune_store(user=user, for_date=dt.date(2025, 3, 8))
    fortune_store(user=user, for_date=dt.date(2025, 3, 9))
    fortune_store(user=user, for_date=dt.date(2025, 3, 10))
    old_day = user.saju_day
    response = client_for(user).patch("/me", {"birth_date_solar": "1984-02-05", "birth_time": "12:00"}, format="json")
    assert response.status_code == 200
    body = response.json()
    user.refresh_from_db()
    assert user.birth_date_solar == dt.date(1984, 2, 5)
    assert user.saju_year == "甲子"  # after 입춘 1984
    assert user.saju_day != old_day
    assert body["natal_pillars"] == user.natal_pillars
    assert list(FortuneResult.objects.filter(user=user)) == [yesterday]


def test_patch_gender_deletes_todays_fortune_but_unrelated_change_does_not(user):
    fortune_store(user=user, for_date=dt.date(2025, 3, 9))
    client = client_for(user)
    assert client.patch("/me", {"gender": "F"}, format="json").status_code == 200  # unchanged
    assert FortuneResult.objects.filter(user=user).count() == 1
    assert client.patch("/me", {"gender": "M"}, format="json").status_code == 200
    assert not FortuneResult.objects.filter(user=user).exists()
    assert FortuneGeneration.objects.count() == 1  # shared rows stay; only the user's link goes


def test_patch_lunar_birth_date_is_converted_and_kept():
    user = user_create(birth_date_solar=None)
    response = client_for(user).patch(
        "/me",
        {"birth_lunar_year": 2020, "birth_lunar_month": 4, "birth_lunar_day": 15, "birth_lunar_is_leap_month": True},
        format="json",
    )
    assert response.status_code == 200, response.json()
    body = response.json()
    assert body["birth_date_solar"] == "2020-06-06"  # 윤4월 15일 2020
    assert body["birth_lunar"] == {"year": 2020, "month": 4, "day": 15, "is_leap_month": True}
    user.refresh_from_db()
    assert user.birth_date_solar == dt.date(2020, 6, 6)
    assert user.saju_day and body["natal_pillars"]["day"] == user.saju_day


def test_patch_solar_replaces_a_lunar_input():
    user = user_create(birth_date_solar=None)
    client = client_for(user)
    client.patch("/me", {"birth_lunar_year": 1990, "birth_lunar_month": 1, "birth_lunar_day": 1}, format="json")
    user.refresh_from_db()
    assert user.birth_date_solar == dt.date(1990, 1, 27)
    body = client.patch("/me", {"birth_date_solar": "1991-03-03"}, format="json").json()
    assert body["birth_date_solar"] == "1991-03-03"
    assert body["birth_lunar"] is None


def test_birth_time_null_means_unknown_and_drops_the_hour_pillar():
    user = user_create(birth_date_solar=dt.date(1990, 5, 17), birth_time=dt.time(8, 30))
    assert user.saju_hour
    body = client_for(user).patch("/me", {"birth_time": None}, format="json").json()
    assert body["birth_time"] is None
    assert body["natal_pillars"]["hour"] is None
    user.refresh_from_db()
    assert user.saju_hour == ""


@pytest.mark.parametrize(
    ("payload", "field", "message"),
    [
        ({"birth_date_solar": "2025-03-10"}, "birth_date_solar", BIRTH_DATE_IN_FUTURE.format(today="2025-03-09")),
        ({"birth_date_solar": "1899-12-31"}, "birth_date_solar", BIRTH_DATE_BEFORE_1900),
        ({"gender": "X"}, "gender", GENDER_INVALID),
        ({"birth_lunar_year": 2021, "birth_lunar_month": 4, "birth_lunar_day": 1, "birth_lunar_is_leap_month": True},
         "birth_lunar_is_leap_month", LUNAR_NO_LEAP_MONTH.format(year=2021, month=4)),
        ({"birth_lunar_year": 1990, "birth_lunar_month": 1, "birth_lunar_day": 30}, "birth_lunar_day",
         LUNAR_DATE_INVALID.format(detail="lunar date 1990-01-30 does not exist")),
        ({"birth_lunar_year": 1990, "birth_lunar_month": 13, "birth_lunar_day": 1}, "birth_lunar_month",
         LUNAR_MONTH_RANGE),
        ({"birth_lunar_year": 1990, "birth_lunar_month": 1}, "birth_lunar_day", LUNAR_INCOMPLETE),
        ({"birth_lunar_year": 2030, "birth_lunar_month": 1, "birth_lunar_day": 1}, "birth_lunar_year",
         BIRTH_DATE_IN_FUTURE.format(today="2025-03-09")),
        ({"birth_date_solar": "1990-01-01", "birth_lunar_year": 1990, "birth_lunar_month": 1, "birth_lunar_day": 1},
         "birth_date_solar", SOLAR_AND_LUNAR),
        ({"birth_date": "1990-01-01"}, "birth_date", UNKNOWN_FIELD),
    ],
)
def test_invalid_birth_data_is_400_with_field_named_message_and_nothing_saved(user, payload, field, message):
    fortune_store(user=user, for_date=dt.date(2025, 3, 9))
    before = _snapshot(user)
    response = client_for(user).patch("/me", payload, format="json")
    assert response.status_code == 400
    assert response.json()[field] == [message]
    assert _snapshot(user) == before
    assert FortuneResult.objects.filter(user=user).count() == 1


def test_delete_me_removes_the_account_its_fortunes_and_token(user):
    other = user_create()
    fortune_store(user=user, for_date=dt.date(2025, 3, 9))
    kept = fortune_store(user=other, for_date=dt.date(2025, 3, 9))
    client = client_for(user)
    response = client.delete("/me")
    assert response.status_code == 204
    assert not User.objects.filter(pk=user.pk).exists()
    assert not Token.objects.filter(user_id=user.pk).exists()
    assert list(FortuneResult.objects.all()) == [kept]
    assert client.get("/me").status_code == 401
