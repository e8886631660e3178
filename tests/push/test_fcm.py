"""The FCM configuration (credentials from env, checked, never shown) and the Celery fan-out."""

import datetime as dt
import json
from io import StringIO

import pytest
import time_machine
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command
from django.core.management.base import CommandError

from core.models import PushDelivery, PushRun
from core.push import fcm
from core.push.sender import PushOptions, push_page_send_for_run, push_send_due
from tests.push.helpers import messages_by_token, push_user, token_of

KST = dt.timezone(dt.timedelta(hours=9))
NOW = dt.datetime(2026, 12, 7, 9, 0, tzinfo=KST)


def test_credentials_as_json_text_or_a_file_path(fcm_settings, settings, tmp_path):
    from_text = fcm.fcm_config_load()
    path = tmp_path / "sa.json"
    path.write_text(settings.FCM_CREDENTIALS)
    settings.FCM_CREDENTIALS = str(path)
    settings.FCM_PROJECT_ID = "other-project"
    from_file = fcm.fcm_config_load()
    assert from_text.project_id == "fortuna-test" and from_file.project_id == "other-project"
    assert from_file.credentials_info == from_text.credentials_info
    assert "PRIVATE KEY" not in repr(from_file) and "PRIVATE KEY" not in str(from_file)


@pytest.mark.parametrize(("value", "message"), [
    ("/nonexistent/sa.json", fcm.CREDENTIALS_FILE_MISSING.format(error="No such file or directory")),
    ("{not json", fcm.CREDENTIALS_NOT_JSON),
    ('{"type": "authorized_user", "client_email": "a@b", "private_key": "k", "token_uri": "http://x"}',
     fcm.CREDENTIALS_NOT_SERVICE_ACCOUNT.format(fields="type")),
    ('{"type": "service_account", "private_key": "k"}',
     fcm.CREDENTIALS_NOT_SERVICE_ACCOUNT.format(fields="client_email, token_uri")),
])
def test_bad_credentials_fail_with_a_clear_error_that_never_repeats_the_secret(settings, value, message):
    settings.FCM_CREDENTIALS = value
    with pytest.raises(ImproperlyConfigured) as error:
        fcm.fcm_config_load()
    assert str(error.value) == message


def test_an_unreadable_key_and_a_missing_project_id(fcm_settings, settings):
    info = json.loads(settings.FCM_CREDENTIALS)
    settings.FCM_CREDENTIALS = json.dumps({**info, "private_key": "-----BEGIN PRIVATE KEY-----\nsecret\n"})
    with pytest.raises(ImproperlyConfigured) as error:
        fcm.fcm_config_load()
    assert str(error.value) == fcm.CREDENTIALS_KEY_INVALID and "secret" not in str(error.value)
    settings.FCM_CREDENTIALS = json.dumps({k: v for k, v in info.items() if k != "project_id"})
    with pytest.raises(ImproperlyConfigured, match="Set FCM_PROJECT_ID"):
        fcm.fcm_config_load()


@pytest.mark.django_db
def test_the_command_refuses_bad_configuration_and_bad_flags(settings):
    settings.FCM_CREDENTIALS = "{not json"
    with pytest.raises(CommandError) as error:
        call_command("send_fortune_notifications", stdout=StringIO())
    assert error.value.returncode == 1 and fcm.CREDENTIALS_NOT_JSON in str(error.value)
    with pytest.raises(CommandError, match="--page-size must be between 1 and 10000, got 0"):
        call_command("send_fortune_notifications", "--page-size", "0", stdout=StringIO())


@pytest.mark.django_db
def test_celery_backend_fans_pages_out_to_workers(fcm_settings, settings, eager):
    settings.CELERY_BROKER_URL = "redis://127.0.0.1:6379/4"  # eager: never contacted
    with time_machine.travel(NOW, tick=True):
        users = [push_user(for_date=NOW.date()) for _ in range(7)]
        call_command("send_fortune_notifications", "--backend", "celery", "--page-size", "3", stdout=StringIO())
        run = PushRun.objects.get()
        assert (run.backend, run.pages, run.pages_done, run.sent, run.status) == ("celery", 3, 3, 7, "succeeded")
        assert set(messages_by_token(fcm_settings).values()) == {1}
        assert set(messages_by_token(fcm_settings)) == {token_of(u) for u in users}


@pytest.mark.django_db
def test_a_page_delivered_twice_claims_and_sends_nothing_the_second_time(fcm_settings):
    with time_machine.travel(NOW, tick=True):
        users = [push_user(for_date=NOW.date()) for _ in range(3)]
        run = push_send_due(options=PushOptions(), dispatch=lambda run, ids: None).run  # pages sent nowhere
        PushRun.objects.filter(pk=run.pk).update(status=PushRun.Status.RUNNING)
        ids = [u.pk for u in users]
        push_page_send_for_run(run_id=run.pk, user_ids=ids)
        push_page_send_for_run(run_id=run.pk, user_ids=ids)  # acks_late: the same message again
    assert sorted(messages_by_token(fcm_settings).values()) == [1, 1, 1]
    assert PushDelivery.objects.filter(state="sent").count() == 3
    run.refresh_from_db()
    assert (run.claimed, run.sent) == (3, 3)
