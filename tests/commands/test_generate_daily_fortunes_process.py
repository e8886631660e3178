"""generate_daily_fortunes as a real process against a committed database the process can see:
SIGKILL then rerun, SIGTERM, and a concurrent second run."""

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection

from core.fortunes.inputs import GenerationInput
from core.fortunes.prompt import build_messages
from core.management.commands.generate_daily_fortunes import EXIT_INCOMPLETE, EXIT_LOCKED, EXIT_USAGE, WORKERS_INVALID
from core.models import FortuneGeneration, FortuneResult, NightlyRun, User
from core.nightly.lock import BATCH_LOCKED
from tests.factories import users_create_many
from tests.nightly.helpers import BASE, TARGET, eligible_ids, fortune_map, table_counts
from tests.stub_openai.server import messages_sha256
from tests.waiting import WAIT, wait_for

pytestmark = [pytest.mark.subprocess, pytest.mark.django_db(transaction=True)]
ROOT = Path(__file__).resolve().parents[2]


def _database_url() -> str:
    conf = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{conf['NAME']}"
    password = f":{conf['PASSWORD']}" if conf.get("PASSWORD") else ""
    return f"postgres://{conf['USER']}{password}@{conf['HOST'] or '127.0.0.1'}:{conf['PORT'] or 5432}/{conf['NAME']}"


def _start(stub, *args: str, extra_env: dict[str, str] | None = None) -> subprocess.Popen:
    env = {**os.environ, **stub.env(), "DATABASE_URL": _database_url(), "DJANGO_SETTINGS_MODULE": "tests.settings",
           "PYTHONUNBUFFERED": "1", **(extra_env or {})}
    argv = [sys.executable, "manage.py", "generate_daily_fortunes", "--date", BASE.isoformat(), *args]
    return subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _stored() -> int:
    return FortuneResult.objects.filter(for_date=TARGET).count()


def _sha_by_user() -> dict[int, str]:
    generator = f"openai:{settings.OPENAI_MODEL}"
    return {
        user.pk: messages_sha256(build_messages(GenerationInput.for_user(user=user, for_date=TARGET,
                                                                        generator=generator)))
        for user in User.objects.all()
    }


@pytest.fixture
def slow_stub(stub_openai):
    stub_openai.configure(latency_ms=40)
    users_create_many(count=60, seed=21)
    return stub_openai


def test_sigkill_mid_run_then_rerun_completes_without_repeating_a_request(slow_stub):
    first = _start(slow_stub, "--workers", "2")
    wait_for(lambda: _stored() >= 6, what="the first flush")
    first.send_signal(signal.SIGKILL)
    first.communicate(timeout=WAIT)
    stored_before = set(fortune_map())
    assert 6 <= len(stored_before) < 60
    assert NightlyRun.objects.get().status == "running"  # killed: nobody finished the row

    # Requests the killed process left in flight still finish at the stub: let them land first.
    wait_for(lambda: slow_stub.counters()["in_flight"] == 0, what="the stub to go idle")
    slow_stub.reset(config=False)
    second = _start(slow_stub, "--workers", "4", "--retry-cooldown", "0")
    out, err = second.communicate(timeout=WAIT)
    assert second.returncode == 0, err
    assert set(fortune_map()) == eligible_ids()
    assert FortuneResult.objects.count() == 60  # no duplicates
    sha = _sha_by_user()
    requested = Counter(r["sha256"] for r in slow_stub.requests())
    assert not {sha[uid] for uid in stored_before} & set(requested)
    assert set(requested.values()) == {1}
    runs = list(NightlyRun.objects.order_by("pk"))
    assert [r.status for r in runs] == ["interrupted", "succeeded"]
    assert out.strip().splitlines()[-1].startswith(f"nightly run {TARGET}: succeeded")


def test_sigterm_marks_interrupted_and_keeps_every_completed_generation(slow_stub):
    proc = _start(slow_stub, "--workers", "2")
    wait_for(lambda: _stored() >= 4, what="the first flush")
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=WAIT)
    assert proc.returncode == EXIT_INCOMPLETE, err
    run = NightlyRun.objects.get()
    assert run.status == "interrupted" and run.stop_reason == "interrupted by SIGTERM"
    assert run.finished_at is not None
    # Every generation the stub answered before the stop was stored (none was lost in memory):
    answered = {r["sha256"] for r in slow_stub.requests() if r["status"] == 200}
    sha = _sha_by_user()
    stored_shas = {sha[uid] for uid in fortune_map()}
    assert answered <= stored_shas
    assert run.generated == FortuneResult.objects.count() < 60
    assert run.generations == FortuneGeneration.objects.count()
    assert "interrupted" in out


def test_sigterm_still_sends_the_report_with_the_status_and_the_reason(slow_stub, webhook_receiver):
    proc = _start(slow_stub, "--workers", "2", extra_env={"SLACK_WEBHOOK_URL": webhook_receiver.url("/slack")})
    wait_for(lambda: _stored() >= 4, what="the first flush")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=WAIT)
    assert proc.returncode == EXIT_INCOMPLETE, err
    (report,) = webhook_receiver.json("/slack")
    assert f"interrupted for {TARGET}" in report["text"] and "Stopped: interrupted by SIGTERM" in report["text"]
    assert not NightlyRun.objects.filter(status=NightlyRun.Status.RUNNING).exists()


def test_a_concurrent_second_run_is_refused_at_once_and_writes_nothing(slow_stub):
    # Slow enough that the first run (60 calls, one at a time: 18 s) outlives the second's start-up on
    # a loaded machine; it is stopped below.
    slow_stub.configure(latency_ms=300)
    first = _start(slow_stub, "--workers", "1")
    wait_for(lambda: NightlyRun.objects.exists(), what="the first run to start")
    before = table_counts()
    started = time.monotonic()
    second = _start(slow_stub, "--workers", "1")
    out, err = second.communicate(timeout=WAIT)
    elapsed = time.monotonic() - started
    assert second.returncode == EXIT_LOCKED
    assert BATCH_LOCKED.format(target_date=TARGET.isoformat()) in err
    assert table_counts()["core.NightlyRun"] == before["core.NightlyRun"] == 1
    assert elapsed < WAIT  # it did not wait for the first run (which takes far longer than this)
    assert first.poll() is None
    first.send_signal(signal.SIGTERM)
    first.communicate(timeout=WAIT)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--workers", "0"], WORKERS_INVALID.format(value=0)),
        (["--workers", "many"], WORKERS_INVALID.format(value="many")),
        (["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
    ],
)
def test_a_bad_flag_on_the_command_line_exits_with_the_usage_code_and_its_message(stub_openai, args, message):
    before = table_counts()
    proc = _start(stub_openai, *args)
    out, err = proc.communicate(timeout=WAIT)
    assert proc.returncode == EXIT_USAGE  # not argparse's own 2, which here means an incomplete run
    assert err.strip().splitlines()[-1] == f"CommandError: {message}"
    assert table_counts() == before


def test_the_celery_backend_with_its_broker_down_exits_with_the_usage_code_writing_nothing(stub_openai):
    import socket

    from core.nightly.executors.celery import BROKER_UNAVAILABLE

    users_create_many(count=3, seed=9)
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        url = f"redis://127.0.0.1:{probe.getsockname()[1]}/0"
    before = table_counts()
    env = {**os.environ, **stub_openai.env(), "DATABASE_URL": _database_url(),
           "DJANGO_SETTINGS_MODULE": "tests.settings", "CELERY_BROKER_URL": url}
    proc = subprocess.run([sys.executable, "manage.py", "generate_daily_fortunes", "--date", BASE.isoformat(),
                           "--backend", "celery"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=WAIT)
    assert proc.returncode == EXIT_USAGE != 0
    assert proc.stderr.strip().splitlines()[-1].startswith(
        "CommandError: " + BROKER_UNAVAILABLE.split("{error}")[0].format(url=url))
    assert table_counts() == before
