"""Error bodies DRF answers around the views carry a code (ErrorSerializer); field errors keep their shape."""

import pytest
from rest_framework.test import APIClient

from core.api.accounts import GENDER_INVALID, UNKNOWN_FIELD
from core.throttles import AuthRateThrottle
from tests.api.conftest import client_for

pytestmark = pytest.mark.django_db


def test_missing_credentials_401_has_a_code():
    response = APIClient().get("/me")
    assert response.status_code == 401
    assert response.json() == {
        "detail": "Authentication credentials were not provided.", "code": "not_authenticated",
    }


def test_invalid_token_401_has_a_code():
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Token " + "0" * 40)
    response = client.get("/fortune/today")
    assert response.status_code == 401
    assert response.json() == {"detail": "Invalid token.", "code": "authentication_failed"}


def test_throttled_429_has_a_code(monkeypatch):
    monkeypatch.setattr(AuthRateThrottle, "rate", "1/min", raising=False)
    client = APIClient()
    client.post("/auth/token", {"username": "x", "password": "y"}, format="json")
    response = client.post("/auth/token", {"username": "x", "password": "y"}, format="json")
    assert response.status_code == 429
    assert response.json()["code"] == "throttled"
    assert response.json()["detail"].startswith("Request was throttled.")


def test_unparsable_body_400_has_a_code(user):
    response = client_for(user).generic("PATCH", "/me", "{not json", content_type="application/json")
    assert response.status_code == 400
    assert response.json()["code"] == "parse_error"
    assert response.json()["detail"].startswith("JSON parse error")


def test_unsupported_media_type_415_has_a_code(user):
    response = client_for(user).generic("PATCH", "/me", "gender=M", content_type="text/plain")
    assert response.status_code == 415
    assert response.json()["code"] == "unsupported_media_type"


def test_field_validation_errors_keep_their_per_field_shape(user):
    response = client_for(user).patch("/me", {"gender": "X"}, format="json")
    assert response.status_code == 400
    assert response.json() == {"gender": [GENDER_INVALID]}


def test_an_unknown_field_named_detail_is_a_field_error_not_an_error_body(user):
    response = client_for(user).patch("/me", {"detail": "x"}, format="json")
    assert response.status_code == 400
    assert response.json() == {"detail": [UNKNOWN_FIELD]}
