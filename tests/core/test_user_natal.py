"""The stored natal pillars match the birth data whatever path wrote it."""

import datetime as dt
from io import StringIO

import pytest
from django.core.exceptions import ValidationError
from django.core.management import CommandError, call_command

from core import saju
from core.models import User
from core.natal import LUNAR_INCOMPLETE
from core.services.natal import natal_fields, natal_version, user_list_natal_stale, users_refresh_natal
from tests.factories import user_create

pytestmark = pytest.mark.django_db


def expected_pillars(birth_date: dt.date, birth_time: dt.time | None) -> dict:
    chart = saju.natal_chart(birth_date=birth_date, birth_time=birth_time)
    return {"year": chart.year, "month": chart.month, "day": chart.day, "hour": chart.hour}


def test_save_derives_pillars_and_recomputes_on_change():
    user = user_create(birth_date_solar=dt.date(1984, 2, 4), birth_time=dt.time(12, 0))
    assert user.natal_pillars == {"year": "癸亥", "month": "乙丑", "day": "戊辰", "hour": "戊午"}

    user.birth_date_solar = dt.date(1984, 2, 6)
    user.birth_time = None
    user.save(update_fields=["birth_date_solar", "birth_time"])
    user.refresh_from_db()
    assert user.natal_pillars == expected_pillars(dt.date(1984, 2, 6), None)
    assert user.natal_pillars["hour"] is None  # unknown time: three pillars, never an invented hour


def test_shell_create_derives_pillars():
    user = User.objects.create(username="shell", birth_date_solar=dt.date(2000, 1, 1))
    user.refresh_from_db()
    assert user.saju_day == "戊午"
    assert user.natal_version == natal_version()


def test_clearing_birth_date_clears_pillars():
    user = user_create(birth_date_solar=dt.date(1990, 1, 1))
    user.birth_date_solar = None
    user.save()
    user.refresh_from_db()
    assert (user.saju_year, user.saju_day) == ("", "")


def test_lunar_birth_date_is_converted_on_save():
    user = user_create(birth_date_solar=None, birth_lunar_year=2020, birth_lunar_month=4, birth_lunar_day=1,
                       birth_lunar_is_leap_month=True)
    user.refresh_from_db()
    assert user.birth_date_solar == saju.lunar_to_solar(year=2020, month=4, day=1, is_leap_month=True)
    assert user.natal_pillars == expected_pillars(user.birth_date_solar, None)


def test_impossible_lunar_date_names_the_field_and_saves_nothing():
    with pytest.raises(ValidationError) as excinfo:
        user_create(username="lunar-bad", birth_date_solar=None, birth_lunar_year=2021, birth_lunar_month=4,
                    birth_lunar_day=1, birth_lunar_is_leap_month=True)
    assert "birth_lunar_day" in excinfo.value.message_dict
    assert not User.objects.filter(username="lunar-bad").exists()


def test_partial_lunar_date_names_the_missing_field():
    user = User(username="partial", birth_lunar_year=1990, birth_lunar_month=3)
    with pytest.raises(ValidationError) as excinfo:
        user.full_clean()
    assert excinfo.value.message_dict["birth_lunar_day"] == [LUNAR_INCOMPLETE]


@pytest.mark.parametrize(
    ("field", "value", "fragment"),
    [
        ("birth_date_solar", dt.date(1899, 12, 31), "before 1900"),
        ("birth_date_solar", dt.date(2999, 1, 1), "future"),
        ("gender", "X", "not a valid choice"),
    ],
)
def test_full_clean_rejects_bad_birth_data_naming_the_field(field, value, fragment):
    user = User(username="bad", **{field: value})
    with pytest.raises(ValidationError) as excinfo:
        user.full_clean()
    assert fragment in " ".join(excinfo.value.message_dict[field])


def test_database_refuses_unknown_gender_and_pre_1900_dates_from_bulk_writes():
    from django.db import IntegrityError, transaction

    with pytest.raises(IntegrityError), transaction.atomic():
        User.objects.bulk_create([User(username="g", gender="X")])
    with pytest.raises(IntegrityError), transaction.atomic():
        User.objects.bulk_create([User(username="d", birth_date_solar=dt.date(1850, 1, 1))])


def test_bulk_writes_are_found_stale_and_refreshed():
    fresh = user_create(birth_date_solar=dt.date(1975, 6, 1), birth_time=dt.time(8, 30))
    imported = User.objects.bulk_create(
        [User(username=f"bulk{i}", birth_date_solar=dt.date(1960 + i, 3, 5), birth_time=dt.time(i, 0))
         for i in range(5)]
    )
    User.objects.filter(pk=fresh.pk).update(birth_time=dt.time(23, 30))  # bypasses save()
    stale = set(user_list_natal_stale().values_list("pk", flat=True))
    assert stale == {u.pk for u in imported} | {fresh.pk}

    assert users_refresh_natal(batch_size=2) == 6
    assert not user_list_natal_stale().exists()
    for user in User.objects.filter(pk__in=stale):
        assert user.natal_pillars == expected_pillars(user.birth_date_solar, user.birth_time)


def test_settings_change_makes_every_chart_stale(settings):
    user_create(birth_date_solar=dt.date(1988, 8, 8), birth_time=dt.time(23, 30))
    assert not user_list_natal_stale().exists()
    settings.SAJU_ZI_CONVENTION = "yaja"
    assert user_list_natal_stale().count() == 1
    users_refresh_natal()
    assert not user_list_natal_stale().exists()


def test_admin_change_form_recomputes_pillars(admin_client):
    user = user_create(birth_date_solar=dt.date(1990, 5, 17))
    page = admin_client.get(f"/admin/core/user/{user.pk}/change/")
    form = page.context["adminform"].form
    data = {name: form[name].value() for name in form.fields if form[name].value() is not None}
    data.update(
        birth_date_solar="1984-02-04", birth_time="12:00", gender="M",
        date_joined_0=user.date_joined.date().isoformat(), date_joined_1="00:00:00",
        birth_lunar_year="", birth_lunar_month="", birth_lunar_day="",
    )
    data.pop("last_login", None)
    data.pop("date_joined", None)
    response = admin_client.post(f"/admin/core/user/{user.pk}/change/", data)
    assert response.status_code == 302, response.context["adminform"].form.errors
    user.refresh_from_db()
    assert user.natal_pillars == {"year": "癸亥", "month": "乙丑", "day": "戊辰", "hour": "戊午"}


def test_admin_change_form_shows_field_error_for_future_birth_date(admin_client):
    user = user_create()
    page = admin_client.get(f"/admin/core/user/{user.pk}/change/")
    form = page.context["adminform"].form
    data = {name: form[name].value() for name in form.fields if form[name].value() is not None}
    data.update(birth_date_solar="2999-01-01", date_joined_0=user.date_joined.date().isoformat(),
                date_joined_1="00:00:00", birth_lunar_year="", birth_lunar_month="", birth_lunar_day="")
    data.pop("last_login", None)
    data.pop("date_joined", None)
    response = admin_client.post(f"/admin/core/user/{user.pk}/change/", data)
    assert response.status_code == 200
    assert "birth_date_solar" in response.context["adminform"].form.errors
    user.refresh_from_db()
    assert user.birth_date_solar == dt.date(1990, 5, 17)


def test_seed_demo_users_creates_realistic_users_with_pillars():
    out = StringIO()
    call_command("seed_demo_users", "--count", "400", stdout=out)
    assert "Created 400 demo users" in out.getvalue()
    users = User.objects.all()
    assert users.count() == 400
    inactive = users.filter(is_active=False).count()
    no_birth = users.filter(birth_date_solar__isnull=True).count()
    unknown_time = users.filter(birth_date_solar__isnull=False, birth_time__isnull=True).count()
    lunar = users.filter(birth_lunar_year__isnull=False).count()
    assert 15 <= inactive <= 70 and 5 <= no_birth <= 40 and 120 <= unknown_time <= 260 and lunar >= 10
    assert users.filter(birth_date_solar__lt=dt.date(1950, 1, 1)).count() == 0
    assert not user_list_natal_stale().exists()
    sample = users.filter(birth_date_solar__isnull=False).first()
    assert sample.natal_pillars == expected_pillars(sample.birth_date_solar, sample.birth_time)

    call_command("seed_demo_users", "--count", "10", "--if-empty", stdout=out)
    assert User.objects.count() == 400


def test_seed_demo_users_refuses_a_bad_count():
    with pytest.raises(CommandError, match="--count must be between 1"):
        call_command("seed_demo_users", "--count", "0", stdout=StringIO())


def test_refresh_skips_unchartable_rows_and_fixes_the_rest():
    bad, good = User.objects.bulk_create([
        User(username="far-future", birth_date_solar=dt.date(2150, 1, 1)),
        User(username="fine", birth_date_solar=dt.date(1999, 9, 9)),
    ])
    assert users_refresh_natal() == 2
    bad.refresh_from_db()
    good.refresh_from_db()
    assert good.saju_day == expected_pillars(dt.date(1999, 9, 9), None)["day"]
    assert bad.saju_day == "" and bad.natal_birth_date == dt.date(2150, 1, 1)


def test_unchartable_birth_date_is_a_validation_error_on_the_solar_field():
    with pytest.raises(ValidationError) as excinfo:
        natal_fields(birth_date=dt.date(2150, 1, 1), birth_time=None)
    assert list(excinfo.value.message_dict) == ["birth_date_solar"]
    user = User(username="too-late", birth_date_solar=dt.date(2150, 1, 1))
    with pytest.raises(ValidationError) as excinfo:
        user.save()
    assert list(excinfo.value.message_dict) == ["birth_date_solar"]
    assert not User.objects.filter(username="too-late").exists()
