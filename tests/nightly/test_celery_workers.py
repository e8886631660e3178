"""The celery backend with real worker processes (`celery -A fortuna_api worker`) started by the test,
against a committed PostgreSQL test database, the stub over real HTTP, Redis (broker and limiter)
and RabbitMQ (broker)."""

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from decimal import Decimal
from pathlib import Path

import pytest
from django.core.management.base import CommandError
from django.db import connection
from kombu import pools

from core.fortunes.inputs import GenerationInput
from core.limiter import REDIS_KEY, RedisRateLimiter, estimated_tokens
from core.management.commands.generate_daily_fortunes import EXIT_USAGE
from core.models import CeleryChunk, FortuneGeneration, FortuneResult, NightlyRun, User
from core.nightly.executors.celery.broker import BROKER_UNAVAILABLE, celery_backend_check
from core.nightly.lifecycle import HEARTBEAT_SECONDS
from core.nightly.options import CeleryBackendUnavailable
from core.services.fortunes import fortune_get_or_generate_today, fortune_today
from fortuna_api.celery import app
from tests.factories import users_create_many
from tests.nightly.celery_helpers import celery_run, duplicates, stored_triples, users_with_shared_inputs
from tests.nightly.helpers import TARGET, eligible_ids, run_batch, table_counts

pytestmark = [pytest.mark.subprocess, pytest.mark.django_db(transaction=True)]
ROOT = Path(__file__).resolve().parents[2]
READY_TIMEOUT = 60.0
RABBITMQ_URL = os.environ.get("TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672//")


def _database_url() -> str:
    conf = connection.settings_dict
    password = f":{conf['PASSWORD']}" if conf.get("PASSWORD") else ""
    return f"postgres://{conf['USER']}{password}@{conf['HOST'] or '127.0.0.1'}:{conf['PORT'] or 5432}/{conf['NAME']}"


def _use_broker(url: str, queue: str) -> None:
    """Point this process's Celery app (the engine's side) at url and queue."""
    pools.reset()  # closes and forgets every connection pool kombu keeps per broker URL
    app._pool = None
    app.amqp._producer_pool = None
    app.conf.broker_url = url
    app.conf.task_default_queue = queue


@pytest.fixture
def postgres(uses_postgres):
    if not uses_postgres:
        pytest.skip("real Celery workers write concurrently with the executor: run with DATABASE_URL=postgres://…")


@pytest.fixture
def redis_broker(redis_url) -> str:
    return os.environ.get("TEST_CELERY_BROKER_URL") or redis_url.rsplit("/", 1)[0] + "/9"


class Workers:
    def __init__(self, *, tmp_path: Path, broker: str, queue: str, env: dict[str, str]) -> None:
        self.tmp_path = tmp_path
        self.broker = broker
        self.queue = queue
        self.env = env
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, name: str, *, pool: str = "threads", concurrency: int = 1, inflight: int = 4,
              prefix: tuple[str, ...] = (), **env: str) -> subprocess.Popen:
        """`prefix`: a command the worker runs under (e.g. faketime)."""
        node = f"{name}-{uuid.uuid4().hex[:6]}@{socket.gethostname()}"
        argv = [*prefix, sys.executable, "-m", "celery", "-A", "fortuna_api", "worker", "-P", pool,
                "-c", str(concurrency), "--without-heartbeat", "--without-gossip", "--without-mingle", "-n", node,
                "--loglevel", "INFO"]
        full_env = {**os.environ, **self.env, "CELERY_BROKER_URL": self.broker, "FORTUNE_CELERY_QUEUE": self.queue,
                    "FORTUNE_CELERY_INFLIGHT": str(inflight), **env}
        log = open(self.tmp_path / f"{name}.log", "w")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(argv, cwd=ROOT, env=full_env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        proc.log = log
        self.procs[name] = proc
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"worker {name} exited: {self.log(name)}")
            if app.control.ping(destination=[node], timeout=0.5):
                return proc
        pytest.fail(f"worker {name} did not answer a ping: {self.log(name)}")

    def log(self, name: str) -> str:
        return (self.tmp_path / f"{name}.log").read_text()[-3000:]

    def kill(self, name: str) -> None:
        self.procs[name].send_signal(signal.SIGKILL)
        self.procs[name].wait(timeout=30)

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            proc.log.close()


@pytest.fixture
def workers(postgres, redis_broker, redis_url, openai_settings, settings, tmp_path):
    queue = f"fortuna-test-{uuid.uuid4().hex[:8]}"
    settings.CELERY_BROKER_URL = redis_broker
    settings.REDIS_URL = redis_url
    _use_broker(redis_broker, queue)
    limiter = RedisRateLimiter(None, url=redis_url, key=REDIS_KEY)
    limiter.clear()
    env = {**openai_settings.env(), "DATABASE_URL": _database_url(), "DJANGO_SETTINGS_MODULE": "tests.settings",
           "REDIS_URL": redis_url, "PYTHONUNBUFFERED": "1"}
    pool = Workers(tmp_path=tmp_path, broker=redis_broker, queue=queue, env=env)
    yield pool
    pool.stop_all()
    limiter.clear()
    limiter.close()
    _use_broker("", "fortuna")


def test_the_command_on_workers_stores_the_same_fortunes_as_the_threads_backend(workers, openai_settings):
    users_with_shared_inputs(distinct=24, twins=8)
    run_batch("--date", "2030-03-10", "--workers", "4")
    threads = stored_triples(for_date=TARGET)
    FortuneResult.objects.all().delete()
    FortuneGeneration.objects.all().delete()
    openai_settings.reset()
    workers.start("a", concurrency=2)
    workers.start("b", pool="prefork", concurrency=2)
    # Through the command, as the cron runs it: the same lock, plan and NightlyRun as --backend threads.
    run_batch("--date", "2030-03-10", "--backend", "celery", "--chunk-size", "5", "--retry-cooldown", "0")
    run = NightlyRun.objects.order_by("-pk").first()
    assert stored_triples(for_date=TARGET) == threads
    assert {user for user, _, _ in threads} == eligible_ids()
    assert run.status == NightlyRun.Status.SUCCEEDED, run.stop_reason
    assert (run.generated, run.generations, run.llm_requests) == (32, 24, 24)
    assert openai_settings.counters()["distinct_inputs"] == 24
    assert len({w.rsplit(":", 1)[0] for w in CeleryChunk.objects.values_list("worker", flat=True)}) >= 2  # processes


def test_a_worker_killed_mid_chunk_is_replaced_and_the_night_completes(workers, openai_settings):
    openai_settings.configure(latency_ms=400)
    users_create_many(count=30, seed=41)
    workers.start("doomed", concurrency=1, inflight=4)
    in_flight_at_kill: list[int] = []

    def kill_then_replace():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # mid-chunk: some stored, some calls in flight
            in_flight = openai_settings.counters()["in_flight"]
            if FortuneResult.objects.count() >= 4 and in_flight:
                break
            time.sleep(0.02)
        in_flight_at_kill.append(in_flight)
        workers.kill("doomed")
        workers.start("rescuer", concurrency=1, inflight=4)
        connection.close()  # this thread's own

    killer = threading.Thread(target=kill_then_replace)
    killer.start()
    try:
        run = celery_run(chunk_size=6, provider_name="openai", stale_seconds=3)
    finally:
        killer.join(timeout=120)
    assert run.status == NightlyRun.Status.SUCCEEDED, run.stop_reason
    assert set(FortuneResult.objects.values_list("user_id", flat=True)) == eligible_ids()
    assert duplicates(for_date=TARGET) == 0
    assert FortuneGeneration.objects.count() == 30
    requests = openai_settings.counters()["requests"]
    assert 30 <= requests <= 30 + 4 and in_flight_at_kill[0] <= 4
    assert CeleryChunk.objects.filter(attempts__gte=2).exists()  # the dead worker's chunk was taken over
    assert CeleryChunk.objects.filter(state=CeleryChunk.State.DONE).count() == 5


def test_two_workers_share_the_account_limit_and_on_demand_keeps_its_share(workers, openai_settings, settings):
    # The stub's account: 600 RPM over a 2 s window (20 requests per window); configured the same.
    openai_settings.configure(latency_ms=100, latency_jitter_ms=50, account_rpm=600, account_tpm=600_000,
                              account_window_s=2)
    users_create_many(count=40, seed=43)
    for name in ("one", "two"):
        workers.start(name, concurrency=2, inflight=8, OPENAI_RPM="600", OPENAI_TPM="600000")
    # The web's side, in this process: the same account limits, its reserved share, a 2 s budget.
    settings.OPENAI_RPM, settings.OPENAI_TPM, settings.OPENAI_ON_DEMAND_RESERVE = 600, 600_000, Decimal("0.1")
    settings.FORTUNE_ON_DEMAND_TIMEOUT = 2
    user = User.objects.order_by("pk").first()
    on_demand: list[tuple[float, str]] = []

    def on_demand_during_the_batch():
        while not CeleryChunk.objects.filter(state=CeleryChunk.State.RUNNING).exists():
            time.sleep(0.05)
        started = time.monotonic()
        stored = fortune_get_or_generate_today(user=user)  # the real service: single-flight, limiter, store
        on_demand.append((time.monotonic() - started, stored.source))
        connection.close()  # this thread's own

    web = threading.Thread(target=on_demand_during_the_batch)
    web.start()
    run = celery_run(chunk_size=10, provider_name="openai")
    web.join(timeout=60)
    account = openai_settings.counters()["account"]
    assert run.status == NightlyRun.Status.SUCCEEDED, run.stop_reason
    assert account["rejected_429"] == 0
    assert account["max_requests_in_window"] <= 20
    # The slack is one request's tokens: the limiter admits a request once the account's token
    # schedule has reached now, and the stub counts that request's completion when it is answered.
    one_request = estimated_tokens(GenerationInput(for_date=TARGET, year="甲子", month="丙寅", day="戊午", hour=None,
                                                   gender="F", generator="openai:gpt-4o-mini"))
    assert account["max_tokens_in_window"] <= 600_000 * 2 / 60 + one_request
    # A user's request got through the saturated batch within its budget.
    assert on_demand and on_demand[0][0] < 2.0 and on_demand[0][1] == FortuneResult.Source.ON_DEMAND
    assert FortuneResult.objects.filter(user=user, for_date=fortune_today()).exists()


def test_an_account_limit_below_the_configured_one_is_learned_from_the_429s(workers, openai_settings):
    # Configured 1,200 RPM; the account really allows 300 (10 requests per 2 s window).
    openai_settings.configure(latency_ms=50, account_rpm=300, account_window_s=2)
    users_create_many(count=30, seed=44)
    for name in ("one", "two"):
        workers.start(name, concurrency=2, inflight=8, OPENAI_RPM="1200")
    run = celery_run(chunk_size=8, provider_name="openai")
    counters = openai_settings.counters()
    assert run.status == NightlyRun.Status.SUCCEEDED, run.stop_reason
    assert run.generations == 30
    rejected = counters["account"]["rejected_429"]
    assert 1 <= rejected <= max(5, 0.15 * counters["requests"])


def test_rabbitmq_as_the_broker(postgres, settings, tmp_path):
    try:
        socket.create_connection(("127.0.0.1", 5672), timeout=1).close()
    except OSError:
        pytest.skip("RabbitMQ is not listening on 127.0.0.1:5672")
    queue = f"fortuna-test-{uuid.uuid4().hex[:8]}"
    settings.CELERY_BROKER_URL = RABBITMQ_URL
    _use_broker(RABBITMQ_URL, queue)
    users_with_shared_inputs(distinct=10, twins=3)
    pool = Workers(tmp_path=tmp_path, broker=RABBITMQ_URL, queue=queue, env={
        "DATABASE_URL": _database_url(), "DJANGO_SETTINGS_MODULE": "tests.settings", "FORTUNE_PROVIDER": "local",
        "REDIS_URL": ""})
    try:
        celery_backend_check()
        pool.start("rabbit", concurrency=2)
        run = celery_run(chunk_size=3, provider_name="local")
    finally:
        pool.stop_all()
        _use_broker("", "fortuna")
    assert run.status == NightlyRun.Status.SUCCEEDED, run.stop_reason
    assert set(FortuneResult.objects.values_list("user_id", flat=True)) == eligible_ids()
    assert run.generations == 10 and run.generated == 13


def _broker_down(settings) -> str:
    """Point the app at a Redis URL on a port nothing listens on; returns the URL."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"redis://127.0.0.1:{port}/0"
    settings.CELERY_BROKER_URL = url
    _use_broker(url, "fortuna")
    return url


def test_a_broker_that_is_down_is_a_clear_error_and_nothing_is_written(settings):
    url = _broker_down(settings)
    before = table_counts()
    try:
        with pytest.raises(CeleryBackendUnavailable) as error:
            celery_backend_check(timeout=1)
    finally:
        _use_broker("", "fortuna")
    assert str(error.value).startswith(BROKER_UNAVAILABLE.split("{error}")[0].format(url=url))
    assert table_counts() == before


def test_the_command_with_its_broker_down_exits_non_zero_and_writes_nothing(settings):
    users_with_shared_inputs(distinct=3, twins=1)
    url = _broker_down(settings)
    before = table_counts()
    try:
        with pytest.raises(CommandError) as error:
            run_batch("--date", "2030-03-10", "--backend", "celery")
    finally:
        _use_broker("", "fortuna")
    assert error.value.returncode == EXIT_USAGE != 0
    assert str(error.value).startswith(BROKER_UNAVAILABLE.split("{error}")[0].format(url=url))
    assert table_counts() == before and not NightlyRun.objects.exists()


def test_a_stopped_run_cancels_its_chunks_and_keeps_what_was_stored(workers, openai_settings):
    from core.nightly.guards import STOP_SIGNAL, StopToken

    openai_settings.configure(latency_ms=300)
    users_create_many(count=40, seed=45)
    workers.start("w", concurrency=1, inflight=4)
    stop = StopToken()

    def interrupt():
        deadline = time.monotonic() + 60
        while FortuneResult.objects.count() < 4 and time.monotonic() < deadline:
            time.sleep(0.02)
        stop.request(STOP_SIGNAL.format(signal="SIGTERM"), interrupted=True)
        connection.close()

    signaller = threading.Thread(target=interrupt)
    signaller.start()
    run = celery_run(chunk_size=8, provider_name="openai", stop=stop)
    signaller.join(timeout=60)
    assert run.status == NightlyRun.Status.INTERRUPTED and run.stop_reason == "interrupted by SIGTERM"
    assert 4 <= run.generated < 40
    assert CeleryChunk.objects.filter(state=CeleryChunk.State.CANCELLED).exists()
    # The worker sees the cancel at its next heartbeat and stops asking; what is in flight finishes.
    time.sleep(HEARTBEAT_SECONDS + 0.5)
    asked = openai_settings.counters()["requests"]
    time.sleep(1.5)
    assert openai_settings.counters()["requests"] == asked < 40


def test_the_deadline_stops_the_run_as_partial(workers, openai_settings):
    from core.nightly.guards import STOP_DEADLINE

    openai_settings.configure(latency_ms=500)
    users_create_many(count=40, seed=46)
    workers.start("w", concurrency=1, inflight=2)
    run = celery_run(chunk_size=10, provider_name="openai", runtime=3.0)
    assert run.stop_reason == STOP_DEADLINE.format(minutes=3.0 / 60)
    assert run.status in (NightlyRun.Status.PARTIAL, NightlyRun.Status.FAILED)
    assert run.generated < 40
