"""send_fortune_notifications as real processes against a committed database: SIGKILLed mid-page then
rerun, and two senders at once. At most one push per user per day whatever happens."""

import json
import os
import signal
import subprocess
import sys
import time
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import call_command
from django.db import connection
from django.utils import timezone

from core.models import PushDelivery, PushRun
from core.push.selectors import push_day
from tests.push.helpers import messages_by_token, push_user, token_of
from tests.waiting import WAIT, wait_for

pytestmark = [pytest.mark.subprocess, pytest.mark.django_db(transaction=True)]
ROOT = Path(__file__).resolve().parents[2]
USERS = 40


def _database_url() -> str:
    conf = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{conf['NAME']}"
    password = f":{conf['PASSWORD']}" if conf.get("PASSWORD") else ""
    return f"postgres://{conf['USER']}{password}@{conf['HOST'] or '127.0.0.1'}:{conf['PORT'] or 5432}/{conf['NAME']}"


def _start(stub, *args: str) -> subprocess.Popen:
    env = {**os.environ, "DATABASE_URL": _database_url(), "DJANGO_SETTINGS_MODULE": "tests.settings",
           "PYTHONUNBUFFERED": "1", "FCM_CREDENTIALS": json.dumps(stub.account), "FCM_API_URL": stub.base_url,
           "FCM_RATE_PER_SECOND": "0", "SLACK_WEBHOOK_URL": "", "DISCORD_WEBHOOK_URL": ""}
    return subprocess.Popen([sys.executable, "manage.py", "send_fortune_notifications", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture
def due_users(fcm_settings):
    today = timezone.localdate()
    # notify_at 00:00: due whenever the test runs (the in-process tests cover who is not due).
    return [push_user(for_date=today, notify_at=timezone.datetime.min.time()) for _ in range(USERS)]


def test_sigkill_mid_page_then_rerun_sends_no_one_twice_and_counts_the_missed(fcm_settings, due_users, settings):
    fcm_settings.configure(latency_ms=60)
    first = _start(fcm_settings, "--page-size", "8", "--concurrency", "2")
    wait_for(lambda: fcm_settings.counters().get("sent", 0) >= 11, what="the second page under way")
    first.send_signal(signal.SIGKILL)
    first.communicate(timeout=WAIT)
    time.sleep(0.3)  # requests the stub was answering when the sender died (latency 60 ms) land first
    before = dict(PushDelivery.objects.values_list("user_id", "state"))
    in_flight = {u for u, state in before.items() if state == PushDelivery.State.CLAIMED}
    assert in_flight, "the kill landed between pages: no claim was in flight"
    received_before = messages_by_token(fcm_settings)

    fcm_settings.configure(latency_ms=0)
    settings.PUSH_CLAIM_STALE_MINUTES = 0  # the dead sender's claims are stale at once (production: 10 min)
    call_command("send_fortune_notifications", stdout=StringIO())

    received = messages_by_token(fcm_settings)
    assert max(received.values()) == 1  # nobody twice
    rerun = PushRun.objects.filter(status=PushRun.Status.SUCCEEDED).get()
    assert rerun.unconfirmed == len(in_flight)
    states = dict(PushDelivery.objects.values_list("user_id", "state"))
    assert {u for u, s in states.items() if s == PushDelivery.State.UNCONFIRMED} == in_flight
    never_claimed = {u.pk for u in due_users} - set(before)
    assert {u for u, s in states.items() if s == PushDelivery.State.SENT} == (
        {u for u, s in before.items() if s == PushDelivery.State.SENT} | never_claimed)
    assert rerun.sent == len(never_claimed)
    # What the dead sender's claims cost: some reached FCM before the kill (delivered, unrecorded), the
    # rest are the day's missed pushes; the rerun sent none of them.
    rerun_tokens = {m["token"] for m in fcm_settings.messages()[sum(received_before.values()):]}
    assert not rerun_tokens & {token_of_id(u) for u in in_flight | set(before)}
    day = push_day(for_date=timezone.localdate())
    assert (day.unconfirmed, day.sent, day.due) == (len(in_flight), USERS - len(in_flight), USERS)
    assert PushRun.objects.get(pk=PushRun.objects.order_by("pk").first().pk).status == PushRun.Status.INTERRUPTED


def token_of_id(user_id: int) -> str:
    from core.models import User

    return token_of(User(pk=user_id))


def test_two_senders_at_once_still_send_one_push_each(fcm_settings, due_users):
    # Slow until both senders are under way (a loaded machine may start one seconds after the other),
    # then fast: they overlap for certain.
    fcm_settings.configure(latency_ms=500)
    senders = [_start(fcm_settings, "--page-size", "5", "--concurrency", "3") for _ in range(2)]
    wait_for(lambda: PushRun.objects.count() == 2, what="both senders to start")
    fcm_settings.configure(latency_ms=10)
    for sender in senders:
        out, err = sender.communicate(timeout=WAIT * 2)
        assert sender.returncode == 0, err[-3000:]
    received = messages_by_token(fcm_settings)
    assert set(received) == {token_of(u) for u in due_users} and set(received.values()) == {1}
    runs = list(PushRun.objects.all())
    assert len(runs) == 2 and sum(r.sent for r in runs) == USERS
    assert all(r.sent > 0 for r in runs), [r.sent for r in runs]  # both really sent: they overlapped
    assert PushDelivery.objects.filter(state=PushDelivery.State.SENT).count() == USERS
