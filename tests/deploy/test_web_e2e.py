"""End to end: gunicorn started from the Procfile, called over real HTTP (issue 4, items 2 and 12).

The server is a separate process, so everything it must see is committed first (transaction=True)
and it reads the test database through DATABASE_URL, with production settings (DEBUG off).
"""

import datetime as dt
import threading
import time

import pytest
from django.db import connection
from django.utils import timezone
from rest_framework.authtoken.models import Token

from core.fortunes.inputs import GenerationInput
from core.fortunes.schema import Categories, GeneratedPart, Lucky, ScoredText
from core.models import FortuneGeneration, FortuneResult
from tests.deploy.server import database_url_for, production_env, web_server_start, web_server_stop
from tests.factories import user_create, users_create_many

pytestmark = [pytest.mark.subprocess, pytest.mark.django_db(transaction=True)]

HUNG_REQUESTS = 10
ON_DEMAND_TIMEOUT = 4  # seconds; the stub hangs longer, so the budget is what ends each request
HEALTHZ_WAIT = 1.5  # seconds /healthz may take while the hung requests are outstanding


@pytest.fixture
def start_web(tmp_path):
    """Start gunicorn against this test's committed database; stopped (SIGTERM) at teardown."""
    servers = []

    def start(**extra_env: str):
        port_env = production_env(database_url=database_url_for(connection.settings_dict), port=0, extra=extra_env)
        server = web_server_start(env=port_env, log_path=tmp_path / f"gunicorn-{len(servers)}.log")
        servers.append(server)
        return server

    yield start
    for server in servers:
        web_server_stop(server)


def _token_for(user) -> str:
    return Token.objects.create(user=user).key


def _stored_fortune(*, user, for_date: dt.date) -> FortuneResult:
    inp = GenerationInput.for_user(user=user, for_date=for_date, generator="local")
    scored = ScoredText(score=70, text="무난한 하루입니다.")
    part = GeneratedPart(
        summary="차분하게 하루를 보내세요.",
        overall=scored,
        categories=Categories(love=scored, money=scored, work=scored, health=scored),
        lucky=Lucky(color="파랑", number=7, direction="동"),
        advice="서두르지 마세요.",
    )
    generation = FortuneGeneration.objects.create(
        input_hash=inp.hash, for_date=for_date, content=inp.compose(part).as_json(), provider="local"
    )
    return FortuneResult.objects.create(
        user=user, for_date=for_date, generation=generation, source=FortuneResult.Source.BATCH
    )


def _assert_no_server_errors(server) -> None:
    log = server.log()
    assert "Traceback" not in log, log[-4000:]
    assert "WORKER TIMEOUT" not in log, log[-4000:]


def test_stored_fortune_is_served_and_anonymous_gets_401(start_web):
    user = user_create()
    token = _token_for(user)
    today = timezone.localdate()  # Asia/Seoul
    stored = _stored_fortune(user=user, for_date=today)
    server = start_web()

    assert server.request("/healthz").status == 200
    assert server.request("/fortune/today").status == 401
    assert server.request("/fortune/today", token="0" * 40).status == 401

    for path in ("/fortune/today", "/fortune/today/"):
        response = server.request(path, token=token)
        assert response.status == 200, (path, response.body[:500])
        body = response.json()
        assert body["date"] == today.isoformat()
        assert body["source"] == "batch"
        assert body["fortune"] == stored.generation.content
    _assert_no_server_errors(server)


def test_missing_fortune_is_generated_on_demand_through_the_stub(start_web, stub_openai):
    user = user_create()
    token = _token_for(user)
    server = start_web(**stub_openai.env())

    first = server.request("/fortune/today", token=token)
    again = server.request("/fortune/today", token=token)

    assert first.status == 200, first.body[:500]
    assert first.json()["source"] == "on_demand"
    assert again.status == 200 and again.json() == first.json()
    assert stub_openai.counters()["requests"] == 1  # the second answer came from the database
    result = FortuneResult.objects.get(user=user, for_date=timezone.localdate())
    assert result.source == FortuneResult.Source.ON_DEMAND
    assert result.generation.content == first.json()["fortune"]
    _assert_no_server_errors(server)


def test_healthz_answers_while_ten_on_demand_generations_hang(start_web, stub_openai):
    users = users_create_many(count=HUNG_REQUESTS, seed=4)
    tokens = [_token_for(user) for user in users]
    stub_openai.configure(faults={"hang": 1.0}, hang_seconds=ON_DEMAND_TIMEOUT + 20)
    server = start_web(
        FORTUNE_ON_DEMAND_TIMEOUT=str(ON_DEMAND_TIMEOUT), **stub_openai.env()
    )
    responses: dict[int, object] = {}

    def call(index: int) -> None:
        responses[index] = server.request("/fortune/today", token=tokens[index], timeout=60)

    threads = [threading.Thread(target=call, args=(i,), daemon=True) for i in range(HUNG_REQUESTS)]
    for thread in threads:
        thread.start()
    # All ten hang inside the LLM call at once, on SQLite too: no transaction is open across it.
    expected_at_stub = HUNG_REQUESTS
    deadline = time.monotonic() + 30
    while stub_openai.counters()["in_flight"] < expected_at_stub and time.monotonic() < deadline:
        time.sleep(0.02)
    assert stub_openai.counters()["in_flight"] == expected_at_stub

    healthz = server.request("/healthz", timeout=HEALTHZ_WAIT)

    assert healthz.status == 200
    assert not responses, "a hung request finished before /healthz answered: the check proves nothing"
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(responses) == list(range(HUNG_REQUESTS))
    for response in responses.values():
        # At the end of the budget each gets the saju-rule fortune, stored like any other.
        assert response.status == 200, response.body[:500]
        assert response.headers["Content-Type"].startswith("application/json")
        assert response.json()["source"] == "fallback"
    assert FortuneResult.objects.filter(user__in=users, source=FortuneResult.Source.FALLBACK).count() == HUNG_REQUESTS
    _assert_no_server_errors(server)
