"""Accounts and profile: register, token, logout, and GET/PATCH/DELETE /me."""

from typing import Any

from django.contrib.auth import logout
from django.contrib.auth.validators import UnicodeUsernameValidator
from django.core.exceptions import ValidationError as DjangoValidationError
from drf_spectacular.utils import OpenApiResponse, extend_schema, extend_schema_field, inline_serializer
from rest_framework import serializers, status
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from core.models import User, validate_birth_date
from core.services.users import (
    BIRTH_FIELDS,
    token_delete,
    token_obtain,
    user_delete,
    user_register,
    user_update_birth_data,
)
from core.throttles import AuthRateThrottle

GENDER_INVALID = 'gender must be "M", "F" or "" (not given).'
LUNAR_MONTH_RANGE = "A lunar month is 1 to 12 (use birth_lunar_is_leap_month for a leap month)."
LUNAR_DAY_RANGE = "A lunar day is 1 to 30."
UNKNOWN_FIELD = "Unknown field."


def raise_field_errors(exc: DjangoValidationError) -> None:
    """A service's Django ValidationError as DRF's 400 with the same field names."""
    raise serializers.ValidationError(serializers.as_serializer_error(exc)) from None


@extend_schema_field(
    {
        "type": "string",
        "pattern": r"^([01][0-9]|2[0-3]):[0-5][0-9](:[0-5][0-9](\.[0-9]{1,6})?)?$",
        "example": "14:30:00",
    }
)
class BirthTimeField(serializers.TimeField):
    """Korean civil time of day without a UTC offset (OpenAPI's format "time" requires one)."""


class BirthDataInputSerializer(serializers.Serializer):
    """Every field optional; birth_time null means the birth time is unknown."""

    birth_date_solar = serializers.DateField(
        required=False, allow_null=True, validators=[validate_birth_date],
        help_text="From 1900-01-01 to today (Korea). Give either this or the birth_lunar_* fields, not both.",
    )
    birth_lunar_year = serializers.IntegerField(required=False, min_value=1, max_value=9999)
    birth_lunar_month = serializers.IntegerField(
        required=False, min_value=1, max_value=12,
        error_messages={"min_value": LUNAR_MONTH_RANGE, "max_value": LUNAR_MONTH_RANGE},
    )
    birth_lunar_day = serializers.IntegerField(
        required=False, min_value=1, max_value=30,
        error_messages={"min_value": LUNAR_DAY_RANGE, "max_value": LUNAR_DAY_RANGE},
    )
    birth_lunar_is_leap_month = serializers.BooleanField(required=False)
    birth_time = BirthTimeField(required=False, allow_null=True, help_text="null: unknown")
    gender = serializers.ChoiceField(
        choices=User.Gender.choices, required=False, allow_blank=True,
        error_messages={"invalid_choice": GENDER_INVALID},
    )

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if isinstance(self.initial_data, dict):
            unknown = sorted(set(self.initial_data) - set(self.fields))
            if unknown:
                raise serializers.ValidationError(dict.fromkeys(unknown, UNKNOWN_FIELD))
        return attrs


class BirthLunarOutputSerializer(serializers.Serializer):
    year = serializers.IntegerField()
    month = serializers.IntegerField()
    day = serializers.IntegerField()
    is_leap_month = serializers.BooleanField()


class NatalPillarsOutputSerializer(serializers.Serializer):
    year = serializers.CharField()
    month = serializers.CharField()
    day = serializers.CharField()
    hour = serializers.CharField(allow_null=True, help_text="null: birth time unknown")


class ProfileOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    username = serializers.CharField()
    email = serializers.EmailField()
    birth_date_solar = serializers.DateField(allow_null=True)
    birth_lunar = serializers.SerializerMethodField(help_text="null: the birth date was given as solar")
    birth_time = BirthTimeField(allow_null=True, help_text="null: unknown")
    gender = serializers.CharField()
    natal_pillars = serializers.SerializerMethodField(help_text="null: no birth date yet")

    @extend_schema_field(BirthLunarOutputSerializer(allow_null=True))
    def get_birth_lunar(self, user: User) -> dict | None:
        if user.birth_lunar_year is None:
            return None
        return {
            "year": user.birth_lunar_year,
            "month": user.birth_lunar_month,
            "day": user.birth_lunar_day,
            "is_leap_month": user.birth_lunar_is_leap_month,
        }

    @extend_schema_field(NatalPillarsOutputSerializer(allow_null=True))
    def get_natal_pillars(self, user: User) -> dict | None:
        if user.birth_date_solar is None:
            return None
        return user.natal_pillars


def _birth_data(validated: dict[str, Any]) -> dict[str, Any]:
    return {name: validated[name] for name in BIRTH_FIELDS if name in validated}


class MeApi(APIView):
    @extend_schema(operation_id="me_get", responses={200: ProfileOutputSerializer})
    def get(self, request: Request) -> Response:
        return Response(ProfileOutputSerializer(request.user).data)

    @extend_schema(
        operation_id="me_update", request=BirthDataInputSerializer, responses={200: ProfileOutputSerializer}
    )
    def patch(self, request: Request) -> Response:
        serializer = BirthDataInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        try:
            user = user_update_birth_data(user=request.user, data=_birth_data(serializer.validated_data))
        except DjangoValidationError as exc:
            raise_field_errors(exc)
        return Response(ProfileOutputSerializer(user).data)

    @extend_schema(operation_id="me_delete", responses={204: None})
    def delete(self, request: Request) -> Response:
        user_delete(user=request.user)
        return Response(status=status.HTTP_204_NO_CONTENT)


class RegisterApi(APIView):
    authentication_classes: list = []
    permission_classes = [AllowAny]
    throttle_classes = [AuthRateThrottle]

    class InputSerializer(BirthDataInputSerializer):
        """username, email and password required; birth data optional (birth_time null: unknown)."""

        class Meta:
            ref_name = "RegisterInput"

        username = serializers.CharField(max_length=150, validators=[UnicodeUsernameValidator()])
        email = serializers.EmailField()
        password = serializers.CharField(
            write_only=True, trim_whitespace=False, style={"input_type": "password"},
            help_text="Django's password validators apply: at least 8 characters, not common, not all digits.",
        )

    class OutputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "RegisterOutput"

        user = ProfileOutputSerializer()
        token = serializers.CharField()

    @extend_schema(operation_id="auth_register", request=InputSerializer, responses={201: OutputSerializer})
    def post(self, request: Request) -> Response:
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        try:
            user, token = user_register(
                username=data["username"], email=data["email"], password=data["password"],
                birth_data=_birth_data(data),
            )
        except DjangoValidationError as exc:
            raise_field_errors(exc)
        return Response(self.OutputSerializer({"user": user, "token": token.key}).data, status=status.HTTP_201_CREATED)


class TokenApi(APIView):
    authentication_classes: list = []
    permission_classes = [AllowAny]
    throttle_classes = [AuthRateThrottle]

    class InputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "TokenInput"

        username = serializers.CharField()
        password = serializers.CharField(trim_whitespace=False, style={"input_type": "password"})

    @extend_schema(
        operation_id="auth_token",
        request=InputSerializer,
        responses={200: inline_serializer("TokenOutput", {"token": serializers.CharField()})},
    )
    def post(self, request: Request) -> Response:
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        try:
            token = token_obtain(request=request, **serializer.validated_data)
        except DjangoValidationError as exc:
            raise_field_errors(exc)
        return Response({"token": token.key})


class LogoutApi(APIView):
    @extend_schema(
        operation_id="auth_logout", request=None, responses={204: OpenApiResponse(description="Logged out.")}
    )
    def post(self, request: Request) -> Response:
        token_delete(user=request.user)
        logout(request._request)
        return Response(status=status.HTTP_204_NO_CONTENT)
