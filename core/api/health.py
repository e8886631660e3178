"""Health endpoints (unauthenticated, never throttled, cheap)."""

from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from core.services.health import batch_health, broker_status, cache_status, database_ping

_HEALTH_OUTPUT = inline_serializer(
    "Health",
    {
        "status": serializers.CharField(help_text='"ok" while the database answers (HTTP 200), else "error" (503)'),
        "database": serializers.CharField(help_text='"ok" or "unreachable"'),
        "cache": serializers.CharField(help_text='"ok", "down" (the API answers without it) or "not configured"'),
        "broker": serializers.CharField(help_text='"ok", "down" or "not configured" (the batch\'s Celery broker)'),
    },
)


class HealthApi(APIView):
    """Railway's healthcheck: one SELECT 1, no auth, no throttle, no session. 200 while the database
    answers; the cache and the broker are reported in the body (each probe bounded by the Redis
    timeouts), never in the status code, since the API serves without them."""

    authentication_classes: list = []
    permission_classes = [AllowAny]
    throttle_classes: list = []

    @extend_schema(
        operation_id="healthz",
        responses={200: _HEALTH_OUTPUT, 503: _HEALTH_OUTPUT},
    )
    def get(self, request: Request) -> Response:
        database_ok = database_ping()
        dependencies = {"cache": cache_status(), "broker": broker_status()}
        if database_ok:
            response = Response({"status": "ok", "database": "ok", **dependencies})
        else:
            response = Response(
                {"status": "error", "database": "unreachable", **dependencies},
                status=status.HTTP_503_SERVICE_UNAVAILABLE,
            )
        response["Cache-Control"] = "no-store"
        return response


class NightlyHealthApi(APIView):
    """Dead-man's switch for an external uptime monitor: 503 when the nightly batch missed its deadline."""

    authentication_classes: list = []
    permission_classes = [AllowAny]
    throttle_classes: list = []

    class OutputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "NightlyHealth"

        ok = serializers.BooleanField()
        now = serializers.DateTimeField()
        target_date = serializers.DateField()
        deadline = serializers.DateTimeField()
        target_succeeded = serializers.BooleanField()
        last_success_at = serializers.DateTimeField(allow_null=True)
        last_success_target = serializers.DateField(allow_null=True)
        problems = serializers.ListField(child=serializers.CharField())

    @extend_schema(operation_id="healthz_batch", responses={200: OutputSerializer, 503: OutputSerializer})
    def get(self, request: Request) -> Response:
        health = batch_health()
        response = Response(
            self.OutputSerializer(health).data,
            status=status.HTTP_200_OK if health.ok else status.HTTP_503_SERVICE_UNAVAILABLE,
        )
        response["Cache-Control"] = "no-store"
        return response

