"""The morning push, the user's side: devices (FCM registration tokens) and notification settings."""

import datetime as dt
import re
from typing import Any

from drf_spectacular.utils import OpenApiResponse, extend_schema, extend_schema_field
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from core.api.exceptions import ErrorSerializer
from core.api.http import error_response
from core.models import PushDevice
from core.push.selectors import push_device_list
from core.push.services import DeviceNotFound, device_delete, device_register, notification_settings_update

TOKEN_PATTERN = r"^[A-Za-z0-9_:.\-]+$"
TOKEN_MIN, TOKEN_MAX = 16, 512
TOKEN_INVALID = (f"token must be an FCM registration token: {TOKEN_MIN} to {TOKEN_MAX} characters of letters, "
                 "digits and _ : . -")
PLATFORM_INVALID = 'platform must be "android", "ios" or "web".'
NOTIFY_AT_PATTERN = r"^([01][0-9]|2[0-3]):[0-5][0-9]$"
NOTIFY_AT_INVALID = 'notify_at must be a Korean time of day written HH:MM (00:00 to 23:59), e.g. "08:00".'
UNKNOWN_FIELD = "Unknown field."
NOTHING_TO_CHANGE = "Give notify_enabled, notify_at or both."


def _reject_unknown(serializer: serializers.Serializer, attrs: dict[str, Any]) -> None:
    if isinstance(serializer.initial_data, dict):
        unknown = sorted(set(serializer.initial_data) - set(serializer.fields))
        if unknown:
            raise serializers.ValidationError(dict.fromkeys(unknown, UNKNOWN_FIELD))


class DeviceOutputSerializer(serializers.Serializer):
    class Meta:
        ref_name = "PushDevice"

    id = serializers.IntegerField()
    token = serializers.CharField()
    platform = serializers.ChoiceField(choices=PushDevice.Platform.choices)
    active = serializers.BooleanField(help_text="false: FCM reported the token dead; register it again to resume.")
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()


class DeviceListApi(APIView):
    class InputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "PushDeviceInput"

        token = serializers.RegexField(
            TOKEN_PATTERN, min_length=TOKEN_MIN, max_length=TOKEN_MAX,
            error_messages={"invalid": TOKEN_INVALID, "min_length": TOKEN_INVALID, "max_length": TOKEN_INVALID},
            help_text="The app's FCM registration token.",
        )
        platform = serializers.ChoiceField(choices=PushDevice.Platform.choices,
                                           error_messages={"invalid_choice": PLATFORM_INVALID})

        def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
            _reject_unknown(self, attrs)
            return attrs

    @extend_schema(operation_id="me_devices_list", responses={200: DeviceOutputSerializer(many=True)})
    def get(self, request: Request) -> Response:
        return Response(DeviceOutputSerializer(push_device_list(user=request.user), many=True).data)

    @extend_schema(
        operation_id="me_devices_register", request=InputSerializer,
        responses={
            201: OpenApiResponse(DeviceOutputSerializer, description="Registered for this account (new, or moved "
                                 "from another account)."),
            200: OpenApiResponse(DeviceOutputSerializer, description="Already this account's: updated."),
        },
    )
    def post(self, request: Request) -> Response:
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        device, created = device_register(user=request.user, **serializer.validated_data)
        return Response(DeviceOutputSerializer(device).data,
                        status=status.HTTP_201_CREATED if created else status.HTTP_200_OK)


class DeviceDetailApi(APIView):
    @extend_schema(operation_id="me_devices_delete",
                   responses={204: None, 404: OpenApiResponse(ErrorSerializer, description="Not your device.")})
    def delete(self, request: Request, device_id: str) -> Response:
        try:
            device_delete(user=request.user, device_id=int(device_id))
        except DeviceNotFound as exc:
            return error_response(status=status.HTTP_404_NOT_FOUND, detail=str(exc), code="not_found")
        return Response(status=status.HTTP_204_NO_CONTENT)


@extend_schema_field({"type": "string", "pattern": NOTIFY_AT_PATTERN, "example": "08:00"})
class NotifyAtField(serializers.Field):
    """A Korean time of day, HH:MM (the push is sent within minutes after it)."""

    default_error_messages = {"invalid": NOTIFY_AT_INVALID}

    def to_internal_value(self, data):
        if not isinstance(data, str) or not re.fullmatch(NOTIFY_AT_PATTERN, data):
            self.fail("invalid")
        return dt.time.fromisoformat(data)

    def to_representation(self, value) -> str:
        return value.strftime("%H:%M")


class NotificationSettingsSerializer(serializers.Serializer):
    class Meta:
        ref_name = "NotificationSettings"

    notify_enabled = serializers.BooleanField(help_text="The daily fortune push, on or off (default on).")
    notify_at = NotifyAtField(help_text="When, in Korean time (KST), HH:MM; default 08:00.")


class NotificationSettingsApi(APIView):
    class InputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "NotificationSettingsInput"

        notify_enabled = serializers.BooleanField(required=False)
        notify_at = NotifyAtField(required=False, help_text="Korean time (KST), HH:MM.")

        def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
            _reject_unknown(self, attrs)
            if not attrs:
                raise serializers.ValidationError({"non_field_errors": [NOTHING_TO_CHANGE]})
            return attrs

    @extend_schema(operation_id="me_notifications_get", responses={200: NotificationSettingsSerializer})
    def get(self, request: Request) -> Response:
        return Response(NotificationSettingsSerializer(request.user).data)

    @extend_schema(operation_id="me_notifications_update", request=InputSerializer,
                   responses={200: NotificationSettingsSerializer})
    def patch(self, request: Request) -> Response:
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        user = notification_settings_update(user=request.user, **serializer.validated_data)
        return Response(NotificationSettingsSerializer(user).data)
