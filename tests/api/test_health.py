import datetime as dt
import os
from unittest import mock

import pytest
import time_machine
from django.db import OperationalError
from rest_framework.test import APIClient
from rest_framework.throttling import AnonRateThrottle

from core.models import NightlyRun
from core.services.health import BATCH_MISSED_DEADLINE, BATCH_NEVER_SUCCEEDED, BATCH_STALE
from tests.faults.servers import free_port

pytestmark = pytest.mark.django_db

KST = dt.timezone(dt.timedelta(hours=9))


@pytest.fixture(autouse=True)
def _no_cache_or_broker(settings):
    settings.REDIS_URL = ""
    settings.CELERY_BROKER_URL = ""


@pytest.mark.parametrize("path", ["/healthz", "/healthz/"])
def test_healthz_is_200_with_a_database_round_trip(path, django_assert_num_queries):
    with django_assert_num_queries(1):
        response = APIClient().get(path)
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "database": "ok", "cache": "not configured", "broker": "not configured"}
    assert response["Cache-Control"] == "no-store"


def test_healthz_is_503_when_the_database_is_down():
    with mock.patch("django.db.backends.utils.CursorWrapper.execute", side_effect=OperationalError("down")):
        response = APIClient().get("/healthz")
    assert response.status_code == 503
    assert response.json() == {
        "status": "error", "database": "unreachable", "cache": "not configured", "broker": "not configured"
    }


def test_healthz_reports_a_cache_and_a_broker_that_answer(settings, redis_url):
    settings.REDIS_URL = redis_url
    settings.CACHES = {"default": {"BACKEND": "fortuna_api.redis_cache.SharedClientRedisCache", "LOCATION": redis_url}}
    settings.CELERY_BROKER_URL = os.environ.get("TEST_CELERY_BROKER_URL") or redis_url
    response = APIClient().get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "database": "ok", "cache": "ok", "broker": "ok"}


def test_healthz_stays_200_with_cache_and_broker_down_and_says_so(settings):
    dead = f"redis://127.0.0.1:{free_port()}/0"
    settings.REDIS_URL = settings.CELERY_BROKER_URL = dead
    settings.CACHES = {"default": {"BACKEND": "fortuna_api.redis_cache.SharedClientRedisCache", "LOCATION": dead}}
    response = APIClient().get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "database": "ok", "cache": "down", "broker": "down"}


def test_healthz_ignores_credentials_and_throttles(monkeypatch):
    monkeypatch.setattr(AnonRateThrottle, "rate", "1/min", raising=False)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Token bogus")
    assert [client.get("/healthz").status_code for _ in range(3)] == [200, 200, 200]


def _run(*, target: dt.date, finished: dt.datetime, status="succeeded", user_id_filter=None) -> NightlyRun:
    return NightlyRun.objects.create(
        base_date=target - dt.timedelta(days=1), target_date=target, status=status,
        started_at=finished - dt.timedelta(minutes=10), finished_at=finished, user_id_filter=user_id_filter,
    )


def _batch_health(at: dt.datetime):
    with time_machine.travel(at, tick=False):
        return APIClient().get("/healthz/batch")


def test_batch_health_never_succeeded_is_503():
    response = _batch_health(dt.datetime(2025, 3, 9, 12, 0, tzinfo=KST))
    assert response.status_code == 503
    assert response.json()["problems"] == [BATCH_NEVER_SUCCEEDED]


def test_batch_health_before_deadline_with_last_nights_run_is_200():
    _run(target=dt.date(2025, 3, 9), finished=dt.datetime(2025, 3, 8, 22, 20, tzinfo=KST))
    response = _batch_health(dt.datetime(2025, 3, 9, 23, 29, tzinfo=KST))
    assert response.status_code == 200
    body = response.json()
    assert body["ok"] is True and body["problems"] == []
    assert body["target_date"] == "2025-03-10"
    assert body["last_success_target"] == "2025-03-09"


def test_batch_health_after_deadline_without_tomorrows_run_is_503():
    _run(target=dt.date(2025, 3, 9), finished=dt.datetime(2025, 3, 8, 22, 20, tzinfo=KST))
    _run(target=dt.date(2025, 3, 10), finished=dt.datetime(2025, 3, 9, 22, 20, tzinfo=KST), status="partial")
    _run(target=dt.date(2025, 3, 10), finished=dt.datetime(2025, 3, 9, 22, 25, tzinfo=KST), user_id_filter=7)
    response = _batch_health(dt.datetime(2025, 3, 9, 23, 30, tzinfo=KST))
    assert response.status_code == 503
    assert response.json()["problems"] == [BATCH_MISSED_DEADLINE.format(target="2025-03-10", deadline="23:30")]


def test_batch_health_after_deadline_with_tomorrows_run_is_200():
    _run(target=dt.date(2025, 3, 10), finished=dt.datetime(2025, 3, 9, 22, 20, tzinfo=KST))
    assert _batch_health(dt.datetime(2025, 3, 9, 23, 45, tzinfo=KST)).status_code == 200


def test_batch_health_deadline_is_configurable(settings):
    settings.FORTUNE_BATCH_DEADLINE = "22:45"
    _run(target=dt.date(2025, 3, 9), finished=dt.datetime(2025, 3, 8, 22, 20, tzinfo=KST))
    assert _batch_health(dt.datetime(2025, 3, 9, 22, 44, tzinfo=KST)).status_code == 200
    assert _batch_health(dt.datetime(2025, 3, 9, 22, 46, tzinfo=KST)).status_code == 503


def test_batch_health_last_success_over_26_hours_is_503():
    _run(target=dt.date(2025, 3, 8), finished=dt.datetime(2025, 3, 7, 22, 0, tzinfo=KST))
    response = _batch_health(dt.datetime(2025, 3, 9, 0, 1, tzinfo=KST))  # 26 h 01 min later
    assert response.status_code == 503
    assert response.json()["problems"] == [BATCH_STALE.format(hours=26 + 1 / 60)]
    assert _batch_health(dt.datetime(2025, 3, 8, 23, 59, tzinfo=KST)).status_code == 503  # missed deadline
    _run(target=dt.date(2025, 3, 9), finished=dt.datetime(2025, 3, 8, 22, 0, tzinfo=KST))
    assert _batch_health(dt.datetime(2025, 3, 9, 0, 1, tzinfo=KST)).status_code == 200
