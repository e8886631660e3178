"""On-demand single-flight across gunicorn processes without Redis (issue 16, item 4): the Procfile's
gunicorn, two workers on PostgreSQL, the real SDK against the stub, over HTTP.

bench/gunicorn.conf.py's balanced worker spreads the ten connections over both workers (a stock gthread
worker may accept them all), so a lock that covers one process only shows as a second LLM call.
"""

import threading

import pytest
from django.db import connection
from django.utils import timezone
from rest_framework.authtoken.models import Token

from core.models import FortuneGeneration, FortuneResult
from tests.deploy.server import database_url_for, production_env, web_server_start, web_server_stop
from tests.factories import user_create

pytestmark = [pytest.mark.subprocess, pytest.mark.django_db(transaction=True)]

REQUESTS = 10
STUB_LATENCY_MS = 1500  # long enough that all ten arrive while the first generates


@pytest.fixture
def start_web(tmp_path):
    servers = []

    def start(**extra_env: str):
        env = production_env(
            database_url=database_url_for(connection.settings_dict), port=0,
            extra={"WEB_CONCURRENCY": "2", **extra_env},
        )
        server = web_server_start(env=env, log_path=tmp_path / f"gunicorn-{len(servers)}.log",
                                  extra_args=("--config", "bench/gunicorn.conf.py"))
        servers.append(server)
        return server

    yield start
    for server in servers:
        web_server_stop(server)


def _get_concurrently(server, token: str, n: int) -> list:
    barrier = threading.Barrier(n)
    responses: list = [None] * n

    def call(i: int) -> None:
        barrier.wait(timeout=10)
        responses[i] = server.request("/fortune/today", token=token, timeout=30)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return responses


def test_two_workers_on_postgresql_without_redis_make_one_llm_call(start_web, stub_openai, uses_postgres):
    if not uses_postgres:
        pytest.skip("several processes on one database is PostgreSQL's case (SQLite's lock is per process)")
    stub_openai.configure(latency_ms=STUB_LATENCY_MS)
    user = user_create()
    token = Token.objects.create(user=user).key
    server = start_web(**stub_openai.env())  # production_env sets no REDIS_URL: the cache is per process

    responses = _get_concurrently(server, token, REQUESTS)

    assert [r.status for r in responses] == [200] * REQUESTS, [r.body[:300] for r in responses]
    bodies = [r.json() for r in responses]
    assert all(body == bodies[0] for body in bodies)
    assert bodies[0]["source"] == "on_demand"
    assert stub_openai.counters()["requests"] == 1
    assert FortuneResult.objects.filter(user=user, for_date=timezone.localdate()).count() == 1
    assert FortuneGeneration.objects.count() == 1
    assert "Traceback" not in server.log(), server.log()[-4000:]
