import datetime as dt

import pytest
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from core.models import BIRTH_DATE_IN_FUTURE, User
from core.services.users import EMAIL_TAKEN, INVALID_CREDENTIALS, LUNAR_NO_LEAP_MONTH, USERNAME_TAKEN
from core.throttles import AuthRateThrottle
from tests.api.conftest import client_for
from tests.factories import user_create

pytestmark = pytest.mark.django_db

PASSWORD = "correct-horse-battery-9"


def _register(**overrides):
    payload = {"username": "minji", "email": "minji@example.com", "password": PASSWORD} | overrides
    return APIClient().post("/auth/register", payload, format="json")


def test_register_creates_an_account_and_a_working_token():
    response = _register()
    assert response.status_code == 201
    body = response.json()
    user = User.objects.get(username="minji")
    assert body["user"]["id"] == user.pk
    assert body["user"]["birth_date_solar"] is None
    assert body["token"] == Token.objects.get(user=user).key
    assert user.check_password(PASSWORD)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {body['token']}")
    assert client.get("/me").json()["username"] == "minji"


def test_register_with_birth_data_computes_pillars():
    response = _register(birth_lunar_year=2020, birth_lunar_month=4, birth_lunar_day=15,
                         birth_lunar_is_leap_month=True, birth_time="07:30", gender="F")
    assert response.status_code == 201, response.json()
    user = User.objects.get(username="minji")
    assert user.birth_date_solar == dt.date(2020, 6, 6)
    assert user.saju_hour
    assert response.json()["user"]["natal_pillars"]["hour"] == user.saju_hour


@pytest.mark.parametrize(
    ("overrides", "field", "message"),
    [
        ({"username": "Taken"}, "username", USERNAME_TAKEN),
        ({"email": "TAKEN@example.com"}, "email", EMAIL_TAKEN),
        ({"birth_lunar_year": 2021, "birth_lunar_month": 4, "birth_lunar_day": 1, "birth_lunar_is_leap_month": True},
         "birth_lunar_is_leap_month", LUNAR_NO_LEAP_MONTH.format(year=2021, month=4)),
        ({"birth_date_solar": "2999-01-01"}, "birth_date_solar", None),
        ({"email": "not-an-email"}, "email", "Enter a valid email address."),
        ({"username": "has space"}, "username", None),
    ],
)
def test_register_rejects_bad_input_with_a_field_message_and_creates_nothing(overrides, field, message):
    user_create(username="taken", email="taken@example.com")
    response = _register(**overrides)
    assert response.status_code == 400
    errors = response.json()[field]
    if message is not None:
        assert errors == [message]
    if field == "birth_date_solar":
        assert errors[0].startswith(BIRTH_DATE_IN_FUTURE.split("{")[0])
    assert User.objects.count() == 1


@pytest.mark.parametrize(
    ("password", "expected"),
    [
        ("short7", "This password is too short. It must contain at least 8 characters."),
        ("password123", "This password is too common."),
        ("83920174650", "This password is entirely numeric."),
        ("minji-example", "The password is too similar to the username."),
    ],
)
def test_register_checks_django_password_validators(settings, password, expected):
    settings.LANGUAGE_CODE = "en-us"
    response = APIClient().post(
        "/auth/register", {"username": "minji-example", "email": "m@example.com", "password": password},
        format="json", HTTP_ACCEPT_LANGUAGE="en",
    )
    assert response.status_code == 400
    assert expected in response.json()["password"]
    assert not User.objects.exists()


def test_token_login_returns_the_token():
    user = user_create(username="jisoo", password=PASSWORD)
    response = APIClient().post("/auth/token/", {"username": "jisoo", "password": PASSWORD}, format="json")
    assert response.status_code == 200
    assert response.json() == {"token": Token.objects.get(user=user).key}


@pytest.mark.parametrize("active", [True, False])
def test_token_login_refuses_wrong_password_and_inactive_users(active):
    user_create(username="jisoo", password=PASSWORD, is_active=active)
    password = "wrong-password" if active else PASSWORD
    response = APIClient().post("/auth/token", {"username": "jisoo", "password": password}, format="json")
    assert response.status_code == 400
    assert response.json() == {"non_field_errors": [INVALID_CREDENTIALS]}
    assert not Token.objects.exists()


def test_logout_deletes_the_token(user):
    client = client_for(user)
    assert client.post("/auth/logout").status_code == 204
    assert not Token.objects.filter(user=user).exists()
    assert client.get("/me").status_code == 401


def test_logout_requires_authentication():
    assert APIClient().post("/auth/logout").status_code == 401


def test_auth_endpoints_are_rate_limited_per_ip(monkeypatch):
    monkeypatch.setattr(AuthRateThrottle, "rate", "3/min", raising=False)
    client = APIClient()
    statuses = [client.post("/auth/token", {"username": "x", "password": "y"}, format="json") for _ in range(4)]
    assert [r.status_code for r in statuses] == [400, 400, 400, 429]
    assert int(statuses[-1]["Retry-After"]) > 0
