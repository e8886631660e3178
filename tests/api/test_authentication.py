import datetime as dt
import time

import pytest
from django.core.cache import cache
from rest_framework import exceptions
from rest_framework.authentication import TokenAuthentication
from rest_framework.authtoken.models import Token
from rest_framework.test import APIRequestFactory

from core.api.authentication import CachedTokenAuthentication
from core.models import User
from core.services.token_cache import token_cache_key
from fortuna_api.settings import AUTH_TOKEN_CACHE_NEEDS_REDIS
from tests.factories import user_create
from tests.fortuna_api.test_settings import start

pytestmark = pytest.mark.django_db


def _authenticate(key: str):
    request = APIRequestFactory().get("/me", HTTP_AUTHORIZATION=f"Token {key}")
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


# --- the cached look-up (core/api/authentication.py, core/services/token_cache.py) ------------------

@pytest.fixture
def token_cache(settings):
    settings.AUTH_TOKEN_CACHE_SECONDS = 60


def _cached(key: str):
    return CachedTokenAuthentication().authenticate_credentials(key)


def test_a_cached_user_is_the_one_the_orm_loads_and_costs_no_query(token_cache, django_assert_num_queries):
    user = user_create(birth_date_solar=dt.date(1990, 5, 17), birth_time=dt.time(23, 30), gender="F")
    user.last_login = dt.datetime(2025, 1, 2, 3, 4, 5, 678000, tzinfo=dt.timezone.utc)
    user.save()
    token = Token.objects.create(user=user)
    first, _ = _cached(token.key)
    with django_assert_num_queries(0):
        cached, auth = _cached(token.key)
    expected = User.objects.get(pk=user.pk)
    for field in User._meta.concrete_fields:
        ours, orms = getattr(cached, field.attname), getattr(expected, field.attname)
        assert (ours, type(ours)) == (orms, type(orms)), field.name
        assert getattr(first, field.attname) == orms, field.name
    assert cached._state.adding is False and cached._state.db == "default"
    assert auth.key == token.key and auth.user is cached


def test_a_deleted_token_is_refused_at_once(token_cache):
    key = Token.objects.create(user=user_create()).key
    _cached(key)
    Token.objects.get(key=key).delete()  # logout
    with pytest.raises(exceptions.AuthenticationFailed, match="Invalid token."):
        _cached(key)


def test_a_deactivated_user_is_refused_and_an_edited_one_seen_at_once(token_cache):
    user = user_create()
    token = Token.objects.create(user=user)
    _cached(token.key)
    user.first_name = "Edited"
    user.save()
    assert _cached(token.key)[0].first_name == "Edited"
    user.is_active = False
    user.save()
    with pytest.raises(exceptions.AuthenticationFailed, match="User inactive or deleted."):
        _cached(token.key)


def test_a_queryset_update_deactivation_is_refused_within_the_token_cache_seconds(settings):
    # QuerySet.update sends no signal: the documented bound is AUTH_TOKEN_CACHE_SECONDS.
    settings.AUTH_TOKEN_CACHE_SECONDS = 1
    user = user_create()
    token = Token.objects.create(user=user)
    _cached(token.key)
    User.objects.filter(pk=user.pk).update(is_active=False)
    assert _cached(token.key)[0].is_active  # still the cached entry
    time.sleep(1.1)
    with pytest.raises(exceptions.AuthenticationFailed, match="User inactive or deleted."):
        _cached(token.key)


def test_a_deleted_user_is_refused(token_cache):
    user = user_create()
    key = Token.objects.create(user=user).key
    _cached(key)
    user.delete()
    with pytest.raises(exceptions.AuthenticationFailed, match="Invalid token."):
        _cached(key)


def test_logout_over_http_ends_the_cached_token(token_cache, auth_client):
    assert auth_client.get("/me").status_code == 200
    assert auth_client.post("/auth/logout").status_code in (200, 204)
    assert auth_client.get("/me").status_code == 401


def test_the_cache_holds_no_token_in_its_keys(token_cache):
    token = Token.objects.create(user=user_create())
    _cached(token.key)
    assert cache.get(token_cache_key(key=token.key)) is not None
    assert token.key not in token_cache_key(key=token.key)


def test_a_per_process_cache_is_refused():
    result = start(AUTH_TOKEN_CACHE_SECONDS="60", REDIS_URL="")
    assert result.returncode != 0
    assert AUTH_TOKEN_CACHE_NEEDS_REDIS in result.stderr
