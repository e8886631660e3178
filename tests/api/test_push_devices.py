"""/me/devices and /me/notifications: registration idempotent per token, a token moving between accounts,
deletion of the token alone, and validation with the messages the API promises."""

import datetime as dt

import pytest

from core.api.push import NOTHING_TO_CHANGE, NOTIFY_AT_INVALID, PLATFORM_INVALID, TOKEN_INVALID, UNKNOWN_FIELD
from core.models import PushDelivery, PushDevice, User
from core.push.services import DEVICE_NOT_FOUND
from tests.api.conftest import client_for
from tests.factories import user_create

pytestmark = pytest.mark.django_db

TOKEN = "fcm-token:APA91b" + "x" * 40


def test_register_is_idempotent_per_token():
    user = user_create()
    client = client_for(user)
    first = client.post("/me/devices", {"token": TOKEN, "platform": "android"}, format="json")
    again = client.post("/me/devices/", {"token": TOKEN, "platform": "ios"}, format="json")
    assert (first.status_code, again.status_code) == (201, 200)
    assert first.data["id"] == again.data["id"]
    assert again.data["platform"] == "ios" and again.data["active"] is True
    assert PushDevice.objects.filter(token=TOKEN).count() == 1
    listed = client.get("/me/devices")
    assert [d["token"] for d in listed.data] == [TOKEN]


def test_a_token_moves_to_the_account_that_registers_it():
    old, new = user_create(), user_create()
    client_for(old).post("/me/devices", {"token": TOKEN, "platform": "android"}, format="json")
    moved = client_for(new).post("/me/devices", {"token": TOKEN, "platform": "android"}, format="json")
    assert moved.status_code == 201
    assert PushDevice.objects.get(token=TOKEN).user == new
    assert client_for(old).get("/me/devices").data == []
    assert [d["id"] for d in client_for(new).get("/me/devices").data] == [moved.data["id"]]


def test_registering_a_deactivated_token_again_reactivates_it():
    user = user_create()
    device = PushDevice.objects.create(user=user, token=TOKEN, platform="web", active=False,
                                       deactivated_reason="unregistered")
    response = client_for(user).post("/me/devices", {"token": TOKEN, "platform": "web"}, format="json")
    device.refresh_from_db()
    assert response.status_code == 200 and device.active and device.deactivated_reason == ""


def test_delete_removes_only_the_token():
    user = user_create()
    client = client_for(user)
    device_id = client.post("/me/devices", {"token": TOKEN, "platform": "android"}, format="json").data["id"]
    PushDelivery.objects.create(user=user, for_date=dt.date(2026, 12, 7), state=PushDelivery.State.SENT)
    assert client.delete(f"/me/devices/{device_id}").status_code == 204
    assert not PushDevice.objects.exists()
    assert User.objects.filter(pk=user.pk).exists() and PushDelivery.objects.filter(user=user).count() == 1


def test_delete_someone_elses_device_is_404():
    owner, other = user_create(), user_create()
    device = PushDevice.objects.create(user=owner, token=TOKEN, platform="ios")
    response = client_for(other).delete(f"/me/devices/{device.pk}/")
    assert response.status_code == 404
    assert response.data == {"detail": DEVICE_NOT_FOUND.format(device_id=device.pk), "code": "not_found"}
    assert PushDevice.objects.filter(pk=device.pk).exists()


@pytest.mark.parametrize(("body", "field", "message"), [
    ({"token": "short", "platform": "ios"}, "token", TOKEN_INVALID),
    ({"token": "has spaces in it, which tokens never do", "platform": "ios"}, "token", TOKEN_INVALID),
    ({"token": "x" * 513, "platform": "ios"}, "token", TOKEN_INVALID),
    ({"token": TOKEN, "platform": "windows"}, "platform", PLATFORM_INVALID),
    ({"token": TOKEN, "platform": "ios", "topic": "all"}, "topic", UNKNOWN_FIELD),
])
def test_register_validation(body, field, message):
    response = client_for(user_create()).post("/me/devices", body, format="json")
    assert response.status_code == 400
    assert response.data[field] == [message]
    assert not PushDevice.objects.exists()


def test_devices_need_authentication():
    from rest_framework.test import APIClient

    assert APIClient().get("/me/devices").status_code == 401


def test_notification_settings_default_then_update():
    user = user_create()
    client = client_for(user)
    assert client.get("/me/notifications").data == {"notify_enabled": True, "notify_at": "08:00"}
    response = client.patch("/me/notifications", {"notify_at": "06:45", "notify_enabled": False}, format="json")
    assert response.status_code == 200 and response.data == {"notify_enabled": False, "notify_at": "06:45"}
    user.refresh_from_db()
    assert (user.notify_enabled, user.notify_at) == (False, dt.time(6, 45))


@pytest.mark.parametrize(("body", "field", "message"), [
    ({"notify_at": "8:00"}, "notify_at", NOTIFY_AT_INVALID),
    ({"notify_at": "24:00"}, "notify_at", NOTIFY_AT_INVALID),
    ({"notify_at": "08:00:30"}, "notify_at", NOTIFY_AT_INVALID),
    ({"notify_at": 800}, "notify_at", NOTIFY_AT_INVALID),
    ({"quiet": True}, "quiet", UNKNOWN_FIELD),
    ({}, "non_field_errors", NOTHING_TO_CHANGE),
])
def test_notification_settings_validation(body, field, message):
    user = user_create()
    response = client_for(user).patch("/me/notifications", body, format="json")
    assert response.status_code == 400
    assert response.data[field] == [message]
    user.refresh_from_db()
    assert (user.notify_enabled, user.notify_at) == (True, dt.time(8, 0))
