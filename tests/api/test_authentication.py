import datetime as dt

import pytest
from rest_framework import exceptions
from rest_framework.authentication import TokenAuthentication
from rest_framework.authtoken.models import Token
from rest_framework.test import APIRequestFactory

from core.models import User
from tests.factories import user_create

pytestmark = pytest.mark.django_db


def _authenticate(key: str):
    request = APIRequestFactory().get("/api/ping", HTTP_AUTHORIZATION=f"Token {key}")
    return TokenAuthentication().authenticate(request)


def test_the_user_is_the_one_the_orm_loads_field_for_field():
    # The configured authentication (DRF's) loads the same values and types as the ORM, on either backend.
    user = user_create(birth_date_solar=dt.date(1990, 5, 17), birth_time=dt.time(23, 30), gender="F")
    user.last_login = dt.datetime(2025, 1, 2, 3, 4, 5, 678000, tzinfo=dt.timezone.utc)
    user.save()
    token = Token.objects.create(user=user)
    authenticated, auth = _authenticate(token.key)
    expected = User.objects.get(pk=user.pk)
    for field in User._meta.concrete_fields:
        ours, orms = getattr(authenticated, field.attname), getattr(expected, field.attname)
        assert (ours, type(ours)) == (orms, type(orms)), field.name
    assert authenticated._state.adding is False
    assert auth.key == token.key


def test_unknown_token_and_inactive_user_fail_with_drfs_messages():
    user = user_create()
    token = Token.objects.create(user=user)
    with pytest.raises(exceptions.AuthenticationFailed, match="Invalid token."):
        _authenticate("0" * 40)
    User.objects.filter(pk=user.pk).update(is_active=False)
    with pytest.raises(exceptions.AuthenticationFailed, match="User inactive or deleted."):
        _authenticate(token.key)
