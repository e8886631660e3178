"""The API benchmark's reference view, served by bench/settings.py only (never by production URLs)."""

from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView


class PingApi(APIView):
    """A trivial authenticated JSON view: the benchmark's reference (no query beyond auth)."""

    @extend_schema(
        operation_id="ping",
        responses={
            200: inline_serializer("Ping", {"ok": serializers.BooleanField(), "user_id": serializers.IntegerField()})
        },
    )
    def get(self, request: Request) -> Response:
        return Response({"ok": True, "user_id": request.user.pk})
