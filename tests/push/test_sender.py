"""The sender against the stub FCM server over real HTTP: exactly the due users get one push each, with
their own fortune; reruns send nothing; FCM's answers; the run's counters and the ops figures."""

import datetime as dt
import time
from io import StringIO

import pytest
import time_machine
from django.core.management import call_command
from django.core.management.base import CommandError

from core.models import PushDelivery, PushDevice, PushRun
from core.push.fcm import PUSH_OFF, Outcome
from core.push.selectors import push_day, push_health
from core.push.sender import TITLE, PushOff, PushOptions, push_send_due
from tests.factories import user_create
from tests.push.helpers import fortune_give, messages_by_token, push_user, token_of

pytestmark = pytest.mark.django_db

KST = dt.timezone(dt.timedelta(hours=9))
NOW = dt.datetime(2026, 12, 7, 9, 0, tzinfo=KST)
TODAY = NOW.date()


@pytest.fixture(autouse=True)
def frozen():
    with time_machine.travel(NOW, tick=True):
        yield


def _send(**options) -> PushRun:
    return push_send_due(options=PushOptions(**options)).run


def test_exactly_the_due_users_get_one_push_each_with_their_own_fortune(fcm_settings):
    due = [push_user(for_date=TODAY, notify_at=dt.time(h, m)) for h, m in [(6, 0), (7, 30), (8, 59), (9, 0)]]
    two_devices = push_user(for_date=TODAY, notify_at=dt.time(8, 0), devices=2)
    later = push_user(for_date=TODAY, notify_at=dt.time(9, 1))
    evening = push_user(for_date=TODAY, notify_at=dt.time(21, 0))
    quiet = push_user(for_date=TODAY, notify_enabled=False)
    no_device = push_user(for_date=TODAY, devices=0)
    inactive = push_user(for_date=TODAY)
    PushDevice.objects.filter(user=inactive).update(active=False)
    no_birth_date = push_user(for_date=None, birth_date_solar=None)

    run = _send(page_size=2)  # several keyset pages

    received = messages_by_token(fcm_settings)
    expected = {token_of(u) for u in due} | {token_of(two_devices, 0), token_of(two_devices, 1)}
    assert set(received) == expected and set(received.values()) == {1}
    for message in fcm_settings.messages():
        user_id = int(message["token"].split("-")[1])
        result = PushDelivery.objects.get(user_id=user_id, for_date=TODAY)
        content = result.user.fortunes.get(for_date=TODAY).generation.content
        assert message["notification"] == {"title": TITLE.format(score=content["overall"]["score"]),
                                           "body": content["summary"]}
        assert message["data"] == {"kind": "daily_fortune", "date": TODAY.isoformat(),
                                   "score": str(content["overall"]["score"])}
    assert (run.status, run.due, run.claimed, run.sent, run.failed, run.messages) == ("succeeded", 5, 5, 5, 0, 6)
    sent = set(PushDelivery.objects.filter(state=PushDelivery.State.SENT).values_list("user_id", flat=True))
    assert sent == {u.pk for u in [*due, two_devices]}
    for user in (later, evening, quiet, no_device, inactive, no_birth_date):
        assert not PushDelivery.objects.filter(user=user).exists()


def test_a_rerun_sends_nothing(fcm_settings):
    users = [push_user(for_date=TODAY) for _ in range(3)]
    first = _send()
    second = _send()
    assert first.sent == 3 and (second.due, second.claimed, second.sent) == (0, 0, 0)
    assert sorted(messages_by_token(fcm_settings).values()) == [1, 1, 1]
    assert PushDelivery.objects.filter(user__in=users).count() == 3


def test_a_user_turning_notifications_on_later_in_the_day_is_sent_at_the_next_run(fcm_settings):
    user = push_user(for_date=TODAY, notify_enabled=False)
    assert _send().sent == 0
    user.notify_enabled = True
    user.save(update_fields=["notify_enabled"])
    assert _send().sent == 1


def test_a_missing_fortune_is_skipped_counted_and_sent_once_it_exists(fcm_settings):
    user = push_user(for_date=TODAY, fortune=False)
    ready = push_user(for_date=TODAY)
    run = _send()
    assert (run.due, run.sent, run.no_fortune) == (2, 1, 1)
    assert not PushDelivery.objects.filter(user=user).exists()  # never claimed: an empty promise is never sent
    day = push_day(for_date=TODAY, now=NOW)
    assert (day.sent, day.waiting_for_fortune, day.pending) == (1, 1, 0)
    fortune_give(user=user, for_date=TODAY)  # the catch-up run stored it
    assert _send().sent == 1
    assert set(messages_by_token(fcm_settings)) == {token_of(user), token_of(ready)}


def test_dead_tokens_are_deactivated_and_one_bad_device_never_fails_the_others(fcm_settings):
    gone = push_user(for_date=TODAY)
    invalid = push_user(for_date=TODAY)
    mixed = push_user(for_date=TODAY, devices=2)  # one dead token, one live one: still delivered
    payload_refused = push_user(for_date=TODAY)
    fine = [push_user(for_date=TODAY) for _ in range(3)]
    fcm_settings.configure(token_faults={
        token_of(gone): ["UNREGISTERED"], token_of(invalid): ["INVALID_ARGUMENT"],
        token_of(mixed, 0): ["UNREGISTERED"], token_of(payload_refused): ["INVALID_PAYLOAD"],
    })
    run = _send(concurrency=4)
    assert (run.sent, run.failed, run.devices_deactivated) == (4, 3, 3)
    assert run.failures == {Outcome.UNREGISTERED: 1, Outcome.INVALID_TOKEN: 1, Outcome.INVALID_ARGUMENT: 1}
    dead = dict(PushDevice.objects.filter(active=False).values_list("token", "deactivated_reason"))
    assert dead == {token_of(gone): Outcome.UNREGISTERED, token_of(invalid): Outcome.INVALID_TOKEN,
                    token_of(mixed, 0): Outcome.UNREGISTERED}
    assert PushDevice.objects.get(token=token_of(payload_refused)).active  # the message was refused, not the token
    states = dict(PushDelivery.objects.values_list("user_id", "state"))
    assert all(states[u.pk] == "sent" for u in [*fine, mixed])
    assert PushDelivery.objects.get(user=mixed).devices_sent == 1
    day = push_day(for_date=TODAY, now=NOW)
    assert (day.sent, day.failed, day.devices_deactivated) == (4, 3, 3)


def test_429_and_503_are_retried_honouring_retry_after(fcm_settings):
    busy, down = push_user(for_date=TODAY), push_user(for_date=TODAY)
    fcm_settings.configure(retry_after=0.3, token_faults={token_of(busy): ["429"], token_of(down): ["503", "503"]})
    begun = time.monotonic()
    run = _send(concurrency=2)
    elapsed = time.monotonic() - begun
    assert run.sent == 2 and run.failed == 0
    assert elapsed >= 0.6  # the 503 user waited Retry-After twice, never less
    counters = fcm_settings.counters()
    assert (counters["fault_429"], counters["fault_503"], counters["sent"]) == (1, 2, 2)


def test_quota_over_the_retry_after_cap_fails_the_delivery_without_waiting(fcm_settings, settings):
    settings.FCM_MAX_RETRY_AFTER = 5
    user = push_user(for_date=TODAY)
    fcm_settings.configure(retry_after=3600, token_faults={token_of(user): ["429"]})
    run = _send()
    assert (run.sent, run.failed, run.failures) == (0, 1, {Outcome.QUOTA: 1})
    assert PushDelivery.objects.get(user=user).reason == Outcome.QUOTA
    assert PushDevice.objects.get(user=user).active


def test_an_auth_failure_stops_the_run_gives_back_every_claim_and_exits_non_zero(fcm_settings):
    users = [push_user(for_date=TODAY) for _ in range(4)]
    fcm_settings.configure(auth_fail=True)
    out = StringIO()
    with pytest.raises(CommandError) as error:
        call_command("send_fortune_notifications", stdout=out)
    assert error.value.returncode == 2 and "FCM refused the service account" in str(error.value)
    run = PushRun.objects.get()
    assert run.status == PushRun.Status.FAILED and "invalid_grant" in run.stop_reason
    assert run.released == 4 and not PushDelivery.objects.exists()
    assert fcm_settings.counters().get("sent", 0) == 0
    health = push_health(now=NOW)
    assert not health.ok and any("The last push run failed" in p for p in health.problems)
    fcm_settings.configure(auth_fail=False)  # the key is fixed: the next run sends everyone
    call_command("send_fortune_notifications", stdout=StringIO())
    assert set(messages_by_token(fcm_settings)) == {token_of(u) for u in users}


def test_a_revoked_access_token_is_refreshed_once_then_the_run_stops(fcm_settings):
    push_user(for_date=TODAY)
    fcm_settings.configure(revoke_tokens=True)
    run = _send()
    assert run.status == PushRun.Status.FAILED and "HTTP 401" in run.stop_reason
    assert fcm_settings.counters()["token_requests"] == 2  # the first token, and one refresh
    assert not PushDelivery.objects.exists()


def test_without_credentials_push_is_off_and_says_so(settings):
    settings.FCM_CREDENTIALS = ""
    push_user(for_date=TODAY)
    with pytest.raises(PushOff):
        _send()
    out = StringIO()
    call_command("send_fortune_notifications", stdout=out)
    assert out.getvalue().strip() == PUSH_OFF
    assert not PushRun.objects.exists() and not PushDelivery.objects.exists()


def test_stale_claims_become_unconfirmed_and_are_never_sent_again(fcm_settings):
    claimed = push_user(for_date=TODAY)
    pending = push_user(for_date=TODAY)
    PushDelivery.objects.create(user=claimed, for_date=TODAY, claimed_at=NOW - dt.timedelta(minutes=30))
    run = _send()
    assert (run.unconfirmed, run.sent) == (1, 1)
    assert PushDelivery.objects.get(user=claimed).state == PushDelivery.State.UNCONFIRMED
    assert set(messages_by_token(fcm_settings)) == {token_of(pending)}
    day = push_day(for_date=TODAY, now=NOW)
    assert (day.unconfirmed, day.sent, day.due) == (1, 1, 2)


def test_the_dead_mans_switch_trips_when_users_are_overdue(fcm_settings):
    push_user(for_date=TODAY, notify_at=dt.time(8, 0))
    push_user(for_date=TODAY, notify_at=dt.time(8, 50))  # due 10 minutes ago: not overdue yet
    health = push_health(now=NOW)
    assert not health.ok and health.problems == [
        "1 users due since before 08:30 KST have had no push yet (is the sender, send_fortune_notifications, "
        "running?)."]
    _send()
    assert push_health(now=NOW).ok


def test_the_morning_summary_is_sent_once_a_day(fcm_settings, settings, webhook_receiver):
    settings.SLACK_WEBHOOK_URL = webhook_receiver.url("/slack")
    settings.PUSH_REPORT_AT = "08:00"
    push_user(for_date=TODAY)
    call_command("send_fortune_notifications", stdout=StringIO())
    call_command("send_fortune_notifications", stdout=StringIO())
    posts = webhook_receiver.json("/slack")
    assert len(posts) == 1
    text = posts[0]["text"]
    assert f"Fortuna morning push: ok for {TODAY}" in text and "Sent: 1" in text
    assert PushRun.objects.filter(report_sent=True).count() == 1


def test_user_deleted_or_device_deleted_keeps_everything_else(fcm_settings):
    user = push_user(for_date=TODAY)
    _send()
    PushDevice.objects.filter(user=user).delete()
    assert PushDelivery.objects.filter(user=user).count() == 1
    assert user_create().notify_at == dt.time(8, 0)


def test_an_unreachable_token_endpoint_sends_nothing_and_gives_every_claim_back(fcm_settings, settings):
    import json

    info = json.loads(settings.FCM_CREDENTIALS)
    settings.FCM_CREDENTIALS = json.dumps({**info, "token_uri": "http://127.0.0.1:9/token"})  # nothing listens
    settings.FCM_MAX_ATTEMPTS = 2
    users = [push_user(for_date=TODAY) for _ in range(2)]
    run = _send()
    assert (run.claimed, run.sent, run.failed, run.released) == (2, 0, 0, 2)
    assert not PushDelivery.objects.exists()  # the next run tries them again
    settings.FCM_CREDENTIALS = json.dumps(info)
    assert _send().sent == 2
    assert set(messages_by_token(fcm_settings)) == {token_of(u) for u in users}


def test_the_celery_beat_task_runs_the_sender(fcm_settings, eager):
    from core.tasks import push_send_due_task

    user = push_user(for_date=TODAY)
    push_send_due_task.delay()
    assert PushDelivery.objects.get(user=user).state == PushDelivery.State.SENT
    assert set(messages_by_token(fcm_settings)) == {token_of(user)}


def test_sends_keep_to_the_configured_rate(fcm_settings):
    users = [push_user(for_date=TODAY) for _ in range(30)]
    begun = time.monotonic()
    run = _send(rate_per_second=20, concurrency=8)  # a burst of 8, then one every 50 ms
    elapsed = time.monotonic() - begun
    assert run.sent == len(users)
    assert elapsed >= (30 - 8) / 20 * 0.9
