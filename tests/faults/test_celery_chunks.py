"""Celery loses no chunk (issue 17.5): real worker processes against the test's own redis-server as the
broker (no persistence), PostgreSQL, and the stub over real HTTP.

* the broker restarted after the chunks were sent: the queued messages are gone; the executor
  sends again what no worker claimed within FORTUNE_CELERY_CLAIM_TIMEOUT;
* the broker down when the executor sends, then back: the send is retried, the run lives;
* a worker whose clock is 90 s behind (faketime): heartbeats are on the database's clock, so nothing
  is re-sent or abandoned.
"""

import os
import shutil
import threading
import time
import uuid

import pytest
from django.db import connection

from core.models import CeleryChunk, FortuneResult, NightlyRun
from tests.factories import users_create_many
from tests.faults.reports import assert_reported
from tests.nightly.celery_helpers import celery_run, duplicates
from tests.nightly.helpers import BASE, TARGET, eligible_ids, run_batch
from tests.nightly.test_celery_workers import Workers, _database_url, _use_broker

pytestmark = [pytest.mark.subprocess, pytest.mark.django_db(transaction=True)]

INFLIGHT = 4
CLAIM_TIMEOUT = 2  # seconds; production's default is 60
# The command as the cron runs it (so the night reports); bounded, so that a lost chunk fails the test, not hangs it.
NIGHT = ("--date", BASE.isoformat(), "--backend", "celery", "--max-runtime", "0.75", "--retry-cooldown", "0")


@pytest.fixture
def own_broker_workers(uses_postgres, own_redis, openai_settings, settings, tmp_path):
    if not uses_postgres:
        pytest.skip("real Celery workers write concurrently with the executor: run with DATABASE_URL=postgres://…")
    broker = own_redis.url()
    queue = f"fortuna-fault-{uuid.uuid4().hex[:8]}"
    settings.CELERY_BROKER_URL = broker
    settings.REDIS_URL = ""  # no account limit here: the limiter's Redis is another test's fault
    settings.FORTUNE_CELERY_CLAIM_TIMEOUT = CLAIM_TIMEOUT
    _use_broker(broker, queue)
    env = {**openai_settings.env(), "DATABASE_URL": _database_url(), "DJANGO_SETTINGS_MODULE": "tests.settings",
           "REDIS_URL": "", "PYTHONUNBUFFERED": "1"}
    pool = Workers(tmp_path=tmp_path, broker=broker, queue=queue, env=env)
    yield pool
    pool.stop_all()
    _use_broker("", "fortuna")


@pytest.fixture
def shared_broker(redis_url) -> str:
    """The machine's broker (this test's own database on it): the fault here is the limiter's Redis."""
    return os.environ.get("TEST_CELERY_BROKER_URL") or redis_url.rsplit("/", 1)[0] + "/9"


def _assert_nothing_lost(*, run: NightlyRun, stub, reports) -> None:
    """`reports`: the night's Slack receiver, or None for the engine alone (no night, so no report)."""
    counters = stub.counters()
    assert run.status == NightlyRun.Status.SUCCEEDED, run.stop_reason
    assert set(FortuneResult.objects.filter(for_date=TARGET).values_list("user_id", flat=True)) == eligible_ids()
    assert duplicates(for_date=TARGET) == 0
    assert not CeleryChunk.objects.filter(run=run).exclude(state=CeleryChunk.State.DONE).exists()  # none abandoned
    assert counters["requests"] <= counters["distinct_inputs"] + INFLIGHT
    assert not NightlyRun.objects.filter(status=NightlyRun.Status.RUNNING).exists()
    if reports is not None:
        assert_reported(reports, NightlyRun.objects.order_by("pk"))


def _a_chunk_runs_and_three_wait(*, timeout: float = 30) -> bool:
    """Wait (from a side thread) until one chunk runs and at least three are still queued: the moment
    a broker fault loses messages that matter."""
    deadline = time.monotonic() + timeout
    while not (CeleryChunk.objects.filter(state=CeleryChunk.State.RUNNING).exists()
               and CeleryChunk.objects.filter(state=CeleryChunk.State.QUEUED).count() >= 3):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_the_broker_restarted_after_the_chunks_were_sent_loses_no_chunk(own_broker_workers, own_redis,
                                                                        openai_settings, slack_receiver):
    openai_settings.configure(latency_ms=250)
    users_create_many(count=24, seed=81)
    own_broker_workers.start("w", concurrency=1, inflight=INFLIGHT)
    restarted: list[int] = []

    def restart_once_a_chunk_runs():
        if not _a_chunk_runs_and_three_wait():
            return
        restarted.append(CeleryChunk.objects.filter(state=CeleryChunk.State.QUEUED).count())
        own_redis.restart()  # empty: the queued chunks' messages are gone
        connection.close()  # this thread's own

    restarter = threading.Thread(target=restart_once_a_chunk_runs)
    restarter.start()
    try:
        run_batch(*NIGHT, "--chunk-size", "4")
    finally:
        restarter.join(timeout=30)
    run = NightlyRun.objects.order_by("-pk").first()
    assert restarted and restarted[0] >= 1, "the broker was restarted before any chunk was left queued"
    _assert_nothing_lost(run=run, stub=openai_settings, reports=slack_receiver)
    assert CeleryChunk.objects.filter(run=run, dispatches__gte=2).exists()  # the lost ones were sent again


def test_a_send_that_fails_is_retried_and_the_run_survives(own_broker_workers, own_redis, openai_settings):
    openai_settings.configure(latency_ms=50)
    users_create_many(count=16, seed=82)
    own_broker_workers.start("w", concurrency=2, inflight=INFLIGHT)
    own_redis.kill()  # down when the executor sends

    def back_later():
        time.sleep(1.5)
        own_redis.start()

    healer = threading.Thread(target=back_later)
    healer.start()
    try:
        # The engine itself (the command would refuse to start with the broker down).
        run = celery_run(chunk_size=4, provider_name="openai", runtime=45.0)
    finally:
        healer.join(timeout=30)
    _assert_nothing_lost(run=run, stub=openai_settings, reports=None)
    assert set(CeleryChunk.objects.filter(run=run).values_list("dispatches", flat=True)) >= {1}


@pytest.mark.skipif(shutil.which("faketime") is None, reason="faketime (Debian package) is not installed")
def test_a_worker_whose_clock_is_90_s_behind_loses_no_chunk(own_broker_workers, openai_settings, slack_receiver):
    openai_settings.configure(latency_ms=100)
    users_create_many(count=16, seed=83)
    own_broker_workers.start("late", concurrency=1, inflight=INFLIGHT, prefix=("faketime", "-f", "-90s"))
    run_batch(*NIGHT, "--chunk-size", "4")
    run = NightlyRun.objects.order_by("-pk").first()
    _assert_nothing_lost(run=run, stub=openai_settings, reports=slack_receiver)
    # Nothing re-sent or taken over needlessly: each chunk sent once, claimed once.
    assert set(CeleryChunk.objects.filter(run=run).values_list("dispatches", "attempts")) == {(1, 1)}


def test_the_limiters_redis_killed_mid_run_workers_carry_on_under_the_account_limit(
        uses_postgres, own_redis, shared_broker, openai_settings, settings, slack_receiver, tmp_path):
    """Issue 17.4 on the workers' side: each worker process limits itself to its share; no chunk fails."""
    if not uses_postgres:
        pytest.skip("real Celery workers write concurrently with the executor: run with DATABASE_URL=postgres://…")
    rpm, window = 600, 2  # 20 requests per 2 s window, configured and the stub's account
    openai_settings.configure(latency_ms=80, account_rpm=rpm, account_window_s=window)
    queue = f"fortuna-fault-{uuid.uuid4().hex[:8]}"
    settings.CELERY_BROKER_URL = shared_broker
    settings.REDIS_URL = own_redis.url()
    _use_broker(shared_broker, queue)
    env = {**openai_settings.env(), "DATABASE_URL": _database_url(), "DJANGO_SETTINGS_MODULE": "tests.settings",
           "REDIS_URL": own_redis.url(), "PYTHONUNBUFFERED": "1", "OPENAI_RPM": str(rpm)}
    workers = Workers(tmp_path=tmp_path, broker=shared_broker, queue=queue, env=env)
    users_create_many(count=20, seed=84)
    killed: list[int] = []

    def kill_mid_run():
        deadline = time.monotonic() + 30
        while openai_settings.counters()["requests"] < 8 and time.monotonic() < deadline:
            time.sleep(0.01)
        killed.append(openai_settings.counters()["requests"])
        own_redis.kill()

    try:
        for name in ("one", "two"):
            workers.start(name, concurrency=1, inflight=INFLIGHT)
        killer = threading.Thread(target=kill_mid_run)
        killer.start()
        run_batch(*NIGHT, "--chunk-size", "5")
        killer.join(timeout=30)
    finally:
        workers.stop_all()
        _use_broker("", "fortuna")
    assert killed and killed[0] < 20, "Redis was killed after the run"
    _assert_nothing_lost(run=NightlyRun.objects.get(), stub=openai_settings, reports=slack_receiver)
    account = openai_settings.counters()["account"]
    assert account["rejected_429"] == 0
    assert account["max_requests_in_window"] <= rpm * window / 60


def test_rabbitmq_connections_closed_mid_run_lose_no_chunk(uses_postgres, own_rabbit_vhost, openai_settings, settings,
                                                            slack_receiver, tmp_path):
    """The same night on RabbitMQ, every connection of its vhost closed (coordinator's and workers')
    while chunks are queued and one runs."""
    if not uses_postgres:
        pytest.skip("real Celery workers write concurrently with the executor: run with DATABASE_URL=postgres://…")
    broker = own_rabbit_vhost.url()
    queue = f"fortuna-fault-{uuid.uuid4().hex[:8]}"
    settings.CELERY_BROKER_URL = broker
    settings.REDIS_URL = ""
    settings.FORTUNE_CELERY_CLAIM_TIMEOUT = CLAIM_TIMEOUT
    _use_broker(broker, queue)
    openai_settings.configure(latency_ms=250)
    users_create_many(count=24, seed=85)
    env = {**openai_settings.env(), "DATABASE_URL": _database_url(), "DJANGO_SETTINGS_MODULE": "tests.settings",
           "REDIS_URL": "", "PYTHONUNBUFFERED": "1"}
    workers = Workers(tmp_path=tmp_path, broker=broker, queue=queue, env=env)
    closed: list[int] = []

    def close_once_a_chunk_runs():
        if not _a_chunk_runs_and_three_wait():
            return
        closed.append(1)
        own_rabbit_vhost.close_connections()
        connection.close()

    try:
        workers.start("rabbit", concurrency=1, inflight=INFLIGHT)
        closer = threading.Thread(target=close_once_a_chunk_runs)
        closer.start()
        run_batch(*NIGHT, "--chunk-size", "4")
        closer.join(timeout=30)
    finally:
        workers.stop_all()
        _use_broker("", "fortuna")
    assert closed, "the connections were never closed mid-run"
    _assert_nothing_lost(run=NightlyRun.objects.get(), stub=openai_settings, reports=slack_receiver)
