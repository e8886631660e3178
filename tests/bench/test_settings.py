"""The benchmark's settings: production's, plus the reference view."""

import datetime as dt

import pytest
from django.conf import settings as django_settings
from django.core.cache import cache
from rest_framework.test import APIClient

from tests.api.conftest import client_for, fortune_store, kst_today
from tests.factories import user_create

pytestmark = [pytest.mark.django_db, pytest.mark.urls("bench.urls")]


@pytest.fixture
def user():
    cache.clear()  # throttles live in the cache
    yield user_create(birth_date_solar=dt.date(1990, 5, 17), gender="F")
    cache.clear()


def test_bench_settings_are_production_settings_with_the_reference_route():
    from bench import settings as bench_settings
    from fortuna_api import settings as production

    assert bench_settings.ROOT_URLCONF == "bench.urls" and production.ROOT_URLCONF == "fortuna_api.urls"
    assert bench_settings.MIDDLEWARE == production.MIDDLEWARE
    assert bench_settings.REST_FRAMEWORK == production.REST_FRAMEWORK
    assert django_settings.ROOT_URLCONF == "bench.urls"  # pytest.mark.urls


@pytest.mark.parametrize("suffix", ["", "/"])
def test_ping_is_the_trivial_authenticated_reference(user, django_assert_max_num_queries, suffix):
    client = client_for(user)
    with django_assert_max_num_queries(1):  # the token lookup only
        response = client.get("/api/ping" + suffix)
    assert response.status_code == 200
    assert response.json() == {"ok": True, "user_id": user.pk}
    assert APIClient().get("/api/ping" + suffix).status_code == 401


def test_the_production_routes_are_served_beside_it(user):
    assert client_for(user).get("/me").status_code == 200


def test_the_idiomatic_drf_reference_serves_the_same_body_as_fortune_today(user):
    fortune_store(user=user, for_date=kst_today())
    client = client_for(user)
    production, idiomatic = client.get("/fortune/today"), client.get("/api/fortune-drf")
    assert production.status_code == idiomatic.status_code == 200
    assert idiomatic.json() == production.json()
    assert APIClient().get("/api/fortune-drf").status_code == 401


def test_the_idiomatic_drf_reference_is_404_without_a_stored_fortune(user):
    assert client_for(user).get("/api/fortune-drf").status_code == 404
