import datetime as dt

import pytest
import time_machine

from core.api.http import fortune_etag
from core.models import FortuneResult
from tests.api.conftest import client_for, fortune_store, kst_today

pytestmark = pytest.mark.django_db

UTC = dt.timezone.utc


@pytest.mark.parametrize(
    ("utc_now", "max_age"),
    [
        (dt.datetime(2025, 3, 9, 3, 0, tzinfo=UTC), 300),  # 12:00 KST
        (dt.datetime(2025, 3, 9, 14, 58, tzinfo=UTC), 120),  # 23:58 KST: two minutes to midnight
        (dt.datetime(2025, 3, 9, 14, 59, 59, tzinfo=UTC), 1),
    ],
)
def test_cache_headers_on_the_fortune(user, utc_now, max_age):
    with time_machine.travel(utc_now, tick=False):
        fortune_store(user=user, for_date=dt.date(2025, 3, 9))
        response = client_for(user).get("/fortune/today")
    assert response.status_code == 200
    assert response["Cache-Control"] == f"private, max-age={max_age}"
    vary = {v.strip() for v in response["Vary"].split(",")}
    assert {"Authorization", "Cookie"} <= vary
    assert response["ETag"] == fortune_etag(FortuneResult.objects.get())


def test_matching_if_none_match_is_304_without_body(auth_client, user):
    fortune_store(user=user, for_date=kst_today())
    first = auth_client.get("/fortune/today")
    etag = first["ETag"]
    second = auth_client.get("/fortune/today", HTTP_IF_NONE_MATCH=etag)
    assert second.status_code == 304
    assert second.content == b""
    assert second["ETag"] == etag
    assert second["Cache-Control"].startswith("private, max-age=")
    weak_list = auth_client.get("/fortune/today", HTTP_IF_NONE_MATCH=f'"other", W/{etag}')
    assert weak_list.status_code == 304


def test_stale_etag_is_200(auth_client, user):
    fortune_store(user=user, for_date=kst_today())
    response = auth_client.get("/fortune/today", HTTP_IF_NONE_MATCH='"0123456789abcdef"')
    assert response.status_code == 200
    assert response.json()["source"] == "batch"


def test_etag_changes_when_the_fortune_is_replaced(auth_client, user, fake_provider):
    today = kst_today()
    fortune_store(user=user, for_date=today)
    old = auth_client.get("/fortune/today")["ETag"]
    assert auth_client.patch("/me", {"gender": "M"}, format="json").status_code == 200
    response = auth_client.get("/fortune/today", HTTP_IF_NONE_MATCH=old)
    assert response.status_code == 200
    assert response["ETag"] != old
    assert response.json()["source"] == "on_demand"


def test_etag_is_stable_for_the_same_row(user):
    result = fortune_store(user=user, for_date=dt.date(2025, 1, 1))
    assert fortune_etag(result) == fortune_etag(FortuneResult.objects.get(pk=result.pk))
