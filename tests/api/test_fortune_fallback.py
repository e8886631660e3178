"""A user always gets a fortune (issue 16, item 6): with the model failing, GET /fortune/today serves
the saju-rule fortune, stored and served all day, without spending the daily quota; /ops/ counts it.
The real SDK against the stub, failing every call."""

import datetime as dt

import pytest
from django.core.cache import cache
from django.urls import reverse

from core.models import FortuneGeneration, FortuneResult
from core.throttles import ON_DEMAND_KEY
from tests.api.conftest import assert_fallback_served, client_for, kst_today
from tests.factories import user_create
from tests.nightly.helpers import run_batch

pytestmark = pytest.mark.django_db


@pytest.fixture
def model_down(openai_settings):
    openai_settings.configure(faults={"500": 1.0}, retry_after=0.05)
    return openai_settings


def test_a_failing_model_serves_the_fallback_the_same_all_day_and_spends_no_quota(model_down, user, settings):
    settings.FORTUNE_ON_DEMAND_DAILY_LIMIT = 1
    client = client_for(user)

    first = assert_fallback_served(client.get("/fortune/today"), user=user)
    assert model_down.counters()["requests"] == 3  # the on-demand attempts, then the rules
    model_down.configure(faults={"500": 0.0})  # the model is back: the user still sees the same text
    again = client.get("/fortune/today")
    assert again.status_code == 200 and again.json() == first
    assert model_down.counters()["requests"] == 3
    assert not cache.get(ON_DEMAND_KEY.format(user_id=user.pk, day=kst_today().isoformat()))

    # A birth-date correction drops today's fortune: the limit of 1 is still there to spend.
    assert client.patch("/me", {"birth_date_solar": "1991-06-18"}, format="json").status_code == 200
    fresh = client.get("/fortune/today")
    assert fresh.status_code == 200, fresh.json()
    assert fresh.json()["source"] == "on_demand"
    assert model_down.counters()["requests"] == 4


def test_the_fallback_is_documented_in_the_body_and_counted_on_ops(model_down, user):
    staff = user_create(username="operator", is_staff=True, birth_date_solar=None)
    assert_fallback_served(client_for(user).get("/fortune/today"), user=user)
    status = client_for(staff).get(reverse("ops:status")).json()
    today = next(c for c in status["coverage"] if c["for_date"] == kst_today().isoformat())
    assert (today["fallback"], today["on_demand"]) == (1, 0)


def test_errors_that_are_the_users_own_stay_errors(model_down):
    no_birth = user_create(birth_date_solar=None)
    response = client_for(no_birth).get("/fortune/today")
    assert (response.status_code, response.json()["code"]) == (409, "birth_date_missing")
    inactive = user_create(birth_date_solar=dt.date(1990, 1, 1))
    client = client_for(inactive)
    inactive.is_active = False
    inactive.save()
    assert client.get("/fortune/today").status_code == 401
    assert not FortuneResult.objects.exists() and model_down.counters()["requests"] == 0


def test_a_batch_for_the_same_date_keeps_a_served_fallback(model_down, user):
    # The catch-up run for today (a missed night) fills gaps only: the fallback the user has seen
    # stays their fortune for the day.
    served = assert_fallback_served(client_for(user).get("/fortune/today"), user=user)
    other = user_create(birth_date_solar=dt.date(1977, 7, 7))
    model_down.configure(faults={"500": 0.0})
    run_batch("--date", (kst_today() - dt.timedelta(days=1)).isoformat())
    result = FortuneResult.objects.select_related("generation").get(user=user, for_date=kst_today())
    assert (result.source, result.generation.content) == ("fallback", served["fortune"])
    assert FortuneResult.objects.get(user=other, for_date=kst_today()).source == "batch"
    assert client_for(user).get("/fortune/today").json() == served
    assert FortuneGeneration.objects.filter(provider="local").count() == 1
