import datetime as dt

import pytest
import time_machine
from rest_framework.test import APIClient

from core.api.fortunes import DATE_MALFORMED, FORTUNE_NOT_FOUND, FORTUNE_NOT_YET
from core.models import FortuneResult
from tests.api.conftest import client_for, fortune_store
from tests.factories import user_create

pytestmark = pytest.mark.django_db

UTC = dt.timezone.utc
# 2025-03-09 23:59 KST and 2025-03-10 00:00 KST
BEFORE_MIDNIGHT = dt.datetime(2025, 3, 9, 14, 59, tzinfo=UTC)
AT_MIDNIGHT = dt.datetime(2025, 3, 9, 15, 0, tzinfo=UTC)


@pytest.fixture
def frozen():
    with time_machine.travel(BEFORE_MIDNIGHT, tick=False) as traveller:
        yield traveller


@pytest.mark.parametrize("suffix", ["", "/"])
def test_past_date_returns_the_stored_fortune(frozen, user, suffix):
    past = fortune_store(user=user, for_date=dt.date(2025, 3, 1), summary="지난날")
    response = client_for(user).get(f"/fortune/2025-03-01{suffix}")
    assert response.status_code == 200
    body = response.json()
    assert body["date"] == "2025-03-01"
    assert body["fortune"] == past.generation.content
    assert body["source"] == "batch"


def test_past_date_without_fortune_is_404_and_generates_nothing(frozen, user, fake_provider):
    response = client_for(user).get("/fortune/2025-03-01")
    assert response.status_code == 404
    assert response.json()["detail"] == FORTUNE_NOT_FOUND.format(date="2025-03-01")
    assert fake_provider.calls == 0
    assert not FortuneResult.objects.exists()


def test_today_by_date_is_generated_on_demand_like_fortune_today(frozen, user, fake_provider):
    response = client_for(user).get("/fortune/2025-03-09")
    assert response.status_code == 200
    assert response.json()["source"] == "on_demand"
    assert fake_provider.calls == 1


def test_tomorrow_is_hidden_until_kst_midnight_even_when_the_batch_made_it(user, fake_provider):
    fortune_store(user=user, for_date=dt.date(2025, 3, 10), summary="내일")
    client = client_for(user)
    with time_machine.travel(BEFORE_MIDNIGHT, tick=False):
        hidden = client.get("/fortune/2025-03-10")
    with time_machine.travel(AT_MIDNIGHT, tick=False):
        shown = client.get("/fortune/2025-03-10")
    assert hidden.status_code == 404
    assert hidden.json()["detail"] == FORTUNE_NOT_YET.format(date="2025-03-10")
    assert shown.status_code == 200
    assert shown.json()["fortune"]["summary"] == "내일"
    assert fake_provider.calls == 0


def test_far_future_is_404(frozen, user):
    assert client_for(user).get("/fortune/2099-01-01").status_code == 404


@pytest.mark.parametrize("bad", ["2025-13-01", "2025-02-30", "20250301", "2025-3-1", "yesterday", "2025-03-01x"])
def test_malformed_date_is_400(frozen, user, bad):
    response = client_for(user).get(f"/fortune/{bad}")
    assert response.status_code == 400
    assert response.json()["detail"] == DATE_MALFORMED


def test_unauthenticated_by_date_is_401(frozen):
    assert APIClient().get("/fortune/2025-03-01").status_code == 401


def test_user_a_can_never_read_user_b_fortune_by_any_url(frozen, fake_provider):
    a = user_create(birth_date_solar=dt.date(1990, 1, 1), gender="F")
    b = user_create(birth_date_solar=dt.date(1975, 7, 7), gender="M")
    b_past = fortune_store(user=b, for_date=dt.date(2025, 3, 1), summary="B의 지난 운세")
    b_today = fortune_store(user=b, for_date=dt.date(2025, 3, 9), summary="B의 오늘 운세")
    b_tomorrow = fortune_store(user=b, for_date=dt.date(2025, 3, 10), summary="B의 내일 운세")
    client = client_for(a)
    urls = [
        "/fortune/2025-03-01", "/fortune/2025-03-09", "/fortune/2025-03-10", "/fortune/today",
        f"/fortune/{b_past.pk}", f"/fortune/{b_past.generation_id}", f"/fortune/today?user={b.pk}",
        f"/fortune/2025-03-01?user_id={b.pk}", "/me",
    ]
    b_summaries = {r.generation.content["summary"] for r in (b_past, b_today, b_tomorrow)}
    for url in urls:
        response = client.get(url, HTTP_X_USER_ID=str(b.pk))
        text = response.content.decode()
        assert not any(summary in text for summary in b_summaries), url
        assert str(b.username) not in text, url
    assert client.get("/fortune/2025-03-01").status_code == 404
    today = client.get("/fortune/today").json()
    assert today["fortune"]["saju"]["pillars"]["day"] == a.saju_day
