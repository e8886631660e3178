import datetime as dt
from zoneinfo import ZoneInfo

import pytest
import time_machine
from rest_framework import serializers
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from core.api.fortunes import FortuneOutputSerializer
from core.models import FortuneGeneration, FortuneResult
from core.services.fortunes import BIRTH_DATE_MISSING
from tests.api.conftest import assert_fallback_served, client_for, fortune_store, kst_today, provider_error
from tests.factories import user_create

pytestmark = pytest.mark.django_db

UTC = dt.timezone.utc
KST = ZoneInfo("Asia/Seoul")


def test_unauthenticated_is_401_with_token_challenge():
    response = APIClient().get("/fortune/today")
    assert response.status_code == 401
    assert response["WWW-Authenticate"] == "Token"


def test_bad_token_is_401():
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Token not-a-real-token")
    assert client.get("/fortune/today").status_code == 401


def test_inactive_user_token_is_401(user):
    client = client_for(user)
    user.is_active = False
    user.save()
    response = client.get("/fortune/today")
    assert response.status_code == 401
    assert not FortuneResult.objects.exists()


def test_inactive_user_session_is_401(user):
    user.set_password("pw-for-session-1")
    user.save()
    client = APIClient()
    assert client.login(username=user.username, password="pw-for-session-1")
    assert client.get("/me").status_code == 200
    user.is_active = False
    user.save()
    assert client.get("/fortune/today").status_code == 401


def test_session_auth_works(user):
    user.set_password("pw-for-session-1")
    user.save()
    today = kst_today()
    fortune_store(user=user, for_date=today)
    client = APIClient()
    assert client.login(username=user.username, password="pw-for-session-1")
    response = client.get("/fortune/today")
    assert response.status_code == 200
    assert response.json()["date"] == today.isoformat()


@pytest.mark.parametrize("path", ["/fortune/today", "/fortune/today/"])
def test_stored_fortune_after_batch_both_slash_forms(auth_client, user, path):
    today = kst_today()
    result = fortune_store(user=user, for_date=today, source="batch")
    response = auth_client.get(path)
    assert response.status_code == 200
    body = response.json()
    assert body["date"] == today.isoformat()
    assert body["source"] == "batch"
    assert body["fortune"] == result.generation.content
    assert body["fortune"]["for_date"] == today.isoformat()
    assert dt.datetime.fromisoformat(body["generated_at"]) == result.generation.created_at


def test_body_is_the_documented_serializers_output_and_the_same_bytes_each_time(auth_client, user):
    # FortuneOutputSerializer makes both the body and the schema; the body holds what the ORM stored.
    result = fortune_store(user=user, for_date=kst_today())
    first = auth_client.get("/fortune/today")
    assert first.json() == {
        "date": result.for_date.isoformat(),
        "fortune": FortuneGeneration.objects.get().content,
        "source": result.source,
        "generated_at": serializers.DateTimeField().to_representation(result.generation.created_at),
    }
    assert list(first.json()) == list(FortuneOutputSerializer().fields)
    assert first["Content-Type"] == "application/json"
    # A strong ETag promises identical bytes.
    second = auth_client.get("/fortune/today")
    assert (second.content, second["ETag"]) == (first.content, first["ETag"])


def test_the_openapi_schema_documents_the_body_served(auth_client, user):
    fortune_store(user=user, for_date=kst_today())
    body = auth_client.get("/fortune/today").json()
    schema = APIClient().get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json").json()
    operation = next(p["get"] for path, p in schema["paths"].items() if path.rstrip("/") == "/fortune/today")
    ref = operation["responses"]["200"]["content"]["application/json"]["schema"]
    component = schema["components"]["schemas"][ref["$ref"].rsplit("/", 1)[-1]]
    assert set(component["properties"]) == set(body)
    assert component["properties"]["fortune"]["type"] == "object" and isinstance(body["fortune"], dict)
    assert component["properties"]["generated_at"]["format"] == "date-time"


def test_on_demand_answer_is_byte_identical_to_the_stored_read(auth_client, settings):
    settings.FORTUNE_PROVIDER = "local"
    made = auth_client.get("/fortune/today")
    read = auth_client.get("/fortune/today")
    assert made.json()["source"] == "on_demand"
    assert (made.content, made["ETag"]) == (read.content, read["ETag"])


def test_browsable_api_still_renders_the_fortune(user):
    user.set_password("pw-for-session-1")
    user.save()
    fortune_store(user=user, for_date=kst_today(), summary="브라우저에서 보는 운세")
    client = APIClient()
    assert client.login(username=user.username, password="pw-for-session-1")
    response = client.get("/fortune/today", HTTP_ACCEPT="text/html")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/html")
    assert "브라우저에서 보는 운세" in response.content.decode()


def test_stored_path_uses_at_most_three_queries(auth_client, user, django_assert_max_num_queries):
    fortune_store(user=user, for_date=kst_today())
    with django_assert_max_num_queries(3):
        response = auth_client.get("/fortune/today")
    assert response.status_code == 200


@pytest.mark.parametrize(
    ("utc_now", "expected_kst_date"),
    [
        (dt.datetime(2025, 3, 9, 14, 59, tzinfo=UTC), dt.date(2025, 3, 9)),  # 23:59 KST
        (dt.datetime(2025, 3, 9, 15, 0, tzinfo=UTC), dt.date(2025, 3, 10)),  # 00:00 KST next day
    ],
)
def test_today_is_the_kst_date_on_both_sides_of_midnight(user, utc_now, expected_kst_date, fake_provider):
    day_before, day_after = dt.date(2025, 3, 9), dt.date(2025, 3, 10)
    fortune_store(user=user, for_date=day_before, summary="구일")
    fortune_store(user=user, for_date=day_after, summary="신일")
    with time_machine.travel(utc_now, tick=False):
        response = client_for(user).get("/fortune/today")
    assert response.status_code == 200
    assert response.json()["date"] == expected_kst_date.isoformat()
    assert response.json()["fortune"]["summary"] == ("구일" if expected_kst_date == day_before else "신일")
    assert fake_provider.calls == 0


def test_no_birth_date_is_409_with_message():
    user = user_create(birth_date_solar=None)
    response = client_for(user).get("/fortune/today")
    assert response.status_code == 409
    assert response.json()["detail"] == BIRTH_DATE_MISSING
    assert not FortuneResult.objects.exists()


def test_missing_fortune_is_generated_on_demand_with_the_local_provider(auth_client, user, settings):
    settings.FORTUNE_PROVIDER = "local"
    response = auth_client.get("/fortune/today")
    assert response.status_code == 200
    body = response.json()
    today = kst_today()
    assert body["source"] == "on_demand"
    assert body["date"] == today.isoformat()
    result = FortuneResult.objects.select_related("generation").get(user=user, for_date=today)
    assert result.source == "on_demand"
    assert body["fortune"] == result.generation.content
    assert body["fortune"]["saju"]["pillars"]["day"] == user.saju_day
    # The second request reads the stored row.
    again = auth_client.get("/fortune/today")
    assert again.json() == body
    assert FortuneGeneration.objects.count() == 1


def test_on_demand_stores_generation_and_result_once(auth_client, user, fake_provider):
    first = auth_client.get("/fortune/today")
    second = auth_client.get("/fortune/today")
    assert first.status_code == second.status_code == 200
    assert fake_provider.calls == 1
    generation = FortuneGeneration.objects.get()
    assert (generation.provider, generation.model, generation.tokens_in, generation.tokens_out) == (
        "fake", "fake-1", 100, 200
    )
    assert FortuneResult.objects.get(user=user).generation == generation


def test_users_with_equal_inputs_share_one_generation(fake_provider):
    a = user_create(birth_date_solar=dt.date(1988, 8, 8), gender="M")
    b = user_create(birth_date_solar=dt.date(1988, 8, 8), gender="M")
    assert client_for(a).get("/fortune/today").status_code == 200
    assert client_for(b).get("/fortune/today").status_code == 200
    assert fake_provider.calls == 1
    assert FortuneGeneration.objects.count() == 1
    assert FortuneResult.objects.count() == 2


def test_on_demand_reuses_a_generation_the_batch_made_for_another_user(fake_provider):
    a = user_create(birth_date_solar=dt.date(1988, 8, 8), gender="M")
    b = user_create(birth_date_solar=dt.date(1988, 8, 8), gender="M")
    stored = fortune_store(user=a, for_date=kst_today(), generator=fake_provider.generator)
    response = client_for(b).get("/fortune/today")
    assert response.status_code == 200
    assert fake_provider.calls == 0
    assert FortuneResult.objects.get(user=b).generation_id == stored.generation_id


@pytest.mark.parametrize(
    "error",
    [
        provider_error("bad_request", retryable=False),
        provider_error("misconfigured", retryable=False),
    ],
)
def test_non_retryable_provider_failure_serves_the_fallback_after_one_attempt(auth_client, fake_provider, user,
                                                                              error):
    fake_provider.script = [error]
    response = auth_client.get("/fortune/today")
    assert_fallback_served(response, user=user)
    assert fake_provider.calls == 1


def test_persistent_retryable_failure_serves_the_fallback_after_three_attempts(auth_client, fake_provider, user):
    fake_provider.script = [provider_error("rate_limited", retry_after=0)] * 10
    response = auth_client.get("/fortune/today")
    assert_fallback_served(response, user=user)
    assert fake_provider.calls == 3  # ON_DEMAND_MAX_ATTEMPTS


def test_transient_failure_then_success_is_200(auth_client, fake_provider):
    fake_provider.script = [provider_error("server_error", retry_after=0)]
    response = auth_client.get("/fortune/today")
    assert response.status_code == 200
    assert response.json()["source"] == "on_demand"
    assert fake_provider.calls == 2
    assert FortuneResult.objects.count() == 1


def test_provider_crash_serves_the_fallback_not_500(auth_client, fake_provider, user):
    fake_provider.script = [RuntimeError("bug in provider")]
    assert_fallback_served(auth_client.get("/fortune/today"), user=user)


def test_budget_overrun_serves_the_fallback_and_provider_timeout_stays_inside_budget(
    auth_client, fake_provider, settings, user
):
    settings.FORTUNE_ON_DEMAND_TIMEOUT = 1
    # Each attempt "hangs" until the client timeout it was given, then reports a timeout.
    fake_provider.script = [provider_error("timeout")] * 5
    fake_provider.delay = 1.0
    response = auth_client.get("/fortune/today")
    assert_fallback_served(response, user=user)
    assert fake_provider.calls == 1
    assert all(t is not None and t <= settings.FORTUNE_ON_DEMAND_TIMEOUT for t in fake_provider.timeouts)


def test_the_fallback_is_served_all_day_once_stored(auth_client, fake_provider, user):
    fake_provider.script = [provider_error("server_error", retryable=False)]
    first = assert_fallback_served(auth_client.get("/fortune/today"), user=user)
    # The model answers again: the user still sees the same text, and no model call is made.
    again = auth_client.get("/fortune/today")
    assert again.status_code == 200 and again.json() == first
    assert fake_provider.calls == 1
    assert FortuneResult.objects.count() == FortuneGeneration.objects.count() == 1


def test_a_user_never_gets_another_users_fortune_from_today(fake_provider):
    owner = user_create(birth_date_solar=dt.date(1970, 1, 2))
    other = user_create(birth_date_solar=None)
    fortune_store(user=owner, for_date=kst_today())
    assert client_for(other).get("/fortune/today").status_code == 409
    third = user_create(birth_date_solar=dt.date(2001, 9, 9), gender="M")
    body = client_for(third).get("/fortune/today").json()
    assert body["fortune"]["saju"]["pillars"]["day"] == third.saju_day
    assert FortuneResult.objects.get(user=third).generation_id != FortuneResult.objects.get(user=owner).generation_id


def test_deleted_token_no_longer_works(auth_client, user):
    Token.objects.filter(user=user).delete()
    assert auth_client.get("/fortune/today").status_code == 401
