"""The push on /ops/ and in status.json: the figures match the database, and the switch shows."""

import datetime as dt

import pytest
import time_machine
from django.db.models import Count
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from core.models import PushDelivery, PushDevice
from core.push.sender import PushOptions, push_send_due
from tests.factories import user_create
from tests.push.helpers import push_user, token_of

pytestmark = pytest.mark.django_db

KST = dt.timezone(dt.timedelta(hours=9))
NOW = dt.datetime(2026, 12, 7, 9, 0, tzinfo=KST)
TODAY = NOW.date()


@pytest.fixture
def staff_client():
    staff = user_create(is_staff=True, birth_date_solar=None)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=staff).key}")
    client.force_login(staff)
    return client


def test_status_json_and_the_now_page_count_what_the_database_holds(fcm_settings, staff_client):
    with time_machine.travel(NOW, tick=True):
        users = [push_user(for_date=TODAY) for _ in range(5)]
        waiting = push_user(for_date=TODAY, fortune=False)
        fcm_settings.configure(token_faults={token_of(users[0]): ["UNREGISTERED"],
                                             token_of(users[1]): ["INVALID_PAYLOAD"]})
        push_send_due(options=PushOptions())
        late = push_user(for_date=TODAY, notify_at=dt.time(8, 55))  # due, after the run: pending
        PushDelivery.objects.create(user=user_create(), for_date=TODAY, state=PushDelivery.State.UNCONFIRMED)
        body = staff_client.get("/ops/status.json").json()
        page = staff_client.get("/ops/").content.decode()

    today = body["push"]["days"][0]
    by_state = dict(PushDelivery.objects.filter(for_date=TODAY).values_list("state").annotate(n=Count("*")))
    reasons = dict(PushDelivery.objects.filter(state="failed").values_list("reason").annotate(n=Count("*")))
    assert today["for_date"] == TODAY.isoformat()
    assert (today["sent"], today["failed"], today["unconfirmed"]) == (
        by_state["sent"], by_state["failed"], by_state["unconfirmed"])
    assert {f["reason"]: f["users"] for f in today["failures"]} == reasons == {"unregistered": 1,
                                                                              "invalid_argument": 1}
    assert today["devices_deactivated"] == PushDevice.objects.filter(active=False).count() == 1
    assert (today["pending"], today["waiting_for_fortune"]) == (1, 1)
    assert today["due"] == 3 + 2 + 1 + 1 + 1  # sent, failed, unconfirmed, pending (late), waiting
    assert body["push"]["health"] == {"configured": True, "ok": True, "problems": []}
    assert "Morning push" in page and "unregistered ×1" in page
    assert late.pk and waiting.pk


def test_status_json_says_when_push_is_off(settings, staff_client):
    settings.FCM_CREDENTIALS = ""
    body = staff_client.get("/ops/status.json").json()
    assert body["push"]["health"] == {"configured": False, "ok": True, "problems": []}
    assert "Push notifications are off" in staff_client.get("/ops/").content.decode()
