"""On-demand generation with the openai provider: the real SDK against the project's stub server."""

import datetime as dt
import threading
import time

import pytest
from django.db import connection
from rest_framework.test import APIClient

from core.models import FortuneGeneration, FortuneResult
from tests.api.conftest import assert_fallback_served, client_for
from tests.api.test_single_flight import THREADS, _get_concurrently
from tests.factories import user_create


@pytest.mark.django_db
def test_on_demand_through_the_stub(openai_settings, auth_client, user):
    response = auth_client.get("/fortune/today")
    assert response.status_code == 200, response.json()
    body = response.json()
    assert body["source"] == "on_demand"
    assert body["fortune"]["saju"]["pillars"]["day"] == user.saju_day
    assert openai_settings.counters()["requests"] == 1
    generation = FortuneGeneration.objects.get()
    assert generation.provider == "openai"
    assert generation.tokens_in > 0


@pytest.mark.django_db(transaction=True)
def test_single_flight_ten_concurrent_requests_one_stub_request(openai_settings):
    openai_settings.configure(latency_ms=300)
    user = user_create(birth_date_solar=dt.date(1979, 4, 1), gender="F")
    results = _get_concurrently([client_for(user)] * THREADS)
    assert [status for status, _ in results] == [200] * THREADS, results
    assert openai_settings.counters()["requests"] == 1
    assert FortuneResult.objects.filter(user=user).count() == 1
    assert FortuneGeneration.objects.count() == 1


@pytest.mark.django_db
def test_a_hanging_provider_gives_the_fallback_within_the_budget(openai_settings, auth_client, settings, user):
    settings.FORTUNE_ON_DEMAND_TIMEOUT = 2
    openai_settings.configure(fault_hang=1.0, hang_seconds=30)
    started = time.monotonic()
    response = auth_client.get("/fortune/today")
    assert time.monotonic() - started < settings.FORTUNE_ON_DEMAND_TIMEOUT + 1  # the budget, not the hang
    assert_fallback_served(response, user=user)
    assert openai_settings.counters()["hangs"] == 1


@pytest.mark.django_db
@pytest.mark.parametrize("fault", ["429", "500"])
def test_persistent_stub_errors_give_the_fallback_after_three_attempts(openai_settings, auth_client, user, fault):
    openai_settings.configure(faults={fault: 1.0}, retry_after=0.1)
    assert_fallback_served(auth_client.get("/fortune/today"), user=user)
    assert openai_settings.counters()["requests"] == 3


@pytest.mark.django_db
def test_malformed_output_then_success_is_stored_once(openai_settings, auth_client):
    # Seed-scheduled faults: find a seed whose first request is malformed and second is clean.
    from tests.stub_openai.server import fault_for

    faults = {"malformed": 0.5}
    seed = next(
        s for s in range(1000)
        if fault_for(seed=s, n=1, faults=faults)[0] == "malformed" and not fault_for(seed=s, n=2, faults=faults)[0]
    )
    openai_settings.configure(faults=faults, seed=seed)
    response = auth_client.get("/fortune/today")
    assert response.status_code == 200
    assert openai_settings.counters()["requests"] == 2
    assert FortuneGeneration.objects.count() == 1


@pytest.mark.django_db(transaction=True)
def test_healthz_answers_while_ten_generations_hang(openai_settings, settings):
    # No transaction is open across the LLM call, so on SQLite too the ten hang together at the stub.
    settings.FORTUNE_ON_DEMAND_TIMEOUT = 20
    openai_settings.configure(fault_hang=1.0, hang_seconds=30)
    users = [user_create(birth_date_solar=dt.date(1960 + i, 1, 15), gender="M") for i in range(10)]
    clients = [client_for(u) for u in users]
    statuses = []

    def call(client):
        try:
            statuses.append(client.get("/fortune/today").status_code)
        finally:
            connection.close()

    threads = [threading.Thread(target=call, args=(c,)) for c in clients]
    for thread in threads:
        thread.start()
    try:
        deadline = time.monotonic() + 10
        while openai_settings.counters()["in_flight"] < 10 and time.monotonic() < deadline:
            time.sleep(0.02)  # waiting for a condition, not asserting on time
        assert openai_settings.counters()["in_flight"] == 10
        response = APIClient().get("/healthz")
        assert response.status_code == 200
        assert openai_settings.counters()["in_flight"] == 10  # still hanging while /healthz answered
    finally:
        openai_settings.reset()  # wakes the hung requests
        for thread in threads:
            thread.join(timeout=30)
        connection.close()
    assert len(statuses) == 10


_BACKENDS_SQL = (
    "SELECT state, count(*) FROM pg_stat_activity "
    "WHERE datname = current_database() AND pid <> pg_backend_pid() GROUP BY state"
)
# Who holds the single-flight advisory lock, and in what state its session is.
_ADVISORY_HOLDERS_SQL = (
    "SELECT a.state, a.xact_start IS NULL FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
    "WHERE l.locktype = 'advisory' AND l.granted AND l.database = "
    "(SELECT oid FROM pg_database WHERE datname = current_database())"
)


@pytest.mark.django_db(transaction=True)
def test_a_hung_provider_call_holds_no_open_transaction(openai_settings, settings, uses_postgres):
    if not uses_postgres:
        pytest.skip("pg_stat_activity is PostgreSQL's")
    settings.FORTUNE_ON_DEMAND_TIMEOUT = 20
    openai_settings.configure(fault_hang=1.0, hang_seconds=30)
    client = client_for(user_create(birth_date_solar=dt.date(1975, 6, 7), gender="F"))
    statuses = []

    def call():
        try:
            statuses.append(client.get("/fortune/today").status_code)
        finally:
            connection.close()

    worker = threading.Thread(target=call)
    worker.start()
    try:
        deadline = time.monotonic() + 10
        while openai_settings.counters()["in_flight"] < 1 and time.monotonic() < deadline:
            time.sleep(0.02)  # waiting for a condition, not asserting on time
        assert openai_settings.counters()["in_flight"] == 1
        with connection.cursor() as cursor:
            cursor.execute(_BACKENDS_SQL)
            backends = dict(cursor.fetchall())
            cursor.execute(_ADVISORY_HOLDERS_SQL)
            advisory_holders = cursor.fetchall()
        assert openai_settings.counters()["in_flight"] == 1  # the call still hung while we looked
        # Without Redis the single-flight lock is a session-level advisory lock, held by a session
        # that is idle outside any transaction (no xact_start) across the LLM call.
        assert advisory_holders == [("idle", True)], advisory_holders
        assert backends.get("idle", 0) >= 1  # the request's own connection, kept open between queries
        assert not {state for state in backends if state and state.startswith("idle in transaction")}, backends
        assert backends.get("active", 0) == 0, backends
    finally:
        openai_settings.reset()  # wakes the hung request
        worker.join(timeout=30)
        connection.close()
    assert statuses == [200]  # after the reset the stub answers, and the fortune is stored


@pytest.mark.django_db
def test_openai_without_key_serves_the_fallback_not_500(settings, auth_client, user):
    settings.FORTUNE_PROVIDER = "openai"
    settings.OPENAI_API_KEY = ""
    assert_fallback_served(auth_client.get("/fortune/today"), user=user)


@pytest.mark.django_db(transaction=True)
def test_on_demand_generations_beyond_the_process_cap_get_the_fallback_at_once(openai_settings, settings):
    settings.FORTUNE_ON_DEMAND_MAX_CONCURRENT = 1
    settings.FORTUNE_ON_DEMAND_TIMEOUT = 4
    openai_settings.configure(fault_hang=1.0, hang_seconds=30)
    first_user = user_create(birth_date_solar=dt.date(1970, 1, 2))
    second_user = user_create(birth_date_solar=dt.date(1980, 3, 4))
    first, second = client_for(first_user), client_for(second_user)  # tokens exist before the hang
    hung: list = []
    worker = threading.Thread(target=lambda: hung.append(first.get("/fortune/today")))
    worker.start()
    try:
        deadline = time.monotonic() + 3
        while openai_settings.counters()["in_flight"] < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        response = second.get("/fortune/today")
        assert_fallback_served(response, user=second_user)
        assert openai_settings.counters()["in_flight"] == 1  # answered while the first still hung
        assert openai_settings.counters()["requests"] == 1  # the second never reached the provider
    finally:
        worker.join()
        connection.close()
    assert_fallback_served(hung[0], user=first_user)  # the first, at the end of its budget
