"""Devices and notification settings: the writes behind /me/devices and /me/notifications."""

import datetime as dt
import logging

from django.db import IntegrityError, transaction
from django.utils import timezone

from core.models import PushDevice, User

logger = logging.getLogger("fortuna.push")

DEVICE_NOT_FOUND = "You have no device with id {device_id}."


class DeviceNotFound(LookupError):
    pass


def device_register(*, user: User, token: str, platform: str) -> tuple[PushDevice, bool]:
    """Register `token` for `user`, idempotently. A token held by another account moves to this one (the
    app was signed into another account on the same phone: the old account must stop receiving its
    pushes); a deactivated token is active again (the app re-registered it). Returns (device, created)
    where created is True when this user did not hold the token before."""
    now = timezone.now()
    for _ in range(2):  # a concurrent registration of the same token: the second round sees its row
        try:
            with transaction.atomic():
                device = PushDevice.objects.select_for_update().filter(token=token).first()
                if device is None:
                    return PushDevice.objects.create(user=user, token=token, platform=platform, created_at=now,
                                                     updated_at=now), True
                moved = device.user_id != user.pk
                if moved:
                    logger.info("push device %s moved from user %s to user %s", device.pk, device.user_id, user.pk)
                device.user, device.platform, device.updated_at = user, platform, now
                device.active, device.deactivated_at, device.deactivated_reason = True, None, ""
                device.save(update_fields=["user", "platform", "updated_at", "active", "deactivated_at",
                                           "deactivated_reason"])
                return device, moved
        except IntegrityError:
            continue
    raise RuntimeError("device_register: the token's row kept changing")  # pragma: no cover - two lost races


def device_delete(*, user: User, device_id: int) -> None:
    """Forget one of the user's tokens (the app logged out). Only the token row goes."""
    deleted, _ = PushDevice.objects.filter(user=user, pk=device_id).delete()
    if not deleted:
        raise DeviceNotFound(DEVICE_NOT_FOUND.format(device_id=device_id))


def notification_settings_update(*, user: User, notify_enabled: bool | None = None,
                                 notify_at: dt.time | None = None) -> User:
    fields = []
    if notify_enabled is not None:
        user.notify_enabled = notify_enabled
        fields.append("notify_enabled")
    if notify_at is not None:
        user.notify_at = notify_at.replace(second=0, microsecond=0)
        fields.append("notify_at")
    if fields:
        user.save(update_fields=fields)
    return user
